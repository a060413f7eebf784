//! How a write reaches the leader: tried on this node's run loop first and, when another node
//! leads, forwarded to it over gRPC, retrying (bounded by the propose timeout, with backoff)
//! while no leader is known.

use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::ConfChangeV2;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handle::{RaftNode, LEADER_POLL_CAP};
use super::mailbox::Command;
use super::proposals::{EntryKind, FrameworkEntry};
use super::rpc_results::{is_connect_error, response_to_result, status_to_error};
use super::session_table::{decode_opened, SessionCommand};
use crate::config::Peers;
use crate::error::{Error, Result};
use crate::transport::pb;

/// What a caller asks the leader to append.
#[derive(Clone)]
pub(super) enum Submission {
    Entry(Vec<u8>),
    ConfChange {
        cc: ConfChangeV2,
        addrs: Peers,
    },
    ReserveId(String),
    UpdateAddress {
        node_id: u64,
        raft_addr: String,
    },
    /// Open a client session with at most this window (0: the leader's `session_window`).
    OpenSession {
        window: u64,
    },
    /// A command of a client session.
    SessionCommand {
        header: SessionCommand,
        data: Vec<u8>,
    },
}

impl RaftNode {
    pub(super) async fn submit(&self, submission: Submission) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let outcome = match self.submit_local(submission.clone(), deadline).await {
                Err(Error::NotLeader {
                    leader_id: Some(leader),
                    ..
                }) if leader != self.id() => self.forward(leader, &submission, deadline).await,
                other => other,
            };
            match outcome {
                Err(e @ (Error::NotLeader { .. } | Error::NoLeader | Error::NotReady(_))) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(match e {
                            Error::NotReady(_) => e,
                            _ => Error::NoLeader,
                        });
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

    /// Open a client session through the log (forwarded to the leader); answers its id and the
    /// window granted (`window` 0 or above the leader's `Config::session_window` gets that).
    /// Most callers want `RaftNode::session`, which numbers and retries commands itself; this
    /// and `propose_in_session` are for a front end whose own clients number their commands
    /// (memstore's HTTP sessions, say).
    pub async fn open_session(&self, window: u64) -> Result<(u64, u64)> {
        let answer = self.submit(Submission::OpenSession { window }).await?;
        decode_opened(&answer)
    }

    /// `open_session` on this node only (the gRPC server's side): `NotLeader` elsewhere.
    pub(crate) async fn open_session_local(&self, window: u64) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        self.submit_local(Submission::OpenSession { window }, deadline)
            .await
    }

    /// Send one command of a session (forwarded to the leader); one attempt, no retry. Answers
    /// what `apply` returned the first time this (session, seq) applied, without applying it
    /// again. `SessionExpired` when the session is not open or the number was acknowledged;
    /// `InvalidRequest` when the number is beyond the session's window past `header.acked`.
    /// Other errors are those of `propose`, and retrying with the same header is always safe.
    pub async fn propose_in_session(
        &self,
        header: SessionCommand,
        data: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.submit(Submission::SessionCommand { header, data })
            .await
    }

    /// `propose_in_session` on this node only (the gRPC server's side).
    pub(crate) async fn propose_in_session_local(
        &self,
        header: SessionCommand,
        data: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.shared.config.propose_timeout;
        self.submit_local(Submission::SessionCommand { header, data }, deadline)
            .await
    }

    pub(super) async fn submit_local(
        &self,
        submission: Submission,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        let cmd = match submission {
            Submission::Entry(data) => Command::Propose {
                data,
                kind: EntryKind::User,
                reply,
            },
            Submission::ConfChange { cc, addrs } => Command::ChangeConfig { cc, addrs, reply },
            Submission::ReserveId(raft_addr) => Command::Propose {
                data: FrameworkEntry::ReserveId { raft_addr }.encode()?,
                kind: EntryKind::Framework,
                reply,
            },
            Submission::UpdateAddress { node_id, raft_addr } => Command::Propose {
                data: FrameworkEntry::UpdateAddress { node_id, raft_addr }.encode()?,
                kind: EntryKind::Framework,
                reply,
            },
            Submission::OpenSession { window } => {
                // The proposer (the leader) fixes the limits in the entry: every node applies
                // the same ones, whatever its own configuration.
                let config = &self.shared.config;
                let window = match window {
                    0 => config.session_window,
                    asked => asked.min(config.session_window),
                };
                Command::Propose {
                    data: FrameworkEntry::OpenSession {
                        max_sessions: config.max_sessions,
                        window,
                    }
                    .encode()?,
                    kind: EntryKind::Framework,
                    reply,
                }
            }
            Submission::SessionCommand { header, data } => Command::Propose {
                data: header.encode_with(&data),
                kind: EntryKind::Session,
                reply,
            },
        };
        self.send_until(cmd, deadline).await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::OutcomeUnknown("the node stopped".into())),
            Err(_) => Err(Error::write_timeout("proposal")),
        }
    }

    async fn forward(
        &self,
        leader: u64,
        submission: &Submission,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let addr = self
            .shared
            .peers
            .dial_addr(leader)
            .ok_or(Error::NotLeader {
                leader_id: None,
                leader_addr: None,
            })?;
        match self.send_submission(&addr, submission, deadline).await? {
            Err(status)
                if status.code() == tonic::Code::Unavailable && is_connect_error(&status) =>
            {
                // The leader could not be reached at all: nothing was handed over.
                Err(Error::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                })
            }
            Err(status) => Err(status_to_error(status)),
            Ok(response) => response_to_result(response),
        }
    }

    /// Hand `submission` to the node at `addr` through the RPC that carries its kind, with this
    /// node's cluster id and join token (the receiver checks the token again), bounded by
    /// `deadline`. The outer error: no client for `addr`, or no answer in time (then the
    /// outcome is unknown); the inner one is the receiver's gRPC status.
    pub(super) async fn send_submission(
        &self,
        addr: &str,
        submission: &Submission,
        deadline: Instant,
    ) -> Result<std::result::Result<pb::ProposeResponse, tonic::Status>> {
        let mut client = self.shared.clients.get(addr, &self.shared.config)?;
        let cluster_id = self.shared.config.cluster_id.clone();
        let join_token = self.shared.config.join_token.clone().unwrap_or_default();
        let call = async {
            match submission {
                Submission::Entry(data) => {
                    client
                        .propose(pb::ProposeRequest {
                            cluster_id,
                            data: data.clone(),
                            ..Default::default()
                        })
                        .await
                }
                Submission::ReserveId(raft_addr) => {
                    client
                        .request_id(pb::RequestIdRequest {
                            cluster_id,
                            raft_addr: raft_addr.clone(),
                            join_token,
                        })
                        .await
                }
                Submission::UpdateAddress { node_id, raft_addr } => {
                    client
                        .update_address(pb::UpdateAddressRequest {
                            cluster_id,
                            node_id: *node_id,
                            raft_addr: raft_addr.clone(),
                            join_token,
                        })
                        .await
                }
                Submission::OpenSession { window } => {
                    client
                        .open_session(pb::OpenSessionRequest {
                            cluster_id,
                            window: *window,
                        })
                        .await
                }
                Submission::SessionCommand { header, data } => {
                    client
                        .propose(pb::ProposeRequest {
                            cluster_id,
                            data: data.clone(),
                            session_id: header.session,
                            seq: header.seq,
                            acked: header.acked,
                        })
                        .await
                }
                Submission::ConfChange { cc, addrs } => {
                    let conf_change = cc
                        .write_to_bytes()
                        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
                    client
                        .change_config(pb::ChangeConfigRequest {
                            cluster_id,
                            conf_change,
                            addrs: addrs.clone().into_iter().collect(),
                            join_token,
                        })
                        .await
                }
            }
        };
        tokio::time::timeout_at(deadline, call)
            .await
            .map(|answer| answer.map(tonic::Response::into_inner))
            .map_err(|_| Error::write_timeout(format!("submission to {addr}")))
    }
}
