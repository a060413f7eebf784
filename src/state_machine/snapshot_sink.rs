//! `SnapshotSink`: where a state machine streams its snapshot, so a large state goes to disk in
//! bounded pieces instead of being copied into one buffer first.
//!
//! The run loop hands a sink to `AbstractStateMachine::snapshot_to` while a storage thread writes
//! what arrives into the snapshot file. Invariants:
//! - Written through `std::io::Write`, at most `CHUNK_BYTES x (QUEUE_CHUNKS + 2)` bytes of
//!   snapshot are in memory at once: the sink's own buffer, the queued chunks and the one being
//!   written. The default `snapshot_to` instead hands `snapshot()`'s whole buffer over in one
//!   piece, so the loop does not wait for the disk (the state machine already paid the memory).
//! - A snapshot counts only if the sink was `finish`ed: a sink dropped before (the state
//!   machine failed, or panicked) makes the storage side discard the partial file.
//! - When the storage side fails (disk full, say), the next `write` fails with its error, so the
//!   state machine stops serialising early.

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Size of the pieces the sink passes to the storage thread.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Pieces queued for the storage thread before `write` waits for it.
const QUEUE_CHUNKS: usize = 4;

/// What the storage thread receives.
#[derive(Debug)]
pub(crate) enum SnapshotChunk {
    /// The next bytes of the state machine's snapshot.
    Data(Vec<u8>),
    /// The state machine finished: everything was sent.
    End,
}

/// A `std::io::Write` for the state machine's snapshot bytes (see the module docs).
///
/// Write to it from `AbstractStateMachine::snapshot_to` with any serialiser that takes a writer
/// (`bincode::serialize_into`, `serde_json::to_writer`, ...). Small writes are cheap: they are
/// gathered into 1 MiB pieces.
#[derive(Debug)]
pub struct SnapshotSink {
    buffer: Vec<u8>,
    chunks: SyncSender<SnapshotChunk>,
    written: u64,
}

impl SnapshotSink {
    /// A sink and the receiving end for the storage thread.
    pub(crate) fn channel() -> (SnapshotSink, Receiver<SnapshotChunk>) {
        let (chunks, rx) = sync_channel(QUEUE_CHUNKS);
        let sink = SnapshotSink {
            buffer: Vec::with_capacity(CHUNK_BYTES),
            chunks,
            written: 0,
        };
        (sink, rx)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Pass a whole serialised state on without copying it (what the default `snapshot_to`
    /// does with `snapshot()`'s buffer): the run loop does not wait for the file to be written.
    pub(crate) fn write_owned(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.send_buffer()?;
        self.written += bytes.len() as u64;
        self.chunks
            .send(SnapshotChunk::Data(bytes))
            .map_err(|_| storage_gone())
    }

    /// Send what is buffered and mark the snapshot complete; returns its length in bytes.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.send_buffer()?;
        self.chunks
            .send(SnapshotChunk::End)
            .map_err(|_| storage_gone())?;
        Ok(self.written)
    }

    /// `write_all` when the bytes fill the current chunk: send chunks as they fill.
    fn write_all_slow(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let taken = io::Write::write(self, data)?;
            data = &data[taken..];
        }
        Ok(())
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.chunks
            .send(SnapshotChunk::Data(full))
            .map_err(|_| storage_gone())
    }
}

/// The storage side stopped taking chunks; its own error is what the run loop reports.
fn storage_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the snapshot file is no longer being written (see the storage error)",
    )
}

impl io::Write for SnapshotSink {
    // Serialisers call these once per field: keep the common case (the bytes fit the current
    // chunk) inlinable into the caller's crate.
    #[inline]
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() < CHUNK_BYTES - self.buffer.len() {
            self.buffer.extend_from_slice(data);
            self.written += data.len() as u64;
            return Ok(());
        }
        self.write_all_slow(data)
    }

    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = data.len().min(room);
        self.buffer.extend_from_slice(&data[..taken]);
        self.written += taken as u64;
        if self.buffer.len() == CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    /// Chunks leave when full or at `finish`; flushing early would only make them smaller.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn collect(rx: Receiver<SnapshotChunk>) -> (Vec<u8>, bool, usize) {
        let (mut data, mut ended, mut chunks) = (Vec::new(), false, 0);
        for chunk in rx {
            match chunk {
                SnapshotChunk::Data(d) => {
                    assert!(d.len() <= CHUNK_BYTES);
                    chunks += 1;
                    data.extend_from_slice(&d);
                }
                SnapshotChunk::End => ended = true,
            }
        }
        (data, ended, chunks)
    }

    #[test]
    fn bytes_arrive_in_order_in_bounded_chunks_then_end() {
        let (mut sink, rx) = SnapshotSink::channel();
        let reader = std::thread::spawn(move || collect(rx));
        let expected: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        for piece in expected.chunks(1000) {
            sink.write_all(piece).expect("write");
        }
        assert_eq!(sink.finish().expect("finish"), expected.len() as u64);
        let (data, ended, chunks) = reader.join().expect("reader");
        assert!(ended, "finish sends End");
        assert_eq!(chunks, 4);
        assert_eq!(data, expected);
    }

    #[test]
    fn a_sink_dropped_before_finish_sends_no_end() {
        let (mut sink, rx) = SnapshotSink::channel();
        sink.write_all(b"partial").expect("write");
        drop(sink);
        let (_, ended, _) = collect(rx);
        assert!(!ended, "an unfinished snapshot must be discarded");
    }

    #[test]
    fn writing_fails_once_the_storage_side_is_gone() {
        let (mut sink, rx) = SnapshotSink::channel();
        drop(rx);
        let big = vec![7u8; 2 * CHUNK_BYTES];
        let err = sink.write_all(&big).expect_err("nobody takes the chunks");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
