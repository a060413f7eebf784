//! `SnapshotSource`: the user bytes of a snapshot, handed to `restore_from` to read.
//!
//! A snapshot pontoon stored or received lives in a file. Restoring through `restore(Vec<u8>)`
//! needs the whole file in memory next to the state being rebuilt from it, so a node restarting
//! or catching up from a large snapshot briefly needs twice the state's size. A state machine
//! that overrides `restore_from` reads the bytes from the file through a buffer instead, and only
//! the state it rebuilds is held.
//!
//! Invariants:
//! - The checksum and header of the snapshot were verified before the source is made.
//! - A file is read twice (once to verify it, once to restore from it), and a disk can return
//!   bad bytes on the second read as well as on the first. So a file source checks its bytes
//!   against the envelope's CRC again as they pass: reaching the end with a mismatch is an
//!   `InvalidData` error instead of end of file, and `finish` (which the node calls after
//!   `restore_from`, whether or not the state machine read to the end) drains and checks what
//!   was left. A state machine restored from bytes that fail the check is never used: the node
//!   stops, and restores again from the stored file when it restarts.
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
    File(BufReader<CheckedUserBytes>),
    /// Bytes already in memory (a snapshot that arrived inline). `read_all` hands them over
    /// without copying.
    Bytes(io::Cursor<Vec<u8>>),
}

impl SnapshotSource {
    /// The `len` user bytes that follow `file`'s current position, checked against `crc` as
    /// they are read.
    pub(crate) fn from_file(file: FileCursor, len: u64, crc: UserBytesCrc) -> Self {
        let checked = CheckedUserBytes {
            file: file.take(len),
            crc,
            failed: false,
        };
        SnapshotSource {
            inner: Inner::File(BufReader::with_capacity(READ_BUFFER_BYTES, checked)),
            len,
        }
    }

    /// Read whatever the state machine left unread and check the whole against the envelope's
    /// CRC. An `InvalidData` error means the bytes read differ from the ones verified before:
    /// the state restored from them must not be used.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::File(reader) => io::copy(reader, &mut io::sink()).map(|_| ()),
            Inner::Bytes(_) => Ok(()),
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

/// The envelope's checksum as of the first user byte, and the CRC the whole must reach.
pub(crate) struct UserBytesCrc {
    /// The CRC state after every envelope byte before the user bytes.
    pub(crate) before: crc32fast::Hasher,
    /// The CRC stored in the envelope.
    pub(crate) expected: u32,
}

/// The user bytes of a file, hashed as they are read; end of file is reported only when the
/// hash matches.
struct CheckedUserBytes {
    file: io::Take<FileCursor>,
    crc: UserBytesCrc,
    /// Set once the end was reached with a mismatch: every later read fails too.
    failed: bool,
}

impl CheckedUserBytes {
    fn mismatch() -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot file read back different bytes than were verified (checksum mismatch)",
        )
    }
}

impl Read for CheckedUserBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(Self::mismatch());
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.crc.before.update(&buf[..n]);
            return Ok(n);
        }
        if !buf.is_empty() && self.crc.before.clone().finalize() != self.crc.expected {
            self.failed = true;
            return Err(Self::mismatch());
        }
        Ok(0)
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
        let mut source = SnapshotSource::from_file(file, 10, crc_of(b"USER BYTES"));
        assert_eq!(source.len(), 10);
        let mut first = [0u8; 4];
        source.read_exact(&mut first).expect("read");
        assert_eq!(&first, b"USER");
        assert_eq!(source.read_all().expect("rest"), b" BYTES");
        assert_eq!(source.read(&mut first).expect("end"), 0, "then end of file");
    }

    fn crc_of(user_bytes: &[u8]) -> UserBytesCrc {
        UserBytesCrc {
            before: crc32fast::Hasher::new(),
            expected: crc32fast::hash(user_bytes),
        }
    }

    fn file_holding(bytes: &[u8]) -> FileCursor {
        let disk: std::sync::Arc<dyn crate::storage::fs::DiskFile> =
            std::sync::Arc::new(tempfile::tempfile().expect("temp file"));
        let mut file = FileCursor::new(disk);
        file.write_all(bytes).expect("write");
        file.seek(SeekFrom::Start(0)).expect("seek");
        file
    }

    #[test]
    fn bytes_that_differ_from_the_verified_ones_fail_at_the_end_instead_of_restoring() {
        // What the disk returns on the second read differs from what was verified.
        let verified = crc_of(b"state");
        let mut whole = SnapshotSource::from_file(file_holding(b"\0\0\0\0\0"), 5, verified);
        let err = whole.read_all().expect_err("a mismatch is not end of file");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(whole.finish().is_err(), "and stays an error");

        // A state machine that stops reading before the end: `finish` still checks it all.
        let mut partial =
            SnapshotSource::from_file(file_holding(b"\0\0\0\0\0"), 5, crc_of(b"state"));
        let mut first = [0u8; 2];
        partial
            .read_exact(&mut first)
            .expect("a read before the end succeeds");
        assert!(partial.finish().is_err());

        let mut good = SnapshotSource::from_file(file_holding(b"state"), 5, crc_of(b"state"));
        let mut first = [0u8; 2];
        good.read_exact(&mut first).expect("read");
        good.finish().expect("the verified bytes pass");
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
