//! The run loop's mailbox: every request to the loop is one `Command`.
//!
//! Senders never touch raft state; the loop drains the mailbox at the start of each turn, so
//! everything that arrived together lands in one Ready (the basis of group commit).

use raft::eraftpb::{ConfChangeV2, Message};
use raft::SnapshotStatus;
use tokio::sync::oneshot;

use super::proposals::{EntryKind, ProposalReply};
use super::reads::ReadReply;
use super::status::NodeStatus;
use crate::config::Peers;
use crate::error::Result;

/// A closure run on the state machine, which the loop passes as `&dyn Any` (the mailbox is not
/// generic over the state machine type).
pub type StateMachineJob = Box<dyn FnOnce(&dyn std::any::Any) + Send>;

/// A request to the run loop.
pub enum Command {
    /// Propose an entry; answered after it is applied (or definitely failed).
    Propose {
        /// The entry's data (for a session command, its header and the user's bytes).
        data: Vec<u8>,
        /// What kind of entry it becomes; decides how it is applied.
        kind: EntryKind,
        /// Where the outcome goes: what `apply` returned, or why it was not applied.
        reply: ProposalReply,
    },
    /// Add member addresses to the (in-memory) address book, so a joining node can answer the
    /// leader before the leader's snapshot tells it the whole book.
    LearnPeers(Peers),
    /// Dial member `id` at `addr` from now on, before the log records it: a node verified to
    /// answer there as that member (see `relocation`).
    Redirect {
        /// The member to dial elsewhere.
        id: u64,
        /// Where it was seen answering as that member.
        addr: String,
    },
    /// An inbound raft message from a peer.
    Raft(Box<Message>),
    /// Propose a membership change; answered with the resulting `ConfState` bytes once applied.
    ChangeConfig {
        /// The change to propose.
        cc: ConfChangeV2,
        /// The raft addresses of the nodes it adds, recorded with the change.
        addrs: Peers,
        /// Where the outcome goes.
        reply: ProposalReply,
    },
    /// A linearizable read: answered with the read index once this node has applied up to it.
    ReadIndex {
        /// Answered with the read index once this node has applied up to it.
        reply: ReadReply,
    },
    /// Run a closure on the state machine (type-erased; the loop passes `&F` as `&dyn Any`).
    /// Sent after a `ReadIndex` answered, so the state it sees is at least that fresh.
    Query(StateMachineJob),
    /// Start an election now.
    Campaign {
        /// Answered once the election was started (or refused).
        reply: oneshot::Sender<Result<()>>,
    },
    /// Ask the leader to hand leadership to `target` (or, when `None`, to the most up-to-date
    /// other voter); answers with the chosen target.
    TransferLeader {
        /// The voter to hand over to; `None` picks the most up-to-date other voter.
        target: Option<u64>,
        /// Answered with the chosen target.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Check a membership change on the leader without proposing it, the leader's own removal
    /// allowed (it hands over first): so it does not hand over for a change that would fail.
    CheckConfChange {
        /// The change to check.
        cc: ConfChangeV2,
        /// `Ok` when the leader would accept it now.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Full status for `inspect()`.
    Inspect {
        /// Answered with the node's status as of this turn.
        reply: oneshot::Sender<NodeStatus>,
    },
    /// Take a snapshot now; answers with its index.
    MakeSnapshot {
        /// Answered with the snapshot's index once it is stored.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Transport feedback: a message to this peer could not be delivered.
    ReportUnreachable(u64),
    /// Transport feedback: a snapshot to this peer was delivered or failed.
    ReportSnapshot(u64, SnapshotStatus),
    /// Transport feedback: peer `by` refused this node's messages because it applied this
    /// node's removal (`reason` is its message). The loop stops with `Error::Removed`.
    RemovedBy {
        /// The peer that refused this node.
        by: u64,
        /// The refusal's message.
        reason: String,
    },
    /// `RaftNode::leave` is about to remove this node (true; false when that definitely
    /// failed): when the removal arrives (applied here or reported by a peer) the loop stops
    /// cleanly instead of with `Error::Removed`.
    Leaving(bool),
    /// Flush and stop. `RaftNode::quit` waits for the whole node to stop, not for a reply.
    Quit,
}

impl From<crate::transport::PeerEvent> for Command {
    fn from(event: crate::transport::PeerEvent) -> Self {
        use crate::transport::PeerEvent;
        match event {
            PeerEvent::Unreachable(id) => Command::ReportUnreachable(id),
            PeerEvent::SnapshotSent(id, status) => Command::ReportSnapshot(id, status),
            PeerEvent::RemovedBy { by, reason } => Command::RemovedBy { by, reason },
        }
    }
}

/// Transport feedback that lands in the run loop's `mailbox` (dropped when it is full).
pub(crate) fn peer_feedback(
    mailbox: tokio::sync::mpsc::Sender<Command>,
) -> crate::transport::PeerFeedback {
    crate::transport::PeerFeedback::new(move |event| {
        let _ = mailbox.try_send(event.into());
    })
}
