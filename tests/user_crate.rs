//! pontoon works for a crate outside its workspace that uses only the public API:
//! `examples/user-crate` (its own `[workspace]`, depending on pontoon by path) builds, bootstraps
//! a one-node cluster, writes and reads through a session, and stops.
//!
//! It is built with the cargo running this test, into this test's own target dir, so the
//! dependencies already built for the test suite are reused: building it adds about a minute
//! (compiling pontoon once more, without features), running it a second or two.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target dir this test was built into: `CARGO_TARGET_TMPDIR` is `<target dir>/tmp`.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    match tmp.parent() {
        Some(dir) => dir.to_path_buf(),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target")),
    }
}

#[test]
fn a_crate_outside_the_workspace_builds_and_runs_on_the_public_api() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/user-crate/Cargo.toml");
    let target = target_dir();
    let mut cargo = Command::new(env!("CARGO"));
    // Cargo describes this package to the test through these variables (and OUT_DIR, its build
    // script's); passed on, they would reach the user crate's build scripts (ring's reruns when
    // CARGO_MANIFEST_DIR or OUT_DIR changes) and make the two builds rebuild each other's shared
    // dependencies every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        const DESCRIBE_THIS_PACKAGE: [&str; 5] = [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
        ];
        if name.starts_with("CARGO_PKG_") || DESCRIBE_THIS_PACKAGE.contains(&name.as_ref()) {
            cargo.env_remove(name.as_ref());
        }
    }
    let build = cargo
        .arg("build")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        build.status.success(),
        "building examples/user-crate failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let binary = target.join("debug").join(format!(
        "pontoon-user-crate{}",
        std::env::consts::EXE_SUFFIX
    ));
    let run = Command::new(&binary).output().expect("run the user crate");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the user crate failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for line in [
        "leader: node 1",
        "set: ok",
        "get through the session: hello",
        "linearizable read: hello",
        "refused: ",
        "stopped",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{stdout}"
        );
    }
}
