//! The chaos test, short version: `scripts/chaos/run.py` (two Keyways over three redis-servers
//! with AOF and `appendfsync always`, eight clients doing INCR, cross-server MSET, GET and MGET
//! through both, every fault kind on a fixed seed) for a few seconds per write mode, then
//! `scripts/chaos/check.py` over its history. docs/chaos.md describes both and the long runs.
#![allow(
    clippy::expect_used,
    reason = "test code: a failed assumption is a failed test"
)]

use std::path::Path;
use std::process::Command;

/// Runs the harness and the checker for one mode; panics with the checker's report on a
/// violation (other than the `known` ones, which are printed).
fn chaos(mode: &str, seed: u64, known: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join(format!("{mode}-{seed}"));
    let run = Command::new("python3")
        .arg(root.join("scripts/chaos/run.py"))
        .args(["--keyway", env!("CARGO_BIN_EXE_keyway"), "--mode", mode])
        .args(["--seed", &seed.to_string(), "--duration", "18"])
        // Short faults every 0.8-1.5 s, so that every kind comes within the run.
        .args(["--warmup", "1", "--gap-min", "0.8", "--gap-max", "1.5"])
        .args(["--fault-scale", "0.3"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "chaos run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    // A debug build on a loaded 2-core machine: 3 s over pool.timeout away from faults, and
    // 3 s after a fault is healed counted as its window.
    let check = Command::new("python3")
        .arg(root.join("scripts/chaos/check.py"))
        .arg(&out)
        .args(["--margin", "3", "--settle", "3", "--known", known])
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&check.stdout);
    println!("{report}");
    assert!(
        check.status.success(),
        "chaos checker found violations:\n{report}"
    );
    for kind in [
        "redis_kill",
        "redis_stop",
        "client_pause",
        "debug_sleep",
        "keyway_kill",
    ] {
        assert!(
            report.contains(kind),
            "the run injected no {kind}:\n{report}"
        );
    }
}

/// Two-phase writes: no acknowledged write lost, no phantom, no stale read, no MGET seeing half
/// an MSET, replicas equal, nothing left locked, no operation past its deadline away from a
/// fault.
#[test]
fn chaos_short_two_phase_and_primary() {
    chaos("two_phase", 7, "");
    chaos("primary", 7, "");
}
