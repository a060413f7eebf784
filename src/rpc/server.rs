//! The tonic service every node serves: raft message delivery plus the framework RPCs.
//!
//! Every request is checked for the cluster id first; a request from another cluster is refused
//! with `PERMISSION_DENIED` and nothing reaches the run loop. When the node has a join token,
//! `RequestId` and `ChangeConfig` must carry it (compared in constant time) or are refused with
//! `UNAUTHENTICATED`, again before anything reaches the run loop. Malformed raft messages are refused
//! with `INVALID_ARGUMENT`; the service keeps serving.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Message, MessageType};
use tonic::{Request, Response, Status};

use super::snapshot_receiver::receive_snapshot;
use crate::node::{result_to_response, RaftNode};
use crate::tls::constant_time_eq;
use crate::transport::pb;
use crate::transport::pb::raft_service_server::RaftService;
use crate::transport::wire::{
    check_cluster, REMOVED_HEADER, STREAM_CLUSTER_HEADER, STREAM_FROM_ADDR_HEADER,
    STREAM_FROM_HEADER,
};

/// The gRPC service of one node.
pub struct RaftGrpcService {
    node: RaftNode,
}

impl RaftGrpcService {
    /// The service for `node`; `Raft::run` serves it (see `into_server`).
    pub fn new(node: RaftNode) -> Self {
        RaftGrpcService { node }
    }

    /// Wrap into the tonic server type with the configured message size limits.
    pub fn into_server(self) -> pb::raft_service_server::RaftServiceServer<Self> {
        let limit = self.node.shared.config.max_message_bytes;
        pb::raft_service_server::RaftServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        check_cluster(self.node.cluster_id(), cluster_id)
    }

    /// Membership calls must carry this node's join token, when it has one.
    fn check_join_token(&self, presented: &str) -> Result<(), Status> {
        let Some(expected) = &self.node.shared.config.join_token else {
            return Ok(());
        };
        if presented.is_empty() {
            return Err(Status::unauthenticated(
                "this cluster requires a join token and the request carries none",
            ));
        }
        if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            return Err(Status::unauthenticated(
                "the join token does not match this cluster's",
            ));
        }
        Ok(())
    }
}

/// Refuse a sender this node saw removed from the cluster. Removal is final (ids are never
/// reused), so the refusal is too; it is how a node cut off while it was removed learns of it.
fn refuse_removed(node: &RaftNode, from: u64) -> Result<(), Status> {
    if !node.shared.peers.is_removed(from) {
        return Ok(());
    }
    let mut meta = tonic::metadata::MetadataMap::new();
    meta.insert(REMOVED_HEADER, from.into());
    Err(Status::with_metadata(
        tonic::Code::FailedPrecondition,
        format!(
            "node {from} was removed from cluster {:?} (node {} applied its removal)",
            node.cluster_id(),
            node.id()
        ),
        meta,
    ))
}

/// Check one batch (cluster, injected partition, every message) and hand its messages to the
/// run loop, in order. Shared by `SendMessages` and `StreamMessages`.
async fn deliver_batch(node: &RaftNode, batch: &pb::MessageBatch) -> Result<(), Status> {
    check_cluster(node.cluster_id(), &batch.cluster_id)?;
    if node.shared.faults.is_cut_off(batch.from) {
        return Err(Status::unavailable(
            "partitioned from the sender (injected fault)",
        ));
    }
    refuse_removed(node, batch.from)?;
    // Decode the whole batch first: a malformed batch is refused whole.
    let messages = decode_message_batch(batch, node.id())?;
    for msg in messages {
        node.deliver(msg)
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
    }
    Ok(())
}

/// Decode and check a `SendMessages` batch for node `local_id`: every element must be a raft
/// message addressed to this node from the batch's sender. A malformed batch is refused whole.
///
/// Snapshots are refused here: they travel on `InstallSnapshot`, which checks size, checksum and
/// envelope (and whose receiver alone may hand raft a reference to a received snapshot file).
pub(crate) fn decode_message_batch(
    batch: &pb::MessageBatch,
    local_id: u64,
) -> Result<Vec<Message>, Status> {
    let mut messages = Vec::with_capacity(batch.messages.len());
    for (i, bytes) in batch.messages.iter().enumerate() {
        let msg = Message::parse_from_bytes(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "message {i} of the batch is not a raft message: {e}"
            ))
        })?;
        if msg.to != local_id {
            return Err(Status::invalid_argument(format!(
                "message {i} is addressed to node {}, this is node {local_id}",
                msg.to
            )));
        }
        if msg.from != batch.from {
            return Err(Status::invalid_argument(format!(
                "message {i} claims sender {} inside a batch from node {}",
                msg.from, batch.from
            )));
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(format!(
                "message {i} is a snapshot; snapshots travel on InstallSnapshot"
            )));
        }
        messages.push(msg);
    }
    Ok(messages)
}

/// Decode the conf change and addresses of a `ChangeConfig` request.
pub(crate) fn decode_change_config(
    req: pb::ChangeConfigRequest,
) -> Result<(ConfChangeV2, crate::config::Peers), Status> {
    let cc = ConfChangeV2::parse_from_bytes(&req.conf_change).map_err(|e| {
        Status::invalid_argument(format!("conf_change is not an eraftpb.ConfChangeV2: {e}"))
    })?;
    Ok((cc, req.addrs.into_iter().collect()))
}

/// Check the address a `RequestId` caller announces.
pub(crate) fn check_raft_addr(raft_addr: &str) -> Result<(), Status> {
    if raft_addr.is_empty() || !raft_addr.contains(':') {
        return Err(Status::invalid_argument(format!(
            "raft_addr {raft_addr:?} is not of the form host:port"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn send_messages(
        &self,
        request: Request<pb::MessageBatch>,
    ) -> Result<Response<pb::SendAck>, Status> {
        deliver_batch(&self.node, &request.into_inner()).await?;
        Ok(Response::new(pb::SendAck {}))
    }

    type StreamMessagesStream = tokio_stream::wrappers::ReceiverStream<Result<pb::SendAck, Status>>;

    async fn stream_messages(
        &self,
        request: Request<tonic::Streaming<pb::MessageBatch>>,
    ) -> Result<Response<Self::StreamMessagesStream>, Status> {
        // Refuse a foreign or cut-off sender before accepting the stream, so its sender sees
        // the failure when it opens the stream and backs off.
        let meta = request.metadata();
        let cluster = meta
            .get_bin(STREAM_CLUSTER_HEADER)
            .and_then(|v| v.to_bytes().ok())
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .unwrap_or_default();
        self.check_cluster(&cluster)?;
        let from = meta
            .get(STREAM_FROM_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Status::invalid_argument("stream without a valid pontoon-from"))?;
        if self.node.shared.faults.is_cut_off(from) {
            return Err(Status::unavailable(
                "partitioned from the sender (injected fault)",
            ));
        }
        refuse_removed(&self.node, from)?;
        // A sender this node has no address for (it restarted half-way through its join, and
        // only the ticket had taught it the members): learn it, never overwrite a known one.
        if self.node.shared.peers.get(from).is_none() {
            let addr = meta
                .get(STREAM_FROM_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|a| crate::config::port_of(a).is_some());
            if let Some(addr) = addr {
                let book = crate::config::Peers::from([(from, addr.to_string())]);
                let _ = self
                    .node
                    .shared
                    .mailbox
                    .try_send(crate::node::Command::LearnPeers(book));
            }
        }
        let mut inbound = request.into_inner();
        let (refusal, response) = tokio::sync::mpsc::channel(1);
        let node = self.node.clone();
        tokio::spawn(async move {
            // The run loop ended (its mailbox is gone): end the stream, so the server's graceful
            // shutdown is not held up by a peer's stream that never ends.
            let mailbox = node.shared.mailbox.clone();
            let stopped = mailbox.closed();
            tokio::pin!(stopped);
            loop {
                let next = tokio::select! {
                    biased;
                    next = inbound.message() => next,
                    () = &mut stopped => return,
                };
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    // The sender closed the stream, or it broke: nothing to answer.
                    Ok(None) | Err(_) => return,
                };
                if let Err(status) = deliver_batch(&node, &batch).await {
                    let _ = refusal.send(Err(status)).await;
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            response,
        )))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotAck>, Status> {
        let (msg, chunks) =
            receive_snapshot(&self.node, request.into_inner(), |c| self.check_cluster(c)).await?;
        self.node
            .deliver(msg)
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        Ok(Response::new(pb::SnapshotAck { chunks }))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let result = if req.session_id == 0 {
            self.node.propose_local(req.data).await
        } else {
            let header = crate::node::SessionCommand {
                session: req.session_id,
                seq: req.seq,
                acked: req.acked,
            };
            self.node.propose_in_session_local(header, req.data).await
        };
        Ok(Response::new(result_to_response(result)))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        Ok(Response::new(result_to_response(
            self.node.open_session_local(req.window).await,
        )))
    }

    async fn change_config(
        &self,
        request: Request<pb::ChangeConfigRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        self.check_join_token(&req.join_token)?;
        let (cc, addrs) = decode_change_config(req)?;
        let me = self.node.id();
        let removes_me = cc.get_changes().len() == 1
            && cc.get_changes()[0].get_change_type() == ConfChangeType::RemoveNode
            && cc.get_changes()[0].node_id == me;
        if removes_me && self.node.status().role.is_leader() {
            // A tool removing the leader (pontoon-cli member remove): as `remove_node` does,
            // check the change, hand leadership to another voter, and pass the change to it.
            let result = self.node.remove_node(me).await.and_then(|cs| {
                cs.write_to_bytes()
                    .map_err(|e| crate::Error::Encoding(e.to_string()))
            });
            return Ok(Response::new(result_to_response(result)));
        }
        Ok(Response::new(result_to_response(
            self.node.change_config_local(cc, addrs).await,
        )))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        Ok(Response::new(result_to_response(
            self.node.read_query(req.query).await,
        )))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let result = self.node.transfer_leader(req.target).await;
        Ok(Response::new(result_to_response(
            result.map(|()| Vec::new()),
        )))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.check_cluster(&request.get_ref().cluster_id)?;
        let result = self.node.make_snapshot().await;
        Ok(Response::new(result_to_response(
            result.map(|index| index.to_be_bytes().to_vec()),
        )))
    }

    async fn request_id(
        &self,
        request: Request<pb::RequestIdRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        if !req.cluster_id.is_empty() {
            self.check_cluster(&req.cluster_id)?;
        }
        self.check_join_token(&req.join_token)?;
        check_raft_addr(&req.raft_addr)?;
        let result = self.node.reserve_id(req.raft_addr).await;
        Ok(Response::new(result_to_response(
            result.map(|id| id.to_be_bytes().to_vec()),
        )))
    }

    async fn update_address(
        &self,
        request: Request<pb::UpdateAddressRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        self.check_join_token(&req.join_token)?;
        let result = self.node.update_address(req.node_id, req.raft_addr).await;
        Ok(Response::new(result_to_response(
            result.map(|()| Vec::new()),
        )))
    }

    async fn debug_node(
        &self,
        request: Request<pb::DebugNodeRequest>,
    ) -> Result<Response<pb::DebugNodeResponse>, Status> {
        // An empty cluster id is accepted: status is read-only (pontoon-cli debug node).
        let cluster_id = &request.get_ref().cluster_id;
        if !cluster_id.is_empty() {
            self.check_cluster(cluster_id)?;
        }
        let status = self
            .node
            .inspect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let json = serde_json::to_string(&status).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DebugNodeResponse { json }))
    }

    async fn get_peers(
        &self,
        request: Request<pb::GetPeersRequest>,
    ) -> Result<Response<pb::GetPeersResponse>, Status> {
        let cluster_id = &request.get_ref().cluster_id;
        if !cluster_id.is_empty() {
            self.check_cluster(cluster_id)?;
        }
        Ok(Response::new(pb::GetPeersResponse {
            peers: self.node.get_peers().into_iter().collect(),
            cluster_id: self.node.cluster_id().to_string(),
            leader_id: self.node.get_leader_id(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Found by the `raft_message_batch` fuzz target: a `SendMessages` batch whose second message
    /// is a MsgSnapshot (type 7) was accepted. Its data would have reached the run loop unchecked,
    /// where a `PONTOON-SNAPSHOT-FILE:` prefix names a file to read and then delete.
    #[test]
    fn batch_with_a_snapshot_is_refused() {
        const BODY: &[u8] = &[
            0x0a, 0x0c, 0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x63, 0x6c, 0x75, 0x73, 0x74, 0x65, 0x72,
            0x10, 0x01, 0x1a, 0x0e, 0x08, 0x07, 0x10, 0x02, 0x18, 0x01, 0x20, 0x03, 0x28, 0x02,
            0x30, 0x0a, 0x40, 0x09, 0x1a, 0x0e, 0x08, 0x04, 0x10, 0x02, 0x18, 0x01, 0x20, 0x03,
            0x28, 0x02, 0x30, 0x0a, 0x40, 0x09, 0x1a, 0x0e, 0x08, 0x0f, 0x10, 0x02, 0x18, 0x01,
            0x20, 0x03, 0x28, 0x02, 0x30, 0x0a, 0x40, 0x09,
        ];
        let batch = pb::MessageBatch::decode(BODY).expect("a well-formed body");
        let err = decode_message_batch(&batch, 2).expect_err("snapshot refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("snapshot"), "{}", err.message());

        let mut file_ref = Message::default();
        file_ref.set_msg_type(MessageType::MsgSnapshot);
        file_ref.from = 1;
        file_ref.to = 2;
        file_ref
            .mut_snapshot()
            .set_data(b"PONTOON-SNAPSHOT-FILE:/etc/hostname".to_vec().into());
        let batch = pb::MessageBatch {
            cluster_id: String::new(),
            from: 1,
            messages: vec![file_ref.write_to_bytes().expect("encode")],
        };
        assert!(decode_message_batch(&batch, 2).is_err());
    }
}
