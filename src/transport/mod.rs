//! Moving raft messages between nodes.
//!
//! The run loop hands outbound messages to a `Transport` and never waits on the network: `send`
//! only enqueues. The default `GrpcTransport` keeps one sender task per peer (bounded queue,
//! batching, capped backoff) and tells the node about its peers through `PeerFeedback`. The
//! receiving side, the tonic service, sits above the node in `rpc`. A fault-injecting test
//! double can implement the same trait.

mod client_pool;
mod faults;
mod peer_sender;
mod snapshot_sender;
pub(crate) mod wire;

pub use client_pool::{connect_lazy, ClientPool};
pub use faults::FaultInjector;
pub(crate) use faults::Verdict;
pub use peer_sender::GrpcTransport;

use raft::eraftpb::Message;

use crate::config::Peers;

/// Generated gRPC types for `proto/raft_service.proto`.
///
/// The RPCs, messages and fields are described in the proto file; the comments written there
/// are copied onto the generated items.
// Generated code (tonic-prost-build, from build.rs): not every message, field and generated
// helper has a comment in the proto file, and the proto file is where they are documented.
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("pontoon");
}

/// What a transport reports about a peer; the node turns each into a command for its run loop.
#[derive(Debug)]
pub enum PeerEvent {
    /// Messages to this peer could not be delivered (raft-rs `report_unreachable`).
    Unreachable(u64),
    /// A snapshot sent to this peer finished or failed (raft-rs `report_snapshot`).
    SnapshotSent(u64, raft::SnapshotStatus),
    /// The peer `by` refused this node because it applied this node's removal.
    RemovedBy {
        /// The peer that refused this node.
        by: u64,
        /// The refusal's message, as the peer sent it.
        reason: String,
    },
}

/// Where a transport sends its `PeerEvent`s. Reporting never blocks: an event that cannot be
/// queued is dropped (raft probes the peer again anyway).
#[derive(Clone)]
pub struct PeerFeedback(std::sync::Arc<dyn Fn(PeerEvent) + Send + Sync>);

impl PeerFeedback {
    /// Feedback handled by `report`.
    pub fn new(report: impl Fn(PeerEvent) + Send + Sync + 'static) -> Self {
        PeerFeedback(std::sync::Arc::new(report))
    }

    /// Report `event`.
    pub fn report(&self, event: PeerEvent) {
        (self.0)(event)
    }
}

/// How the run loop sends raft messages. Implementations must not block: queue, and drop when a
/// queue is full (raft retransmits), reporting the peer unreachable through the loop's mailbox.
pub trait Transport: Send + Sync + 'static {
    /// Enqueue messages for delivery to their `to` peers. Messages for unknown peers are dropped.
    fn send(&self, messages: Vec<Message>);
    /// Make the set of reachable peers match the address book (this node's own id is ignored).
    fn set_peers(&self, peers: &Peers);
}
