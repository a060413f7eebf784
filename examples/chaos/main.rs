//! chaos: real memstore processes under `kill -9`, partitions and snapshots while clients read
//! and write, then a linearizability check of everything the clients saw.
//!
//! ```text
//! cargo build --release --features fault-injection --examples
//! target/release/examples/chaos --nodes 5 --duration 600
//! ```
//!
//! What it does, in order:
//! 1. starts `--nodes` memstore processes (built with `fault-injection`) on loopback ports with
//!    fresh data dirs and a small snapshot threshold, so restarts catch up by snapshot too;
//! 2. runs `--clients` clients for `--duration` seconds: random linearizable reads and writes of
//!    `--keys` hot keys through random nodes, each recorded with invoke/complete time and outcome
//!    (ok / failed / unknown, from the status code and memstore's `pontoon-outcome` header), plus
//!    write-once "ledger" keys;
//! 3. meanwhile the nemesis kills (SIGKILL) random nodes or the leader and restarts them on their
//!    data dirs, isolates nodes or the leader with the fault-injection routes and heals, and forces
//!    snapshots;
//! 4. heals everything, waits until every node has applied a final barrier write and holds the
//!    same values, reads every hot key through every node, and checks that every acknowledged
//!    ledger write is on every node;
//! 5. reads every counter of the counter workload (below) on every node and compares it with the
//!    increments its clients were told succeeded;
//! 6. checks the history per key against a register model (tests/support/linearizability/) and
//!    writes it as JSON; exits non-zero on a violation, a lost write, a cluster that does not
//!    converge, a node that exited on its own or did not come back from a restart, or a node log
//!    with a panic or a fatal stop.
//!
//! # Exactly-once counters
//!
//! Alongside, `--counter-clients` clients (0: none) each open a client session (`POST
//! /sessions`) and increment `--counter-keys` counters (`POST /incr/counter-N`) with the session
//! headers, retrying every increment whose outcome they do not know with the same number, to a
//! random node, until a definite answer. At the end each counter must equal, on every node, the
//! increments acknowledged with 200: none lost, none doubled. `--no-sessions` retries the same
//! way without the session headers: that run is expected to FAIL with doubled increments (a
//! retry after a timeout or a killed node counts again), which shows the check bites. See
//! `counters.rs`.
//!
//! # Power loss
//!
//! `kill -9` alone never loses a write the node made: the kernel's page cache outlives the
//! process. With `--lazyfs BINARY`, every node's data dir is a LazyFS mount of its own
//! (`WORK_DIR/node-N`, bytes in `WORK_DIR/lazyfs/node-N-root`), which keeps what is written in
//! its own cache until it is synced, and the nemesis adds power cuts: of one node (`kill -9`, its
//! LazyFS cache dropped, so everything not fsynced is gone, then a restart on the same data dir)
//! and of the whole cluster (all nodes killed, every cache dropped, all restarted). Needs root and
//! /dev/fuse. The mounts are lazily unmounted at the end, on an error and on Ctrl-C / SIGTERM.
//!
//! ```text
//! ../shared/tools/lazyfs/build.sh /tmp/lazyfs-build    # Debian packages only; prints the binary
//! cargo build --release --features fault-injection --examples
//! target/release/examples/chaos --lazyfs /tmp/lazyfs-build/lazyfs/build/lazyfs \
//!     --nodes 3 --duration 1200 --json
//! ```
//!
//! `LAZYFS_AUTO_INVAL=1 ../shared/tools/lazyfs/build.sh /tmp/lazyfs-racy` builds upstream's
//! variant, whose reads can return zeros that were never written (a FUSE race, not a power cut).
//! Pass that binary to `--lazyfs` to check that such reads are retried or stop the node with an
//! error naming the file and offset, never a panic or applied zeros: a node that stops shows up
//! as an unexpected exit and a fatal node log line, and fails the run.

mod counters;
mod lazyfs;
#[path = "../../tests/support/linearizability/mod.rs"]
mod linearizability;
mod nemesis;
mod procs;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use tokio::time::Instant;

use counters::{check_counter, counter_key, CounterCheck, Counters, Tally};
use linearizability::{History, OpKind, Outcome};
use nemesis::FaultCounts;
use procs::{admin_client, leader_seen_by, post_ok, stale_get, ProcCluster};
use workload::{hot_key, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "kill -9, partitions and a linearizability check"
)]
struct Args {
    /// Number of memstore processes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Seconds of faults and client load (setup and the final checks come on top).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Hot keys the clients read and write (the linearizability check is per key).
    #[arg(long, default_value_t = 8)]
    keys: u64,
    /// Seed for the workload and the nemesis (printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// The memstore binary. Default: `memstore` next to this binary (build both with
    /// `cargo build --features fault-injection --examples`).
    #[arg(long)]
    memstore: Option<PathBuf>,
    /// Where data dirs, node logs and the history go. Default: a fresh dir under the temp dir,
    /// removed after a clean run.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work dir after a clean run.
    #[arg(long)]
    keep: bool,
    /// Snapshot threshold passed to the nodes (small, so snapshots happen during the run).
    #[arg(long, default_value_t = 300)]
    snapshot_threshold: u64,
    /// Clients read with `?consistency=stale` (a node's local copy). Not linearizable under
    /// partitions: a run with this flag is expected to FAIL, which shows the check bites.
    #[arg(long)]
    stale_reads: bool,
    /// Clients of the exactly-once counter workload (see "Exactly-once counters"); 0: none.
    #[arg(long, default_value_t = 4)]
    counter_clients: u64,
    /// Counters they increment (keys counter-0, counter-1, ...).
    #[arg(long, default_value_t = 4)]
    counter_keys: u64,
    /// Counter clients retry without session headers. Retries then apply twice: a run with this
    /// flag is expected to FAIL with doubled increments, which shows the check bites.
    #[arg(long)]
    no_sessions: bool,
    /// Print the report as one JSON line at the end.
    #[arg(long)]
    json: bool,
    /// The LazyFS binary (see "Power loss" above): mount every data dir on LazyFS and add power
    /// cuts of one node and of the whole cluster to the faults.
    #[arg(long)]
    lazyfs: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    nodes: u64,
    duration_s: u64,
    seed: u64,
    operations: u64,
    ok: u64,
    failed: u64,
    unknown: u64,
    writes_ok: u64,
    reads_ok: u64,
    ops_checked: usize,
    keys_checked: usize,
    violations: usize,
    undecided_keys: Vec<String>,
    ledger_writes_acked: usize,
    acknowledged_writes_lost: usize,
    converged: bool,
    counter_clients: u64,
    /// Whether the counter clients used sessions (false with --no-sessions).
    sessions: bool,
    counter_increments_acked: u64,
    counter_retries: u64,
    counter_unknown_attempts: u64,
    /// Increments given up without a definite answer (they may or may not count).
    counter_unresolved: u64,
    counter_lost: u64,
    counter_doubled: u64,
    counter_sessions_opened: u64,
    counter_sessions_expired: u64,
    /// Per counter: acknowledged, unresolved, the value on each node, lost and doubled.
    counters: Vec<CounterCheck>,
    lazyfs: bool,
    /// Node log lines with a panic or a fatal stop.
    fatal_log_lines: Vec<String>,
    faults: FaultCounts,
    faults_total: u64,
    history: String,
    passed: bool,
}

fn log_line(origin: Instant, msg: &str) {
    println!("[{:>7.2}s] {msg}", origin.elapsed().as_secs_f64());
}

/// The memstore binary: `--memstore`, or the one next to this binary.
fn find_memstore(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.memstore {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate myself: {e}"))?;
    let sibling = exe.with_file_name(format!("memstore{}", std::env::consts::EXE_SUFFIX));
    if sibling.exists() {
        Ok(sibling)
    } else {
        Err(format!(
            "no memstore binary at {}; build it with `cargo build --features fault-injection \
             --examples` (same profile as chaos) or pass --memstore",
            sibling.display()
        ))
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term => "SIGTERM",
    }
}

#[tokio::main]
async fn main() {
    // On a signal the run is dropped, and with it the cluster: the nodes are killed and the
    // LazyFS mounts unmounted before the exit.
    let outcome = tokio::select! {
        outcome = run(Args::parse()) => outcome,
        signal = interrupted() => Err(format!("stopped by {signal}; the work dir is kept")),
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::exit(2);
        }
    }
}

/// Poll `check` every 100 ms until it is true or `limit` passes.
async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(args: Args) -> Result<bool, String> {
    if args.nodes < 3 {
        return Err("--nodes must be at least 3 (a minority must be able to fail)".into());
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let memstore = find_memstore(&args)?;
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "pontoon-chaos-{}-{}",
            std::process::id(),
            seed % 1_000_000
        )),
    };
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
    // Absolute and without symlinks: LazyFS mount points are matched against /proc/mounts.
    let work_dir = std::fs::canonicalize(&work_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", work_dir.display()))?;
    let origin = Instant::now();
    log_line(
        origin,
        &format!(
            "{} memstore processes ({}), work dir {}, seed {seed}{}",
            args.nodes,
            memstore.display(),
            work_dir.display(),
            match &args.lazyfs {
                Some(l) => format!(", data dirs on LazyFS ({})", l.display()),
                None => String::new(),
            }
        ),
    );
    let mut cluster = ProcCluster::start(
        args.nodes,
        &work_dir,
        memstore,
        "chaos".into(),
        args.snapshot_threshold,
        args.snapshot_threshold / 3,
        args.lazyfs.clone(),
    )?;
    let http = admin_client();
    let addrs = cluster.http_addrs();
    let first = addrs[0].clone();
    let elected = wait_until(Duration::from_secs(60), || async {
        leader_seen_by(&http, &first).await.is_some()
    })
    .await;
    if !elected {
        return Err(format!(
            "no leader within 60 s; see the node logs in {}",
            work_dir.display()
        ));
    }
    if !post_ok(&http, cluster.node(1).url("/fault/heal")).await {
        return Err(
            "memstore has no /fault routes: build it with --features fault-injection".into(),
        );
    }
    log_line(origin, "leader elected; starting clients and faults");

    let workload = Arc::new(Workload {
        history: Arc::new(History::new()),
        ledger_acked: Mutex::new(Vec::new()),
        origin,
        stop: Default::default(),
        addrs: addrs.clone(),
        keys: args.keys.max(1),
        request_timeout: Duration::from_secs(8),
        stale_reads: args.stale_reads,
    });
    let clients: Vec<_> = (0..args.clients)
        .map(|c| tokio::spawn(workload.clone().run_client(c, seed)))
        .collect();
    let counter_load = Arc::new(Counters {
        addrs: addrs.clone(),
        keys: args.counter_keys.max(1),
        sessions: !args.no_sessions,
        request_timeout: Duration::from_secs(8),
        stop: Default::default(),
        finish_limit: Duration::from_secs(60),
        tally: Mutex::new(Tally::default()),
    });
    let counter_clients: Vec<_> = (0..args.counter_clients)
        .map(|c| tokio::spawn(counter_load.clone().run_client(c, seed)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut fault_log = |msg: String| log_line(origin, &msg);
    let faults = nemesis::run(&mut cluster, deadline, seed, &mut fault_log).await;
    workload.stop.store(true, Ordering::Relaxed);
    counter_load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    // The cluster is healed: increments still in flight get their definite answer now (each
    // is retried for at most `finish_limit`), before the barrier below.
    for c in counter_clients {
        let _ = c.await;
    }
    let tally = counter_load.tally.lock().expect("tally lock").clone();
    log_line(
        origin,
        &format!(
            "load stopped after {} operations; {} faults; converging",
            workload.history.len(),
            faults.total()
        ),
    );

    // Every node runs and is healed (the nemesis repairs each fault before the next). A barrier
    // write, retried until acknowledged, then every node must apply it.
    let mut converged = false;
    let barrier = format!("done-{seed}");
    let acked = wait_until(Duration::from_secs(60), || async {
        for addr in &addrs {
            if workload.write(&http, addr, "barrier", &barrier).await == Outcome::Ok {
                return true;
            }
        }
        false
    })
    .await;
    if acked {
        converged = wait_until(Duration::from_secs(60), || async {
            for addr in &addrs {
                if stale_get(&http, addr, "barrier").await != Ok(Some(barrier.clone())) {
                    return false;
                }
            }
            true
        })
        .await;
    }
    let mut differing = Vec::new();
    if converged {
        for i in 0..workload.keys {
            let key = hot_key(i);
            let mut seen = Vec::new();
            for addr in &addrs {
                seen.push(stale_get(&http, addr, &key).await);
            }
            if seen.windows(2).any(|w| w[0] != w[1]) {
                differing.push(format!("{key}: {seen:?}"));
            }
            for addr in &addrs {
                workload.final_read(&http, addr, &key).await;
            }
        }
    }
    if !differing.is_empty() {
        log_line(origin, &format!("nodes disagree: {differing:?}"));
        converged = false;
    }
    let ledger = workload.ledger_acked.lock().expect("ledger lock").clone();
    let mut lost = 0;
    if converged {
        for key in &ledger {
            let mut present_everywhere = true;
            for addr in &addrs {
                if stale_get(&http, addr, key).await != Ok(Some("1".to_string())) {
                    present_everywhere = false;
                }
            }
            if !present_everywhere {
                log_line(origin, &format!("acknowledged write of {key} is missing"));
                lost += 1;
            }
        }
    }
    log_line(
        origin,
        &format!(
            "converged: {converged}; {} acknowledged ledger writes checked, {lost} lost",
            ledger.len()
        ),
    );
    // Every counter on every node (the barrier above was applied everywhere, and every
    // acknowledged increment was committed before it was proposed).
    let mut counter_checks = Vec::new();
    if args.counter_clients > 0 {
        for i in 0..counter_load.keys {
            let key = counter_key(i);
            let mut values = Vec::new();
            for addr in &addrs {
                values.push(stale_get(&http, addr, &key).await);
            }
            let acked = tally.acked.get(&key).copied().unwrap_or(0);
            let unresolved = tally.unresolved.get(&key).copied().unwrap_or(0);
            let check = check_counter(&key, acked, unresolved, values);
            if !check.ok {
                log_line(
                    origin,
                    &format!(
                        "COUNTER {key}: {} acknowledged, {} unresolved, values on the nodes {:?}: \
                         {} lost, {} doubled",
                        check.acked, check.unresolved, check.values, check.lost, check.doubled
                    ),
                );
            }
            counter_checks.push(check);
        }
    }
    let counter_lost: u64 = counter_checks.iter().map(|c| c.lost).sum();
    let counter_doubled: u64 = counter_checks.iter().map(|c| c.doubled).sum();
    let counter_unresolved: u64 = tally.unresolved.values().sum();
    cluster.shutdown();
    let fatal_log_lines = cluster.fatal_log_lines();
    for line in &fatal_log_lines {
        log_line(origin, &format!("FATAL in a node log: {line}"));
    }

    let ops = workload.history.ops();
    let check_ops = ops.clone();
    let report = tokio::task::spawn_blocking(move || linearizability::check(&check_ops))
        .await
        .map_err(|e| format!("checker panicked: {e}"))?;
    let history_path = work_dir.join("history.json");
    linearizability::write_history_json(&ops, &report, &history_path)
        .map_err(|e| format!("cannot write {}: {e}", history_path.display()))?;
    for v in &report.violations {
        log_line(origin, &format!("VIOLATION on {}: {}", v.key, v.reason));
    }
    let count =
        |pred: &dyn Fn(&linearizability::Op) -> bool| ops.iter().filter(|o| pred(o)).count() as u64;
    // A key the checker could not decide within its search budget proves nothing: not a pass.
    let passed = report.violations.is_empty()
        && report.undecided.is_empty()
        && lost == 0
        && converged
        // Exact only when no increment was left unresolved: one that was is not a pass.
        && counter_checks.iter().all(|c| c.ok)
        && counter_unresolved == 0
        && faults.unexpected_exits.is_empty()
        && faults.restart_failures.is_empty()
        && faults.fault_errors.is_empty()
        && fatal_log_lines.is_empty();
    let result = Report {
        nodes: args.nodes,
        duration_s: args.duration,
        seed,
        operations: ops.len() as u64,
        ok: count(&|o| o.outcome == Outcome::Ok),
        failed: count(&|o| o.outcome == Outcome::Fail),
        unknown: count(&|o| o.outcome == Outcome::Unknown),
        writes_ok: count(&|o| o.outcome == Outcome::Ok && matches!(o.kind, OpKind::Write { .. })),
        reads_ok: count(&|o| o.outcome == Outcome::Ok && matches!(o.kind, OpKind::Read { .. })),
        ops_checked: report.ops_checked,
        keys_checked: report.keys,
        violations: report.violations.len(),
        undecided_keys: report.undecided.clone(),
        ledger_writes_acked: ledger.len(),
        acknowledged_writes_lost: lost,
        converged,
        counter_clients: args.counter_clients,
        sessions: !args.no_sessions,
        counter_increments_acked: tally.acked.values().sum(),
        counter_retries: tally.retries,
        counter_unknown_attempts: tally.unknown_attempts,
        counter_unresolved,
        counter_lost,
        counter_doubled,
        counter_sessions_opened: tally.sessions_opened,
        counter_sessions_expired: tally.sessions_expired,
        counters: counter_checks,
        lazyfs: args.lazyfs.is_some(),
        fatal_log_lines,
        faults_total: faults.total(),
        faults,
        history: history_path.display().to_string(),
        passed,
    };
    println!(
        "\nnodes {} | {} s | seed {}\noperations {} (ok {}, failed {}, unknown {}; writes ok {}, \
         reads ok {})\nfaults {} (kill {}, kill leader {}, partition {}, partition leader {}, \
         snapshot {}, power cut of one node {}, of the leader {}, of the whole cluster {}{})\n\
         restarts {} (on a new raft address {}); failed restarts {}; unexpected exits {}; \
         faults not injected {}; fatal node log lines {}\n\
         linearizability: {} ops on {} keys checked, {} violations, \
         undecided keys {:?}\nacknowledged writes lost: {} of {} ledger writes; converged: {}\n\
         counters ({} clients, {}): {} increments acknowledged, {} retries ({} attempts of \
         unknown outcome), {} unresolved; {} lost, {} doubled; sessions opened {}, expired {}\n\
         history: {}\nresult: {}",
        result.nodes,
        result.duration_s,
        result.seed,
        result.operations,
        result.ok,
        result.failed,
        result.unknown,
        result.writes_ok,
        result.reads_ok,
        result.faults_total,
        result.faults.kill,
        result.faults.kill_leader,
        result.faults.partition,
        result.faults.partition_leader,
        result.faults.snapshot,
        result.faults.power_cut,
        result.faults.power_cut_leader,
        result.faults.power_cut_all,
        if result.lazyfs { "" } else { "; no --lazyfs" },
        result.faults.restarts,
        result.faults.moves,
        result.faults.restart_failures.len(),
        result.faults.unexpected_exits.len(),
        result.faults.fault_errors.len(),
        result.fatal_log_lines.len(),
        result.ops_checked,
        result.keys_checked,
        result.violations,
        result.undecided_keys,
        result.acknowledged_writes_lost,
        result.ledger_writes_acked,
        result.converged,
        result.counter_clients,
        if result.sessions {
            "with sessions"
        } else {
            "NO sessions"
        },
        result.counter_increments_acked,
        result.counter_retries,
        result.counter_unknown_attempts,
        result.counter_unresolved,
        result.counter_lost,
        result.counter_doubled,
        result.counter_sessions_opened,
        result.counter_sessions_expired,
        result.history,
        if passed { "PASS" } else { "FAIL" }
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&result).map_err(|e| format!("report: {e}"))?
        );
    }
    if passed && args.work_dir.is_none() && !args.keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(passed)
}
