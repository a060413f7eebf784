//! Snapshot data that names a snapshot file instead of holding its bytes, so that a large
//! snapshot passes through raft-rs (which hands snapshots around as `Snapshot` messages) without
//! being read into memory.

use std::path::PathBuf;

const FILE_REF_MAGIC: &[u8] = b"PONTOON-SNAPSHOT-FILE:";

/// Snapshot data that refers to the snapshot file at `path` instead of holding its bytes: what
/// the receiver hands the run loop for a snapshot it received into a file, and what the store
/// hands raft for the leader to send (see `transport::snapshot_sender`). It never crosses the network: the
/// server refuses a MsgSnapshot outside an `InstallSnapshot` stream.
pub(crate) fn snapshot_file_data(path: &std::path::Path) -> bytes::Bytes {
    let mut reference = FILE_REF_MAGIC.to_vec();
    reference.extend_from_slice(path.to_string_lossy().as_bytes());
    reference.into()
}

/// If a snapshot's data is a reference to a snapshot file, its path.
pub(crate) fn snapshot_file_ref(data: &[u8]) -> Option<PathBuf> {
    let path = data.strip_prefix(FILE_REF_MAGIC)?;
    std::str::from_utf8(path).ok().map(PathBuf::from)
}
