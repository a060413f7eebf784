//! The log store: raft's `Storage` plus the write path the run loop needs.
//!
//! Invariants every `LogStore` keeps:
//! - `persist` is durable: when it returns `Ok`, everything in the batch survives a crash. The
//!   entries and hard state of a batch survive together or not at all. The conf state and
//!   address book describe entries that are already committed and durable; a store may write
//!   them after the log, since replaying the log restores them.
//! - Appending entries that start at index `i` removes every stored entry at `i` or above first
//!   (the conflicting suffix raft asked to overwrite).
//! - `term(first_index() - 1)` answers: the term of the last compacted entry is kept, as raft's
//!   `Storage` documentation asks.
//!
//! `LmdbStorage` is the default: an append-only WAL for the log (one `fdatasync` per batch), a
//! file per snapshot, and an LMDB env for identity, membership and snapshot metadata.

mod envelope;
mod error;
pub mod fs;
mod lmdb;
pub(crate) mod records;
mod snapshot_files;
mod snapshot_ref;
mod staged;
pub(crate) mod wal;

pub use envelope::{crc32, SnapshotEnvelope, ENVELOPE_VERSION};
pub use error::StorageError;
pub use lmdb::{LmdbStorage, StorageOptions, StoredIdentity, FORMAT_VERSION};
pub(crate) use snapshot_ref::{snapshot_file_data, snapshot_file_ref};
pub use staged::StagedLog;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::config::Peers;

// The storage's in-memory state (LMDB's cache, the WAL's index) is changed under these locks in
// a few steps that cannot fail; a poisoned lock only means another thread panicked while holding
// it elsewhere, and the value is still whole.
fn lock_read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn lock_write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// raft's size rule for `Storage::entries`: entries are taken while their total encoded size
/// stays within `max_size`, but at least one is always returned.
pub(crate) struct SizeBudget {
    max: Option<u64>,
    used: u64,
}

impl SizeBudget {
    pub(crate) fn new(max: Option<u64>) -> Self {
        SizeBudget { max, used: 0 }
    }

    /// Count `entry`; false when it would exceed the limit and `taken` entries are already in.
    pub(crate) fn admit(&mut self, entry: &Entry, taken: usize) -> bool {
        use protobuf::Message as _;
        self.admit_len(u64::from(entry.compute_size()), taken)
    }

    /// `admit` for an entry whose encoded size is already known.
    pub(crate) fn admit_len(&mut self, len: u64, taken: usize) -> bool {
        self.used += len;
        taken == 0 || self.max.is_none_or(|max| self.used <= max)
    }
}

/// One Ready's worth of state to make durable in a single transaction.
#[derive(Debug, Default)]
pub struct PersistBatch {
    /// New log entries; they replace any stored entries at or after their first index.
    pub entries: Vec<Entry>,
    /// The hard state (term, vote, commit) to store, when it changed.
    pub hard_state: Option<HardState>,
    /// The conf state after applying the conf change at the given log index.
    pub conf_state: Option<(ConfState, u64)>,
    /// The address book, when it changed, with the log index it reflects (the entries applied
    /// when it was taken): a restart trusts the newer of this and the latest snapshot's book.
    pub peers: Option<(Peers, u64)>,
}

impl PersistBatch {
    /// True when there is nothing to write (no transaction, no fsync).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
            && self.peers.is_none()
    }

    /// Fold a later batch into this one, so that writing the result equals writing `self` and
    /// then `later`: `later`'s entries replace ours from their first index on, and its hard
    /// state, conf state and address book win where present.
    pub fn merge(&mut self, later: PersistBatch) {
        if let Some(first) = later.entries.first().map(|e| e.index) {
            self.entries.retain(|e| e.index < first);
            self.entries.extend(later.entries);
        }
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if later.conf_state.is_some() {
            self.conf_state = later.conf_state;
        }
        if later.peers.is_some() {
            self.peers = later.peers;
        }
    }
}

/// A raft log store: what the run loop needs beyond `raft::Storage`.
///
/// All methods may block on disk; the run loop calls the writing ones off the async runtime.
pub trait LogStore: raft::Storage + Clone + Send + Sync + 'static {
    /// Durably write a batch (see the module invariants).
    fn persist(&self, batch: PersistBatch) -> Result<(), StorageError>;
    /// Replace the log with a snapshot received from the leader: store its data and metadata,
    /// drop every entry, and adopt its conf state and address book.
    fn install_snapshot(
        &self,
        meta: &SnapshotMetadata,
        data: &[u8],
        peers: &Peers,
    ) -> Result<(), StorageError>;
    /// Like `install_snapshot`, with the data in the file at `path`: a snapshot the transport
    /// received into the data dir and verified. The store takes the file over (the LMDB store
    /// renames it into place instead of copying it); `path` is gone afterwards. The default
    /// reads the file and calls `install_snapshot`.
    fn install_snapshot_file(
        &self,
        meta: &SnapshotMetadata,
        path: &std::path::Path,
        peers: &Peers,
    ) -> Result<(), StorageError> {
        let data = std::fs::read(path)?;
        self.install_snapshot(meta, &data, peers)?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }
    /// The file holding the latest stored snapshot's data with that snapshot's metadata, if the
    /// store keeps snapshots as files: a restart restores from it without reading it whole. The
    /// default (`None`) makes the caller use `latest_snapshot`.
    fn latest_snapshot_file(
        &self,
    ) -> Result<Option<(SnapshotMetadata, std::path::PathBuf)>, StorageError> {
        Ok(None)
    }
    /// Store a snapshot this node made of its own state (the log is left as it is).
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError>;
    /// Like `save_snapshot`, but `fill` writes the snapshot's data into the file itself, so a
    /// large state is streamed to disk instead of being held in memory whole (see
    /// `SnapshotEnvelope::write_streamed`). If `fill` fails, nothing is stored.
    fn save_snapshot_with(
        &self,
        meta: &SnapshotMetadata,
        fill: &mut dyn FnMut(&mut fs::FileCursor) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>;
    /// The file system the store keeps its snapshot files in (the transport and the run loop
    /// open snapshot files through it). The default is the operating system's.
    fn file_system(&self) -> std::sync::Arc<dyn fs::FileSystem> {
        fs::real()
    }
    /// Remove every entry below `compact_index`. Requires `compact_index <= last_index() + 1`.
    fn compact(&self, compact_index: u64) -> Result<(), StorageError>;
    /// The latest stored snapshot's metadata (index 0 when there is none).
    fn snapshot_metadata(&self) -> SnapshotMetadata;
    /// The latest stored snapshot, data included, if any.
    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError>;
    /// The stored address book.
    fn peers(&self) -> Result<Peers, StorageError>;
    /// The log index the stored address book reflects (0 when unknown: a data dir from before
    /// the index was recorded).
    fn peers_index(&self) -> u64 {
        0
    }
    /// The log index of the conf change the stored conf state reflects (0 = initial).
    fn conf_state_index(&self) -> u64;
    /// True (once) when raft asked for a snapshot the store could not give (none yet, too old,
    /// or one whose membership lacks the receiving node): the run loop then makes a fresh one.
    fn take_snapshot_request(&self) -> bool;
    /// Whether this store holds a raft state already (a restart) or is brand new.
    fn is_initialized(&self) -> Result<bool, StorageError>;
}
