//! Applying committed entries, inside the run loop: user commands (alone or in a batch entry) to
//! the state machine, pontoon's own entries, and membership changes, answering this node's
//! waiters as each is applied.

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, EntryType};

use super::command_batch;
use super::proposals::{EntryKind, FrameworkEntry, ProposalContext};
use super::run_loop::RunLoop;
use super::session_table::{SessionCommand, Verdict};
use crate::error::{Error, Result};
use crate::state_machine::AbstractStateMachine;
use crate::storage::LogStore;

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    pub(super) async fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<()> {
        for mut entry in entries {
            let index = entry.index;
            if index <= self.applied {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    self.snapshot_policy.on_applied(entry.data.len());
                    let ctx = ProposalContext::decode(entry.get_context());
                    let data = entry.take_data();
                    if let Some(batch) = ctx.filter(|c| c.kind == EntryKind::UserBatch) {
                        self.apply_batch(index, batch, &data).await;
                    } else if let Some(batch) = ctx.filter(|c| c.kind == EntryKind::Session) {
                        self.apply_session_batch(index, batch, &data).await;
                    } else {
                        let result = match ctx {
                            Some(c) if c.kind == EntryKind::Framework => {
                                self.apply_framework(index, &data)
                            }
                            // The empty entry a new leader appends: nothing to apply.
                            None if data.is_empty() => Ok(Vec::new()),
                            _ => {
                                self.metrics.applied_commands.inc();
                                self.fsm
                                    .apply(Vec::from(data))
                                    .await
                                    .map_err(applied_with_error)
                            }
                        };
                        self.waiters.on_applied(index, ctx, result);
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let (ctx, cs) = self.apply_conf_change(&entry)?;
                    let answer = cs
                        .write_to_bytes()
                        .map_err(|e| Error::Encoding(e.to_string()));
                    self.waiters.on_applied(index, ctx, answer);
                }
            }
            self.applied = index;
            self.metrics.committed_entries.inc();
        }
        Ok(())
    }

    /// Apply the commands of a batch entry one by one, in order, and answer this node's waiters
    /// each with its own result. A batch that cannot be decoded (only a proposer bug could
    /// commit one: the log is checksummed) is skipped the same way on every node, and its
    /// waiters get the decoding error.
    pub(super) async fn apply_batch(&mut self, index: u64, ctx: ProposalContext, data: &[u8]) {
        match command_batch::decode(data) {
            Ok(commands) => {
                let mut results = Vec::with_capacity(commands.len());
                for command in commands {
                    let result = self.fsm.apply(command.to_vec()).await;
                    results.push(result.map_err(applied_with_error));
                }
                self.metrics.applied_commands.inc_by(results.len() as u64);
                self.waiters.on_applied_batch(index, Some(ctx), results);
            }
            Err(e) => {
                slog::error!(self.logger, "skipping a batch entry that cannot be decoded"; "index" => index, "error" => %e);
                let why = e.to_string();
                self.waiters
                    .on_applied_unreadable(index, || Error::Encoding(why.clone()));
            }
        }
    }

    /// Apply the session commands of an entry through the session table: a number the table
    /// already holds is answered from it, a refused one gets its definite error, and only a new
    /// one reaches the state machine. Like `apply_batch`, an entry that cannot be decoded is
    /// skipped the same way on every node.
    pub(super) async fn apply_session_batch(
        &mut self,
        index: u64,
        ctx: ProposalContext,
        data: &[u8],
    ) {
        let commands = match command_batch::decode(data) {
            Ok(commands) => commands,
            Err(e) => {
                slog::error!(self.logger, "skipping a session entry that cannot be decoded"; "index" => index, "error" => %e);
                let why = e.to_string();
                self.waiters
                    .on_applied_unreadable(index, || Error::Encoding(why.clone()));
                return;
            }
        };
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            let result = match SessionCommand::split(command) {
                Err(e) => Err(e),
                Ok((header, payload)) => match self.sessions.check(index, &header) {
                    Verdict::Apply => {
                        self.metrics.applied_commands.inc();
                        let result = self
                            .fsm
                            .apply(payload.to_vec())
                            .await
                            .map_err(applied_with_error);
                        self.sessions.record(&header, &result);
                        result
                    }
                    Verdict::Answer(answer) => {
                        self.metrics.session_commands_not_reapplied.inc();
                        answer
                    }
                },
            };
            results.push(result);
        }
        self.waiters.on_applied_batch(index, Some(ctx), results);
    }

    /// Apply one of pontoon's own entries. Deterministic: every node derives the same answer.
    pub(super) fn apply_framework(&mut self, index: u64, data: &[u8]) -> Result<Vec<u8>> {
        match FrameworkEntry::decode(data)? {
            FrameworkEntry::ReserveId { raft_addr } => {
                self.max_node_id += 1;
                if index > self.replayed_until {
                    slog::info!(self.logger, "node id reserved"; "id" => self.max_node_id, "for" => raft_addr);
                } else {
                    slog::debug!(self.logger, "node id reserved (replayed)"; "id" => self.max_node_id, "for" => raft_addr);
                }
                Ok(self.max_node_id.to_be_bytes().to_vec())
            }
            FrameworkEntry::UpdateAddress { node_id, raft_addr } => {
                self.apply_address_update(index, node_id, raft_addr)?;
                Ok(Vec::new())
            }
            FrameworkEntry::OpenSession {
                max_sessions,
                window,
            } => {
                let id = self.sessions.open(index, max_sessions, window);
                self.metrics.sessions_open.set(self.sessions.len() as i64);
                Ok(super::session_table::opened_answer(id, window.max(1)))
            }
        }
    }
}

/// What the proposer hears when `apply` fails: always `StateMachine`, whatever variant `apply`
/// returned. The entry is committed either way, and only `StateMachine` says so; an `Encoding`
/// or `InvalidRequest` from inside `apply` would tell a client its write is not in the log.
fn applied_with_error(e: Error) -> Error {
    match e {
        Error::StateMachine(_) => e,
        other => Error::StateMachine(other.to_string()),
    }
}
