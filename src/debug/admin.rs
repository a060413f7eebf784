//! Administrative calls for tools: remove a member, record a member's new address, move
//! leadership, force a snapshot. Each
//! learns the cluster id from the node first, and follows `NotLeader` hints a few hops.

use protobuf::Message as _;
use raft::eraftpb::ConfChangeType;

use super::live::RemoteOptions;
use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::node::describe_status;
use crate::node::{response_to_result, single_change};
use crate::transport::connect_lazy;
use crate::transport::pb;

const MAX_HOPS: usize = 5;

fn admin_config(options: &RemoteOptions) -> Config {
    options.config(std::time::Duration::from_secs(15))
}

/// The cluster id and address book as the node at `addr` reports them.
pub async fn discover(addr: &str) -> Result<(String, Peers, u64)> {
    discover_with(addr, &RemoteOptions::default()).await
}

/// `discover` with TLS (see `RemoteOptions`).
pub async fn discover_with(addr: &str, options: &RemoteOptions) -> Result<(String, Peers, u64)> {
    let reply = super::live::fetch_peers(addr, "", &admin_config(options)).await?;
    Ok((
        reply.cluster_id,
        reply.peers.into_iter().collect(),
        reply.leader_id,
    ))
}

enum AdminCall {
    Remove(u64),
    UpdateAddress(u64, String),
    Transfer(u64),
    Snapshot,
}

async fn call(
    addr: &str,
    what: AdminCall,
    follow_leader: bool,
    options: &RemoteOptions,
) -> Result<Vec<u8>> {
    let (cluster_id, _, _) = discover_with(addr, options).await?;
    let config = admin_config(options);
    let mut target = addr.to_string();
    for _ in 0..MAX_HOPS {
        let mut client = connect_lazy(&target, &config)?;
        let reply = match &what {
            AdminCall::Remove(id) => {
                let cc = single_change(ConfChangeType::RemoveNode, *id);
                let conf_change = cc
                    .write_to_bytes()
                    .map_err(|e| Error::Encoding(e.to_string()))?;
                tokio::time::timeout(
                    config.rpc_timeout,
                    client.change_config(pb::ChangeConfigRequest {
                        cluster_id: cluster_id.clone(),
                        conf_change,
                        addrs: Default::default(),
                        join_token: config.join_token.clone().unwrap_or_default(),
                    }),
                )
                .await
            }
            AdminCall::UpdateAddress(id, raft_addr) => {
                tokio::time::timeout(
                    config.rpc_timeout,
                    client.update_address(pb::UpdateAddressRequest {
                        cluster_id: cluster_id.clone(),
                        node_id: *id,
                        raft_addr: raft_addr.clone(),
                        join_token: config.join_token.clone().unwrap_or_default(),
                    }),
                )
                .await
            }
            AdminCall::Transfer(id) => {
                tokio::time::timeout(
                    config.rpc_timeout,
                    client.transfer_leader(pb::TransferLeaderRequest {
                        cluster_id: cluster_id.clone(),
                        target: *id,
                    }),
                )
                .await
            }
            AdminCall::Snapshot => {
                tokio::time::timeout(
                    config.rpc_timeout,
                    client.create_snapshot(pb::CreateSnapshotRequest {
                        cluster_id: cluster_id.clone(),
                    }),
                )
                .await
            }
        };
        let reply = reply
            .map_err(|_| match what {
                AdminCall::Remove(_) | AdminCall::UpdateAddress(..) => {
                    Error::write_timeout(format!("call to {target}"))
                }
                AdminCall::Transfer(_) | AdminCall::Snapshot => {
                    Error::timeout(format!("call to {target}"))
                }
            })?
            .map_err(|s| match s.code() {
                tonic::Code::Unauthenticated => {
                    Error::Unauthorized(format!("{target}: {}", s.message()))
                }
                _ => Error::Transport(format!("{target}: {}", describe_status(&s))),
            })?
            .into_inner();
        match response_to_result(reply) {
            Err(Error::NotLeader {
                leader_addr: Some(leader),
                ..
            }) if follow_leader && leader != target => target = leader,
            other => return other,
        }
    }
    Err(Error::NoLeader)
}

/// Remove member `id` (sent to the leader, found through `addr`).
pub async fn remove_member(addr: &str, id: u64) -> Result<()> {
    remove_member_with(addr, id, &RemoteOptions::default()).await
}

/// `remove_member` with TLS and the join token (see `RemoteOptions`).
pub async fn remove_member_with(addr: &str, id: u64, options: &RemoteOptions) -> Result<()> {
    call(addr, AdminCall::Remove(id), true, options)
        .await
        .map(|_| ())
}

/// Record through the log that member `id` is now reached at `raft_addr` (any member forwards
/// it to the leader). For a node moved to a new address that cannot tell the members itself;
/// one restarted on its data dir does.
pub async fn update_member_address(addr: &str, id: u64, raft_addr: &str) -> Result<()> {
    update_member_address_with(addr, id, raft_addr, &RemoteOptions::default()).await
}

/// `update_member_address` with TLS and the join token (see `RemoteOptions`).
pub async fn update_member_address_with(
    addr: &str,
    id: u64,
    raft_addr: &str,
    options: &RemoteOptions,
) -> Result<()> {
    call(
        addr,
        AdminCall::UpdateAddress(id, raft_addr.to_string()),
        false,
        options,
    )
    .await
    .map(|_| ())
}

/// Move leadership to `id` (sent to the leader, found through `addr`).
pub async fn transfer_leader(addr: &str, id: u64) -> Result<()> {
    transfer_leader_with(addr, id, &RemoteOptions::default()).await
}

/// `transfer_leader` with TLS (see `RemoteOptions`).
pub async fn transfer_leader_with(addr: &str, id: u64, options: &RemoteOptions) -> Result<()> {
    call(addr, AdminCall::Transfer(id), true, options)
        .await
        .map(|_| ())
}

/// Take a snapshot on the node at `addr`; returns its index.
pub async fn create_snapshot(addr: &str) -> Result<u64> {
    create_snapshot_with(addr, &RemoteOptions::default()).await
}

/// `create_snapshot` with TLS (see `RemoteOptions`).
pub async fn create_snapshot_with(addr: &str, options: &RemoteOptions) -> Result<u64> {
    let bytes = call(addr, AdminCall::Snapshot, false, options).await?;
    let arr: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Error::Encoding("snapshot index is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(arr))
}
