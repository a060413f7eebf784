//! The memstore processes under test: start, `kill -9`, restart on the same data dir, and the
//! HTTP calls the runner makes to them (faults, leader lookup, stale reads).

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lazyfs::{tail, LazyFs};

/// One memstore node: its addresses, data dir, log file and (while running) its process.
pub struct NodeProc {
    pub id: u64,
    pub raft_addr: String,
    pub http_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }
}

/// How to launch the nodes.
pub struct LaunchSpec {
    pub memstore: PathBuf,
    pub cluster_id: String,
    pub peers: String,
    pub snapshot_threshold: u64,
    pub compaction_margin: u64,
}

/// The whole cluster of processes. Dropping it kills whatever still runs (and then unmounts
/// the LazyFS data dirs, if any).
pub struct ProcCluster {
    pub nodes: Vec<NodeProc>,
    spec: LaunchSpec,
    lazyfs: Option<LazyFs>,
}

/// `count` loopback ports that were free a moment ago (bound to port 0, then released).
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl ProcCluster {
    /// Lay out `n` nodes under `work_dir` (fresh data dirs) and start them all. With `lazyfs`
    /// (the LazyFS binary), each data dir is first mounted as a LazyFS of its own.
    pub fn start(
        n: u64,
        work_dir: &Path,
        memstore: PathBuf,
        cluster_id: String,
        snapshot_threshold: u64,
        compaction_margin: u64,
        lazyfs: Option<PathBuf>,
    ) -> Result<Self, String> {
        let ports = free_ports(2 * n as usize).map_err(|e| format!("no free ports: {e}"))?;
        let nodes: Vec<NodeProc> = (1..=n)
            .map(|id| {
                let i = (id - 1) as usize;
                NodeProc {
                    id,
                    raft_addr: format!("127.0.0.1:{}", ports[2 * i]),
                    http_addr: format!("127.0.0.1:{}", ports[2 * i + 1]),
                    data_dir: work_dir.join(format!("node-{id}")),
                    log_path: work_dir.join(format!("node-{id}.log")),
                    child: None,
                }
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.raft_addr))
            .collect::<Vec<_>>()
            .join(",");
        let lazyfs = match lazyfs {
            Some(binary) => {
                let dirs: Vec<PathBuf> = nodes.iter().map(|n| n.data_dir.clone()).collect();
                Some(LazyFs::new(binary, &dirs, &work_dir.join("lazyfs"))?)
            }
            None => None,
        };
        let mut cluster = ProcCluster {
            nodes,
            lazyfs,
            spec: LaunchSpec {
                memstore,
                cluster_id,
                peers,
                snapshot_threshold,
                compaction_margin,
            },
        };
        // On an error the cluster is dropped: what was started is killed, what was mounted is
        // unmounted.
        if let Some(lazyfs) = cluster.lazyfs.as_mut() {
            for id in 1..=n {
                lazyfs.mount(id)?;
            }
        }
        for id in 1..=n {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.http_addr.clone()).collect()
    }

    /// Start node `id` (again) on its data dir. A restart passes the same flags as the first
    /// start; memstore ignores `--initial-peers` once the data dir exists.
    pub fn restart(&mut self, id: u64) -> Result<(), String> {
        let spec = &self.spec;
        let node = &mut self.nodes[(id - 1) as usize];
        if node.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| format!("cannot open {}: {e}", node.log_path.display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", node.log_path.display()))?;
        let child = Command::new(&spec.memstore)
            .arg("--id")
            .arg(id.to_string())
            .arg("--raft-addr")
            .arg(&node.raft_addr)
            .arg("--web-server")
            .arg(&node.http_addr)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--initial-peers")
            .arg(&spec.peers)
            .arg("--cluster-id")
            .arg(&spec.cluster_id)
            .arg("--snapshot-threshold")
            .arg(spec.snapshot_threshold.to_string())
            .arg("--compaction-margin")
            .arg(spec.compaction_margin.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.memstore.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Give stopped node `id` a new raft port for its next start: it comes back on its data dir
    /// at an address the members do not know, and must tell them (pontoon's address update).
    pub fn move_raft_port(&mut self, id: u64) -> Result<String, String> {
        let node = &mut self.nodes[(id - 1) as usize];
        if node.child.is_some() {
            return Err(format!("node {id} is running"));
        }
        let port = free_ports(1).map_err(|e| format!("no free port: {e}"))?[0];
        node.raft_addr = format!("127.0.0.1:{port}");
        Ok(node.raft_addr.clone())
    }

    /// SIGKILL: the process gets no chance to flush anything. Returns false if it was not running.
    pub fn kill(&mut self, id: u64) -> bool {
        let node = &mut self.nodes[(id - 1) as usize];
        match node.child.take() {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// Processes that exited on their own (a crash the runner did not cause), with their status.
    pub fn reap_unexpected_exits(&mut self) -> Vec<(u64, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push((node.id, status.to_string()));
                    node.child = None;
                }
            }
        }
        exited
    }

    pub fn kill_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill(id);
        }
    }

    /// Kill every node, then unmount the LazyFS data dirs (the bytes stay in their roots).
    pub fn shutdown(&mut self) {
        self.kill_all();
        if let Some(lazyfs) = self.lazyfs.as_mut() {
            lazyfs.unmount_all();
        }
    }

    pub fn has_lazyfs(&self) -> bool {
        self.lazyfs.is_some()
    }

    /// Power cut of stopped node `id`'s disk: every byte it wrote and did not sync is gone.
    pub async fn clear_cache(&mut self, id: u64) -> Result<(), String> {
        if self.node(id).is_running() {
            return Err(format!("node {id} is running"));
        }
        match self.lazyfs.as_mut() {
            Some(lazyfs) => lazyfs.clear_cache(id).await,
            None => Err("no LazyFS under the data dirs".into()),
        }
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        tail(&self.node(id).log_path, lines)
    }

    /// Wait until restarted node `id` answers HTTP (any status), for at most `limit`. An error
    /// says whether it exited (and how) or stayed silent; an exited node is marked stopped.
    pub async fn await_answer(
        &mut self,
        id: u64,
        http: &reqwest::Client,
        limit: Duration,
    ) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let url = self.node(id).url("/leader");
        loop {
            let node = &mut self.nodes[(id - 1) as usize];
            let Some(child) = node.child.as_mut() else {
                return Err(format!("node {id} is not running"));
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return Err(format!(
                    "node {id} exited {:.1} s after its restart: {status}",
                    started.elapsed().as_secs_f64()
                ));
            }
            if http.get(&url).send().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "node {id} did not answer within {limit:?} of its restart"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Lines of the node logs that show a crash or a fatal stop: a panic, or the node stopping
    /// with an error (e.g. a read it could not trust). Each prefixed with the node id.
    pub fn fatal_log_lines(&self) -> Vec<String> {
        let mut found = Vec::new();
        for node in &self.nodes {
            let Ok(bytes) = std::fs::read(&node.log_path) else {
                continue;
            };
            for line in String::from_utf8_lossy(&bytes).lines() {
                if line.contains("panicked at") || line.contains("node stopped with an error") {
                    found.push(format!("node {}: {line}", node.id));
                }
            }
        }
        found
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The HTTP client the runner uses for its own (non-recorded) calls.
pub fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The leader id as node `addr` sees it, if it answers and knows one.
pub async fn leader_seen_by(http: &reqwest::Client, addr: &str) -> Option<u64> {
    let resp = http
        .get(format!("http://{addr}/leader"))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    body.get("leader_id")?.as_u64()
}

/// POST a fault route; true when the node accepted it.
pub async fn post_ok(http: &reqwest::Client, url: String) -> bool {
    match http.post(url).send().await {
        Ok(resp) => resp.status().is_success(),
        Err(_) => false,
    }
}

/// The node's local (stale) copy of `key`: Ok(None) when absent, Err when the node did not answer.
pub async fn stale_get(
    http: &reqwest::Client,
    addr: &str,
    key: &str,
) -> Result<Option<String>, String> {
    let resp = http
        .get(format!("http://{addr}/store/{key}?consistency=stale"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        200 => Ok(Some(resp.text().await.map_err(|e| e.to_string())?)),
        404 => Ok(None),
        s => Err(format!("status {s}")),
    }
}
