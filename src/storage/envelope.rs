//! The snapshot envelope: what pontoon stores in `eraftpb::Snapshot.data`.
//!
//! The user's `snapshot()` bytes travel together with the address book, so a node that installs a
//! snapshot also learns how to reach every member. The envelope is versioned and checksummed so a
//! corrupt or foreign snapshot is refused instead of being restored.

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::config::Peers;

/// Current envelope version.
pub const ENVELOPE_VERSION: u32 = 1;
const MAGIC: &[u8; 4] = b"PTSN";

/// A decoded snapshot envelope.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEnvelope {
    /// The address book as of the snapshot index.
    pub peers: Peers,
    /// Index and term of the snapshot, repeated inside the checksummed body so a snapshot whose
    /// data does not belong to its metadata is refused.
    pub index: u64,
    pub term: u64,
    /// The highest node id ever admitted or reserved, so a reserved or removed id is never
    /// handed out again (see `Raft::request_id`).
    pub max_node_id: u64,
    /// What the user's `AbstractStateMachine::snapshot` returned.
    pub user_data: Vec<u8>,
}

impl SnapshotEnvelope {
    /// Encode as `MAGIC | version u32 | crc32 u32 | bincode(body)`.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let body = bincode::serialize(self).map_err(|e| StorageError::Corrupt {
            what: "snapshot envelope".into(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&ENVELOPE_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Refuse an envelope whose index/term differ from the snapshot metadata it travels with.
    pub fn check_matches(
        &self,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), StorageError> {
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

    /// Decode and verify an envelope; any mismatch is a `Corrupt` error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
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
        let body = &bytes[12..];
        if crc32(body) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        bincode::deserialize(body).map_err(|e| corrupt(e.to_string()))
    }
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

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(SnapshotEnvelope::decode(&flipped).is_err());
        assert!(SnapshotEnvelope::decode(&bytes[..bytes.len() - 2]).is_err());
        assert!(SnapshotEnvelope::decode(b"junk").is_err());
    }

    #[test]
    fn crc32_matches_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
