//! Receiving a streamed snapshot: chunks go to a temporary file in the data dir; only a complete
//! stream whose size, checksum and envelope check out becomes a raft message. Anything else
//! removes the file and installs nothing.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tonic::{Status, Streaming};

use crate::node::RaftNode;
use crate::storage::{snapshot_file_data, SnapshotEnvelope};
use crate::transport::pb;

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
    let mut msg = check_first_chunk(&first, node.id(), config.max_snapshot_bytes)?;
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
    let mut tally = ChunkTally::new(&first);
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        if let Err(status) = tally.add(&chunk) {
            metrics.snapshot_transfers_failed.inc();
            return Err(status);
        }
        file.write_all(&chunk.data)
            .await
            .map_err(|e| Status::internal(format!("writing snapshot chunk: {e}")))?;
        let chunks = tally.chunks;
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
    let chunks = match tally.finish() {
        Ok(chunks) => chunks,
        Err(status) => {
            metrics.snapshot_transfers_failed.inc();
            return Err(status);
        }
    };
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
    msg.mut_snapshot().set_data(snapshot_file_data(&ready));
    Ok((msg, chunks))
}

/// Decode and check the first chunk of a snapshot stream (after its cluster id was checked): it
/// must carry a MsgSnapshot for node `local_id` from the stream's sender, announcing no more than
/// `max_snapshot_bytes`.
pub(crate) fn check_first_chunk(
    first: &pb::SnapshotChunk,
    local_id: u64,
    max_snapshot_bytes: u64,
) -> Result<Message, Status> {
    let msg = Message::parse_from_bytes(&first.message)
        .map_err(|e| Status::invalid_argument(format!("first chunk holds no raft message: {e}")))?;
    if msg.get_msg_type() != MessageType::MsgSnapshot
        || msg.to != local_id
        || msg.from != first.from
    {
        return Err(Status::invalid_argument(format!(
            "not a snapshot for node {local_id} (type {:?}, to {}, from {} in a stream from {})",
            msg.get_msg_type(),
            msg.to,
            msg.from,
            first.from
        )));
    }
    if first.total_size > max_snapshot_bytes {
        return Err(Status::resource_exhausted(format!(
            "snapshot of {} bytes exceeds the limit of {max_snapshot_bytes} bytes",
            first.total_size
        )));
    }
    Ok(msg)
}

/// Order, size and checksum of the chunks of one snapshot stream.
pub(crate) struct ChunkTally {
    total_size: u64,
    expected_crc: u32,
    hasher: crc32fast::Hasher,
    received: u64,
    /// Chunks accepted so far.
    pub(crate) chunks: u64,
}

impl ChunkTally {
    /// Start counting with the sizes the first chunk announces.
    pub(crate) fn new(first: &pb::SnapshotChunk) -> Self {
        ChunkTally {
            total_size: first.total_size,
            expected_crc: first.crc32,
            hasher: crc32fast::Hasher::new(),
            received: 0,
            chunks: 0,
        }
    }

    /// Accept the next chunk: it must come in order and not exceed the announced size.
    pub(crate) fn add(&mut self, chunk: &pb::SnapshotChunk) -> Result<(), Status> {
        if chunk.seq != self.chunks {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk {} arrived where {} was expected",
                chunk.seq, self.chunks
            )));
        }
        let total_size = self.total_size;
        let received = u64::try_from(chunk.data.len())
            .ok()
            .and_then(|n| self.received.checked_add(n))
            .filter(|&r| r <= total_size)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "snapshot stream carries more than the announced {total_size} bytes"
                ))
            })?;
        self.received = received;
        self.hasher.update(&chunk.data);
        self.chunks += 1;
        Ok(())
    }

    /// The stream ended: it must have carried exactly the announced bytes with the announced
    /// checksum. Returns the number of chunks.
    pub(crate) fn finish(self) -> Result<u64, Status> {
        if self.received != self.total_size {
            return Err(Status::data_loss(format!(
                "snapshot stream ended after {} of {} bytes",
                self.received, self.total_size
            )));
        }
        if self.hasher.finalize() != self.expected_crc {
            return Err(Status::data_loss("snapshot checksum mismatch"));
        }
        Ok(self.chunks)
    }
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
