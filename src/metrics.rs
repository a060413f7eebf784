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
///
/// Every metric is registered under the `pontoon_` prefix with a constant `node` label (the
/// node's id); read them all with `RaftNode::metrics_text` and serve them to Prometheus. The
/// fields are the live handles the node updates; they are public for the node's own
/// components, and an application only needs to read them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `pontoon_proposals_total`: user commands this node, as leader, appended to its log (a
    /// batch entry counts each of its commands). Compare with `applied_commands` to see work
    /// waiting for its commit.
    pub proposals: IntCounter,
    /// `pontoon_proposals_held_total`: proposals the leader held back because its append window
    /// was full (`Config::append_window`), counted once each when first held. Growing steadily
    /// means followers are slower than the offered load.
    pub proposals_held: IntCounter,
    /// `pontoon_votes_withheld_total`: vote requests this node ignored because it holds only the
    /// bootstrap configuration while the candidate's log is longer: a node whose data dir was
    /// lost must not help elect a leader. Non-zero points at a node started on an empty dir.
    pub votes_withheld: IntCounter,
    /// `pontoon_malformed_appends_total`: append messages dropped because their entries do not
    /// follow their index (raft-rs `batch_append` can build them); the leader sends them again.
    pub malformed_appends: IntCounter,
    /// `pontoon_committed_entries_total`: committed log entries this node applied (normal and
    /// membership entries; a batch entry counts once).
    pub committed_entries: IntCounter,
    /// `pontoon_applied_commands_total`: user commands handed to the state machine's `apply` on
    /// this node (each command of a batch entry counts).
    pub applied_commands: IntCounter,
    /// `pontoon_session_commands_not_reapplied_total`: session commands that were not applied
    /// again: a retry of an already applied number answered from the session table, or a command
    /// refused (its session expired, or its number was already acknowledged).
    pub session_commands_not_reapplied: IntCounter,
    /// `pontoon_sessions_open`: client sessions currently open in the replicated session table
    /// (bounded by `Config::max_sessions`).
    pub sessions_open: IntGauge,
    /// `pontoon_applied_index`: index of the last log entry this node applied. Members that
    /// lag the leader's value are catching up.
    pub applied_index: IntGauge,
    /// `pontoon_term`: this node's current raft term. A term that keeps rising means repeated
    /// elections.
    pub term: IntGauge,
    /// `pontoon_leader_changes_total`: times this node saw the known leader change to another
    /// node (a spell with no known leader is not counted).
    pub leader_changes: IntCounter,
    /// `pontoon_fsyncs_total`: durable write batches handed to storage by the writer thread
    /// (one `LogStore::persist` call, one WAL record and fsync each), failed ones included.
    pub fsyncs: IntCounter,
    /// `pontoon_fsync_seconds`: how long each of those durable writes took, in seconds. The
    /// floor of write latency: a proposal is not acknowledged before its entry is persisted.
    pub fsync_seconds: Histogram,
    /// `pontoon_ready_entries`: log entries per durable write batch (group commit size); batches
    /// holding only hard state are not observed.
    pub ready_entries: Histogram,
    /// `pontoon_peer_messages_sent_total{peer}`: raft messages delivered to each peer (counted
    /// when the batch carrying them was sent).
    pub peer_messages_sent: IntCounterVec,
    /// `pontoon_peer_messages_dropped_total{peer}`: raft messages to each peer that were dropped:
    /// its queue was full, the send failed, or (tests) a fault dropped them. Raft retransmits;
    /// a steady rate means the peer is down or too slow.
    pub peer_messages_dropped: IntCounterVec,
    /// `pontoon_snapshots_total`: snapshots this node took or installed from a leader.
    pub snapshots: IntCounter,
    /// `pontoon_snapshot_bytes`: size in bytes of each snapshot this node takes (installed
    /// snapshots are not observed here, despite the metric's help text).
    pub snapshot_bytes: Histogram,
    /// `pontoon_snapshot_chunks_sent_total`: snapshot chunks this node read and streamed to
    /// followers in `InstallSnapshot` calls.
    pub snapshot_chunks_sent: IntCounter,
    /// `pontoon_snapshot_chunks_received_total`: snapshot chunks this node received from a
    /// leader.
    pub snapshot_chunks_received: IntCounter,
    /// `pontoon_snapshot_chunk_max_bytes`: size of the largest snapshot chunk received so far
    /// (checks that senders keep to `Config::snapshot_chunk_bytes`).
    pub snapshot_chunk_max_bytes: IntGauge,
    /// `pontoon_snapshot_transfers_failed_total`: incoming snapshot streams this node refused or
    /// that broke: chunks out of order, sizes or checksum that do not add up, a bad envelope.
    pub snapshot_transfers_failed: IntCounter,
    /// `pontoon_reads_total`: linearizable reads (ReadIndex barriers) asked of this node's run
    /// loop.
    pub reads: IntCounter,
    /// `pontoon_read_index_rounds_total`: ReadIndex rounds this node started; concurrent reads
    /// share a round, so this grows slower than `reads` under load.
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
