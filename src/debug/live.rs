//! What running nodes report, through their `DebugNode` / `GetPeers` RPCs.

use serde::{Deserialize, Serialize};

use super::table::render_table;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::describe_status;
use crate::node::NodeStatus;
use crate::tls::TlsConfig;
use crate::transport::connect_lazy;
use crate::transport::pb;

/// How tools reach running nodes: the TLS material when the cluster runs mutual TLS, and the
/// join token for calls that change membership (`remove_member_with`).
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Present this certificate and trust this CA (needed when the nodes run with
    /// `Config::tls`).
    pub tls: Option<TlsConfig>,
    /// The cluster's join token (`Config::join_token`), sent with membership changes.
    pub join_token: Option<String>,
}

impl RemoteOptions {
    /// A client config with these options and the given RPC deadline.
    pub(crate) fn config(&self, rpc_timeout: std::time::Duration) -> Config {
        Config {
            rpc_timeout,
            tls: self.tls.clone(),
            join_token: self.join_token.clone(),
            ..Config::default()
        }
    }
}

fn rpc_config(options: &RemoteOptions) -> Config {
    options.config(std::time::Duration::from_secs(3))
}

/// The live status of the node at `addr`. `cluster_id` may be empty (any cluster).
pub async fn node_status(addr: &str, cluster_id: &str) -> Result<NodeStatus> {
    node_status_with(addr, cluster_id, &RemoteOptions::default()).await
}

/// `node_status` with TLS (see `RemoteOptions`).
pub async fn node_status_with(
    addr: &str,
    cluster_id: &str,
    options: &RemoteOptions,
) -> Result<NodeStatus> {
    let config = rpc_config(options);
    let mut client = connect_lazy(addr, &config)?;
    let reply = tokio::time::timeout(
        config.rpc_timeout,
        client.debug_node(pb::DebugNodeRequest {
            cluster_id: cluster_id.to_string(),
        }),
    )
    .await
    .map_err(|_| Error::timeout(format!("status of {addr}")))?
    .map_err(|s| Error::Transport(format!("{addr}: {}", describe_status(&s))))?;
    Ok(serde_json::from_str(&reply.into_inner().json)?)
}

/// The `GetPeers` answer of the node at `addr` (address book, cluster id, leader).
pub(crate) async fn fetch_peers(
    addr: &str,
    cluster_id: &str,
    config: &Config,
) -> Result<pb::GetPeersResponse> {
    let mut client = connect_lazy(addr, config)?;
    let request = pb::GetPeersRequest {
        cluster_id: cluster_id.to_string(),
    };
    Ok(
        tokio::time::timeout(config.rpc_timeout, client.get_peers(request))
            .await
            .map_err(|_| Error::timeout(format!("member list from {addr}")))?
            .map_err(|s| Error::Transport(format!("{addr}: {}", describe_status(&s))))?
            .into_inner(),
    )
}

/// One member as seen in `debug cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    /// The member's node id.
    pub id: u64,
    /// Its raft address, from the address book of the node that was asked.
    pub addr: String,
    /// `None` when the member did not answer.
    pub status: Option<NodeStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Entries behind the leader's commit index (when both answered).
    pub lag: Option<u64>,
}

/// The status of every member known to the node at `addr`, unreachable ones marked.
pub async fn cluster_status(addr: &str, cluster_id: &str) -> Result<Vec<MemberRow>> {
    cluster_status_with(addr, cluster_id, &RemoteOptions::default()).await
}

/// `cluster_status` with TLS (see `RemoteOptions`).
pub async fn cluster_status_with(
    addr: &str,
    cluster_id: &str,
    options: &RemoteOptions,
) -> Result<Vec<MemberRow>> {
    let peers = fetch_peers(addr, cluster_id, &rpc_config(options)).await?;
    let mut members: Vec<(u64, String)> = peers.peers.into_iter().collect();
    members.sort();
    let mut rows = Vec::new();
    for (id, member_addr) in members {
        let (status, error) = match node_status_with(&member_addr, cluster_id, options).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(MemberRow {
            id,
            addr: member_addr,
            status,
            error,
            lag: None,
        });
    }
    let leader_commit = rows
        .iter()
        .filter_map(|r| r.status.as_ref())
        .find(|s| s.role.is_leader())
        .map(|s| s.commit_index);
    if let Some(commit) = leader_commit {
        for row in &mut rows {
            row.lag = row
                .status
                .as_ref()
                .map(|s| commit.saturating_sub(s.applied_index));
        }
    }
    Ok(rows)
}

/// Human rendering of one node's status: a summary and its view of the peers.
pub fn render_node(s: &NodeStatus) -> String {
    let mut out = format!(
        "node {} ({}) in cluster {:?}: {:?}, term {}, leader {}\n\
         commit {}  applied {}  log {}..{}  snapshot {} (term {})  pending proposals {} (held {})\n\
         read index: {} reads in {} rounds\n",
        s.id,
        s.peers
            .iter()
            .find(|p| p.id == s.id)
            .and_then(|p| p.addr.clone())
            .unwrap_or_default(),
        s.cluster_id,
        s.role,
        s.term,
        s.leader_id,
        s.commit_index,
        s.applied_index,
        s.first_index,
        s.last_index,
        s.snapshot_index,
        s.snapshot_term,
        s.pending_proposals,
        s.held_proposals,
        s.read_index_requests,
        s.read_index_rounds,
    );
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.addr.clone().unwrap_or_else(|| "-".into()),
                p.role.to_string(),
                opt(p.matched),
                opt(p.next_index),
                p.state.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["id", "addr", "role", "match", "next", "state"],
        &rows,
    ));
    out
}

/// Human rendering of `cluster_status`.
pub fn render_cluster(rows: &[MemberRow]) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match &r.status {
            Some(s) => vec![
                r.id.to_string(),
                r.addr.clone(),
                format!("{:?}", s.role).to_lowercase(),
                s.term.to_string(),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                r.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            ],
            None => vec![
                r.id.to_string(),
                r.addr.clone(),
                "UNREACHABLE".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        })
        .collect();
    render_table(
        &["id", "addr", "role", "term", "commit", "applied", "lag"],
        &table,
    )
}
