//! The encodings of the values `LmdbStorage` keeps in LMDB (see the layout in `lmdb/mod.rs`; the
//! log's records are in `wal/record.rs`). Every decoder answers a typed `Corrupt` error for bytes it cannot read, never a panic: a data dir is input
//! like any other.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, SnapshotMetadata};

use super::StorageError;
use crate::config::Peers;

pub const K_FORMAT: &str = "format_version";
pub const K_NODE: &str = "node_id";
pub const K_CLUSTER: &str = "cluster_id";
pub const K_CONF_STATE: &str = "conf_state";
pub const K_SNAPSHOT_META: &str = "snapshot_meta";
pub const K_PEERS: &str = "peers";
/// The log index the stored `peers` reflect (absent in data dirs written before it existed).
pub const K_PEERS_INDEX: &str = "peers_index";

pub fn corrupt(what: &str, reason: impl ToString) -> StorageError {
    StorageError::Corrupt {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// The big-endian u64 at the start of `bytes`.
pub fn u64_from(bytes: &[u8], what: &str) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(what, "shorter than 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

/// A protobuf record (snapshot metadata).
pub fn encode_pb(key: &str, msg: &impl PbMessage) -> Result<Vec<u8>, StorageError> {
    msg.write_to_bytes().map_err(|e| corrupt(key, e))
}

/// Decode the stored snapshot metadata (protobuf); `Corrupt` when it does not parse.
pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMetadata, StorageError> {
    SnapshotMetadata::parse_from_bytes(bytes).map_err(|e| corrupt(K_SNAPSHOT_META, e))
}

/// The conf state and the log index of the change it reflects: `index u64 BE | ConfState`.
pub fn encode_conf_state(cs: &ConfState, index: u64) -> Result<Vec<u8>, StorageError> {
    let mut bytes = index.to_be_bytes().to_vec();
    cs.write_to_vec(&mut bytes)
        .map_err(|e| corrupt(K_CONF_STATE, e))?;
    Ok(bytes)
}

/// Decode what `encode_conf_state` wrote: the conf state and the index of its change.
pub fn decode_conf_state(bytes: &[u8]) -> Result<(ConfState, u64), StorageError> {
    if bytes.len() < 8 {
        return Err(corrupt(K_CONF_STATE, "shorter than its index prefix"));
    }
    let index = u64_from(bytes, K_CONF_STATE)?;
    let cs = ConfState::parse_from_bytes(&bytes[8..]).map_err(|e| corrupt(K_CONF_STATE, e))?;
    Ok((cs, index))
}

/// The address book (bincode).
pub fn encode_peers(peers: &Peers) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(peers).map_err(|e| corrupt(K_PEERS, e))
}

/// Decode what `encode_peers` wrote: the address book.
pub fn decode_peers(bytes: &[u8]) -> Result<Peers, StorageError> {
    bincode::deserialize(bytes).map_err(|e| corrupt(K_PEERS, e))
}

/// The storage format version: u32 BE.
pub fn decode_format_version(bytes: &[u8]) -> Result<u32, StorageError> {
    let arr: [u8; 4] = bytes
        .try_into()
        .map_err(|_| corrupt(K_FORMAT, "not 4 bytes"))?;
    Ok(u32::from_be_bytes(arr))
}

/// The node id: u64 BE.
pub fn decode_node_id(bytes: &[u8]) -> Result<u64, StorageError> {
    u64_from(bytes, K_NODE)
}

/// The cluster id: UTF-8.
pub fn decode_cluster_id(bytes: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(K_CLUSTER, e))
}
