//! A member that comes back on a new address: how the cluster learns where to reach it.
//!
//! Members know each other's addresses from the log (the context of the change that added a
//! node) and keep them in their address books. A node restarted on its data dir but on another
//! address (a new IP after a reschedule, another port) would otherwise never be reached again:
//! every member keeps dialling the old address, and its own answers go nowhere because raft
//! replies travel on the replier's connection to the address it knows.
//!
//! 1. `Raft::bootstrap` sees that the node's address differs from the one its data dir records
//!    for it, and `Raft::run` starts `announce_new_address` next to the run loop.
//! 2. That task asks the members, one after another (with backoff, for at most
//!    `ANNOUNCE_FOR`), to record the address: the `UpdateAddress` RPC. The node cannot ask the
//!    leader directly: it does not know which node leads, since nothing reaches it yet.
//! 3. A member asked (`RaftNode::update_address`) first checks that the node answers at the new
//!    address as that node of this cluster (its status over gRPC, with the member's own TLS
//!    settings). Only then does it dial the node there at once (`Command::Redirect`, a
//!    transport overlay on top of the address book) and pass the update to the leader, which
//!    appends `FrameworkEntry::UpdateAddress`. Dialling before the commit matters when the
//!    moved node's ack or vote is needed: a two-node cluster, or a cluster that must elect a
//!    leader with the moved node's vote.
//! 4. Every node applying the entry updates its address book, drops its overlay for that node
//!    and persists the book with its next write, so the address survives restarts; snapshots
//!    carry the book as before.
//!
//! Invariants: the log only ever records the address of a current member (refused at proposal
//! and at apply, the same on every node), and only an address where that member answered. An
//! overlay never reaches the address book, snapshots or the disk; it only changes where this
//! node's messages go. `RaftNode::update_address` is also the operator's call (the CLI's
//! `member update-address`), for a node that cannot announce itself.

use std::time::Duration;

use tokio::time::Instant;

use super::handle::RaftNode;
use super::mailbox::Command;
use super::membership::conf_members;
use super::proposals::FrameworkEntry;
use super::run_loop::RunLoop;
use super::submit::Submission;
use crate::error::{Error, Result};
use crate::state_machine::AbstractStateMachine;
use crate::storage::LogStore;
use crate::transport::pb;

/// How long a moved node keeps asking the members to record its new address before it gives
/// up and says so (the cluster may have no quorum for a while).
const ANNOUNCE_FOR: Duration = Duration::from_secs(300);
/// The pause after the first round of asking; it doubles up to `ANNOUNCE_BACKOFF_CAP`.
const ANNOUNCE_BACKOFF_START: Duration = Duration::from_millis(200);
/// The longest pause between two rounds of asking.
const ANNOUNCE_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Refuse what no member could be dialled at: not HOST:PORT, port 0, or "every interface".
fn check_member_addr(raft_addr: &str) -> Result<()> {
    match crate::config::port_of(raft_addr) {
        None => Err(Error::InvalidRequest(format!(
            "address {raft_addr:?} is not of the form HOST:PORT"
        ))),
        Some(0) => Err(Error::InvalidRequest(format!(
            "address {raft_addr:?} has port 0; give the port the node listens on"
        ))),
        Some(_) if crate::config::has_unspecified_host(raft_addr) => {
            Err(Error::InvalidRequest(format!(
                "address {raft_addr:?} means every interface and cannot be dialled; give the \
                 address members reach the node at (advertise_addr)"
            )))
        }
        Some(_) => Ok(()),
    }
}

impl RaftNode {
    /// Record through the log that member `node_id` is now reached at `raft_addr`, and return
    /// once this is applied here. Every node's address book follows, durably.
    ///
    /// The node must already answer at `raft_addr` as `node_id` of this cluster: the address is
    /// checked before anything is proposed. A node restarted on a new address does this by
    /// itself (see `relocation`); this call is for an operator whose node cannot. Works on any
    /// node (forwarded to the leader). Typed errors: `UnknownNode` (not a member, or removed),
    /// `InvalidRequest` (not HOST:PORT, port 0, every interface, or another node answers
    /// there), `Transport` (nothing answers there yet), and the usual `NoLeader` / `Timeout`.
    /// On an error other than `Timeout` / `OutcomeUnknown` neither the log nor any address book
    /// changed; once the address was verified, this node may already dial the member there.
    pub async fn update_address(&self, node_id: u64, raft_addr: impl Into<String>) -> Result<()> {
        let raft_addr = raft_addr.into();
        check_member_addr(&raft_addr)?;
        if self.shared.peers.get(node_id).is_none() || self.shared.peers.is_removed(node_id) {
            return Err(Error::UnknownNode(node_id));
        }
        self.check_node_answers_at(node_id, &raft_addr).await?;
        if node_id != self.id() {
            // Dial it there now: the entry may need its ack, or an election its vote.
            let deadline = Instant::now() + self.shared.config.propose_timeout;
            self.send_until(
                Command::Redirect {
                    id: node_id,
                    addr: raft_addr.clone(),
                },
                deadline,
            )
            .await?;
        }
        self.submit(Submission::UpdateAddress { node_id, raft_addr })
            .await
            .map(|_| ())
    }

    /// The node answering at `addr` must be `node_id` of this cluster (checked with this node's
    /// own client settings, TLS included), so no typo or stale address reaches the log.
    async fn check_node_answers_at(&self, node_id: u64, addr: &str) -> Result<()> {
        let config = &self.shared.config;
        let mut client = self.shared.clients.get(addr, config)?;
        let request = pb::DebugNodeRequest {
            cluster_id: config.cluster_id.clone(),
        };
        let reply = match tokio::time::timeout(config.rpc_timeout, client.debug_node(request)).await
        {
            Err(_) => {
                return Err(Error::Transport(format!(
                    "node {node_id} does not answer at {addr} (timed out); start it there first"
                )))
            }
            Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                return Err(Error::InvalidRequest(format!(
                    "the node at {addr} belongs to another cluster: {}",
                    status.message()
                )))
            }
            Ok(Err(status)) => {
                return Err(Error::Transport(format!(
                    "node {node_id} does not answer at {addr}: {}; start it there first",
                    super::rpc_results::describe_status(&status)
                )))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let status: super::status::NodeStatus = serde_json::from_str(&reply.json)?;
        if status.id != node_id {
            return Err(Error::InvalidRequest(format!(
                "the node answering at {addr} is node {}, not node {node_id}",
                status.id
            )));
        }
        Ok(())
    }

    /// Ask the members until one has recorded this node's new address (step 2 of the module
    /// docs). Ends on success, when the node stops, on a refusal no retry can change (a wrong
    /// token or address), or after `ANNOUNCE_FOR`; logs how it ended.
    pub(crate) async fn announce_new_address(self, known: String, logger: slog::Logger) {
        let me = self.id();
        let addr = self.shared.addr.clone();
        slog::info!(logger, "this node's address changed: asking the members to record the new one"; "was" => &known, "now" => &addr);
        let give_up = Instant::now() + ANNOUNCE_FOR;
        let mut backoff = ANNOUNCE_BACKOFF_START;
        let mut last_error = String::from("no member answered");
        let mut stopped = self.shared.stopped.clone();
        while Instant::now() < give_up {
            let members: Vec<String> = self
                .shared
                .peers
                .to_peers()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .map(|(_, member)| member)
                .collect();
            // Once this node knows a leader (itself, say: elected with the votes of members that
            // already dial it at the new address), it proposes through the usual path. So does
            // a node alone in its configuration.
            let mut answers = Vec::new();
            if members.is_empty() || self.status().leader_id != raft::INVALID_ID {
                answers.push(self.update_address(me, addr.clone()).await);
            }
            for member in &members {
                if answers
                    .last()
                    .is_some_and(|a| a.is_ok() || ends_announcement(a))
                {
                    break;
                }
                answers.push(self.ask_member_to_record(member, &addr).await);
            }
            for answer in answers {
                let definite = ends_announcement(&answer);
                match answer {
                    Ok(()) => {
                        slog::info!(logger, "the cluster recorded this node's new address"; "addr" => &addr);
                        return;
                    }
                    Err(Error::ShuttingDown | Error::NotRunning) => return,
                    Err(e) if definite => {
                        slog::error!(logger, "the members refused this node's new address; they still reach it at the old one: restart it there, or fix the address (advertise_addr) or the join token"; "was" => &known, "now" => &addr, "error" => %e);
                        return;
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            let pause = backoff.min(give_up.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(pause, stopped.wait_for(|s| *s)).await {
                // Stopped, or the node's handle is gone: nobody needs the address any more.
                Ok(_) => return,
                Err(_) => backoff = (backoff * 2).min(ANNOUNCE_BACKOFF_CAP),
            }
        }
        slog::error!(logger, "no member recorded this node's new address; they still reach it at the old one: restart it there, or record the new one with `pontoon-cli member update-address` once the cluster has a leader"; "was" => &known, "now" => &addr, "last error" => last_error);
    }

    /// One `UpdateAddress` call to `member`, which checks the address and forwards the update
    /// to its leader.
    async fn ask_member_to_record(&self, member: &str, addr: &str) -> Result<()> {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.propose_timeout + config.rpc_timeout;
        let submission = Submission::UpdateAddress {
            node_id: self.id(),
            raft_addr: addr.to_string(),
        };
        match self.send_submission(member, &submission, deadline).await? {
            Err(status) => Err(super::rpc_results::status_to_error(status)),
            Ok(response) => super::rpc_results::response_to_result(response).map(|_| ()),
        }
    }
}

/// An answer that asking again, or asking another member, cannot change: this node's token or
/// address is wrong, or it is shutting down. `UnknownNode` and `ClusterMismatch` are not: one
/// member may lag behind the change that added this node, or another cluster's node may have
/// taken a member's old address.
fn ends_announcement(answer: &Result<()>) -> bool {
    matches!(
        answer,
        Err(Error::InvalidRequest(_)
            | Error::Unauthorized(_)
            | Error::ShuttingDown
            | Error::NotRunning)
    )
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    /// Point this node's senders at the address book, with the redirects on top.
    pub(super) fn sync_transport(&self) {
        self.transport.set_peers(&self.peers.to_dial_peers());
    }

    /// `Command::Redirect`: dial a member at a new address it was verified to answer at
    /// (step 3). Ignored for this node itself and for non-members.
    pub(super) fn redirect(&mut self, id: u64, addr: String) {
        if id == self.raw.raft.id || !self.is_current_member(id) {
            return;
        }
        if self.peers.get(id).as_deref() == Some(addr.as_str()) {
            self.peers.clear_redirect(id);
        } else {
            slog::info!(self.logger, "dialling a moved member at its new address"; "id" => id, "addr" => &addr);
            self.peers.set_redirect(id, addr);
        }
        self.sync_transport();
    }

    /// Forget the redirects of nodes that left the configuration, and those the address book
    /// has caught up with (a snapshot carried the recorded address).
    pub(super) fn prune_redirects(&mut self) {
        let members = conf_members(&self.raw.raft.prs().conf().to_conf_state());
        self.peers.prune_redirects(&members);
    }

    /// On the leader, refuse a proposed `UpdateAddress` for a node that is not a member now,
    /// so such an entry never enters the log (where a replay after a restart, which checks
    /// against the latest configuration, could apply it).
    pub(super) fn refuse_framework_proposal(&self, data: &[u8]) -> Option<Error> {
        match FrameworkEntry::decode(data) {
            Ok(FrameworkEntry::UpdateAddress { node_id, .. })
                if !self.is_current_member(node_id) =>
            {
                Some(Error::UnknownNode(node_id))
            }
            _ => None,
        }
    }

    /// Apply `FrameworkEntry::UpdateAddress` (step 4). Refused, the same on every node, for an
    /// id outside the configuration or seen removed.
    pub(super) fn apply_address_update(
        &mut self,
        index: u64,
        node_id: u64,
        raft_addr: String,
    ) -> Result<()> {
        if !self.is_current_member(node_id) {
            return Err(Error::UnknownNode(node_id));
        }
        if self.peers.get(node_id).as_deref() != Some(raft_addr.as_str())
            && index > self.replayed_until
        {
            slog::info!(self.logger, "member moved"; "id" => node_id, "addr" => &raft_addr);
        }
        self.peers.insert(node_id, raft_addr);
        self.peers.clear_redirect(node_id);
        self.sync_transport();
        self.peers_dirty = true;
        Ok(())
    }

    fn is_current_member(&self, id: u64) -> bool {
        !self.peers.is_removed(id)
            && conf_members(&self.raw.raft.prs().conf().to_conf_state()).contains(&id)
    }
}
