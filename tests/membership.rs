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
async fn removing_the_leader_moves_leadership_first_then_removes_it() {
    let mut cluster = TestCluster::start(4).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "before").await;
    // Asked on a follower: leadership moves to that follower, then the old leader goes.
    let asker = cluster.follower_of(leader);
    let cs = cluster
        .node(asker)
        .remove_node(leader)
        .await
        .expect("remove the leader");
    assert!(!cs.voters.contains(&leader), "{cs:?}");
    assert!(
        cluster.node(asker).is_leader(),
        "the asking voter leads now"
    );
    cluster.expect_removed(leader).await;
    // Asked on the leader itself: it hands over, then is removed.
    let cs = cluster
        .node(asker)
        .remove_node(asker)
        .await
        .expect("the leader removes itself");
    assert!(!cs.voters.contains(&asker), "{cs:?}");
    cluster.expect_removed(asker).await;
    let survivor = *cluster.nodes.keys().next().expect("a survivor");
    cluster.propose(survivor, "after").await;
    assert_eq!(cluster.wait_all_applied(2).await, vec!["before", "after"]);
    cluster.shutdown().await;
}

/// What `pontoon-cli member remove <leader>` sends: a raw ChangeConfig to the leader. The leader
/// hands over first and the tool follows the NotLeader hint to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_tool_removes_the_leader_after_leadership_moves() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "before").await;
    pontoon::debug::remove_member(&cluster.peers[&leader], leader)
        .await
        .expect("the tool removes the leader");
    cluster.expect_removed(leader).await;
    let survivor = *cluster.nodes.keys().next().expect("a survivor");
    let cs = cluster.node(survivor).inspect().await.expect("status");
    assert!(
        cs.peers.iter().all(|p| p.id != leader),
        "{leader} still listed: {:?}",
        cs.peers
    );
    cluster.propose(survivor, "after").await;
    assert_eq!(cluster.wait_all_applied(2).await, vec!["before", "after"]);
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
    cluster.expect_removed(victim).await;
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
    match cluster.node(leader).leave_joint().await {
        Err(Error::InvalidRequest(_)) => {}
        other => panic!("leave_joint outside a joint config must be refused, got {other:?}"),
    }

    // Stop one follower; removing the other would leave 1 reachable voter of 2.
    let other = cluster.node_other_than(&[leader, follower]);
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
async fn a_removed_node_cannot_disturb_the_cluster_and_stops_with_removed() {
    // Long election timeouts, so a loaded CI machine does not cause an unrelated election while
    // the term is being compared.
    let mut cluster = TestCluster::start_with(3, |c| c.raft.election_tick = 40).await;
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
    cluster.expect_removed(victim).await;
    // Its id cannot come back: members would refuse it as removed forever.
    let addr = support::free_addrs(1).remove(0);
    match cluster.node(leader).add_learner(victim, addr).await {
        Err(Error::InvalidRequest(msg)) => assert!(msg.contains("cannot come back"), "{msg}"),
        other => panic!("re-adding a removed id must be refused, got {other:?}"),
    }
    cluster.shutdown().await;
}

/// raft-rs switches configuration when an entry is applied, so a member that holds the removal
/// entry but never learned it committed still counts the removed node's vote. Were the removed
/// node to stop at once, such members could not elect a leader after losing the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_answers_while_a_member_still_asks_for_its_vote_then_stops() {
    use pontoon::raft::eraftpb::{Message, MessageType};
    use protobuf::Message as _;
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.follower_of(leader);
    let survivor = cluster.node_other_than(&[leader, victim]);
    cluster
        .node(leader)
        .remove_node(victim)
        .await
        .expect("remove");
    // Play a survivor that has not applied the removal and asks for votes: pre-vote requests
    // from its id reach the victim every 100 ms for three times the linger (2 s here: two
    // maximal election timeouts of 20 ticks of 50 ms).
    let config = cluster.config(victim);
    let mut client =
        pontoon::client::connect_lazy(&cluster.peers[&victim], &config).expect("client");
    let asking_until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < asking_until {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgRequestPreVote);
        msg.from = survivor;
        msg.to = victim;
        msg.term = cluster.node(victim).status().term + 1;
        msg.log_term = msg.term;
        msg.index = 1_000_000;
        let _ = client
            .send_messages(pontoon::transport::pb::MessageBatch {
                cluster_id: config.cluster_id.clone(),
                from: survivor,
                messages: vec![msg.write_to_bytes().expect("encode")],
            })
            .await;
        assert!(
            !cluster.node(victim).is_stopped(),
            "the removed node stopped while a member still asked for its vote"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody asks any more: it stops, saying why.
    let how = cluster.expect_removed(victim).await;
    assert!(how.contains("removal"), "{how}");
    cluster.shutdown().await;
}

#[cfg(feature = "fault-injection")] // cuts the node off
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_while_it_was_removed_is_told_by_a_member_and_stops_with_removed() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.follower_of(leader);
    cluster.propose(leader, "before").await;
    // Cut off, the victim cannot see the entry that removes it.
    cluster.isolate(victim);
    cluster
        .node(leader)
        .remove_node(victim)
        .await
        .expect("remove the cut-off node");
    cluster.propose(leader, "after-remove").await;
    assert!(
        !cluster.node(victim).is_stopped(),
        "still running: it cannot know yet"
    );
    cluster.heal_all();
    // Its next message to a member is refused as coming from a removed node.
    let how = cluster.expect_removed(victim).await;
    assert!(how.contains("refused its messages"), "{how}");
    // The members carry on undisturbed.
    let survivor = cluster.follower_of(leader);
    cluster.propose(survivor, "after-heal").await;
    let log = cluster.wait_all_applied(3).await;
    assert_eq!(log, vec!["before", "after-remove", "after-heal"]);

    // Started again on its data dir, it stops at once: its log or a member says it is removed.
    cluster.start_node(victim).await;
    cluster.expect_removed(victim).await;
    cluster.shutdown().await;
}

#[cfg(feature = "fault-injection")] // cuts the node off
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_remember_a_removal_through_their_snapshots_and_tell_the_removed_node() {
    // No margin: a snapshot compacts the removal entry away, so after a restart the members
    // know of the removal only from their snapshot's envelope.
    let mut cluster = TestCluster::start_with(3, |c| c.compaction_margin = 0).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.follower_of(leader);
    cluster.isolate(victim);
    cluster
        .node(leader)
        .remove_node(victim)
        .await
        .expect("remove the cut-off node");
    // The victim stops without ever having heard of its removal.
    cluster.stop_node(victim).await;
    cluster.propose(leader, "after-remove").await;
    let members = cluster.followers_of(victim);
    cluster.wait_all_applied(1).await;
    for &id in &members {
        cluster.node(id).make_snapshot().await.expect("snapshot");
    }
    for &id in &members {
        cluster.stop_node(id).await;
    }
    for &id in &members {
        cluster.start_node(id).await;
    }
    cluster.wait_for_leader().await;
    cluster.start_node(victim).await;
    let how = cluster.expect_removed(victim).await;
    assert!(how.contains("refused its messages"), "{how}");
    cluster.shutdown().await;
}

/// A voter holding only the bootstrap configuration withholds its vote from longer logs, so a
/// configuration whose quorum needs such a voter could never elect a leader again. Promoting a
/// learner that holds nothing yet is refused while it would be the quorum's deciding vote (found
/// by the simulation, seeds 2681 and 3288).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_holds_nothing_is_not_promoted_when_the_quorum_would_need_it() {
    let cluster = TestCluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.node(leader).clone();
    // Nothing listens there: the learner never receives a byte.
    node.add_learner(9, "127.0.0.1:1".into())
        .await
        .expect("add learner");
    match node.promote(9).await {
        Err(Error::WouldLoseQuorum(msg)) => assert!(msg.contains("bootstrap"), "{msg}"),
        other => {
            panic!("promoting an empty learner into a quorum of 2 must be refused, got {other:?}")
        }
    }
    cluster.shutdown().await;
}
