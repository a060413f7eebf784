//! Membership changes on a static cluster: leave (follower and leader), remove, typed refusals.

mod support;

use std::time::Duration;

use pontoon::Error;
use support::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_on_a_follower_then_on_the_leader_shrinks_the_cluster_and_writes_continue() {
    let mut cluster = TestCluster::start(4).await;
    cluster.propose(1, "with-4").await;

    // A follower leaves.
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let leaving = cluster.nodes.remove(&follower).expect("node");
    leaving.raft.leave().await.expect("follower leaves");
    assert!(leaving.raft.is_stopped(), "a node that left is shut down");
    leaving.task.await.expect("join").expect("clean stop");
    let peers = cluster.node(leader).get_peers();
    assert!(
        !peers.contains_key(&follower),
        "removed node still in the address book: {peers:?}"
    );
    cluster.propose(leader, "with-3").await;

    // The leader leaves: leadership moves first, then it is removed.
    let leaving = cluster.nodes.remove(&leader).expect("node");
    leaving.raft.leave().await.expect("leader leaves");
    leaving.task.await.expect("join").expect("clean stop");
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let survivor = *cluster.nodes.keys().next().expect("survivor");
    cluster.propose(survivor, "with-2").await;

    let status = cluster.node(new_leader).inspect().await.expect("inspect");
    let members: Vec<u64> = status.peers.iter().map(|p| p.id).collect();
    assert_eq!(members.len(), 2, "two members remain: {members:?}");
    assert!(!members.contains(&leader) && !members.contains(&follower));
    let log = cluster.wait_all_applied(3).await;
    assert_eq!(log, vec!["with-4", "with-3", "with-2"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_comes_back_with_the_membership_it_had_after_restart() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.follower_of(leader);
    let cs = cluster
        .node(leader)
        .remove_node(victim)
        .await
        .expect("remove");
    assert!(!cs.voters.contains(&victim));
    cluster.propose(leader, "after-remove").await;
    // Restart the remaining members: they come back with two voters, not the initial three.
    let remaining: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != victim)
        .collect();
    cluster.stop_node(victim).await;
    for id in &remaining {
        cluster.stop_node(*id).await;
    }
    for id in &remaining {
        cluster.start_node(*id).await;
    }
    let leader = cluster.wait_for_leader().await;
    let status = cluster.node(leader).inspect().await.expect("inspect");
    let members: Vec<u64> = status.peers.iter().map(|p| p.id).collect();
    assert_eq!(members, remaining);
    cluster.propose(leader, "after-restart").await;
    cluster.wait_all_applied(2).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_refused_with_typed_errors() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);

    match cluster.node(follower).remove_node(99).await {
        Err(Error::UnknownNode(99)) => {}
        other => panic!("expected UnknownNode(99), got {other:?}"),
    }
    match cluster.node(follower).remove_node(leader).await {
        Err(Error::InvalidRequest(msg)) => assert!(msg.contains("transfer leadership"), "{msg}"),
        other => panic!("removing the leader must be refused, got {other:?}"),
    }
    match cluster.node(leader).leave_joint().await {
        Err(Error::InvalidRequest(_)) => {}
        other => panic!("leave_joint outside a joint config must be refused, got {other:?}"),
    }

    // Stop one follower; removing the other would leave 1 reachable voter of 2.
    let other = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader && **id != follower)
        .expect("second follower");
    cluster.stop_node(other).await;
    let leader_node = cluster.node(leader).clone();
    // With check_quorum the leader marks a silent peer inactive after an election timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = leader_node.inspect().await.expect("inspect");
        let active = status
            .peers
            .iter()
            .find(|p| p.id == other)
            .and_then(|p| p.recent_active);
        if active == Some(false) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leader never saw node {other} go quiet"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = match leader_node.remove_node(follower).await {
        Err(Error::WouldLoseQuorum(msg)) => Some(msg),
        other => panic!("removal that loses quorum must be refused, got {other:?}"),
    };
    assert!(refused.is_some());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_keeps_running_cannot_disturb_the_cluster() {
    // Long election timeouts, so a loaded CI machine does not cause an unrelated election while
    // the term is being compared.
    let cluster = TestCluster::start_with(3, |c| c.raft.election_tick = 40).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.follower_of(leader);
    cluster
        .node(leader)
        .remove_node(victim)
        .await
        .expect("remove");
    let term_before = cluster.node(leader).status().term;
    // The removed node tries to take over; the members ignore it.
    let _ = cluster.node(victim).campaign().await;
    for i in 0..20 {
        cluster.propose(leader, &format!("after-{i}")).await;
    }
    let status = cluster.node(leader).status();
    assert!(
        cluster.node(leader).is_leader(),
        "leadership was not disturbed"
    );
    assert_eq!(
        status.term, term_before,
        "the removed node's campaign raised no term"
    );
    cluster.shutdown().await;
}
