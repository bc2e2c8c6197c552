//! Redis keys, channels and scripts of cluster mode, all under `shardchat:` (the module docs
//! of `cluster` say what each holds).

pub const PREFIX: &str = "shardchat:";

pub fn node_key(node: usize) -> String {
    format!("{PREFIX}node:{node}")
}
pub fn node_users_key(node: usize) -> String {
    format!("{PREFIX}node:{node}:users")
}
pub fn user_nodes_key(user: &str) -> String {
    format!("{PREFIX}user:{user}:nodes")
}
pub fn watch_key(user: &str) -> String {
    format!("{PREFIX}watch:{user}")
}
pub fn inbox_channel(node: usize) -> String {
    format!("{PREFIX}inbox:{node}")
}

/// Wait before resubscribing after the subscription broke.
pub const RESUBSCRIBE_MS: u64 = 200;
pub const NODES_KEY: &str = "shardchat:nodes";

/// Removes a dead node from the directory, only while its liveness key is absent.
pub const REPAIR_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local users = redis.call('SMEMBERS', KEYS[2])
for _, u in ipairs(users) do
  redis.call('SREM', ARGV[2] .. u .. ARGV[3], ARGV[1])
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return #users
";
