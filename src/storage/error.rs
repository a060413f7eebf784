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
        /// The data dir.
        path: PathBuf,
        /// The cluster id recorded in it.
        found: String,
        /// The cluster id this node was configured with.
        expected: String,
    },
    /// The data dir was written by another node id.
    #[error("data dir {path} belongs to node {found}, not node {expected}; start node {found} on it or use an empty data dir")]
    WrongNode {
        /// The data dir.
        path: PathBuf,
        /// The node id recorded in it.
        found: u64,
        /// The node id this node was started as.
        expected: u64,
    },
    /// The data dir was written by a newer or unknown pontoon storage format.
    #[error(
        "data dir {path} has storage format version {found}, this build reads version {supported}"
    )]
    UnsupportedFormat {
        /// The data dir.
        path: PathBuf,
        /// The format version recorded in it.
        found: u32,
        /// The version this build reads (`FORMAT_VERSION`).
        supported: u32,
    },
    /// Another node (in this process or another one) has the data dir open. Two writers would
    /// interleave their logs and lose acknowledged writes, so the second one is refused.
    #[error("data dir {path} is in use by another node ({holder}); stop that node first, or give this one its own data dir")]
    InUse {
        /// The data dir.
        path: PathBuf,
        /// Who holds its lock: the pid recorded in the lock file ("this process" when it is
        /// ours), or "holder unknown".
        holder: String,
    },
    /// The path exists but is not a pontoon data dir (a file, or an LMDB env of something else).
    #[error("{path} is not a pontoon data dir: {reason}")]
    NotADataDir {
        /// The path that was opened.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored record could not be decoded: the data dir is corrupt.
    #[error("corrupt record {what} in data dir: {reason}")]
    Corrupt {
        /// Which record (its key or file).
        what: String,
        /// Why it could not be decoded.
        reason: String,
    },
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
