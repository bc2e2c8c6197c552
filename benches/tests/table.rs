//! `benches/table.py`, the table `benches/run.sh` writes, on runs made up for it: the row that says
//! which side ran out of cores at each server's first failed rate, the load generator's CPU over
//! the server's at each rate and at the light load, and the light load's floor.

use serde_json::json;
use std::path::Path;
use std::process::Command;

/// A run's report with the fields the table reads, as the load generator writes them: `cpu` is
/// the sending phase's CPU seconds (server, load generator) over its 10 s, and the CPU per 1,000
/// messages is that over the 10,000 sent.
fn report(dir: &Path, name: &str, cpu: (f64, f64)) {
    let r = json!({
        "connected": 1000, "server_bytes_per_connection": 2000.0, "server_bytes_per_connection_idle": 600.0,
        "sent": 10000, "send_seconds": 10.0, "delivered_per_second": 1000.0,
        "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "latency_p999_ms": 3.0, "lost": 0, "duplicates": 0,
        "server_cpu_s_per_1000_msgs": cpu.0 / 10.0, "loadgen_cpu_s_per_1000_msgs": cpu.1 / 10.0,
        "server_cpu_seconds": cpu.0, "loadgen_cpu_seconds": cpu.1, "send_tick_us": 1000,
    });
    std::fs::write(dir.join(format!("{name}.json")), r.to_string()).unwrap();
}

#[test]
fn the_table_names_the_side_that_ran_out_of_cores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for who in ["shardchat", "relay", "node"] {
        for run in ["idle", "direct-low", "direct", "group100-1000"] {
            report(d, &format!("{who}-{run}"), (0.5, 0.4));
        }
    }
    // shardchat failed at 30,000 with its one core full; the relay at 40,000 with the load
    // generator's three cores full (not this machine's count: the cores it was given); the Node
    // relay never failed.
    // The Node relay's load generator burned more at the light load.
    report(d, "node-direct-low", (0.5, 0.6));
    report(d, "shardchat-sustain-5000", (1.0, 0.5));
    report(d, "shardchat-sustain-30000", (9.9, 4.0));
    report(d, "relay-sustain-40000", (6.0, 28.5));
    std::fs::write(d.join("shardchat-sustained.json"), r#"{"rate": 20000, "failed_at": 30000}"#).unwrap();
    std::fs::write(d.join("relay-sustained.json"), r#"{"rate": 30000, "failed_at": 40000}"#).unwrap();
    std::fs::write(d.join("node-sustained.json"), r#"{"rate": 80000, "failed_at": null}"#).unwrap();
    // The light load's floor: the cheapest relay's cores (0.05 a second at 1,000 msg/s, from
    // 50 µs a message) plus the probe's 40 µs a sync.
    std::fs::write(
        d.join("fsync-floor.json"),
        json!({"cpu_us_per_op": 40.0, "device_writes_per_sync": 2.3, "device_flushes_per_sync": 1.0, "pool_us_per_op": 101.2, "dma_us_per_op": 53.4})
            .to_string(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("table.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([d.to_str().unwrap(), "1000", "shardchat relay node", "1", "3"])
        .env("IDLE_HOLD", "20")
        .env("PLACEMENT", "servers on CPUs 1, the load generator on CPUs 0")
        .output()
        .expect("python3 runs the table");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = std::fs::read_to_string(d.join("README.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), table.trim_end(), "prints what it writes");
    assert!(table.contains("| direct | highest msg/s with no loss, p99 < 50 ms | 20,000 | 30,000 | 80,000 | 0.25x |"), "{table}");
    assert!(table.contains("over the sending phase. Placement: servers on CPUs 1, the load generator on CPUs 0."), "{table}");
    let busy = table.lines().find(|l| l.contains("first rate that failed")).expect("the row is there");
    let cells: Vec<&str> = busy.split('|').map(str::trim).collect();
    // Busy shares: CPU seconds over the 10 s phase over the cores that side had.
    assert_eq!(cells[3], "30,000: 0.99 / 0.13 (server)");
    assert_eq!(cells[4], "40,000: 0.60 / 0.95 (load generator)");
    assert_eq!(cells[5], "none failed");
    let ratios = table.lines().find(|l| l.contains("load generator / server CPU")).expect("the ratio row is there");
    let cells: Vec<&str> = ratios.split('|').map(str::trim).collect();
    // Every rate tried, in order (5,000 before 30,000, not as the names sort); none for Node.
    assert_eq!(cells[3], "5,000: 0.50; 30,000: 0.40");
    assert_eq!(cells[4], "40,000: 4.75");
    assert_eq!(cells[5], "-");
    assert!(table.contains("| direct-low (1,000 msg/s) | load generator / server CPU a message | 0.80 | 0.80 | 1.20 | |"), "{table}");
    assert!(table.contains("senders woke on a 1,000 µs grid (`--send-tick-us`)"), "{table}");
    let floor = table.lines().find(|l| l.contains("durable floor")).expect("the floor row is there");
    assert!(floor.contains("(40 µs, fsync-floor; a sync: 2.3 disk writes and 1.0 cache flushes)"), "{floor}");
    assert!(floor.contains("| 0.09 | - | - | shardchat / floor 0.56x |"), "{floor}");
    let paths = table.lines().find(|l| l.contains("a durable record on an executor")).expect("the paths row is there");
    assert!(paths.contains("| 101 µs / 53 µs | - | - | |"), "{paths}");
}
