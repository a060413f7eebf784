//! `LmdbStorage`: the default `LogStore`. Per node, one LMDB environment (through heed) holds who
//! the data dir belongs to, the membership and the snapshot's metadata; the log itself (entries,
//! hard state, compaction point) is an append-only WAL beside it (`wal/`), synced once per batch,
//! and the snapshot's data is a file (`snapshots/`).
//!
//! Layout (DESIGN §4, format 2; format 1 kept log and snapshot data in LMDB too):
//! - DB `meta`: `format_version`, `node_id`, `cluster_id`, `conf_state` (`conf index u64 BE |
//!   ConfState`), `snapshot_meta`, `peers` (bincode address book).
//! - `snapshots/<index>-<term>.snap`: the latest snapshot's envelope (`snapshot_files.rs`).
//! - `wal/*.seg`: see `wal/mod.rs`.
//!
//! Durability: the env is opened with LMDB's default flags, so every committed write transaction
//! is synced to disk before `commit` returns; every WAL record is `fdatasync`ed before its write
//! returns. The map grows (doubling) when it fills up.
//!
//! Ordering between the two: a batch writes the WAL (entries, hard state) first and then LMDB
//! (conf state, address book). Those two are facts about entries that are already committed and
//! durable, so a crash between the writes leaves an older membership that replaying the log
//! restores. A received snapshot is stored first (its file, then its metadata in LMDB) and then
//! resets the WAL; a crash between them is repaired on open (the log is reset to the stored
//! snapshot unless it already agrees with it).
//!
//! Concurrency: the run loop is the only writer of entries. The small values raft asks for on
//! every step are cached in memory and updated only after a write succeeded.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvOpenOptions, MdbError, RwTxn, WithoutTls};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

use super::records::{
    decode_cluster_id, decode_conf_state, decode_format_version, decode_node_id, decode_peers,
    decode_snapshot_meta, encode_conf_state, encode_pb, encode_peers, K_CLUSTER, K_CONF_STATE,
    K_FORMAT, K_NODE, K_PEERS, K_SNAPSHOT_META,
};
use super::snapshot_files::SnapshotFiles;
use super::wal::{Wal, DEFAULT_SEGMENT_BYTES};
use super::{lock_read, lock_write, LogStore, PersistBatch, StorageError};
use crate::config::Peers;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

type MetaDb = Database<Str, Bytes>;

/// The WAL's directory inside the data dir.
const WAL_DIR: &str = "wal";

/// Who a data dir belongs to, as recorded in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredIdentity {
    pub node_id: u64,
    pub cluster_id: String,
    pub format_version: u32,
}

/// An LMDB-backed raft log store. Cloning is cheap and shares the environment.
#[derive(Clone)]
pub struct LmdbStorage {
    inner: Arc<Inner>,
}

struct Inner {
    env: Env<WithoutTls>,
    wal: Wal,
    meta: MetaDb,
    snapshots: SnapshotFiles,
    /// Held shared by every transaction, exclusively while the map is resized (LMDB requires
    /// that no transaction is active during `mdb_env_set_mapsize`).
    txn_gate: RwLock<()>,
    cache: RwLock<Cache>,
    /// Set when raft asked for a snapshot this store could not serve.
    snapshot_request: AtomicBool,
    path: PathBuf,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    /// Shared, so that reading the cache (on every `term`/`entries` call) never copies the
    /// snapshot's conf state.
    snapshot_meta: Arc<SnapshotMetadata>,
    conf_state_index: u64,
}

impl LmdbStorage {
    /// Install a snapshot received from the leader, its data stored by `store_data`: the
    /// snapshot first (file, then the metadata naming it), then the log reset.
    /// `reconcile_log_with_snapshot` finishes an install a crash interrupted in between.
    fn install_snapshot_with(
        &self,
        meta: &SnapshotMetadata,
        peers: &Peers,
        store_data: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let truncated = self.inner.wal.truncated().0;
        if meta.index < truncated {
            return Err(StorageError::InvalidOperation(format!(
                "snapshot at {} is older than the compacted log ({truncated})",
                meta.index
            )));
        }
        store_data()?;
        self.write_txn(|inner, wtxn| {
            inner.put_pb(wtxn, K_SNAPSHOT_META, meta)?;
            inner.put_conf_state(wtxn, meta.get_conf_state(), meta.index)?;
            inner.put_peers(wtxn, peers)?;
            Ok(())
        })?;
        self.update_cache(|c| {
            c.snapshot_meta = Arc::new(meta.clone());
            c.conf_state_index = meta.index;
        });
        let mut hs = self.inner.wal.hard_state();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.inner.wal.reset((meta.index, meta.term), &hs)?;
        self.inner
            .snapshots
            .keep_only(Some((meta.index, meta.term)))
    }

    /// Open (or create) the data dir of `node_id` in `cluster_id`.
    ///
    /// A data dir recorded for another node, another cluster or another format version is refused
    /// with a typed error and is not modified.
    pub fn open(
        path: impl AsRef<Path>,
        node_id: u64,
        cluster_id: &str,
        initial_map_size: usize,
    ) -> Result<Self, StorageError> {
        Self::open_with_segment_bytes(
            path,
            node_id,
            cluster_id,
            initial_map_size,
            DEFAULT_SEGMENT_BYTES,
        )
    }

    /// `open`, with WAL segments of `segment_bytes` (tests use small ones to exercise rotation).
    pub(crate) fn open_with_segment_bytes(
        path: impl AsRef<Path>,
        node_id: u64,
        cluster_id: &str,
        initial_map_size: usize,
        segment_bytes: u64,
    ) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(StorageError::NotADataDir {
                path,
                reason: "it is a file, not a directory".into(),
            });
        }
        std::fs::create_dir_all(&path)?;
        let env = open_env(&path, initial_map_size, false)?;

        // Check identity first in a read transaction, so a foreign dir is never written to.
        let identity = {
            let rtxn = env.read_txn()?;
            let meta: Option<MetaDb> = env.open_database(&rtxn, Some("meta"))?;
            match meta {
                Some(meta) => Some(read_identity(&meta, &rtxn, &path)?),
                None => {
                    // No pontoon meta DB: only an empty environment may become a data dir.
                    let main: Option<Database<Bytes, Bytes>> = env.open_database(&rtxn, None)?;
                    if let Some(main) = main {
                        if !main.is_empty(&rtxn)? {
                            return Err(StorageError::NotADataDir {
                                path,
                                reason: "an LMDB environment without pontoon's metadata".into(),
                            });
                        }
                    }
                    None
                }
            }
        };
        if let Some(found) = &identity {
            check_identity(found, node_id, cluster_id, &path)?;
        }

        let mut wtxn = env.write_txn()?;
        let meta: MetaDb = env.create_database(&mut wtxn, Some("meta"))?;
        if identity.is_none() {
            meta.put(&mut wtxn, K_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
            meta.put(&mut wtxn, K_NODE, &node_id.to_be_bytes())?;
            meta.put(&mut wtxn, K_CLUSTER, cluster_id.as_bytes())?;
        }
        wtxn.commit()?;

        // The snapshot the metadata names must be there before anything else is touched.
        let snapshots = SnapshotFiles::open(&path, false)?;
        let current = {
            let rtxn = env.read_txn()?;
            read_snapshot_meta(&meta, &rtxn)?
        };
        let current = (current.index > 0).then_some((current.index, current.term));
        if let Some((index, term)) = current {
            snapshots.check(index, term)?;
        }
        let wal = Wal::open(&path.join(WAL_DIR), false, segment_bytes)?;
        snapshots.keep_only(current)?;
        let store = Self::from_parts(env, wal, meta, snapshots, path)?;
        store.reconcile_log_with_snapshot()?;
        Ok(store)
    }

    /// After a crash between storing a received snapshot and resetting the log, the log may not
    /// agree with the snapshot: reset it now (durably), as the interrupted install would have.
    fn reconcile_log_with_snapshot(&self) -> Result<(), StorageError> {
        let snap = self.cache().snapshot_meta;
        let wal = &self.inner.wal;
        if snap.index == 0
            || snap.index <= wal.truncated().0
            || wal.term(snap.index) == Some(snap.term)
        {
            return Ok(());
        }
        let mut hs = wal.hard_state();
        hs.term = hs.term.max(snap.term);
        hs.commit = hs.commit.max(snap.index);
        wal.reset((snap.index, snap.term), &hs)
    }

    fn from_parts(
        env: Env<WithoutTls>,
        wal: Wal,
        meta: MetaDb,
        snapshots: SnapshotFiles,
        path: PathBuf,
    ) -> Result<Self, StorageError> {
        let inner = Inner {
            env,
            wal,
            meta,
            snapshots,
            txn_gate: RwLock::new(()),
            cache: RwLock::new(Cache::default()),
            snapshot_request: AtomicBool::new(false),
            path,
        };
        let cache = inner.load_cache()?;
        *lock_write(&inner.cache) = cache;
        Ok(LmdbStorage {
            inner: Arc::new(inner),
        })
    }

    /// Read who a data dir belongs to without creating anything. `Ok(None)` when the dir does not
    /// exist or holds no pontoon data yet.
    pub fn peek_identity(path: impl AsRef<Path>) -> Result<Option<StoredIdentity>, StorageError> {
        let path = path.as_ref();
        if !path.join("data.mdb").exists() {
            return Ok(None);
        }
        let env = open_env(path, 1 << 20, true)?;
        let rtxn = env.read_txn()?;
        let meta: Option<MetaDb> = env.open_database(&rtxn, Some("meta"))?;
        match meta {
            Some(meta) => Ok(Some(read_identity(&meta, &rtxn, path)?)),
            None => Ok(None),
        }
    }

    /// Open an existing data dir read-only (for inspection while the node may be running).
    /// Creates nothing; a path that is not a pontoon data dir is a `NotADataDir` error.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let not_a_dir = |reason: &str| StorageError::NotADataDir {
            path: path.clone(),
            reason: reason.to_string(),
        };
        if !path.exists() {
            return Err(not_a_dir("no such directory"));
        }
        if !path.is_dir() {
            return Err(not_a_dir("it is a file, not a directory"));
        }
        if !path.join("data.mdb").exists() {
            return Err(not_a_dir("it holds no data.mdb"));
        }
        let env = open_env(&path, 1 << 20, true)?;
        let rtxn = env.read_txn()?;
        let meta: MetaDb = env
            .open_database(&rtxn, Some("meta"))?
            .ok_or_else(|| not_a_dir("an LMDB environment without pontoon's metadata"))?;
        read_identity(&meta, &rtxn, &path)?;
        // Committing (not dropping) the read transaction keeps the database handles valid.
        rtxn.commit()?;
        let wal = Wal::open(&path.join(WAL_DIR), true, DEFAULT_SEGMENT_BYTES)?;
        let snapshots = SnapshotFiles::open(&path, true)?;
        Self::from_parts(env, wal, meta, snapshots, path)
    }

    /// The stored conf state and the log index of the change it reflects.
    pub fn conf_state(&self) -> Result<(ConfState, u64), StorageError> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        let cs = self.inner.read_conf_state(&rtxn)?;
        Ok((cs, self.cache().conf_state_index))
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The identity recorded in this data dir.
    pub fn identity(&self) -> Result<StoredIdentity, StorageError> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        read_identity(&self.inner.meta, &rtxn, &self.inner.path)
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.inner.wal.hard_state())
    }

    /// How many WAL segment files the log spans.
    pub fn log_segments(&self) -> usize {
        self.inner.wal.segment_count()
    }

    /// Run `f` in a write transaction and commit it, growing the map and retrying when it is
    /// full. `f` may run more than once, so it must only write.
    fn write_txn<R>(
        &self,
        f: impl Fn(&Inner, &mut RwTxn) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        const MAX_GROWTHS: usize = 16;
        for _ in 0..MAX_GROWTHS {
            let outcome = {
                let _gate = lock_read(&self.inner.txn_gate);
                let mut wtxn = self.inner.env.write_txn()?;
                match f(&self.inner, &mut wtxn) {
                    Ok(value) => wtxn.commit().map(|()| value).map_err(StorageError::from),
                    Err(e) => Err(e), // dropping wtxn aborts it
                }
            };
            match outcome {
                Err(StorageError::Lmdb(heed::Error::Mdb(MdbError::MapFull))) => self.grow()?,
                other => return other,
            }
        }
        Err(StorageError::InvalidOperation(
            "LMDB map stayed full after repeated growth".into(),
        ))
    }

    fn grow(&self) -> Result<(), StorageError> {
        let _exclusive = lock_write(&self.inner.txn_gate);
        let current = self.inner.env.info().map_size;
        let new_size = current.saturating_mul(2);
        // SAFETY: the exclusive gate guarantees no transaction of this process is active.
        unsafe { self.inner.env.resize(new_size)? };
        Ok(())
    }

    fn cache(&self) -> Cache {
        lock_read(&self.inner.cache).clone()
    }

    fn update_cache(&self, f: impl FnOnce(&mut Cache)) {
        f(&mut lock_write(&self.inner.cache));
    }
}

fn open_env(
    path: &Path,
    map_size: usize,
    read_only: bool,
) -> Result<Env<WithoutTls>, StorageError> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    let page = 4096;
    options
        .map_size(map_size.div_ceil(page).max(1) * page)
        .max_dbs(8);
    if read_only {
        // SAFETY: READ_ONLY only restricts what this handle may do.
        unsafe { options.flags(heed::EnvFlags::READ_ONLY) };
    }
    // SAFETY: pontoon opens each data dir once per process (heed refuses a second open) and never
    // modifies the files outside LMDB.
    unsafe { options.open(path) }.map_err(|e| match e {
        heed::Error::Mdb(MdbError::Invalid) | heed::Error::Mdb(MdbError::VersionMismatch) => {
            StorageError::NotADataDir {
                path: path.to_path_buf(),
                reason: format!("data.mdb is not an LMDB file ({e})"),
            }
        }
        other => StorageError::Lmdb(other),
    })
}

/// The stored snapshot's metadata (index 0 when there is none).
fn read_snapshot_meta(meta: &MetaDb, rtxn: &heed::RoTxn) -> Result<SnapshotMetadata, StorageError> {
    match meta.get(rtxn, K_SNAPSHOT_META)? {
        Some(b) => decode_snapshot_meta(b),
        None => Ok(SnapshotMetadata::default()),
    }
}

fn read_identity(
    meta: &MetaDb,
    rtxn: &heed::RoTxn,
    path: &Path,
) -> Result<StoredIdentity, StorageError> {
    let missing = |key: &str| StorageError::NotADataDir {
        path: path.to_path_buf(),
        reason: format!("metadata has no {key}"),
    };
    let format = meta.get(rtxn, K_FORMAT)?.ok_or_else(|| missing(K_FORMAT))?;
    let format_version = decode_format_version(format)?;
    if format_version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: format_version,
            supported: FORMAT_VERSION,
        });
    }
    let node_id = decode_node_id(meta.get(rtxn, K_NODE)?.ok_or_else(|| missing(K_NODE))?)?;
    let cluster = meta
        .get(rtxn, K_CLUSTER)?
        .ok_or_else(|| missing(K_CLUSTER))?;
    let cluster_id = decode_cluster_id(cluster)?;
    Ok(StoredIdentity {
        node_id,
        cluster_id,
        format_version,
    })
}

fn check_identity(
    found: &StoredIdentity,
    node_id: u64,
    cluster_id: &str,
    path: &Path,
) -> Result<(), StorageError> {
    if found.cluster_id != cluster_id {
        return Err(StorageError::ForeignCluster {
            path: path.to_path_buf(),
            found: found.cluster_id.clone(),
            expected: cluster_id.to_string(),
        });
    }
    if found.node_id != node_id {
        return Err(StorageError::WrongNode {
            path: path.to_path_buf(),
            found: found.node_id,
            expected: node_id,
        });
    }
    Ok(())
}

impl Inner {
    fn load_cache(&self) -> Result<Cache, StorageError> {
        let rtxn = self.env.read_txn()?;
        let snapshot_meta = read_snapshot_meta(&self.meta, &rtxn)?;
        let conf_state_index = match self.meta.get(&rtxn, K_CONF_STATE)? {
            Some(b) => decode_conf_state(b)?.1,
            None => 0,
        };
        Ok(Cache {
            snapshot_meta: Arc::new(snapshot_meta),
            conf_state_index,
        })
    }

    fn read_conf_state(&self, rtxn: &heed::RoTxn) -> Result<ConfState, StorageError> {
        match self.meta.get(rtxn, K_CONF_STATE)? {
            Some(b) => Ok(decode_conf_state(b)?.0),
            None => Ok(ConfState::default()),
        }
    }

    fn put_pb(
        &self,
        wtxn: &mut RwTxn,
        key: &str,
        msg: &impl PbMessage,
    ) -> Result<(), StorageError> {
        let bytes = encode_pb(key, msg)?;
        self.meta.put(wtxn, key, &bytes)?;
        Ok(())
    }

    fn put_conf_state(
        &self,
        wtxn: &mut RwTxn,
        cs: &ConfState,
        index: u64,
    ) -> Result<(), StorageError> {
        let bytes = encode_conf_state(cs, index)?;
        self.meta.put(wtxn, K_CONF_STATE, &bytes)?;
        Ok(())
    }

    fn put_peers(&self, wtxn: &mut RwTxn, peers: &Peers) -> Result<(), StorageError> {
        let bytes = encode_peers(peers)?;
        self.meta.put(wtxn, K_PEERS, &bytes)?;
        Ok(())
    }
}

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
                if let Some(peers) = &batch.peers {
                    inner.put_peers(wtxn, peers)?;
                }
                Ok(())
            })?;
            if let Some((_, index)) = &batch.conf_state {
                self.update_cache(|c| c.conf_state_index = *index);
            }
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
        let meta = (*self.cache().snapshot_meta).clone();
        if meta.index == 0 {
            return Ok(None);
        }
        let path = self.inner.snapshots.existing_path(meta.index, meta.term)?;
        Ok(Some((meta, path)))
    }

    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let data = snapshot.get_data();
        self.save_snapshot_with(snapshot.get_metadata(), &mut |file| {
            Ok(std::io::Write::write_all(file, data)?)
        })
    }

    fn save_snapshot_with(
        &self,
        meta: &SnapshotMetadata,
        fill: &mut dyn FnMut(&mut std::fs::File) -> Result<(), StorageError>,
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

impl raft::Storage for LmdbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn().map_err(StorageError::from)?;
        let hard_state = self.inner.wal.hard_state();
        let conf_state = self.inner.read_conf_state(&rtxn)?;
        Ok(RaftState::new(hard_state, conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
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
                snap.set_data(crate::transport::snapshot_file_data(&path));
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

#[cfg(test)]
#[path = "lmdb_tests.rs"]
mod tests;
