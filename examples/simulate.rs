//! Deterministic cluster simulations from the command line.
//!
//! ```text
//! # an open-ended sweep (until interrupted, or --runs M), on two threads:
//! cargo run --release --features simulation --example simulate -- --from-seed 1000
//! # replay one run, with the nodes' logs:
//! cargo run --release --features simulation --example simulate -- --seed 1234
//! ```
//!
//! Every failing run is printed with its seed, what failed and the one command that replays
//! it. The exit status is 1 when any run failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use pontoon::simulation::{run, RunReport, SimOptions, DEFAULT_SEGMENT_BYTES};

#[derive(Parser)]
#[command(about = "Deterministic simulations of pontoon clusters")]
struct Args {
    /// Replay this one seed, with the nodes' logs on stderr.
    #[arg(long, conflicts_with_all = ["from_seed", "runs"])]
    seed: Option<u64>,
    /// Sweep seeds from this one upwards.
    #[arg(long, default_value_t = 0)]
    from_seed: u64,
    /// How many runs the sweep makes (default: until interrupted).
    #[arg(long)]
    runs: Option<u64>,
    /// Threads running seeds side by side (each run is single-threaded).
    #[arg(long, default_value_t = 2)]
    threads: u64,
    /// Simulated seconds of faults per run.
    #[arg(long, default_value_t = 60)]
    fault_seconds: u64,
    /// With --seed: no node logs.
    #[arg(long)]
    quiet: bool,
    /// With --seed: clients write through sessions (a sweep runs odd seeds with sessions and
    /// even ones without; a failure's replay command says which).
    #[arg(long)]
    sessions: bool,
    /// With --seed: the nodes' WAL segment size (a sweep uses 4096 for seeds whose remainder by
    /// 4 is 0 or 1; a failure's replay command says which).
    #[arg(long, default_value_t = DEFAULT_SEGMENT_BYTES)]
    segment_bytes: u64,
}

fn describe(report: &RunReport) -> String {
    format!(
        "seed {}{}: {} ops ({} acknowledged writes, {} session writes answered after a retry), {:.0} simulated s, faults {:?}, network {:?}, fingerprint {:016x}",
        report.seed,
        if report.options.sessions { " (sessions)" } else { "" },
        report.ops,
        report.acknowledged_writes,
        report.session_retries,
        report.simulated.as_secs_f64(),
        report.faults,
        report.network,
        report.fingerprint
    )
}

fn print_failure(report: &RunReport) {
    eprintln!("FAILED seed {}:", report.seed);
    for failure in &report.failures {
        eprintln!("  {failure}");
    }
    eprintln!("  replay: {}", report.options.replay_command());
}

fn main() {
    let args = Args::parse();
    let fault_time = Duration::from_secs(args.fault_seconds);
    if let Some(seed) = args.seed {
        let options = SimOptions {
            seed,
            fault_time,
            verbose: !args.quiet,
            sessions: args.sessions,
            wal_segment_bytes: args.segment_bytes,
        };
        let report = run(&options);
        println!("{}", describe(&report));
        if !report.passed() {
            print_failure(&report);
            std::process::exit(1);
        }
        println!("passed");
        return;
    }
    let next = Arc::new(AtomicU64::new(args.from_seed));
    let end = args.runs.map(|runs| args.from_seed.saturating_add(runs));
    let failed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let (next, failed, done) = (next.clone(), failed.clone(), done.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if end.is_some_and(|end| seed >= end) {
                    return;
                }
                let report = run(&SimOptions {
                    fault_time,
                    ..SimOptions::sweep(seed)
                });
                let count = done.fetch_add(1, Ordering::SeqCst) + 1;
                if !report.passed() {
                    failed.store(true, Ordering::SeqCst);
                    print_failure(&report);
                }
                if count % 50 == 0 {
                    let rate = count as f64 / started.elapsed().as_secs_f64();
                    println!(
                        "{count} runs, {rate:.2} runs/s; last: {}",
                        describe(&report)
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let count = done.load(Ordering::SeqCst);
    println!(
        "{count} runs in {:.1} s ({:.2} runs/s)",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64()
    );
    if failed.load(Ordering::SeqCst) {
        std::process::exit(1);
    }
}
