//! What travels on the wire besides the protobuf messages: the metadata of a message stream, the
//! cluster check every request goes through, and how a member says "you were removed". Shared
//! by the sending side (`peer_sender`) and the server (`rpc::server`).

use tonic::Status;

/// Refuse a request addressed to another cluster.
pub(crate) fn check_cluster(local: &str, cluster_id: &str) -> Result<(), Status> {
    if cluster_id != local {
        return Err(Status::permission_denied(format!(
            "cluster id mismatch: this node belongs to cluster {local:?}, the request to {cluster_id:?}"
        )));
    }
    Ok(())
}

/// Metadata naming the cluster of a `StreamMessages` stream (binary: cluster ids are any UTF-8).
pub(crate) const STREAM_CLUSTER_HEADER: &str = "pontoon-cluster-bin";
/// Metadata naming the sender of a `StreamMessages` stream.
pub(crate) const STREAM_FROM_HEADER: &str = "pontoon-from";
/// Header of a `StreamMessages` call: the sender's raft address, learned by a receiver that has
/// no address for the sender (so it can answer).
pub(crate) const STREAM_FROM_ADDR_HEADER: &str = "pontoon-from-addr";
/// Metadata on the status a member refuses a removed node's messages with: the removed node's
/// id. The removed node's sender reads it (`is_removal_of`) and stops its node.
pub(crate) const REMOVED_HEADER: &str = "pontoon-removed";

/// Whether `status` is a member's refusal of node `me` as removed (see `refuse_removed`).
pub(crate) fn is_removal_of(status: &Status, me: u64) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status
            .metadata()
            .get(REMOVED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            == Some(me)
}
