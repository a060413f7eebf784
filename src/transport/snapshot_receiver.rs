//! Receiving a streamed snapshot: chunks go to a temporary file in the data dir; only a complete
//! stream whose size, checksum and envelope check out becomes a raft message. Anything else
//! removes the file and installs nothing.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tonic::{Status, Streaming};

use super::pb;
use crate::node::RaftNode;
use crate::storage::SnapshotEnvelope;

/// Removes the temporary file unless the transfer completed.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Read a whole snapshot stream and, if it is sound, the message to hand to raft.
/// `check_cluster` validates the first chunk's cluster id.
pub(crate) async fn receive_snapshot(
    node: &RaftNode,
    mut stream: Streaming<pb::SnapshotChunk>,
    check_cluster: impl Fn(&str) -> Result<(), Status>,
) -> Result<(Message, u64), Status> {
    let config = &node.shared.config;
    let metrics = &node.shared.metrics;
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
    check_cluster(&first.cluster_id)?;
    if node.shared.faults.is_cut_off(first.from) {
        return Err(Status::unavailable(
            "partitioned from the sender (injected fault)",
        ));
    }
    let mut msg = Message::parse_from_bytes(&first.message)
        .map_err(|e| Status::invalid_argument(format!("first chunk holds no raft message: {e}")))?;
    if msg.get_msg_type() != MessageType::MsgSnapshot
        || msg.to != node.id()
        || msg.from != first.from
    {
        return Err(Status::invalid_argument(format!(
            "not a snapshot for node {} (type {:?}, to {}, from {} in a stream from {})",
            node.id(),
            msg.get_msg_type(),
            msg.to,
            msg.from,
            first.from
        )));
    }
    if first.total_size > config.max_snapshot_bytes {
        return Err(Status::resource_exhausted(format!(
            "snapshot of {} bytes exceeds the limit of {} bytes",
            first.total_size, config.max_snapshot_bytes
        )));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let temp = TempFile {
        path: config
            .data_dir
            .join(format!("incoming-snapshot-{}-{nanos}.tmp", first.from)),
    };
    let mut file = tokio::fs::File::create(&temp.path)
        .await
        .map_err(|e| Status::internal(format!("cannot create {}: {e}", temp.path.display())))?;
    let total_size = first.total_size;
    let expected_crc = first.crc32;
    let mut hasher = crc32fast::Hasher::new();
    let mut received = 0u64;
    let mut chunks = 0u64;
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        if chunk.seq != chunks {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk {} arrived where {chunks} was expected",
                chunk.seq
            )));
        }
        received += chunk.data.len() as u64;
        if received > total_size {
            metrics.snapshot_transfers_failed.inc();
            return Err(Status::invalid_argument(format!(
                "snapshot stream carries more than the announced {total_size} bytes"
            )));
        }
        hasher.update(&chunk.data);
        file.write_all(&chunk.data)
            .await
            .map_err(|e| Status::internal(format!("writing snapshot chunk: {e}")))?;
        chunks += 1;
        metrics.snapshot_chunks_received.inc();
        if chunk.data.len() as i64 > metrics.snapshot_chunk_max_bytes.get() {
            metrics
                .snapshot_chunk_max_bytes
                .set(chunk.data.len() as i64);
        }
        let cut = node
            .shared
            .cut_snapshot_stream_after
            .load(Ordering::Acquire);
        if cut != 0 && chunks >= cut {
            node.shared
                .cut_snapshot_stream_after
                .store(0, Ordering::Release);
            metrics.snapshot_transfers_failed.inc();
            return Err(Status::aborted("snapshot stream cut (injected fault)"));
        }
        next = stream.message().await?;
    }
    file.flush()
        .await
        .map_err(|e| Status::internal(format!("writing snapshot: {e}")))?;
    drop(file);
    drop(stream);
    if received != total_size {
        metrics.snapshot_transfers_failed.inc();
        return Err(Status::data_loss(format!(
            "snapshot stream ended after {received} of {total_size} bytes"
        )));
    }
    if hasher.finalize() != expected_crc {
        metrics.snapshot_transfers_failed.inc();
        return Err(Status::data_loss("snapshot checksum mismatch"));
    }
    // Check the envelope from the file (in blocks), then hand raft a reference to the file
    // instead of the bytes: the run loop reads it once, when it installs the snapshot.
    let meta = msg.get_snapshot().get_metadata().clone();
    let path = temp.path.clone();
    let verified = tokio::task::spawn_blocking(move || SnapshotEnvelope::verify_file(&path, &meta))
        .await
        .map_err(|e| Status::internal(format!("verifying snapshot: {e}")))?;
    if let Err(e) = verified {
        metrics.snapshot_transfers_failed.inc();
        return Err(Status::invalid_argument(format!("refusing snapshot: {e}")));
    }
    let ready = temp.path.with_extension("snap");
    tokio::fs::rename(&temp.path, &ready)
        .await
        .map_err(|e| Status::internal(format!("keeping received snapshot: {e}")))?;
    let mut reference = FILE_REF_MAGIC.to_vec();
    reference.extend_from_slice(ready.to_string_lossy().as_bytes());
    msg.mut_snapshot().set_data(reference.into());
    Ok((msg, chunks))
}

const FILE_REF_MAGIC: &[u8] = b"PONTOON-SNAPSHOT-FILE:";

/// If a snapshot's data is a reference to a received snapshot file, its path.
pub(crate) fn snapshot_file_ref(data: &[u8]) -> Option<PathBuf> {
    let path = data.strip_prefix(FILE_REF_MAGIC)?;
    std::str::from_utf8(path).ok().map(PathBuf::from)
}

/// Remove received snapshot files a previous run left behind (it stopped before installing).
pub(crate) fn remove_stale_snapshot_files(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("incoming-snapshot-")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
