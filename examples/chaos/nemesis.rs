//! The nemesis: one fault at a time, held for a random while, then repaired.
//!
//! Faults: `kill -9` of a random node or of the leader (restarted on its data dir afterwards,
//! a quarter of the time on a new raft port, so the members must learn its new address),
//! a partition isolating a random node or the leader from all others (healed afterwards), and a
//! forced snapshot on a random node. With 5 or more nodes a kill or partition may take up to a
//! minority of nodes at once.
//!
//! With LazyFS under the data dirs (`--lazyfs`), also power cuts: of one node (random or the
//! leader: `kill -9`, its LazyFS cache dropped, restarted on the same data dir) and of the whole
//! cluster (every node killed, every cache dropped, all restarted).
//!
//! Every restart must come back: a node that exits soon after it was started, or does not answer
//! HTTP within [`RESTART_LIMIT`], is a restart failure (its log's last lines are printed), and
//! fails the run.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use crate::procs::{admin_client, leader_seen_by, post_ok, ProcCluster};

/// How long a restarted node has to answer HTTP.
pub const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// Node log lines printed when a node fails.
const LOG_LINES: usize = 30;

/// What the nemesis did, for the report.
#[derive(Default, Serialize, Clone)]
pub struct FaultCounts {
    pub kill: u64,
    pub kill_leader: u64,
    pub partition: u64,
    pub partition_leader: u64,
    pub snapshot: u64,
    /// Power cuts of one node (LazyFS only): a node other than the leader, and the leader.
    pub power_cut: u64,
    pub power_cut_leader: u64,
    /// Power cuts of the whole cluster (LazyFS only).
    pub power_cut_all: u64,
    pub restarts: u64,
    /// Restarts on a new raft port (part of `restarts`).
    pub moves: u64,
    /// Node processes that exited without being killed (always a bug).
    pub unexpected_exits: Vec<String>,
    /// Restarts that did not come back: the node exited soon after, never answered, or could
    /// not be started (always a failure).
    pub restart_failures: Vec<String>,
    /// Faults the nemesis could not inject (e.g. LazyFS did not confirm a cache clear).
    pub fault_errors: Vec<String>,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.kill
            + self.kill_leader
            + self.partition
            + self.partition_leader
            + self.snapshot
            + self.power_cut
            + self.power_cut_leader
            + self.power_cut_all
    }
}

/// Start stopped nodes `ids` again and wait until each answers; record what did not come back.
/// A node that exited is started once more (that start is checked by the next reap), so one
/// failure does not leave it down for the rest of the run.
async fn bring_back(
    cluster: &mut ProcCluster,
    http: &reqwest::Client,
    ids: &[u64],
    counts: &mut FaultCounts,
    log: &mut impl FnMut(String),
) {
    let mut started = Vec::new();
    for &id in ids {
        match cluster.restart(id) {
            Ok(()) => {
                counts.restarts += 1;
                started.push(id);
            }
            Err(e) => {
                log(format!("restart of node {id} failed: {e}"));
                counts.restart_failures.push(format!("node {id}: {e}"));
            }
        }
    }
    for id in started {
        if let Err(e) = cluster.await_answer(id, http, RESTART_LIMIT).await {
            log(format!(
                "RESTART FAILED: {e}; last lines of its log:\n{}",
                cluster.log_tail(id, LOG_LINES)
            ));
            counts.restart_failures.push(e);
            if !cluster.node(id).is_running() && cluster.restart(id).is_ok() {
                counts.restarts += 1;
            }
        }
    }
}

/// Record nodes that exited on their own (with their log's last lines) and start them again.
fn reap(cluster: &mut ProcCluster, counts: &mut FaultCounts, log: &mut impl FnMut(String)) {
    for (id, status) in cluster.reap_unexpected_exits() {
        log(format!(
            "NODE {id} EXITED ON ITS OWN: {status}; last lines of its log:\n{}",
            cluster.log_tail(id, LOG_LINES)
        ));
        counts.unexpected_exits.push(format!("node {id}: {status}"));
        match cluster.restart(id) {
            Ok(()) => counts.restarts += 1,
            Err(e) => counts.restart_failures.push(format!("node {id}: {e}")),
        }
    }
}

/// The leader as seen by any running node.
async fn current_leader(cluster: &ProcCluster, http: &reqwest::Client) -> Option<u64> {
    for id in cluster.running_ids() {
        if let Some(leader) = leader_seen_by(http, &cluster.node(id).http_addr).await {
            return Some(leader);
        }
    }
    None
}

/// Choose up to `max` victims among running nodes; the leader first when `leader` is set.
fn victims(cluster: &ProcCluster, leader: Option<u64>, max: usize, rng: &mut StdRng) -> Vec<u64> {
    let mut ids = cluster.running_ids();
    ids.shuffle(rng);
    if let Some(l) = leader {
        if let Some(pos) = ids.iter().position(|&i| i == l) {
            ids.swap(0, pos);
        }
    }
    let count = rng.random_range(1..=max.max(1));
    ids.truncate(count);
    ids
}

/// Run faults until `deadline`, then leave every node running and healed.
pub async fn run(
    cluster: &mut ProcCluster,
    deadline: Instant,
    seed: u64,
    log: &mut impl FnMut(String),
) -> FaultCounts {
    let http = admin_client();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = FaultCounts::default();
    let n = cluster.nodes.len();
    let max_victims = (n - 1) / 2;
    while Instant::now() < deadline {
        // Quiet time between faults, so the cluster recovers and the workload makes progress.
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        reap(cluster, &mut counts, log);
        if Instant::now() >= deadline {
            break;
        }
        let hold = Duration::from_millis(rng.random_range(500..3000));
        let target_leader = rng.random_bool(0.5);
        let leader = if target_leader {
            current_leader(cluster, &http).await
        } else {
            None
        };
        // With LazyFS, 4 faults in 10 are power cuts: 3 of one node, 1 of the whole cluster.
        let cut = if cluster.has_lazyfs() {
            rng.random_range(0..10)
        } else {
            10
        };
        if cut < 4 {
            let ids = if cut < 3 {
                victims(cluster, leader, 1, &mut rng)
            } else {
                cluster.running_ids()
            };
            for &id in &ids {
                cluster.kill(id);
            }
            let mut cut_ok = true;
            for &id in &ids {
                if let Err(e) = cluster.clear_cache(id).await {
                    log(format!("POWER CUT FAILED: {e}"));
                    counts.fault_errors.push(e);
                    cut_ok = false;
                }
            }
            let hit_leader = leader.is_some_and(|l| ids.contains(&l));
            if cut == 3 {
                counts.power_cut_all += 1;
            } else if hit_leader {
                counts.power_cut_leader += 1;
            } else {
                counts.power_cut += 1;
            }
            log(format!(
                "power cut {}{ids:?}{}{} for {hold:?}",
                if cut == 3 {
                    "of the whole cluster "
                } else {
                    ""
                },
                if hit_leader && cut < 3 {
                    " (leader)"
                } else {
                    ""
                },
                if cut_ok { "" } else { " (cache clear FAILED)" }
            ));
            tokio::time::sleep(hold).await;
            bring_back(cluster, &http, &ids, &mut counts, log).await;
            continue;
        }
        match rng.random_range(0..10) {
            0..=4 => {
                let ids = victims(cluster, leader, max_victims, &mut rng);
                for &id in &ids {
                    cluster.kill(id);
                }
                let hit_leader = leader.is_some_and(|l| ids.contains(&l));
                if hit_leader {
                    counts.kill_leader += 1;
                } else {
                    counts.kill += 1;
                }
                log(format!(
                    "kill -9 {ids:?}{} for {hold:?}",
                    if hit_leader { " (leader)" } else { "" }
                ));
                tokio::time::sleep(hold).await;
                for &id in &ids {
                    if rng.random_bool(0.25) {
                        match cluster.move_raft_port(id) {
                            Ok(addr) => {
                                counts.moves += 1;
                                log(format!("node {id} comes back on raft address {addr}"));
                            }
                            Err(e) => log(format!("move of node {id} failed: {e}")),
                        }
                    }
                }
                bring_back(cluster, &http, &ids, &mut counts, log).await;
            }
            5..=8 => {
                let ids = victims(cluster, leader, max_victims, &mut rng);
                let all: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
                for &id in &ids {
                    let others: Vec<String> = all
                        .iter()
                        .filter(|o| !ids.contains(o))
                        .map(|o| o.to_string())
                        .collect();
                    let url = cluster
                        .node(id)
                        .url(&format!("/fault/partition/{}", others.join(",")));
                    post_ok(&http, url).await;
                }
                let hit_leader = leader.is_some_and(|l| ids.contains(&l));
                if hit_leader {
                    counts.partition_leader += 1;
                } else {
                    counts.partition += 1;
                }
                log(format!(
                    "partition {ids:?}{} from the rest for {hold:?}",
                    if hit_leader { " (leader)" } else { "" }
                ));
                tokio::time::sleep(hold).await;
                heal_all(cluster, &http).await;
            }
            _ => {
                let ids = cluster.running_ids();
                if let Some(&id) = ids.get(rng.random_range(0..ids.len().max(1))) {
                    post_ok(&http, cluster.node(id).url("/snapshot")).await;
                    counts.snapshot += 1;
                    log(format!("snapshot on node {id}"));
                }
            }
        }
    }
    reap(cluster, &mut counts, log);
    heal_all(cluster, &http).await;
    counts
}

/// Clear injected faults on every running node.
pub async fn heal_all(cluster: &ProcCluster, http: &reqwest::Client) {
    for id in cluster.running_ids() {
        post_ok(http, cluster.node(id).url("/fault/heal")).await;
    }
}
