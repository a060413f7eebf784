//! Membership changes on the run loop: checking a proposed change before raft sees it, and
//! applying a committed one (raft's configuration, the address book, the stored conf state).
//!
//! A conf-change entry's context carries the addresses of the nodes it adds
//! ([`ConfChangeContext`]), so every node learns them when it applies the change, including a
//! node that replays it after a restart.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::StateRole;
use raft_proto::ConfChangeI;
use serde::{Deserialize, Serialize};

use super::proposals::{EntryKind, ProposalContext};
use super::run_loop::RunLoop;
use crate::config::Peers;
use crate::error::{Error, Result};
use crate::state_machine::AbstractStateMachine;
use crate::storage::LogStore;

/// What a conf-change entry carries in its context: the addresses of the nodes it adds, so every
/// node learns them when it applies the change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChangeContext {
    /// The proposer's `ProposalContext` bytes (empty when nobody waits for this change).
    pub proposal: Vec<u8>,
    /// The raft addresses of the nodes the change adds.
    pub addrs: Peers,
}

impl ConfChangeContext {
    /// The bytes stored as the conf-change entry's context (bincode).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(bincode::serialize(self)?)
    }

    /// Decode a conf-change entry's context; an empty context is the default (no proposer, no
    /// addresses), anything unreadable an `Encoding` error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(ConfChangeContext::default());
        }
        Ok(bincode::deserialize(bytes)?)
    }
}

/// The change a conf-change entry (`EntryConfChange` or `EntryConfChangeV2`) carries, as a
/// `ConfChangeV2`. Any other entry, or unreadable data, is an `Encoding` error.
pub fn decode_conf_change(entry: &Entry) -> Result<ConfChangeV2> {
    let index = entry.index;
    let bad = |e: protobuf::ProtobufError| Error::Encoding(format!("conf change at {index}: {e}"));
    match entry.get_entry_type() {
        EntryType::EntryConfChange => Ok(ConfChange::parse_from_bytes(entry.get_data())
            .map_err(bad)?
            .into_v2()),
        EntryType::EntryConfChangeV2 => {
            ConfChangeV2::parse_from_bytes(entry.get_data()).map_err(bad)
        }
        EntryType::EntryNormal => Err(Error::Encoding(format!(
            "entry {index} is not a conf change"
        ))),
    }
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    /// Validate a membership change here, so the caller gets a typed error instead of raft-rs
    /// silently turning a refused change into an empty entry; then propose it.
    pub(crate) fn change_config(
        &mut self,
        cc: ConfChangeV2,
        addrs: Peers,
        reply: super::proposals::ProposalReply,
    ) {
        if let Err(e) = self.check_conf_change(&cc, &addrs, false) {
            let _ = reply.send(Err(e));
            return;
        }
        let ctx = self.waiters.next_context(EntryKind::User);
        let context = ConfChangeContext {
            proposal: ctx.encode(),
            addrs,
        };
        let context = match context.encode() {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose_conf_change(context, cc) {
            Ok(()) if self.raw.raft.raft_log.last_index() > before => {
                let index = self.raw.raft.raft_log.last_index();
                self.waiters.register(ctx, index, reply);
            }
            Ok(()) | Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(Error::ProposalDropped(
                    "raft dropped the membership change".into(),
                )));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Whether `cc` may be proposed now. `leader_leaves`: the leader's own removal is accepted
    /// (a dry run before it hands over leadership; reachability is then left to the voter that
    /// takes over); a proposal never accepts it.
    pub(super) fn check_conf_change(
        &self,
        cc: &ConfChangeV2,
        addrs: &Peers,
        leader_leaves: bool,
    ) -> Result<()> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if raft.has_pending_conf() {
            return Err(Error::ChangeInProgress(
                "the previous change is not applied yet".into(),
            ));
        }
        let cs = raft.prs().conf().to_conf_state();
        let joint = !cs.voters_outgoing.is_empty();
        let leaving = cc.changes.is_empty();
        if joint && !leaving {
            return Err(Error::ChangeInProgress(
                "the cluster is in a joint configuration; call leave_joint first".into(),
            ));
        }
        if !joint && leaving {
            return Err(Error::InvalidRequest(
                "the cluster is not in a joint configuration".into(),
            ));
        }
        let mut voters: std::collections::BTreeSet<u64> = cs.voters.iter().copied().collect();
        let members: std::collections::BTreeSet<u64> = cs
            .voters
            .iter()
            .chain(cs.learners.iter())
            .copied()
            .collect();
        for change in cc.get_changes() {
            let id = change.node_id;
            if id == raft::INVALID_ID {
                return Err(Error::InvalidRequest("node id 0 is reserved".into()));
            }
            match change.get_change_type() {
                ConfChangeType::RemoveNode => {
                    if !members.contains(&id) {
                        return Err(Error::UnknownNode(id));
                    }
                    if id == raft.id && !leader_leaves {
                        return Err(Error::InvalidRequest(
                            "the leader cannot remove itself with a raw conf change: use \
                             remove_node (it moves leadership to another voter first) or leave() \
                             on it, or transfer_leader and then remove it"
                                .into(),
                        ));
                    }
                    voters.remove(&id);
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    // Removal is final: members refuse a removed id's messages for good.
                    if self.peers.is_removed(id) {
                        return Err(Error::InvalidRequest(format!(
                            "node {id} was removed from this cluster and its id cannot come back; \
                             give the machine a new id (Raft::request_id) and join with that"
                        )));
                    }
                    if !members.contains(&id)
                        && !addrs.contains_key(&id)
                        && self.peers.get(id).is_none()
                    {
                        return Err(Error::InvalidRequest(format!(
                            "no address given for new node {id}"
                        )));
                    }
                    if change.get_change_type() == ConfChangeType::AddNode {
                        voters.insert(id);
                    } else {
                        if id == raft.id {
                            return Err(Error::InvalidRequest(
                                "the leader cannot demote itself".into(),
                            ));
                        }
                        voters.remove(&id);
                    }
                }
            }
        }
        // Only a change of the voter set can cost the quorum; adding or removing a learner cannot.
        let old_voters: std::collections::BTreeSet<u64> = cs.voters.iter().copied().collect();
        if !leaving && voters != old_voters {
            if leader_leaves && !voters.is_empty() {
                // Which voters are reachable is judged by the one that takes over and proposes
                // the change (counting itself). raft-rs clears `recent_active` at every quorum
                // check, so this leader, not counted after its own removal, could see none.
                return Ok(());
            }
            // A voter counts only if it answers and the leader knows its log reaches past the
            // bootstrap index: one that holds nothing more withholds its vote from any longer
            // log (`withholds_vote`), so it cannot help elect the next leader. Counting it would
            // let a change (promoting an empty learner, removing a voter beside an empty one)
            // commit a configuration whose quorum only such nodes complete: no leader could be
            // elected again, and so none could ever catch them up (found by the simulation,
            // seed 2681).
            let active = voters
                .iter()
                .filter(|id| {
                    **id == raft.id
                        || raft
                            .prs()
                            .get(**id)
                            .is_some_and(|p| p.recent_active && p.matched > super::INITIAL_INDEX)
                })
                .count();
            let quorum = voters.len() / 2 + 1;
            if active < quorum && !voters.is_empty() && self.leader_is_new() {
                return Err(Error::NotReady(
                    "it has not heard from every member since its election".into(),
                ));
            }
            if voters.is_empty() || active < quorum {
                return Err(Error::WouldLoseQuorum(format!(
                    "only {active} of the {} voters after the change are reachable and hold \
                     the log past the bootstrap configuration (a learner must catch up before \
                     its promotion)",
                    voters.len()
                )));
            }
        }
        Ok(())
    }

    /// True during the first (maximum) election timeout of a leadership: raft-rs resets every
    /// peer's `recent_active` on election, so reachability is unknown until they answer.
    pub(crate) fn leader_is_new(&self) -> bool {
        let window = self.config.tick_interval * (2 * self.config.raft.election_tick as u32);
        self.leader_since.is_none_or(|t| t.elapsed() < window)
    }

    /// Remember the ids a conf change at `index` removed from the cluster for good; if this
    /// node is one of them, it stops (see `on_removed`).
    fn note_removed(&mut self, removed: &[u64], index: u64) {
        let me = self.raw.raft.id;
        for &id in removed {
            self.peers.mark_removed(id);
        }
        if removed.contains(&me) {
            self.on_removed(format!("it applied its removal at index {index}"));
        }
    }

    /// Apply a conf-change entry; returns the proposer's context (if any) and the conf state.
    pub(crate) fn apply_conf_change(
        &mut self,
        entry: &Entry,
    ) -> Result<(Option<ProposalContext>, raft::eraftpb::ConfState)> {
        let index = entry.index;
        let cc = decode_conf_change(entry)?;
        let ctx = ConfChangeContext::decode(entry.get_context()).unwrap_or_else(|e| {
            slog::warn!(self.logger, "conf change context unreadable; addresses unchanged"; "index" => index, "error" => %e);
            ConfChangeContext::default()
        });
        let proposal = ProposalContext::decode(&ctx.proposal);
        for change in cc.get_changes() {
            self.max_node_id = self.max_node_id.max(change.node_id);
        }
        if index <= self.store.conf_state_index() {
            // Replayed after a restart: the stored conf state already includes it (and is the
            // latest), so a node this entry removes and that state lacks is gone for good.
            let cs = self.raw.raft.prs().conf().to_conf_state();
            let members = conf_members(&cs);
            let removed: Vec<u64> = cc
                .get_changes()
                .iter()
                .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                .map(|c| c.node_id)
                .filter(|id| !members.contains(id))
                .collect();
            self.note_removed(&removed, index);
            return Ok((proposal, cs));
        }
        let before = conf_members(&self.raw.raft.prs().conf().to_conf_state());
        let cs = self.raw.apply_conf_change(&cc)?;
        let after = conf_members(&cs);
        if self.raw.raft.state == raft::StateRole::Leader
            && self.raw.raft.prs().get(self.raw.raft.id).is_none()
        {
            // A leader that applied its own removal steps down: raft-rs 0.7 would otherwise
            // look up its own progress when its next write is persisted, find none, and panic
            // (found by the simulation, seed 100645). The remaining voters elect a leader.
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        let removed: Vec<u64> = before.difference(&after).copied().collect();
        self.note_removed(&removed, index);
        for (id, addr) in ctx.addrs {
            self.peers.insert(id, addr);
        }
        // Forget addresses only of nodes that left the configuration entirely: in a joint
        // configuration the outgoing voters still vote and must still be reached.
        let me = self.raw.raft.id;
        for id in self.peers.to_peers().into_keys() {
            if id != me && !after.contains(&id) {
                self.peers.remove(id);
            }
        }
        slog::info!(self.logger, "membership changed"; "index" => index, "voters" => ?cs.voters, "outgoing" => ?cs.voters_outgoing, "learners" => ?cs.learners);
        self.prune_redirects();
        self.sync_transport();
        self.pending_conf = Some((cs.clone(), index));
        self.peers_dirty = true;
        Ok((proposal, cs))
    }
}

/// Every node in a configuration: voters (incoming and outgoing) and learners (current and next).
pub(super) fn conf_members(cs: &raft::eraftpb::ConfState) -> std::collections::BTreeSet<u64> {
    cs.voters
        .iter()
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next)
        .copied()
        .collect()
}
