//! The node: one run loop that owns raft, and `RaftNode`, the handle to it.
//!
//! # The run loop, one turn at a time
//!
//! One task owns the `RawNode`, the state machine and the proposal waiters. Everything else sends
//! it a `Command` through a bounded mailbox. Each turn:
//!
//! 1. Wait for the next command, the tick deadline or a write the writer thread finished, then
//!    drain the mailbox without waiting, so everything that arrived together lands in one Ready
//!    (group commit). Tick when it is time. Then propose what was gathered as one batch,
//!    unless this is a leader whose append window is full (`Config::append_window`, off by
//!    default): the batch then waits, still gathering, for a turn in which the commit index
//!    moved.
//! 2. If raft has a `Ready` (and fewer than 64 writes are in flight), take it.
//! 3. Send `ready.messages()` at once: a leader replicates before its own write finishes.
//! 4. If the Ready holds a snapshot, wait for the writes in flight, store it and restore the
//!    state machine from it (`restore_from`, reading the stored file).
//! 5. Apply the committed entries (raft hands out only entries that are committed *and* durable
//!    here): normal entries go to `apply` and answer the waiter registered under the entry's
//!    proposal id (a batch entry's commands each go to `apply` and answer their own waiter, see
//!    `command_batch`); conf changes go to `apply_conf_change` and update the address book.
//! 6. Stage the new entries in memory (`StagedLog`: raft reads them from there until they are
//!    durable), hand entries + hard state to the writer thread with the Ready's
//!    `persisted_messages`, and `advance_append_async`. The loop does not wait for the disk: it
//!    goes back to step 1 and builds the next Ready while this one is being fsynced.
//! 7. When the writer reports Readies durable (it merges everything queued into one WAL record
//!    and one fsync), send their `persisted_messages` (votes and acks promise durable state) and
//!    call `on_persist_ready`; only now does raft count this node's copy towards a commit.
//! 8. If enough was applied since the last snapshot (entries, and bytes relative to the
//!    snapshot's size: see `snapshotting`), take one and compact the log.
//!
//! # Invariants
//!
//! - Nothing is acknowledged to a client before its entry is committed, and raft commits only
//!   entries persisted on a quorum (raft-rs counts a node's own copy only after step 7, and a
//!   follower's ack leaves only after its own step 7).
//! - A proposal waiter is answered exactly once: with `apply`'s result, with a definite error
//!   (dropped / overwritten), or with "outcome unknown" on shutdown or timeout.
//! - A proposal the append window holds is not in the log: on a lost leadership or on shutdown
//!   it is refused with a definite, retryable error.
//! - The loop never awaits a network call; transports only enqueue.
//! - A node that learns it was removed (it applied the entry, a member refused it, or its data
//!   dir says so) keeps answering until no member has needed it for two maximal election
//!   timeouts, then stops with `Error::Removed` (see `removal`). A member never refuses a node
//!   it has not seen removed by a committed entry, and a removed id is never added again.

mod address_book;
mod applying;
pub mod command_batch;
mod handle;
mod mailbox;
mod membership;
mod proposals;
mod proposing;
mod reads;
mod relocation;
mod removal;
mod rpc_results;
mod run_loop;
mod session_table;
mod snapshotting;
mod status;
mod submit;
mod writer;

pub use address_book::AddressBook;

/// Index of the snapshot a new static cluster starts from (its log starts after it).
pub(crate) const INITIAL_INDEX: u64 = 1;
pub use handle::RaftNode;
pub use mailbox::Command;
pub use membership::{decode_conf_change, ConfChangeContext};
pub use proposals::{EntryKind, FrameworkEntry, ProposalContext};
pub use status::{NodeStatus, PeerRole, PeerStatus, Role, SoftStatus};

pub(crate) use handle::{single_change, Shared};
pub(crate) use mailbox::peer_feedback;
pub(crate) use proposals::Waiters;
pub(crate) use reads::ReadBatcher;
pub(crate) use rpc_results::{
    describe_status, is_connect_error, response_to_result, result_to_response,
};
pub(crate) use run_loop::RunLoop;
pub(crate) use session_table::decode_opened;
pub use session_table::SessionCommand;
pub(crate) use session_table::SessionTable;
pub(crate) use snapshotting::restore_checked;
pub(crate) use writer::Writer;
