//! Black-box tests of a 3-node cluster over real loopback gRPC with LMDB data dirs.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use pontoon::transport::pb;
use pontoon::{Error, Raft};
use support::{eventually, free_addrs, test_config, test_logger, AppliedLog, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_on_every_node_apply_identically_and_return_apply_result() {
    let cluster = TestCluster::start(3).await;
    let leaders: HashSet<u64> = cluster
        .nodes
        .values()
        .map(|n| n.raft.get_leader_id())
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    assert_eq!(
        cluster
            .nodes
            .values()
            .filter(|n| n.raft.is_leader())
            .count(),
        1
    );

    // Sequential proposals on each node: the answer is apply's bytes for that very entry.
    for round in 0..5 {
        for id in 1..=3 {
            let data = format!("seq-{id}-{round}");
            let answer = String::from_utf8(cluster.propose(id, &data).await).expect("utf8");
            let (position, entry) = answer.split_once(':').expect("position:entry");
            assert_eq!(entry, data, "propose returned another entry's result");
            assert!(position.parse::<usize>().is_ok());
        }
    }
    // Concurrent proposals on all nodes at once (several land in one Ready).
    let mut tasks = Vec::new();
    for id in 1..=3u64 {
        for i in 0..20 {
            let raft = cluster.node(id).clone();
            tasks.push(tokio::spawn(async move {
                let data = format!("par-{id}-{i}");
                let answer = support::propose_retrying(&raft, &data).await;
                assert!(String::from_utf8(answer)
                    .expect("utf8")
                    .ends_with(&format!(":{data}")));
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let log = cluster.wait_all_applied(75).await;
    assert_eq!(log.len(), 75);
    let distinct: HashSet<&String> = log.iter().collect();
    assert_eq!(distinct.len(), 75, "every entry applied exactly once");
    cluster.shutdown().await;
}

/// Whatever error `apply` returns, the proposer gets `StateMachine`: the one variant that says
/// "committed, apply failed". Here `apply` answers `InvalidRequest`, which passed through as is
/// would tell a client its write was refused and never logged; yet every node applied it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_error_of_any_kind_reaches_the_proposer_as_a_committed_state_machine_error() {
    let cluster = TestCluster::start(3).await;
    cluster.propose(1, "before").await;
    let leader = cluster.node(1).get_leader_id();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    for id in [leader, follower] {
        let refused = cluster
            .node(id)
            .propose(b"refuse:no such account".to_vec())
            .await;
        match refused {
            Err(Error::StateMachine(why)) => assert!(why.contains("no such account"), "{why}"),
            other => panic!("node {id}: expected StateMachine, got {other:?}"),
        }
    }
    let after = String::from_utf8(cluster.propose(1, "after").await).expect("utf8");
    assert_eq!(after, "2:after", "the refused commands changed no state");
    cluster.wait_all_applied(2).await;
    // Committed and applied everywhere: four commands reached every node's `apply`.
    for (id, node) in &cluster.nodes {
        let calls = || {
            node.fsm
                .apply_calls
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        eventually(
            Duration::from_secs(10),
            &format!("node {id} applied 4"),
            || calls() >= 4,
        )
        .await;
        assert_eq!(calls(), 4, "node {id}");
    }
    cluster.shutdown().await;
}

/// Proposals that reach the leader in the same turn share log entries (command batches), yet
/// every caller gets `apply`'s answer for its own command, every node applies the same commands
/// in the same order, and a restarted node replays the batches from its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_entries_and_each_caller_gets_its_own_answer() {
    const WRITES: usize = 300;
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let raft = cluster.node(leader).clone();
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let raft = raft.clone();
            tokio::spawn(async move {
                let data = format!("batched-{i}");
                let answer = raft.propose(data.clone().into_bytes()).await;
                (data, answer)
            })
        })
        .collect();
    let mut positions = HashSet::new();
    for task in tasks {
        let (data, answer) = task.await.expect("task");
        let answer = String::from_utf8(answer.expect("proposal answered")).expect("utf8");
        let (position, entry) = answer.split_once(':').expect("position:entry");
        assert_eq!(entry, data, "a caller got another command's answer");
        assert!(positions.insert(position.parse::<usize>().expect("position")));
    }
    assert_eq!(positions, (1..=WRITES).collect::<HashSet<_>>());
    let log = cluster.wait_all_applied(WRITES).await;
    // Every node counts each command once, and fewer entries than commands carried them.
    for id in 1..=3 {
        eventually(
            Duration::from_secs(10),
            &format!("node {id} counts {WRITES} applied commands"),
            || support::metric(cluster.node(id), "pontoon_applied_commands_total") == WRITES as f64,
        )
        .await;
    }
    let entries = support::metric(&raft, "pontoon_committed_entries_total");
    assert!(
        entries < WRITES as f64,
        "{WRITES} concurrent commands took {entries} entries: none were packed together"
    );
    // A restarted follower rebuilds its state machine from its own log, batches included.
    let follower = cluster.follower_of(leader);
    cluster.stop_node(follower).await;
    cluster.start_node(follower).await;
    assert_eq!(cluster.wait_all_applied(WRITES).await, log);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shutdown_elects_a_new_leader_and_writes_continue() {
    let mut cluster = TestCluster::start(3).await;
    for i in 0..10 {
        cluster.propose(1, &format!("before-{i}")).await;
    }
    let old_leader = cluster.wait_for_leader().await;
    cluster.stop_node(old_leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    let survivor = *cluster.nodes.keys().next().expect("a survivor");
    for i in 0..10 {
        cluster.propose(survivor, &format!("after-{i}")).await;
    }
    let log = cluster.wait_all_applied(20).await;
    assert!(log.contains(&"before-9".to_string()) && log.contains(&"after-9".to_string()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stopped_during_500_writes_catches_up_after_restart() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let down = if leader == 3 { 2 } else { 3 };
    cluster.stop_node(down).await;

    let mut acknowledged = Vec::new();
    for chunk in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let raft = cluster.node(leader).clone();
            let data = format!("w-{chunk}-{i}");
            acknowledged.push(data.clone());
            tasks.push(tokio::spawn(async move {
                support::propose_retrying(&raft, &data).await
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    }
    cluster.start_node(down).await;
    let fsm = cluster.nodes[&down].fsm.clone();
    eventually(
        Duration::from_secs(30),
        "the restarted node holds all 500 writes",
        || fsm.len() >= 500,
    )
    .await;
    let log = cluster.wait_all_applied(500).await;
    let held: HashSet<&String> = log.iter().collect();
    for w in &acknowledged {
        assert!(held.contains(w), "acknowledged write {w} missing");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3).await;
    let mut acknowledged = Vec::new();
    for i in 0..60 {
        let id = 1 + (i % 3) as u64;
        let data = format!("ack-{i}");
        cluster.propose(id, &data).await;
        acknowledged.push(data);
    }
    for id in 1..=3 {
        cluster.stop_node(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    cluster.wait_for_leader().await;
    let log = cluster.wait_all_applied(60).await;
    assert_eq!(
        log, acknowledged,
        "restart lost or reordered acknowledged writes"
    );
    // And the restarted cluster takes new writes.
    cluster.propose(2, "after-restart").await;
    let log = cluster.wait_all_applied(61).await;
    assert_eq!(log.last().map(String::as_str), Some("after-restart"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_snapshot_restores_once_and_replays_only_the_tail() {
    let mut cluster = TestCluster::start(3).await;
    for i in 0..30 {
        cluster.propose(1, &format!("s-{i}")).await;
    }
    cluster.wait_all_applied(30).await;
    let index = cluster.node(2).make_snapshot().await.expect("snapshot");
    assert!(index >= 30);
    for i in 0..5 {
        cluster.propose(1, &format!("tail-{i}")).await;
    }
    cluster.wait_all_applied(35).await;
    cluster.stop_node(2).await;
    cluster.start_node(2).await;
    let node = &cluster.nodes[&2];
    assert_eq!(
        *node.fsm.restores.lock().expect("lock"),
        1,
        "restore called once at start"
    );
    // Right after bootstrap the state machine holds exactly the snapshot's entries.
    assert!(node.fsm.len() >= 30);
    let log = cluster.wait_all_applied(35).await;
    assert_eq!(log.len(), 35);
    let status = cluster.node(2).inspect().await.expect("inspect");
    assert_eq!(status.snapshot_index, index);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_snapshot_ahead_of_the_stored_commit_index_resumes() {
    // A crash can leave a snapshot (stored in the background) ahead of the stored commit index
    // (which is not fsynced on its own). The chaos run found that raft-rs then refused to start.
    use pontoon::storage::{LmdbStorage, LogStore, PersistBatch};
    let mut cluster = TestCluster::start(3).await;
    for i in 0..20 {
        cluster.propose(1, &format!("c-{i}")).await;
    }
    cluster.wait_all_applied(20).await;
    let index = cluster.node(2).make_snapshot().await.expect("snapshot");
    cluster.stop_node(2).await;
    let config = cluster.config(2);
    {
        let store = LmdbStorage::open(
            &config.data_dir,
            2,
            &config.cluster_id,
            config.initial_map_size,
        )
        .expect("open");
        let mut hs = store.hard_state().expect("hard state");
        hs.commit = index - 1;
        store
            .persist(PersistBatch {
                hard_state: Some(hs),
                ..Default::default()
            })
            .expect("persist");
    }
    for i in 0..5 {
        cluster.propose(1, &format!("d-{i}")).await;
    }
    cluster.start_node(2).await;
    let log = cluster.wait_all_applied(25).await;
    assert_eq!(log.len(), 25);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs = free_addrs(1);
    let peers = pontoon::Peers::from([(1, addrs[0].clone())]);
    let first = Raft::bootstrap(
        1,
        addrs[0].clone(),
        AppliedLog::default(),
        test_config(dir.path(), 1, &peers, "alpha"),
        test_logger(),
    )
    .await
    .expect("bootstrap alpha");
    drop(first);
    let other = Raft::bootstrap(
        1,
        addrs[0].clone(),
        AppliedLog::default(),
        test_config(dir.path(), 1, &peers, "beta"),
        test_logger(),
    )
    .await;
    match other {
        Err(Error::Storage(pontoon::storage::StorageError::ForeignCluster {
            found,
            expected,
            ..
        })) => {
            assert_eq!((found.as_str(), expected.as_str()), ("alpha", "beta"));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a data dir of cluster alpha was accepted by cluster beta"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_whose_own_initial_peers_entry_is_not_its_address_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs = free_addrs(2);
    // Its entry names another address than the one it listens on (and would announce).
    let peers = pontoon::Peers::from([(1, addrs[1].clone())]);
    let config = test_config(dir.path(), 1, &peers, "alpha");
    let data_dir = config.data_dir.clone();
    match Raft::bootstrap(
        1,
        addrs[0].clone(),
        AppliedLog::default(),
        config,
        test_logger(),
    )
    .await
    {
        Err(Error::Config(msg)) => {
            assert!(msg.contains(&addrs[1]) && msg.contains(&addrs[0]), "{msg}");
            assert!(msg.contains("advertise_addr"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a member with the wrong own address was accepted"),
    }
    assert!(!data_dir.exists(), "the refused start left a data dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_from_another_cluster_or_malformed_is_refused_and_node_keeps_serving() {
    let cluster = TestCluster::start(3).await;
    let config = cluster.config(1);
    let mut client = pontoon::client::connect_lazy(&cluster.peers[&1], &config).expect("client");
    let foreign = client
        .send_messages(pb::MessageBatch {
            cluster_id: "someone-else".into(),
            from: 2,
            messages: vec![],
        })
        .await
        .expect_err("foreign cluster must be refused");
    assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
    let garbage = client
        .send_messages(pb::MessageBatch {
            cluster_id: cluster.cluster_id.clone(),
            from: 2,
            messages: vec![vec![0xff, 0xff, 0xff]],
        })
        .await
        .expect_err("garbage must be refused");
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    let foreign_propose = client
        .propose(pb::ProposeRequest {
            cluster_id: "someone-else".into(),
            data: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("foreign proposal refused");
    assert_eq!(foreign_propose.code(), tonic::Code::PermissionDenied);
    // Still serving.
    cluster.propose(1, "still-alive").await;
    cluster.wait_all_applied(1).await;
    cluster.shutdown().await;
}

/// Open a `StreamMessages` call with the given metadata and batches; the status it ends with.
async fn stream_outcome(
    client: &mut pb::raft_service_client::RaftServiceClient<tonic::transport::Channel>,
    cluster_id: &str,
    from: &str,
    batches: Vec<pb::MessageBatch>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(tokio_stream::iter(batches));
    request.metadata_mut().insert_bin(
        "pontoon-cluster-bin",
        tonic::metadata::BinaryMetadataValue::from_bytes(cluster_id.as_bytes()),
    );
    request
        .metadata_mut()
        .insert("pontoon-from", from.parse().expect("ascii"));
    let mut answers = client.stream_messages(request).await?.into_inner();
    while answers.message().await?.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_stream_from_another_cluster_or_with_garbage_is_refused_and_node_keeps_serving() {
    let cluster = TestCluster::start(3).await;
    let config = cluster.config(1);
    let mut client = pontoon::client::connect_lazy(&cluster.peers[&1], &config).expect("client");
    let foreign = stream_outcome(&mut client, "someone-else", "2", vec![])
        .await
        .expect_err("a stream of another cluster must be refused");
    assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
    let anonymous = stream_outcome(&mut client, &cluster.cluster_id, "node two", vec![])
        .await
        .expect_err("a stream without a sender id must be refused");
    assert_eq!(anonymous.code(), tonic::Code::InvalidArgument);
    let batch = |messages: Vec<Vec<u8>>| pb::MessageBatch {
        cluster_id: cluster.cluster_id.clone(),
        from: 2,
        messages,
    };
    // An accepted stream ends with the refusal of its first bad batch.
    let garbage = stream_outcome(
        &mut client,
        &cluster.cluster_id,
        "2",
        vec![batch(vec![]), batch(vec![vec![0xff, 0xff, 0xff]])],
    )
    .await
    .expect_err("garbage must be refused");
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    // A stream that only carries good batches ends cleanly when the sender closes it.
    stream_outcome(&mut client, &cluster.cluster_id, "2", vec![batch(vec![])])
        .await
        .expect("an empty batch is fine");
    cluster.propose(1, "still-alive").await;
    cluster.wait_all_applied(1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_a_lost_data_dir_stops_with_log_lost_and_the_cluster_keeps_writing() {
    // The follower acknowledged entries, then its data dir is lost and it starts again empty.
    // The leader's heartbeats name a commit index beyond its log: raft-rs would panic; the node
    // must stop with an error that says what happened, and the others keep serving.
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..20 {
        support::propose_retrying(cluster.node(leader), &format!("w{i}")).await;
    }
    let lost = cluster.follower_of(leader);
    eventually(
        Duration::from_secs(10),
        "the follower applied the writes",
        || cluster.node(lost).status().applied >= 20,
    )
    .await;
    cluster.stop_node(lost).await;
    std::fs::remove_dir_all(cluster.config(lost).data_dir).expect("wipe the data dir");
    cluster.start_node(lost).await;
    let node = cluster.nodes.remove(&lost).expect("restarted");
    let outcome = tokio::time::timeout(Duration::from_secs(30), node.task)
        .await
        .expect("the node stops instead of running on with a lost log")
        .expect("the run task ends without a panic");
    match outcome {
        Err(Error::LogLost(why)) => assert!(why.contains("the log ends at"), "{why}"),
        other => panic!("expected LogLost, got {other:?}"),
    }
    let leader = cluster.wait_for_leader().await;
    support::propose_retrying(cluster.node(leader), "after").await;
    cluster.shutdown().await;
}

/// A voter whose data dir is lost and that starts again empty from the same initial peers must
/// not vote. Here the old leader comes back empty while the only other running node lacks an
/// acknowledged write: with the empty node's vote that node would lead and erase the write.
/// The leader's `LogLost` check cannot catch this one, because the leader itself was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_empty_withholds_its_vote_so_an_acknowledged_write_survives() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    support::propose_retrying(cluster.node(leader), "before").await;
    cluster.wait_all_applied(1).await;
    let behind = cluster.follower_of(leader);
    let other = (1..=3)
        .find(|id| *id != leader && *id != behind)
        .expect("third node");
    cluster.stop_node(behind).await;
    // Acknowledged by the leader and `other` only.
    support::propose_retrying(cluster.node(leader), "acknowledged").await;
    cluster.stop_node(leader).await;
    std::fs::remove_dir_all(cluster.config(leader).data_dir).expect("wipe the leader's dir");
    cluster.stop_node(other).await;

    cluster.start_node(leader).await; // empty, from the same initial peers
    cluster.start_node(behind).await;
    eventually(
        Duration::from_secs(20),
        "the empty node refused to vote for the node that lacks the write",
        || support::metric(cluster.node(leader), "pontoon_votes_withheld_total") >= 1.0,
    )
    .await;
    assert!(
        !cluster.node(behind).is_leader(),
        "elected without the write"
    );

    cluster.start_node(other).await;
    let leader_now = cluster.wait_for_leader().await;
    support::propose_retrying(cluster.node(leader_now), "after").await;
    let log = cluster.wait_all_applied(3).await;
    assert_eq!(log, ["before", "acknowledged", "after"]);
    cluster.shutdown().await;
}

/// A call on a node whose `run()` was never spawned says so (`NotRunning`: nothing was
/// proposed) instead of waiting out the propose timeout and answering "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_to_a_node_that_is_not_running_fails_with_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addrs(1).remove(0);
    let peers = pontoon::Peers::from([(1, addr.clone())]);
    let raft = Raft::bootstrap(
        1,
        addr,
        AppliedLog::default(),
        test_config(dir.path(), 1, &peers, "not-running"),
        test_logger(),
    )
    .await
    .expect("bootstrap");
    match raft.propose(b"early".to_vec()).await {
        Err(Error::NotRunning) => {}
        other => panic!("expected NotRunning, got {other:?}"),
    }
    let task = tokio::spawn(raft.clone().run());
    raft.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let answer = raft.propose(b"later".to_vec()).await.expect("propose");
    assert_eq!(answer, b"1:later", "the refused proposal was never applied");
    raft.quit().await.expect("quit");
    task.await.expect("join").expect("run");
}
