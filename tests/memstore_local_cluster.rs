//! The README's first command works as the README says: it starts three memstore nodes with their
//! data under `./memstore-data`, they elect a leader and serve writes and reads over HTTP, and
//! Ctrl-C stops them cleanly.
//!
//! The test runs the memstore binary `cargo test` builds (a debug build, where the README's
//! command builds a release one) with exactly the arguments the README gives, in a temporary
//! working directory. The command uses fixed ports (raft 60061-60063, HTTP 8001-8003): when one
//! of them is taken on this machine the test says so and skips rather than fail on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The README's command (`tests/docs.rs` checks that the README shows only commands a test runs,
/// spelled as they are run).
const README_COMMAND: &str = "cargo run --release --example memstore -- --local-cluster 3";

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

/// One HTTP/1.1 request on its own connection; the whole answer, headers included.
fn http(method: &str, port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to memstore");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    answer
}

/// What memstore printed so far, and the lines still to come.
struct Printed {
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl Printed {
    /// Wait up to `limit` for a line containing `text`; whether one came.
    fn wait_for(&mut self, text: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.printed.iter().any(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.printed.push(line),
                Err(_) => return false,
            }
        }
        true
    }
}

#[test]
fn the_readme_local_cluster_serves_and_stops_on_ctrl_c() {
    let ports = (8001..=8003).chain(60061..=60063);
    if let Some(busy) = ports
        .into_iter()
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_err())
    {
        eprintln!("skipped: port {busy} is in use, and the README's command needs it");
        return;
    }
    let memstore = example_binary("memstore");
    assert!(
        memstore.exists(),
        "{} missing: run the suite with `cargo test --workspace --all-features` (it builds the \
         examples) or `cargo build --examples` first",
        memstore.display()
    );
    let (_, args) = README_COMMAND
        .split_once(" -- ")
        .expect("the command passes arguments");
    let work = tempfile::tempdir().expect("temp dir");
    let log = std::fs::File::create(work.path().join("memstore.log")).expect("log file");
    let mut child = Command::new(&memstore)
        .args(args.split_whitespace())
        .current_dir(work.path())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start memstore");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut out = Printed {
        lines,
        printed: Vec::new(),
    };

    let up = out.wait_for("Ctrl-C to stop", Duration::from_secs(60));
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(work.path().join("memstore.log")).unwrap_or_default();
        panic!(
            "no leader within 60 s; it printed:\n{:#?}\nlog:\n{log}",
            out.printed
        );
    }
    for node in 1..=3 {
        assert!(
            out.printed
                .iter()
                .any(|l| l.contains(&format!("http://127.0.0.1:800{node}"))),
            "node {node}'s HTTP address is printed: {:#?}",
            out.printed
        );
        assert!(
            work.path()
                .join(format!("memstore-data/node-{node}"))
                .is_dir(),
            "node {node}'s data is under ./memstore-data"
        );
    }
    let put = http("PUT", 8002, "/store/hello/world");
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let get = http("GET", 8003, "/store/hello");
    assert!(
        get.starts_with("HTTP/1.1 200") && get.trim_end().ends_with("world"),
        "{get}"
    );

    // Ctrl-C.
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for memstore") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "memstore did not stop within 30 s of Ctrl-C: {:#?}",
                out.printed
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "memstore exits 0 after Ctrl-C, not {status}"
    );
    assert!(
        out.wait_for("stopped", Duration::from_secs(5)),
        "it says it stopped: {:#?}",
        out.printed
    );
}
