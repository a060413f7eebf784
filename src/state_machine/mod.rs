//! The two traits a user implements. Their signatures match raftify's so a raftify state machine
//! ports by changing its `use` lines.
//!
//! Invariants pontoon relies on:
//! - `apply` is deterministic: every node applies the same committed entries in the same order and
//!   must reach the same state and return the same bytes. The bytes returned on the node that
//!   proposed the entry are what `RaftNode::propose` returns.
//! - `snapshot` captures every entry applied so far, and `restore` replaces the whole state with
//!   such a snapshot. After `restore`, pontoon applies only the entries that follow the snapshot.
//! - A [`FrozenState`] handed out by `freeze` writes the state as of the moment `freeze` was
//!   called, whatever is applied afterwards: it is written on another thread while `apply` goes on.

mod snapshot_sink;
mod snapshot_source;

use async_trait::async_trait;

use crate::error::{Error, Result};

pub(crate) use snapshot_sink::SnapshotChunk;
pub use snapshot_sink::SnapshotSink;
pub use snapshot_source::SnapshotSource;
pub(crate) use snapshot_source::UserBytesCrc;

/// A command in the replicated log. pontoon never looks inside: it stores and replicates the bytes.
///
/// The convention: propose `entry.encode()?` (or `RaftNode::propose_entry(&entry)`), and decode
/// the bytes `apply` receives with `decode`. pontoon itself only moves bytes, so any encoding works.
pub trait AbstractLogEntry: Clone + Send + Sync + 'static {
    /// Serialise the entry for proposal.
    fn encode(&self) -> Result<Vec<u8>>;
    /// Parse an entry previously produced by `encode`.
    fn decode(bytes: &[u8]) -> Result<Self>
    where
        Self: Sized;
}

/// A copy of a state machine's state taken by [`AbstractStateMachine::freeze`], written into a
/// snapshot away from the run loop.
pub trait FrozenState: Send + 'static {
    /// Write the snapshot bytes of the frozen state into `out`: exactly what `restore` reads,
    /// as `snapshot_to` would have written them when `freeze` was called. It runs on a blocking
    /// thread and may take as long as the state needs; an error (or a panic) discards the
    /// snapshot and leaves the log uncompacted.
    fn write_snapshot(self: Box<Self>, out: &mut SnapshotSink) -> Result<()>;
}

/// The application state replicated by raft.
#[async_trait]
pub trait AbstractStateMachine: Clone + Send + Sync + 'static {
    /// Apply one committed entry and return the response for the proposer.
    ///
    /// An error goes to the proposer as `Error::StateMachine` (whatever variant is returned
    /// here): the entry is committed, and every node applies it and gets the same error, so
    /// `apply` must be deterministic in failing too.
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>>;
    /// Serialise the whole state (used for log compaction and catching up slow nodes).
    async fn snapshot(&self) -> Result<Vec<u8>>;
    /// Write the same bytes as `snapshot` into `out`. pontoon calls this one; the default calls
    /// `snapshot` and writes its result.
    ///
    /// Override it for a large state: `out` passes the bytes to the snapshot file in 1 MiB
    /// pieces while you serialise, so the state is never held twice in memory (the map plus its
    /// serialised copy). The bytes must be exactly what `restore` reads. Like `snapshot`, it
    /// runs on the run loop and must capture the state as of now.
    async fn snapshot_to(&self, out: &mut SnapshotSink) -> Result<()> {
        let bytes = self.snapshot().await?;
        out.write_owned(bytes)
            .map_err(|e| Error::StateMachine(format!("writing the snapshot: {e}")))
    }
    /// Capture the state as of now without serialising it, so the snapshot is written on a
    /// blocking thread while the run loop goes on applying entries. pontoon calls this first
    /// when it takes a snapshot, and falls back to `snapshot_to` on the run loop when it returns
    /// `None` (the default).
    ///
    /// Implement it when the state can be captured cheaply: a copy-on-write structure, an
    /// `Arc` of an immutable map plus a table of writes made since (see memstore), or a state
    /// small enough to clone. It runs on the run loop, so it must not cost time proportional to
    /// the whole state; that is the stall it exists to avoid (`snapshot_to` on a million keys
    /// holds the loop for over 100 ms, during which no heartbeat is sent and no entry applied).
    fn freeze(&self) -> Option<Box<dyn FrozenState>> {
        None
    }
    /// Replace the whole state with a snapshot produced by `snapshot`.
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()>;
    /// Replace the whole state with the snapshot `source` reads. pontoon calls this one; the
    /// default reads every byte and calls `restore`.
    ///
    /// Override it for a large state: `source` reads the snapshot file through a buffer while
    /// you deserialise, so the file's bytes are never held in memory beside the state rebuilt
    /// from them. The snapshot's checksum was verified before this is called, and is checked
    /// again as you read: bytes that differ from the verified ones make the last read fail
    /// with `InvalidData` (and stop the node even if you stopped reading early). Like
    /// `restore`, it runs on the run loop.
    async fn restore_from(&mut self, source: &mut SnapshotSource) -> Result<()> {
        let bytes = source
            .read_all()
            .map_err(|e| Error::StateMachine(format!("reading the snapshot: {e}")))?;
        self.restore(bytes).await
    }
    /// Serialise the state machine value itself. pontoon never calls it (snapshots go through
    /// `snapshot` / `snapshot_to`); it exists so a raftify state machine ports unchanged. The
    /// default refuses.
    fn encode(&self) -> Result<Vec<u8>> {
        Err(Error::StateMachine(
            "encode is not implemented (pontoon does not need it)".into(),
        ))
    }
    /// Inverse of `encode`; never called by pontoon either. The default refuses.
    fn decode(_bytes: &[u8]) -> Result<Self>
    where
        Self: Sized,
    {
        Err(Error::StateMachine(
            "decode is not implemented (pontoon does not need it)".into(),
        ))
    }
}
