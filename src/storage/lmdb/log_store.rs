//! `LogStore` for `LmdbStorage`: what the run loop and the writer thread call to make Readies,
//! snapshots and compaction durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::LmdbStorage;
use crate::config::Peers;
use crate::storage::fs::{FileCursor, FileSystem};
use crate::storage::records::{decode_peers, K_PEERS, K_SNAPSHOT_META};
use crate::storage::{lock_read, LogStore, PersistBatch, StorageError};

impl LogStore for LmdbStorage {
    fn persist(&self, batch: PersistBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        // The log first: the conf state and address book describe entries already durable.
        self.inner
            .wal
            .append(&batch.entries, batch.hard_state.as_ref())?;
        if batch.conf_state.is_some() || batch.peers.is_some() {
            self.write_txn(|inner, wtxn| {
                if let Some((cs, index)) = &batch.conf_state {
                    inner.put_conf_state(wtxn, cs, *index)?;
                }
                if let Some((peers, index)) = &batch.peers {
                    inner.put_peers(wtxn, peers, *index)?;
                }
                Ok(())
            })?;
            self.update_cache(|c| {
                if let Some((_, index)) = &batch.conf_state {
                    c.conf_state_index = *index;
                }
                if let Some((_, index)) = &batch.peers {
                    c.peers_index = *index;
                }
            });
        }
        Ok(())
    }

    fn install_snapshot(
        &self,
        meta: &SnapshotMetadata,
        data: &[u8],
        peers: &Peers,
    ) -> Result<(), StorageError> {
        self.install_snapshot_with(meta, peers, || {
            self.inner.snapshots.write(meta.index, meta.term, data)
        })
    }

    fn install_snapshot_file(
        &self,
        meta: &SnapshotMetadata,
        path: &std::path::Path,
        peers: &Peers,
    ) -> Result<(), StorageError> {
        self.install_snapshot_with(meta, peers, || {
            self.inner.snapshots.adopt(meta.index, meta.term, path)
        })
    }

    fn latest_snapshot_file(
        &self,
    ) -> Result<Option<(SnapshotMetadata, std::path::PathBuf)>, StorageError> {
        let mut meta = (*self.cache().snapshot_meta).clone();
        if meta.index == 0 {
            return Ok(None);
        }
        // A newer snapshot may be stored between reading the metadata and looking for its file,
        // and the older file deleted: then the newer one is there (a store names a file only
        // once it is durable, and deletes older files only after that). Look again, a few times
        // at most; a file missing under unchanged metadata is real damage.
        let mut tries = 0;
        loop {
            match self.inner.snapshots.existing_path(meta.index, meta.term) {
                Ok(path) => return Ok(Some((meta, path))),
                Err(missing) => {
                    let now = (*self.cache().snapshot_meta).clone();
                    tries += 1;
                    if (now.index, now.term) == (meta.index, meta.term) || tries == 3 {
                        return Err(missing);
                    }
                    meta = now;
                }
            }
        }
    }

    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let data = snapshot.get_data();
        self.save_snapshot_with(snapshot.get_metadata(), &mut |file| {
            Ok(std::io::Write::write_all(file, data)?)
        })
    }

    fn file_system(&self) -> Arc<dyn FileSystem> {
        self.inner.fs.clone()
    }

    fn peers_index(&self) -> u64 {
        self.cache().peers_index
    }

    fn save_snapshot_with(
        &self,
        meta: &SnapshotMetadata,
        fill: &mut dyn FnMut(&mut FileCursor) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let current = self.cache().snapshot_meta.index;
        if meta.index < current {
            return Err(StorageError::InvalidOperation(format!(
                "snapshot at {} is older than the stored one at {current}",
                meta.index
            )));
        }
        self.inner
            .snapshots
            .write_with(meta.index, meta.term, fill)?;
        self.write_txn(|inner, wtxn| inner.put_pb(wtxn, K_SNAPSHOT_META, meta))?;
        self.update_cache(|c| c.snapshot_meta = Arc::new(meta.clone()));
        self.inner
            .snapshots
            .keep_only(Some((meta.index, meta.term)))
    }

    fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        self.inner.wal.compact(compact_index)
    }

    fn snapshot_metadata(&self) -> SnapshotMetadata {
        (*self.cache().snapshot_meta).clone()
    }

    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let meta = (*self.cache().snapshot_meta).clone();
        if meta.index == 0 {
            return Ok(None);
        }
        let data = self.inner.snapshots.read(meta.index, meta.term)?;
        let mut snap = Snapshot::default();
        snap.set_data(bytes::Bytes::from(data));
        snap.set_metadata(meta);
        Ok(Some(snap))
    }

    fn peers(&self) -> Result<Peers, StorageError> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        match self.inner.meta.get(&rtxn, K_PEERS)? {
            Some(b) => decode_peers(b),
            None => Ok(Peers::new()),
        }
    }

    fn conf_state_index(&self) -> u64 {
        self.cache().conf_state_index
    }

    fn take_snapshot_request(&self) -> bool {
        self.inner.snapshot_request.swap(false, Ordering::AcqRel)
    }

    fn is_initialized(&self) -> Result<bool, StorageError> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        let cs = self.inner.read_conf_state(&rtxn)?;
        Ok(!cs.voters.is_empty() || !cs.learners.is_empty() || self.inner.wal.last_index() > 0)
    }
}
