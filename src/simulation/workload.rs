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
use crate::node::{RaftNode, SessionCommand};

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
    /// Session writes retried after an unknown outcome and then answered.
    pub session_retries: usize,
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
    /// Odd-numbered clients write through sessions (see `session_write`).
    pub sessions: bool,
}

/// How many attempts a session client makes for one write before it records the outcome as
/// unknown (it applied at most once). Bounded so a run always ends.
const SESSION_ATTEMPTS: u32 = 40;

/// How long after `stop_at` a session client may still retry a write: faults are healed only
/// once every client has finished, so a client must not wait for that.
const SESSION_RETRY_GRACE: Duration = Duration::from_secs(5);

/// A session client's session: its id, and the last number it used.
struct ClientSession {
    id: u64,
    seq: u64,
}

impl Workload {
    fn now_ns(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_nanos() as u64
    }

    /// What the clients recorded so far (a client that panicked mid-record leaves it usable).
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, op: Op) {
        self.recorded().ops.push(op);
    }

    /// A node to send to: the hinted leader most of the time, otherwise any.
    fn pick_node(&self, rng: &mut StdRng, leader_hint: Option<u64>) -> Option<RaftNode> {
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
    }

    /// Client `client`'s loop: operations until `stop_at`, drawn from `rng`.
    pub async fn client(self, client: u64, mut rng: StdRng) {
        let mut written = 0u64;
        let mut leader_hint: Option<u64> = None;
        let mut session: Option<ClientSession> = None;
        let uses_session = self.sessions && client % 2 == 1;
        while Instant::now() < self.stop_at {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            let Some(node) = self.pick_node(&mut rng, leader_hint) else {
                continue;
            };
            let key = format!("k{}", rng.random_range(0..self.keys));
            let invoke_ns = self.now_ns();
            // One draw decides write or read, for plain and session clients alike, so a run
            // without sessions draws exactly what it drew before sessions existed.
            let write = rng.random_bool(0.6);
            if write && uses_session {
                written += 1;
                let value = format!("c{client}-{written}");
                let put = Put {
                    key: key.clone(),
                    value: value.clone(),
                };
                let outcome = self
                    .session_write(client, &mut rng, &mut leader_hint, &mut session, &put)
                    .await;
                self.record(Op {
                    client,
                    key,
                    kind: OpKind::Write { value },
                    invoke_ns,
                    complete_ns: self.now_ns(),
                    outcome,
                });
            } else if write {
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
                        note_leader(&e, &mut leader_hint);
                        match proposal_outcome(&e) {
                            Some(outcome) => outcome,
                            None => {
                                self.recorded()
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

impl Workload {
    /// One write through the client's session (opened first if it has none): the same number is
    /// sent again, to whichever node the client picks, after every answer that is not
    /// definite, until one is (or `SESSION_ATTEMPTS` run out). The nodes' one-node calls are
    /// used, as for plain writes: the simulation has no gRPC forwarding.
    ///
    /// Outcomes: `Ok` once answered; `Fail` for a definite refusal of every attempt; `Unknown`
    /// when an attempt's outcome was unknown and no later one was definite about the write.
    async fn session_write(
        &self,
        client: u64,
        rng: &mut StdRng,
        leader_hint: &mut Option<u64>,
        session: &mut Option<ClientSession>,
        put: &Put,
    ) -> Outcome {
        let mut maybe_applied = false;
        let mut header: Option<SessionCommand> = None;
        for attempt in 0..SESSION_ATTEMPTS {
            if attempt > 0 && Instant::now() >= self.stop_at + SESSION_RETRY_GRACE {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
            }
            let Some(node) = self.pick_node(rng, *leader_hint) else {
                continue;
            };
            if session.is_none() {
                let opened = tokio::time::timeout(self.timeout, node.open_session_local(0))
                    .await
                    .unwrap_or_else(|_| Err(Error::write_timeout("simulated session opening")))
                    .and_then(|answer| crate::node::decode_opened(&answer));
                match opened {
                    Ok((id, _window)) => *session = Some(ClientSession { id, seq: 0 }),
                    Err(e) => {
                        note_leader(&e, leader_hint);
                        continue;
                    }
                }
            }
            let Some(open) = session.as_mut() else {
                continue;
            };
            // One write in flight per client: every earlier number has its final answer.
            let command = *header.get_or_insert_with(|| {
                open.seq += 1;
                SessionCommand {
                    session: open.id,
                    seq: open.seq,
                    acked: open.seq - 1,
                }
            });
            let answer = tokio::time::timeout(
                self.timeout,
                node.propose_in_session_local(command, put.encode()),
            )
            .await
            .unwrap_or_else(|_| Err(Error::write_timeout("simulated session client")));
            match answer {
                Ok(_) => {
                    if maybe_applied {
                        self.recorded().session_retries += 1;
                    }
                    return Outcome::Ok;
                }
                Err(Error::SessionExpired(_)) => {
                    // The session is gone: this write is decided (refused), and the next one
                    // opens a new session.
                    *session = None;
                    return if maybe_applied {
                        Outcome::Unknown
                    } else {
                        Outcome::Fail
                    };
                }
                Err(e) => {
                    note_leader(&e, leader_hint);
                    match proposal_outcome(&e) {
                        Some(Outcome::Unknown) => maybe_applied = true,
                        Some(_) => {}
                        None => {
                            self.recorded()
                                .unexpected
                                .push(format!("client {client}, session write {}: {e}", put.value));
                            return Outcome::Unknown;
                        }
                    }
                }
            }
        }
        if maybe_applied {
            Outcome::Unknown
        } else {
            Outcome::Fail
        }
    }
}

/// Remember the leader a `NotLeader` answer names.
fn note_leader(e: &Error, leader_hint: &mut Option<u64>) {
    if let Error::NotLeader {
        leader_id: Some(id),
        ..
    } = e
    {
        *leader_hint = Some(*id);
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
