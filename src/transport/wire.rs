//! What travels on the wire besides the protobuf messages: the metadata of a message stream, the
//! cluster check every request goes through, and how a member says "you were removed". Shared
//! by the sending side (`peer_sender`) and the server (`rpc::server`).

use tonic::Status;

/// Refuse a request addressed to another cluster. The refusal names this node's cluster in
/// `REFUSING_CLUSTER_HEADER`, so the caller can say which cluster answered.
pub(crate) fn check_cluster(local: &str, cluster_id: &str) -> Result<(), Status> {
    if cluster_id != local {
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert_bin(
            REFUSING_CLUSTER_HEADER,
            tonic::metadata::MetadataValue::from_bytes(local.as_bytes()),
        );
        return Err(Status::with_metadata(
            tonic::Code::PermissionDenied,
            format!(
                "cluster id mismatch: this node belongs to cluster {local:?}, the request to {cluster_id:?}"
            ),
            meta,
        ));
    }
    Ok(())
}

/// Metadata of a cluster-mismatch refusal: the refusing node's cluster id (binary: any UTF-8).
pub(crate) const REFUSING_CLUSTER_HEADER: &str = "pontoon-refusing-cluster-bin";

/// The cluster id a `check_cluster` refusal names ("unknown" when it names none: an older node).
pub(crate) fn refusing_cluster(status: &Status) -> String {
    status
        .metadata()
        .get_bin(REFUSING_CLUSTER_HEADER)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .unwrap_or_else(|| "unknown".into())
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
