//! Client sessions, black-box: a command retried with the same (session, number) applies once,
//! through a leader change, a restart of every node and a snapshot; a command of an expired
//! session is refused and applies nothing; `Session::propose` answers every command of many
//! concurrent callers while leadership moves.
//!
//! The retries are sent as the wire protocol defines them (`ProposeRequest` with `session_id`,
//! `seq`, `acked`) so a test can repeat a number on purpose: that is what a client does after an
//! answer it never got.

mod support;

use std::time::Duration;

use pontoon::transport::pb;
use pontoon::{Config, Error};
use support::{eventually, metric, TestCluster};

/// A raw gRPC client to node `id`.
fn grpc(
    cluster: &TestCluster,
    id: u64,
) -> pontoon::transport::pb::raft_service_client::RaftServiceClient<tonic::transport::Channel> {
    pontoon::client::connect_lazy(&cluster.peers[&id], &Config::default()).expect("client")
}

/// Open a session on the leader; answers its id.
async fn open_session(cluster: &TestCluster) -> u64 {
    let leader = cluster.wait_for_leader().await;
    let reply = grpc(cluster, leader)
        .open_session(pb::OpenSessionRequest {
            cluster_id: cluster.cluster_id.clone(),
            window: 0,
        })
        .await
        .expect("open session")
        .into_inner();
    assert_eq!(
        reply.status,
        pb::ProposeStatus::Ok as i32,
        "{}",
        reply.error
    );
    u64::from_be_bytes(reply.result[..8].try_into().expect("id"))
}

/// Send command `seq` of `session` with `data` to the current leader, as a client's retry would.
async fn send(
    cluster: &TestCluster,
    session: u64,
    seq: u64,
    acked: u64,
    data: &str,
) -> pontoon::Result<Vec<u8>> {
    let leader = cluster.wait_for_leader().await;
    let reply = grpc(cluster, leader)
        .propose(pb::ProposeRequest {
            cluster_id: cluster.cluster_id.clone(),
            data: data.as_bytes().to_vec(),
            session_id: session,
            seq,
            acked,
        })
        .await
        .map_err(|s| Error::Transport(s.to_string()))?
        .into_inner();
    match pb::ProposeStatus::try_from(reply.status) {
        Ok(pb::ProposeStatus::Ok) => Ok(reply.result),
        Ok(pb::ProposeStatus::SessionExpired) => Err(Error::SessionExpired(reply.error)),
        other => Err(Error::Other(format!("{other:?}: {}", reply.error))),
    }
}

/// Every node eventually applied `entry`, each exactly once.
async fn applied_once_everywhere(cluster: &TestCluster, entry: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("{entry} applied everywhere"),
        || {
            cluster
                .nodes
                .keys()
                .all(|&id| cluster.times_applied(id, entry) >= 1)
        },
    )
    .await;
    for &id in cluster.nodes.keys() {
        assert_eq!(
            cluster.times_applied(id, entry),
            1,
            "node {id} applied {entry} twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_leader_change_is_answered_from_the_table_not_applied_again() {
    let cluster = TestCluster::start(3).await;
    let session = open_session(&cluster).await;
    let first = send(&cluster, session, 1, 0, "once")
        .await
        .expect("applied");

    let old = cluster.wait_for_leader().await;
    let target = cluster.follower_of(old);
    cluster
        .node(old)
        .transfer_leader(target)
        .await
        .expect("transfer");
    eventually(Duration::from_secs(20), "leadership moved", || {
        cluster.node(target).is_leader()
    })
    .await;

    let retry = send(&cluster, session, 1, 0, "once")
        .await
        .expect("answered");
    assert_eq!(retry, first, "the retry gets the first answer");
    applied_once_everywhere(&cluster, "once").await;
    assert!(
        metric(
            cluster.node(target),
            "pontoon_session_commands_not_reapplied_total"
        ) >= 1.0
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_every_node_restarted_is_answered_from_the_table() {
    let mut cluster = TestCluster::start(3).await;
    let session = open_session(&cluster).await;
    let first = send(&cluster, session, 1, 0, "kept")
        .await
        .expect("applied");
    cluster.wait_all_applied(1).await;
    for id in 1..=3 {
        cluster.stop_node(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    let retry = send(&cluster, session, 1, 0, "kept")
        .await
        .expect("answered");
    assert_eq!(retry, first);
    applied_once_everywhere(&cluster, "kept").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_snapshot_is_answered_from_the_table_the_snapshot_carried() {
    let mut cluster = TestCluster::start(3).await;
    let session = open_session(&cluster).await;
    let first = send(&cluster, session, 1, 0, "in-snapshot")
        .await
        .expect("applied");
    cluster.wait_all_applied(1).await;
    // Every node snapshots past the command and restarts from that snapshot: entries at or
    // below it are not applied again, so the table can only come from the snapshot.
    for id in 1..=3 {
        cluster.node(id).make_snapshot().await.expect("snapshot");
    }
    for id in 1..=3 {
        cluster.stop_node(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    for id in 1..=3 {
        assert!(
            *cluster.nodes[&id].fsm.restores.lock().expect("lock") >= 1,
            "node {id} restarted from its snapshot"
        );
    }
    let retry = send(&cluster, session, 1, 0, "in-snapshot")
        .await
        .expect("answered");
    assert_eq!(retry, first);
    applied_once_everywhere(&cluster, "in-snapshot").await;
    // A second command of the session still applies, once.
    send(&cluster, session, 2, 1, "after")
        .await
        .expect("applied");
    applied_once_everywhere(&cluster, "after").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_of_an_expired_session_is_refused_and_applies_nothing() {
    let cluster = TestCluster::start_with(3, |c| c.max_sessions = 2).await;
    let oldest = open_session(&cluster).await;
    send(&cluster, oldest, 1, 0, "before-expiry")
        .await
        .expect("applied");
    open_session(&cluster).await;
    open_session(&cluster).await;
    let refused = send(&cluster, oldest, 2, 1, "after-expiry").await;
    assert!(
        matches!(refused, Err(Error::SessionExpired(_))),
        "{refused:?}"
    );
    // Nothing of it anywhere, once every node applied what came after it.
    let marker = cluster
        .propose(cluster.wait_for_leader().await, "marker")
        .await;
    assert!(!marker.is_empty());
    applied_once_everywhere(&cluster, "marker").await;
    for &id in cluster.nodes.keys() {
        assert_eq!(cluster.times_applied(id, "after-expiry"), 0, "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_propose_answers_every_command_once_while_leadership_moves() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    // Through a follower, so commands are forwarded as well.
    let via = cluster.follower_of(leader);
    let session = cluster.node(via).session().await.expect("session");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            session.propose(format!("cmd-{i}").into_bytes()).await
        }));
    }
    cluster.node(leader).transfer_leader(via).await.ok();
    for task in tasks {
        task.await.expect("task").expect("every command answered");
    }
    for i in 0..40 {
        applied_once_everywhere(&cluster, &format!("cmd-{i}")).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_client_session_applies_each_command_once() {
    let cluster = TestCluster::start(3).await;
    let client = pontoon::client::RaftServiceClient::connect(
        cluster.peers.values().cloned().collect(),
        cluster.cluster_id.clone(),
    )
    .await
    .expect("connect");
    let session = client.session().await.expect("session");
    let answer = session.propose(b"remote".to_vec()).await.expect("applied");
    assert!(String::from_utf8_lossy(&answer).ends_with(":remote"));
    applied_once_everywhere(&cluster, "remote").await;
    cluster.shutdown().await;
}
