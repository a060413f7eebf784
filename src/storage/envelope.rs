//! The snapshot envelope: what pontoon stores in `eraftpb::Snapshot.data`.
//!
//! The user's `snapshot()` bytes travel together with the address book, so a node that installs a
//! snapshot also learns how to reach every member. The envelope is versioned and checksummed so a
//! corrupt or foreign snapshot is refused instead of being restored.

use std::io::{Seek, SeekFrom, Write};
use std::sync::mpsc::Receiver;

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::config::Peers;
use crate::state_machine::{SnapshotChunk, SnapshotSource, UserBytesCrc};

/// Current envelope version.
pub const ENVELOPE_VERSION: u32 = 1;
const MAGIC: &[u8; 4] = b"PTSN";
/// Where the CRC sits in an envelope; it covers every byte after it.
const CRC_FIELD: std::ops::Range<usize> = 8..12;

/// A decoded snapshot envelope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotEnvelope {
    /// The address book as of the snapshot index.
    pub peers: Peers,
    /// Index and term of the snapshot, repeated inside the checksummed body so a snapshot whose
    /// data does not belong to its metadata is refused.
    pub index: u64,
    /// The snapshot's term (see `index`).
    pub term: u64,
    /// The highest node id ever admitted or reserved, so a reserved or removed id is never
    /// handed out again (see `Raft::request_id`).
    pub max_node_id: u64,
    /// The membership at the snapshot index (voters, learners, outgoing voters).
    pub voters: Vec<u64>,
    /// The learners at the snapshot index.
    pub learners: Vec<u64>,
    /// The outgoing voters at the snapshot index, when it falls in a joint configuration.
    pub voters_outgoing: Vec<u64>,
    /// Ids removed from the cluster by membership changes up to the snapshot index, so a node
    /// that installs the snapshot can still tell a removed node so (see `AddressBook`).
    /// Encoded after the header's other fields, inside its length: an envelope written before
    /// this field existed reads as "none removed", and an older reader ignores it.
    pub removed: Vec<u64>,
    /// The client session table at the snapshot index, as the node encodes it (opaque here;
    /// see `node::session_table`). A second trailer after `removed`, written only when a
    /// session is open, so a cluster without sessions writes the envelopes it always wrote.
    pub sessions: Vec<u8>,
    /// What the user's `AbstractStateMachine::snapshot` returned.
    pub user_data: Vec<u8>,
}

impl SnapshotEnvelope {
    /// Encode as `MAGIC | version u32 | crc32 u32 | header length u32 | bincode(header) | user
    /// bytes`. The user's bytes are copied once, straight into the output (no intermediate
    /// serialisation of a possibly huge state); the CRC covers everything after it.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let prefix = self.prefix()?;
        let mut out = Vec::with_capacity(prefix.len() + self.user_data.len());
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&self.user_data);
        seal(&mut out);
        Ok(out)
    }

    /// Write this envelope into `file` with the user bytes streamed from a `SnapshotSink`
    /// (`user_data` is ignored): the prefix, each chunk as it arrives, then the CRC patched in
    /// place. The result is byte for byte what `encode` gives for the same user bytes. Fails,
    /// leaving the file to be discarded, when the sink is dropped without being finished.
    /// Returns the envelope's length.
    pub(crate) fn write_streamed(
        &self,
        chunks: Receiver<SnapshotChunk>,
        file: &mut crate::storage::fs::FileCursor,
    ) -> Result<u64, StorageError> {
        let prefix = self.prefix()?;
        let mut crc = crc32fast::Hasher::new();
        file.write_all(&prefix)?;
        crc.update(&prefix[CRC_FIELD.end..]);
        let mut len = prefix.len() as u64;
        loop {
            match chunks.recv() {
                Ok(SnapshotChunk::Data(data)) => {
                    file.write_all(&data)?;
                    crc.update(&data);
                    len += data.len() as u64;
                }
                Ok(SnapshotChunk::End) => break,
                Err(_) => {
                    return Err(StorageError::InvalidOperation(
                        "the state machine stopped writing its snapshot before finishing".into(),
                    ))
                }
            }
        }
        file.seek(SeekFrom::Start(CRC_FIELD.start as u64))?;
        file.write_all(&crc.finalize().to_be_bytes())?;
        Ok(len)
    }

    /// Everything before the user bytes, with the CRC left zero.
    fn prefix(&self) -> Result<Vec<u8>, StorageError> {
        let header = EnvelopeHeader {
            index: self.index,
            term: self.term,
            max_node_id: self.max_node_id,
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            peers: self.peers.clone(),
            removed: Vec::new(),
            sessions: Vec::new(),
        };
        let encoding_failed = |e: bincode::Error| StorageError::Corrupt {
            what: "snapshot envelope".into(),
            reason: e.to_string(),
        };
        let mut header = bincode::serialize(&header).map_err(encoding_failed)?;
        // The trailers: removed ids, then the session table; each present only when it or a
        // later one has something to say.
        if !self.removed.is_empty() || !self.sessions.is_empty() {
            bincode::serialize_into(&mut header, &self.removed).map_err(encoding_failed)?;
        }
        if !self.sessions.is_empty() {
            bincode::serialize_into(&mut header, &self.sessions).map_err(encoding_failed)?;
        }
        let header_len = u32::try_from(header.len()).map_err(|_| StorageError::Corrupt {
            what: "snapshot envelope".into(),
            reason: "address book too large".into(),
        })?;
        let mut out = Vec::with_capacity(16 + header.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&ENVELOPE_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]); // CRC, filled in by `seal`
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(&header);
        Ok(out)
    }

    /// Fill the membership fields from a conf state.
    pub fn with_conf_state(mut self, cs: &raft::eraftpb::ConfState) -> Self {
        self.voters = cs.voters.clone();
        self.learners = cs.learners.clone();
        self.voters_outgoing = cs.voters_outgoing.clone();
        self
    }

    /// Refuse an envelope whose index, term or membership differ from the snapshot metadata it
    /// travels with.
    pub fn check_matches(
        &self,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), StorageError> {
        let cs = meta.get_conf_state();
        let same_members = self.voters == cs.voters
            && self.learners == cs.learners
            && self.voters_outgoing == cs.voters_outgoing;
        if !same_members {
            return Err(StorageError::Corrupt {
                what: "snapshot envelope".into(),
                reason: "its membership differs from the snapshot metadata".into(),
            });
        }
        if self.index != meta.index || self.term != meta.term {
            return Err(StorageError::Corrupt {
                what: "snapshot envelope".into(),
                reason: format!(
                    "holds index {} term {}, its metadata says index {} term {}",
                    self.index, self.term, meta.index, meta.term
                ),
            });
        }
        Ok(())
    }

    /// Check an encoded envelope (magic, version, checksum, header) and that it belongs to
    /// `meta`, without copying the user's bytes out.
    pub fn verify(
        bytes: &[u8],
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), StorageError> {
        let (header, _) = Self::split(bytes)?;
        header.into_envelope(Vec::new()).check_matches(meta)
    }

    /// The envelope's header fields (no user bytes), after checking magic, version and checksum.
    pub fn decode_header(bytes: &[u8]) -> Result<Self, StorageError> {
        let (header, _) = Self::split(bytes)?;
        Ok(header.into_envelope(Vec::new()))
    }

    /// Verify an envelope held in `bytes` and take its user bytes out without copying them: the
    /// header is drained in place. Returns the envelope (with `user_data`).
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Self, StorageError> {
        let (header, user) = Self::split(&bytes)?;
        let start = bytes.len() - user.len();
        bytes.drain(..start);
        Ok(header.into_envelope(bytes))
    }

    /// Verify an envelope stored in a file (checksum, header, metadata) reading it in blocks, so
    /// a large snapshot is never held in memory for the check.
    pub fn verify_file(
        path: &std::path::Path,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), StorageError> {
        Self::verify_file_in(&crate::storage::fs::RealFs, path, meta)
    }

    /// `verify_file` for a file in `fs`.
    pub(crate) fn verify_file_in(
        fs: &dyn crate::storage::fs::FileSystem,
        path: &std::path::Path,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), StorageError> {
        let file = fs.open(path, crate::storage::fs::OpenMode::Read)?;
        Self::check_file(&mut crate::storage::fs::FileCursor::new(file), meta).map(|_| ())
    }

    /// Open the envelope file at `path`, verify it like `verify_file`, and return its header
    /// (with empty `user_data`) and a `SnapshotSource` over its user bytes, so the state machine
    /// reads them straight from the file. The open file stays readable if `path` is renamed.
    pub(crate) fn open_checked(
        fs: &dyn crate::storage::fs::FileSystem,
        path: &std::path::Path,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(SnapshotEnvelope, SnapshotSource), StorageError> {
        let file = fs.open(path, crate::storage::fs::OpenMode::Read)?;
        let mut cursor = crate::storage::fs::FileCursor::new(file);
        let (header, user_len, user_crc) = Self::check_file(&mut cursor, meta)?;
        Ok((
            header,
            SnapshotSource::from_file(cursor, user_len, user_crc),
        ))
    }

    /// Verify the envelope in `file` like `verify_file`, then leave the file positioned at the
    /// first user byte. Returns the header (with empty `user_data`), the number of user bytes,
    /// and the checksum of the bytes before them with the stored CRC, so a second read of the
    /// user bytes can be checked too (see `SnapshotSource`).
    fn check_file(
        file: &mut crate::storage::fs::FileCursor,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(SnapshotEnvelope, u64, UserBytesCrc), StorageError> {
        use std::io::Read;
        let corrupt = |reason: String| StorageError::Corrupt {
            what: "snapshot envelope".into(),
            reason,
        };
        file.seek(SeekFrom::Start(0))?;
        let file_len = file.file().len()?;
        let mut fixed = [0u8; 16];
        file.read_exact(&mut fixed)
            .map_err(|_| corrupt("shorter than its header".into()))?;
        if &fixed[..4] != MAGIC {
            return Err(corrupt("missing header".into()));
        }
        let version = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        if version != ENVELOPE_VERSION {
            return Err(corrupt(format!(
                "version {version}, this build reads {ENVELOPE_VERSION}"
            )));
        }
        let stored_crc = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        let header_len = u32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
        // The length is the file's word: check it against the file before allocating for it.
        let user_start = 16 + u64::from(header_len);
        if user_start > file_len {
            return Err(corrupt("header longer than the envelope".into()));
        }
        let mut header_bytes = vec![0u8; header_len as usize];
        file.read_exact(&mut header_bytes)
            .map_err(|_| corrupt("header longer than the envelope".into()))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed[12..]);
        hasher.update(&header_bytes);
        let before_user_bytes = hasher.clone();
        let mut block = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut block)?;
            if n == 0 {
                break;
            }
            hasher.update(&block[..n]);
        }
        if hasher.finalize() != stored_crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let envelope = EnvelopeHeader::decode(&header_bytes)
            .map_err(corrupt)?
            .into_envelope(Vec::new());
        envelope.check_matches(meta)?;
        file.seek(SeekFrom::Start(user_start))?;
        let user_crc = UserBytesCrc {
            before: before_user_bytes,
            expected: stored_crc,
        };
        Ok((envelope, file_len - user_start, user_crc))
    }

    /// Decode and verify an envelope; any mismatch is a `Corrupt` error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let (header, user_data) = Self::split(bytes)?;
        Ok(header.into_envelope(user_data.to_vec()))
    }

    fn split(bytes: &[u8]) -> Result<(EnvelopeHeader, &[u8]), StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            what: "snapshot envelope".into(),
            reason,
        };
        if bytes.len() < 12 || &bytes[..4] != MAGIC {
            return Err(corrupt("missing header".into()));
        }
        let version = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if version != ENVELOPE_VERSION {
            return Err(corrupt(format!(
                "version {version}, this build reads {ENVELOPE_VERSION}"
            )));
        }
        let crc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if crc32(&bytes[12..]) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let rest = &bytes[12..];
        if rest.len() < 4 {
            return Err(corrupt("missing header length".into()));
        }
        let header_len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let header_bytes = rest
            .get(4..4 + header_len)
            .ok_or_else(|| corrupt("header longer than the envelope".into()))?;
        let header = EnvelopeHeader::decode(header_bytes).map_err(corrupt)?;
        Ok((header, &rest[4 + header_len..]))
    }
}

/// The envelope's encoded header; the user bytes follow it unencoded.
#[derive(Serialize, Deserialize)]
struct EnvelopeHeader {
    index: u64,
    term: u64,
    max_node_id: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    peers: Peers,
    /// Not part of the bincode struct: the optional trailer after it (see
    /// `SnapshotEnvelope::removed`).
    #[serde(skip)]
    removed: Vec<u64>,
    /// The second trailer (see `SnapshotEnvelope::sessions`).
    #[serde(skip)]
    sessions: Vec<u8>,
}

impl EnvelopeHeader {
    /// The header's fields, then the removed ids if the header has bytes left for them.
    fn decode(mut bytes: &[u8]) -> Result<Self, String> {
        let mut header: EnvelopeHeader =
            bincode::deserialize_from(&mut bytes).map_err(|e| e.to_string())?;
        if !bytes.is_empty() {
            header.removed = bincode::deserialize_from(&mut bytes)
                .map_err(|e| format!("removed ids unreadable: {e}"))?;
        }
        if !bytes.is_empty() {
            header.sessions = bincode::deserialize_from(&mut bytes)
                .map_err(|e| format!("session table unreadable: {e}"))?;
        }
        if !bytes.is_empty() {
            return Err(format!("{} unexpected bytes after the header", bytes.len()));
        }
        Ok(header)
    }

    fn into_envelope(self, user_data: Vec<u8>) -> SnapshotEnvelope {
        SnapshotEnvelope {
            peers: self.peers,
            index: self.index,
            term: self.term,
            max_node_id: self.max_node_id,
            voters: self.voters,
            learners: self.learners,
            voters_outgoing: self.voters_outgoing,
            removed: self.removed,
            sessions: self.sessions,
            user_data,
        }
    }
}

/// Fill in the CRC of an encoded envelope (it covers everything after the CRC field).
fn seal(out: &mut [u8]) {
    let crc = crc32(&out[CRC_FIELD.end..]);
    out[CRC_FIELD].copy_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_corruption() {
        let mut env = SnapshotEnvelope::default();
        env.peers.insert(1, "127.0.0.1:1".into());
        env.user_data = b"state".to_vec();
        let bytes = env.encode().expect("encode");
        assert_eq!(SnapshotEnvelope::decode(&bytes).expect("decode"), env);
        assert_eq!(
            SnapshotEnvelope::decode_owned(bytes.clone()).expect("decode"),
            env
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap");
        std::fs::write(&path, &bytes).expect("write");
        let meta = raft::eraftpb::SnapshotMetadata::default();
        SnapshotEnvelope::verify_file(&path, &meta).expect("file verifies");
        let mut bad = bytes.clone();
        let at = bad.len() - 1;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        assert!(SnapshotEnvelope::verify_file(&path, &meta).is_err());

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(SnapshotEnvelope::decode(&flipped).is_err());
        assert!(SnapshotEnvelope::decode(&bytes[..bytes.len() - 2]).is_err());
        assert!(SnapshotEnvelope::decode(b"junk").is_err());
        let mut other_version = bytes.clone();
        other_version[7] = 9;
        let err = SnapshotEnvelope::decode(&other_version).expect_err("foreign version");
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn removed_ids_ride_after_the_header_where_an_older_reader_ignores_them() {
        let mut env = SnapshotEnvelope {
            index: 7,
            term: 2,
            voters: vec![1, 2],
            removed: vec![3, 5],
            user_data: b"state".to_vec(),
            ..Default::default()
        };
        let bytes = env.encode().expect("encode");
        assert_eq!(SnapshotEnvelope::decode(&bytes).expect("decode"), env);
        // What a build without the field does: bincode's default reader ignores trailing bytes.
        let header_len = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let older: EnvelopeHeader =
            bincode::deserialize(&bytes[16..16 + header_len]).expect("older reader");
        assert_eq!(
            (older.index, older.voters, older.removed),
            (7, vec![1, 2], vec![])
        );
        // An envelope without removals is byte for byte what builds before the field wrote.
        env.removed.clear();
        let plain = env.encode().expect("encode");
        assert_eq!(plain.len() + 8 + 2 * 8, bytes.len());
        assert!(SnapshotEnvelope::decode(&plain)
            .expect("decode")
            .removed
            .is_empty());
    }

    #[test]
    fn the_session_table_rides_after_the_removed_ids_even_when_none_were_removed() {
        let mut env = SnapshotEnvelope {
            index: 9,
            term: 3,
            voters: vec![1],
            sessions: b"table".to_vec(),
            user_data: b"state".to_vec(),
            ..Default::default()
        };
        let bytes = env.encode().expect("encode");
        assert_eq!(SnapshotEnvelope::decode(&bytes).expect("decode"), env);
        env.removed = vec![4];
        let both = env.encode().expect("encode");
        assert_eq!(SnapshotEnvelope::decode(&both).expect("decode"), env);
    }

    #[test]
    fn a_streamed_envelope_is_byte_for_byte_the_encoded_one() {
        use std::io::{Read, Write};
        let user_data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 253) as u8).collect();
        let envelope = SnapshotEnvelope {
            index: 42,
            term: 3,
            max_node_id: 5,
            voters: vec![1, 2, 3],
            peers: [(1, "a:1".to_string())].into_iter().collect(),
            user_data: user_data.clone(),
            ..Default::default()
        };
        let expected = envelope.encode().expect("encode");
        let (mut sink, chunks) = crate::state_machine::SnapshotSink::channel();
        let header = SnapshotEnvelope {
            user_data: Vec::new(),
            ..envelope
        };
        let mut file = crate::storage::fs::FileCursor::new(std::sync::Arc::new(
            tempfile::tempfile().expect("tempfile"),
        ));
        let writer = std::thread::spawn(move || {
            let len = header.write_streamed(chunks, &mut file);
            (len, file)
        });
        for piece in user_data.chunks(4096) {
            sink.write_all(piece).expect("write");
        }
        sink.finish().expect("finish");
        let (len, mut file) = writer.join().expect("writer");
        assert_eq!(len.expect("streamed"), expected.len() as u64);
        let mut written = Vec::new();
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.read_to_end(&mut written).expect("read");
        assert!(written == expected, "streamed bytes differ from encode()");
        let mut meta = raft::eraftpb::SnapshotMetadata {
            index: 42,
            term: 3,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        SnapshotEnvelope::verify(&written, &meta).expect("the streamed envelope verifies");
    }

    #[test]
    fn a_stream_the_state_machine_abandons_is_refused() {
        use std::io::Write;
        let (mut sink, chunks) = crate::state_machine::SnapshotSink::channel();
        sink.write_all(b"half a state").expect("write");
        drop(sink);
        let mut file = crate::storage::fs::FileCursor::new(std::sync::Arc::new(
            tempfile::tempfile().expect("tempfile"),
        ));
        let err = SnapshotEnvelope::default()
            .write_streamed(chunks, &mut file)
            .expect_err("an unfinished snapshot must not be stored");
        assert!(err.to_string().contains("before finishing"), "{err}");
    }

    /// Found by the `snapshot_envelope` fuzz target: `verify_file` allocated the header length
    /// the file claims (here 1 GiB, up to 4 GiB) before reading it, so a 128-byte snapshot from a
    /// peer could make the receiver allocate gigabytes.
    #[test]
    fn verify_file_refuses_a_header_length_beyond_the_file() {
        let mut bytes = b"PTSN\0\0\0\x01".to_vec();
        bytes.extend_from_slice(&[0x33, 0x20, 0x7a, 0x2b]); // CRC (wrong, checked later)
        bytes.extend_from_slice(&0x4012_1212u32.to_be_bytes()); // header length: 1 GiB
        bytes.resize(128, 0x12);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap");
        std::fs::write(&path, &bytes).expect("write");
        let meta = raft::eraftpb::SnapshotMetadata::default();
        let err = SnapshotEnvelope::verify_file(&path, &meta).expect_err("refused");
        assert!(err.to_string().contains("header longer"), "{err}");

        let mut max = SnapshotEnvelope::default().encode().expect("encode");
        max[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&path, &max).expect("write");
        assert!(SnapshotEnvelope::verify_file(&path, &meta).is_err());
        assert!(SnapshotEnvelope::decode(&max).is_err());
    }

    #[test]
    fn check_file_leaves_the_file_at_the_user_bytes_and_counts_them() {
        use std::io::{Read, Write};
        let envelope = SnapshotEnvelope {
            index: 7,
            term: 2,
            voters: vec![1],
            peers: [(1, "a:1".to_string())].into_iter().collect(),
            user_data: b"the user's state".to_vec(),
            ..Default::default()
        };
        let mut file = crate::storage::fs::FileCursor::new(std::sync::Arc::new(
            tempfile::tempfile().expect("tempfile"),
        ));
        file.write_all(&envelope.encode().expect("encode"))
            .expect("write");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let mut meta = raft::eraftpb::SnapshotMetadata {
            index: 7,
            term: 2,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1];
        let (header, user_len, _) = SnapshotEnvelope::check_file(&mut file, &meta).expect("checks");
        assert_eq!(user_len, envelope.user_data.len() as u64);
        assert_eq!(header.peers, envelope.peers);
        assert!(header.user_data.is_empty());
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, envelope.user_data);
        // Metadata of another snapshot: refused.
        meta.index = 8;
        assert!(SnapshotEnvelope::check_file(&mut file, &meta).is_err());
    }

    #[test]
    fn crc32_matches_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
