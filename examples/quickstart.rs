//! The README's quickstart: a small key-value state machine replicated by three nodes in one
//! process. Run it with `cargo run --example quickstart`; `tests/quickstart.rs` runs the same code
//! in the test suite, and `tests/docs.rs` checks that the README shows the text between the two
//! marker lines below.

// README quickstart begins
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use pontoon::slog::Logger;
use pontoon::{AbstractLogEntry, AbstractStateMachine, Config, Error, Peers, Raft, Result};
use serde::{Deserialize, Serialize};

/// A command in the replicated log.
#[derive(Clone, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`, unless the key already has a value.
    Insert { key: String, value: String },
}

impl AbstractLogEntry for Command {
    fn encode(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(self)?)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(bincode::deserialize(bytes)?)
    }
}

/// What `apply` answers to an `Insert`. A refusal by the store's own rules is an answer like any
/// other: `apply` returns it as `Ok`, and the proposer decodes it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Inserted,
    AlreadySet(String),
}

/// The replicated state.
#[derive(Clone, Default)]
pub struct KvStore {
    map: HashMap<String, String>,
}

#[pontoon::async_trait]
impl AbstractStateMachine for KvStore {
    /// Runs on every node, in log order, once the entry is committed. It must be deterministic.
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>> {
        let reply = match Command::decode(&log_entry)? {
            Command::Insert { key, value } => match self.map.get(&key) {
                Some(old) => Reply::AlreadySet(old.clone()),
                None => {
                    self.map.insert(key, value);
                    Reply::Inserted
                }
            },
        };
        Ok(bincode::serialize(&reply)?)
    }
    async fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(&self.map)?)
    }
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        self.map = bincode::deserialize(&snapshot)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let data = tempfile::tempdir()?; // a real service keeps its data dirs, of course
    three_nodes(data.path(), pontoon::default_logger()).await
}

/// Start a 3-node cluster, write through one node, read through another, stop all three.
pub async fn three_nodes(data: &Path, logger: Logger) -> Result<()> {
    let peers: Peers = (1..=3).zip(free_addrs(3)?).collect();
    let mut nodes = Vec::new();
    for (&id, addr) in &peers {
        let config = Config {
            data_dir: data.join(format!("node-{id}")),
            initial_peers: Some(peers.clone()),
            ..Config::default()
        };
        let store = KvStore::default();
        let raft = Raft::bootstrap(id, addr.as_str(), store, config, logger.clone()).await?;
        let running = tokio::spawn(raft.clone().run());
        nodes.push((raft, running));
    }
    let leader = nodes[0].0.wait_for_leader(Duration::from_secs(10)).await?;
    println!("node {leader} is the leader");

    // Any node takes writes (a follower forwards them to the leader). The answer is what
    // `apply` returned, once the entry is committed on a quorum and applied.
    let insert = |value: &str| Command::Insert {
        key: "hello".into(),
        value: value.into(),
    };
    let answer = nodes[0].0.propose_entry(&insert("world")).await?;
    assert_eq!(bincode::deserialize::<Reply>(&answer)?, Reply::Inserted);
    let answer = nodes[1].0.propose_entry(&insert("again")).await?;
    assert_eq!(
        bincode::deserialize::<Reply>(&answer)?,
        Reply::AlreadySet("world".into())
    );

    // A linearizable read sees every write acknowledged before it started, on any node.
    let value = nodes[2]
        .0
        .linearizable_read(|kv: &KvStore| kv.map.get("hello").cloned())
        .await?;
    println!("hello = {value:?}");
    assert_eq!(value.as_deref(), Some("world"));

    for (raft, running) in nodes {
        raft.quit().await?;
        // `run()` returns Ok after `quit()`; an error says why a node stopped on its own.
        running.await.map_err(|e| Error::Other(e.to_string()))??;
    }
    Ok(())
}

/// `n` addresses on 127.0.0.1 whose ports are free right now.
fn free_addrs(n: usize) -> Result<Vec<String>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}
// README quickstart ends
