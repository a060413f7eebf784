//! The raft log as append-only segment files: one `write` and one `fdatasync` per batch.
//!
//! Why not LMDB for the log: an LMDB commit writes the touched B-tree pages, syncs, then writes
//! and syncs the meta page. For a log that only ever grows at its end (and is cut at its start)
//! an append-only file needs one sync, and no page rewrites. LMDB still holds everything else
//! (identity, membership, snapshot metadata); see `lmdb/`.
//!
//! Layout: `<data dir>/wal/<seq as 16 hex digits>.seg`. Records are in `record.rs`. In memory the
//! log is an index (`log_index.rs`), one `EntryLoc` (term, file position and checksum, 32 bytes)
//! per entry, and the newest entries themselves (`entry_cache.rs`): replication and apply read
//! what was just appended from memory. Older entries are read back with `pread` and checked
//! against their checksum; a read that keeps failing the check is an error naming the file and
//! offset. `replay.rs` rebuilds the index from the segments on open. Every file operation goes
//! through the file layer (`storage::fs`), so tests can run this code on a simulated disk.
//!
//! Invariants:
//! - A record is acknowledged (`append`/`compact`/`reset` return `Ok`) only after `fdatasync`
//!   of its segment returned; a new segment's file and directory entry are synced before use.
//! - After a failed write or sync the WAL refuses every further write: the file's tail is
//!   unknown, and retrying a failed `fsync` can report success for lost data.
//! - Past the last record a segment holds only zeros (written ahead, see `PREALLOCATE_BYTES`);
//!   an all-zero frame header ends the records.
//! - Only the tail of the newest segment may be torn (a write the crash interrupted, never
//!   acknowledged); it is cut off on open. A bad record anywhere else, or one followed by an
//!   intact record, is `Corrupt`: the open is refused and nothing is cut.
//! - Every segment starts with the whole non-entry state (`Start`), so a prefix of segments may be
//!   deleted once compaction passed every entry in them. Replay then starts at a `Start` whose
//!   entries may begin after a gap; a later `Compact` (the one that allowed the deletion) always
//!   covers that gap, and open checks it did.

mod entry_cache;
mod log_index;
pub(crate) mod record;
mod replay;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use raft::eraftpb::{Entry, HardState};

use self::entry_cache::EntryCache;
use self::log_index::{EntryLoc, LogIndex, Segment};
use self::replay::{list_segments, replay_segment};
use super::fs::{DiskFile, FileSystem, OpenMode};
use super::records::corrupt;
use super::{lock_read, lock_write, SizeBudget, StorageError};

/// Size after which the next write starts a new segment.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// How many times a read whose bytes fail their checksum is tried again before it is an error.
/// A file system race (seen with FUSE) returns bad bytes once; damage on the medium does not go
/// away.
const READ_ATTEMPTS: usize = 3;

/// How a WAL is laid out and cached.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalOptions {
    /// Size after which the next write starts a new segment.
    pub(crate) segment_bytes: u64,
    /// Bytes of recent entries kept in memory (`entry_cache`); 0 reads everything from files.
    pub(crate) cache_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            cache_bytes: crate::config::DEFAULT_ENTRY_CACHE_BYTES,
        }
    }
}
/// How far ahead of the records a segment is filled with zeros. Appending inside blocks that are
/// already written and allocated changes no file metadata, so `fdatasync` flushes only data and
/// needs no filesystem journal commit (measured here: 0.33 ms instead of 0.6 ms per sync with
/// three logs syncing at once). One extension costs one journal commit per chunk.
const PREALLOCATE_BYTES: u64 = 4 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The segment being appended to.
struct Tail {
    seq: u64,
    file: Arc<dyn DiskFile>,
    /// Where the next record goes.
    len: u64,
    /// Bytes of the file written so far (records, then zeros).
    allocated: u64,
    /// Set after a failed write or sync; see the module invariants.
    failed: bool,
}

/// The write-ahead log of one node.
pub(crate) struct Wal {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_bytes: u64,
    /// `None` when opened read-only.
    tail: Mutex<Option<Tail>>,
    index: RwLock<LogIndex>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wal {
    /// Open the WAL in `dir` (created when missing unless `read_only`) and replay it.
    pub(crate) fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        read_only: bool,
        options: WalOptions,
    ) -> Result<Self, StorageError> {
        let WalOptions {
            segment_bytes,
            cache_bytes,
        } = options;
        let mut index = LogIndex {
            truncated: (0, 0),
            entries: VecDeque::new(),
            hard_state: HardState::default(),
            segments: BTreeMap::new(),
            gap_open: false,
            floor: 0,
            cache: EntryCache::new(cache_bytes),
        };
        if !fs.exists(dir) && !read_only {
            fs.create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                fs.sync_dir(parent)?;
            }
        }
        // A read-only open of a data dir without a log sees an empty one.
        let segments = if fs.exists(dir) {
            list_segments(&*fs, dir)?
        } else {
            Vec::new()
        };
        let count = segments.len();
        let mut tail = None;
        let mut next_seq = 1;
        for (n, (seq, path)) in segments.into_iter().enumerate() {
            let is_last = n + 1 == count;
            let mode = if read_only {
                OpenMode::Read
            } else {
                OpenMode::ReadWrite
            };
            let file = fs.open(&path, mode)?;
            let replayed = replay_segment(&mut index, seq, file.clone(), &path, is_last)?;
            next_seq = seq + 1;
            match replayed {
                Some(valid_len) if is_last && !read_only => {
                    if valid_len < file.len()? {
                        // Zeros written ahead, or a torn tail (a write the crash interrupted,
                        // never acknowledged): cut both, so nothing but zeros ever follows the
                        // last record (`write_record` fills ahead again).
                        file.set_len(valid_len)?;
                        file.sync_all()?;
                    }
                    tail = Some(Tail {
                        seq,
                        file,
                        len: valid_len,
                        allocated: valid_len,
                        failed: false,
                    });
                }
                Some(_) => {}
                None => {
                    // The newest segment has no complete start: the crash hit while it was being
                    // created, before anything was written to it. Make it again.
                    index.segments.remove(&seq);
                    next_seq = seq;
                    if !read_only {
                        fs.remove_file(&path)?;
                        fs.sync_dir(dir)?;
                    }
                }
            }
        }
        if index.gap_open {
            return Err(corrupt(
                "WAL",
                format!(
                    "entries before {} are missing and no compaction covers them",
                    index.truncated.0 + 1
                ),
            ));
        }
        let wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            segment_bytes,
            tail: Mutex::new(tail),
            index: RwLock::new(index),
        };
        if !read_only {
            let mut tail = lock(&wal.tail);
            if tail.is_none() {
                wal.start_segment(&mut tail, next_seq)?;
            }
        }
        Ok(wal)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, LogIndex> {
        lock_read(&self.index)
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, LogIndex> {
        lock_write(&self.index)
    }

    /// Index and term of the last entry no longer in the log.
    pub(crate) fn truncated(&self) -> (u64, u64) {
        self.read_index().truncated
    }

    /// The last index in the log (`truncated().0` when it is empty).
    pub(crate) fn last_index(&self) -> u64 {
        self.read_index().last()
    }

    pub(crate) fn hard_state(&self) -> HardState {
        self.read_index().hard_state.clone()
    }

    /// The term of `index`, when it is the truncated entry or in the log.
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        self.read_index().term(index)
    }

    /// How many segment files the log spans (for tests and the debug view).
    pub(crate) fn segment_count(&self) -> usize {
        self.read_index().segments.len()
    }

    /// Entries `low..high` within `max_size` (at least one), as raft's `Storage::entries` asks:
    /// `Compacted` below the log, `Unavailable` beyond it. The bounds are checked under the same
    /// lock the entries are located under, so a compaction beside the read cannot slip between.
    /// Recent entries come from the cache; older ones from the files, each checked against its
    /// checksum (a read failing it is tried again, then it is `Corrupt`, naming file and offset).
    pub(crate) fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high.saturating_sub(low)).min(4096) as usize);
        let mut locs = Vec::new();
        let mut files: Vec<(u64, Arc<dyn DiskFile>, PathBuf)> = Vec::new();
        {
            let index = self.read_index();
            if low <= index.truncated.0 {
                return Err(raft::Error::Store(raft::StorageError::Compacted));
            }
            if high > index.last() + 1 {
                return Err(raft::Error::Store(raft::StorageError::Unavailable));
            }
            let start = (low - index.truncated.0 - 1) as usize;
            let mut budget = SizeBudget::new(max_size);
            // Entries below the cache are read from the files; the rest are copied from memory.
            let cached_from = index.cache.first().map_or(high, |f| f.clamp(low, high));
            let on_disk = (cached_from - low) as usize;
            for loc in index.entries.range(start..start + on_disk) {
                if !budget.admit_len(u64::from(loc.len), locs.len()) {
                    break;
                }
                locs.push(*loc);
            }
            if locs.len() == on_disk {
                for i in cached_from..high {
                    let Some(e) = index.cache.get(i) else {
                        return Err(corrupt("WAL", format!("cached entry {i} missing")).into());
                    };
                    if !budget.admit_len(
                        u64::from(index.entries[(i - index.truncated.0 - 1) as usize].len),
                        locs.len() + out.len(),
                    ) {
                        break;
                    }
                    out.push(e.clone());
                }
            }
            for loc in &locs {
                if !files.iter().any(|(s, _, _)| *s == loc.seq) {
                    let seg = index.segments.get(&loc.seq).ok_or_else(|| {
                        corrupt(
                            "WAL",
                            format!("segment {} of a live entry is gone", loc.seq),
                        )
                    })?;
                    files.push((loc.seq, seg.file.clone(), seg.path.clone()));
                }
            }
        }
        let mut read = Vec::with_capacity(locs.len());
        let mut rest = &locs[..];
        while let Some(first) = rest.first() {
            // One read per run of entries that sit in order in the same segment.
            let run = rest
                .windows(2)
                .take_while(|w| w[1].seq == first.seq && w[1].offset > w[0].offset)
                .count()
                + 1;
            let (this, next) = rest.split_at(run);
            let (_, file, path) = files
                .iter()
                .find(|(s, _, _)| *s == first.seq)
                .ok_or_else(|| corrupt("WAL", "segment of a live entry not found"))?;
            read_run(&**file, path, this, &mut read)?;
            rest = next;
        }
        read.append(&mut out);
        if let Some(e) = read.first() {
            if e.index != low {
                return Err(corrupt("WAL", format!("entry at {low} holds {}", e.index)).into());
            }
        }
        Ok(read)
    }

    /// Durably append `entries` (replacing any at or after the first one's index) and the hard
    /// state. One write and one `fdatasync`.
    pub(crate) fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let (bytes, spans) = record::encode_append(entries, hard_state)?;
        // Checked under the tail lock, so a compaction cannot move the log in between.
        let mut guard = lock(&self.tail);
        if let Some(first) = entries.first().map(|e| e.index) {
            if let Some(why) = self.read_index().append_misfit(first) {
                return Err(StorageError::InvalidOperation(why));
            }
        }
        let (seq, at) = self.write_record(&mut guard, &bytes)?;
        let locs = entries.iter().zip(spans).map(|(e, (offset, len))| {
            (
                e.index,
                EntryLoc {
                    term: e.term,
                    seq,
                    offset: at + offset as u64,
                    len,
                    crc: crc32fast::hash(&bytes[offset..offset + len as usize]),
                },
            )
        });
        let mut index = self.write_index();
        index.apply_append(seq, locs, hard_state.cloned(), false)?;
        index.cache.on_append(entries);
        Ok(())
    }

    /// Durably drop every entry below `compact_index`, then delete the segments that only held
    /// such entries.
    pub(crate) fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let mut guard = lock(&self.tail);
        let truncated = {
            let index = self.read_index();
            if compact_index <= index.truncated.0 + 1 {
                return Ok(());
            }
            if compact_index > index.last() + 1 {
                return Err(StorageError::InvalidOperation(format!(
                    "compact to {compact_index} beyond last index {}",
                    index.last()
                )));
            }
            let t = compact_index - 1;
            let term = index
                .term(t)
                .ok_or_else(|| corrupt("WAL", format!("no term for entry {t}")))?;
            (t, term)
        };
        self.write_record(&mut guard, &record::encode_compact(truncated)?)?;
        self.write_index().apply_compact(truncated);
        self.delete_dead_segments(&guard)
    }

    /// Durably replace the whole log by the point `truncated` (a snapshot's index and term).
    pub(crate) fn reset(
        &self,
        truncated: (u64, u64),
        hard_state: &HardState,
    ) -> Result<(), StorageError> {
        let mut guard = lock(&self.tail);
        self.write_record(&mut guard, &record::encode_reset(truncated, hard_state)?)?;
        self.write_index()
            .apply_reset(truncated, hard_state.clone());
        self.delete_dead_segments(&guard)
    }

    /// Write one framed record at the tail (starting a new segment first when the tail is full)
    /// and sync it. Answers the segment and the record's offset in it.
    fn write_record(
        &self,
        tail: &mut Option<Tail>,
        bytes: &[u8],
    ) -> Result<(u64, u64), StorageError> {
        let Some(t) = tail.as_ref() else {
            return Err(StorageError::InvalidOperation(
                "the log was opened read-only".into(),
            ));
        };
        if t.failed {
            return Err(StorageError::InvalidOperation(
                "an earlier write to the log failed; restart the node to recover from disk".into(),
            ));
        }
        if t.len >= self.segment_bytes {
            let next = t.seq + 1;
            if let Err(e) = self.start_segment(tail, next) {
                // A failed sync may have dropped earlier writes too: no further write.
                if let Some(t) = tail.as_mut() {
                    t.failed = true;
                }
                return Err(e);
            }
        }
        let t = tail
            .as_mut()
            .ok_or_else(|| StorageError::InvalidOperation("no log segment".into()))?;
        let at = t.len;
        let end = at + bytes.len() as u64;
        let chunk = PREALLOCATE_BYTES.min(self.segment_bytes).max(4096);
        let written = (|| {
            if end > t.allocated {
                let target = end.max(t.allocated + chunk).next_multiple_of(4096);
                fill_zeros(&*t.file, t.allocated, target)?;
                t.allocated = target;
            }
            t.file.write_all_at(bytes, at)?;
            t.file.sync_data()
        })();
        if let Err(e) = written {
            t.failed = true;
            return Err(e.into());
        }
        t.len = end;
        Ok((t.seq, at))
    }

    /// Create segment `seq`, write its `Start` record and make file and name durable.
    fn start_segment(&self, tail: &mut Option<Tail>, seq: u64) -> Result<(), StorageError> {
        let path = segment_path(&self.dir, seq);
        let start = {
            let index = self.read_index();
            record::encode_start(seq, index.truncated, &index.hard_state)?
        };
        let file = self.fs.open(&path, OpenMode::CreateNew)?;
        let made = file
            .write_all_at(&start, 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| self.fs.sync_dir(&self.dir))
            .map_err(StorageError::from);
        if let Err(e) = made {
            // Nothing refers to the new file yet, but a failed sync may have lost what the old
            // tail wrote too (see the module invariants): the caller stops the node.
            let _ = self.fs.remove_file(&path);
            return Err(e);
        }
        {
            self.write_index().segments.insert(
                seq,
                Segment {
                    file: file.clone(),
                    path,
                    max_index: 0,
                },
            );
        }
        *tail = Some(Tail {
            seq,
            file,
            len: start.len() as u64,
            allocated: start.len() as u64,
            failed: false,
        });
        Ok(())
    }

    /// Delete the oldest segments while every entry they hold is compacted (never the tail).
    fn delete_dead_segments(&self, tail: &Option<Tail>) -> Result<(), StorageError> {
        let Some(tail_seq) = tail.as_ref().map(|t| t.seq) else {
            return Ok(());
        };
        let dead: Vec<PathBuf> = {
            let mut index = self.write_index();
            let truncated = index.truncated.0;
            let seqs: Vec<u64> = index
                .segments
                .iter()
                .take_while(|(seq, s)| **seq != tail_seq && s.max_index <= truncated)
                .map(|(seq, _)| *seq)
                .collect();
            seqs.iter()
                .filter_map(|seq| index.segments.remove(seq).map(|s| s.path))
                .collect()
        };
        for path in dead {
            // A file that stays (the unlink failed or was lost in a crash) only costs space:
            // the segments after it carry the state that supersedes it.
            if let Err(e) = self.fs.remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// Write zeros over `from..to` of `file` (not synced: the record written next is).
fn fill_zeros(file: &dyn DiskFile, mut from: u64, to: u64) -> std::io::Result<()> {
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

/// Read the entries at `locs` (in order, in one segment) with one read, checking each against
/// its checksum; a read that fails the check is tried again (see `READ_ATTEMPTS`).
fn read_run(
    file: &dyn DiskFile,
    path: &Path,
    locs: &[EntryLoc],
    out: &mut Vec<Entry>,
) -> Result<(), StorageError> {
    let (Some(first), Some(last)) = (locs.first(), locs.last()) else {
        return Ok(());
    };
    let span_end = last.offset + u64::from(last.len);
    let mut buf = vec![0u8; (span_end - first.offset) as usize];
    let mut attempt = 0;
    loop {
        attempt += 1;
        file.read_exact_at(&mut buf, first.offset)?;
        let bad = locs.iter().find(|loc| {
            let at = (loc.offset - first.offset) as usize;
            crc32fast::hash(&buf[at..at + loc.len as usize]) != loc.crc
        });
        match bad {
            None => break,
            Some(loc) if attempt >= READ_ATTEMPTS => {
                return Err(corrupt(
                    "WAL entry",
                    format!(
                        "{} bytes at offset {} of {} do not match the checksum they were written \
                         with ({attempt} reads): the file system or the disk returns bad data",
                        loc.len,
                        loc.offset,
                        path.display()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    for loc in locs {
        let at = (loc.offset - first.offset) as usize;
        out.push(record::decode_entry(&buf[at..at + loc.len as usize])?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
