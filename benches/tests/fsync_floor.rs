//! `fsync-floor` end to end: a short run writes its figures, and they say a sync cost something.

use std::process::Command;

#[test]
fn the_probe_reports_what_an_append_and_sync_cost() {
    // In the build directory, not /tmp: where /tmp is a tmpfs an fdatasync does nothing.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let json = dir.path().join("floor.json");
    let out = Command::new(env!("CARGO_BIN_EXE_fsync-floor"))
        .args(["--dir", dir.path().to_str().unwrap(), "--rate", "500", "--seconds", "1", "--rounds", "1", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| append + fdatasync, CPU |"), "prints its table");
    let on_tmpfs = Command::new("stat").args(["-f", "-c", "%T"]).arg(dir.path()).output().unwrap().stdout.starts_with(b"tmpfs");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["ops"], 500);
    // On a disk the sync goes through the block layer and costs several times the append that
    // dirtied the page (an append is a few µs, within the paced loop's own noise, so it is not
    // asserted alone); a probe that skipped the sync would find them alike.
    let (append, sync, us) =
        (v["append_us_per_op"].as_f64().unwrap(), v["fdatasync_us_per_op"].as_f64().unwrap(), v["cpu_us_per_op"].as_f64().unwrap());
    if !on_tmpfs {
        assert!(sync > append.max(2.0), "an fdatasync ({sync} µs) costs more than an append ({append} µs)");
    }
    assert!((v["cores"].as_f64().unwrap() - us * 500.0 / 1e6).abs() < 1e-3, "cores are the rate times the cost");
    // Where the directory is on a block device, every fdatasync of an append writes that data
    // at least (device-wide counts: other writers only add).
    if let Some(writes) = v["device_writes_per_sync"].as_f64().filter(|_| !on_tmpfs) {
        assert!(writes >= 0.9, "a sync writes the appended data: {writes} device writes a sync");
    }
    // The executor's two paths were measured: the pool's wherever the probe ran, the DMA
    // write wherever the filesystem takes O_DIRECT (not a tmpfs).
    assert!(v["pool_us_per_op"].as_f64().is_some(), "the blocking-pool path's figure: {v}");
    assert!(stdout.contains("| on an executor: blocking-pool append + fdatasync, CPU |"), "{stdout}");
    if !on_tmpfs {
        assert!(v["dma_us_per_op"].as_f64().is_some(), "the DMA path's figure: {v}");
        assert!(stdout.contains("O_DIRECT + O_DSYNC write on its ring, CPU |"), "{stdout}");
    }
    // It leaves nothing behind in the directory it was given.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path() != json).count(), 0);
}
