//! Cluster mode against a real redis-server on a free loopback port: node liveness, the
//! user → nodes directory kept exact across connects, disconnects, a node's death and a Redis
//! restart, and single-node traffic flowing while Redis is down.
//!
//! `.ci/run` installs redis-server and sets SHARDCHAT_REQUIRE_REDIS=1, so there these tests
//! cannot be skipped; elsewhere they are skipped with a message when redis-server is missing.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var("SHARDCHAT_REQUIRE_REDIS").is_err(), "SHARDCHAT_REQUIRE_REDIS is set but redis-server is not installed");
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut r = Redis { port: free_port(), child: None };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(self.url()).unwrap().get_connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn set(&self, key: &str) -> BTreeSet<String> {
        let mut con = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        redis::cmd("SMEMBERS").arg(key).query(&mut con).unwrap()
    }

    fn exists(&self, key: &str) -> bool {
        let mut con = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        redis::cmd("EXISTS").arg(key).query(&mut con).unwrap()
    }

    /// Waits (up to 10 s: a few liveness TTLs) until the set at `key` is `want`.
    async fn wait_for(&self, key: &str, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.set(key);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{key}: {got:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node(redis: &Redis, id: usize) -> Server {
    Server::start(&["--cluster", &redis.url(), "--node-id", &id.to_string(), "--shards", "2"])
}

async fn metric(s: &Server, name: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", s.http)).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in /metrics"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn three_nodes_keep_the_directory_exact_and_repair_it_when_a_node_dies() {
    let Some(redis) = Redis::start() else { return };
    let n0 = node(&redis, 0);
    let mut n1 = node(&redis, 1);
    let mut n2 = node(&redis, 2);
    redis.wait_for("shardchat:nodes", &["0", "1", "2"]).await;

    let a0 = Client::connect(&n0, "alice", "phone").await;
    let mut a1 = Client::connect(&n1, "alice", "laptop").await;
    let a1b = Client::connect(&n1, "alice", "tablet").await;
    let _b2 = Client::connect(&n2, "bob", "phone").await;
    redis.wait_for("shardchat:user:alice:nodes", &["0", "1"]).await;
    redis.wait_for("shardchat:user:bob:nodes", &["2"]).await;
    redis.wait_for("shardchat:node:1:users", &["alice"]).await;

    // One of alice's two devices on node 1 leaves: node 1 still holds her.
    drop(a1b);
    a1.send(serde_json::json!({"t":"ping","ref":"p"})).await;
    a1.recv_where(|v| v["t"] == "pong").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.set("shardchat:user:alice:nodes").len(), 2);
    drop(a1);
    redis.wait_for("shardchat:user:alice:nodes", &["0"]).await;
    redis.wait_for("shardchat:node:1:users", &[]).await;

    // Node 2 crashes: it cannot clean up, the others notice its key expire and repair.
    n2.kill();
    redis.wait_for("shardchat:user:bob:nodes", &[]).await;
    redis.wait_for("shardchat:nodes", &["0", "1"]).await;
    assert!(!redis.exists("shardchat:node:2:users"));
    assert_eq!(metric(&n0, "shardchat_cluster_live_nodes").await, 2);
    assert_eq!(metric(&n0, "shardchat_cluster_repairs_total").await, 1, "the lowest live node repairs");
    assert_eq!(metric(&n1, "shardchat_cluster_repairs_total").await, 0);
    assert_eq!(metric(&n0, "shardchat_cluster_redis_up").await, 1);

    // It comes back with the same id: it joins again, and its new users are listed.
    n2.restart();
    let _b2 = Client::connect(&n2, "bob", "phone").await;
    redis.wait_for("shardchat:user:bob:nodes", &["2"]).await;
    redis.wait_for("shardchat:nodes", &["0", "1", "2"]).await;
    drop(a0);

    // A clean stop removes the liveness key at once, not a TTL later.
    n1.stop();
    assert!(!redis.exists("shardchat:node:1"), "SIGTERM must take the node out of the live set");
}

#[tokio::test]
async fn with_redis_down_a_node_serves_its_clients_and_rebuilds_the_directory_when_redis_returns() {
    let Some(mut redis) = Redis::start() else { return };
    let n0 = node(&redis, 0);
    let n1 = node(&redis, 1);
    let mut a = Client::connect(&n0, "alice", "phone").await;
    let mut b = Client::connect(&n0, "bob", "phone").await;
    let _c = Client::connect(&n1, "carol", "phone").await;
    redis.wait_for("shardchat:user:alice:nodes", &["0"]).await;
    redis.wait_for("shardchat:user:carol:nodes", &["1"]).await;

    redis.stop();
    // Messages between clients of one node keep flowing.
    for i in 1..=5u64 {
        let ack = a.dm("bob", &format!("c{i}"), "while redis is down").await;
        assert_eq!((ack["t"].as_str(), seq(&ack)), (Some("ack"), i), "{ack}");
        assert_eq!(seq(&b.recv().await), i);
    }
    // Directory changes made while it is down are not lost.
    let _d = Client::connect(&n0, "dave", "phone").await;
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&n0, "shardchat_cluster_redis_up").await != 0 {
        assert!(Instant::now() < deadline, "the node never noticed Redis was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis comes back empty (no persistence): both nodes write their part whole again.
    redis.spawn();
    redis.wait_for("shardchat:nodes", &["0", "1"]).await;
    redis.wait_for("shardchat:node:0:users", &["alice", "dave"]).await;
    redis.wait_for("shardchat:user:carol:nodes", &["1"]).await;
    assert!(redis.set("shardchat:user:bob:nodes").is_empty());
    let ack = a.dm("bob", "c6", "after").await;
    assert_eq!(seq(&ack), 6);
}

#[tokio::test]
async fn two_processes_given_the_same_node_id_are_reported() {
    let Some(redis) = Redis::start() else { return };
    let first = node(&redis, 4);
    let second = node(&redis, 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&first, "shardchat_cluster_node_id_conflicts_total").await
        + metric(&second, "shardchat_cluster_node_id_conflicts_total").await
        == 0
    {
        assert!(Instant::now() < deadline, "a duplicated node id went unnoticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A node alone with its id never reports one, restarts included.
    let mut other = node(&redis, 5);
    other.kill();
    other.restart();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(metric(&other, "shardchat_cluster_node_id_conflicts_total").await, 0);
}
