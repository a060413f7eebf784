//! Linearizable reads through raft's ReadIndex, batched.
//!
//! At most one ReadIndex round is in flight per node. Reads that arrive while it is in flight
//! wait for the next round, so any number of concurrent reads costs one round trip to a quorum
//! per round, not one each. A round that gets no answer (no leader, leader changed) within two
//! election timeouts is failed with a retryable error; `RaftNode::read_index` retries it.
//!
//! A read is answered only once the node has applied up to the round's read index, so whatever
//! the caller then reads from its state machine includes every write acknowledged before the
//! read started.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The reply channel of one `read_index` call (answers the read index).
pub type ReadReply = oneshot::Sender<Result<u64>>;

struct Round {
    ctx: u64,
    ticks: usize,
    replies: Vec<ReadReply>,
}

/// Read requests of this node, from queued to answered.
#[derive(Default)]
pub struct ReadBatcher {
    queued: Vec<ReadReply>,
    inflight: Option<Round>,
    /// Reads whose read index is known, waiting for the apply index to reach it.
    waiting: BTreeMap<u64, Vec<ReadReply>>,
    next_ctx: u64,
    /// Reads asked for and ReadIndex rounds started, since the node started.
    pub requests: u64,
    pub rounds: u64,
}

impl ReadBatcher {
    pub fn push(&mut self, reply: ReadReply) {
        self.requests += 1;
        self.queued.push(reply);
    }

    /// Start a round for everything queued, if none is in flight; returns its context.
    pub fn start_round(&mut self) -> Option<Vec<u8>> {
        if self.inflight.is_some() || self.queued.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        self.rounds += 1;
        self.inflight = Some(Round {
            ctx: self.next_ctx,
            ticks: 0,
            replies: std::mem::take(&mut self.queued),
        });
        Some(self.next_ctx.to_be_bytes().to_vec())
    }

    /// Raft answered a round: its reads may be served once `index` is applied.
    pub fn on_read_state(&mut self, request_ctx: &[u8], index: u64) {
        let matches = self
            .inflight
            .as_ref()
            .is_some_and(|r| r.ctx.to_be_bytes().as_slice() == request_ctx);
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

    /// One tick passed; fail a round that has waited longer than `limit` ticks.
    pub fn on_tick(&mut self, limit: usize) {
        let expired = match &mut self.inflight {
            Some(round) => {
                round.ticks += 1;
                round.ticks > limit
            }
            None => false,
        };
        if expired {
            if let Some(round) = self.inflight.take() {
                for reply in round.replies {
                    let _ = reply.send(Err(Error::NotReady(
                        "the read index round got no answer (no leader or leader changed)".into(),
                    )));
                }
            }
        }
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
        let mut b = ReadBatcher::default();
        let (tx1, mut rx1) = oneshot::channel();
        b.push(tx1);
        let ctx = b.start_round().expect("round");
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        b.push(tx2);
        b.push(tx3);
        assert!(b.start_round().is_none(), "one round in flight at a time");
        b.on_read_state(&ctx, 10);
        b.on_applied(9);
        assert!(
            rx1.try_recv().is_err(),
            "not answered before the read index is applied"
        );
        b.on_applied(10);
        assert_eq!(rx1.try_recv().expect("answered").expect("ok"), 10);
        let ctx2 = b.start_round().expect("second round");
        b.on_read_state(&ctx2, 12);
        b.on_applied(12);
        assert_eq!(rx2.try_recv().expect("answered").expect("ok"), 12);
        assert_eq!(rx3.try_recv().expect("answered").expect("ok"), 12);
        assert_eq!((b.requests, b.rounds), (3, 2));
    }

    #[test]
    fn an_unanswered_round_fails_with_a_retryable_error() {
        let mut b = ReadBatcher::default();
        let (tx, mut rx) = oneshot::channel();
        b.push(tx);
        b.start_round().expect("round");
        for _ in 0..3 {
            b.on_tick(2);
        }
        let err = rx.try_recv().expect("answered").expect_err("failed");
        assert!(err.is_retryable());
    }
}
