//! Entry points for the fuzz targets in `fuzz/`; not part of pontoon's API and not stable.
//!
//! Each function here runs the very code the gRPC server, the join client, the storage and the
//! run loop run on bytes from the network or the disk: the decode steps are functions those
//! callers use too, so a target never tests a copy.

use raft::eraftpb::{ConfChangeV2, Entry, Message};
use tonic::Status;

use crate::cluster::JoinTicket;
use crate::config::Peers;
use crate::debug::EntryView;
use crate::error::{Error, Result};
use crate::rpc::{server, snapshot_receiver};
use crate::transport::pb;

pub use crate::config::parse_peers;
pub use crate::node::{
    command_batch, decode_conf_change, ConfChangeContext, FrameworkEntry, ProposalContext,
};
pub use crate::storage::records::{
    decode_cluster_id, decode_conf_state, decode_format_version, decode_node_id, decode_peers,
    decode_snapshot_meta, encode_conf_state, encode_pb, encode_peers,
};
pub use crate::storage::{SnapshotEnvelope, StorageError};

/// Read a WAL segment's bytes the way replay does: frame after frame until the end or a torn
/// frame, decoding every record. Answers how many records were read, or the first decode error.
pub fn read_wal_segment(bytes: &[u8]) -> std::result::Result<usize, StorageError> {
    use crate::storage::wal::record::{decode, next_frame, Frame};
    let mut pos = 0;
    let mut count = 0;
    while let Frame::Record(body, size) = next_frame(&bytes[pos..]) {
        decode(body)?;
        pos += size;
        count += 1;
    }
    Ok(count)
}

/// A WAL segment as the log writes it: a start, then one append of `entries` with `hard_state`.
pub fn encode_wal_segment(
    entries: &[Entry],
    hard_state: &raft::eraftpb::HardState,
) -> std::result::Result<Vec<u8>, StorageError> {
    use crate::storage::wal::record::{encode_append, encode_start};
    let mut out = encode_start(1, (0, 0), hard_state)?;
    out.extend(encode_append(entries, Some(hard_state))?.0);
    Ok(out)
}

/// Store `entry` in a WAL append record and read it back through its recorded position, as
/// `Storage::entries` does.
pub fn wal_entry_round_trip(entry: &Entry) -> std::result::Result<Entry, StorageError> {
    use crate::storage::wal::record::{decode, decode_entry, encode_append, next_frame, Frame};
    let (bytes, spans) = encode_append(std::slice::from_ref(entry), None)?;
    let Frame::Record(body, _) = next_frame(&bytes) else {
        return Err(StorageError::InvalidOperation(
            "a fresh record reads as torn".into(),
        ));
    };
    decode(body)?;
    let (at, len) = spans[0];
    decode_entry(&bytes[at..at + len as usize])
}

/// What tonic does with a request or response body: decode it with prost, a failure being an
/// `INTERNAL` status.
fn decode_body<T: prost::Message + Default>(body: &[u8]) -> std::result::Result<T, Status> {
    T::decode(body).map_err(|e| Status::internal(format!("failed to decode body: {e}")))
}

/// The encoded body of a message, for seeds and round trips.
pub fn encode_body<T: prost::Message>(msg: &T) -> Vec<u8> {
    msg.encode_to_vec()
}

/// `SendMessages` on node `local_id` of `local_cluster`: the body is decoded, the cluster checked
/// and the batch turned into the raft messages the run loop would be handed.
pub fn send_messages(
    body: &[u8],
    local_cluster: &str,
    local_id: u64,
) -> std::result::Result<Vec<Message>, Status> {
    let batch: pb::MessageBatch = decode_body(body)?;
    crate::transport::wire::check_cluster(local_cluster, &batch.cluster_id)?;
    server::decode_message_batch(&batch, local_id)
}

/// `InstallSnapshot` up to the envelope check: the chunk bodies are decoded, the first chunk's
/// cluster and message checked, and order, size and checksum of the stream tallied. Returns the
/// message and the number of chunks, and the received bytes (what the receiver writes to its
/// file; check them with `SnapshotEnvelope::verify_file`).
pub fn install_snapshot(
    bodies: &[&[u8]],
    local_cluster: &str,
    local_id: u64,
    max_snapshot_bytes: u64,
) -> std::result::Result<(Message, u64, Vec<u8>), Status> {
    let mut chunks = bodies.iter().map(|b| decode_body::<pb::SnapshotChunk>(b));
    let first = chunks
        .next()
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
    crate::transport::wire::check_cluster(local_cluster, &first.cluster_id)?;
    let msg = snapshot_receiver::check_first_chunk(&first, local_id, max_snapshot_bytes)?;
    let mut tally = snapshot_receiver::ChunkTally::new(&first);
    let mut data = Vec::new();
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        tally.add(&chunk)?;
        data.extend_from_slice(&chunk.data);
        next = chunks.next().transpose()?;
    }
    let count = tally.finish()?;
    Ok((msg, count, data))
}

/// `ChangeConfig` on a node of `local_cluster`: the conf change and addresses it carries.
pub fn change_config(
    body: &[u8],
    local_cluster: &str,
) -> std::result::Result<(ConfChangeV2, Peers), Status> {
    let req: pb::ChangeConfigRequest = decode_body(body)?;
    crate::transport::wire::check_cluster(local_cluster, &req.cluster_id)?;
    server::decode_change_config(req)
}

/// `RequestId` on a node of `local_cluster`: the announced raft address it accepts.
pub fn request_id(body: &[u8], local_cluster: &str) -> std::result::Result<String, Status> {
    let req: pb::RequestIdRequest = decode_body(body)?;
    if !req.cluster_id.is_empty() {
        crate::transport::wire::check_cluster(local_cluster, &req.cluster_id)?;
    }
    server::check_raft_addr(&req.raft_addr)?;
    Ok(req.raft_addr)
}

/// The joining side of `Raft::request_id`: the `RequestId` and `GetPeers` answers (response
/// bodies) turned into a ticket.
pub fn join_ticket(id_reply: &[u8], peers_reply: &[u8], raft_addr: String) -> Result<JoinTicket> {
    let transport = |s: Status| Error::Transport(s.to_string());
    let id_reply: pb::ProposeResponse = decode_body(id_reply).map_err(transport)?;
    let reserved_id = crate::cluster::reserved_id_from(id_reply)?;
    let peers_reply: pb::GetPeersResponse = decode_body(peers_reply).map_err(transport)?;
    crate::cluster::ticket_from(reserved_id, raft_addr, peers_reply)
}

/// How `pontoon-cli debug persisted` shows a stored entry.
pub fn view_entry(entry: &Entry) -> EntryView {
    crate::debug::view_entry(entry, None)
}

/// The path a snapshot's data refers to, when it is a reference to a received snapshot file.
pub fn snapshot_file_ref(data: &[u8]) -> Option<std::path::PathBuf> {
    crate::storage::snapshot_file_ref(data)
}

/// A `RequestId` answer for a reserved id, for seeds.
pub fn reserved_id_reply(id: u64) -> Vec<u8> {
    encode_body(&crate::node::result_to_response(Ok(id
        .to_be_bytes()
        .to_vec())))
}
