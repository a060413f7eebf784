//! The simulated clients' state machine: string registers, plus the order writes were applied
//! in (so the checks can compare nodes and find every acknowledged write).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state_machine::AbstractStateMachine;

/// Registers by key, and every write in the order it was applied.
///
/// Invariant: `map[k]` is the value of the last write to `k` in `writes`. The state stays small
/// (a run writes a few thousand short values), which the inline snapshot of a simulation needs
/// (see `node::snapshotting`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimKv {
    /// The current value of each key.
    pub map: BTreeMap<String, String>,
    /// `(key, value)` of every write, in apply order.
    pub writes: Vec<(String, String)>,
}

/// A write: set `key` to `value`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Put {
    /// The register.
    pub key: String,
    /// Its new value (distinct for every write of a run).
    pub value: String,
}

impl Put {
    /// The entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("a Put always encodes")
    }
}

#[crate::async_trait]
impl AbstractStateMachine for SimKv {
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>> {
        let put: Put = bincode::deserialize(&log_entry)?;
        self.map.insert(put.key.clone(), put.value.clone());
        self.writes.push((put.key, put.value));
        Ok(Vec::new())
    }

    async fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(self)?)
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        *self = bincode::deserialize(&snapshot)
            .map_err(|e| Error::StateMachine(format!("simulated state: {e}")))?;
        Ok(())
    }
}
