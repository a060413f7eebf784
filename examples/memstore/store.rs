//! The memstore state machine: a string -> string map replicated by pontoon.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pontoon::{
    async_trait, AbstractLogEntry, AbstractStateMachine, Error, Result, SnapshotSink,
    SnapshotSource,
};
use serde::{Deserialize, Serialize};

/// A command in the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum LogEntry {
    Insert { key: String, value: String },
}

impl AbstractLogEntry for LogEntry {
    fn encode(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(self)?)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(bincode::deserialize(bytes)?)
    }
}

/// The map's type. `Box<str>` rather than `String`: keys and values never grow in place, and
/// dropping the capacity field saves 16 bytes per key in every bucket of the table (a table at
/// a million keys has two million buckets). The snapshot encoding is the same as for `String`.
type Map = HashMap<Box<str>, Box<str>>;

/// The replicated map. Clones share the same map (the HTTP layer reads it directly).
#[derive(Clone, Debug, Default)]
pub struct HashStore(Arc<RwLock<Map>>);

impl HashStore {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|v| v.to_string())
    }
}

impl HashStore {
    /// Replace the map with the one a snapshot holds (`restore` and `restore_from`).
    fn replace_from(&self, snapshot: impl std::io::Read) -> Result<()> {
        let map: Map = bincode::deserialize_from(snapshot)
            .map_err(|e| Error::StateMachine(format!("memstore snapshot unreadable: {e}")))?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }
}

#[async_trait]
impl AbstractStateMachine for HashStore {
    /// Insert and answer with the stored value.
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>> {
        match LogEntry::decode(&log_entry)? {
            LogEntry::Insert { key, value } => {
                let answer = value.clone().into_bytes();
                self.0
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.into_boxed_str(), value.into_boxed_str());
                Ok(answer)
            }
        }
    }
    async fn snapshot(&self) -> Result<Vec<u8>> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        Ok(bincode::serialize(&*map)?)
    }
    /// Serialise straight into the snapshot file: at a million keys the map's serialised copy
    /// is about as large as the raw data, and would otherwise sit in memory beside the map.
    async fn snapshot_to(&self, out: &mut SnapshotSink) -> Result<()> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        bincode::serialize_into(out, &*map)
            .map_err(|e| Error::StateMachine(format!("memstore snapshot not written: {e}")))
    }
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        self.replace_from(snapshot.as_slice())
    }
    /// Deserialise straight from the snapshot file, for the same reason as `snapshot_to`: a
    /// node restarting or catching up holds the map it rebuilds, not the file's bytes as well.
    async fn restore_from(&mut self, source: &mut SnapshotSource) -> Result<()> {
        self.replace_from(source)
    }
    fn encode(&self) -> Result<Vec<u8>> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        Ok(bincode::serialize(&*map)?)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        let map: Map = bincode::deserialize(bytes)?;
        Ok(HashStore(Arc::new(RwLock::new(map))))
    }
}
