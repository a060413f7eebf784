//! `SnapshotSource`: the user bytes of a snapshot, handed to `restore_from` to read.
//!
//! A snapshot pontoon stored or received lives in a file. Restoring through `restore(Vec<u8>)`
//! needs the whole file in memory next to the state being rebuilt from it, so a node restarting
//! or catching up from a large snapshot briefly needs twice the state's size. A state machine
//! that overrides `restore_from` reads the bytes from the file through a buffer instead, and only
//! the state it rebuilds is held.
//!
//! Invariants:
//! - The checksum and header of the snapshot were verified before the source is made; the bytes
//!   it yields are exactly what the state machine's `snapshot` / `snapshot_to` produced.
//! - It yields exactly `len()` bytes, then end of file.

use std::io::{self, BufReader, Read};

use crate::storage::fs::FileCursor;

/// How much the source reads from the file at a time. A deserialiser makes many small reads; the
/// buffer turns them into few system calls.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The user bytes of a verified snapshot, readable once (`io::Read`). See the module docs.
pub struct SnapshotSource {
    inner: Inner,
    len: u64,
}

enum Inner {
    /// A snapshot file positioned at its first user byte, limited to the user bytes.
    File(BufReader<io::Take<FileCursor>>),
    /// Bytes already in memory (a snapshot that arrived inline). `read_all` hands them over
    /// without copying.
    Bytes(io::Cursor<Vec<u8>>),
}

impl SnapshotSource {
    /// The `len` user bytes that follow `file`'s current position.
    pub(crate) fn from_file(file: FileCursor, len: u64) -> Self {
        SnapshotSource {
            inner: Inner::File(BufReader::with_capacity(READ_BUFFER_BYTES, file.take(len))),
            len,
        }
    }

    /// User bytes already in memory.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        SnapshotSource {
            len: bytes.len() as u64,
            inner: Inner::Bytes(io::Cursor::new(bytes)),
        }
    }

    /// How many user bytes the snapshot holds in all (not how many are left to read).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the snapshot holds no user bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every byte not read yet, in one buffer: what the default `restore_from` passes to
    /// `restore`. Bytes that were already in memory are handed over without a copy.
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        match &mut self.inner {
            Inner::Bytes(cursor) if cursor.position() == 0 => Ok(std::mem::take(cursor.get_mut())),
            inner => {
                let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
                match inner {
                    Inner::File(reader) => reader.read_to_end(&mut out)?,
                    Inner::Bytes(cursor) => cursor.read_to_end(&mut out)?,
                };
                Ok(out)
            }
        }
    }
}

impl Read for SnapshotSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::File(reader) => reader.read(buf),
            Inner::Bytes(cursor) => cursor.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn a_file_source_yields_only_the_user_bytes_after_its_position() {
        let disk: std::sync::Arc<dyn crate::storage::fs::DiskFile> =
            std::sync::Arc::new(tempfile::tempfile().expect("temp file"));
        let mut file = FileCursor::new(disk);
        file.write_all(b"headerUSER BYTEStrailer").expect("write");
        file.seek(SeekFrom::Start(6)).expect("seek");
        let mut source = SnapshotSource::from_file(file, 10);
        assert_eq!(source.len(), 10);
        let mut first = [0u8; 4];
        source.read_exact(&mut first).expect("read");
        assert_eq!(&first, b"USER");
        assert_eq!(source.read_all().expect("rest"), b" BYTES");
        assert_eq!(source.read(&mut first).expect("end"), 0, "then end of file");
    }

    #[test]
    fn in_memory_bytes_are_handed_over_whole_or_read_on_from_where_reading_stopped() {
        let mut untouched = SnapshotSource::from_bytes(b"state".to_vec());
        assert_eq!(untouched.read_all().expect("all"), b"state");
        let mut started = SnapshotSource::from_bytes(b"state".to_vec());
        let mut first = [0u8; 2];
        started.read_exact(&mut first).expect("read");
        assert_eq!(started.read_all().expect("rest"), b"ate");
    }
}
