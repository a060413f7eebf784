//! Errors of the storage layer.

use std::path::PathBuf;

/// Why the log store failed or refused to open.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data dir belongs to another cluster. Point the node at its own data dir, or at an
    /// empty one to join this cluster as a new member.
    #[error(
        "data dir {path} belongs to cluster {found:?}, not {expected:?}; use that cluster's config or an empty data dir"
    )]
    ForeignCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// The data dir was written by another node id.
    #[error("data dir {path} belongs to node {found}, not node {expected}; start node {found} on it or use an empty data dir")]
    WrongNode {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    /// The data dir was written by a newer or unknown pontoon storage format.
    #[error(
        "data dir {path} has storage format version {found}, this build reads version {supported}"
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Another node (in this process or another one) has the data dir open. Two writers would
    /// interleave their logs and lose acknowledged writes, so the second one is refused.
    #[error("data dir {path} is in use by another node ({holder}); stop that node first, or give this one its own data dir")]
    InUse { path: PathBuf, holder: String },
    /// The path exists but is not a pontoon data dir (a file, or an LMDB env of something else).
    #[error("{path} is not a pontoon data dir: {reason}")]
    NotADataDir { path: PathBuf, reason: String },
    /// A stored record could not be decoded: the data dir is corrupt.
    #[error("corrupt record {what} in data dir: {reason}")]
    Corrupt { what: String, reason: String },
    /// An append or snapshot that does not fit the log (a gap, or below the compacted index).
    #[error("invalid log operation: {0}")]
    InvalidOperation(String),
    /// LMDB failed.
    #[error("LMDB error: {0}")]
    Lmdb(#[from] heed::Error),
    /// Filesystem error outside LMDB.
    #[error("I/O error on data dir: {0}")]
    Io(#[from] std::io::Error),
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
