//! Moving raft messages between nodes.
//!
//! The run loop hands outbound messages to a `Transport` and never waits on the network: `send`
//! only enqueues. The default `GrpcTransport` keeps one sender task per peer (bounded queue,
//! batching, capped backoff); `server` is the tonic service that receives them and the framework
//! RPCs. A fault-injecting test double can implement the same trait.

mod faults;
mod peer_sender;
pub(crate) mod server;
pub(crate) mod snapshot_receiver;
mod snapshot_sender;

pub use faults::FaultInjector;
pub(crate) use faults::Verdict;
pub use peer_sender::GrpcTransport;
pub use server::RaftGrpcService;
pub(crate) use snapshot_receiver::{
    remove_stale_snapshot_files, snapshot_file_data, snapshot_file_ref,
};

use raft::eraftpb::Message;

use crate::config::Peers;

/// Generated gRPC types for `proto/raft_service.proto`.
pub mod pb {
    tonic::include_proto!("pontoon");
}

/// How the run loop sends raft messages. Implementations must not block: queue, and drop when a
/// queue is full (raft retransmits), reporting the peer unreachable through the loop's mailbox.
pub trait Transport: Send + Sync + 'static {
    /// Enqueue messages for delivery to their `to` peers. Messages for unknown peers are dropped.
    fn send(&self, messages: Vec<Message>);
    /// Make the set of reachable peers match the address book (this node's own id is ignored).
    fn set_peers(&self, peers: &Peers);
}
