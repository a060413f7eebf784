//! Answers on the wire: a node's result as the `ProposeResponse` of the Propose / ChangeConfig
//! RPCs and back, and a peer's gRPC status as pontoon's error. The server, the forwarding path,
//! the join client and the CLI all convert through here, so a typed error survives the hop.

use crate::error::{Error, Result};
use crate::transport::pb;

/// Turn a leader's answer into the caller's result (the inverse of `error_to_response`).
pub(crate) fn response_to_result(response: pb::ProposeResponse) -> Result<Vec<u8>> {
    use pb::ProposeStatus as S;
    let msg = response.error;
    match S::try_from(response.status) {
        Ok(S::Ok) => Ok(response.result),
        Ok(S::NotLeader) => Err(Error::NotLeader {
            leader_id: (response.leader_id != 0).then_some(response.leader_id),
            leader_addr: (!response.leader_addr.is_empty()).then_some(response.leader_addr),
        }),
        Ok(S::Dropped) => Err(Error::ProposalDropped(msg)),
        Ok(S::ApplyFailed) => Err(Error::StateMachine(msg)),
        Ok(S::UnknownOutcome) => Err(Error::OutcomeUnknown(msg)),
        Ok(S::Rejected) => Err(Error::InvalidRequest(msg)),
        Ok(S::ChangeInProgress) => Err(Error::ChangeInProgress(msg)),
        Ok(S::UnknownNode) => Err(Error::UnknownNode(response.node_id)),
        Ok(S::WouldLoseQuorum) => Err(Error::WouldLoseQuorum(msg)),
        Ok(S::NotReady) => Err(Error::NotReady(msg)),
        Ok(S::Unauthorized) => Err(Error::Unauthorized(msg)),
        Ok(S::TimedOut) => Err(Error::timeout(msg)),
        Ok(S::Unreachable) => Err(Error::Transport(msg)),
        Ok(S::SessionExpired) => Err(Error::SessionExpired(msg)),
        Ok(S::ShuttingDown) => Err(Error::NotLeader {
            leader_id: None,
            leader_addr: None,
        }),
        Err(_) => Err(Error::OutcomeUnknown(format!(
            "leader answered an unknown status {}",
            response.status
        ))),
    }
}

/// Encode a local result as the answer of the Propose / ChangeConfig RPCs.
pub(crate) fn result_to_response(result: Result<Vec<u8>>) -> pb::ProposeResponse {
    use pb::ProposeStatus as S;
    let mut resp = pb::ProposeResponse::default();
    let e = match result {
        Ok(bytes) => {
            resp.set_status(S::Ok);
            resp.result = bytes;
            return resp;
        }
        Err(e) => e,
    };
    let status = match &e {
        Error::NotLeader {
            leader_id,
            leader_addr,
        } => {
            resp.leader_id = leader_id.unwrap_or(0);
            resp.leader_addr = leader_addr.clone().unwrap_or_default();
            S::NotLeader
        }
        Error::NoLeader => S::NotLeader,
        Error::ProposalDropped(_) => S::Dropped,
        Error::StateMachine(_) => S::ApplyFailed,
        Error::InvalidRequest(_) => S::Rejected,
        Error::ChangeInProgress(_) => S::ChangeInProgress,
        Error::UnknownNode(id) => {
            resp.node_id = *id;
            S::UnknownNode
        }
        Error::WouldLoseQuorum(_) => S::WouldLoseQuorum,
        Error::NotReady(_) | Error::Busy(_) => S::NotReady,
        Error::ShuttingDown => S::ShuttingDown,
        Error::Unauthorized(_) => S::Unauthorized,
        Error::Timeout {
            outcome_unknown: false,
            ..
        } => S::TimedOut,
        Error::Transport(_) => S::Unreachable,
        Error::SessionExpired(_) => S::SessionExpired,
        _ => S::UnknownOutcome,
    };
    resp.set_status(status);
    // The typed variants carry their own detail; send just that, not the Display prefix.
    resp.error = match e {
        Error::ProposalDropped(m)
        | Error::StateMachine(m)
        | Error::InvalidRequest(m)
        | Error::ChangeInProgress(m)
        | Error::WouldLoseQuorum(m)
        | Error::NotReady(m)
        | Error::Busy(m)
        | Error::Unauthorized(m)
        | Error::OutcomeUnknown(m)
        | Error::SessionExpired(m)
        | Error::Transport(m) => m,
        Error::Timeout {
            what,
            outcome_unknown: false,
        } => what,
        other => other.to_string(),
    };
    resp
}

pub(crate) fn is_connect_error(status: &tonic::Status) -> bool {
    // tonic reports a failed connection attempt as Unavailable with a transport error source.
    let msg = status.message().to_ascii_lowercase();
    msg.contains("connect") || msg.contains("refused") || msg.contains("dns")
}

/// Map a gRPC status from a peer to pontoon's error.
pub(crate) fn status_to_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::PermissionDenied => Error::ClusterMismatch {
            local: String::new(),
            remote: crate::transport::wire::refusing_cluster(&status),
        },
        tonic::Code::InvalidArgument => Error::InvalidRequest(status.message().to_string()),
        tonic::Code::Unauthenticated => Error::Unauthorized(status.message().to_string()),
        _ => Error::OutcomeUnknown(format!("transport: {status}")),
    }
}

/// A status' message plus its source chain (where tonic keeps TLS and connection details).
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = crate::tls::error_chain(source);
        if !out.contains(&chain) {
            out.push_str(" (");
            out.push_str(&chain);
            out.push(')');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded call's timeout keeps what it says about the log across the hop: a timed-out
    /// leader transfer is not reported as a write of unknown outcome.
    #[test]
    fn a_timeout_keeps_whether_its_outcome_is_unknown_over_the_wire() {
        let read = response_to_result(result_to_response(Err(Error::timeout(
            "leader transfer to 2",
        ))));
        match read {
            Err(e @ Error::Timeout { .. }) => {
                assert!(!e.outcome_unknown());
                assert_eq!(e.to_string(), "leader transfer to 2 timed out");
            }
            other => panic!("expected a plain timeout, got {other:?}"),
        }
        let write = response_to_result(result_to_response(Err(Error::write_timeout("proposal"))));
        assert!(
            write.as_ref().is_err_and(Error::outcome_unknown),
            "{write:?}"
        );
    }
}
