//! `LmdbStorage`: the default `LogStore`. Per node, one LMDB environment (through heed) holds who
//! the data dir belongs to, the membership and the snapshot's metadata; the log itself (entries,
//! hard state, compaction point) is an append-only WAL beside it (`wal/`), synced once per batch,
//! and the snapshot's data is a file (`snapshots/`).
//!
//! Layout (format 2, described in docs/architecture.md "On disk"; format 1 kept log and
//! snapshot data in LMDB too):
//! - DB `meta`: `format_version`, `node_id`, `cluster_id`, `conf_state` (`conf index u64 BE |
//!   ConfState`), `snapshot_meta`, `peers` (bincode address book), `peers_index` (u64 BE: the
//!   log index the book reflects; absent in older data dirs).
//! - A restart takes the membership and the address book from whichever is newer by log index:
//!   these keys, or the latest snapshot (its metadata and envelope). A snapshot's commit and the
//!   writer's commit of a conf change are separate, and a crash may keep either alone.
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
//!
//! Here: opening a data dir and the LMDB side. `identity` checks who a data dir belongs to;
//! `log_store` and `raft_storage` implement the two traits the node and raft-rs call.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, MdbError, RwTxn, WithoutTls};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use super::fs::FileSystem;
use super::records::{
    decode_conf_state, decode_snapshot_meta, encode_conf_state, encode_pb, encode_peers, u64_from,
    K_CLUSTER, K_CONF_STATE, K_FORMAT, K_NODE, K_PEERS, K_PEERS_INDEX, K_SNAPSHOT_META,
};
use super::snapshot_files::SnapshotFiles;
use super::wal::{Wal, WalOptions};
use super::{lock_read, lock_write, StorageError};
use crate::config::Peers;

mod dir_lock;
mod identity;
mod log_store;
mod raft_storage;

use dir_lock::{DataDirLock, LOCK_FILE};
use identity::{check_identity, read_identity, MetaDb};
pub use identity::{StoredIdentity, FORMAT_VERSION};

/// The WAL's directory inside the data dir.
const WAL_DIR: &str = "wal";

/// How to open a data dir. `StorageOptions::default()` is what a node uses in production.
#[derive(Clone)]
pub struct StorageOptions {
    /// Initial LMDB map size in bytes; it grows on demand.
    pub initial_map_size: usize,
    /// Bytes of recent log entries kept in memory (`Config::entry_cache_bytes`).
    pub entry_cache_bytes: usize,
    /// Size after which the WAL starts a new segment (tests use small ones).
    pub segment_bytes: u64,
    /// Where the WAL and the snapshot files live: the operating system's files, or a simulated
    /// disk in tests. LMDB always uses the real data dir.
    pub fs: Arc<dyn FileSystem>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        let wal = WalOptions::default();
        StorageOptions {
            initial_map_size: 1 << 30,
            entry_cache_bytes: wal.cache_bytes,
            segment_bytes: wal.segment_bytes,
            fs: super::fs::real(),
        }
    }
}

impl StorageOptions {
    fn wal(&self) -> WalOptions {
        WalOptions {
            segment_bytes: self.segment_bytes,
            cache_bytes: self.entry_cache_bytes,
        }
    }
}

/// An LMDB-backed raft log store. Cloning is cheap and shares the environment.
#[derive(Clone)]
pub struct LmdbStorage {
    inner: Arc<Inner>,
}

struct Inner {
    fs: Arc<dyn FileSystem>,
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
    /// Held while a writable store is open (see `dir_lock`); `None` when opened read-only.
    _dir_lock: Option<DataDirLock>,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    /// Shared, so that reading the cache (on every `term`/`entries` call) never copies the
    /// snapshot's conf state.
    snapshot_meta: Arc<SnapshotMetadata>,
    conf_state_index: u64,
    peers_index: u64,
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
            inner.put_peers(wtxn, peers, meta.index)?;
            Ok(())
        })?;
        self.update_cache(|c| {
            c.snapshot_meta = Arc::new(meta.clone());
            c.conf_state_index = meta.index;
            c.peers_index = meta.index;
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
        let options = StorageOptions {
            initial_map_size,
            ..Default::default()
        };
        Self::open_with(path, node_id, cluster_id, options)
    }

    /// `open` with every option (see `StorageOptions`).
    pub fn open_with(
        path: impl AsRef<Path>,
        node_id: u64,
        cluster_id: &str,
        options: StorageOptions,
    ) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(StorageError::NotADataDir {
                path,
                reason: "it is a file, not a directory".into(),
            });
        }
        std::fs::create_dir_all(&path)?;
        // Before LMDB is opened, so a second open (another process, or this one) is refused
        // with a clear error and touches nothing.
        let lock_was_there = path.join(LOCK_FILE).exists();
        let lock = DataDirLock::acquire(&path)?;
        let opened = Self::open_locked(&path, lock, node_id, cluster_id, options);
        match opened {
            Ok(store) => Ok(store),
            Err(e) => {
                // The lock went with the failed open.
                if !lock_was_there {
                    // A refused dir (another cluster's, not pontoon's) is left as it was found.
                    let _ = std::fs::remove_file(path.join(LOCK_FILE));
                }
                Err(e)
            }
        }
    }

    /// `open_with_segment_bytes` once the data dir's lock is held.
    fn open_locked(
        path: &Path,
        lock: DataDirLock,
        node_id: u64,
        cluster_id: &str,
        options: StorageOptions,
    ) -> Result<Self, StorageError> {
        let path = path.to_path_buf();
        let env = open_env(&path, options.initial_map_size, false)?;

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
        let fs = options.fs.clone();
        let snapshots = SnapshotFiles::open(fs.clone(), &path, false)?;
        let current = {
            let rtxn = env.read_txn()?;
            read_snapshot_meta(&meta, &rtxn)?
        };
        let current = (current.index > 0).then_some((current.index, current.term));
        if let Some((index, term)) = current {
            snapshots.check(index, term)?;
        }
        let wal = Wal::open(fs.clone(), &path.join(WAL_DIR), false, options.wal())?;
        snapshots.keep_only(current)?;
        let store = Self::from_parts(fs, env, wal, meta, snapshots, path, Some(lock))?;
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
        fs: Arc<dyn FileSystem>,
        env: Env<WithoutTls>,
        wal: Wal,
        meta: MetaDb,
        snapshots: SnapshotFiles,
        path: PathBuf,
        dir_lock: Option<DataDirLock>,
    ) -> Result<Self, StorageError> {
        let inner = Inner {
            fs,
            env,
            wal,
            meta,
            snapshots,
            txn_gate: RwLock::new(()),
            cache: RwLock::new(Cache::default()),
            snapshot_request: AtomicBool::new(false),
            path,
            _dir_lock: dir_lock,
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
        if std::fs::metadata(path.join("data.mdb"))?.len() == 0 {
            // LMDB would answer "Bad file descriptor" for an empty file opened read-only.
            return Err(not_a_dir("its data.mdb is empty"));
        }
        // LMDB creates lock.mdb even for a read-only open: a dir refused below (a data.mdb
        // that is not pontoon's) is left as it was found.
        let lock_file = path.join("lock.mdb");
        let had_lock_file = lock_file.exists();
        let opened = (|| {
            let env = open_env(&path, 1 << 20, true)?;
            let rtxn = env.read_txn()?;
            let meta: MetaDb = env
                .open_database(&rtxn, Some("meta"))?
                .ok_or_else(|| not_a_dir("an LMDB environment without pontoon's metadata"))?;
            read_identity(&meta, &rtxn, &path)?;
            // Committing (not dropping) the read transaction keeps the database handles valid.
            rtxn.commit()?;
            Ok::<_, StorageError>((env, meta))
        })();
        let (env, meta) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if !had_lock_file {
                    let _ = std::fs::remove_file(&lock_file);
                }
                return Err(e);
            }
        };
        let fs = super::fs::real();
        let wal = Wal::open(fs.clone(), &path.join(WAL_DIR), true, WalOptions::default())?;
        let snapshots = SnapshotFiles::open(fs.clone(), &path, true)?;
        Self::from_parts(fs, env, wal, meta, snapshots, path, None)
    }

    /// The membership this data dir holds and the log index it reflects: the stored conf state
    /// or the latest snapshot's, whichever is newer. The two are written by separate LMDB
    /// commits (the writer's and the snapshot's), so after a crash either may be the newer.
    pub fn conf_state(&self) -> Result<(ConfState, u64), StorageError> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        let cs = self.inner.read_conf_state(&rtxn)?;
        let cache = self.cache();
        let snap = &cache.snapshot_meta;
        if snap.index > cache.conf_state_index {
            return Ok((snap.get_conf_state().clone(), snap.index));
        }
        Ok((cs, cache.conf_state_index))
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

impl Inner {
    fn load_cache(&self) -> Result<Cache, StorageError> {
        let rtxn = self.env.read_txn()?;
        let snapshot_meta = read_snapshot_meta(&self.meta, &rtxn)?;
        let conf_state_index = match self.meta.get(&rtxn, K_CONF_STATE)? {
            Some(b) => decode_conf_state(b)?.1,
            None => 0,
        };
        let peers_index = match self.meta.get(&rtxn, K_PEERS_INDEX)? {
            Some(b) => u64_from(b, K_PEERS_INDEX)?,
            None => 0,
        };
        Ok(Cache {
            snapshot_meta: Arc::new(snapshot_meta),
            conf_state_index,
            peers_index,
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

    fn put_peers(&self, wtxn: &mut RwTxn, peers: &Peers, index: u64) -> Result<(), StorageError> {
        let bytes = encode_peers(peers)?;
        self.meta.put(wtxn, K_PEERS, &bytes)?;
        self.meta.put(wtxn, K_PEERS_INDEX, &index.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
