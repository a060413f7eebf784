//! Test support: a small replicated log state machine and an in-process cluster whose nodes talk
//! over real loopback gRPC, each with its own LMDB data dir.
#![allow(dead_code)]

pub mod linearizability;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pontoon::{async_trait, AbstractStateMachine, Config, Error, Peers, Raft, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Records every applied entry in order. `apply` answers `"<position>:<entry>"`, so a proposer can
/// check it got its own entry's result.
#[derive(Clone, Default)]
pub struct AppliedLog {
    pub entries: Arc<Mutex<Vec<String>>>,
    pub restores: Arc<Mutex<u32>>,
    /// How many times `apply` ran on this instance.
    pub apply_calls: Arc<std::sync::atomic::AtomicU64>,
    /// When set, `freeze` hands out a copy of the entries whose writing waits for this gate.
    /// Unset (the default), `freeze` returns `None` and snapshots go through `snapshot`.
    pub freeze_gate: Arc<Mutex<Option<Arc<Gate>>>>,
}

/// A gate a frozen snapshot's writer waits at, so a test can hold it mid-write.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
    /// Writers that reached the gate (waiting or through).
    pub arrived: std::sync::atomic::AtomicU64,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().expect("lock") = true;
        self.opened.notify_all();
    }

    /// Wait until opened, at most `limit` (a test that forgets to open fails, not hangs).
    fn pass(&self, limit: Duration) -> Result<()> {
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let open = self.open.lock().expect("lock");
        let (open, _) = self
            .opened
            .wait_timeout_while(open, limit, |open| !*open)
            .expect("lock");
        if *open {
            Ok(())
        } else {
            Err(Error::StateMachine("the test never opened the gate".into()))
        }
    }
}

/// `AppliedLog`'s frozen state: the entries as of `freeze`, written once the gate opens.
struct FrozenEntries {
    entries: Vec<String>,
    gate: Arc<Gate>,
}

impl pontoon::FrozenState for FrozenEntries {
    fn write_snapshot(self: Box<Self>, out: &mut pontoon::SnapshotSink) -> Result<()> {
        self.gate.pass(Duration::from_secs(60))?;
        bincode::serialize_into(out, &self.entries)?;
        Ok(())
    }
}

impl AppliedLog {
    pub fn snapshot_entries(&self) -> Vec<String> {
        self.entries.lock().expect("lock").clone()
    }
    pub fn len(&self) -> usize {
        self.entries.lock().expect("lock").len()
    }
}

#[async_trait]
impl AbstractStateMachine for AppliedLog {
    async fn apply(&mut self, log_entry: Vec<u8>) -> Result<Vec<u8>> {
        self.apply_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = String::from_utf8(log_entry).map_err(|e| Error::StateMachine(e.to_string()))?;
        if let Some(why) = entry.strip_prefix("refuse:") {
            // An application error that is not `StateMachine`: pontoon must still answer it as
            // one, since the entry is committed.
            return Err(Error::InvalidRequest(why.to_string()));
        }
        let mut entries = self.entries.lock().expect("lock");
        entries.push(entry.clone());
        Ok(format!("{}:{}", entries.len(), entry).into_bytes())
    }
    async fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(&*self.entries.lock().expect("lock"))?)
    }
    fn freeze(&self) -> Option<Box<dyn pontoon::FrozenState>> {
        let gate = self.freeze_gate.lock().expect("lock").clone()?;
        Some(Box::new(FrozenEntries {
            entries: self.entries.lock().expect("lock").clone(),
            gate,
        }))
    }
    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
        *self.entries.lock().expect("lock") = bincode::deserialize(&snapshot)?;
        *self.restores.lock().expect("lock") += 1;
        Ok(())
    }
    fn encode(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(&*self.entries.lock().expect("lock"))?)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        let entries: Vec<String> = bincode::deserialize(bytes)?;
        Ok(AppliedLog {
            entries: Arc::new(Mutex::new(entries)),
            ..Default::default()
        })
    }
}

pub fn test_logger() -> pontoon::slog::Logger {
    if std::env::var_os("PONTOON_TEST_LOG").is_some() {
        pontoon::default_logger()
    } else {
        pontoon::slog::Logger::root(pontoon::slog::Discard, pontoon::slog::o!())
    }
}

/// Lowest and one past the highest port `free_addrs` hands out. The range sits below Linux's
/// ephemeral range (32768-60999 by default), from which the kernel picks both `bind(…:0)` ports
/// and the local ports of outgoing connections: a port taken from there, released and bound
/// again later could meanwhile have become the local end of some gRPC client's connection
/// (AddrInUse on a node's start or restart). Nothing here picks from this range implicitly.
const TEST_PORTS: std::ops::Range<u16> = 12_000..32_000;

/// Loopback addresses on ports no one held when asked, each handed out once per test process.
///
/// Every test binary starts at its own point of `TEST_PORTS` (from its pid) and walks on from
/// there, skipping ports it cannot bind, so tests running at once in this process never get the
/// same port, and neither does a node restarted on its old address while another test starts.
pub fn free_addrs(n: usize) -> Vec<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    // First use: start at this process's own offset (tests of other binaries may run at once).
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..span {
        if addrs.len() == n {
            break;
        }
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = TEST_PORTS.start + offset as u16;
        // Bound and released: held by no one now, and no later call of ours hands it out.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            addrs.push(format!("127.0.0.1:{port}"));
        }
    }
    assert_eq!(
        addrs.len(),
        n,
        "no {n} free loopback ports in {TEST_PORTS:?}"
    );
    addrs
}

pub struct TestNode {
    pub raft: Raft<AppliedLog>,
    pub fsm: AppliedLog,
    pub task: JoinHandle<Result<()>>,
}

/// N nodes of one static cluster in this process.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub peers: Peers,
    pub cluster_id: String,
    pub nodes: BTreeMap<u64, TestNode>,
    /// Applied to every node's config (kept for restarts).
    pub tweak: fn(&mut Config),
}

pub fn test_config(dir: &std::path::Path, id: u64, peers: &Peers, cluster_id: &str) -> Config {
    Config {
        data_dir: dir.join(format!("node-{id}")),
        initial_peers: Some(peers.clone()),
        cluster_id: cluster_id.to_string(),
        tick_interval: Duration::from_millis(50),
        propose_timeout: Duration::from_secs(10),
        rpc_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

impl TestCluster {
    /// Start `n` nodes (ids 1..=n) and wait until they agree on a leader.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// `start` with a config change applied to every node.
    ///
    /// A port `free_addrs` found free can still be taken before the node binds it, by a process
    /// outside this test binary (CI once saw AddrInUse here). The cluster then starts over on
    /// fresh ports and a fresh dir, at most `START_ATTEMPTS` times.
    pub async fn start_with(n: u64, tweak: fn(&mut Config)) -> Self {
        const START_ATTEMPTS: u32 = 3;
        for attempt in 1..=START_ATTEMPTS {
            let addrs = free_addrs(n as usize);
            let peers: Peers = (1..=n).zip(addrs).collect();
            let mut cluster = TestCluster {
                dir: tempfile::tempdir().expect("tempdir"),
                peers,
                cluster_id: "test-cluster".into(),
                nodes: BTreeMap::new(),
                tweak,
            };
            let mut failed = None;
            for id in 1..=n {
                if let Err(e) = cluster.try_start_node_with(id, |_| {}).await {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => {
                    cluster.wait_for_leader().await;
                    return cluster;
                }
                Some(Error::Io(e))
                    if e.kind() == std::io::ErrorKind::AddrInUse && attempt < START_ATTEMPTS =>
                {
                    eprintln!(
                        "test cluster start, attempt {attempt}: {e}; starting over on other ports"
                    );
                    cluster.shutdown().await;
                }
                Some(e) => panic!("bootstrap: {e:?}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn config(&self, id: u64) -> Config {
        let mut config = test_config(self.dir.path(), id, &self.peers, &self.cluster_id);
        (self.tweak)(&mut config);
        config
    }

    /// Start (or restart, on its existing data dir) node `id`.
    pub async fn start_node(&mut self, id: u64) {
        self.start_node_with(id, |_| {}).await
    }

    /// `start_node`, running `before_run` on the node before its run loop starts.
    pub async fn start_node_with(&mut self, id: u64, before_run: impl FnOnce(&Raft<AppliedLog>)) {
        self.try_start_node_with(id, before_run)
            .await
            .expect("bootstrap");
    }

    async fn try_start_node_with(
        &mut self,
        id: u64,
        before_run: impl FnOnce(&Raft<AppliedLog>),
    ) -> Result<()> {
        let fsm = AppliedLog::default();
        let raft = Raft::bootstrap(
            id,
            self.peers[&id].clone(),
            fsm.clone(),
            self.config(id),
            test_logger(),
        )
        .await?;
        before_run(&raft);
        let task = tokio::spawn(raft.clone().run());
        self.nodes.insert(id, TestNode { raft, fsm, task });
        Ok(())
    }

    /// Start a brand-new node that joins by a ticket requested from member `ask`, and wait until
    /// it is a voter (or only a learner, with `as_learner`). Returns its id.
    pub async fn join_new_node(&mut self, ask: u64, as_learner: bool) -> u64 {
        let addr = free_addrs(1).remove(0);
        let ticket = Raft::<AppliedLog>::request_id(addr.clone(), self.peers[&ask].clone())
            .await
            .expect("request_id");
        let id = ticket.reserved_id;
        assert!(!self.peers.contains_key(&id), "id {id} handed out twice");
        self.peers.insert(id, addr.clone());
        let mut config = self.config(id);
        config.initial_peers = None;
        let fsm = AppliedLog::default();
        let raft = Raft::bootstrap_to_join(&ticket, fsm.clone(), config, test_logger())
            .await
            .expect("bootstrap joiner");
        let task = tokio::spawn(raft.clone().run());
        if as_learner {
            raft.join_cluster_as_learner(vec![ticket])
                .await
                .expect("join as learner");
        } else {
            raft.join_cluster(vec![ticket]).await.expect("join");
        }
        self.nodes.insert(id, TestNode { raft, fsm, task });
        id
    }

    /// Gracefully stop node `id` and wait until its storage is closed and its port is free.
    pub async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node running");
        node.raft.quit().await.expect("quit");
        node.task.await.expect("join").expect("run ended cleanly");
    }

    /// Wait (up to 20 s) for node `id`'s `run()` to end with `Error::Removed`, and take it out of
    /// the running nodes. Returns how the node learned of its removal.
    #[allow(dead_code)] // not every test file removes nodes
    pub async fn expect_removed(&mut self, id: u64) -> String {
        let node = self.nodes.remove(&id).expect("node running");
        match tokio::time::timeout(Duration::from_secs(20), node.task).await {
            Ok(Ok(Err(Error::Removed { id: reported, how }))) => {
                assert_eq!(reported, id, "Removed names the node itself");
                how
            }
            Ok(other) => panic!("node {id} should stop with Error::Removed, got {other:?}"),
            Err(_) => panic!("node {id} was still running 20 s after its removal"),
        }
    }

    /// Every running node other than `leader`.
    pub fn followers_of(&self, leader: u64) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect()
    }

    /// Some running node other than `leader`.
    pub fn follower_of(&self, leader: u64) -> u64 {
        *self
            .nodes
            .keys()
            .find(|id| **id != leader)
            .expect("a running node besides the leader")
    }

    /// Some running node that is none of `ids` (the third node, given a leader and a follower).
    pub fn node_other_than(&self, ids: &[u64]) -> u64 {
        *self
            .nodes
            .keys()
            .find(|id| !ids.contains(id))
            .expect("a running node besides those")
    }

    /// Cut node `id` off from every other running node, both ways.
    #[cfg(feature = "fault-injection")]
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.nodes.keys().copied().filter(|o| *o != id).collect();
        self.node(id).faults().partition_from(&others);
        for o in others {
            self.node(o).faults().partition_from(&[id]);
        }
    }

    /// Remove every injected fault on every running node.
    #[cfg(feature = "fault-injection")]
    pub fn heal_all(&self) {
        for node in self.nodes.values() {
            node.raft.faults().heal();
        }
    }

    pub fn node(&self, id: u64) -> &Raft<AppliedLog> {
        &self.nodes[&id].raft
    }

    /// Wait until every running node reports the same leader, and that leader is running.
    pub async fn wait_for_leader(&self) -> u64 {
        let mut last = String::new();
        eventually(
            Duration::from_secs(20),
            "all running nodes agree on a leader",
            || {
                let leaders: Vec<u64> = self
                    .nodes
                    .values()
                    .map(|n| n.raft.get_leader_id())
                    .collect();
                last = format!("{leaders:?}");
                let first = leaders[0];
                first != 0
                    && leaders.iter().all(|&l| l == first)
                    && self.nodes.get(&first).is_some_and(|n| n.raft.is_leader())
            },
        )
        .await;
        self.nodes
            .values()
            .next()
            .expect("a node")
            .raft
            .get_leader_id()
    }

    /// Propose through node `id`, retrying answers that say the entry was not taken.
    pub async fn propose(&self, id: u64, data: &str) -> Vec<u8> {
        propose_retrying(self.node(id), data).await
    }

    /// Wait until every running node has applied at least `n` entries and all agree on them.
    pub async fn wait_all_applied(&self, n: usize) -> Vec<String> {
        eventually(
            Duration::from_secs(30),
            &format!("all nodes applied {n} entries"),
            || self.nodes.values().all(|node| node.fsm.len() >= n),
        )
        .await;
        let reference = self
            .nodes
            .values()
            .next()
            .expect("node")
            .fsm
            .snapshot_entries();
        for (id, node) in &self.nodes {
            assert_eq!(
                node.fsm.snapshot_entries(),
                reference,
                "node {id} applied a different log"
            );
        }
        reference
    }

    /// How many of node `id`'s applied entries are `entry` (a duplicate apply shows as 2).
    pub fn times_applied(&self, id: u64, entry: &str) -> usize {
        self.nodes[&id]
            .fsm
            .snapshot_entries()
            .iter()
            .filter(|e| e.as_str() == entry)
            .count()
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

/// The value of a metric in a node's Prometheus text (summed over label sets; 0 when absent).
pub fn metric(raft: &pontoon::RaftNode, name: &str) -> f64 {
    raft.metrics_text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

pub async fn propose_retrying<F: AbstractStateMachine>(raft: &Raft<F>, data: &str) -> Vec<u8> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match raft.propose(data.as_bytes().to_vec()).await {
            Ok(r) => return r,
            Err(e) if e.is_retryable() && attempts < 5 => continue,
            Err(e) => panic!("proposal {data:?} failed after {attempts} attempts: {e}"),
        }
    }
}

/// Poll `cond` every 20 ms until it holds; panic with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
