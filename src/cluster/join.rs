//! Joining a running cluster: `Raft::request_id` hands out a `JoinTicket`, and
//! `RaftNode::join_cluster` turns the ticketed node into a learner, waits for it to catch up, and
//! promotes it to voter.
//!
//! The id in a ticket is reserved through the log (`FrameworkEntry::ReserveId`): it is computed
//! when the reservation is applied, from the highest id ever admitted or reserved, so a leader
//! failover never hands out the same id twice and a removed node's id is never reused.

use std::collections::VecDeque;
use std::time::Duration;

use raft::eraftpb::ConfChangeType;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::node::{describe_status, PeerRole};
use crate::node::{
    is_connect_error, response_to_result, single_change, Command, NodeStatus, RaftNode,
};
use crate::transport::connect_lazy;
use crate::transport::pb;

/// What a new node needs to join: its reserved id and how to reach the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    /// The id the cluster reserved for the new node; bootstrap it with this id.
    pub reserved_id: u64,
    /// The raft address the new node announced.
    pub raft_addr: String,
    /// The leader when the ticket was issued (0 if unknown).
    pub leader_id: u64,
    /// That leader's raft address (empty if unknown): where the joining node asks first.
    pub leader_addr: String,
    /// Every member's address when the ticket was issued.
    pub peers: Peers,
    /// The cluster the ticket belongs to; the joining node's `Config::cluster_id` must match.
    pub cluster_id: String,
}

const POLL: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_millis(500);

impl<F: crate::AbstractStateMachine> crate::Raft<F> {
    /// Ask the cluster member at `peer_addr` (any member: followers forward to the leader) to
    /// reserve a node id for a new node that will listen on `raft_addr`.
    pub async fn request_id(
        raft_addr: impl Into<String>,
        peer_addr: impl Into<String>,
    ) -> Result<JoinTicket> {
        request_id_with(&Config::default(), raft_addr.into(), peer_addr.into()).await
    }
}

/// `Raft::request_id` with explicit timeouts, and with `config`'s TLS material and join token.
/// When `config.cluster_id` is not the default, it also checks that the member belongs to that
/// cluster. A cluster with a join token answers a missing or different one with
/// `Error::Unauthorized` and reserves nothing.
pub async fn request_id_with(
    config: &Config,
    raft_addr: String,
    peer_addr: String,
) -> Result<JoinTicket> {
    let mut client = connect_lazy(&peer_addr, config)?;
    let cluster_id = if config.cluster_id == Config::default().cluster_id {
        String::new()
    } else {
        config.cluster_id.clone()
    };
    let reply = tokio::time::timeout(
        config.propose_timeout + config.rpc_timeout,
        client.request_id(pb::RequestIdRequest {
            cluster_id: cluster_id.clone(),
            raft_addr: raft_addr.clone(),
            join_token: config.join_token.clone().unwrap_or_default(),
        }),
    )
    .await
    .map_err(|_| Error::write_timeout(format!("id request to {peer_addr}")))?
    .map_err(|s| rpc_error(&format!("id request to {peer_addr}"), s))?
    .into_inner();
    let reserved_id = reserved_id_from(reply)?;
    let peers_reply = tokio::time::timeout(
        config.rpc_timeout,
        client.get_peers(pb::GetPeersRequest { cluster_id }),
    )
    .await
    .map_err(|_| Error::timeout(format!("peer list from {peer_addr}")))?
    .map_err(|s| rpc_error(&format!("peer list from {peer_addr}"), s))?
    .into_inner();
    ticket_from(reserved_id, raft_addr, peers_reply)
}

/// The id a `RequestId` answer reserves: a big-endian u64, never 0 (raft's "no node").
pub(crate) fn reserved_id_from(reply: pb::ProposeResponse) -> Result<u64> {
    let bytes = response_to_result(reply)?;
    let arr: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Error::Encoding(format!("reserved id answer of {} bytes", bytes.len())))?;
    match u64::from_be_bytes(arr) {
        0 => Err(Error::Encoding("reserved id is 0".into())),
        id => Ok(id),
    }
}

/// Build the ticket from the reserved id and the member's `GetPeers` answer, refusing a peer list
/// that names node 0 or already holds the reserved id.
pub(crate) fn ticket_from(
    reserved_id: u64,
    raft_addr: String,
    peers_reply: pb::GetPeersResponse,
) -> Result<JoinTicket> {
    let peers: Peers = peers_reply.peers.into_iter().collect();
    if peers.contains_key(&0) {
        return Err(Error::Encoding(
            "peer list names node 0, which is no node".into(),
        ));
    }
    if let Some(addr) = peers.get(&reserved_id) {
        return Err(Error::Encoding(format!(
            "reserved id {reserved_id} already belongs to the member at {addr}"
        )));
    }
    Ok(JoinTicket {
        reserved_id,
        raft_addr,
        leader_id: peers_reply.leader_id,
        leader_addr: peers
            .get(&peers_reply.leader_id)
            .cloned()
            .unwrap_or_default(),
        peers,
        cluster_id: peers_reply.cluster_id,
    })
}

impl<F: crate::AbstractStateMachine> crate::Raft<F> {
    /// `bootstrap` for a node joining with `ticket`: its id, raft address and cluster id come
    /// from the ticket, so they cannot disagree with what the cluster reserved. Then spawn
    /// `run()` and call `join_cluster(vec![ticket])`. `config.initial_peers` must be `None` (a
    /// joining node is not a member until the leader adds it). It listens on the ticket's
    /// address (port 0 there means any free port); a node whose peers reach it at another
    /// address than it listens on (`Config::advertise_addr`) asks for its ticket with the
    /// advertised address and calls `Raft::bootstrap(ticket.reserved_id, listen_addr, ..)`.
    pub async fn bootstrap_to_join(
        ticket: &JoinTicket,
        fsm: F,
        mut config: crate::Config,
        logger: slog::Logger,
    ) -> Result<Self> {
        if config.initial_peers.is_some() {
            return Err(Error::Config(
                "a node that joins with a ticket has no initial_peers: the leader adds it".into(),
            ));
        }
        config.cluster_id = ticket.cluster_id.clone();
        Self::bootstrap(
            ticket.reserved_id,
            ticket.raft_addr.clone(),
            fsm,
            config,
            logger,
        )
        .await
    }
}

impl RaftNode {
    /// Join the cluster a ticket came from: become a learner, catch up, become a voter. Returns
    /// once this node is a voter, or with a typed error / `Timeout` after `Config::join_timeout`.
    /// A node that is a voter already (a restart) returns at once.
    pub async fn join_cluster(&self, tickets: Vec<JoinTicket>) -> Result<()> {
        let deadline = Instant::now() + self.shared.config.join_timeout;
        let candidates = self.prepare_join(&tickets).await?;
        if self.own_role().await? == Some(PeerRole::Voter) {
            return Ok(());
        }
        self.become_learner(&candidates, deadline).await?;
        self.promote_when_caught_up(&candidates, deadline).await
    }

    /// Finish a join that stopped half-way: a node restarted as a learner (it was added, then
    /// stopped before its promotion) catches up and becomes a voter, asking the members it knows.
    /// A voter returns at once; a node that is not a member is `InvalidRequest` (it needs a
    /// ticket: `join_cluster`). Bounded by `Config::join_timeout`.
    pub async fn finish_join(&self) -> Result<()> {
        let deadline = Instant::now() + self.shared.config.join_timeout;
        match self.own_role().await? {
            Some(PeerRole::Voter) => Ok(()),
            Some(PeerRole::Learner) => {
                let me = self.id();
                let candidates: Vec<String> = self
                    .get_peers()
                    .into_iter()
                    .filter(|(id, _)| *id != me)
                    .map(|(_, addr)| addr)
                    .collect();
                self.promote_when_caught_up(&candidates, deadline).await
            }
            _ => Err(Error::InvalidRequest(
                "this node is not a member: join with a ticket (join_cluster)".into(),
            )),
        }
    }

    /// Wait until this learner is within `promotion_lag` entries of the leader, then ask to be
    /// made a voter and wait until that is applied here.
    async fn promote_when_caught_up(&self, candidates: &[String], deadline: Instant) -> Result<()> {
        loop {
            let leader = self.leader_status(candidates, deadline).await?;
            let me = leader.peers.iter().find(|p| p.id == self.id());
            let matched = me.and_then(|p| p.matched).unwrap_or(0);
            if leader.last_index.saturating_sub(matched) <= self.shared.config.promotion_lag {
                break;
            }
            wait_or_timeout(deadline, "catching up before promotion", false).await?;
        }
        let cc = single_change(ConfChangeType::AddNode, self.id());
        remote_change(self, candidates, cc, Peers::new(), deadline).await?;
        self.wait_for_own_role(PeerRole::Voter, deadline).await
    }

    /// Like `join_cluster`, but stay a learner (receives the log, does not vote). Promote later
    /// with `promote` or as part of a `change_config`.
    pub async fn join_cluster_as_learner(&self, tickets: Vec<JoinTicket>) -> Result<()> {
        let deadline = Instant::now() + self.shared.config.join_timeout;
        let candidates = self.prepare_join(&tickets).await?;
        if self.own_role().await?.is_some() {
            return Ok(());
        }
        self.become_learner(&candidates, deadline).await
    }

    /// Check the tickets and teach the run loop the members' addresses; returns the addresses to
    /// ask, leader first.
    async fn prepare_join(&self, tickets: &[JoinTicket]) -> Result<Vec<String>> {
        let ticket = tickets.first().ok_or_else(|| {
            Error::InvalidRequest("join_cluster needs at least one ticket".into())
        })?;
        for t in tickets {
            if t.reserved_id != self.id() {
                return Err(Error::InvalidRequest(format!(
                    "ticket reserves id {}, this node runs as {}; bootstrap with the ticket's id",
                    t.reserved_id,
                    self.id()
                )));
            }
            if t.cluster_id != self.cluster_id() {
                return Err(Error::ClusterMismatch {
                    local: self.cluster_id().to_string(),
                    remote: t.cluster_id.clone(),
                });
            }
        }
        let mut book = Peers::new();
        let mut candidates = Vec::new();
        if !ticket.leader_addr.is_empty() {
            candidates.push(ticket.leader_addr.clone());
        }
        for t in tickets {
            for (id, addr) in &t.peers {
                if *id != self.id() {
                    book.insert(*id, addr.clone());
                    if !candidates.contains(addr) {
                        candidates.push(addr.clone());
                    }
                }
            }
        }
        self.shared
            .mailbox
            .send(Command::LearnPeers(book))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(candidates)
    }

    async fn become_learner(&self, candidates: &[String], deadline: Instant) -> Result<()> {
        let cc = single_change(ConfChangeType::AddLearnerNode, self.id());
        let addrs = Peers::from([(self.id(), self.raft_addr().to_string())]);
        remote_change(self, candidates, cc, addrs, deadline).await?;
        self.wait_for_own_role(PeerRole::Learner, deadline).await
    }

    /// This node's role in its own applied configuration (`None` while it is not a member).
    async fn own_role(&self) -> Result<Option<PeerRole>> {
        let status = self.inspect().await?;
        Ok(status
            .peers
            .into_iter()
            .find(|p| p.id == self.id())
            .map(|p| p.role))
    }

    async fn wait_for_own_role(&self, role: PeerRole, deadline: Instant) -> Result<()> {
        loop {
            if self.own_role().await? == Some(role) {
                return Ok(());
            }
            wait_or_timeout(deadline, &format!("becoming a {role}"), true).await?;
        }
    }

    /// The leader's status, found through the candidates.
    async fn leader_status(&self, candidates: &[String], deadline: Instant) -> Result<NodeStatus> {
        let config = &self.shared.config;
        let mut queue: VecDeque<String> = candidates.iter().cloned().collect();
        loop {
            let Some(addr) = queue.pop_front() else {
                wait_or_timeout(deadline, "finding the leader", false).await?;
                queue.extend(candidates.iter().cloned());
                continue;
            };
            let Ok(mut client) = self.shared.clients.get(&addr, config) else {
                continue;
            };
            let request = pb::DebugNodeRequest {
                cluster_id: config.cluster_id.clone(),
            };
            let Ok(Ok(reply)) =
                tokio::time::timeout(config.rpc_timeout, client.debug_node(request)).await
            else {
                continue;
            };
            let status: NodeStatus = serde_json::from_str(&reply.into_inner().json)?;
            if status.role.is_leader() {
                return Ok(status);
            }
            if let Some(leader) = status.peers.iter().find(|p| p.id == status.leader_id) {
                if let Some(addr) = &leader.addr {
                    queue.push_front(addr.clone());
                }
            }
        }
    }
}

/// Send a membership change to whichever candidate leads, following `NotLeader` hints and
/// waiting out elections, until `deadline`.
async fn remote_change(
    node: &RaftNode,
    candidates: &[String],
    cc: raft::eraftpb::ConfChangeV2,
    addrs: Peers,
    deadline: Instant,
) -> Result<Vec<u8>> {
    use protobuf::Message as _;
    let config = &node.shared.config;
    let conf_change = cc
        .write_to_bytes()
        .map_err(|e| Error::Encoding(e.to_string()))?;
    let mut queue: VecDeque<String> = candidates.iter().cloned().collect();
    let mut backoff = POLL;
    loop {
        if Instant::now() >= deadline {
            return Err(Error::write_timeout("membership change while joining"));
        }
        let Some(addr) = queue.pop_front() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
            queue.extend(candidates.iter().cloned());
            continue;
        };
        let mut client = node.shared.clients.get(&addr, config)?;
        let request = pb::ChangeConfigRequest {
            cluster_id: config.cluster_id.clone(),
            conf_change: conf_change.clone(),
            addrs: addrs.clone().into_iter().collect(),
            join_token: config.join_token.clone().unwrap_or_default(),
        };
        let reply = match tokio::time::timeout_at(deadline, client.change_config(request)).await {
            Err(_) => return Err(Error::write_timeout("membership change while joining")),
            Ok(Err(status))
                if is_connect_error(&status) || status.code() == tonic::Code::Unavailable =>
            {
                continue;
            }
            Ok(Err(status)) => return Err(rpc_error("membership change while joining", status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match response_to_result(reply) {
            Ok(bytes) => return Ok(bytes),
            Err(Error::NotLeader {
                leader_addr: Some(leader),
                ..
            }) => queue.push_front(leader),
            // A joiner is patient: a voter that looks unreachable (a loaded follower missing one
            // election timeout) is waited for within the join deadline.
            Err(e) if e.is_retryable() || matches!(e, Error::WouldLoseQuorum(_)) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
                queue.push_back(addr);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A failed join RPC as pontoon's error: a refused token is `Unauthorized`, anything else
/// (another cluster, TLS refused, unreachable) a `Transport` error.
fn rpc_error(what: &str, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unauthenticated => {
            Error::Unauthorized(format!("{what}: {}", status.message()))
        }
        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
            Error::Transport(format!("{what}: {}", status.message()))
        }
        _ => Error::Transport(format!(
            "{what}: {}; check the address, and that this node's TLS settings (Config::tls) \
             match the cluster's",
            describe_status(&status)
        )),
    }
}

/// Sleep a poll interval, or time out once `deadline` has passed. `after_a_change`: the wait
/// follows a membership change this join made, so the timeout leaves its outcome unknown.
async fn wait_or_timeout(deadline: Instant, what: &str, after_a_change: bool) -> Result<()> {
    if Instant::now() >= deadline {
        return Err(if after_a_change {
            Error::write_timeout(what)
        } else {
            Error::timeout(what)
        });
    }
    tokio::time::sleep(POLL.min(deadline - Instant::now())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn peers_reply(ids: &[u64]) -> pb::GetPeersResponse {
        pb::GetPeersResponse {
            peers: ids
                .iter()
                .map(|&id| (id, format!("127.0.0.1:{id}")))
                .collect(),
            cluster_id: "c".into(),
            leader_id: 1,
        }
    }

    /// Found by the `join_ticket` fuzz target: a `RequestId` answer of eight zero bytes gave a
    /// ticket for node 0, which is raft's "no node".
    #[test]
    fn reserved_id_zero_is_refused() {
        let reply = pb::ProposeResponse::decode(&[0x12, 0x08, 0, 0, 0, 0, 0, 0, 0, 0][..])
            .expect("a well-formed answer");
        assert!(matches!(reserved_id_from(reply), Err(Error::Encoding(_))));
        let four = result_to_response_for_test(4);
        assert_eq!(reserved_id_from(four).expect("id 4"), 4);
    }

    #[test]
    fn peer_list_naming_node_zero_or_the_reserved_id_is_refused() {
        let ticket = ticket_from(4, "a:1".into(), peers_reply(&[1, 2, 3])).expect("ticket");
        assert_eq!(ticket.leader_addr, "127.0.0.1:1");
        assert!(ticket_from(4, "a:1".into(), peers_reply(&[0, 1])).is_err());
        assert!(ticket_from(2, "a:1".into(), peers_reply(&[1, 2])).is_err());
    }

    fn result_to_response_for_test(id: u64) -> pb::ProposeResponse {
        crate::node::result_to_response(Ok(id.to_be_bytes().to_vec()))
    }
}
