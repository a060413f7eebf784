//! `RaftNode`: the cloneable handle an application (and the gRPC server) uses to talk to a node.
//!
//! Every call goes through the run loop's mailbox or reads the status it publishes; none holds a
//! lock on raft state. Calls that need the leader are forwarded to it over gRPC by the handle
//! itself, so the run loop never waits on the network. Every call is bounded by a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::mailbox::Command;
use super::status::{NodeStatus, Role, SoftStatus};
use crate::client::ClientPool;
use crate::cluster::AddressBook;
use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::transport::pb;

/// How long to wait for a leader to appear before asking again, at most.
const LEADER_POLL_CAP: Duration = Duration::from_millis(200);

pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) addr: String,
    pub(crate) config: Config,
    pub(crate) mailbox: mpsc::Sender<Command>,
    pub(crate) status: watch::Receiver<SoftStatus>,
    /// True once the node has fully stopped (loop ended, storage closed, server down).
    pub(crate) stopped: watch::Receiver<bool>,
    pub(crate) peers: AddressBook,
    pub(crate) clients: ClientPool,
}

/// A handle to one running node. Cheap to clone; every clone talks to the same node.
#[derive(Clone)]
pub struct RaftNode {
    pub(crate) shared: Arc<Shared>,
}

impl RaftNode {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// This node's raft address.
    pub fn raft_addr(&self) -> &str {
        &self.shared.addr
    }

    /// The cluster this node belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.shared.config.cluster_id
    }

    /// Role, term, leader, commit and applied index as of the loop's last turn.
    pub fn status(&self) -> SoftStatus {
        self.shared.status.borrow().clone()
    }

    /// The leader's id, or 0 when none is known.
    pub fn get_leader_id(&self) -> u64 {
        self.shared.status.borrow().leader_id
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.shared.status.borrow().role == Role::Leader
    }

    /// The address book: every member's id and raft address.
    pub fn get_peers(&self) -> Peers {
        self.shared.peers.to_peers()
    }

    /// Wait until some leader is known and return its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        let mut rx = self.shared.status.clone();
        let found = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.leader_id != 0 || s.role == Role::Stopped),
        )
        .await
        .map_err(|_| Error::NoLeader)?
        .map_err(|_| Error::ShuttingDown)?
        .clone();
        if found.role == Role::Stopped {
            return Err(Error::ShuttingDown);
        }
        Ok(found.leader_id)
    }

    /// Propose `data` to the cluster and return what the state machine's `apply` returned for it.
    ///
    /// Works on any node: a follower forwards the proposal to the leader. Errors:
    /// - `NoLeader` / `NotLeader` / `ProposalDropped`: the entry is not in the log; safe to retry.
    /// - `Timeout` / `OutcomeUnknown`: the entry may still be committed and applied later. A client
    ///   must not treat these as failures of a non-idempotent command.
    /// - `StateMachine`: the entry was committed and `apply` returned an error.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let outcome = match self.propose_local_until(data.clone(), deadline).await {
                Err(Error::NotLeader {
                    leader_id: Some(leader),
                    ..
                }) if leader != self.id() => self.forward_propose(leader, &data, deadline).await,
                other => other,
            };
            match outcome {
                Err(Error::NotLeader { .. }) | Err(Error::NoLeader) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::NoLeader);
                    }
                    // Wait for the leader to change (or a short while) and try again.
                    let pause = backoff.min(deadline - now);
                    let mut rx = self.shared.status.clone();
                    let _ = tokio::time::timeout(pause, rx.changed()).await;
                    backoff = (backoff * 2).min(LEADER_POLL_CAP);
                }
                other => return other,
            }
        }
    }

    /// Propose on this node only; `NotLeader` when it is not the leader.
    pub async fn propose_local(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        self.propose_local_until(data, deadline).await
    }

    async fn propose_local_until(&self, data: Vec<u8>, deadline: Instant) -> Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.send_until(Command::Propose { data, reply }, deadline)
            .await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::OutcomeUnknown("the node stopped".into())),
            Err(_) => Err(Error::Timeout("proposal".into())),
        }
    }

    async fn forward_propose(
        &self,
        leader: u64,
        data: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let addr = self
            .shared
            .peers
            .get(leader)
            .ok_or_else(|| Error::NotLeader {
                leader_id: None,
                leader_addr: None,
            })?;
        let mut client = self.shared.clients.get(&addr, &self.shared.config)?;
        let request = pb::ProposeRequest {
            cluster_id: self.shared.config.cluster_id.clone(),
            data: data.to_vec(),
        };
        let response = match tokio::time::timeout_at(deadline, client.propose(request)).await {
            Err(_) => return Err(Error::Timeout("forwarded proposal".into())),
            Ok(Err(status))
                if status.code() == tonic::Code::Unavailable && is_connect_error(&status) =>
            {
                // The leader could not be reached at all: nothing was handed over.
                return Err(Error::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                });
            }
            Ok(Err(status)) => return Err(status_to_error(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        match pb::ProposeStatus::try_from(response.status) {
            Ok(pb::ProposeStatus::Ok) => Ok(response.result),
            Ok(pb::ProposeStatus::NotLeader) => Err(Error::NotLeader {
                leader_id: (response.leader_id != 0).then_some(response.leader_id),
                leader_addr: (!response.leader_addr.is_empty()).then_some(response.leader_addr),
            }),
            Ok(pb::ProposeStatus::Dropped) => Err(Error::ProposalDropped(response.error)),
            Ok(pb::ProposeStatus::ApplyFailed) => Err(Error::StateMachine(response.error)),
            Ok(pb::ProposeStatus::UnknownOutcome) => Err(Error::OutcomeUnknown(response.error)),
            Ok(pb::ProposeStatus::Rejected) => Err(Error::InvalidRequest(response.error)),
            Ok(pb::ProposeStatus::ShuttingDown) => Err(Error::NotLeader {
                leader_id: None,
                leader_addr: None,
            }),
            Err(_) => Err(Error::OutcomeUnknown(format!(
                "leader answered an unknown status {}",
                response.status
            ))),
        }
    }

    /// Start an election on this node now.
    pub async fn campaign(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Campaign { reply }, rx).await?
    }

    /// Hand leadership to `target` and wait until it has it. Must be called on the leader
    /// (`NotLeader` otherwise).
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::TransferLeader { target, reply }, rx)
            .await??;
        let mut status = self.shared.status.clone();
        tokio::time::timeout(
            self.shared.config.propose_timeout,
            status.wait_for(|s| s.leader_id == target),
        )
        .await
        .map_err(|_| Error::Timeout(format!("leader transfer to {target}")))?
        .map_err(|_| Error::ShuttingDown)?;
        Ok(())
    }

    /// The full status of this node (what `GET /debug` and `pontoon-cli debug node` show).
    pub async fn inspect(&self) -> Result<NodeStatus> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Inspect { reply }, rx).await
    }

    /// Take a snapshot now and compact the log below it; returns the snapshot's index.
    pub async fn make_snapshot(&self) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::MakeSnapshot { reply }, rx).await?
    }

    /// Stop this node gracefully: the loop flushes and closes storage, the server stops.
    /// Returns once everything is down (or after the propose timeout).
    pub async fn quit(&self) -> Result<()> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        // If the mailbox is closed the loop is already gone; just wait for the full stop.
        let _ = self.send_until(Command::Quit, deadline).await;
        let mut stopped = self.shared.stopped.clone();
        let waited = tokio::time::timeout_at(deadline, stopped.wait_for(|s| *s))
            .await
            .map(|_| ());
        waited.map_err(|_| Error::Timeout("shutdown".into()))
    }

    /// Resolve once the node has fully stopped (after `quit` or a fatal error).
    pub async fn stopped(&self) {
        let mut stopped = self.shared.stopped.clone();
        // An error means the sender is gone, which only happens once the node is down.
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// True once the node has fully stopped.
    pub fn is_stopped(&self) -> bool {
        *self.shared.stopped.borrow()
    }

    /// Hand an inbound raft message to the loop (used by the gRPC server). Waits while the
    /// mailbox is full, which pushes back on the sending peer.
    pub(crate) async fn deliver(&self, msg: raft::eraftpb::Message) -> Result<()> {
        self.shared
            .mailbox
            .send(Command::Raft(Box::new(msg)))
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    async fn send_until(&self, cmd: Command, deadline: Instant) -> Result<()> {
        match tokio::time::timeout_at(deadline, self.shared.mailbox.send(cmd)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Timeout("node mailbox is full".into())),
        }
    }

    async fn request<T>(&self, cmd: Command, rx: oneshot::Receiver<T>) -> Result<T> {
        let deadline = Instant::now() + self.shared.config.rpc_timeout;
        self.send_until(cmd, deadline).await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Timeout("request to the run loop".into())),
        }
    }
}

fn is_connect_error(status: &tonic::Status) -> bool {
    // tonic reports a failed connection attempt as Unavailable with a transport error source.
    let msg = status.message().to_ascii_lowercase();
    msg.contains("connect") || msg.contains("refused") || msg.contains("dns")
}

/// Map a gRPC status from a peer to pontoon's error.
pub(crate) fn status_to_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::PermissionDenied => Error::ClusterMismatch {
            local: String::new(),
            remote: status.message().to_string(),
        },
        tonic::Code::InvalidArgument => Error::InvalidRequest(status.message().to_string()),
        _ => Error::OutcomeUnknown(format!("transport: {status}")),
    }
}
