//! Simulated clients: each puts and reads a few keys on whichever node it picks, with a
//! timeout, and records every operation (invoked and completed in simulated time, with its
//! outcome) for the checks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::checks::linearizability::{Op, OpKind, Outcome};
use super::kv::{Put, SimKv};
use crate::error::Error;
use crate::node::RaftNode;

/// The nodes clients can reach right now (running, not paused or paused alike: a client does
/// not know a process is paused).
pub type Directory = Arc<Mutex<BTreeMap<u64, RaftNode>>>;

/// Everything the clients recorded.
#[derive(Default)]
pub struct Recorded {
    /// Every operation, in completion order.
    pub ops: Vec<Op>,
    /// Errors a proposal answered that the README's error table does not list.
    pub unexpected: Vec<String>,
}

/// Shared by the clients of one run.
#[derive(Clone)]
pub struct Workload {
    /// Where clients find nodes.
    pub directory: Directory,
    /// What they recorded.
    pub recorded: Arc<Mutex<Recorded>>,
    /// The run's time origin.
    pub origin: Instant,
    /// Clients stop starting operations at this instant.
    pub stop_at: Instant,
    /// How many keys they share.
    pub keys: usize,
    /// How long a client waits for an answer.
    pub timeout: Duration,
}

impl Workload {
    fn now_ns(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_nanos() as u64
    }

    fn record(&self, op: Op) {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ops
            .push(op);
    }

    /// Client `client`'s loop: operations until `stop_at`, drawn from `rng`.
    pub async fn client(self, client: u64, mut rng: StdRng) {
        let mut written = 0u64;
        let mut leader_hint: Option<u64> = None;
        while Instant::now() < self.stop_at {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            let node = {
                let nodes = self.directory.lock().unwrap_or_else(|p| p.into_inner());
                let hinted = leader_hint.and_then(|id| nodes.get(&id)).cloned();
                match hinted {
                    Some(node) if rng.random_bool(0.8) => Some(node),
                    _ if nodes.is_empty() => None,
                    _ => nodes
                        .values()
                        .nth(rng.random_range(0..nodes.len()))
                        .cloned(),
                }
            };
            let Some(node) = node else {
                continue;
            };
            let key = format!("k{}", rng.random_range(0..self.keys));
            let invoke_ns = self.now_ns();
            if rng.random_bool(0.6) {
                written += 1;
                let value = format!("c{client}-{written}");
                let put = Put {
                    key: key.clone(),
                    value: value.clone(),
                };
                let answer = tokio::time::timeout(self.timeout, node.propose_local(put.encode()))
                    .await
                    .unwrap_or_else(|_| Err(Error::write_timeout("simulated client")));
                let outcome = match answer {
                    Ok(_) => Outcome::Ok,
                    Err(e) => {
                        if let Error::NotLeader {
                            leader_id: Some(id),
                            ..
                        } = &e
                        {
                            leader_hint = Some(*id);
                        }
                        match proposal_outcome(&e) {
                            Some(outcome) => outcome,
                            None => {
                                self.recorded
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .unexpected
                                    .push(format!("client {client}, write {value}: {e}"));
                                Outcome::Unknown
                            }
                        }
                    }
                };
                self.record(Op {
                    client,
                    key,
                    kind: OpKind::Write { value },
                    invoke_ns,
                    complete_ns: self.now_ns(),
                    outcome,
                });
            } else {
                let read = {
                    let key = key.clone();
                    async move {
                        node.read_index().await?;
                        node.query_erased(move |fsm| {
                            fsm.downcast_ref::<SimKv>()
                                .map(|kv| kv.map.get(&key).cloned())
                        })
                        .await
                    }
                };
                let answer = tokio::time::timeout(self.timeout, read).await;
                let (value, outcome) = match answer {
                    Ok(Ok(Some(value))) => (value, Outcome::Ok),
                    Ok(Ok(None)) => (None, Outcome::Fail),
                    Ok(Err(e)) if e.outcome_unknown() => (None, Outcome::Unknown),
                    Ok(Err(_)) => (None, Outcome::Fail),
                    Err(_) => (None, Outcome::Unknown),
                };
                self.record(Op {
                    client,
                    key,
                    kind: OpKind::Read { value },
                    invoke_ns,
                    complete_ns: self.now_ns(),
                    outcome,
                });
            }
        }
    }
}

/// What a proposal's error says about its entry, per the README's error table: `None` for an
/// error the table does not list.
///
/// Definite (the entry is not in the log, and never will be): `NotLeader`, `NoLeader`,
/// `ProposalDropped`, `NotRunning`, and the errors that mean the proposal never reached the run
/// loop (`ShuttingDown`: its mailbox is closed; `Busy`; a `Timeout` without `outcome_unknown`:
/// the mailbox was full). Unknown: `outcome_unknown()`.
pub fn proposal_outcome(e: &Error) -> Option<Outcome> {
    if e.outcome_unknown() {
        return Some(Outcome::Unknown);
    }
    match e {
        Error::NotLeader { .. }
        | Error::NoLeader
        | Error::ProposalDropped(_)
        | Error::NotRunning
        | Error::ShuttingDown
        | Error::Busy(_)
        | Error::Timeout { .. } => Some(Outcome::Fail),
        _ => None,
    }
}
