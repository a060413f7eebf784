//! Linearizable reads, read-index batching, and the leader-finding client.

mod support;

use std::time::Duration;

use pontoon::client::RaftServiceClient;
use pontoon::Error;
use support::{free_addrs, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_visible_to_a_linearizable_read_on_every_follower() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..20 {
        let value = format!("v{i}");
        cluster.propose(leader, &value).await;
        for (id, node) in &cluster.nodes {
            let seen = node
                .raft
                .linearizable_read(|log| log.snapshot_entries().last().cloned())
                .await
                .expect("read");
            assert_eq!(
                seen.as_deref(),
                Some(value.as_str()),
                "node {id} read a stale value"
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_does_not_serve_linearizable_reads() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "last-acknowledged").await;
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        cluster.stop_node(id).await;
    }
    let started = tokio::time::Instant::now();
    let read = cluster
        .node(leader)
        .linearizable_read(|log| log.len())
        .await;
    assert!(
        read.is_err(),
        "an isolated leader answered a linearizable read: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the refusal came within the call's deadline"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_one_node_share_read_index_rounds() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    cluster.propose(leader, "x").await;
    let before = cluster.node(follower).inspect().await.expect("inspect");
    let mut reads = Vec::new();
    for _ in 0..200 {
        let raft = cluster.node(follower).clone();
        reads.push(tokio::spawn(async move { raft.read_index().await }));
    }
    for r in reads {
        r.await.expect("task").expect("read index");
    }
    let after = cluster.node(follower).inspect().await.expect("inspect");
    let requests = after.read_index_requests - before.read_index_requests;
    let rounds = after.read_index_rounds - before.read_index_rounds;
    assert_eq!(requests, 200);
    assert!(rounds < requests, "{rounds} rounds for {requests} reads");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_finds_the_new_leader_after_its_follower_dies() {
    let mut cluster = TestCluster::start(3).await;
    for node in cluster.nodes.values() {
        node.raft
            .set_query_handler(|log, _query| Ok(log.len().to_string().into_bytes()));
    }
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let client = RaftServiceClient::connect_with(
        vec![cluster.peers[&follower].clone()],
        cluster.cluster_id.clone(),
        Duration::from_secs(15),
    )
    .await
    .expect("connect through a follower");
    let answer = client.propose(b"c1".to_vec()).await.expect("propose");
    assert_eq!(answer, b"1:c1");
    assert_eq!(client.read(vec![]).await.expect("read"), b"1");
    // The follower the client was pointed at dies, and so does the leader.
    cluster.stop_node(follower).await;
    cluster.stop_node(leader).await;
    let survivor = *cluster.nodes.keys().next().expect("survivor");
    // One node of three cannot elect; bring the follower back so a new leader appears.
    cluster.start_node(follower).await;
    cluster.nodes[&follower]
        .raft
        .set_query_handler(|log, _query| Ok(log.len().to_string().into_bytes()));
    let answer = client
        .propose(b"c2".to_vec())
        .await
        .expect("propose after failover");
    assert!(answer.ends_with(b":c2"));
    let new_leader = cluster.wait_for_leader().await;
    assert!(new_leader == survivor || new_leader == follower);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_pointed_at_dead_addresses_fails_clearly_within_its_deadline() {
    let dead = free_addrs(2);
    let started = tokio::time::Instant::now();
    let result = RaftServiceClient::connect_with(dead, "nobody", Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    match result {
        Err(Error::Transport(msg)) => assert!(msg.contains("no member reachable"), "{msg}"),
        Err(e) => panic!("unclear error: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_cluster_of_another_id() {
    let cluster = TestCluster::start(3).await;
    let result =
        RaftServiceClient::connect(vec![cluster.peers[&1].clone()], "another-cluster").await;
    // The error names both clusters by their ids, not by a sentence.
    match result {
        Err(Error::ClusterMismatch { local, remote }) => {
            assert_eq!(local, "another-cluster");
            assert_eq!(remote, cluster.config(1).cluster_id);
        }
        other => panic!("expected a cluster mismatch: {:?}", other.err()),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_based_reads_serve_fresh_values_when_selected() {
    let cluster = TestCluster::start_with(3, |c| {
        c.raft.read_only_option = pontoon::raft::ReadOnlyOption::LeaseBased;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "leased").await;
    for node in cluster.nodes.values() {
        let last = node
            .raft
            .linearizable_read(|log| log.snapshot_entries().last().cloned())
            .await
            .expect("lease read");
        assert_eq!(last.as_deref(), Some("leased"));
    }
    cluster.shutdown().await;
}

/// raft-rs drops a ReadIndex while no leader is known, and a new leader drops it until it has
/// committed in its term. A read asked right after a full restart (before any election) must
/// still be served by its first round, sent again once the leader can answer, instead of
/// waiting for that round to expire and starting another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_asked_before_the_first_election_is_served_by_its_first_round() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "last").await;
    for id in 1..=3 {
        cluster.stop_node(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    let reads: Vec<_> = (1..=3)
        .map(|id| {
            let raft = cluster.node(id).clone();
            tokio::spawn(async move {
                let seen = raft
                    .linearizable_read(|log| log.snapshot_entries().last().cloned())
                    .await
                    .expect("read");
                (id, seen)
            })
        })
        .collect();
    for read in reads {
        let (id, seen) = read.await.expect("read task");
        assert_eq!(seen.as_deref(), Some("last"), "node {id}");
        let status = cluster.node(id).inspect().await.expect("inspect");
        assert_eq!(
            (status.read_index_requests, status.read_index_rounds),
            (1, 1),
            "node {id}: the read needed more than its first round"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_from_a_chosen_follower_and_sees_every_acknowledged_write() {
    let cluster = TestCluster::start(3).await;
    for node in cluster.nodes.values() {
        node.raft
            .set_query_handler(|log, _query| Ok(log.len().to_string().into_bytes()));
    }
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let client = RaftServiceClient::connect(
        vec![cluster.peers[&leader].clone()],
        cluster.cluster_id.clone(),
    )
    .await
    .expect("connect");
    for i in 0..3 {
        client
            .propose(format!("w{i}").into_bytes())
            .await
            .expect("propose");
    }
    // Acknowledged by the leader; the follower's answer must include all three.
    let answer = client
        .read_from(&cluster.peers[&follower], vec![])
        .await
        .expect("read from the follower");
    assert_eq!(answer, b"3");
    let dead = free_addrs(1).remove(0);
    assert!(matches!(
        client.read_from(&dead, vec![]).await,
        Err(Error::Transport(_) | Error::Timeout { .. })
    ));
    cluster.shutdown().await;
}
