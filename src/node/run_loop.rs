//! The run loop: the one task that owns the `RawNode` and the state machine.
//!
//! See the module docs of `node` for the order of a turn. The loop never awaits the network; it
//! awaits only its mailbox, its tick, the user's state machine and the storage thread.
//!
//! The loop's state and its turn are here. What a turn does with proposals is in `proposing`,
//! with committed entries in `applying`, for membership changes in `membership`, and for taking
//! or installing snapshots (with the policy of when) in `snapshotting`.

use std::sync::Arc;

use raft::{RawNode, StateRole};
use slog::Logger;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::address_book::AddressBook;
use super::mailbox::Command;
use super::proposals::{ProposalContext, Waiters};
use super::reads::ReadBatcher;
use super::session_table::SessionTable;
use super::snapshotting::SnapshotPolicy;
use super::status::{NodeStatus, PeerRole, PeerStatus, Role, SoftStatus};
use super::writer::{write_batch, WriteDone, WriteJob, Writer};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::state_machine::AbstractStateMachine;
use crate::storage::{LogStore, PersistBatch, StagedLog};
use crate::transport::Transport;

/// How many Readies may be handed to the writer and not yet durable. Beyond it the loop stops
/// taking Readies until the writer catches up (memory stays bounded under a slow disk).
const MAX_WRITES_IN_FLIGHT: usize = 64;

/// Everything the loop owns.
pub(crate) struct RunLoop<S: LogStore, F: AbstractStateMachine> {
    pub(crate) raw: RawNode<StagedLog<S>>,
    pub(crate) store: S,
    /// Makes Readies durable on its own thread (see `writer`).
    pub(crate) writer: Writer,
    pub(crate) fsm: F,
    pub(crate) mailbox: mpsc::Receiver<Command>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) peers: AddressBook,
    pub(crate) config: Config,
    pub(crate) status_tx: watch::Sender<SoftStatus>,
    pub(crate) logger: Logger,
    pub(crate) waiters: Waiters,
    /// Index of the last entry given to the state machine (or restored from a snapshot).
    pub(crate) applied: u64,
    /// The commit index this node's data dir held when it started. Entries up to it were most
    /// likely applied before the restart too, so what applying them logs goes to debug level.
    /// Only a guide for log levels: the stored commit index may lag what was applied.
    pub(crate) replayed_until: u64,
    /// The commit index moved (LightReady) but is not written yet; it rides on the next write.
    pub(crate) commit_dirty: bool,
    /// A conf change applied since the last write.
    pub(crate) pending_conf: Option<(raft::eraftpb::ConfState, u64)>,
    pub(crate) peers_dirty: bool,
    /// When this node last became leader (None while it is not the leader).
    pub(crate) leader_since: Option<tokio::time::Instant>,
    /// The highest node id ever admitted or reserved (replicated state, see `FrameworkEntry`).
    pub(crate) max_node_id: u64,
    /// The client sessions and the answers they keep (replicated state, see `session_table`).
    pub(crate) sessions: SessionTable,
    pub(crate) reads: ReadBatcher,
    pub(crate) metrics: Metrics,
    /// When the next automatic snapshot is due (see `snapshotting`).
    pub(crate) snapshot_policy: SnapshotPolicy,
    /// The background task storing the latest snapshot, if one is running.
    /// Its answer is a failure that stops the node (see `take_snapshot_failure`), if any.
    pub(crate) snapshot_task: Option<tokio::task::JoinHandle<Option<Error>>>,
    /// A fatal error found while handling a command; the loop stops with it.
    pub(crate) fatal: Option<Error>,
    /// Proposals accepted and not yet appended: this turn's, and any the append window holds
    /// (`holds_proposals`). `propose_batch` appends them together.
    pub(crate) proposal_batch: Vec<(ProposalContext, Vec<u8>, super::proposals::ProposalReply)>,
    /// How many of `proposal_batch` the `proposals_held` metric already counted.
    pub(crate) proposals_marked_held: usize,
    /// The highest term whose vote request `withholds_vote` logged (one warning per term).
    pub(crate) vote_withheld_warned_term: u64,
    /// `leave()` asked for this node's removal: once removed, stop cleanly (see `on_removed`).
    pub(crate) leaving: bool,
    /// This node was removed and asked for it (`leaving`): stop at the end of this turn.
    pub(crate) left: bool,
    /// This node knows it was removed and lingers until no member needs it (see `on_removed`).
    pub(crate) removal: Option<super::removal::Removal>,
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    /// Run until `quit` (or a fatal storage / state machine error). Always flushes what it can.
    pub(crate) async fn run(mut self) -> Result<()> {
        self.writer
            .start(self.store.clone(), self.metrics.clone(), self.raw.raft.id)?;
        if self.peers.is_removed(self.raw.raft.id) {
            // Its own snapshot says so: restarted after its removal.
            self.on_removed("its data dir records its removal".into());
        }
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let drain_limit = self.config.mailbox_capacity;
        let outcome = loop {
            // 1. Wait for the next message or tick, then drain the mailbox without waiting.
            let mut quit = false;
            // Biased: polled in this order, not at random, so a simulation replays the same
            // turns from the same seed. Writes done and ticks are bounded in rate, so the
            // mailbox is never starved.
            tokio::select! {
                biased;
                done = self.writer.next_done(), if self.writer.inflight() > 0 => match done {
                    Some(done) => {
                        if let Err(e) = self.on_persisted(done) {
                            slog::crit!(self.logger, "run loop stopped by a fatal error"; "error" => %e);
                            break Err(e);
                        }
                    }
                    None => {
                        break Err(Error::Other("the writer thread stopped unexpectedly".into()));
                    }
                },
                _ = ticker.tick() => {
                    self.tick();
                    self.probe_if_unheard();
                    self.stop_if_no_longer_needed();
                    let answerable = self.reads_answerable();
                    if let Some(ctx) = self.reads.on_tick(2 * self.config.raft.election_tick, answerable) {
                        self.raw.read_index(ctx);
                    }
                }
                cmd = self.mailbox.recv() => match cmd {
                    Some(cmd) => quit |= self.handle(cmd).await,
                    None => quit = true,
                },
            }
            for _ in 0..drain_limit {
                match self.mailbox.try_recv() {
                    Ok(cmd) => quit |= self.handle(cmd).await,
                    Err(_) => break,
                }
            }
            if let Some(e) = self.take_snapshot_failure().await {
                self.fatal.get_or_insert(e);
            }
            if let Some(e) = self.fatal.take() {
                if !matches!(e, Error::Removed { .. }) {
                    slog::crit!(self.logger, "run loop stopped by a fatal error"; "error" => %e);
                }
                break Err(e);
            }
            if self.left {
                break Ok(());
            }
            self.propose_batch();
            let answerable = self.reads_answerable();
            if let Some(ctx) = self.reads.start_round(answerable) {
                self.metrics.read_index_rounds.inc();
                self.raw.read_index(ctx);
            } else if let Some(ctx) = self.reads.resend_blocked(answerable) {
                self.raw.read_index(ctx);
            }
            // A read raft-rs made while it stepped failed, and raft-rs went on with less than
            // the log holds (see `StagedLog`): stop before its messages or writes leave, as if
            // the node had crashed a moment earlier.
            if let Some(e) = self.read_failure() {
                break Err(e);
            }
            // 2-9. Handle the Ready this produced.
            if let Err(e) = self.on_ready().await {
                slog::crit!(self.logger, "run loop stopped by a fatal error"; "error" => %e);
                break Err(e);
            }
            if let Some(e) = self.read_failure() {
                break Err(e);
            }
            self.publish_status();
            // Applying this turn's entries may have removed this node after its `leave()`.
            if quit || self.left {
                break Ok(());
            }
        };
        // Only a loop that stops on request writes what is still in memory: after a fatal error
        // that state may be what failed (a snapshot raft adopted and the store did not; found
        // by the simulation, which then saw raft-rs refuse the data dir on restart because its
        // commit index was past its log).
        let flushed = if outcome.is_ok() {
            self.flush().await
        } else {
            Ok(())
        };
        self.writer.shutdown().await;
        // Let a snapshot being stored finish, so the storage is closed when `run` returns.
        let snapshot_failure = match self.snapshot_task.take() {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        self.waiters.fail_all(|| {
            Error::OutcomeUnknown("the node stopped before the entry was applied".into())
        });
        // Proposals the append window held were never appended: definitely not applied.
        for (_, _, reply) in self.proposal_batch.drain(..) {
            let _ = reply.send(Err(Error::ProposalDropped(
                "the node stopped before appending it".into(),
            )));
        }
        self.reads.fail_all();
        self.status_tx.send_modify(|s| s.role = Role::Stopped);
        slog::info!(self.logger, "run loop stopped"; "applied" => self.applied);
        outcome
            .and(flushed)
            .and(snapshot_failure.map_or(Ok(()), Err))
    }

    /// Handle one mailbox command; true when it asks the loop to stop.
    async fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Propose { data, kind, reply } => self.propose(data, kind, reply),
            Command::LearnPeers(peers) => {
                for (id, addr) in peers {
                    if self.peers.get(id).is_none() {
                        self.peers.insert(id, addr);
                    }
                }
                self.sync_transport();
            }
            Command::Redirect { id, addr } => self.redirect(id, addr),
            Command::CheckConfChange { cc, reply } => {
                let _ = reply.send(self.check_conf_change(&cc, &crate::config::Peers::new(), true));
            }
            Command::Raft(msg) => {
                self.note_member_contact();
                if let Some(lost) = self.log_lost_per(&msg) {
                    self.fatal = Some(lost);
                    return true;
                }
                if self.withholds_vote(&msg) {
                    return false;
                }
                if let Some(reason) = malformed_append(&msg) {
                    // Stepping it would acknowledge entries this node does not hold.
                    slog::warn!(self.logger, "dropping a malformed append"; "from" => msg.from, "reason" => reason);
                    self.metrics.malformed_appends.inc();
                    return false;
                }
                if let Err(e) = self.raw.step(*msg) {
                    slog::debug!(self.logger, "raft refused a message"; "error" => %e);
                }
            }
            Command::ReadIndex { reply } => {
                self.metrics.reads.inc();
                self.reads.push(reply);
            }
            Command::Query(f) => f(&self.fsm),
            Command::Campaign { reply } => {
                let _ = reply.send(self.raw.campaign().map_err(Error::from));
            }
            Command::TransferLeader { target, reply } => {
                let _ = reply.send(self.transfer_leader(target));
            }
            Command::ChangeConfig { cc, addrs, reply } => self.change_config(cc, addrs, reply),
            Command::Inspect { reply } => {
                let _ = reply.send(self.node_status());
            }
            Command::MakeSnapshot { reply } => {
                self.start_snapshot(Some(reply)).await;
            }
            Command::ReportUnreachable(id) => self.raw.report_unreachable(id),
            Command::ReportSnapshot(id, status) => self.raw.report_snapshot(id, status),
            Command::RemovedBy { by, reason } => {
                slog::debug!(self.logger, "a member refused this node as removed"; "by" => by, "reason" => &reason);
                self.on_removed(format!(
                    "node {by} applied its removal and refused its messages"
                ));
                return self.left;
            }
            Command::Leaving(leaving) => self.leaving = leaving,
            Command::Quit => return true,
        }
        false
    }

    /// Whether to ignore a vote request: this node holds nothing but the bootstrap
    /// configuration (its log ends at the initial snapshot) while the candidate's log is longer.
    ///
    /// Why: such a node is either new or a voter whose data dir was lost and started again
    /// empty from the same `initial_peers`. In the second case it may have acknowledged entries
    /// that the quorum now counts on; its vote could elect a candidate that lacks them and lose
    /// acknowledged writes. (The leader's `LogLost` check only catches a lost follower the
    /// current leader already tracked.) A genuinely new node loses nothing by abstaining: in a
    /// new cluster every log ends at the bootstrap index, and once a leader has appended to it,
    /// it votes normally. The cost is liveness in one corner: a cluster whose other voters are
    /// down waits for them rather than take this node's vote.
    fn withholds_vote(&mut self, msg: &raft::eraftpb::Message) -> bool {
        use raft::eraftpb::MessageType::{MsgRequestPreVote, MsgRequestVote};
        let kind = msg.get_msg_type();
        let last = self.raw.raft.raft_log.last_index();
        if !(kind == MsgRequestVote || kind == MsgRequestPreVote)
            || last > super::INITIAL_INDEX
            || msg.index <= last
        {
            return false;
        }
        self.metrics.votes_withheld.inc();
        if self.vote_withheld_warned_term < msg.term {
            self.vote_withheld_warned_term = msg.term;
            slog::warn!(self.logger, "not voting: this node holds only the bootstrap configuration and the candidate's log is longer; if this node's data dir was lost, remove it from the cluster and join it again with a new id";
                "candidate" => msg.from, "candidate_last_index" => msg.index, "term" => msg.term);
        }
        true
    }

    /// Whether raft would handle a ReadIndex now instead of dropping it: a leader is known and,
    /// on the leader itself, it has committed an entry of its term.
    fn reads_answerable(&self) -> bool {
        let raft = &self.raw.raft;
        raft.leader_id != raft::INVALID_ID
            && (raft.state != StateRole::Leader || raft.commit_to_current_term())
    }

    /// A heartbeat of the current leader names a commit index beyond the end of our log. The
    /// leader sends `min(acknowledged, committed)`, so we acknowledged entries we no longer
    /// hold: raft-rs would panic in `commit_to`. Refuse it as a fatal, explained error instead.
    /// (Appends are safe: raft-rs commits at most what they carry.)
    fn log_lost_per(&self, msg: &raft::eraftpb::Message) -> Option<Error> {
        let last = self.raw.raft.raft_log.last_index();
        let from_current_term = msg.term >= self.raw.raft.term;
        (msg.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat
            && from_current_term
            && msg.commit > last)
            .then(|| {
                Error::LogLost(format!(
                    "leader {} (term {}) says entries up to {} are committed here, but the log \
                     ends at {last}",
                    msg.from, msg.term, msg.commit
                ))
            })
    }

    pub(crate) fn not_leader(&self) -> Error {
        let leader = self.raw.raft.leader_id;
        if leader == raft::INVALID_ID {
            Error::NotLeader {
                leader_id: None,
                leader_addr: None,
            }
        } else {
            Error::NotLeader {
                leader_id: Some(leader),
                leader_addr: self.peers.dial_addr(leader),
            }
        }
    }

    fn transfer_leader(&mut self, target: Option<u64>) -> Result<u64> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        let me = self.raw.raft.id;
        let target = match target {
            Some(t) => t,
            None => self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != me && self.raw.raft.prs().conf().voters().contains(**id))
                .max_by_key(|(_, p)| p.matched)
                .map(|(id, _)| *id)
                .ok_or_else(|| {
                    Error::InvalidRequest("no other voter to hand leadership to".into())
                })?,
        };
        if !self.raw.raft.prs().conf().voters().contains(target) {
            return Err(Error::UnknownNode(target));
        }
        self.raw.transfer_leader(target);
        Ok(target)
    }

    /// Steps 2-8 of a turn (see the `node` module docs).
    async fn on_ready(&mut self) -> Result<()> {
        if self.writer.inflight() >= MAX_WRITES_IN_FLIGHT || !self.raw.has_ready() {
            return Ok(());
        }
        // 2. Read the committed entries this Ready hands out (raft-rs would panic on a read
        //    error; here it stops the node), then take the Ready.
        self.read_committed_ahead()?;
        let mut ready = self.raw.ready();
        self.raw.store().end_read_ahead();
        // 3. Messages that may leave before this node's own write (leader appends).
        self.transport.send(ready.take_messages());
        // 4. A snapshot from the leader replaces the log: let every write in flight land, then
        //    store it and restore the state machine from it before anything else.
        let has_snapshot = !ready.snapshot().is_empty();
        if has_snapshot {
            self.finish_writes().await?;
            self.raw.store().clear();
            self.install_snapshot(ready.snapshot().clone()).await?;
        }
        // 5. Apply committed entries (raft hands out only entries durable here and committed);
        //    note the read indexes raft confirmed.
        self.apply_committed(ready.take_committed_entries()).await?;
        for rs in ready.take_read_states() {
            self.reads.on_read_state(&rs.request_ctx, rs.index);
        }
        // 6. Stage the new entries (raft reads them from memory until they are durable) and
        //    hand entries + hard state (+ conf state, address book) to the writer, with the
        //    messages that must wait for them.
        let mut batch = PersistBatch {
            entries: ready.take_entries(),
            ..Default::default()
        };
        if ready.must_sync() {
            batch.hard_state = Some(self.raw.raft.hard_state());
            self.commit_dirty = false;
        } else if ready.hs().is_some() {
            // Only the commit index moved. It need not be durable (a restarted node relearns
            // it from the leader), so it rides on the next write instead of costing an fsync.
            self.commit_dirty = true;
        }
        self.take_pending_meta(&mut batch);
        let number = ready.number();
        self.raw.store().stage(number, &batch.entries);
        let persisted_messages = ready.take_persisted_messages();
        self.raw.advance_append_async(ready);
        self.writer.submit(WriteJob {
            number,
            batch,
            persisted_messages,
        })?;
        if has_snapshot {
            // raft accepts the snapshot's index as applied only once it knows it is durable.
            self.finish_writes().await?;
        }
        self.raw.advance_apply_to(self.applied);
        self.reads.on_applied(self.applied);
        // 8. Snapshot policy.
        let since = self
            .applied
            .saturating_sub(self.store.snapshot_metadata().index);
        let requested = self.store.take_snapshot_request() && since > 0;
        if requested || self.snapshot_policy.is_due(&self.config, since) {
            // A failed snapshot only delays compaction (it is logged); the node keeps serving.
            self.start_snapshot(None).await;
        }
        Ok(())
    }

    /// The failed log read raft-rs was not told about, if any (see `StagedLog`), as the error
    /// the loop stops with.
    fn read_failure(&self) -> Option<Error> {
        let e = Error::Storage(self.raw.store().take_read_failure()?);
        slog::crit!(self.logger, "run loop stopped: the log could not be read"; "error" => %e);
        Some(e)
    }

    /// Read the committed entries the next Ready will hand out (see `StagedLog::read_ahead`).
    /// raft-rs starts them after the last index it handed out, which is `applied` here: every
    /// Ready's committed entries are applied in the same turn.
    fn read_committed_ahead(&mut self) -> Result<()> {
        let log = &self.raw.raft.raft_log;
        if !log.has_next_entries_since(self.applied) {
            return Ok(());
        }
        let low = (self.applied + 1).max(log.first_index());
        let high = log.committed.min(log.persisted) + 1;
        let max = self.config.raft.max_committed_size_per_ready;
        self.raw
            .store()
            .read_ahead(low, high, Some(max))
            .map_err(|e| match e {
                // A storage failure stays typed: its message names the file and the offset.
                raft::Error::Store(raft::StorageError::Other(inner)) => {
                    match inner.downcast::<crate::storage::StorageError>() {
                        Ok(storage) => Error::Storage(*storage),
                        Err(other) => Error::Other(format!(
                            "cannot read committed entries {low}..{high}: {other}"
                        )),
                    }
                }
                other => Error::Other(format!(
                    "cannot read committed entries {low}..{high}: {other}"
                )),
            })
    }

    /// 7. The writer made Readies up to `done.number` durable: send the messages that waited
    ///    for it (votes, follower acks) and tell raft, which may now count this node's copy
    ///    towards a commit; the next turn's Ready carries what that unlocked.
    fn on_persisted(&mut self, done: WriteDone) -> Result<()> {
        done.result?;
        self.transport.send(done.messages);
        self.raw.on_persist_ready(done.number);
        self.raw.store().release(done.number);
        Ok(())
    }

    /// Wait until every write handed to the writer is durable (before a snapshot replaces the
    /// log, and before stopping).
    async fn finish_writes(&mut self) -> Result<()> {
        while self.writer.inflight() > 0 {
            match self.writer.next_done().await {
                Some(done) => self.on_persisted(done)?,
                None => {
                    return Err(Error::Other(
                        "the writer thread stopped unexpectedly".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    fn take_pending_meta(&mut self, batch: &mut PersistBatch) {
        batch.conf_state = self.pending_conf.take();
        if self.peers_dirty {
            batch.peers = Some((self.peers.to_peers(), self.applied));
            self.peers_dirty = false;
        }
        if batch.conf_state.is_some() && batch.hard_state.is_none() {
            batch.hard_state = Some(self.raw.raft.hard_state());
        }
    }

    /// Write a batch on the blocking pool, so the fsync never stalls the async runtime (used
    /// once the writer thread is drained, when stopping).
    async fn persist(&self, batch: PersistBatch) -> Result<()> {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        crate::blocking::run_blocking(move || write_batch(&store, &metrics, batch)).await?
    }

    /// Let every queued write land, then write what is still only in memory (the latest commit
    /// index, a conf change applied last) before stopping.
    async fn flush(&mut self) -> Result<()> {
        self.finish_writes().await?;
        let mut batch = PersistBatch::default();
        if self.commit_dirty {
            batch.hard_state = Some(self.raw.raft.hard_state());
            self.commit_dirty = false;
        }
        self.take_pending_meta(&mut batch);
        self.persist(batch).await
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let next = SoftStatus {
            role: raft.state.into(),
            term: raft.term,
            leader_id: raft.leader_id,
            commit: raft.raft_log.committed,
            applied: self.applied,
        };
        self.metrics.applied_index.set(self.applied as i64);
        self.metrics.term.set(next.term as i64);
        let logger = &self.logger;
        let metrics = &self.metrics;
        let leader_since = &mut self.leader_since;
        self.status_tx.send_if_modified(|cur| {
            if *cur == next {
                return false;
            }
            if cur.role != next.role || cur.leader_id != next.leader_id {
                *leader_since = (next.role == Role::Leader).then(tokio::time::Instant::now);
                if cur.leader_id != next.leader_id && next.leader_id != 0 {
                    metrics.leader_changes.inc();
                }
                slog::info!(logger, "role changed"; "role" => ?next.role, "term" => next.term, "leader" => next.leader_id);
            }
            *cur = next;
            true
        });
    }

    fn node_status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let status = self.raw.status();
        let conf = raft.prs().conf();
        let book = self.peers.to_peers();
        let mut ids: Vec<u64> = conf.voters().ids().iter().collect();
        ids.extend(conf.learners().iter().copied());
        ids.sort_unstable();
        ids.dedup();
        let peers = ids
            .into_iter()
            .map(|id| {
                let progress = status.progress.and_then(|p| p.get(id));
                PeerStatus {
                    id,
                    addr: book.get(&id).cloned(),
                    role: if conf.learners().contains(&id) {
                        PeerRole::Learner
                    } else {
                        PeerRole::Voter
                    },
                    matched: progress.map(|p| p.matched),
                    next_index: progress.map(|p| p.next_idx),
                    state: progress.map(|p| format!("{:?}", p.state)),
                    recent_active: progress.map(|p| p.recent_active),
                }
            })
            .collect();
        let snap = self.store.snapshot_metadata();
        NodeStatus {
            id: raft.id,
            cluster_id: self.config.cluster_id.clone(),
            role: raft.state.into(),
            term: raft.term,
            vote: raft.vote,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            snapshot_index: snap.index,
            snapshot_term: snap.term,
            pending_proposals: self.waiters.len(),
            held_proposals: self.proposal_batch.len(),
            read_index_requests: self.reads.requests,
            read_index_rounds: self.reads.rounds,
            peers,
        }
    }
}

/// Why an append cannot be stepped, if it cannot: its entries must follow its `index` (the
/// entry before them) one by one.
///
/// raft-rs 0.7 breaks this itself with `batch_append` (on by default here): when a leader
/// already queued an append without entries for a follower (a commit update at index `i`) and,
/// in the same Ready, a rejection moves that follower's next index back below `i + 1`, the
/// entries it sends from there are added to the queued message, which keeps `index = i`
/// (`Raft::try_batching` only checks that entries follow entries). The follower would then
/// acknowledge `i + n` while holding less, and the leader could count that towards a commit.
/// Dropping the message is what losing it would do: the leader sends again.
fn malformed_append(msg: &raft::eraftpb::Message) -> Option<String> {
    if msg.get_msg_type() != raft::eraftpb::MessageType::MsgAppend {
        return None;
    }
    (msg.index + 1..)
        .zip(msg.get_entries())
        .find(|(expected, entry)| entry.index != *expected)
        .map(|(expected, entry)| {
            format!(
                "entry {} where {expected} should follow index {}",
                entry.index, msg.index
            )
        })
}

#[cfg(test)]
mod tests {
    use super::malformed_append;
    use raft::eraftpb::{Entry, Message, MessageType};

    fn append(index: u64, entries: &[u64]) -> Message {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgAppend);
        msg.index = index;
        msg.set_entries(
            entries
                .iter()
                .map(|i| Entry {
                    index: *i,
                    ..Default::default()
                })
                .collect(),
        );
        msg
    }

    #[test]
    fn an_append_whose_entries_follow_its_index_is_stepped() {
        assert_eq!(malformed_append(&append(10, &[11, 12])), None);
        assert_eq!(malformed_append(&append(10, &[])), None);
    }

    #[test]
    fn an_append_batched_onto_a_later_index_is_dropped() {
        // What raft-rs' try_batching builds: a commit-only append at 10, then entries from 9.
        let reason = malformed_append(&append(10, &[9, 10])).expect("malformed");
        assert!(reason.contains("entry 9 where 11"), "{reason}");
        assert!(malformed_append(&append(10, &[11, 13])).is_some());
    }
}
