//! The bounded sweep of deterministic cluster simulations (see `pontoon::simulation`): many
//! seeds, each a whole cluster under faults for 60 simulated seconds, every check after every
//! run. `PONTOON_SIM_RUNS` and `PONTOON_SIM_FROM` change how many seeds and from where;
//! `examples/simulate.rs` runs an open-ended sweep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pontoon::simulation::{run, RunReport, SimOptions, SMALL_SEGMENT_BYTES};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_sweep_of_simulated_clusters_passes_every_check() {
    let runs = env_u64("PONTOON_SIM_RUNS", 500);
    let from = env_u64("PONTOON_SIM_FROM", 1);
    let next = Arc::new(AtomicU64::new(from));
    let reports: Arc<Mutex<Vec<RunReport>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (next, reports) = (next.clone(), reports.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= from + runs {
                    return;
                }
                let report = run(&SimOptions::sweep(seed));
                reports.lock().unwrap().push(report);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a sweep thread");
    }
    let reports = std::mem::take(&mut *reports.lock().unwrap());
    let wall = started.elapsed();
    assert_eq!(reports.len() as u64, runs);
    let failed: Vec<&RunReport> = reports.iter().filter(|r| !r.passed()).collect();
    let mut message = String::new();
    for report in &failed {
        message.push_str(&format!(
            "seed {} failed:\n  {}\n  replay: {}\n",
            report.seed,
            report.failures.join("\n  "),
            report.options.replay_command()
        ));
    }
    assert!(
        failed.is_empty(),
        "{} of {runs} runs failed:\n{message}",
        failed.len()
    );
    // Every run must have done what the sweep claims: faults for at least 60 simulated
    // seconds, client traffic, and each kind of fault somewhere in the sweep.
    for report in &reports {
        assert!(
            report.simulated >= Duration::from_secs(60),
            "seed {}: {:?}",
            report.seed,
            report.simulated
        );
        assert!(
            report.acknowledged_writes > 0,
            "seed {}: no write acknowledged",
            report.seed
        );
    }
    let total = |f: fn(&RunReport) -> u32| reports.iter().map(f).sum::<u32>();
    let kinds = [
        ("partitions", total(|r| r.faults.partitions)),
        ("flaky links", total(|r| r.faults.flaky_links)),
        ("crashes", total(|r| r.faults.crashes)),
        ("pauses", total(|r| r.faults.pauses)),
        ("leader transfers", total(|r| r.faults.transfers)),
        ("snapshots", total(|r| r.faults.snapshots)),
        ("membership changes", total(|r| r.faults.membership_changes)),
        ("disk faults", total(|r| r.faults.disk_faults)),
        ("stops on a disk fault", total(|r| r.faults.disk_stops)),
    ];
    for (kind, count) in kinds {
        assert!(count > 0, "the sweep injected no {kind}");
    }
    let snapshots: u64 = reports.iter().map(|r| r.network.snapshots).sum();
    assert!(snapshots > 0, "no snapshot was ever sent to a follower");
    // The exactly-once check is only as good as the retries it saw: session writes whose first
    // attempt had an unknown outcome and that were then answered.
    let session_retries: usize = reports.iter().map(|r| r.session_retries).sum();
    if runs >= 100 {
        assert!(
            session_retries > 0,
            "no session write was retried after an unknown outcome"
        );
    }
    eprintln!(
        "{runs} runs in {:.1} s ({:.2} runs/s); faults: {kinds:?}; snapshots sent: {snapshots}; \
         session writes answered after a retry: {session_retries}",
        wall.as_secs_f64(),
        runs as f64 / wall.as_secs_f64()
    );
}

#[test]
fn one_seed_replays_the_same_run() {
    let seed = env_u64("PONTOON_SIM_FROM", 1) + 7;
    let first = run(&SimOptions::new(seed));
    let second = run(&SimOptions::new(seed));
    assert!(first.ops > 0);
    assert_eq!(
        (first.fingerprint, first.ops, &first.failures),
        (second.fingerprint, second.ops, &second.failures),
        "seed {seed} ran differently twice"
    );
}

/// Seeds that once failed, kept whatever the sweep's range: each is replayed with every check.
/// - 253: raft-rs 0.7's `batch_append` merged entries into an append whose index they did not
///   follow, and the follower acknowledged entries it did not hold (the run loop now drops such
///   appends; see `malformed_append` in src/node/run_loop.rs).
/// - 22, 77: a node whose disk returned bad bytes failed to install the leader's snapshot and
///   stopped, but on its way out wrote the commit index raft had taken from that snapshot; on
///   restart raft-rs refused a commit index past the log (a fatal stop no longer writes).
/// - 100645: a leader applied its own removal and raft-rs 0.7 panicked when its next write was
///   persisted (it looked up its own progress); a removed leader now steps down at once.
/// - 201973: a node restoring a verified snapshot file got zeros on the second read, and the
///   simulated state machine decoded them as an empty state: the node lost every write below
///   the snapshot. A snapshot source now checks its bytes against the CRC again as the state
///   machine reads them, and the node stops on a mismatch.
/// - 13 (issue 21, defect 2; found with 4 KiB WAL segments): a restarted leader's uncommitted
///   tail, straddling a segment rotation, was overwritten by the new leader from below the
///   rotation, the older segment was then compacted away, and replay refused its own log
///   ("append at 50 overwrites compacted log"); replay now lets such an overwrite restart the gap.
/// - 2681, 3288: a voter whose full disk kept it at the bootstrap configuration, then the
///   learner promoted before it held anything: both withhold their votes from longer logs, and
///   the two voters with the log could never again make a quorum of four. A change is now
///   refused unless a quorum of its voters holds more than the bootstrap configuration.
/// - 4464: the simulated network did not teach a receiver the sender's address as the gRPC
///   server does, so a member that missed the entry adding the new leader never answered it,
///   and the leader never learned that member needed a snapshot (a simulation defect).
/// - 2450: a restarted pre-candidate learned a higher commit index from a refused vote and
///   raft-rs read the newly committed entries while stepping it ("commit by vote"); the disk
///   returned bad bytes, and raft-rs panicked on the error. Such a read now answers raft-rs short,
///   keeps the error, and the run loop stops the node before anything from that turn leaves.
///   (Since the fix for 3533 this seed runs differently and no longer reaches that read; 6639
///   does, and the tests in src/storage/staged.rs take raft-rs down both such paths.)
/// - 3533: a follower restarted while its first ReadIndex round was unanswered; the leader's
///   answer (index 170) reached the new run, whose first round had the same context (round
///   numbers restarted at 1), and answered a read that started after a write at a later index
///   was acknowledged: a stale read. A round's context now starts with a number drawn per run.
/// - 6639 (found with the fix for 2450 undone): the same as 2450, a node restarted after ENOSPC
///   read a bad entry while it committed by vote as a pre-candidate; it stops on the disk error.
#[test]
fn seeds_that_once_failed_pass_every_check() {
    let small_segments = |seed| SimOptions {
        wal_segment_bytes: SMALL_SEGMENT_BYTES,
        ..SimOptions::new(seed)
    };
    let seeds = [
        253, 22, 77, 100645, 201973, 2681, 3288, 4464, 2450, 3533, 6639,
    ]
    .map(SimOptions::new)
    .into_iter()
    .chain([small_segments(13)]);
    for options in seeds {
        let report = run(&options);
        assert!(
            report.passed(),
            "seed {} failed again:\n  {}\n  replay: {}",
            options.seed,
            report.failures.join("\n  "),
            options.replay_command()
        );
    }
}
