//! `StagedLog`: what raft reads while its writes are still in flight.
//!
//! With asynchronous persistence (raft-rs `advance_append_async` / `on_persist_ready`) the run
//! loop hands a Ready's entries to the writer thread and goes on at once. raft-rs drops those
//! entries from its own unstable buffer at that moment and requires that `Storage` can serve them
//! from then on, durable or not. `StagedLog` wraps a `LogStore` with an in-memory *staged tail*:
//! entries handed to the writer and not yet known to be durable.
//!
//! Invariants:
//! - The staged tail is contiguous (`base..=last`) and each entry is tagged with the number of the
//!   write that staged it; tags never decrease from front to back (a later write only replaces a
//!   suffix and appends).
//! - The log raft sees is the store's entries below `base` followed by the staged tail.
//!   `base <= store.last_index() + 1` always holds, so there is never a gap.
//! - An entry leaves the tail only once the write that staged it is durable (`release`), so it
//!   is always readable from one place or the other.
//! - Staging never makes anything durable and never answers anyone: raft counts an entry towards
//!   commit only after `on_persist_ready`, which the run loop calls after the writer's fsync.
//!
//! Read-ahead: raft-rs panics when `Storage::entries` fails while it builds a Ready. So before
//! taking a Ready, the run loop reads the committed entries that Ready will hand out
//! (`read_ahead`); a read that fails stops the node with the error, and one that succeeds is
//! handed to raft-rs when it asks for exactly that range.
//!
//! Read failures raft-rs would see: raft-rs copes only with `Compacted` and "not available yet"
//! from `entries`, and the latter only where it can wait (sending appends). It also reads the
//! log while it steps, where nothing can be read ahead: before campaigning it scans the
//! committed entries not yet applied for conf changes, and so does a candidate that learns a
//! higher commit index from a vote response ("commit by vote"); there it panics on any error.
//! So a read that fails (bad bytes that did not go away, an I/O error) is never handed to
//! raft-rs: the error is kept (`take_read_failure`), and raft-rs is told "not yet" where it can
//! wait and is otherwise given no entries, a short answer it takes as if a size limit had cut
//! it. raft-rs then decides on less than the log holds (it may campaign despite a pending conf
//! change), so the run loop stops the node with the kept error before anything raft-rs did
//! since leaves the node (messages, writes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState};

use super::{LogStore, SizeBudget, StorageError};

/// A `LogStore` plus the entries staged for writing; see the module docs.
#[derive(Clone)]
pub struct StagedLog<S> {
    store: S,
    tail: Arc<Mutex<VecDeque<(u64, Entry)>>>,
    ahead: Arc<Mutex<Option<ReadAhead>>>,
    /// The first read failure raft-rs was not told about (see the module docs).
    read_failure: Arc<Mutex<Option<StorageError>>>,
}

/// Entries read ahead for the next Ready, with the request they answer.
struct ReadAhead {
    low: u64,
    high: u64,
    max_size: Option<u64>,
    entries: Vec<Entry>,
}

impl<S: LogStore> StagedLog<S> {
    /// Wrap `store` with an empty staged tail.
    pub fn new(store: S) -> Self {
        StagedLog {
            store,
            tail: Arc::new(Mutex::new(VecDeque::new())),
            ahead: Arc::new(Mutex::new(None)),
            read_failure: Arc::new(Mutex::new(None)),
        }
    }

    /// Read entries `low..high` (within `max_size`) now, so that raft-rs, asking for the same
    /// range while it builds the next Ready, gets them without touching the disk. An error is
    /// the caller's to handle (the run loop stops the node); see the module docs.
    pub fn read_ahead(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<()> {
        self.end_read_ahead();
        let entries = self.read(low, high, max_size, GetEntriesContext::empty(false))?;
        *self.ahead.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReadAhead {
            low,
            high,
            max_size,
            entries,
        });
        Ok(())
    }

    /// Drop entries read ahead and not asked for.
    pub fn end_read_ahead(&self) {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// A read of the log failed while raft-rs was reading it, and raft-rs was told "not yet"
    /// or given a short answer instead (see the module docs): the node must stop with this
    /// error before anything raft-rs did since leaves it. Taken once.
    pub fn take_read_failure(&self) -> Option<StorageError> {
        self.read_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn tail(&self) -> MutexGuard<'_, VecDeque<(u64, Entry)>> {
        // Only the run loop touches the tail; a poisoned lock means it panicked mid-update, and
        // the next stage/release rebuilds what matters.
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `entries` (written by write number `tag`) readable before they are durable. They
    /// replace every staged or stored entry at or after their first index, as the write will.
    pub fn stage(&self, tag: u64, entries: &[Entry]) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        let mut tail = self.tail();
        if let Some(base) = tail.front().map(|(_, e)| e.index) {
            if first <= base {
                tail.clear();
            } else {
                tail.truncate((first - base) as usize);
            }
        }
        tail.extend(entries.iter().map(|e| (tag, e.clone())));
    }

    /// Writes up to number `tag` are durable: their entries are readable from the store now.
    pub fn release(&self, tag: u64) {
        let mut tail = self.tail();
        while tail.front().is_some_and(|(t, _)| *t <= tag) {
            tail.pop_front();
        }
    }

    /// Forget the staged tail (a snapshot replaced the log, after every write landed).
    pub fn clear(&self) {
        self.tail().clear();
    }

    /// Number of entries staged and not yet known durable.
    pub fn staged_len(&self) -> usize {
        self.tail().len()
    }

    /// Entries `low..high` within `max_size`: the store's below the staged tail, then the
    /// tail's. Errors are returned as they are (`entries` decides what raft-rs is told).
    fn read(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let tail = self.tail();
        let (base, last) = match (tail.front(), tail.back()) {
            (Some((_, f)), Some((_, l))) => (f.index, l.index),
            _ => {
                drop(tail);
                return self.store.entries(low, high, max_size, context);
            }
        };
        if high > last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut out = if low < base {
            let stored = self.store.entries(low, high.min(base), max_size, context)?;
            if (stored.len() as u64) < high.min(base) - low {
                // The size limit cut the stored part short: the staged part cannot follow.
                return Ok(stored);
            }
            stored
        } else {
            Vec::new()
        };
        let mut budget = SizeBudget::new(max_size);
        for (taken, entry) in out.iter().enumerate() {
            budget.admit(entry, taken);
        }
        let from = low.max(base);
        for (_, entry) in tail.iter().skip((from - base) as usize) {
            if entry.index >= high || !budget.admit(entry, out.len()) {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }
}

impl<S: LogStore> raft::Storage for StagedLog<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.store.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        {
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            if ahead
                .as_ref()
                .is_some_and(|a| (a.low, a.high, a.max_size) == (low, high, max_size))
            {
                if let Some(a) = ahead.take() {
                    return Ok(a.entries);
                }
            }
        }
        let can_wait = context.can_async();
        match self.read(low, high, max_size, context) {
            Err(raft::Error::Store(raft::StorageError::Other(e))) => {
                let err = match e.downcast::<StorageError>() {
                    Ok(e) => *e,
                    Err(other) => StorageError::InvalidOperation(other.to_string()),
                };
                self.read_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(err);
                if can_wait {
                    Err(raft::Error::Store(
                        raft::StorageError::LogTemporarilyUnavailable,
                    ))
                } else {
                    Ok(Vec::new())
                }
            }
            other => other,
        }
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let tail = self.tail();
        if let (Some((_, f)), Some((_, l))) = (tail.front(), tail.back()) {
            if idx >= f.index {
                if idx > l.index {
                    return Err(raft::Error::Store(raft::StorageError::Unavailable));
                }
                return Ok(tail[(idx - f.index) as usize].1.term);
            }
        }
        drop(tail);
        self.store.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.store.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        if let Some((_, last)) = self.tail().back() {
            return Ok(last.index);
        }
        self.store.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.store.snapshot(request_index, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LmdbStorage, PersistBatch};
    use protobuf::Message as _;
    use raft::{GetEntriesContext, Storage};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path) -> LmdbStorage {
        LmdbStorage::open(dir, 1, "staged-test", 1 << 20).expect("open")
    }

    /// What the writer thread does for a job: append `entries` durably.
    fn write(store: &LmdbStorage, entries: Vec<Entry>) {
        store
            .persist(PersistBatch {
                entries,
                ..Default::default()
            })
            .expect("persist");
    }

    fn indexes_terms(v: Vec<Entry>) -> Vec<(u64, u64)> {
        v.into_iter().map(|e| (e.index, e.term)).collect()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn staged_entries_are_readable_before_and_after_they_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let log = StagedLog::new(store.clone());
        let durable: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
        write(&store, durable);
        let staged: Vec<Entry> = (4..=6).map(|i| entry(i, 2)).collect();
        log.stage(7, &staged);
        assert_eq!(log.last_index().expect("last"), 6);
        assert_eq!(store.last_index().expect("last"), 3);
        assert_eq!(log.term(5).expect("term"), 2);
        assert_eq!(log.term(2).expect("term"), 1);
        assert_eq!(
            indexes_terms(log.entries(2, 7, None, ctx()).expect("entries")),
            vec![(2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
        );
        assert!(log.entries(2, 8, None, ctx()).is_err(), "beyond the tail");
        // The writer lands write 7; releasing it leaves the same log, now read from the store.
        write(&store, staged);
        log.release(7);
        assert_eq!(log.staged_len(), 0);
        assert_eq!(
            indexes_terms(log.entries(2, 7, None, ctx()).expect("entries")),
            vec![(2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
        );
    }

    #[test]
    fn a_later_write_replaces_the_staged_suffix_and_release_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let log = StagedLog::new(store.clone());
        let first: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        log.stage(1, &first);
        // A new leader overwrites from index 4 before write 1 is durable.
        let second: Vec<Entry> = (4..=4).map(|i| entry(i, 3)).collect();
        log.stage(2, &second);
        assert_eq!(log.last_index().expect("last"), 4);
        assert_eq!(log.term(4).expect("term"), 3);
        assert!(log.term(5).is_err());
        // Write 1 lands (entries 1..=5 of term 1): only 1..=3 leave the tail; 4 stays staged.
        write(&store, first);
        log.release(1);
        assert_eq!(log.staged_len(), 1);
        assert_eq!(log.last_index().expect("last"), 4);
        assert_eq!(
            indexes_terms(log.entries(1, 5, None, ctx()).expect("entries")),
            vec![(1, 1), (2, 1), (3, 1), (4, 3)]
        );
        // Staging at or before the tail's base replaces it whole.
        log.stage(3, &[entry(4, 4), entry(5, 4)]);
        assert_eq!(
            indexes_terms(log.entries(3, 6, None, ctx()).expect("entries")),
            vec![(3, 1), (4, 4), (5, 4)]
        );
    }

    /// A store on a simulated disk without the entry cache, holding entries 1..=6 of term 1
    /// with 1..=`commit` committed, in a cluster of three voters; and a `RawNode` over it that
    /// applied `applied` and uses pre-vote.
    fn node_over_sim_disk(
        dir: &std::path::Path,
        commit: u64,
        applied: u64,
    ) -> (
        crate::storage::fs::SimDisk,
        raft::RawNode<StagedLog<LmdbStorage>>,
    ) {
        let disk = crate::storage::fs::SimDisk::new(1);
        let options = crate::storage::StorageOptions {
            initial_map_size: 1 << 20,
            entry_cache_bytes: 0,
            fs: Arc::new(disk.clone()),
            ..Default::default()
        };
        let store = LmdbStorage::open_with(dir, 1, "staged-test", options).expect("open");
        let conf = raft::eraftpb::ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        store
            .persist(PersistBatch {
                entries: (1..=6).map(|i| entry(i, 1)).collect(),
                hard_state: Some(raft::eraftpb::HardState {
                    term: 1,
                    vote: 0,
                    commit,
                    ..Default::default()
                }),
                conf_state: Some((conf, 0)),
                ..Default::default()
            })
            .expect("persist");
        let config = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            applied,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = raft::RawNode::new(&config, StagedLog::new(store), &logger).expect("raw node");
        (disk, raw)
    }

    /// Found by the simulation (seed 2450): a pre-candidate whose vote was refused by a peer
    /// with a higher commit index fast-forwards its commit and reads the newly committed
    /// entries (raft-rs' "commit by vote") to look for conf changes. raft-rs panics on any
    /// error of that read, so a bad read must come back as a short answer, with the error
    /// kept for the run loop.
    #[test]
    fn a_bad_read_while_committing_by_vote_is_kept_for_the_run_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (disk, mut raw) = node_over_sim_disk(dir.path(), 3, 3);
        raw.campaign().expect("campaign");
        assert_eq!(raw.raft.state, raft::StateRole::PreCandidate);
        disk.bad_next_reads(u32::MAX);
        let mut refusal = raft::eraftpb::Message::default();
        refusal.set_msg_type(raft::eraftpb::MessageType::MsgRequestPreVoteResponse);
        refusal.from = 2;
        refusal.to = 1;
        refusal.term = raw.raft.term;
        refusal.reject = true;
        refusal.commit = 6;
        refusal.commit_term = 1;
        raw.step(refusal).expect("step");
        assert_eq!(raw.raft.raft_log.committed, 6);
        let failure = raw
            .store()
            .take_read_failure()
            .expect("the read failure is kept");
        assert!(
            matches!(failure, crate::storage::StorageError::Corrupt { .. }),
            "{failure}"
        );
        assert!(raw.store().take_read_failure().is_none(), "taken once");
    }

    /// The same for an election: raft-rs reads the committed entries not yet applied to look
    /// for conf changes before it campaigns (a restarted node has many), and panics on any
    /// error.
    #[test]
    fn a_bad_read_before_campaigning_is_kept_for_the_run_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (disk, mut raw) = node_over_sim_disk(dir.path(), 5, 0);
        disk.bad_next_reads(u32::MAX);
        raw.campaign().expect("campaign");
        let failure = raw
            .store()
            .take_read_failure()
            .expect("the read failure is kept");
        assert!(
            matches!(failure, crate::storage::StorageError::Corrupt { .. }),
            "{failure}"
        );
    }

    #[test]
    fn the_size_limit_spans_stored_and_staged_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let log = StagedLog::new(store.clone());
        write(&store, (1..=2).map(|i| entry(i, 1)).collect());
        log.stage(1, &(3..=6).map(|i| entry(i, 1)).collect::<Vec<_>>());
        let one = u64::from(entry(1, 1).compute_size());
        let got = log.entries(1, 7, Some(3 * one), ctx()).expect("entries");
        assert_eq!(got.len(), 3, "stops at the limit across the boundary");
        let got = log.entries(4, 7, Some(0), ctx()).expect("entries");
        assert_eq!(got.len(), 1, "at least one entry");
    }
}
