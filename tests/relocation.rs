//! A member restarted on a new address: the cluster records it through the log and reaches the
//! node there; bad address updates are refused and change nothing.

mod support;

use std::time::Duration;

use pontoon::Error;
use support::{eventually, free_addrs, TestCluster};

const WAIT: Duration = Duration::from_secs(20);

/// (Re)start `id` on its data dir, listening on a fresh address.
async fn restart_elsewhere(cluster: &mut TestCluster, id: u64) -> (String, String) {
    if cluster.nodes.contains_key(&id) {
        cluster.stop_node(id).await;
    }
    let old = cluster.peers[&id].clone();
    let new = free_addrs(1).remove(0);
    // The harness listens on `peers[id]`; the data dir still records `old` for this node.
    cluster.peers.insert(id, new.clone());
    cluster.start_node(id).await;
    (old, new)
}

fn has_entry(cluster: &TestCluster, id: u64, entry: &str) -> bool {
    cluster.nodes[&id]
        .fsm
        .entries
        .lock()
        .expect("lock")
        .iter()
        .any(|e| e == entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_a_new_address_is_reached_there_and_members_remember_it() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let moved = cluster.follower_of(leader);
    let other = cluster.node_other_than(&[leader, moved]);

    cluster.stop_node(moved).await;
    cluster.propose(leader, "while-away").await;
    let (old, new) = restart_elsewhere(&mut cluster, moved).await;
    assert_ne!(old, new);
    cluster.propose(leader, "after-move").await;

    // Reached at the new address: it catches up on both writes.
    eventually(WAIT, "the moved node applies the writes", || {
        has_entry(&cluster, moved, "while-away") && has_entry(&cluster, moved, "after-move")
    })
    .await;
    for id in [leader, other, moved] {
        eventually(
            WAIT,
            "every node's address book has the new address",
            || cluster.node(id).get_peers().get(&moved) == Some(&new),
        )
        .await;
    }

    // Durable: a member restarted (with nothing to replay that could teach it) still dials the
    // new address, and so does the moved node itself.
    for id in [other, moved] {
        cluster.stop_node(id).await;
        cluster.start_node(id).await;
        assert_eq!(
            cluster.node(id).get_peers().get(&moved),
            Some(&new),
            "node {id} forgot the new address across a restart"
        );
    }
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "after-restarts").await;
    eventually(WAIT, "the moved node applies a later write", || {
        has_entry(&cluster, moved, "after-restarts")
    })
    .await;
    cluster.shutdown().await;
}

/// Two voters: nothing commits without the moved node's ack, so the leader must reach it at the
/// new address before the entry that records it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_node_cluster_reaches_a_member_that_moved() {
    let mut cluster = TestCluster::start(2).await;
    let leader = cluster.wait_for_leader().await;
    let moved = cluster.follower_of(leader);
    let (_, new) = restart_elsewhere(&mut cluster, moved).await;

    eventually(WAIT, "both nodes record the new address", || {
        [leader, moved]
            .iter()
            .all(|id| cluster.node(*id).get_peers().get(&moved) == Some(&new))
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "with-both").await;
    eventually(WAIT, "the moved node applies a write", || {
        has_entry(&cluster, moved, "with-both")
    })
    .await;
    cluster.shutdown().await;
}

/// Three voters, the leader down and the other follower moved: no leader can be elected without
/// the moved node's vote, which only reaches the survivor once it dials the new address. The
/// survivor does so as soon as it has checked that the node answers there, before any commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_whose_vote_is_needed_is_dialled_before_the_update_commits() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "before").await;
    let moved = cluster.follower_of(leader);
    let survivor = cluster.node_other_than(&[leader, moved]);
    cluster.stop_node(moved).await;
    cluster.stop_node(leader).await;
    let (_, new) = restart_elsewhere(&mut cluster, moved).await;

    eventually(WAIT, "the two nodes elect a leader", || {
        [survivor, moved]
            .iter()
            .any(|id| cluster.node(*id).is_leader())
    })
    .await;
    eventually(WAIT, "the survivor records the new address", || {
        cluster.node(survivor).get_peers().get(&moved) == Some(&new)
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "with-two").await;
    eventually(WAIT, "the moved node applies a write", || {
        has_entry(&cluster, moved, "with-two")
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_updates_that_could_not_reach_the_member_are_refused_and_change_nothing() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let other = cluster.node_other_than(&[leader, follower]);
    let before = cluster.node(leader).get_peers();

    let node = cluster.node(follower);
    match node.update_address(99, "127.0.0.1:4000").await {
        Err(Error::UnknownNode(99)) => {}
        other => panic!("an unknown id must be refused with UnknownNode, got {other:?}"),
    }
    for bad in ["no-port", "127.0.0.1:0", "", "0.0.0.0:4000"] {
        match node.update_address(leader, bad).await {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(bad), "{m}"),
            other => panic!("address {bad:?} must be refused as invalid, got {other:?}"),
        }
    }
    // Nothing answers there: a typo, or the node is not started yet.
    let nowhere = free_addrs(1).remove(0);
    match node.update_address(other, nowhere.clone()).await {
        Err(Error::Transport(m)) => assert!(m.contains(&nowhere), "{m}"),
        other => panic!("an address nobody answers at must be refused, got {other:?}"),
    }
    // Another member answers there.
    match node
        .update_address(other, cluster.peers[&leader].clone())
        .await
    {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("not node"), "{m}"),
        other => panic!("another node's address must be refused, got {other:?}"),
    }
    // Over gRPC, as the CLI sends it: the same refusals.
    match pontoon::debug::update_member_address(&cluster.peers[&leader], 42, "127.0.0.1:4000").await
    {
        Err(Error::UnknownNode(42)) => {}
        other => panic!("the RPC must refuse an unknown id with UnknownNode, got {other:?}"),
    }
    let refused = pontoon::debug::update_member_address(&cluster.peers[&leader], other, &nowhere)
        .await
        .expect_err("nobody answers there");
    assert!(!refused.outcome_unknown(), "{refused:?}");
    cluster.propose(leader, "after").await;
    assert_eq!(cluster.wait_all_applied(1).await, vec!["after"]);
    for (id, n) in &cluster.nodes {
        assert_eq!(n.raft.get_peers(), before, "node {id}'s book changed");
    }
    cluster.shutdown().await;
}

const TOKEN: &str = "relocation-token";

fn with_token(config: &mut pontoon::Config) {
    config.join_token = Some(TOKEN.to_string());
}

/// The operator's path: a node restarted elsewhere without the cluster's join token cannot
/// record its address itself (refused); an operator with the token records it through any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_records_the_address_of_a_node_that_could_not() {
    let mut cluster = TestCluster::start_with(3, with_token).await;
    let leader = cluster.wait_for_leader().await;
    let moved = cluster.follower_of(leader);
    let other = cluster.node_other_than(&[leader, moved]);
    let old = cluster.peers[&moved].clone();
    cluster.tweak = |_| {};
    let (_, new) = restart_elsewhere(&mut cluster, moved).await;
    cluster.tweak = with_token;
    cluster.propose(leader, "while-unreachable").await;
    assert_eq!(
        cluster.node(leader).get_peers().get(&moved),
        Some(&old),
        "recorded without the token"
    );

    let options = pontoon::debug::RemoteOptions {
        join_token: Some(TOKEN.to_string()),
        ..Default::default()
    };
    pontoon::debug::update_member_address_with(&cluster.peers[&other], moved, &new, &options)
        .await
        .expect("address recorded");
    for id in [leader, other, moved] {
        eventually(WAIT, "every node records the address", || {
            cluster.node(id).get_peers().get(&moved) == Some(&new)
        })
        .await;
    }
    eventually(WAIT, "the moved node catches up", || {
        has_entry(&cluster, moved, "while-unreachable")
    })
    .await;
    cluster.shutdown().await;
}
