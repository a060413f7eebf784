//! The log as the WAL's memory sees it: per entry its term and where its bytes are, per segment
//! its file and the highest index it holds. Appends, compactions and resets change it only after
//! their record is durable (or while replaying records that are).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::HardState;

use super::entry_cache::EntryCache;
use crate::storage::fs::DiskFile;
use crate::storage::records::corrupt;
use crate::storage::StorageError;

/// Where one entry lives.
#[derive(Clone, Copy, Debug)]
pub(super) struct EntryLoc {
    pub(super) term: u64,
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
    /// CRC-32 of the entry's bytes, taken when they were written or replayed (under the record's
    /// own checksum), so that a later read can tell bad bytes from the file system.
    pub(super) crc: u32,
}

pub(super) struct Segment {
    pub(super) file: Arc<dyn DiskFile>,
    pub(super) path: PathBuf,
    /// The highest entry index ever written to this segment (0: none live). A segment whose
    /// entries are all compacted can go.
    pub(super) max_index: u64,
}

/// The log as the index sees it. `entries[i]` is entry `truncated.0 + 1 + i`.
pub(super) struct LogIndex {
    pub(super) truncated: (u64, u64),
    pub(super) entries: VecDeque<EntryLoc>,
    pub(super) hard_state: HardState,
    pub(super) segments: BTreeMap<u64, Segment>,
    /// Replay only: entries began after a gap (deleted segments); a later compaction must cover
    /// it, so the term of `truncated.0` is not known yet.
    pub(super) gap_open: bool,
    /// Replay only: the compaction point the records set (`Start`, `Compact`, `Reset`). Unlike
    /// `truncated`, an open gap does not move it: an append inside the gap but above it replaces
    /// the entries after it, as it did when it was written.
    pub(super) floor: u64,
    /// The newest entries, in memory (see `entry_cache`).
    pub(super) cache: EntryCache,
}

impl LogIndex {
    pub(super) fn last(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    pub(super) fn term(&self, index: u64) -> Option<u64> {
        if index == self.truncated.0 && !self.gap_open {
            return Some(self.truncated.1);
        }
        let pos = index.checked_sub(self.truncated.0 + 1)?;
        self.entries.get(pos as usize).map(|l| l.term)
    }

    /// Why entries starting at `first` do not fit the log (below the compacted index, or after
    /// a gap); `None` when they do.
    pub(super) fn append_misfit(&self, first: u64) -> Option<String> {
        if first <= self.truncated.0 {
            Some(format!(
                "append at {first} overwrites compacted log (compacted up to {})",
                self.truncated.0
            ))
        } else if first > self.last() + 1 {
            Some(format!(
                "append at {first} leaves a gap after last index {}",
                self.last()
            ))
        } else {
            None
        }
    }

    /// Apply an append whose entries are at `locs` (consecutive indexes). `replaying` accepts a
    /// gap before them (see the module invariants).
    pub(super) fn apply_append(
        &mut self,
        seq: u64,
        locs: impl ExactSizeIterator<Item = (u64, EntryLoc)>,
        hard_state: Option<HardState>,
        replaying: bool,
    ) -> Result<(), StorageError> {
        let mut locs = locs.peekable();
        if let Some(&(first, _)) = locs.peek() {
            let restarts_gap = self.gap_open && first <= self.truncated.0 && first > self.floor;
            if replaying && (first > self.last() + 1 || restarts_gap) {
                // Entries before `first` are in deleted segments (a later `Compact` must cover
                // them). An append at or below where the gap began is an overwrite a new leader
                // made after the older append: it replaces everything from `first` on.
                self.entries.clear();
                self.truncated = (first - 1, 0);
                self.gap_open = true;
            } else if let Some(why) = self.append_misfit(first) {
                return Err(corrupt("WAL", why));
            }
            let keep = (first - self.truncated.0 - 1) as usize;
            self.entries.truncate(keep);
            let mut max = 0;
            for (index, loc) in locs {
                self.entries.push_back(loc);
                max = index;
            }
            if let Some(seg) = self.segments.get_mut(&seq) {
                seg.max_index = seg.max_index.max(max);
            }
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs;
        }
        Ok(())
    }

    /// Every entry up to `truncated.0` is gone.
    pub(super) fn apply_compact(&mut self, truncated: (u64, u64)) {
        self.floor = self.floor.max(truncated.0);
        if truncated.0 < self.truncated.0 || (truncated.0 == self.truncated.0 && !self.gap_open) {
            return;
        }
        if truncated.0 >= self.last() {
            self.entries.clear();
        } else {
            self.entries
                .drain(..(truncated.0 - self.truncated.0) as usize);
        }
        self.truncated = truncated;
        self.gap_open = false;
        self.cache.on_compact(truncated.0);
    }

    pub(super) fn apply_reset(&mut self, truncated: (u64, u64), hard_state: HardState) {
        self.entries.clear();
        self.truncated = truncated;
        self.hard_state = hard_state;
        self.gap_open = false;
        self.floor = truncated.0;
        self.cache.clear();
        for seg in self.segments.values_mut() {
            seg.max_index = 0;
        }
    }
}
