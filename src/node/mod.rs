//! The node: one run loop that owns raft, and `RaftNode`, the handle to it.
//!
//! # The run loop, one turn at a time
//!
//! One task owns the `RawNode`, the state machine and the proposal waiters. Everything else sends
//! it a `Command` through a bounded mailbox. Each turn:
//!
//! 1. Wait for the next command or the tick deadline, then drain the mailbox without waiting, so
//!    everything that arrived together lands in one Ready (group commit). Tick when it is time.
//! 2. If raft has a `Ready`, take it.
//! 3. Send `ready.messages()` at once: a leader may replicate before its own write finishes.
//! 4. If the Ready holds a snapshot, store it and `restore()` the state machine from it.
//! 5. Apply the committed entries: normal entries go to `apply` and answer the waiter registered
//!    under the entry's proposal id; conf changes go to `apply_conf_change` and update the
//!    address book.
//! 6. Persist the new entries and hard state in one LMDB transaction (one fsync), on the
//!    blocking thread pool so the async runtime never waits on the disk.
//! 7. Only then send `ready.persisted_messages()` (votes and acks promise durable state).
//! 8. `advance()`, and handle the returned `LightReady` the same way (commit index, messages,
//!    committed entries); then `advance_apply_to(applied)`.
//! 9. If enough entries were applied since the last snapshot, take one and compact the log.
//!
//! # Invariants
//!
//! - Nothing is acknowledged to a client before its entry is committed, and raft commits only
//!   entries persisted on a quorum (raft-rs counts a node's own ack only after step 6).
//! - A proposal waiter is answered exactly once: with `apply`'s result, with a definite error
//!   (dropped / overwritten), or with "outcome unknown" on shutdown or timeout.
//! - The loop never awaits a network call; transports only enqueue.

mod handle;
mod mailbox;
mod proposals;
mod reads;
mod run_loop;
mod status;

pub use handle::RaftNode;
pub use mailbox::Command;
pub use proposals::{EntryKind, FrameworkEntry, ProposalContext};
pub use run_loop::{decode_conf_change, ConfChangeContext};
pub use status::{NodeStatus, PeerStatus, Role, SoftStatus};

pub(crate) use handle::{
    is_connect_error, response_to_result, result_to_response, single_change, Shared,
};
pub(crate) use proposals::Waiters;
pub(crate) use reads::ReadBatcher;
pub(crate) use run_loop::RunLoop;
