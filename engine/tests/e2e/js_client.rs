//! The TypeScript client library (`clients/js`) against this build of the engine: its own Node
//! tests (engine restarts and kill -9 mid-stream, a slow proxy that cuts and stalls, frames
//! dropped and repeated, an outbox and cursors across client restarts), run by `npm test`, which
//! starts the engine itself. Also checks that the committed `dist/` is what `tsc` makes of `src/`:
//! the binary serves `dist/` to the web page. Needs Node ≥ 20.10 and npm (the machine has them);
//! without, skipped locally and failed in CI.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

fn npm(args: &[&str]) -> (bool, String) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir())
        .env("SHARDCHAT_BIN", env!("CARGO_BIN_EXE_shardchat"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run npm");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_js_client_passes_its_tests_against_this_engine() {
    if Command::new("node").arg("--version").output().is_err() || Command::new("npm").arg("--version").output().is_err() {
        return skip("node and npm not installed");
    }
    // The pinned dev dependencies (TypeScript, Node's types) from package-lock.json, once.
    if !dir().join("node_modules/.package-lock.json").exists() {
        let (ok, out) = npm(&["ci", "--no-audit", "--no-fund"]);
        assert!(ok, "npm ci failed:\n{out}");
    }
    let (ok, out) = npm(&["run", "check-dist"]);
    assert!(ok, "clients/js/dist is stale:\n{out}");
    let (ok, out) = npm(&["test"]);
    assert!(ok, "the client library's tests failed:\n{out}");
    // The runner's summary: tests ran, none failed (a filter that matched nothing would pass).
    assert!(out.contains("# fail 0") && !out.contains("# pass 0"), "unexpected test summary:\n{out}");
}
