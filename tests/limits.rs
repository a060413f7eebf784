//! Bounded resources: each limit answers with a typed error and the node keeps serving.

mod support;

use std::time::Duration;

use pontoon::Error;
use support::{eventually, metric, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_over_the_size_limit_is_refused_and_the_node_keeps_serving() {
    let cluster = TestCluster::start_with(3, |c| c.max_proposal_bytes = 1024).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    for via in [leader, follower] {
        match cluster.node(via).propose(vec![b'x'; 4096]).await {
            Err(Error::InvalidRequest(msg)) => assert!(msg.contains("exceeds the limit"), "{msg}"),
            other => panic!("oversized proposal via {via}: {other:?}"),
        }
    }
    cluster.propose(follower, "small").await;
    cluster.wait_all_applied(1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_beyond_the_pending_limit_get_busy() {
    let mut cluster = TestCluster::start_with(3, |c| {
        c.max_pending_proposals = 2;
        // Keep the leader leading without a quorum, so proposals stay pending.
        c.raft.check_quorum = false;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<u64> = cluster.followers_of(leader);
    for f in followers {
        cluster.stop_node(f).await;
    }
    let mut pending = Vec::new();
    for i in 0..2 {
        let raft = cluster.node(leader).clone();
        pending.push(tokio::spawn(async move {
            raft.propose(format!("p{i}").into_bytes()).await
        }));
    }
    let node = cluster.node(leader).clone();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count < 2 {
        count = node.inspect().await.expect("inspect").pending_proposals;
        assert!(
            tokio::time::Instant::now() < deadline,
            "proposals never became pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match node.propose(b"one too many".to_vec()).await {
        Err(Error::Busy(msg)) => assert!(msg.contains("2 proposals"), "{msg}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    eventually(Duration::from_secs(1), "the node still answers", || {
        node.status().leader_id == leader
    })
    .await;
    cluster.shutdown().await;
    for p in pending {
        let outcome = p.await.expect("task");
        assert!(
            matches!(outcome, Err(Error::OutcomeUnknown(_))),
            "{outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_queue_drops_and_counts_messages_without_blocking_the_leader() {
    // Tiny per-peer queues: a stopped follower's queue fills at once and must not stall the
    // leader, which keeps committing with the other follower.
    let mut cluster = TestCluster::start_with(3, |c| c.peer_queue_capacity = 4).await;
    let leader = cluster.wait_for_leader().await;
    let down = cluster.follower_of(leader);
    cluster.stop_node(down).await;
    let mut writers = Vec::new();
    for i in 0..200 {
        let raft = cluster.node(leader).clone();
        writers.push(tokio::spawn(async move {
            support::propose_retrying(&raft, &format!("w{i}")).await
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    // Once the leader has marked the peer unreachable it sends it little more than heartbeats,
    // so whether the writes alone overflow the queue depends on how raft batched them. The
    // heartbeats do overflow it while the sender backs off (up to 1 s between attempts).
    let node = cluster.node(leader).clone();
    eventually(
        Duration::from_secs(15),
        "messages to the stopped peer are dropped and counted",
        || metric(&node, "pontoon_peer_messages_dropped_total") > 0.0,
    )
    .await;
    // Dropping is safe: raft resends what the follower misses once it is back.
    cluster.start_node(down).await;
    cluster.wait_all_applied(200).await;
    cluster.shutdown().await;
}
