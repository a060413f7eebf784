//! `RaftNode`: the cloneable handle an application (and the gRPC server) uses to talk to a node.
//!
//! Every call goes through the run loop's mailbox or reads the status it publishes; none holds a
//! lock on raft state. Calls that need the leader are forwarded to it over gRPC by the handle
//! itself (`submit`), so the run loop never waits on the network. Every call is bounded by a
//! deadline.

use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::address_book::AddressBook;
use super::mailbox::Command;
use super::status::{NodeStatus, PeerRole, Role, SoftStatus};
use super::submit::Submission;
use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::transport::ClientPool;

/// How long to wait for a leader to appear before asking again, at most.
/// How long a call waits for a just-spawned `run()` to take over before failing `NotRunning`.
const START_GRACE: Duration = Duration::from_secs(1);

pub(super) const LEADER_POLL_CAP: Duration = Duration::from_millis(200);

pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) addr: String,
    pub(crate) config: Config,
    pub(crate) mailbox: mpsc::Sender<Command>,
    pub(crate) status: watch::Receiver<SoftStatus>,
    /// True once the node has fully stopped (loop ended, storage closed, server down).
    pub(crate) stopped: watch::Receiver<bool>,
    /// True once `Raft::run` took over the node (its run loop reads the mailbox).
    pub(crate) started: watch::Receiver<bool>,
    pub(crate) peers: AddressBook,
    pub(crate) clients: ClientPool,
    pub(crate) query_handler: std::sync::RwLock<Option<QueryHandler>>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Faults injected into this node's raft traffic (tests only; see `FaultInjector`).
    pub(crate) faults: Arc<crate::transport::FaultInjector>,
    /// Test support: abort the next incoming snapshot stream after this many chunks (0 = off).
    pub(crate) cut_snapshot_stream_after: std::sync::atomic::AtomicU64,
}

/// A type-erased query handler: gets the state machine as `&dyn Any` and the query bytes.
pub(crate) type QueryHandler =
    Arc<dyn Fn(&dyn std::any::Any, &[u8]) -> Result<Vec<u8>> + Send + Sync>;

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
    ///
    /// For a command that must apply exactly once through retries, propose it in a
    /// [`Session`](crate::Session) instead (`RaftNode::session`).
    ///
    /// ```no_run
    /// # async fn demo(node: pontoon::RaftNode) -> pontoon::Result<()> {
    /// match node.propose(b"set x 1".to_vec()).await {
    ///     Ok(answer) => println!("applied: {answer:?}"), // what `apply` returned
    ///     Err(e) if e.is_retryable() => { /* not in the log: safe to send again */ }
    ///     Err(e) if e.outcome_unknown() => { /* may still apply: check before resending */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        self.submit(Submission::Entry(data)).await
    }

    /// `propose(entry.encode()?)`: the typed form, for entries that implement
    /// `AbstractLogEntry`. Answers what `apply` returned for it.
    pub async fn propose_entry<E: crate::AbstractLogEntry>(&self, entry: &E) -> Result<Vec<u8>> {
        self.propose(entry.encode()?).await
    }

    /// Propose on this node only; `NotLeader` when it is not the leader.
    pub async fn propose_local(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        self.submit_local(Submission::Entry(data), deadline).await
    }

    /// Reserve a new node id through the log (on the leader; forwarded from a follower). The id
    /// is computed when the reservation is applied, so a leader change never hands out one id
    /// twice, and ids of removed nodes are never reused.
    pub async fn reserve_id(&self, raft_addr: String) -> Result<u64> {
        let bytes = self.submit(Submission::ReserveId(raft_addr)).await?;
        let arr: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::Encoding(format!("reserved id answer of {} bytes", bytes.len())))?;
        Ok(u64::from_be_bytes(arr))
    }

    /// Propose a membership change (joint consensus with more than one change) and return the
    /// resulting `ConfState` once it is applied. `addrs` gives the addresses of added nodes.
    /// Works on any node (forwarded to the leader). Typed errors: `NotLeader`, `ChangeInProgress`,
    /// `UnknownNode`, `WouldLoseQuorum`.
    pub async fn change_config(&self, cc: ConfChangeV2, addrs: Peers) -> Result<ConfState> {
        let bytes = self.submit(Submission::ConfChange { cc, addrs }).await?;
        ConfState::parse_from_bytes(&bytes).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// Like `change_config`, on this node only (`NotLeader` when it is not the leader).
    pub async fn change_config_local(&self, cc: ConfChangeV2, addrs: Peers) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        self.submit_local(Submission::ConfChange { cc, addrs }, deadline)
            .await
    }

    /// Add `id` (reachable at `addr`) as a learner: it receives the log but does not vote.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<ConfState> {
        let cc = single_change(ConfChangeType::AddLearnerNode, id);
        self.change_config(cc, Peers::from([(id, addr)])).await
    }

    /// Make learner (or new node) `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<ConfState> {
        let cc = single_change(ConfChangeType::AddNode, id);
        self.change_config(cc, Peers::new()).await
    }

    /// Remove `id` from the cluster. Removing the leader first moves leadership to another
    /// voter (this node, when it is one), as etcd and hashicorp/raft do: a leader cannot
    /// remove itself.
    pub async fn remove_node(&self, id: u64) -> Result<ConfState> {
        if id != raft::INVALID_ID && self.get_leader_id() == id {
            if id == self.id() {
                // Do not hand over for a removal that would be refused anyway.
                self.check_own_removal(id).await?;
            }
            self.move_leadership_off(id).await?;
        }
        let cc = single_change(ConfChangeType::RemoveNode, id);
        self.change_config(cc, Peers::new()).await
    }

    /// Dry-run this leader's own removal (see `check_conf_change`'s `leader_leaves`).
    async fn check_own_removal(&self, id: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let cc = single_change(ConfChangeType::RemoveNode, id);
        self.request(Command::CheckConfChange { cc, reply }, rx)
            .await?
    }

    /// Hand leadership from `leader` (about to be removed) to another voter, and wait until
    /// this node sees the new leader.
    async fn move_leadership_off(&self, leader: u64) -> Result<()> {
        if leader == self.id() {
            return self.transfer_leader_to(None).await.map(|_| ());
        }
        let status = self.inspect().await?;
        let is_voter = |id: u64| {
            status
                .peers
                .iter()
                .any(|p| p.id == id && p.role == PeerRole::Voter)
        };
        let target = if is_voter(self.id()) {
            self.id()
        } else {
            status
                .peers
                .iter()
                .find(|p| p.id != leader && p.role == PeerRole::Voter)
                .map(|p| p.id)
                .ok_or_else(|| {
                    Error::WouldLoseQuorum(format!(
                        "node {leader} is the only voter; it cannot be removed"
                    ))
                })?
        };
        let addr = self
            .shared
            .peers
            .dial_addr(leader)
            .ok_or(Error::NotLeader {
                leader_id: Some(leader),
                leader_addr: None,
            })?;
        let mut client = self.shared.clients.get(&addr, &self.shared.config)?;
        let timeout = self.shared.config.propose_timeout;
        let asked = tokio::time::timeout(
            timeout,
            client.transfer_leader(crate::transport::pb::TransferLeaderRequest {
                cluster_id: self.shared.config.cluster_id.clone(),
                target,
            }),
        )
        .await
        .map_err(|_| Error::timeout(format!("leader transfer to {target}")))?
        .map_err(|s| Error::Transport(format!("{addr}: {}", s.message())))?;
        super::rpc_results::response_to_result(asked.into_inner())?;
        let mut seen = self.shared.status.clone();
        tokio::time::timeout(timeout, seen.wait_for(|s| s.leader_id == target))
            .await
            .map_err(|_| Error::timeout(format!("leader transfer to {target}")))?
            .map_err(|_| Error::ShuttingDown)?;
        Ok(())
    }

    /// Leave a joint configuration entered by a multi-change `change_config` with an explicit
    /// transition.
    pub async fn leave_joint(&self) -> Result<ConfState> {
        self.change_config(ConfChangeV2::default(), Peers::new())
            .await
    }

    /// Remove this node from the cluster and shut it down. A leader first hands leadership to
    /// the most up-to-date other voter.
    pub async fn leave(&self) -> Result<()> {
        if self.is_leader() {
            self.transfer_leader_to(None).await?;
        }
        // Tell the loop first, so the removal stops it cleanly (not with `Error::Removed`).
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        self.send_until(Command::Leaving(true), deadline).await?;
        if let Err(e) = self.remove_node(self.id()).await {
            // Definitely not removed: a removal someone else makes later is not one it asked for.
            if !e.outcome_unknown() {
                let _ = self.send_until(Command::Leaving(false), deadline).await;
            }
            return Err(e);
        }
        self.quit().await
    }

    /// A linearizable read barrier: returns a read index once this node (leader or follower) has
    /// applied up to it. Anything read from the local state machine afterwards reflects every
    /// write acknowledged before this call started. Concurrent calls share ReadIndex rounds.
    /// Fails with `Timeout` when no quorum confirms the leader within the propose timeout.
    pub async fn read_index(&self) -> Result<u64> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let (reply, rx) = oneshot::channel();
            self.send_until(Command::ReadIndex { reply }, deadline)
                .await?;
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(index))) => return Ok(index),
                Ok(Ok(Err(e))) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(backoff.min(deadline - Instant::now())).await;
                    backoff = (backoff * 2).min(LEADER_POLL_CAP);
                }
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => return Err(Error::ShuttingDown),
                Err(_) => return Err(Error::timeout("linearizable read")),
            }
        }
    }

    /// Run `f` on the state machine inside the run loop (type-erased; see `Raft::linearizable_read`).
    pub(crate) async fn query_erased<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn std::any::Any) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |fsm: &dyn std::any::Any| {
            let _ = tx.send(f(fsm));
        });
        self.request(Command::Query(job), rx).await
    }

    /// Install the handler the `Read` RPC (and `pontoon::client`'s `read`) runs on the state
    /// machine after a linearizable read barrier. See `Raft::set_query_handler`.
    pub(crate) fn set_query_handler_erased(&self, handler: QueryHandler) {
        *self
            .shared
            .query_handler
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// A linearizable read through the installed query handler (what the `Read` RPC serves).
    pub async fn read_query(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        let handler = self
            .shared
            .query_handler
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::InvalidRequest(
                    "this node has no query handler (Raft::set_query_handler)".into(),
                )
            })?;
        self.read_index().await?;
        self.query_erased(move |fsm| handler(fsm, &query)).await?
    }

    /// Start an election on this node now.
    pub async fn campaign(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Campaign { reply }, rx).await?
    }

    /// Hand leadership to `target` and wait until it has it. Must be called on the leader
    /// (`NotLeader` otherwise).
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        self.transfer_leader_to(Some(target)).await.map(|_| ())
    }

    /// Transfer to `target`, or to the most up-to-date other voter; returns the new leader.
    async fn transfer_leader_to(&self, target: Option<u64>) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        let target = self
            .request(Command::TransferLeader { target, reply }, rx)
            .await??;
        let mut status = self.shared.status.clone();
        tokio::time::timeout(
            self.shared.config.propose_timeout,
            status.wait_for(|s| s.leader_id == target),
        )
        .await
        .map_err(|_| Error::timeout(format!("leader transfer to {target}")))?
        .map_err(|_| Error::ShuttingDown)?;
        Ok(target)
    }

    /// The full status of this node (what `GET /debug` and `pontoon-cli debug node` show).
    pub async fn inspect(&self) -> Result<NodeStatus> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Inspect { reply }, rx).await
    }

    /// Take a snapshot now and compact the log below it, keeping `Config::compaction_margin`
    /// entries for followers slightly behind; returns the snapshot's index.
    pub async fn make_snapshot(&self) -> Result<u64> {
        let deadline = Instant::now() + self.shared.config.snapshot_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let (reply, rx) = oneshot::channel();
            match self
                .request_until(Command::MakeSnapshot { reply }, rx, deadline)
                .await?
            {
                // Another snapshot is being stored: wait for it, then take ours.
                Err(Error::NotReady(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LEADER_POLL_CAP);
                }
                other => return other,
            }
        }
    }

    /// Stop this node gracefully: the loop flushes and closes storage, the server stops (peers'
    /// message streams end with the loop; an in-flight RPC gets up to 2 s). Usually takes
    /// milliseconds. Returns once everything is down (or after the propose timeout). Stopping
    /// the leader makes the others elect a new one: `transfer_leader` first avoids the gap.
    pub async fn quit(&self) -> Result<()> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        // If the mailbox is closed the loop is already gone; just wait for the full stop.
        let _ = self.send_until(Command::Quit, deadline).await;
        let mut stopped = self.shared.stopped.clone();
        let waited = tokio::time::timeout_at(deadline, stopped.wait_for(|s| *s))
            .await
            .map(|_| ());
        waited.map_err(|_| Error::timeout("shutdown"))
    }

    /// Resolve once the node has fully stopped (after `quit` or a fatal error).
    pub async fn stopped(&self) {
        let mut stopped = self.shared.stopped.clone();
        // An error means the sender is gone, which only happens once the node is down.
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// This node's metrics in the Prometheus text format (what memstore serves at `/metrics`).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Fault injection for tests: partition this node from peers, drop or delay its messages.
    /// Only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &crate::transport::FaultInjector {
        &self.shared.faults
    }

    /// Fault injection for tests: abort the next snapshot stream this node receives after
    /// `chunks` chunks, as a broken connection would. The sender must retry.
    #[doc(hidden)]
    pub fn cut_next_snapshot_stream_after(&self, chunks: u64) {
        self.shared
            .cut_snapshot_stream_after
            .store(chunks, std::sync::atomic::Ordering::Release);
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

    pub(super) async fn send_until(&self, cmd: Command, deadline: Instant) -> Result<()> {
        if !*self.shared.started.borrow() {
            // `run()` may have just been spawned; it takes over within moments. A node whose
            // `run()` was never spawned would leave the caller waiting out its whole timeout
            // for an answer nobody will give.
            let mut started = self.shared.started.clone();
            let wait = tokio::time::timeout(START_GRACE, started.wait_for(|s| *s)).await;
            if !matches!(wait, Ok(Ok(_))) {
                return Err(Error::NotRunning);
            }
        }
        match tokio::time::timeout_at(deadline, self.shared.mailbox.send(cmd)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::timeout("node mailbox is full")),
        }
    }

    async fn request<T>(&self, cmd: Command, rx: oneshot::Receiver<T>) -> Result<T> {
        let deadline = Instant::now() + self.shared.config.rpc_timeout;
        self.request_until(cmd, rx, deadline).await
    }

    async fn request_until<T>(
        &self,
        cmd: Command,
        rx: oneshot::Receiver<T>,
        deadline: Instant,
    ) -> Result<T> {
        self.send_until(cmd, deadline).await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::timeout("request to the run loop")),
        }
    }
}

pub(crate) fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = node_id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}
