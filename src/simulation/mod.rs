//! A deterministic simulation of whole pontoon clusters on one thread.
//!
//! Every node runs the real run loop over the real storage code, as tasks on one current-thread tokio runtime whose clock is paused: time moves
//! only when every task waits, straight to the next timer. Blocking storage work runs inline
//! (`crate::blocking`), the writer is a task, and every random choice (the network's drops,
//! duplicates and latencies, partitions, crashes, pauses, leader transfers, snapshots,
//! membership changes, the clients' operations, each node's election timeout and proposal
//! nonce) is drawn from the run's seed, so one seed replays one run exactly.
//!
//! - `network`: the simulated network (a `Transport` per node).
//! - `nodes`: a node's process: start, crash (the task is dropped), restart, pause.
//! - `kv`: the state machine clients write to.
//! - `workload`: the clients and the history they record.
//! - `checks`: what every run must satisfy.
//! - `runner`: one run, from seed to report.
//!
//! Crashes are power cuts: the WAL and the snapshot files live on a `SimDisk` per node, which
//! keeps only what was synced (and part of what was not); LMDB stays on real files in a
//! directory under /dev/shm (or the temp dir), trusted with its synced commits.

pub mod checks;
pub mod kv;
pub mod network;
pub mod nodes;
pub mod runner;
pub mod workload;

pub use runner::{
    run, FaultCounts, RunReport, SimOptions, DEFAULT_SEGMENT_BYTES, SMALL_SEGMENT_BYTES,
};
