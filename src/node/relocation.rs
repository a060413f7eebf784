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
//!    `ANNOUNCE_FOR`), to record the address: the `UpdateAddress` RPC, which any member forwards
//!    to its leader, who appends `FrameworkEntry::UpdateAddress`. The node cannot ask the leader
//!    itself: it does not know which node leads, since nothing reaches it yet.
//! 3. The leader points its sender at the new address as soon as it accepts the proposal, so a
//!    two-node cluster (which needs the moved node's ack to commit anything) is not stuck.
//! 4. Every node applying the entry updates its address book and persists it with its next
//!    write, so the address survives restarts; snapshots carry the book as before.
//!
//! Invariant: only the address of a current member (in the configuration at that index, not
//! removed) is ever changed by the log, and the same on every node. `RaftNode::update_address`
//! does the same for an operator (the CLI's `member update-address`).

use std::time::Duration;

use tokio::time::Instant;

use super::handle::RaftNode;
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
/// First and longest pause between two rounds of asking.
const ANNOUNCE_BACKOFF_START: Duration = Duration::from_millis(200);
const ANNOUNCE_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Refuse what no member could be reached at: not HOST:PORT, or port 0.
fn check_member_addr(raft_addr: &str) -> Result<()> {
    match crate::config::port_of(raft_addr) {
        Some(0) => Err(Error::InvalidRequest(format!(
            "address {raft_addr:?} has port 0; give the port the node listens on"
        ))),
        Some(_) => Ok(()),
        None => Err(Error::InvalidRequest(format!(
            "address {raft_addr:?} is not of the form HOST:PORT"
        ))),
    }
}

impl RaftNode {
    /// Record through the log that member `node_id` is now reached at `raft_addr`, and return
    /// once this is applied here. Every node's address book follows, durably.
    ///
    /// A node restarted on a new address does this by itself (see `relocation`); this call is
    /// for an operator who moved a node that cannot. Works on any node (forwarded to the
    /// leader). Typed errors: `UnknownNode` (not a member, or removed: nothing changes),
    /// `InvalidRequest` (not HOST:PORT, port 0), and the usual `NoLeader` / `Timeout`.
    pub async fn update_address(&self, node_id: u64, raft_addr: impl Into<String>) -> Result<()> {
        let raft_addr = raft_addr.into();
        check_member_addr(&raft_addr)?;
        if self.shared.peers.get(node_id).is_none() || self.shared.peers.is_removed(node_id) {
            return Err(Error::UnknownNode(node_id));
        }
        self.submit(Submission::UpdateAddress { node_id, raft_addr })
            .await
            .map(|_| ())
    }

    /// Ask the members until one has recorded this node's new address (step 2 of the module
    /// docs). Ends early when the node stops, when its own address book already holds the new
    /// address (the entry reached it), or on a definite refusal, which it logs.
    pub(crate) async fn announce_new_address(self, known: String, logger: slog::Logger) {
        let me = self.id();
        let addr = self.shared.addr.clone();
        slog::info!(logger, "this node's address changed: asking the members to record the new one"; "was" => &known, "now" => &addr);
        let give_up = Instant::now() + ANNOUNCE_FOR;
        let mut backoff = ANNOUNCE_BACKOFF_START;
        let mut last_error = String::from("no member answered");
        while Instant::now() < give_up && !self.is_stopped() {
            if self.shared.peers.get(me).as_deref() == Some(addr.as_str()) {
                slog::info!(logger, "the members reach this node at its new address"; "addr" => &addr);
                return;
            }
            let members: Vec<(u64, String)> = self
                .shared
                .peers
                .to_peers()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .collect();
            // A node alone in its configuration leads itself: record it locally.
            let asked = if members.is_empty() {
                vec![self.update_address(me, addr.clone()).await]
            } else {
                let mut answers = Vec::new();
                for (_, member) in &members {
                    let answer = self.ask_member_to_record(member, &addr).await;
                    let done = answer.is_ok() || is_definite_refusal(&answer);
                    answers.push(answer);
                    if done {
                        break;
                    }
                }
                answers
            };
            for answer in asked {
                let definite = is_definite_refusal(&answer);
                match answer {
                    Ok(()) => {
                        slog::info!(logger, "the cluster recorded this node's new address"; "addr" => &addr);
                        return;
                    }
                    Err(e) if definite => {
                        slog::error!(logger, "the members refused this node's new address; they still reach it at the old one: restart it there, or record the new one with `pontoon-cli member update-address`"; "was" => &known, "now" => &addr, "error" => %e);
                        return;
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            let pause = backoff.min(give_up.saturating_duration_since(Instant::now()));
            let mut stopped = self.shared.stopped.clone();
            let _ = tokio::time::timeout(pause, stopped.wait_for(|s| *s)).await;
            backoff = (backoff * 2).min(ANNOUNCE_BACKOFF_CAP);
        }
        if !self.is_stopped() {
            slog::error!(logger, "no member recorded this node's new address; they still reach it at the old one: restart it there, or record the new one with `pontoon-cli member update-address` once the cluster has a leader"; "was" => &known, "now" => &addr, "last error" => last_error);
        }
    }

    /// One `UpdateAddress` call to `member`, which forwards it to its leader.
    async fn ask_member_to_record(&self, member: &str, addr: &str) -> Result<()> {
        let config = &self.shared.config;
        let mut client = self.shared.clients.get(member, config)?;
        let request = pb::UpdateAddressRequest {
            cluster_id: config.cluster_id.clone(),
            node_id: self.id(),
            raft_addr: addr.to_string(),
            join_token: config.join_token.clone().unwrap_or_default(),
        };
        let call = client.update_address(request);
        match tokio::time::timeout(config.propose_timeout, call).await {
            Err(_) => Err(Error::write_timeout(format!(
                "address update through {member}"
            ))),
            Ok(Err(status)) => Err(super::rpc_results::status_to_error(status)),
            Ok(Ok(response)) => {
                super::rpc_results::response_to_result(response.into_inner()).map(|_| ())
            }
        }
    }
}

/// An answer that asking again, or asking another member, cannot change: this node's token or
/// address is wrong. `UnknownNode` and `ClusterMismatch` are not: one member may lag behind the
/// change that added this node, or another cluster's node may have taken an old address.
fn is_definite_refusal(answer: &Result<()>) -> bool {
    matches!(
        answer,
        Err(Error::InvalidRequest(_) | Error::Unauthorized(_))
    )
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
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
        if self.peers.get(node_id).as_deref() != Some(raft_addr.as_str()) {
            if index > self.replayed_until {
                slog::info!(self.logger, "member moved"; "id" => node_id, "addr" => &raft_addr);
            }
            self.peers.insert(node_id, raft_addr);
            self.transport.set_peers(&self.peers.to_peers());
        }
        // Persisted with the next write even when the early redirect already set it.
        self.peers_dirty = true;
        Ok(())
    }

    /// On the leader, when it accepts an `UpdateAddress` proposal: reach the member at its new
    /// address now rather than once the entry commits (step 3). A two-node cluster cannot
    /// commit the entry without the moved node's ack. Not persisted here: only the applied
    /// entry is (should the entry be lost, the member keeps asking and the next leader learns it).
    pub(super) fn redirect_early(&mut self, data: &[u8]) {
        let Ok(FrameworkEntry::UpdateAddress { node_id, raft_addr }) = FrameworkEntry::decode(data)
        else {
            return;
        };
        if node_id != self.raw.raft.id
            && self.is_current_member(node_id)
            && check_member_addr(&raft_addr).is_ok()
            && self.peers.get(node_id).as_deref() != Some(raft_addr.as_str())
        {
            slog::info!(self.logger, "reaching a moved member at its new address"; "id" => node_id, "addr" => &raft_addr);
            self.peers.insert(node_id, raft_addr);
            self.transport.set_peers(&self.peers.to_peers());
        }
    }

    fn is_current_member(&self, id: u64) -> bool {
        !self.peers.is_removed(id)
            && conf_members(&self.raw.raft.prs().conf().to_conf_state()).contains(&id)
    }
}
