//! A removed node: how it learns of its removal, and why it lingers before it stops.
//!
//! Members remember the ids they saw removed (`AddressBook::mark_removed`, and every snapshot)
//! and refuse whatever such a node sends (`transport::server`). The removed node learns of its
//! removal by applying the entry, by such a refusal, or from its own data dir on restart; a
//! node that never campaigns (a learner) probes the members so that it hears the refusal too.

use raft::StateRole;

use super::run_loop::RunLoop;
use crate::error::Error;
use crate::state_machine::AbstractStateMachine;
use crate::storage::LogStore;

/// What a removed node knows while it lingers.
pub(crate) struct Removal {
    /// How it learned of its removal (the text of `Error::Removed`).
    how: String,
    /// The last time a member sent it a raft message (or when it learned of its removal).
    last_needed: tokio::time::Instant,
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    /// One tick of raft's clock. A removed node does not campaign: two removed nodes asking each
    /// other for votes would keep each other lingering. Its election clock still runs, though,
    /// so its leader lease runs out and it answers the vote requests of members that still
    /// count it (a node within the lease ignores them).
    pub(crate) fn tick(&mut self) {
        if self.removal.is_some() {
            let raft = &mut self.raw.raft;
            raft.election_elapsed = raft.election_elapsed.saturating_add(1);
        } else {
            self.raw.tick();
        }
    }

    /// A member sent this node a raft message: if it is removed, it is still needed.
    pub(crate) fn note_member_contact(&mut self) {
        if let Some(removal) = &mut self.removal {
            removal.last_needed = tokio::time::Instant::now();
        }
    }

    /// Once a removed node has lingered long enough, stop it with `Error::Removed` (on a tick).
    pub(crate) fn stop_if_no_longer_needed(&mut self) {
        if let Some(removal) = &self.removal {
            if removal.last_needed.elapsed() >= self.removal_linger() {
                self.fatal = Some(Error::Removed {
                    id: self.raw.raft.id,
                    how: removal.how.clone(),
                });
            }
        }
    }

    /// This node is no longer a member (`how` says how it learned so). When `leave()` asked for
    /// it, it stops cleanly at the end of the turn. Otherwise it lingers, then stops with
    /// `Error::Removed`, so the caller of `run()` learns why the node stopped instead of
    /// watching it idle (one that missed its removal would campaign without effect forever).
    ///
    /// Why linger: raft-rs uses a configuration from when its entry is *applied*. A member
    /// that holds the removal entry but has not learned that it committed still counts this
    /// node's vote; if the leader dies then, the survivors need this node to elect the next
    /// one (which then commits the removal). So a removed node keeps running and answering,
    /// and stops once no member has sent it anything for `removal_linger` (two maximal
    /// election timeouts). It stops campaigning (see `tick`). Members that applied its
    /// removal refuse whatever it sends.
    pub(crate) fn on_removed(&mut self, how: String) {
        let id = self.raw.raft.id;
        self.peers.mark_removed(id);
        if self.leaving {
            slog::info!(self.logger, "this node left the cluster; stopping"; "how" => &how);
            self.left = true;
        } else if self.removal.is_none() {
            slog::warn!(self.logger, "this node was removed from the cluster; it stops once no member needs its vote"; "how" => &how, "after" => ?self.removal_linger());
            self.removal = Some(Removal {
                how,
                last_needed: tokio::time::Instant::now(),
            });
        }
    }

    /// A node that never campaigns (a learner, or a node outside the configuration) would never
    /// learn of its removal: the leader stops sending to it, and it sends nothing on its own.
    /// So once it has heard from no leader for two maximal election timeouts, it sends each
    /// member it knows a heartbeat response of term 0, every maximal election timeout. Raft
    /// takes a term-0 message as local, so no term moves: a leader that still counts the node
    /// takes it as a sign of life, anyone else ignores it, and a member that applied the node's
    /// removal refuses it as removed (see `on_removed`).
    pub(crate) fn probe_if_unheard(&mut self) {
        let raft = &self.raw.raft;
        let every = self.config.raft.max_election_tick().max(1);
        let unheard = raft.election_elapsed;
        if raft.promotable() || raft.state != StateRole::Follower || unheard < 2 * every {
            return;
        }
        if !unheard.is_multiple_of(every) {
            return;
        }
        let me = raft.id;
        let probes: Vec<raft::eraftpb::Message> = self
            .peers
            .to_peers()
            .into_keys()
            .filter(|id| *id != me)
            .map(|to| {
                let mut msg = raft::eraftpb::Message::default();
                msg.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeatResponse);
                msg.from = me;
                msg.to = to;
                msg
            })
            .collect();
        self.transport.send(probes);
    }

    /// How long a removed node stays after the last message from a member (see `on_removed`).
    pub(crate) fn removal_linger(&self) -> std::time::Duration {
        self.config.tick_interval * (2 * self.config.raft.max_election_tick() as u32)
    }
}
