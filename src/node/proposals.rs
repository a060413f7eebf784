//! Proposal identity and the waiters that answer `propose` calls.
//!
//! Every entry this node proposes carries a `ProposalContext` in `Entry.context`: the proposing
//! node, a per-process random nonce and a sequence number. The nonce keeps a restarted node from
//! mistaking its own pre-restart entries (replayed from the log) for new proposals.
//!
//! Each waiter also remembers the log index its entry was appended at. When that index is applied
//! with a different entry, the proposal was truncated by a new leader: the waiter gets a definite
//! `ProposalDropped` error instead of waiting for its timeout. The commands of a batch entry
//! (`command_batch`) share one index and have consecutive sequence numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// What kind of entry a context marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An entry of the user's state machine.
    User = 0,
    /// An entry pontoon itself applies (a `FrameworkEntry`); never shown to the user's `apply`.
    Framework = 1,
    /// Several user commands in one entry (see `command_batch`); the context's `seq` is the
    /// first command's, the others follow consecutively.
    UserBatch = 2,
    /// One or more commands of client sessions in one entry, in the batch format of
    /// `command_batch` (even a single one); each is a `SessionCommand` header and the user's
    /// bytes, applied through the session table (`session_table`).
    Session = 3,
}

/// Commands pontoon replicates for itself through the log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FrameworkEntry {
    /// Reserve the next node id for a node that will join at `raft_addr`. Applying it answers
    /// the new id (u64 big-endian); every node computes the same id from the same log.
    ReserveId {
        /// The address the new node will listen on.
        raft_addr: String,
    },
    /// Member `node_id` is now reached at `raft_addr` (it restarted on a new address). Applying
    /// it updates every node's address book, durably; an id that is not a member is refused
    /// the same way everywhere. Appended after `ReserveId` so older logs decode unchanged.
    UpdateAddress {
        /// The member that moved.
        node_id: u64,
        /// Its new raft address.
        raft_addr: String,
    },
    /// Open a client session. Its id is this entry's log index. The limits ride in the entry
    /// so every node keeps the same sessions whatever its own configuration: at most
    /// `max_sessions` open (the least recently used expires first), and `window`
    /// unacknowledged commands for this one (see `session_table`).
    OpenSession {
        /// At most this many sessions stay open; opening one more expires the least recently
        /// used.
        max_sessions: u64,
        /// How many of this session's commands may be unacknowledged at once.
        window: u64,
    },
}

impl FrameworkEntry {
    /// The bytes stored as the entry's data (bincode).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(self)?)
    }

    /// Decode a committed framework entry's data; anything else is an `Encoding` error.
    pub fn decode(data: &[u8]) -> Result<Self> {
        Ok(bincode::deserialize(data)?)
    }
}

/// The identity a proposal carries through the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalContext {
    /// What kind of entry this is, which decides how it is applied.
    pub kind: EntryKind,
    /// The node that proposed it: only that node has a waiter for it.
    pub node_id: u64,
    /// That node's random nonce for this process run, so a restarted node does not take its
    /// earlier entries (replayed from the log) for proposals it is waiting on.
    pub nonce: u64,
    /// The proposal's sequence number on that node (the first command's, for a batch).
    pub seq: u64,
}

const CONTEXT_LEN: usize = 25;

impl ProposalContext {
    /// Fixed 25-byte encoding: kind u8 | node u64 | nonce u64 | seq u64 (big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONTEXT_LEN);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Decode a context; anything else (empty, another length, unknown kind) is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CONTEXT_LEN {
            return None;
        }
        let kind = match bytes[0] {
            0 => EntryKind::User,
            1 => EntryKind::Framework,
            2 => EntryKind::UserBatch,
            3 => EntryKind::Session,
            _ => return None,
        };
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(ProposalContext {
            kind,
            node_id: word(1),
            nonce: word(9),
            seq: word(17),
        })
    }
}

/// The reply channel of one `propose` call.
pub type ProposalReply = oneshot::Sender<Result<Vec<u8>>>;

struct Waiter {
    index: u64,
    reply: ProposalReply,
}

/// Pending proposals of this node, keyed by sequence number and by log index.
pub struct Waiters {
    node_id: u64,
    nonce: u64,
    next_seq: u64,
    /// Ordered, so that failing them all answers in one order (a simulation replays it).
    by_seq: BTreeMap<u64, Waiter>,
    /// `(index, seq)` of every waiter: several commands of a batch share an index.
    by_index: BTreeSet<(u64, u64)>,
}

impl Waiters {
    pub fn new(node_id: u64) -> Self {
        Waiters {
            node_id,
            nonce: crate::blocking::random_u64(),
            next_seq: 1,
            by_seq: BTreeMap::new(),
            by_index: BTreeSet::new(),
        }
    }

    /// The random number drawn for this run of the node.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// A fresh context for the next proposal of `kind`.
    pub fn next_context(&mut self, kind: EntryKind) -> ProposalContext {
        let seq = self.next_seq;
        self.next_seq += 1;
        ProposalContext {
            kind,
            node_id: self.node_id,
            nonce: self.nonce,
            seq,
        }
    }

    /// Register the waiter of a proposal that raft appended at `index`.
    pub fn register(&mut self, ctx: ProposalContext, index: u64, reply: ProposalReply) {
        self.by_seq.insert(ctx.seq, Waiter { index, reply });
        self.by_index.insert((index, ctx.seq));
    }

    /// How many proposals are waiting.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// True when no proposal is waiting.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// The entry at `index` was applied with `ctx` and produced `result`: answer its waiter (if
    /// this node proposed it) and fail every waiter whose index is now taken by another entry.
    pub fn on_applied(
        &mut self,
        index: u64,
        ctx: Option<ProposalContext>,
        result: Result<Vec<u8>>,
    ) {
        self.on_applied_batch(index, ctx, std::iter::once(result));
    }

    /// The entry at `index` carried several commands (`ctx.seq` is the first one's) and applying
    /// them produced `results`, in order: answer each of this node's waiters with its own result,
    /// then fail every waiter whose index is now taken by another entry.
    pub fn on_applied_batch(
        &mut self,
        index: u64,
        ctx: Option<ProposalContext>,
        results: impl IntoIterator<Item = Result<Vec<u8>>>,
    ) {
        if let Some(ctx) = ctx.filter(|c| c.node_id == self.node_id && c.nonce == self.nonce) {
            for (seq, result) in (ctx.seq..).zip(results) {
                if let Some(waiter) = self.by_seq.remove(&seq) {
                    self.by_index.remove(&(waiter.index, seq));
                    let _ = waiter.reply.send(result);
                }
            }
        }
        self.fail_overwritten(index);
    }

    /// The entry at `index` could not be read (a batch entry that does not decode): fail its
    /// waiters with `err`, then, as for any applied entry, every waiter whose index is now taken
    /// by another entry.
    pub fn on_applied_unreadable(&mut self, index: u64, err: impl Fn() -> Error) {
        self.fail_range((index, 0)..=(index, u64::MAX), err);
        self.fail_overwritten(index);
    }

    /// Fail the waiters whose entries sit at or below `index`: entry `index` was just applied, so
    /// any of ours still waiting there or below was overwritten by another leader's entry.
    fn fail_overwritten(&mut self, index: u64) {
        self.fail_range(..=(index, u64::MAX), || {
            Error::ProposalDropped("its log index was taken by another leader's entry".into())
        });
    }

    /// A snapshot from the leader replaced the log up to `index`: the entries of waiters at or
    /// below it were never applied here, and whether they were committed (and are inside the
    /// snapshot's state) or overwritten cannot be told from here. They get `OutcomeUnknown`,
    /// never a definite "dropped": a retry could apply the command twice.
    pub fn on_snapshot_installed(&mut self, index: u64) {
        self.fail_range(..=(index, u64::MAX), || {
            Error::OutcomeUnknown(
                "a snapshot from the leader replaced this node's log past the entry: it may have \
                 been applied; check before retrying"
                    .into(),
            )
        });
    }

    /// Fail the waiters whose `(index, seq)` lies in `range`.
    fn fail_range(&mut self, range: impl RangeBounds<(u64, u64)> + Clone, err: impl Fn() -> Error) {
        while let Some(&(index, seq)) = self.by_index.range(range.clone()).next() {
            self.by_index.remove(&(index, seq));
            if let Some(w) = self.by_seq.remove(&seq) {
                let _ = w.reply.send(Err(err()));
            }
        }
    }

    /// Fail every waiter (shutdown, fatal storage error).
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        self.by_index.clear();
        for (_, w) in std::mem::take(&mut self.by_seq) {
            let _ = w.reply.send(Err(err()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_and_rejects_foreign_bytes() {
        let ctx = ProposalContext {
            kind: EntryKind::User,
            node_id: 7,
            nonce: 99,
            seq: 3,
        };
        assert_eq!(ProposalContext::decode(&ctx.encode()), Some(ctx));
        assert_eq!(ProposalContext::decode(b""), None);
        let mut bad = ctx.encode();
        bad[0] = 9;
        assert_eq!(ProposalContext::decode(&bad), None);
    }

    #[test]
    fn waiter_gets_result_of_its_own_entry() {
        let mut w = Waiters::new(1);
        let ctx = w.next_context(EntryKind::User);
        let (tx, mut rx) = oneshot::channel();
        w.register(ctx, 5, tx);
        w.on_applied(5, Some(ctx), Ok(b"ok".to_vec()));
        assert_eq!(rx.try_recv().expect("answered").expect("ok"), b"ok");
        assert!(w.is_empty());
    }

    #[test]
    fn each_command_of_a_batch_entry_answers_its_own_waiter() {
        let mut w = Waiters::new(1);
        let mut rxs = Vec::new();
        let first = w.next_context(EntryKind::User);
        for i in 0..3 {
            let ctx = ProposalContext {
                seq: first.seq + i,
                ..first
            };
            let (tx, rx) = oneshot::channel();
            w.register(ctx, 8, tx);
            rxs.push(rx);
            if i < 2 {
                w.next_context(EntryKind::User);
            }
        }
        let batch = ProposalContext {
            kind: EntryKind::UserBatch,
            ..first
        };
        let results = (0..3u8).map(|i| Ok(vec![i]));
        w.on_applied_batch(8, Some(batch), results);
        for (i, mut rx) in rxs.into_iter().enumerate() {
            assert_eq!(rx.try_recv().expect("answered").expect("ok"), vec![i as u8]);
        }
        assert!(w.is_empty());
    }

    #[test]
    fn the_waiters_of_an_overwritten_batch_all_get_dropped_errors() {
        let mut w = Waiters::new(1);
        let mut rxs = Vec::new();
        for _ in 0..2 {
            let ctx = w.next_context(EntryKind::User);
            let (tx, rx) = oneshot::channel();
            w.register(ctx, 4, tx);
            rxs.push(rx);
        }
        // A later waiter at index 5 is not touched by index 4's fate.
        let later = w.next_context(EntryKind::User);
        let (tx, mut later_rx) = oneshot::channel();
        w.register(later, 5, tx);
        w.on_applied(4, None, Ok(vec![]));
        for mut rx in rxs {
            assert!(matches!(rx.try_recv(), Ok(Err(Error::ProposalDropped(_)))));
        }
        assert!(later_rx.try_recv().is_err(), "index 5 still waits");
        w.on_applied_unreadable(5, || Error::Encoding("unreadable".into()));
        assert!(matches!(later_rx.try_recv(), Ok(Err(Error::Encoding(_)))));
        assert!(w.is_empty());
    }

    /// Issue 21, defect 3: a partitioned leader's proposal may be committed by the others and
    /// compacted into the snapshot this node then installs; the next applied entry must not
    /// call it "dropped" (a definite error), since a retry would apply it twice.
    #[test]
    fn waiters_inside_an_installed_snapshot_get_an_unknown_outcome_not_a_definite_drop() {
        let mut w = Waiters::new(1);
        let ctx = w.next_context(EntryKind::User);
        let (tx, mut rx) = oneshot::channel();
        w.register(ctx, 5, tx);
        let later = w.next_context(EntryKind::User);
        let (tx, mut later_rx) = oneshot::channel();
        w.register(later, 9, tx);
        w.on_snapshot_installed(7);
        // The first entry applied after the snapshot (index 8) comes from another node.
        w.on_applied(8, None, Ok(vec![]));
        match rx.try_recv() {
            Ok(Err(e)) => assert!(e.outcome_unknown(), "got a definite error: {e}"),
            other => panic!("waiter not answered with an error: {other:?}"),
        }
        assert!(later_rx.try_recv().is_err(), "index 9 still waits");
    }

    #[test]
    fn waiter_whose_index_is_overwritten_gets_dropped_error() {
        let mut w = Waiters::new(1);
        let ctx = w.next_context(EntryKind::User);
        let (tx, mut rx) = oneshot::channel();
        w.register(ctx, 5, tx);
        // Another node's entry (different nonce) lands at index 5.
        let other = ProposalContext {
            nonce: ctx.nonce.wrapping_add(1),
            ..ctx
        };
        w.on_applied(5, Some(other), Ok(vec![]));
        assert!(matches!(rx.try_recv(), Ok(Err(Error::ProposalDropped(_)))));
        assert!(w.is_empty());
    }
}
