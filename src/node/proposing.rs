//! The leader's side of a proposal, inside the run loop: accepting it into this turn's batch
//! (or refusing it at once), the append window that may hold the batch, and appending the batch
//! with one `MsgPropose`. What a proposal carries and who waits for its answer is `proposals`;
//! how commands share an entry is `command_batch`.

use raft::StateRole;

use super::command_batch::EntryPacker;
use super::proposals::{EntryKind, ProposalReply};
use super::run_loop::RunLoop;
use crate::error::Error;
use crate::state_machine::AbstractStateMachine;
use crate::storage::LogStore;

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    pub(super) fn propose(&mut self, data: Vec<u8>, kind: EntryKind, reply: ProposalReply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if data.len() > self.config.max_proposal_bytes {
            let _ = reply.send(Err(Error::InvalidRequest(format!(
                "proposal of {} bytes exceeds the limit of {} bytes",
                data.len(),
                self.config.max_proposal_bytes
            ))));
            return;
        }
        let pending = self.waiters.len() + self.proposal_batch.len();
        if pending >= self.config.max_pending_proposals {
            let _ = reply.send(Err(Error::Busy(format!(
                "{pending} proposals already wait for their commit"
            ))));
            return;
        }
        if kind == EntryKind::Framework {
            if let Some(refused) = self.refuse_framework_proposal(&data) {
                let _ = reply.send(Err(refused));
                return;
            }
        }
        let ctx = self.waiters.next_context(kind);
        self.proposal_batch.push((ctx, data, reply));
    }

    /// Whether the append window is full, so this turn's proposals wait for the commit index
    /// to move (see `Config::append_window`). They do not wait once they fill an entry: the
    /// packer's command limit, or its byte limit counted over payloads only (without the
    /// packer's length prefixes; near enough to decide when to stop waiting).
    ///
    /// Nothing can strand them: the leader's commit index moves only while a turn handles a
    /// follower's ack (`handle`) or this node's own write (`on_persisted`), and every turn runs
    /// `propose_batch` after both. A leader that steps down does so in a turn too, and
    /// `propose_batch` then refuses what it held as not-leader (never appended: safe to retry).
    pub(super) fn holds_proposals(&self) -> bool {
        let window = self.config.append_window;
        if window == 0 || self.raw.raft.state != StateRole::Leader {
            return false;
        }
        let log = &self.raw.raft.raft_log;
        let batch_bytes = || {
            self.proposal_batch
                .iter()
                .map(|(_, data, _)| data.len())
                .sum::<usize>()
        };
        log.last_index().saturating_sub(log.committed) >= window
            && self.proposal_batch.len() < self.config.max_commands_per_entry
            && batch_bytes() < self.config.raft.max_size_per_msg as usize
    }

    /// Append every proposal accepted this turn with one `MsgPropose`: raft appends them in one
    /// go and sends each follower one append for all of them, instead of one per proposal.
    /// Consecutive user proposals share entries (`command_batch`), up to
    /// `max_commands_per_entry` commands and `raft.max_size_per_msg` bytes each.
    pub(super) fn propose_batch(&mut self) {
        if self.proposal_batch.is_empty() {
            return;
        }
        if self.holds_proposals() {
            let newly_held = self.proposal_batch.len() - self.proposals_marked_held;
            self.metrics.proposals_held.inc_by(newly_held as u64);
            self.proposals_marked_held = self.proposal_batch.len();
            return;
        }
        let batch = std::mem::take(&mut self.proposal_batch);
        self.proposals_marked_held = 0;
        if self.raw.raft.state != StateRole::Leader {
            // Leadership moved while the batch was gathered. raft-rs would forward the proposal
            // to the new leader, where it might commit after we answered: refuse it definitely.
            for (_, _, reply) in batch {
                let _ = reply.send(Err(self.not_leader()));
            }
            return;
        }
        let commands = batch.len() as u64;
        let mut msg = raft::eraftpb::Message::default();
        msg.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
        msg.from = self.raw.raft.id;
        let mut packer = EntryPacker::new(
            self.config.max_commands_per_entry,
            self.config.raft.max_size_per_msg as usize,
        );
        // Each reply with the offset (in `msg.entries`) of the entry its command rides in.
        let mut replies = Vec::with_capacity(batch.len());
        let mut entries = Vec::new();
        for (ctx, data, reply) in batch {
            let offset = packer.add(ctx, data, &mut entries);
            replies.push((offset, ctx, reply));
        }
        packer.finish(&mut entries);
        let count = entries.len() as u64;
        msg.entries = entries.into();
        let before = self.raw.raft.raft_log.last_index();
        let dropped = |why: &str| Error::ProposalDropped(why.to_string());
        match self.raw.raft.step(msg) {
            Ok(()) if self.raw.raft.raft_log.last_index() == before + count => {
                self.metrics.proposals.inc_by(commands);
                for (offset, ctx, reply) in replies {
                    self.waiters
                        .register(ctx, before + 1 + offset as u64, reply);
                }
            }
            Ok(()) => {
                for (_, _, reply) in replies {
                    let _ = reply.send(Err(dropped("raft did not append it")));
                }
            }
            Err(raft::Error::ProposalDropped) => {
                for (_, _, reply) in replies {
                    let _ = reply.send(Err(dropped(
                        "raft dropped it (leader transfer in progress or too much uncommitted log)",
                    )));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, _, reply) in replies {
                    let _ = reply.send(Err(Error::Other(format!("raft: {msg}"))));
                }
            }
        }
    }
}
