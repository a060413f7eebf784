//! The framework's error type: what a user of `Raft` / `RaftNode` sees.
//!
//! Each layer has its own enum (`StorageError`, `TransportError`); they are converted here at the
//! boundary so callers match on one type. Messages say what happened and, where there is one, what
//! to do about it.

use crate::storage::StorageError;
use crate::tls::TlsError;

/// Result alias used throughout pontoon and by user state machines.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything a pontoon call can fail with. New variants may be added: match the ones you
/// handle and keep a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node is not the leader and the call must run on the leader. `leader_id` is the
    /// current leader when known, so a client can go there directly.
    #[error("this node is not the leader (leader: {})", leader_hint(*.leader_id, .leader_addr))]
    NotLeader {
        /// The leader's id, when this node knows one.
        leader_id: Option<u64>,
        /// The leader's raft address, when this node knows it: send the call there.
        leader_addr: Option<String>,
    },
    /// No leader is known (an election is under way or a quorum is unreachable). Retry later.
    #[error("no leader is known right now (election in progress or quorum lost); retry later")]
    NoLeader,
    /// The proposal is definitely not in the log: raft dropped it, or another entry took its
    /// index after a leader change. It is safe to retry.
    #[error("proposal was not committed ({0}); it is safe to retry")]
    ProposalDropped(String),
    /// The call did not finish in time. When `outcome_unknown` is set (the call may have
    /// appended to the log: a proposal, a membership change, an id reservation, an address
    /// update), the entry may still be committed and applied later: do not assume it failed.
    /// Otherwise the call appended nothing (a read, a status call, a leader transfer, which may
    /// still complete after the timeout).
    #[error("{what} timed out{}", if *.outcome_unknown { "; the outcome is unknown (it may still be applied)" } else { "" })]
    Timeout {
        /// The call that timed out, for the message.
        what: String,
        /// True when the call may have appended to the log: its effect may still appear.
        outcome_unknown: bool,
    },
    /// The node stopped or the connection broke after the proposal was handed over: the entry may
    /// or may not be committed. Check before retrying a non-idempotent command.
    #[error("outcome unknown: {0}; the entry may still be applied")]
    OutcomeUnknown(String),
    /// A command sent through a session (`Session::propose`) was refused because its session
    /// is no longer open (it expired, least recently used first, or was closed) or its answer
    /// is no longer kept. This attempt applied nothing and the command will never be applied
    /// under its (session, number) again; if an earlier attempt of the same command got no
    /// answer, that attempt may have applied it once. Open a new session for new commands.
    #[error("session expired: {0}; open a new session")]
    SessionExpired(String),
    /// Another membership change is not applied yet (or the cluster is in a joint configuration
    /// that must be left first). Retry when it is applied.
    #[error("a membership change is in progress: {0}")]
    ChangeInProgress(String),
    /// The leader was elected moments ago and cannot judge yet which members are reachable.
    /// Retried by `RaftNode` within the call's deadline; surfaces only when it persists.
    #[error("the leader is not ready yet: {0}; retry shortly")]
    NotReady(String),
    /// A bounded resource is full (too many pending proposals); nothing was proposed. Retry
    /// later or slow down.
    #[error("node is busy: {0}; retry later")]
    Busy(String),
    /// The node id is not a member of this cluster.
    #[error("node {0} is not a member of this cluster")]
    UnknownNode(u64),
    /// The membership change would leave fewer reachable voters than a quorum (counting only
    /// voters whose log reaches past the bootstrap configuration: the others withhold votes).
    #[error("refused: {0}")]
    WouldLoseQuorum(String),
    /// The user's state machine returned an error while applying or restoring.
    #[error("state machine error: {0}")]
    StateMachine(String),
    /// Encoding or decoding of user data failed.
    #[error("encoding error: {0}")]
    Encoding(String),
    /// The local storage failed or refused to open.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A peer could not be reached or answered with a transport-level error.
    #[error("transport error: {0}")]
    Transport(String),
    /// A request was refused because it belongs to another cluster: `local` is the cluster id
    /// this side uses (empty when not known here), `remote` the refusing node's ("unknown" when
    /// it did not say). Check the addresses and `Config::cluster_id`.
    #[error(
        "cluster id mismatch: this node is in cluster {local:?}, the other side in {remote:?}"
    )]
    ClusterMismatch {
        /// This side's cluster id (empty when not known here).
        local: String,
        /// The refusing node's cluster id ("unknown" when it did not say).
        remote: String,
    },
    /// The call needs the cluster's join token (`Config::join_token`) and none, or a different
    /// one, was presented. Nothing was changed. Configure the same token as the cluster.
    #[error(
        "unauthorized: {0}; configure the cluster's join token (Config::join_token / --join-token)"
    )]
    Unauthorized(String),
    /// TLS material could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The input was refused as given (too large, malformed, unknown id, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Configuration rejected before starting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The leader says this node acknowledged log entries that its log does not hold: the data
    /// dir was lost, replaced or restored from an old copy. The node stops rather than corrupt
    /// the cluster. Remove it from the cluster and join it again with a new id and an empty dir.
    #[error(
        "this node's log lost entries it had acknowledged: {0}; its data dir was lost, replaced \
         or restored from an old copy. Remove the node from the cluster and join it again with a \
         new id and an empty data dir"
    )]
    LogLost(String),
    /// This node is no longer a member: a committed membership change removed it. Either it
    /// applied that change itself, or a member refused its messages because it had (a node cut
    /// off while it was removed never sees the entry). Removal is final: ids are never reused.
    /// The data dir is of no further use; to bring the machine back, delete the dir and join
    /// again with a new id.
    #[error(
        "node {id} was removed from the cluster ({how}); a removed id is never reused: delete \
         this node's data dir and join the cluster again with a new id"
    )]
    Removed {
        /// The removed node's id (this node).
        id: u64,
        /// How the removal became known: applied here, or reported by a member that refused
        /// this node's messages.
        how: String,
    },
    /// An error from raft-rs itself.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The node is shutting down or has stopped; the call was not carried out.
    #[error("the node is shutting down or has stopped (its run() has returned or is returning)")]
    ShuttingDown,
    /// The node's run loop was never started: nothing reads its mailbox, so the call cannot be
    /// carried out (and nothing was proposed).
    #[error("the node is not running: spawn `raft.clone().run()` after `Raft::bootstrap`")]
    NotRunning,
    /// `Raft::run` was called a second time on the same instance.
    #[error("this Raft instance is already running or has run")]
    AlreadyRunning,
    /// An I/O error outside storage (binding the listen address, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

fn leader_hint(id: Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown".to_string(),
    }
}

impl Error {
    /// A timeout of a call that changes nothing (a read, a status call, a leader transfer).
    pub fn timeout(what: impl Into<String>) -> Self {
        Error::Timeout {
            what: what.into(),
            outcome_unknown: false,
        }
    }

    /// A timeout of a call that may have appended to the log: its outcome is unknown.
    pub fn write_timeout(what: impl Into<String>) -> Self {
        Error::Timeout {
            what: what.into(),
            outcome_unknown: true,
        }
    }

    /// True when the call may or may not have taken effect (`OutcomeUnknown`, or a `Timeout`
    /// of a write): check before retrying a command that is not idempotent.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::OutcomeUnknown(_)
                | Error::Timeout {
                    outcome_unknown: true,
                    ..
                }
        )
    }

    /// True when retrying the same call later can succeed without risking a duplicate apply.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::NoLeader
                | Error::ProposalDropped(_)
                | Error::ChangeInProgress(_)
                | Error::NotReady(_)
                | Error::Busy(_)
        )
    }
}

impl From<Box<bincode::ErrorKind>> for Error {
    fn from(e: Box<bincode::ErrorKind>) -> Self {
        Error::Encoding(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Encoding(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_timeout_of_a_write_says_its_outcome_is_unknown() {
        let read = Error::timeout("linearizable read");
        assert_eq!(read.to_string(), "linearizable read timed out");
        assert!(!read.outcome_unknown());
        let write = Error::write_timeout("forwarded proposal");
        assert!(write.to_string().contains("outcome is unknown"), "{write}");
        assert!(write.outcome_unknown());
        assert!(Error::OutcomeUnknown("the node stopped".into()).outcome_unknown());
    }
}
