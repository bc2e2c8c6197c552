//! The wall clock, read in one place: Unix time in milliseconds. The shard logic never reads it
//! (time is passed in with every event); the edges that do (the runtime's driver, the bridge,
//! the push sender, the cluster link, token checks) call this.

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
