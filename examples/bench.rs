//! pontoon's benchmark: an N-node cluster in this process (real loopback gRPC, WAL + LMDB, fsync on,
//! fresh data dirs), driven by concurrent proposers through `RaftNode::propose`.
//!
//!     cargo run --release --example bench -- --nodes 3 --clients 256 --seconds 10
//!     cargo run --release --example bench -- --mode read --clients 64 --json
//!
//! Prints throughput, latency percentiles, fsyncs per write, writes per entry, bytes on disk and
//! peak RSS.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use pontoon::{
    async_trait, AbstractStateMachine, Config, FrozenState, Peers, Raft, Result, SnapshotSink,
};

#[derive(Parser, Debug)]
#[command(about = "pontoon benchmark")]
struct Args {
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent proposers (or readers).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to run the load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Entry size in bytes.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// `write` (proposals) or `read` (linearizable reads).
    #[arg(long, default_value = "write")]
    mode: String,
    /// Send the load to followers too (forwarded), instead of the leader only.
    #[arg(long)]
    all_nodes: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Instead of the load: fill the state with this many MiB, then time `make_snapshot` (how
    /// long the run loop stalls while the state machine serialises and the snapshot is stored).
    #[arg(long)]
    snapshot_mib: Option<usize>,
    /// With --snapshot-mib: serialise the state with `snapshot_to` on the run loop instead of
    /// freezing it (`freeze`) and writing it on a snapshot thread, to compare the stalls.
    #[arg(long)]
    snapshot_on_loop: bool,
    /// Instead of the load: stop a follower, commit this many writes without it (no compaction),
    /// restart it on its data dir and time how fast it catches up. Reported per log entry and per
    /// write: with command batches one entry carries several writes (`--commands-per-entry 1`
    /// makes them equal).
    #[arg(long)]
    catchup: Option<u64>,
    /// At most this many writes share one log entry (`Config::max_commands_per_entry`; 1 gives
    /// every write its own entry, as before command batches).
    #[arg(long, default_value_t = pontoon::Config::default().max_commands_per_entry)]
    commands_per_entry: usize,
    /// `Config::append_window`: uncommitted entries on the leader before new proposals wait for
    /// the commit index to move (0 never holds).
    #[arg(long, default_value_t = pontoon::Config::default().append_window)]
    append_window: u64,
    /// After the load, print every node's metrics (Prometheus text) to stderr.
    #[arg(long)]
    dump_metrics: bool,
    /// Write mode: every proposer opens its own client session and writes through
    /// `Session::propose` (exactly-once), to measure what sessions cost.
    #[arg(long)]
    sessions: bool,
}

/// Counts applied entries and keeps the bytes of large ones (so a snapshot has real size);
/// answers nothing.
#[derive(Clone, Default)]
struct Counter {
    applied: Arc<AtomicU64>,
    /// Entries of 1 KiB or more, shared rather than copied: a frozen state clones this list.
    blobs: Arc<std::sync::Mutex<Vec<Arc<Vec<u8>>>>>,
    /// Whether `freeze` hands out the state (else snapshots serialise on the run loop).
    freeze: bool,
}

/// The counter and the blobs as of `freeze`, written on pontoon's snapshot thread.
struct FrozenCounter {
    applied: u64,
    blobs: Vec<Arc<Vec<u8>>>,
}

impl FrozenState for FrozenCounter {
    fn write_snapshot(self: Box<Self>, out: &mut SnapshotSink) -> Result<()> {
        let write = |out: &mut SnapshotSink, bytes: &[u8]| {
            out.write_all(bytes)
                .map_err(|e| pontoon::Error::StateMachine(format!("writing the snapshot: {e}")))
        };
        write(out, &self.applied.to_be_bytes())?;
        for blob in &self.blobs {
            write(out, blob)?;
        }
        Ok(())
    }
}

#[async_trait]
impl AbstractStateMachine for Counter {
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>> {
        self.applied.fetch_add(1, Ordering::Relaxed);
        if log_entry.len() >= 1024 {
            self.blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(log_entry));
        }
        Ok(Vec::new())
    }
    async fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = self.applied.load(Ordering::Relaxed).to_be_bytes().to_vec();
        for blob in self.blobs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.extend_from_slice(blob);
        }
        Ok(out)
    }
    fn freeze(&self) -> Option<Box<dyn FrozenState>> {
        if !self.freeze {
            return None;
        }
        Some(Box::new(FrozenCounter {
            applied: self.applied.load(Ordering::Relaxed),
            blobs: self.blobs.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }))
    }
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        let mut b = [0u8; 8];
        b.copy_from_slice(snapshot.get(..8).unwrap_or(&[0; 8]));
        self.applied.store(u64::from_be_bytes(b), Ordering::Relaxed);
        Ok(())
    }
    fn encode(&self) -> Result<Vec<u8>> {
        self.snapshot_bytes()
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        let c = Counter::default();
        if bytes.len() >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            c.applied.store(u64::from_be_bytes(b), Ordering::Relaxed);
        }
        Ok(c)
    }
}

impl Counter {
    fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.applied.load(Ordering::Relaxed).to_be_bytes().to_vec())
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let listeners: Vec<_> = (0..args.nodes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let peers: Peers = (1..=args.nodes)
        .zip(
            listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.to_string())),
        )
        .map(|(id, a)| a.map(|a| (id, a)))
        .collect::<std::io::Result<_>>()?;
    drop(listeners);
    let logger = pontoon::slog::Logger::root(pontoon::slog::Discard, pontoon::slog::o!());
    let start_node = |id: u64| {
        let config = Config {
            data_dir: tmp.path().join(format!("node-{id}")),
            initial_peers: Some(peers.clone()),
            cluster_id: "bench".into(),
            tick_interval: Duration::from_millis(50),
            snapshot_threshold: 1_000_000,
            max_commands_per_entry: args.commands_per_entry,
            append_window: args.append_window,
            ..Default::default()
        };
        let addr = peers[&id].clone();
        let logger = logger.clone();
        let counter = Counter {
            freeze: !args.snapshot_on_loop,
            ..Counter::default()
        };
        async move {
            let raft = Raft::bootstrap(id, addr, counter, config, logger).await?;
            tokio::spawn(raft.clone().run());
            Ok::<_, pontoon::Error>(raft)
        }
    };
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        nodes.push(start_node(id).await?);
    }
    let leader_id = nodes[0].wait_for_leader(Duration::from_secs(20)).await?;
    let leader = nodes[(leader_id - 1) as usize].clone();
    // Warm up connections and the leader's first entry.
    leader.propose(vec![0; args.size]).await?;
    if let Some(mib) = args.snapshot_mib {
        for _ in 0..mib {
            leader.propose(vec![1u8; 1024 * 1024]).await?;
        }
        // Probe the run loop while the snapshot is taken: the slowest inspect() is the stall.
        let probe_node = leader.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_probe = stop.clone();
        let probe = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !stop_probe.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _ = probe_node.inspect().await;
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            worst
        });
        let t = Instant::now();
        let index = leader.make_snapshot().await?;
        let total_ms = t.elapsed().as_secs_f64() * 1000.0;
        stop.store(true, Ordering::Relaxed);
        let stall_ms = probe.await?.as_secs_f64() * 1000.0;
        let result = serde_json::json!({
            "mode": "snapshot",
            "state_mib": mib,
            "written_by": if args.snapshot_on_loop { "snapshot_to on the run loop" } else { "freeze, then a snapshot thread" },
            "snapshot_index": index,
            "make_snapshot_ms": total_ms,
            "run_loop_max_stall_ms": stall_ms,
            "peak_rss_kib": peak_rss_kib(),
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        for node in &nodes {
            let _ = node.quit().await;
        }
        return Ok(());
    }
    if let Some(count) = args.catchup {
        let follower = if leader_id == 1 { 2 } else { 1 };
        let idx = (follower - 1) as usize;
        nodes[idx].quit().await?;
        let behind_from = leader.status().applied;
        // Commit `count` entries without the follower, `clients` proposals at a time.
        let next = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for _ in 0..args.clients.max(1) {
            let (leader, next, size) = (leader.clone(), next.clone(), args.size);
            writers.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    leader.propose(vec![3u8; size]).await?;
                }
                Ok::<_, pontoon::Error>(())
            }));
        }
        for w in writers {
            w.await??;
        }
        let target = leader.status().applied;
        let t = Instant::now();
        let restarted = start_node(follower).await?;
        let mut polls = 0u64;
        while restarted.status().applied < target {
            polls += 1;
            if t.elapsed() > Duration::from_secs(600) {
                return Err("the follower did not catch up within 10 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let entries = target - behind_from;
        // The writes committed while it was away.
        let writes_behind = count;
        let result = serde_json::json!({
            "mode": "catchup",
            "setup": format!("{} nodes in one process, loopback gRPC, WAL + LMDB with fsync on", args.nodes),
            "entries_behind": entries,
            "writes_behind": writes_behind,
            "write_bytes": args.size,
            "commands_per_entry_limit": args.commands_per_entry,
            "catchup_seconds": secs,
            "entries_per_sec": entries as f64 / secs,
            "writes_per_sec": writes_behind as f64 / secs,
            "polls": polls,
            "note": "time from restarting the follower (open the data dir, start gRPC) until it applied the leader's applied index",
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        nodes[idx] = restarted;
        for node in &nodes {
            let _ = node.quit().await;
        }
        return Ok(());
    }
    let before = leader.metrics_text();

    // One session per proposer, opened before the clock starts (one entry through the log each).
    let mut sessions = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let target = if args.all_nodes {
            &nodes[c % nodes.len()]
        } else {
            &leader
        };
        sessions.push(if args.sessions && args.mode == "write" {
            Some(target.session().await?)
        } else {
            None
        });
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let target = if args.all_nodes {
            nodes[c % nodes.len()].clone()
        } else {
            leader.clone()
        };
        let read = args.mode == "read";
        let size = args.size;
        let session = sessions[c].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = if read {
                    target.read_index().await.is_ok()
                } else if let Some(session) = &session {
                    session.propose(vec![7u8; size]).await.is_ok()
                } else {
                    target.propose(vec![7u8; size]).await.is_ok()
                };
                if ok {
                    latencies.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let after = leader.metrics_text();
    let committed = metric(&after, "pontoon_committed_entries_total")
        - metric(&before, "pontoon_committed_entries_total");
    let commands = metric(&after, "pontoon_applied_commands_total")
        - metric(&before, "pontoon_applied_commands_total");
    let fsyncs = metric(&after, "pontoon_fsyncs_total") - metric(&before, "pontoon_fsyncs_total");
    let ops = all.len() as f64;
    let per = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
    let result = serde_json::json!({
        "mode": args.mode,
        "sessions": args.sessions,
        "setup": format!("{} nodes in one process, loopback gRPC, WAL + LMDB with fsync on", args.nodes),
        "clients": args.clients,
        "entry_bytes": args.size,
        "seconds": elapsed,
        "ops": all.len(),
        "errors": errors,
        "ops_per_sec": ops / elapsed,
        "p50_ms": percentile(&all, 0.50),
        "p99_ms": percentile(&all, 0.99),
        "p999_ms": percentile(&all, 0.999),
        "leader_fsyncs": fsyncs,
        // Writes applied on the leader (each command of a batch entry counts), and the entries
        // that carried them: several commands proposed together share one entry.
        "leader_applied_writes": commands,
        "leader_committed_entries": committed,
        "writes_per_entry": per(commands, committed),
        "fsyncs_per_write": per(fsyncs, commands),
        "bytes_on_disk": dir_bytes(tmp.path()),
        "peak_rss_kib": peak_rss_kib(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        for (k, v) in result.as_object().into_iter().flatten() {
            println!("{k:<28} {v}");
        }
    }
    if args.dump_metrics {
        for (i, node) in nodes.iter().enumerate() {
            eprintln!("# node {}\n{}", i + 1, node.metrics_text());
        }
    }
    for node in &nodes {
        let _ = node.quit().await;
    }
    Ok(())
}
