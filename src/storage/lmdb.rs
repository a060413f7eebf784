//! `LmdbStorage`: the default `LogStore`, one LMDB environment per node (through heed).
//!
//! Layout (DESIGN §4):
//! - DB `entries`: big-endian u64 index -> `term u64 BE | eraftpb::Entry bytes`. The term prefix
//!   lets `term()` answer without decoding the entry.
//! - DB `meta`: `format_version`, `node_id`, `cluster_id`, `hard_state`, `conf_state`
//!   (`conf index u64 BE | ConfState`), `snapshot_meta`, `truncated` (index and term of the last
//!   entry no longer in the log), `peers` (bincode address book).
//! - DB `snapshot`: `data` -> the latest snapshot's envelope.
//!
//! Durability: the env is opened with LMDB's default flags, so every committed write transaction
//! is synced to disk before `commit` returns. The map grows (doubling) when it fills up.
//!
//! Concurrency: the run loop is the only writer. First/last index and the other small values raft
//! asks for on every step are cached in memory and updated only after a commit succeeded.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvOpenOptions, MdbError, RwTxn, WithoutTls};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

use super::records::{
    corrupt, decode_cluster_id, decode_conf_state, decode_entry, decode_format_version,
    decode_hard_state, decode_node_id, decode_peers, decode_snapshot_meta, decode_truncated,
    encode_conf_state, encode_entry, encode_pb, encode_peers, encode_truncated, entry_term,
    K_CLUSTER, K_CONF_STATE, K_FORMAT, K_HARD_STATE, K_NODE, K_PEERS, K_SNAPSHOT_META, K_TRUNCATED,
};
use super::{LogStore, PersistBatch, SizeBudget, StorageError};
use crate::config::Peers;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

type EntriesDb = Database<U64<BigEndian>, Bytes>;
type MetaDb = Database<Str, Bytes>;

const K_SNAPSHOT_DATA: &str = "data";

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
    entries: EntriesDb,
    meta: MetaDb,
    snapshot: MetaDb,
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
    /// Index and term of the last entry that is no longer in the log (0, 0 initially).
    truncated: (u64, u64),
    /// Index of the last stored entry, or `truncated.0` when the log is empty.
    last: u64,
    /// Shared, so that reading the cache (on every `term`/`entries` call) never copies the
    /// snapshot's conf state.
    snapshot_meta: Arc<SnapshotMetadata>,
    conf_state_index: u64,
}

fn lock_read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data (a cache of
    // committed values) is still consistent because it is replaced whole after each commit.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn lock_write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl LmdbStorage {
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
        let entries: EntriesDb = env.create_database(&mut wtxn, Some("entries"))?;
        let meta: MetaDb = env.create_database(&mut wtxn, Some("meta"))?;
        let snapshot: MetaDb = env.create_database(&mut wtxn, Some("snapshot"))?;
        if identity.is_none() {
            meta.put(&mut wtxn, K_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
            meta.put(&mut wtxn, K_NODE, &node_id.to_be_bytes())?;
            meta.put(&mut wtxn, K_CLUSTER, cluster_id.as_bytes())?;
        }
        wtxn.commit()?;

        Self::from_parts(env, entries, meta, snapshot, path)
    }

    fn from_parts(
        env: Env<WithoutTls>,
        entries: EntriesDb,
        meta: MetaDb,
        snapshot: MetaDb,
        path: PathBuf,
    ) -> Result<Self, StorageError> {
        let inner = Inner {
            env,
            entries,
            meta,
            snapshot,
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
        let entries: EntriesDb = env
            .open_database(&rtxn, Some("entries"))?
            .ok_or_else(|| not_a_dir("no entries database"))?;
        let snapshot: MetaDb = env
            .open_database(&rtxn, Some("snapshot"))?
            .ok_or_else(|| not_a_dir("no snapshot database"))?;
        // Committing (not dropping) the read transaction keeps the database handles valid.
        rtxn.commit()?;
        Self::from_parts(env, entries, meta, snapshot, path)
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
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        self.inner.read_hard_state(&rtxn)
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
        let truncated = match self.meta.get(&rtxn, K_TRUNCATED)? {
            Some(b) => decode_truncated(b)?,
            None => (0, 0),
        };
        let last = match self.entries.last(&rtxn)? {
            Some((index, _)) => index,
            None => truncated.0,
        };
        let snapshot_meta = match self.meta.get(&rtxn, K_SNAPSHOT_META)? {
            Some(b) => decode_snapshot_meta(b)?,
            None => SnapshotMetadata::default(),
        };
        let conf_state_index = match self.meta.get(&rtxn, K_CONF_STATE)? {
            Some(b) => decode_conf_state(b)?.1,
            None => 0,
        };
        Ok(Cache {
            truncated,
            last,
            snapshot_meta: Arc::new(snapshot_meta),
            conf_state_index,
        })
    }

    fn read_hard_state(&self, rtxn: &heed::RoTxn) -> Result<HardState, StorageError> {
        match self.meta.get(rtxn, K_HARD_STATE)? {
            Some(b) => decode_hard_state(b),
            None => Ok(HardState::default()),
        }
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

    fn put_truncated(&self, wtxn: &mut RwTxn, index: u64, term: u64) -> Result<(), StorageError> {
        self.meta
            .put(wtxn, K_TRUNCATED, &encode_truncated(index, term))?;
        Ok(())
    }
}

impl LogStore for LmdbStorage {
    fn persist(&self, batch: PersistBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let cache = self.cache();
        let first_new = batch.entries.first().map(|e| e.index);
        if let Some(first_new) = first_new {
            if first_new <= cache.truncated.0 {
                return Err(StorageError::InvalidOperation(format!(
                    "append at {first_new} overwrites compacted log (compacted up to {})",
                    cache.truncated.0
                )));
            }
            if first_new > cache.last + 1 {
                return Err(StorageError::InvalidOperation(format!(
                    "append at {first_new} leaves a gap after last index {}",
                    cache.last
                )));
            }
        }
        let encoded: Vec<(u64, Vec<u8>)> = batch
            .entries
            .iter()
            .map(|e| encode_entry(e).map(|b| (e.index, b)))
            .collect::<Result<_, _>>()?;
        self.write_txn(|inner, wtxn| {
            if let Some(first_new) = first_new {
                if first_new <= cache.last {
                    inner.entries.delete_range(wtxn, &(first_new..))?;
                }
                for (index, bytes) in &encoded {
                    inner.entries.put(wtxn, index, bytes)?;
                }
            }
            if let Some(hs) = &batch.hard_state {
                inner.put_pb(wtxn, K_HARD_STATE, hs)?;
            }
            if let Some((cs, index)) = &batch.conf_state {
                inner.put_conf_state(wtxn, cs, *index)?;
            }
            if let Some(peers) = &batch.peers {
                inner.put_peers(wtxn, peers)?;
            }
            Ok(())
        })?;
        self.update_cache(|c| {
            if let Some(last) = batch.entries.last() {
                c.last = last.index;
            }
            if let Some((_, index)) = &batch.conf_state {
                c.conf_state_index = *index;
            }
        });
        Ok(())
    }

    fn install_snapshot(
        &self,
        meta: &SnapshotMetadata,
        data: &[u8],
        peers: &Peers,
    ) -> Result<(), StorageError> {
        let cache = self.cache();
        if meta.index < cache.truncated.0 {
            return Err(StorageError::InvalidOperation(format!(
                "snapshot at {} is older than the compacted log ({})",
                meta.index, cache.truncated.0
            )));
        }
        self.write_txn(|inner, wtxn| {
            let rtxn: &heed::RoTxn = wtxn;
            let mut hs = inner.read_hard_state(rtxn)?;
            hs.term = hs.term.max(meta.term);
            hs.commit = meta.index;
            inner.entries.clear(wtxn)?;
            inner.put_pb(wtxn, K_HARD_STATE, &hs)?;
            inner.put_pb(wtxn, K_SNAPSHOT_META, meta)?;
            inner.put_conf_state(wtxn, meta.get_conf_state(), meta.index)?;
            inner.put_truncated(wtxn, meta.index, meta.term)?;
            inner.put_peers(wtxn, peers)?;
            inner.snapshot.put(wtxn, K_SNAPSHOT_DATA, data)?;
            Ok(())
        })?;
        self.update_cache(|c| {
            c.truncated = (meta.index, meta.term);
            c.last = meta.index;
            c.snapshot_meta = Arc::new(meta.clone());
            c.conf_state_index = meta.index;
        });
        Ok(())
    }

    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        self.write_txn(|inner, wtxn| {
            inner.put_pb(wtxn, K_SNAPSHOT_META, meta)?;
            inner
                .snapshot
                .put(wtxn, K_SNAPSHOT_DATA, snapshot.get_data())?;
            Ok(())
        })?;
        self.update_cache(|c| c.snapshot_meta = Arc::new(meta.clone()));
        Ok(())
    }

    fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let cache = self.cache();
        if compact_index <= cache.truncated.0 + 1 {
            return Ok(());
        }
        if compact_index > cache.last + 1 {
            return Err(StorageError::InvalidOperation(format!(
                "compact to {compact_index} beyond last index {}",
                cache.last
            )));
        }
        let new_truncated = compact_index - 1;
        let term = raft::Storage::term(self, new_truncated)
            .map_err(|e| StorageError::InvalidOperation(format!("term of {new_truncated}: {e}")))?;
        self.write_txn(|inner, wtxn| {
            inner.entries.delete_range(wtxn, &(..compact_index))?;
            inner.put_truncated(wtxn, new_truncated, term)?;
            Ok(())
        })?;
        self.update_cache(|c| c.truncated = (new_truncated, term));
        Ok(())
    }

    fn snapshot_metadata(&self) -> SnapshotMetadata {
        (*self.cache().snapshot_meta).clone()
    }

    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let meta = (*self.cache().snapshot_meta).clone();
        if meta.index == 0 {
            return Ok(None);
        }
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn()?;
        let data = self
            .inner
            .snapshot
            .get(&rtxn, K_SNAPSHOT_DATA)?
            .ok_or_else(|| corrupt("snapshot", "metadata present but data missing"))?;
        let mut snap = Snapshot::default();
        snap.set_data(bytes::Bytes::copy_from_slice(data));
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
        let c = self.cache();
        Ok(!cs.voters.is_empty() || !cs.learners.is_empty() || c.last > 0 || c.truncated.0 > 0)
    }
}

impl raft::Storage for LmdbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn().map_err(StorageError::from)?;
        let hard_state = self.inner.read_hard_state(&rtxn)?;
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
        let max_size = max_size.into();
        let cache = self.cache();
        if low <= cache.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > cache.last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn().map_err(StorageError::from)?;
        let mut out = Vec::with_capacity((high.saturating_sub(low)).min(1024) as usize);
        let mut budget = SizeBudget::new(max_size);
        for item in self
            .inner
            .entries
            .range(&rtxn, &(low..high))
            .map_err(StorageError::from)?
        {
            let (index, bytes) = item.map_err(StorageError::from)?;
            let entry = decode_entry(bytes)?;
            if entry.index != index {
                return Err(
                    corrupt("entry", format!("key {index} holds entry {}", entry.index)).into(),
                );
            }
            if !budget.admit(&entry, out.len()) {
                break;
            }
            out.push(entry);
        }
        if out.is_empty() && low < high {
            return Err(corrupt("log", format!("entries {low}..{high} missing")).into());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let cache = self.cache();
        if idx == cache.truncated.0 {
            return Ok(cache.truncated.1);
        }
        if idx == cache.snapshot_meta.index {
            // The stored snapshot still knows its term, even below the compacted index.
            return Ok(cache.snapshot_meta.term);
        }
        if idx < cache.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > cache.last {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let _gate = lock_read(&self.inner.txn_gate);
        let rtxn = self.inner.env.read_txn().map_err(StorageError::from)?;
        let bytes = self
            .inner
            .entries
            .get(&rtxn, &idx)
            .map_err(StorageError::from)?
            .ok_or_else(|| corrupt("log", format!("entry {idx} missing")))?;
        Ok(entry_term(bytes)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache().truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cache().last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if let Some(snap) = self.latest_snapshot()? {
            let meta = snap.get_metadata();
            let cs = meta.get_conf_state();
            // A node refuses a snapshot whose membership does not include it (a new learner
            // would, given the snapshot from before it was added).
            let includes_receiver = cs.voters.contains(&to)
                || cs.learners.contains(&to)
                || cs.voters_outgoing.contains(&to)
                || cs.learners_next.contains(&to);
            if meta.index >= request_index && includes_receiver {
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
