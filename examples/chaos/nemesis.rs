//! The nemesis: one fault at a time, held for a random while, then repaired.
//!
//! Faults: `kill -9` of a random node or of the leader (restarted on its data dir afterwards,
//! a quarter of the time on a new raft port, so the members must learn its new address),
//! a partition isolating a random node or the leader from all others (healed afterwards), and a
//! forced snapshot on a random node. With 5 or more nodes a kill or partition may take up to a
//! minority of nodes at once.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use crate::procs::{admin_client, leader_seen_by, post_ok, ProcCluster};

/// What the nemesis did, for the report.
#[derive(Default, Serialize, Clone)]
pub struct FaultCounts {
    pub kill: u64,
    pub kill_leader: u64,
    pub partition: u64,
    pub partition_leader: u64,
    pub snapshot: u64,
    pub restarts: u64,
    /// Restarts on a new raft port (part of `restarts`).
    pub moves: u64,
    /// Node processes that exited without being killed (always a bug).
    pub unexpected_exits: Vec<String>,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.kill + self.kill_leader + self.partition + self.partition_leader + self.snapshot
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
        for (id, status) in cluster.reap_unexpected_exits() {
            log(format!("node {id} exited on its own: {status}"));
            counts.unexpected_exits.push(format!("node {id}: {status}"));
            if cluster.restart(id).is_ok() {
                counts.restarts += 1;
            }
        }
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
                for id in ids {
                    if rng.random_bool(0.25) {
                        match cluster.move_raft_port(id) {
                            Ok(addr) => {
                                counts.moves += 1;
                                log(format!("node {id} comes back on raft address {addr}"));
                            }
                            Err(e) => log(format!("move of node {id} failed: {e}")),
                        }
                    }
                    match cluster.restart(id) {
                        Ok(()) => counts.restarts += 1,
                        Err(e) => log(format!("restart of node {id} failed: {e}")),
                    }
                }
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
    heal_all(cluster, &http).await;
    counts
}

/// Clear injected faults on every running node.
pub async fn heal_all(cluster: &ProcCluster, http: &reqwest::Client) {
    for id in cluster.running_ids() {
        post_ok(http, cluster.node(id).url("/fault/heal")).await;
    }
}
