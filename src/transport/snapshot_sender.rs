//! Sending a snapshot: the chunks of one `InstallSnapshot` stream, read from the snapshot file.
//!
//! The store hands raft a reference to its snapshot file rather than the bytes (see
//! `LmdbStorage`'s `raft::Storage::snapshot`), so the run loop never reads a large snapshot and
//! the leader never holds one in memory to send it. The file is opened and checksummed on a
//! blocking thread, then read one chunk at a time, a few chunks ahead of the stream. A snapshot
//! whose data is inline (not a file reference) is cut from its buffer instead.
//!
//! Invariants:
//! - The first chunk carries the raft message (without data), the cluster id, the total size and
//!   the CRC of all the data; the receiver checks every chunk against them (`ChunkTally`).
//! - The file stays readable once opened, even if a newer snapshot replaces it meanwhile. A read
//!   error ends the stream early, and the receiver refuses an incomplete stream.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pb;
use crate::storage::snapshot_file_ref;

/// The chunks of one snapshot stream, ready to hand to the `InstallSnapshot` call. A task
/// produces them a few ahead; dropping the stream stops it.
pub(crate) type ChunkStream = ReceiverStream<pb::SnapshotChunk>;

/// How many chunks read from the file may wait for the stream to take them.
const CHUNKS_AHEAD: usize = 2;

/// What the chunks of one stream share.
#[derive(Clone)]
pub(crate) struct StreamHeader {
    /// The MsgSnapshot without its data, sent in the first chunk.
    pub(crate) message: Vec<u8>,
    pub(crate) cluster_id: String,
    pub(crate) from: u64,
    /// Size and CRC of all the data.
    pub(crate) total_size: u64,
    pub(crate) crc32: u32,
}

impl StreamHeader {
    /// Chunk `seq` carrying `data`; only the first one repeats the message and the cluster id.
    fn chunk(&self, seq: u64, data: Vec<u8>) -> pb::SnapshotChunk {
        let first = seq == 0;
        pb::SnapshotChunk {
            cluster_id: if first {
                self.cluster_id.clone()
            } else {
                String::new()
            },
            from: self.from,
            message: if first {
                self.message.clone()
            } else {
                Vec::new()
            },
            total_size: self.total_size,
            crc32: self.crc32,
            seq,
            data,
        }
    }
}

/// The stream of chunks of at most `chunk_bytes` for a snapshot whose data is `data`, and how
/// many chunks it holds. `message`, `cluster_id` and `from` go into the header; `sent` counts
/// every chunk handed to the stream.
pub(crate) async fn snapshot_chunks(
    data: Bytes,
    message: Vec<u8>,
    cluster_id: String,
    from: u64,
    chunk_bytes: usize,
    sent: IntCounter,
) -> Result<(ChunkStream, u64), String> {
    let chunk_bytes = chunk_bytes.max(1);
    let header = |total_size: u64, crc32: u32| StreamHeader {
        message,
        cluster_id,
        from,
        total_size,
        crc32,
    };
    let Some(path) = snapshot_file_ref(&data) else {
        let header = header(data.len() as u64, crc32fast::hash(&data));
        let count = data.len().div_ceil(chunk_bytes).max(1);
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        tokio::spawn(async move {
            for i in 0..count {
                let lo = i * chunk_bytes;
                let hi = (lo + chunk_bytes).min(data.len());
                sent.inc();
                if tx
                    .send(header.chunk(i as u64, data.slice(lo..hi).to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        return Ok((ReceiverStream::new(rx), count as u64));
    };
    let (file, total_size, crc32) = tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path)?;
        let (total, crc) = checksum(&mut file)?;
        file.seek(SeekFrom::Start(0))?;
        Ok::<_, std::io::Error>((file, total, crc))
    })
    .await
    .map_err(|e| format!("snapshot reader failed: {e}"))?
    .map_err(|e| format!("cannot read the snapshot file: {e}"))?;
    let header = header(total_size, crc32);
    let count = usize::try_from(total_size)
        .map_err(|_| "snapshot larger than memory can address".to_string())?
        .div_ceil(chunk_bytes)
        .max(1);
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || read_chunks(file, header, chunk_bytes, count, tx, sent));
    Ok((ReceiverStream::new(rx), count as u64))
}

/// Read `count` chunks from `file` into `tx`, stopping early when the stream is dropped (the
/// call ended) or a read fails (the stream then ends short, and the receiver refuses it).
fn read_chunks(
    mut file: File,
    header: StreamHeader,
    chunk_bytes: usize,
    count: usize,
    tx: mpsc::Sender<pb::SnapshotChunk>,
    sent: IntCounter,
) {
    let mut left = header.total_size;
    for seq in 0..count as u64 {
        let len = left.min(chunk_bytes as u64) as usize;
        let mut data = vec![0u8; len];
        if file.read_exact(&mut data).is_err() {
            return;
        }
        left -= len as u64;
        sent.inc();
        if tx.blocking_send(header.chunk(seq, data)).is_err() {
            return;
        }
    }
}

/// Length and CRC of everything in `file` from where it is, read in 1 MiB blocks.
fn checksum(file: &mut File) -> std::io::Result<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut block = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok((total, hasher.finalize()));
        }
        hasher.update(&block[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("chunks", "chunks sent").expect("counter")
    }

    async fn collect(data: Bytes, chunk_bytes: usize) -> (Vec<pb::SnapshotChunk>, u64) {
        let (stream, count) =
            snapshot_chunks(data, b"msg".to_vec(), "c".into(), 7, chunk_bytes, counter())
                .await
                .expect("chunks");
        (stream.collect().await, count)
    }

    fn check(chunks: &[pb::SnapshotChunk], count: u64, expected: &[u8]) {
        assert_eq!(chunks.len() as u64, count);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, expected);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.seq, i as u64);
            assert_eq!(c.total_size, expected.len() as u64);
            assert_eq!(c.crc32, crc32fast::hash(expected));
            assert_eq!(c.from, 7);
            assert_eq!(
                c.message.is_empty(),
                i > 0,
                "only the first carries the message"
            );
            assert_eq!(c.cluster_id.is_empty(), i > 0);
        }
    }

    #[tokio::test]
    async fn a_referenced_file_is_streamed_as_the_same_chunks_as_its_bytes() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap");
        std::fs::write(&path, &content).expect("write");
        let (from_file, count) = collect(crate::storage::snapshot_file_data(&path), 4096).await;
        check(&from_file, count, &content);
        assert_eq!(count, 3);
        let (from_bytes, count_bytes) = collect(Bytes::from(content.clone()), 4096).await;
        assert_eq!(from_file, from_bytes);
        assert_eq!(count, count_bytes);
    }

    #[tokio::test]
    async fn an_empty_snapshot_is_one_empty_chunk() {
        let (chunks, count) = collect(Bytes::new(), 4096).await;
        check(&chunks, count, b"");
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_not_an_empty_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = crate::storage::snapshot_file_data(&dir.path().join("gone"));
        let err = snapshot_chunks(data, Vec::new(), "c".into(), 1, 4096, counter())
            .await
            .expect_err("refused");
        assert!(err.contains("cannot read the snapshot file"), "{err}");
    }
}
