//! Who a data dir belongs to: the node id, cluster id and format version recorded in its `meta`
//! database, read before anything is written so a foreign or newer data dir is refused untouched.

use std::path::Path;

use crate::storage::records::{
    decode_cluster_id, decode_format_version, decode_node_id, K_CLUSTER, K_FORMAT, K_NODE,
};
use crate::storage::StorageError;
use heed::types::{Bytes, Str};
use heed::Database;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// The `meta` database: identity, membership and snapshot metadata (see `lmdb/mod.rs`).
pub(super) type MetaDb = Database<Str, Bytes>;

/// Who a data dir belongs to, as recorded in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredIdentity {
    /// The node id the data dir was created for.
    pub node_id: u64,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// The storage format version it was written with.
    pub format_version: u32,
}

pub(super) fn read_identity(
    meta: &MetaDb,
    rtxn: &heed::RoTxn,
    path: &Path,
) -> Result<StoredIdentity, StorageError> {
    let missing = |key: &str| StorageError::NotADataDir {
        path: path.to_path_buf(),
        reason: format!("metadata has no {key}"),
    };
    let format = meta.get(rtxn, K_FORMAT)?.ok_or_else(|| missing(K_FORMAT))?;
    let format_version = decode_format_version(format)?;
    if format_version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: format_version,
            supported: FORMAT_VERSION,
        });
    }
    let node_id = decode_node_id(meta.get(rtxn, K_NODE)?.ok_or_else(|| missing(K_NODE))?)?;
    let cluster = meta
        .get(rtxn, K_CLUSTER)?
        .ok_or_else(|| missing(K_CLUSTER))?;
    let cluster_id = decode_cluster_id(cluster)?;
    Ok(StoredIdentity {
        node_id,
        cluster_id,
        format_version,
    })
}

pub(super) fn check_identity(
    found: &StoredIdentity,
    node_id: u64,
    cluster_id: &str,
    path: &Path,
) -> Result<(), StorageError> {
    if found.cluster_id != cluster_id {
        return Err(StorageError::ForeignCluster {
            path: path.to_path_buf(),
            found: found.cluster_id.clone(),
            expected: cluster_id.to_string(),
        });
    }
    if found.node_id != node_id {
        return Err(StorageError::WrongNode {
            path: path.to_path_buf(),
            found: found.node_id,
            expected: node_id,
        });
    }
    Ok(())
}
