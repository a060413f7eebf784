//! The memstore state machine: a string -> string map replicated by pontoon.
//!
//! Counters share the map with plain values: a counter is a key whose value is a decimal number
//! (ASCII digits only, below 2^64), so `GET /store/{key}` reads it like any value and a `PUT`
//! can set or reset it. `Incr` of a key that holds anything else is refused and leaves the
//! value as it was; a missing key counts from zero.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pontoon::{
    async_trait, AbstractLogEntry, AbstractStateMachine, Error, FrozenState, Result, SnapshotSink,
    SnapshotSource,
};
use serde::{Deserialize, Serialize};

/// A command in the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum LogEntry {
    Insert {
        key: String,
        value: String,
    },
    /// Add one to the counter at `key`. Appended after `Insert`: bincode encodes a variant as
    /// its position, so entries already in logs and snapshots decode as before.
    Incr {
        key: String,
    },
}

/// What `apply` answers to an `Incr`, bincode-encoded. A refusal is decided by `apply` itself,
/// from the replicated value alone, so every node refuses the same entry the same way; it is an
/// answer like a success (the entry is committed either way), and the proposer decodes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum IncrReply {
    /// The counter's value after adding one.
    Counted(u64),
    /// The key holds a value that is not a counter; it is left as it was.
    NotACounter,
    /// The counter is at `u64::MAX`; it is left as it was rather than wrapping to zero.
    AtMaximum,
}

/// The counter a stored value holds, or None when the value is not a counter. Strict (digits
/// only, no sign or spaces) so that what counts as a counter is obvious from the value.
fn counter(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only, so the one way to fail is a number of 2^64 or more: not a counter either.
    value.parse().ok()
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

/// The map in two parts, so a snapshot is written while writes go on (see `freeze`).
///
/// Invariant: a key's value is its entry in `recent` if it has one, else its entry in `base`.
/// memstore only inserts, so no tombstones are needed.
#[derive(Debug, Default)]
struct State {
    /// The keys as of the last snapshot freeze, plus every write made since while no snapshot
    /// writer held `base`.
    base: Arc<Map>,
    /// Writes applied while a snapshot writer shared `base`; the first write after the writer
    /// finished folds them into `base`. Holds only what was written during one snapshot.
    recent: Map,
}

impl State {
    fn get(&self, key: &str) -> Option<&str> {
        self.recent
            .get(key)
            .or_else(|| self.base.get(key))
            .map(|v| &**v)
    }

    fn insert(&mut self, key: Box<str>, value: Box<str>) {
        match Arc::get_mut(&mut self.base) {
            Some(base) => {
                if !self.recent.is_empty() {
                    base.extend(std::mem::take(&mut self.recent));
                }
                base.insert(key, value);
            }
            // A snapshot writer holds `base`: it must keep seeing the state it froze.
            None => {
                self.recent.insert(key, value);
            }
        }
    }

    /// Add one to the counter at `key` (a missing key counts from zero). Anything else is left
    /// untouched and the reply says why.
    fn incr(&mut self, key: Box<str>) -> IncrReply {
        let current = match self.get(&key) {
            None => 0,
            Some(value) => match counter(value) {
                Some(n) => n,
                None => return IncrReply::NotACounter,
            },
        };
        let Some(next) = current.checked_add(1) else {
            return IncrReply::AtMaximum;
        };
        self.insert(key, next.to_string().into_boxed_str());
        IncrReply::Counted(next)
    }

    /// Every key in one shared map: `base` with `recent` folded in. Copies the map only if a
    /// snapshot writer still holds `base` while there are recent writes, which pontoon does not
    /// do: it takes one snapshot at a time.
    fn folded(&mut self) -> Arc<Map> {
        if !self.recent.is_empty() {
            Arc::make_mut(&mut self.base).extend(std::mem::take(&mut self.recent));
        }
        self.base.clone()
    }

    fn from_map(map: Map) -> Self {
        State {
            base: Arc::new(map),
            recent: Map::new(),
        }
    }
}

/// The replicated map. Clones share the same map (the HTTP layer reads it directly).
#[derive(Clone, Debug, Default)]
pub struct HashStore(Arc<RwLock<State>>);

impl HashStore {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(str::to_string)
    }

    /// The whole map as of now, shared rather than copied (see `State::folded`).
    fn frozen_map(&self) -> Arc<Map> {
        self.0.write().unwrap_or_else(|p| p.into_inner()).folded()
    }

    /// Replace the map with the one a snapshot holds (`restore` and `restore_from`).
    fn replace_from(&self, snapshot: impl std::io::Read) -> Result<()> {
        let map: Map = bincode::deserialize_from(snapshot)
            .map_err(|e| Error::StateMachine(format!("memstore snapshot unreadable: {e}")))?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = State::from_map(map);
        Ok(())
    }
}

/// The map as a snapshot froze it, written on pontoon's snapshot thread.
struct FrozenMap(Arc<Map>);

impl FrozenState for FrozenMap {
    fn write_snapshot(self: Box<Self>, out: &mut SnapshotSink) -> Result<()> {
        write_map(&self.0, out)
    }
}

/// The snapshot encoding: the map as bincode writes a `HashMap<String, String>`.
fn write_map(map: &Map, out: &mut SnapshotSink) -> Result<()> {
    bincode::serialize_into(out, map)
        .map_err(|e| Error::StateMachine(format!("memstore snapshot not written: {e}")))
}

#[async_trait]
impl AbstractStateMachine for HashStore {
    /// `Insert` answers with the stored value, `Incr` with an `IncrReply`.
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
            LogEntry::Incr { key } => {
                let reply = self
                    .0
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .incr(key.into_boxed_str());
                Ok(bincode::serialize(&reply)?)
            }
        }
    }
    async fn snapshot(&self) -> Result<Vec<u8>> {
        self.encode()
    }
    /// Serialise straight into the snapshot file: at a million keys the map's serialised copy
    /// is about as large as the raw data, and would otherwise sit in memory beside the map.
    /// (pontoon calls `freeze` first, so this runs only if that returned `None`.)
    async fn snapshot_to(&self, out: &mut SnapshotSink) -> Result<()> {
        write_map(&self.frozen_map(), out)
    }
    /// Share the map with the snapshot writer instead of serialising it here: writes made
    /// while it is written go to `recent` (see `State`), so the run loop does not stall for the
    /// 100+ ms a million keys take to serialise, and memory grows only by those writes.
    fn freeze(&self) -> Option<Box<dyn FrozenState>> {
        Some(Box::new(FrozenMap(self.frozen_map())))
    }
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        self.replace_from(snapshot.as_slice())
    }
    /// Deserialise straight from the snapshot file, for the same reason as `snapshot_to`: a
    /// node restarting or catching up holds the map it rebuilds, not the file's bytes as well.
    async fn restore_from(&mut self, source: &mut SnapshotSource) -> Result<()> {
        self.replace_from(source)
    }
    /// The snapshot encoding in one buffer (`snapshot` answers with it too).
    fn encode(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(&*self.frozen_map())?)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        let map: Map = bincode::deserialize(bytes)?;
        Ok(HashStore(Arc::new(RwLock::new(State::from_map(map)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(s: &str) -> Box<str> {
        s.into()
    }

    fn put(state: &mut State, key: &str, value: &str) {
        state.insert(boxed(key), boxed(value));
    }

    #[test]
    fn incr_counts_from_zero_and_refuses_values_that_are_not_counters() {
        let mut state = State::default();
        assert_eq!(state.incr(boxed("c")), IncrReply::Counted(1));
        assert_eq!(state.incr(boxed("c")), IncrReply::Counted(2));
        assert_eq!(state.get("c"), Some("2"));
        put(&mut state, "z", "007");
        assert_eq!(state.incr(boxed("z")), IncrReply::Counted(8));
        for value in ["hello", "", "-1", "+1", " 1", "1.5", "18446744073709551616"] {
            put(&mut state, "s", value);
            assert_eq!(state.incr(boxed("s")), IncrReply::NotACounter, "{value:?}");
            assert_eq!(state.get("s"), Some(value), "left untouched");
        }
        put(&mut state, "max", &u64::MAX.to_string());
        assert_eq!(state.incr(boxed("max")), IncrReply::AtMaximum);
        assert_eq!(state.get("max"), Some(&*u64::MAX.to_string()));
    }

    #[test]
    fn a_frozen_map_keeps_its_state_while_later_writes_stay_visible_to_reads() {
        let mut state = State::default();
        put(&mut state, "a", "1");
        put(&mut state, "b", "1");
        let frozen = state.folded();
        put(&mut state, "a", "2");
        put(&mut state, "c", "2");
        assert_eq!(frozen.len(), 2);
        assert_eq!(frozen.get("a").map(|v| &**v), Some("1"));
        assert!(!frozen.contains_key("c"));
        assert_eq!(state.get("a"), Some("2"));
        assert_eq!(state.get("b"), Some("1"));
        assert_eq!(state.get("c"), Some("2"));
        assert_eq!(state.recent.len(), 2, "writes made while frozen wait aside");
    }

    #[test]
    fn the_first_write_after_the_writer_is_done_folds_the_recent_writes_in() {
        let mut state = State::default();
        put(&mut state, "a", "1");
        let frozen = state.folded();
        put(&mut state, "a", "2");
        drop(frozen);
        put(&mut state, "b", "3");
        assert!(state.recent.is_empty());
        assert_eq!(state.base.get("a").map(|v| &**v), Some("2"));
        assert_eq!(state.base.get("b").map(|v| &**v), Some("3"));
    }

    #[test]
    fn a_snapshot_taken_with_recent_writes_holds_them_and_reads_like_a_plain_map() {
        let store = HashStore::default();
        {
            let mut state = store.0.write().expect("lock");
            put(&mut state, "a", "1");
        }
        let frozen = store.frozen_map();
        {
            let mut state = store.0.write().expect("lock");
            put(&mut state, "a", "2");
            put(&mut state, "b", "2");
        }
        drop(frozen);
        // The encoding is a plain `HashMap<String, String>`, as before the map was split.
        let bytes = bincode::serialize(&*store.frozen_map()).expect("encode");
        let plain: HashMap<String, String> = bincode::deserialize(&bytes).expect("decode");
        let expected: HashMap<String, String> = [("a", "2"), ("b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(plain, expected);
    }
}
