//! The gRPC service every node serves: raft messages from peers (delivered to the run loop),
//! streamed snapshots, and the framework RPCs (propose, read, membership, status). It sits above
//! the node: it calls into `RaftNode` the way an application does. Sending to peers is the
//! transport's (`transport`), and both share what goes on the wire (`transport::wire`, `pb`).

pub(crate) mod server;
pub(crate) mod snapshot_receiver;

pub use server::RaftGrpcService;
pub(crate) use snapshot_receiver::remove_stale_snapshot_files;
