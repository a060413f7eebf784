//! An application built on pontoon, outside its workspace: a replicated key-value map on a
//! one-node cluster in a temporary directory. It bootstraps the node, writes through a session,
//! reads back through the session and through a linearizable read, and stops.
//!
//! `tests/user_crate.rs` (in pontoon) builds and runs it and checks what it prints.

use std::collections::BTreeMap;
use std::time::Duration;

use pontoon::{AbstractStateMachine, Config, Error, Raft, Result};

/// The replicated state: commands are text, `set <key> <value>` or `get <key>`.
#[derive(Clone, Default)]
struct KvMap {
    map: BTreeMap<String, String>,
}

impl KvMap {
    fn encode(map: &BTreeMap<String, String>) -> Vec<u8> {
        let mut out = String::new();
        for (key, value) in map {
            out.push_str(&format!("{key}={value}\n"));
        }
        out.into_bytes()
    }
}

#[pontoon::async_trait]
impl AbstractStateMachine for KvMap {
    async fn apply(&mut self, command: Vec<u8>) -> Result<Vec<u8>> {
        let text = String::from_utf8(command).map_err(|e| Error::Encoding(e.to_string()))?;
        let words: Vec<&str> = text.splitn(3, ' ').collect();
        match words.as_slice() {
            ["set", key, value] => {
                self.map.insert(key.to_string(), value.to_string());
                Ok(b"ok".to_vec())
            }
            ["get", key] => Ok(self.map.get(*key).cloned().unwrap_or_default().into_bytes()),
            // Deterministic: every node refuses the same command the same way.
            _ => Err(Error::InvalidRequest(format!("unknown command {text:?}"))),
        }
    }

    async fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(KvMap::encode(&self.map))
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        let text = String::from_utf8(snapshot).map_err(|e| Error::Encoding(e.to_string()))?;
        self.map = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        cluster_id: "user-crate".into(),
        data_dir: dir.path().join("node-1"),
        initial_peers: Some(pontoon::parse_peers("1=127.0.0.1:0")?),
        ..Config::default()
    };
    let quiet = pontoon::slog::Logger::root(pontoon::slog::Discard, pontoon::slog::o!());
    let raft = Raft::bootstrap(1, "127.0.0.1:0", KvMap::default(), config, quiet).await?;
    let running = tokio::spawn(raft.clone().run());

    let leader = raft.wait_for_leader(Duration::from_secs(10)).await?;
    println!("leader: node {leader}");

    let session = raft.session().await?;
    let answer = session.propose(b"set greeting hello".to_vec()).await?;
    println!("set: {}", String::from_utf8_lossy(&answer));
    let answer = session.propose(b"get greeting".to_vec()).await?;
    println!(
        "get through the session: {}",
        String::from_utf8_lossy(&answer)
    );

    let value = raft
        .linearizable_read(|kv: &KvMap| kv.map.get("greeting").cloned())
        .await?;
    println!("linearizable read: {}", value.unwrap_or_default());

    match session.propose(b"frobnicate".to_vec()).await {
        Err(Error::StateMachine(message)) => println!("refused: {message}"),
        other => return Err(Error::Other(format!("expected a refusal, got {other:?}"))),
    }

    raft.quit().await?;
    running.await.map_err(|e| Error::Other(e.to_string()))??;
    println!("stopped");
    Ok(())
}
