//! `EntryCache`: the newest entries of the log, kept in memory after they were written.
//!
//! Why: a leader replicates what it just appended and every node applies what it just appended.
//! Reading those entries back from the file costs a read system call per batch and trusts the
//! file system to hand back what was just written; a FUSE file system was seen to return zeros
//! for bytes written and synced a moment before. etcd and TiKV serve recent entries from memory;
//! so does this cache. Older entries (a follower far behind, replay after a restart) are read
//! from the segments and checked against their checksum.
//!
//! Invariants:
//! - The cache holds a contiguous run `first..=last` of the entries the WAL holds durably, equal
//!   to what is in the files: it is changed only after the WAL's record for the change is synced
//!   (append, compact, reset), under the same lock as the WAL's index.
//! - Its entries' encoded sizes add up to at most `max_bytes`, except that the newest append is
//!   always kept whole (an append bigger than the cache replaces it).

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// Recent entries in memory; see the module docs.
pub(super) struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
}

fn size(e: &Entry) -> usize {
    e.compute_size() as usize
}

impl EntryCache {
    /// An empty cache of at most `max_bytes` (0 turns the cache off).
    pub(super) fn new(max_bytes: usize) -> Self {
        EntryCache {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// The index of the oldest cached entry, if any.
    pub(super) fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// `entries` (consecutive) were appended durably, replacing what was at or after the first.
    pub(super) fn on_append(&mut self, entries: &[Entry]) {
        if self.max_bytes == 0 {
            return;
        }
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        match self.first() {
            Some(cached) if first > cached && first <= cached + self.entries.len() as u64 => {
                for dropped in self.entries.drain((first - cached) as usize..) {
                    self.bytes -= size(&dropped);
                }
            }
            _ => self.clear(),
        }
        for e in entries {
            self.bytes += size(e);
            self.entries.push_back(e.clone());
        }
        while self.bytes > self.max_bytes && self.entries.len() > entries.len() {
            self.pop_front();
        }
    }

    /// Every entry up to `index` is gone from the log.
    pub(super) fn on_compact(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            self.pop_front();
        }
    }

    /// The log was replaced (by a snapshot).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= size(&e);
        }
    }

    /// The cached entry at `index`.
    pub(super) fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first()?;
        self.entries
            .get(usize::try_from(index.checked_sub(first)?).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, len: usize) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![7u8; len].into(),
            ..Default::default()
        }
    }

    fn indexes(c: &EntryCache) -> Vec<u64> {
        c.entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn an_overwrite_replaces_the_cached_suffix() {
        let mut c = EntryCache::new(1 << 20);
        c.on_append(&[entry(1, 10), entry(2, 10), entry(3, 10)]);
        c.on_append(&[entry(2, 20)]);
        assert_eq!(indexes(&c), vec![1, 2]);
        assert_eq!(c.get(2).map(|e| e.data.len()), Some(20));
    }

    #[test]
    fn the_oldest_entries_leave_when_the_cache_is_full_but_the_newest_append_stays() {
        let mut c = EntryCache::new(100);
        c.on_append(&[entry(1, 40), entry(2, 40)]);
        c.on_append(&[entry(3, 40)]);
        assert_eq!(indexes(&c), vec![2, 3]);
        c.on_append(&[entry(4, 500)]);
        assert_eq!(indexes(&c), vec![4]);
    }

    #[test]
    fn an_append_that_does_not_follow_the_cache_replaces_it() {
        let mut c = EntryCache::new(1 << 20);
        c.on_append(&[entry(5, 1), entry(6, 1)]);
        c.on_append(&[entry(9, 1)]);
        assert_eq!(indexes(&c), vec![9]);
        c.on_append(&[entry(3, 1)]);
        assert_eq!(indexes(&c), vec![3]);
    }

    #[test]
    fn compaction_drops_what_it_covers() {
        let mut c = EntryCache::new(1 << 20);
        c.on_append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        c.on_compact(2);
        assert_eq!(indexes(&c), vec![3]);
        assert!(c.get(2).is_none());
    }
}
