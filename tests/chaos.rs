//! A short chaos run in the test suite: three memstore processes, about a minute of `kill -9`
//! (leader included), partitions and snapshots under client load, then the linearizability
//! check, the lost-write check and the exactly-once counter check (increments through client
//! sessions, retried until a definite answer: none lost, none doubled) of `examples/chaos`. The
//! long run is the same binary with a larger `--duration` (see docs/testing.md).
//!
//! `cargo test` builds the examples next to each other (target/<profile>/examples/); this test
//! runs them from there. Run alone it needs them built first:
//! `cargo build --features fault-injection --examples`.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>`, seen from this test binary in `target/<profile>/deps/`.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary sits in target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn chaos_run_with_kills_and_partitions_is_linearizable_and_loses_no_acknowledged_write() {
    let chaos = example_binary("chaos");
    let memstore = example_binary("memstore");
    assert!(
        chaos.exists() && memstore.exists(),
        "{} / {} missing: run the suite with `cargo test --workspace --all-features` (it builds \
         the examples) or `cargo build --features fault-injection --examples` first",
        chaos.display(),
        memstore.display()
    );
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(&chaos)
        .args([
            "--nodes",
            "3",
            "--duration",
            "45",
            "--clients",
            "6",
            "--json",
        ])
        .arg("--memstore")
        .arg(&memstore)
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report; stdout:\n{stdout}\nstderr:\n{stderr}"));
    if !out.status.success() {
        // Keep the data dirs, node logs and history.json for inspection.
        let dir = work.keep();
        panic!(
            "chaos run failed (node logs and history.json in {}):\n{stdout}\n{stderr}",
            dir.display()
        );
    }
    assert_eq!(report["violations"], 0, "{stdout}");
    assert_eq!(report["acknowledged_writes_lost"], 0, "{stdout}");
    assert_eq!(report["converged"], true, "{stdout}");
    assert_eq!(report["sessions"], true, "{stdout}");
    assert_eq!(report["counter_lost"], 0, "{stdout}");
    assert_eq!(report["counter_doubled"], 0, "{stdout}");
    assert_eq!(report["counter_unresolved"], 0, "{stdout}");
    // The run really exercised something: faults happened (a leader was killed or isolated),
    // nodes were restarted, and clients got writes and reads through.
    assert!(
        report["faults_total"].as_u64().unwrap_or(0) >= 5,
        "{stdout}"
    );
    assert!(
        report["faults"]["restarts"].as_u64().unwrap_or(0) >= 1,
        "{stdout}"
    );
    assert!(report["writes_ok"].as_u64().unwrap_or(0) >= 50, "{stdout}");
    assert!(report["reads_ok"].as_u64().unwrap_or(0) >= 50, "{stdout}");
    assert!(
        report["counter_increments_acked"].as_u64().unwrap_or(0) >= 50,
        "{stdout}"
    );
    assert!(
        report["ops_checked"].as_u64().unwrap_or(0) >= 100,
        "{stdout}"
    );
}
