//! Linearizable reads through raft's ReadIndex, batched.
//!
//! At most one ReadIndex round is in flight per node. Reads that arrive while it is in flight
//! wait for the next round, so any number of concurrent reads costs one round trip to a quorum
//! per round, not one each. A round that gets no answer within two election timeouts while a
//! leader is known (the leader changed, a message was lost) is failed with a retryable error;
//! `RaftNode::read_index` retries it. While no leader is known the round waits, bounded by the
//! caller's deadline.
//!
//! raft-rs drops a ReadIndex without a word when no leader is known, and a leader drops it
//! until it has committed an entry of its own term. So a round started in either state is sent
//! again as soon as the state allows (`resend_blocked`), and any unanswered round is sent again
//! every few ticks (`on_tick`): the first read after an election or a restart waits for the
//! leader, not for the round to expire. A second answer to one round is ignored.
//!
//! A read is answered only once the node has applied up to the round's read index, so whatever
//! the caller then reads from its state machine includes every write acknowledged before the
//! read started.
//!
//! A round's context is a random number drawn when the node starts (the proposals' nonce, see
//! `proposals`) followed by the round's number. The number alone restarts at 1 with the process, and the leader's answer to a round
//! of the node's previous run can still arrive (delayed, or queued while the node was paused):
//! it would match the new run's round of the same number and answer it with a read index from
//! before the read started. The simulation found exactly that (seed 3533): a restarted follower
//! was answered index 170 for its first round while the cluster had committed 190.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The reply channel of one `read_index` call (answers the read index).
pub type ReadReply = oneshot::Sender<Result<u64>>;

struct Round {
    ctx: u64,
    ticks: usize,
    /// Sent while raft would drop it (no leader known, or a leader without a commit in its
    /// term): send again once that has changed.
    blocked: bool,
    replies: Vec<ReadReply>,
}

/// Every this many ticks an unanswered round is sent again.
pub const RESEND_TICKS: usize = 3;

/// Read requests of this node, from queued to answered.
pub struct ReadBatcher {
    /// Random for each run of the node: the first half of every round's context (see the
    /// module docs).
    nonce: u64,
    queued: Vec<ReadReply>,
    inflight: Option<Round>,
    /// Reads whose read index is known, waiting for the apply index to reach it.
    waiting: BTreeMap<u64, Vec<ReadReply>>,
    next_ctx: u64,
    /// Reads asked for and ReadIndex rounds started, since the node started.
    pub requests: u64,
    pub rounds: u64,
}

/// The context raft carries for round `round` of the run with `nonce`.
fn context(nonce: u64, round: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&nonce.to_be_bytes());
    ctx.extend_from_slice(&round.to_be_bytes());
    ctx
}

impl ReadBatcher {
    /// `nonce`: a random number drawn for this run of the node (see the module docs).
    pub fn new(nonce: u64) -> Self {
        ReadBatcher {
            nonce,
            queued: Vec::new(),
            inflight: None,
            waiting: BTreeMap::new(),
            next_ctx: 0,
            requests: 0,
            rounds: 0,
        }
    }

    pub fn push(&mut self, reply: ReadReply) {
        self.requests += 1;
        self.queued.push(reply);
    }

    /// Start a round for everything queued, if none is in flight; returns its context.
    /// `answerable`: whether raft would handle a ReadIndex now (see the module docs).
    pub fn start_round(&mut self, answerable: bool) -> Option<Vec<u8>> {
        if self.inflight.is_some() || self.queued.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        self.rounds += 1;
        self.inflight = Some(Round {
            ctx: self.next_ctx,
            ticks: 0,
            blocked: !answerable,
            replies: std::mem::take(&mut self.queued),
        });
        Some(context(self.nonce, self.next_ctx))
    }

    /// The context of the round in flight, to send again, if it was sent while raft would have
    /// dropped it and raft would now handle it.
    pub fn resend_blocked(&mut self, answerable: bool) -> Option<Vec<u8>> {
        let round = self.inflight.as_mut().filter(|r| r.blocked && answerable)?;
        round.blocked = false;
        Some(context(self.nonce, round.ctx))
    }

    /// Raft answered a round: its reads may be served once `index` is applied.
    pub fn on_read_state(&mut self, request_ctx: &[u8], index: u64) {
        let matches = self
            .inflight
            .as_ref()
            .is_some_and(|r| context(self.nonce, r.ctx) == request_ctx);
        if matches {
            if let Some(round) = self.inflight.take() {
                self.waiting.entry(index).or_default().extend(round.replies);
            }
        }
    }

    /// Answer every read whose index is applied.
    pub fn on_applied(&mut self, applied: u64) {
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let index = *entry.key();
            for reply in entry.remove() {
                let _ = reply.send(Ok(index));
            }
        }
    }

    /// One tick passed; fail a round that raft could have answered for longer than `limit`
    /// ticks. Ticks without a leader (`answerable` false) do not count: a read asked during an
    /// election waits for it (bounded by the caller's deadline) instead of failing and being
    /// asked again. Answers the context of a round to send again (every `RESEND_TICKS` while
    /// unanswered).
    pub fn on_tick(&mut self, limit: usize, answerable: bool) -> Option<Vec<u8>> {
        let nonce = self.nonce;
        let round = self.inflight.as_mut()?;
        if !answerable {
            return None;
        }
        round.ticks += 1;
        if round.ticks <= limit {
            return (round.ticks % RESEND_TICKS == 0).then(|| context(nonce, round.ctx));
        }
        if let Some(round) = self.inflight.take() {
            for reply in round.replies {
                let _ = reply.send(Err(Error::NotReady(
                    "the read index round got no answer (no leader or leader changed)".into(),
                )));
            }
        }
        None
    }

    /// Fail everything (shutdown).
    pub fn fail_all(&mut self) {
        let rounds = self.inflight.take().map(|r| r.replies).unwrap_or_default();
        let waiting = std::mem::take(&mut self.waiting).into_values().flatten();
        for reply in rounds
            .into_iter()
            .chain(waiting)
            .chain(self.queued.drain(..))
        {
            let _ = reply.send(Err(Error::ShuttingDown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_queued_during_a_round_share_the_next_round() {
        let mut b = ReadBatcher::new(7);
        let (tx1, mut rx1) = oneshot::channel();
        b.push(tx1);
        let ctx = b.start_round(true).expect("round");
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        b.push(tx2);
        b.push(tx3);
        assert!(
            b.start_round(true).is_none(),
            "one round in flight at a time"
        );
        b.on_read_state(&ctx, 10);
        b.on_applied(9);
        assert!(
            rx1.try_recv().is_err(),
            "not answered before the read index is applied"
        );
        b.on_applied(10);
        assert_eq!(rx1.try_recv().expect("answered").expect("ok"), 10);
        let ctx2 = b.start_round(true).expect("second round");
        b.on_read_state(&ctx2, 12);
        b.on_applied(12);
        assert_eq!(rx2.try_recv().expect("answered").expect("ok"), 12);
        assert_eq!(rx3.try_recv().expect("answered").expect("ok"), 12);
        assert_eq!((b.requests, b.rounds), (3, 2));
    }

    #[test]
    fn an_unanswered_round_fails_with_a_retryable_error() {
        let mut b = ReadBatcher::new(7);
        let (tx, mut rx) = oneshot::channel();
        b.push(tx);
        b.start_round(true).expect("round");
        for _ in 0..5 {
            b.on_tick(2, false);
        }
        assert!(
            rx.try_recv().is_err(),
            "ticks without a leader do not count"
        );
        for _ in 0..3 {
            b.on_tick(2, true);
        }
        let err = rx.try_recv().expect("answered").expect_err("failed");
        assert!(err.is_retryable());
    }

    #[test]
    fn a_round_sent_while_raft_would_drop_it_is_sent_again_once_it_would_not() {
        let mut b = ReadBatcher::new(7);
        let (tx, mut rx) = oneshot::channel();
        b.push(tx);
        let ctx = b.start_round(false).expect("round");
        assert!(
            b.resend_blocked(false).is_none(),
            "still no leader: nothing to send"
        );
        assert_eq!(
            b.resend_blocked(true),
            Some(ctx.clone()),
            "leader known: send again"
        );
        assert!(
            b.resend_blocked(true).is_none(),
            "sent again once, not every turn"
        );
        b.on_read_state(&ctx, 7);
        b.on_read_state(&ctx, 8); // a second answer to the same round is ignored
        b.on_applied(7);
        assert_eq!(rx.try_recv().expect("answered").expect("ok"), 7);
    }

    #[test]
    fn an_answer_to_a_round_of_the_previous_run_is_ignored() {
        // The node's previous run started its first round and stopped before the answer came.
        let mut before = ReadBatcher::new(1);
        let (tx, _rx) = oneshot::channel();
        before.push(tx);
        let old = before.start_round(true).expect("round");
        // Restarted, its first round again; the leader's answer to the old one arrives now.
        let mut b = ReadBatcher::new(2);
        let (tx, mut rx) = oneshot::channel();
        b.push(tx);
        let ctx = b.start_round(true).expect("round");
        assert_ne!(ctx, old);
        b.on_read_state(&old, 170);
        b.on_applied(170);
        assert!(
            rx.try_recv().is_err(),
            "not answered by the old round's index"
        );
        b.on_read_state(&ctx, 190);
        b.on_applied(190);
        assert_eq!(rx.try_recv().expect("answered").expect("ok"), 190);
    }

    #[test]
    fn an_unanswered_round_is_sent_again_every_few_ticks_until_it_expires() {
        let mut b = ReadBatcher::new(7);
        let (tx, _rx) = oneshot::channel();
        b.push(tx);
        let ctx = b.start_round(true).expect("round");
        let resent: Vec<usize> = (1..=7)
            .filter(|_| b.on_tick(100, true).is_some_and(|c| c == ctx))
            .collect();
        assert_eq!(resent.len(), 7 / RESEND_TICKS);
    }
}
