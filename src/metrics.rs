//! Per-node Prometheus metrics.
//!
//! pontoon uses the `prometheus` crate with one `Registry` per node rather than a process-global
//! recorder (as the `metrics` crate has): several nodes in one process — tests, memstore's
//! `--local-cluster` — keep their numbers apart, and the text exposition format comes built in.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The metrics of one node. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub proposals: IntCounter,
    pub proposals_held: IntCounter,
    pub votes_withheld: IntCounter,
    pub malformed_appends: IntCounter,
    pub committed_entries: IntCounter,
    pub applied_commands: IntCounter,
    pub session_commands_not_reapplied: IntCounter,
    pub sessions_open: IntGauge,
    pub applied_index: IntGauge,
    pub term: IntGauge,
    pub leader_changes: IntCounter,
    pub fsyncs: IntCounter,
    pub fsync_seconds: Histogram,
    pub ready_entries: Histogram,
    pub peer_messages_sent: IntCounterVec,
    pub peer_messages_dropped: IntCounterVec,
    pub snapshots: IntCounter,
    pub snapshot_bytes: Histogram,
    pub snapshot_chunks_sent: IntCounter,
    pub snapshot_chunks_received: IntCounter,
    pub snapshot_chunk_max_bytes: IntGauge,
    pub snapshot_transfers_failed: IntCounter,
    pub reads: IntCounter,
    pub read_index_rounds: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(h.clone()));
    h
}

fn per_peer(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &["peer"])
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    c
}

/// Metric names and help texts are constants of this file; prometheus only refuses malformed ones.
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

impl Metrics {
    /// Fresh metrics labelled with this node's id.
    pub fn new(node_id: u64) -> Self {
        let mut labels = std::collections::HashMap::new();
        labels.insert("node".to_string(), node_id.to_string());
        let registry = Registry::new_custom(Some("pontoon".into()), Some(labels))
            .unwrap_or_else(|_| Registry::new());
        let r = &registry;
        Metrics {
            proposals: counter(
                r,
                "proposals_total",
                "Proposals accepted into the log on this node",
            ),
            proposals_held: counter(
                r,
                "proposals_held_total",
                "Proposals the leader held back until its commit index moved (Config::append_window)",
            ),
            votes_withheld: counter(
                r,
                "votes_withheld_total",
                "Vote requests ignored because this node holds only the bootstrap configuration and the candidate's log is longer (a lost data dir must not vote)",
            ),
            malformed_appends: counter(
                r,
                "malformed_appends_total",
                "Appends dropped because their entries do not follow their index (raft-rs batch_append can build them); the leader resends",
            ),
            committed_entries: counter(
                r,
                "committed_entries_total",
                "Committed entries applied on this node",
            ),
            applied_commands: counter(
                r,
                "applied_commands_total",
                "User commands applied on this node (a batch entry counts each of its commands)",
            ),
            session_commands_not_reapplied: counter(
                r,
                "session_commands_not_reapplied_total",
                "Session commands answered from the session table (a retry of an applied number) or refused, instead of being applied",
            ),
            sessions_open: gauge(r, "sessions_open", "Client sessions open in the replicated session table"),
            applied_index: gauge(r, "applied_index", "Index of the last applied entry"),
            term: gauge(r, "term", "Current raft term"),
            leader_changes: counter(r, "leader_changes_total", "Times the known leader changed"),
            fsyncs: counter(r, "fsyncs_total", "Durable storage write transactions"),
            fsync_seconds: histogram(
                r,
                "fsync_seconds",
                "Latency of one durable storage write transaction",
                vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
                ],
            ),
            ready_entries: histogram(
                r,
                "ready_entries",
                "Log entries persisted per Ready (group commit batch size)",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
            ),
            peer_messages_sent: per_peer(
                r,
                "peer_messages_sent_total",
                "Raft messages delivered to a peer",
            ),
            peer_messages_dropped: per_peer(
                r,
                "peer_messages_dropped_total",
                "Raft messages dropped (queue full or peer unreachable)",
            ),
            snapshots: counter(r, "snapshots_total", "Snapshots taken or installed"),
            snapshot_bytes: histogram(
                r,
                "snapshot_bytes",
                "Size of snapshots taken or installed",
                prometheus::exponential_buckets(1024.0, 4.0, 10).unwrap_or_default(),
            ),
            snapshot_chunks_sent: counter(
                r,
                "snapshot_chunks_sent_total",
                "Snapshot chunks streamed to followers",
            ),
            snapshot_chunks_received: counter(
                r,
                "snapshot_chunks_received_total",
                "Snapshot chunks received from a leader",
            ),
            snapshot_chunk_max_bytes: gauge(
                r,
                "snapshot_chunk_max_bytes",
                "Largest snapshot chunk received",
            ),
            snapshot_transfers_failed: counter(
                r,
                "snapshot_transfers_failed_total",
                "Snapshot streams that broke or were refused",
            ),
            reads: counter(r, "reads_total", "Linearizable reads asked of this node"),
            read_index_rounds: counter(r, "read_index_rounds_total", "ReadIndex rounds started"),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
