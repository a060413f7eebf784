//! `raft::Storage` for `LmdbStorage`: what raft-rs reads while it steps (entries, terms, the
//! initial state and snapshots to send).

use std::sync::atomic::Ordering;

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState};

use super::LmdbStorage;
use crate::storage::LogStore;

impl raft::Storage for LmdbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hard_state = self.inner.wal.hard_state();
        // The newer of the stored conf state and the latest snapshot's (see `conf_state`).
        let (conf_state, _) = self.conf_state()?;
        Ok(RaftState::new(hard_state, conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        // A failed read is returned as it is: raft-rs reads through `StagedLog`, which keeps
        // such errors from reaching it (raft-rs panics on them).
        self.inner.wal.entries(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let wal = &self.inner.wal;
        if let Some(term) = wal.term(idx) {
            return Ok(term);
        }
        let snap = self.cache().snapshot_meta;
        if idx == snap.index {
            // The stored snapshot still knows its term, even below the compacted index.
            return Ok(snap.term);
        }
        if idx < wal.truncated().0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.inner.wal.truncated().0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.inner.wal.last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The data is a reference to the snapshot file, not its bytes: the run loop calls this
        // and must not read a large file, and the transport streams the file in chunks (see
        // `transport::snapshot_sender`).
        if let Some((meta, path)) = self.latest_snapshot_file()? {
            let cs = meta.get_conf_state();
            // A node refuses a snapshot whose membership does not include it (a new learner
            // would, given the snapshot from before it was added).
            let includes_receiver = cs.voters.contains(&to)
                || cs.learners.contains(&to)
                || cs.voters_outgoing.contains(&to)
                || cs.learners_next.contains(&to);
            if meta.index >= request_index && includes_receiver {
                let mut snap = Snapshot::default();
                snap.set_data(crate::storage::snapshot_file_data(&path));
                snap.set_metadata(meta);
                return Ok(snap);
            }
        }
        // Ask the run loop for a fresh snapshot; raft asks again on its next probe.
        self.inner.snapshot_request.store(true, Ordering::Release);
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
