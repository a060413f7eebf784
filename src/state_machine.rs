//! The two traits a user implements. Their signatures match raftify's so a raftify state machine
//! ports by changing its `use` lines.
//!
//! Invariants pontoon relies on:
//! - `apply` is deterministic: every node applies the same committed entries in the same order and
//!   must reach the same state and return the same bytes. The bytes returned on the node that
//!   proposed the entry are what `RaftNode::propose` returns.
//! - `snapshot` captures every entry applied so far, and `restore` replaces the whole state with
//!   such a snapshot. After `restore`, pontoon applies only the entries that follow the snapshot.

use async_trait::async_trait;

use crate::error::Result;

/// A command in the replicated log. pontoon never looks inside: it stores and replicates the bytes.
pub trait AbstractLogEntry: Clone + Send + Sync + 'static {
    /// Serialise the entry for proposal.
    fn encode(&self) -> Result<Vec<u8>>;
    /// Parse an entry previously produced by `encode`.
    fn decode(bytes: &[u8]) -> Result<Self>
    where
        Self: Sized;
}

/// The application state replicated by raft.
#[async_trait]
pub trait AbstractStateMachine: Clone + Send + Sync + 'static {
    /// Apply one committed entry and return the response for the proposer.
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>>;
    /// Serialise the whole state (used for log compaction and catching up slow nodes).
    async fn snapshot(&self) -> Result<Vec<u8>>;
    /// Replace the whole state with a snapshot produced by `snapshot`.
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()>;
    /// Serialise the state machine value itself (raftify compatibility).
    fn encode(&self) -> Result<Vec<u8>>;
    /// Inverse of `encode` (raftify compatibility).
    fn decode(bytes: &[u8]) -> Result<Self>
    where
        Self: Sized;
}
