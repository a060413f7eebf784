//! The memstore state machine: a string -> string map replicated by pontoon.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pontoon::{async_trait, AbstractLogEntry, AbstractStateMachine, Error, Result};
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

/// The replicated map. Clones share the same map (the HTTP layer reads it directly).
#[derive(Clone, Debug, Default)]
pub struct HashStore(pub Arc<RwLock<HashMap<String, String>>>);

impl HashStore {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
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
                    .insert(key, value);
                Ok(answer)
            }
        }
    }
    async fn snapshot(&self) -> Result<Vec<u8>> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        Ok(bincode::serialize(&*map)?)
    }
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        let map: HashMap<String, String> = bincode::deserialize(&snapshot)
            .map_err(|e| Error::StateMachine(format!("memstore snapshot unreadable: {e}")))?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }
    fn encode(&self) -> Result<Vec<u8>> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        Ok(bincode::serialize(&*map)?)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        let map: HashMap<String, String> = bincode::deserialize(bytes)?;
        Ok(HashStore(Arc::new(RwLock::new(map))))
    }
}
