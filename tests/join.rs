//! Dynamic membership: join tickets, learners, removal and rejoin, joint consensus, restarts.

mod support;

use std::collections::BTreeSet;

use pontoon::raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2,
};
use pontoon::{Peers, Raft};
use support::{AppliedLog, TestCluster};

async fn members(cluster: &TestCluster) -> Vec<(u64, pontoon::PeerRole, Option<String>)> {
    let leader = cluster.wait_for_leader().await;
    let status = cluster.node(leader).inspect().await.expect("inspect");
    status
        .peers
        .into_iter()
        .map(|p| (p.id, p.role, p.addr))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_grows_to_five_by_tickets_from_different_members() {
    let mut cluster = TestCluster::start(1).await;
    cluster.propose(1, "before").await;
    let mut asked = Vec::new();
    for _ in 0..4 {
        // Ask the newest member each time: after the first join that is always a follower.
        let ask = *cluster.nodes.keys().last().expect("a member");
        asked.push(ask);
        cluster.join_new_node(ask, false).await;
    }
    let leader = cluster.wait_for_leader().await;
    assert!(
        asked.iter().any(|id| *id != leader),
        "some tickets came from followers: {asked:?}"
    );
    let ids: BTreeSet<u64> = cluster.nodes.keys().copied().collect();
    assert_eq!(ids.len(), 5, "five distinct ids");
    let m = members(&cluster).await;
    assert_eq!(m.len(), 5);
    assert!(
        m.iter()
            .all(|(_, role, addr)| *role == pontoon::PeerRole::Voter && addr.is_some()),
        "{m:?}"
    );
    cluster.propose(3, "after").await;
    let log = cluster.wait_all_applied(2).await;
    assert_eq!(log, vec!["before", "after"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_requests_around_a_leader_kill_get_distinct_ids() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<u64> = cluster.followers_of(leader);
    let first = Raft::<AppliedLog>::request_id(
        "127.0.0.1:1".to_string(),
        cluster.peers[&followers[0]].clone(),
    )
    .await
    .expect("first ticket");
    cluster.stop_node(leader).await;
    let second = Raft::<AppliedLog>::request_id(
        "127.0.0.1:2".to_string(),
        cluster.peers[&followers[1]].clone(),
    )
    .await
    .expect("second ticket");
    assert_ne!(first.reserved_id, second.reserved_id);
    assert!(
        first.reserved_id > 3 && second.reserved_id > 3,
        "member ids are never handed out"
    );
    assert_eq!(first.cluster_id, cluster.cluster_id);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_does_not_count_toward_quorum() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let learner = cluster.join_new_node(leader, true).await;
    let m = members(&cluster).await;
    assert!(
        m.iter()
            .any(|(id, role, _)| *id == learner && *role == pontoon::PeerRole::Learner),
        "{m:?}"
    );
    // The learner goes away and so does one voter: 2 of 3 voters still commit.
    cluster.stop_node(learner).await;
    let voter = cluster.follower_of(leader);
    cluster.stop_node(voter).await;
    cluster.propose(leader, "with-two-voters").await;
    cluster.wait_all_applied(1).await;
    cluster.shutdown().await;
}

#[cfg(feature = "fault-injection")] // cuts the learner off
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_learner_asks_the_members_and_stops_with_removed() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let learner = cluster.join_new_node(leader, true).await;
    cluster.propose(leader, "w1").await;
    // Cut off, the learner cannot see the entry that removes it (connected, it might apply it).
    cluster.isolate(learner);
    cluster
        .node(leader)
        .remove_node(learner)
        .await
        .expect("remove the learner");
    cluster.heal_all();
    // A learner never campaigns, and the leader no longer writes to it: it has to ask.
    let how = cluster.expect_removed(learner).await;
    assert!(how.contains("refused its messages"), "{how}");
    cluster.propose(leader, "w2").await;
    assert_eq!(cluster.wait_all_applied(2).await, vec!["w1", "w2"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_with_a_new_id_after_its_old_one_is_removed() {
    let mut cluster = TestCluster::start(3).await;
    let joined = cluster.join_new_node(1, false).await;
    cluster.propose(1, "w1").await;
    cluster.stop_node(joined).await;
    let leader = cluster.wait_for_leader().await;
    cluster
        .node(leader)
        .remove_node(joined)
        .await
        .expect("remove");
    std::fs::remove_dir_all(cluster.dir.path().join(format!("node-{joined}"))).expect("wipe");
    cluster.peers.remove(&joined);
    let again = cluster.join_new_node(2, false).await;
    assert_ne!(again, joined, "a removed node's id is never reused");
    cluster.propose(again, "w2").await;
    let log = cluster.wait_all_applied(2).await;
    assert_eq!(log, vec!["w1", "w2"]);
    let m = members(&cluster).await;
    assert!(!m.iter().any(|(id, _, _)| *id == joined));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joint_consensus_replaces_two_of_three_voters() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "before").await;
    let a = cluster.join_new_node(leader, true).await;
    let b = cluster.join_new_node(leader, true).await;
    let old: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let mut cc = ConfChangeV2::default();
    for (id, kind) in [
        (a, ConfChangeType::AddNode),
        (b, ConfChangeType::AddNode),
        (old[0], ConfChangeType::RemoveNode),
        (old[1], ConfChangeType::RemoveNode),
    ] {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        cc.mut_changes().push(single);
    }
    cc.set_transition(ConfChangeTransition::Explicit);
    let joint = cluster
        .node(leader)
        .change_config(cc, Peers::new())
        .await
        .expect("enter joint");
    assert!(
        !joint.voters_outgoing.is_empty(),
        "in a joint configuration"
    );
    cluster.propose(leader, "in-joint").await;
    let done = cluster
        .node(leader)
        .leave_joint()
        .await
        .expect("leave joint");
    assert!(done.voters_outgoing.is_empty());
    let voters: BTreeSet<u64> = done.voters.iter().copied().collect();
    assert_eq!(voters, BTreeSet::from([leader, a, b]));
    // Both replaced voters learn they were removed and stop.
    for id in old {
        cluster.expect_removed(id).await;
    }
    cluster.propose(a, "after").await;
    let log = cluster.wait_all_applied(3).await;
    assert_eq!(log, vec!["before", "in-joint", "after"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_built_by_joins_restarts_with_the_same_members_and_addresses() {
    let mut cluster = TestCluster::start(1).await;
    cluster.join_new_node(1, false).await;
    cluster.join_new_node(2, false).await;
    cluster.propose(3, "x").await;
    let before = members(&cluster).await;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.stop_node(*id).await;
    }
    for id in &ids {
        cluster.start_node(*id).await;
    }
    let after = members(&cluster).await;
    assert_eq!(before, after);
    cluster.propose(2, "y").await;
    let log = cluster.wait_all_applied(2).await;
    assert_eq!(log, vec!["x", "y"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_cannot_get_an_id_or_change_membership() {
    use protobuf::Message as _;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut stranger = cluster.config(1);
    stranger.cluster_id = "intruders".into();
    for ask in [leader, cluster.follower_of(leader)] {
        let refused = pontoon::cluster::request_id_with(
            &stranger,
            "127.0.0.1:1".into(),
            cluster.peers[&ask].clone(),
        )
        .await;
        match refused {
            Err(e) => assert!(e.to_string().contains("cluster id mismatch"), "{e}"),
            Ok(t) => panic!("a node of another cluster got ticket {t:?}"),
        }
    }
    // A direct membership change from the other cluster is refused too.
    let mut client =
        pontoon::client::connect_lazy(&cluster.peers[&leader], &stranger).expect("client");
    let mut cc = ConfChangeV2::default();
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 99;
    cc.mut_changes().push(single);
    let refused = client
        .change_config(pontoon::transport::pb::ChangeConfigRequest {
            cluster_id: stranger.cluster_id.clone(),
            conf_change: cc.write_to_bytes().expect("encode"),
            addrs: [(99, "127.0.0.1:1".to_string())].into(),
            join_token: String::new(),
        })
        .await
        .expect_err("foreign membership change refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Nothing was reserved or added: the next legitimate id is 4 and the members are unchanged.
    let ticket = pontoon::cluster::request_id_with(
        &cluster.config(1),
        "127.0.0.1:2".into(),
        cluster.peers[&leader].clone(),
    )
    .await
    .expect("legitimate ticket");
    assert_eq!(ticket.reserved_id, 4);
    let ids: Vec<u64> = members(&cluster).await.into_iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    cluster.shutdown().await;
}

/// A node stopped after it was added as a learner and before its promotion comes back as a
/// learner. `finish_join` catches it up and makes it a voter, through the members it knows (no
/// ticket needed); on a voter it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_restarted_before_its_promotion_finishes_joining_as_a_voter() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "before").await;
    let id = cluster.join_new_node(leader, true).await;
    cluster.stop_node(id).await;
    cluster.propose(leader, "while-down").await;
    cluster.start_node(id).await;
    let role_of = |status: pontoon::NodeStatus| {
        status
            .peers
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| p.role)
    };
    let before = role_of(cluster.node(id).inspect().await.expect("inspect"));
    assert_eq!(before, Some(pontoon::PeerRole::Learner));
    cluster
        .node(id)
        .finish_join()
        .await
        .expect("finish the join");
    let leader = cluster.wait_for_leader().await;
    let seen_by_leader = role_of(cluster.node(leader).inspect().await.expect("inspect"));
    assert_eq!(seen_by_leader, Some(pontoon::PeerRole::Voter));
    cluster
        .node(id)
        .finish_join()
        .await
        .expect("a voter has nothing to finish");
    let log = cluster.wait_all_applied(2).await;
    assert_eq!(log, ["before", "while-down"]);
    cluster.shutdown().await;
}

/// A node that knows no member's address (restarted half-way through a join: only its ticket had
/// taught it the addresses) learns the leader's from the leader's own stream, so the leader's
/// snapshot and appends get answers and the node becomes a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_knows_no_address_learns_the_leaders_from_its_stream_and_catches_up() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "before").await;
    let addr = support::free_addrs(1).remove(0);
    let ticket = Raft::<AppliedLog>::request_id(addr.clone(), cluster.peers[&leader].clone())
        .await
        .expect("request_id");
    let id = ticket.reserved_id;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = cluster.config(id);
    config.data_dir = dir.path().join("joiner");
    config.initial_peers = None;
    let fsm = AppliedLog::default();
    let joiner = Raft::bootstrap_to_join(&ticket, fsm.clone(), config, support::test_logger())
        .await
        .expect("bootstrap");
    assert_eq!(joiner.get_peers().len(), 1, "it knows only itself");
    let task = tokio::spawn(joiner.clone().run());
    // Added by the leader directly: the joiner never hears the members' addresses from a ticket.
    cluster
        .node(leader)
        .add_learner(id, addr)
        .await
        .expect("add learner");
    support::eventually(
        std::time::Duration::from_secs(20),
        "the joiner caught up from the leader's snapshot",
        || fsm.snapshot_entries() == ["before"],
    )
    .await;
    assert!(
        joiner.get_peers().contains_key(&leader),
        "learned the leader's address"
    );
    joiner.quit().await.expect("quit");
    task.await.expect("join").expect("run");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_listening_on_port_0_announce_the_port_they_got_and_form_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logger = support::test_logger();
    // A one-node cluster whose own entry asks for any free port.
    let peers = Peers::from([(1, "127.0.0.1:0".to_string())]);
    let config = support::test_config(dir.path(), 1, &peers, "port-0");
    let first_fsm = AppliedLog::default();
    let first = Raft::bootstrap(1, "127.0.0.1:0", first_fsm.clone(), config, logger.clone())
        .await
        .expect("bootstrap on port 0");
    let bound = first.local_addr().to_string();
    assert_ne!(first.local_addr().port(), 0);
    assert_eq!(first.raft_addr(), bound, "announces the port it got");
    assert_eq!(
        first.get_peers()[&1],
        bound,
        "its membership holds that port"
    );
    let first_task = tokio::spawn(first.clone().run());
    first
        .wait_for_leader(std::time::Duration::from_secs(20))
        .await
        .expect("leader");

    // A second node joins with a ticket asked for port 0 too.
    let ticket = Raft::<AppliedLog>::request_id("127.0.0.1:0", bound.clone())
        .await
        .expect("request_id");
    let mut config = support::test_config(dir.path(), ticket.reserved_id, &peers, "port-0");
    config.initial_peers = None;
    let second_fsm = AppliedLog::default();
    let second = Raft::bootstrap_to_join(&ticket, second_fsm.clone(), config, logger)
        .await
        .expect("bootstrap joiner on port 0");
    let second_addr = second.local_addr().to_string();
    let second_task = tokio::spawn(second.clone().run());
    second.join_cluster(vec![ticket]).await.expect("join");
    assert_eq!(first.get_peers()[&second.id()], second_addr);
    support::propose_retrying(&second, "via-the-joiner").await;
    support::eventually(
        std::time::Duration::from_secs(20),
        "both nodes applied the write",
        || first_fsm.len() == 1 && second_fsm.len() == 1,
    )
    .await;
    // Restarted on port 0, a node takes the port its members know it by, not a new one.
    first.quit().await.expect("quit");
    first_task.await.expect("join").expect("clean stop");
    let config = support::test_config(dir.path(), 1, &peers, "port-0");
    let first_fsm = AppliedLog::default();
    let first = Raft::bootstrap(
        1,
        "127.0.0.1:0",
        first_fsm.clone(),
        config,
        support::test_logger(),
    )
    .await
    .expect("restart on port 0");
    assert_eq!(
        first.local_addr().to_string(),
        bound,
        "the port the members know"
    );
    let first_task = tokio::spawn(first.clone().run());
    support::propose_retrying(&second, "after-the-restart").await;
    support::eventually(
        std::time::Duration::from_secs(20),
        "the restarted node applied both writes",
        || first_fsm.len() == 2,
    )
    .await;
    for (node, task) in [(second, second_task), (first, first_task)] {
        node.quit().await.expect("quit");
        task.await.expect("join").expect("clean stop");
    }
}
