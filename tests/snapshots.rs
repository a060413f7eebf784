//! Snapshots and compaction: bounded logs, catch-up by snapshot, chunked transfer that survives a
//! broken stream, and refusal of corrupt snapshots.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pontoon::transport::pb;
use support::{eventually, metric, Gate, TestCluster};

/// Snapshots by entry count alone, so the log bound is `snapshot_threshold + compaction_margin`.
/// One write per entry (no command batches), so N writes make a log of N entries.
fn compacting(c: &mut pontoon::Config) {
    c.snapshot_threshold = 1_000;
    c.snapshot_log_ratio = 0.0;
    c.compaction_margin = 200;
    c.max_commands_per_entry = 1;
}

/// Snapshots often, with concurrent writes packed into shared entries: `write_many`'s 100
/// sequential rounds make at least 100 entries, so the log is compacted several times.
fn compacting_batched(c: &mut pontoon::Config) {
    c.snapshot_threshold = 20;
    c.snapshot_log_ratio = 0.0;
    c.compaction_margin = 5;
}

async fn write_many(cluster: &TestCluster, via: u64, n: usize, prefix: &str) {
    for chunk in 0..n / 100 {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let raft = cluster.node(via).clone();
            let data = format!("{prefix}-{chunk}-{i}");
            tasks.push(tokio::spawn(async move {
                support::propose_retrying(&raft, &data).await
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_10000_writes_every_log_is_bounded_by_threshold_plus_margin() {
    let cluster = TestCluster::start_with(3, compacting).await;
    let leader = cluster.wait_for_leader().await;
    write_many(&cluster, leader, 10_000, "w").await;
    cluster.wait_all_applied(10_000).await;
    for (id, node) in &cluster.nodes {
        let s = node.raft.inspect().await.expect("inspect");
        let held = s.last_index + 1 - s.first_index;
        assert!(
            held <= 1_200,
            "node {id} holds {held} entries ({}..{})",
            s.first_index,
            s.last_index
        );
        assert!(
            s.snapshot_index >= 9_000,
            "node {id} snapshot at {}",
            s.snapshot_index
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_state_is_snapshotted_once_the_log_matches_its_size_not_every_threshold() {
    // Every write grows the test state (it keeps all entries). With snapshot_log_ratio 1 a
    // snapshot waits until the log written since the last one is as large as that snapshot:
    // about at 1,000, 2,000, 4,000 and 8,000 of 10,000 entries, not at every 1,000.
    let cluster = TestCluster::start_with(3, |c| {
        c.snapshot_threshold = 1_000;
        c.snapshot_log_ratio = 1.0;
        c.compaction_margin = 200;
        c.max_commands_per_entry = 1;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    write_many(&cluster, leader, 10_000, "w").await;
    cluster.wait_all_applied(10_000).await;
    for (id, node) in &cluster.nodes {
        let taken = metric(cluster.node(*id), "pontoon_snapshots_total");
        assert!(
            (3.0..=6.0).contains(&taken),
            "node {id} took {taken} snapshots of a state growing to 10,000 entries"
        );
        let s = node.raft.inspect().await.expect("inspect");
        assert!(
            s.snapshot_index >= 4_000,
            "node {id} snapshot at {}",
            s.snapshot_index
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    // Batches on: the snapshot and the log tail after it both hold packed commands.
    let mut cluster = TestCluster::start_with(3, compacting_batched).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    cluster.stop_node(follower).await;
    write_many(&cluster, leader, 10_000, "w").await;
    let first = cluster
        .node(leader)
        .inspect()
        .await
        .expect("inspect")
        .first_index;
    assert!(
        first > 2,
        "the leader compacted its log (first index {first})"
    );
    cluster.start_node(follower).await;
    let log = cluster.wait_all_applied(10_000).await;
    assert_eq!(log.len(), 10_000);
    assert!(
        metric(
            cluster.node(follower),
            "pontoon_snapshot_chunks_received_total"
        ) >= 1.0,
        "the follower caught up through a snapshot"
    );
    cluster.shutdown().await;
}

/// A state machine that can `freeze` its state has it written on another thread: the run loop
/// goes on committing and applying while the writer is held, and the snapshot holds exactly
/// what was applied when the state was frozen (a restart from it replays the rest once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_state_is_written_off_the_run_loop_and_holds_what_was_applied_when_frozen() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..30 {
        cluster.propose(leader, &format!("before-{i}")).await;
    }
    let gate = Arc::new(Gate::default());
    *cluster.nodes[&leader].fsm.freeze_gate.lock().expect("lock") = Some(gate.clone());
    let node = cluster.node(leader).clone();
    let snapshot = tokio::spawn(async move { node.make_snapshot().await });
    eventually(
        Duration::from_secs(10),
        "the leader froze its state and the writer waits at the gate",
        || gate.arrived.load(Ordering::SeqCst) == 1,
    )
    .await;
    // The writer is held: these commit and apply everywhere only if the loop is not waiting.
    for i in 0..20 {
        cluster.propose(leader, &format!("after-{i}")).await;
    }
    cluster.wait_all_applied(50).await;
    assert!(
        !snapshot.is_finished(),
        "the snapshot is stored only after its writer ran"
    );
    gate.open();
    let index = snapshot
        .await
        .expect("task")
        .expect("the frozen state was stored as a snapshot");
    assert!(index > 0);

    // Restarted, the leader restores that snapshot and applies the log after it: the 20 later
    // entries appear once, so the snapshot held the 30 earlier ones and nothing after.
    cluster.stop_node(leader).await;
    cluster.start_node(leader).await;
    let log = cluster.wait_all_applied(50).await;
    assert_eq!(log.len(), 50);
    assert_eq!(log[29], "before-29");
    assert_eq!(log[30], "after-0");
    assert_eq!(
        *cluster.nodes[&leader].fsm.restores.lock().expect("lock"),
        1,
        "the restarted leader restored its snapshot"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joining_a_compacted_cluster_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start_with(3, compacting).await;
    let leader = cluster.wait_for_leader().await;
    write_many(&cluster, leader, 2_500, "w").await;
    let joined = cluster.join_new_node(leader, false).await;
    let log = cluster.wait_all_applied(2_500).await;
    assert_eq!(log.len(), 2_500);
    assert!(
        metric(
            cluster.node(joined),
            "pontoon_snapshot_chunks_received_total"
        ) >= 1.0
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_snapshot_streams_in_chunks_and_survives_a_cut_stream() {
    let mut cluster = TestCluster::start_with(3, |c| {
        c.snapshot_threshold = 1_000_000;
        c.compaction_margin = 0;
        c.snapshot_chunk_bytes = 1024 * 1024;
        c.propose_timeout = Duration::from_secs(30);
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    cluster.stop_node(follower).await;
    let blob = "x".repeat(1024 * 1024);
    for i in 0..65 {
        cluster.propose(leader, &format!("{i:03}{blob}")).await;
    }
    let index = cluster
        .node(leader)
        .make_snapshot()
        .await
        .expect("snapshot");
    let first = cluster
        .node(leader)
        .inspect()
        .await
        .expect("inspect")
        .first_index;
    assert!(first > index - 1, "log compacted up to the snapshot");
    // The restarted follower's first snapshot stream breaks after 3 chunks.
    cluster
        .start_node_with(follower, |raft| raft.cut_next_snapshot_stream_after(3))
        .await;
    let fsm = cluster.nodes[&follower].fsm.clone();
    eventually(
        Duration::from_secs(120),
        "the follower holds the 64 MiB state",
        || fsm.len() >= 65,
    )
    .await;
    let leader_log = cluster.nodes[&leader].fsm.snapshot_entries();
    assert_eq!(
        fsm.snapshot_entries(),
        leader_log,
        "receiver state equals the leader's"
    );
    let node = cluster.node(follower);
    let chunks = metric(node, "pontoon_snapshot_chunks_received_total");
    assert!(
        chunks >= 64.0 + 3.0,
        "64+ MiB arrived in 1 MiB chunks, plus the cut attempt: {chunks}"
    );
    assert!(metric(node, "pontoon_snapshot_chunk_max_bytes") <= (1024 * 1024) as f64);
    assert!(
        metric(node, "pontoon_snapshot_transfers_failed_total") >= 1.0,
        "the cut was seen"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_truncated_snapshot_streams_are_refused_and_change_nothing() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "kept").await;
    let target = cluster.follower_of(leader);
    let before = cluster.node(target).inspect().await.expect("inspect");
    let config = cluster.config(target);
    let mut client =
        pontoon::client::connect_lazy(&cluster.peers[&target], &config).expect("client");

    let header = {
        use protobuf::Message as _;
        let mut msg = pontoon::raft::eraftpb::Message::default();
        msg.set_msg_type(pontoon::raft::eraftpb::MessageType::MsgSnapshot);
        msg.from = leader;
        msg.to = target;
        msg.term = before.term;
        msg.mut_snapshot().mut_metadata().index = before.commit_index + 100;
        msg.mut_snapshot().mut_metadata().term = before.term;
        msg.write_to_bytes().expect("encode")
    };
    let chunk = |seq: u64, data: &[u8], total: u64, crc: u32| pb::SnapshotChunk {
        cluster_id: if seq == 0 {
            cluster.cluster_id.clone()
        } else {
            String::new()
        },
        from: leader,
        message: if seq == 0 { header.clone() } else { Vec::new() },
        total_size: total,
        crc32: crc,
        seq,
        data: data.to_vec(),
    };
    let garbage = b"definitely not a snapshot envelope".to_vec();
    let good_crc = pontoon::storage::crc32(&garbage);
    // Wrong checksum.
    let bad_crc = client
        .install_snapshot(tokio_stream::iter(vec![chunk(
            0,
            &garbage,
            garbage.len() as u64,
            good_crc ^ 1,
        )]))
        .await
        .expect_err("bad checksum refused");
    assert_eq!(bad_crc.code(), tonic::Code::DataLoss);
    // Truncated: announces more than it sends.
    let truncated = client
        .install_snapshot(tokio_stream::iter(vec![chunk(
            0, &garbage, 1_000, good_crc,
        )]))
        .await
        .expect_err("truncated refused");
    assert_eq!(truncated.code(), tonic::Code::DataLoss);
    // Complete and checksummed, but not a pontoon envelope.
    let not_envelope = client
        .install_snapshot(tokio_stream::iter(vec![chunk(
            0,
            &garbage,
            garbage.len() as u64,
            good_crc,
        )]))
        .await
        .expect_err("bad envelope refused");
    assert_eq!(not_envelope.code(), tonic::Code::InvalidArgument);
    assert!(
        not_envelope.message().contains("refusing snapshot"),
        "{}",
        not_envelope.message()
    );

    let after = cluster.node(target).inspect().await.expect("inspect");
    assert_eq!(
        after.snapshot_index, before.snapshot_index,
        "nothing installed"
    );
    assert!(after.applied_index >= before.applied_index);
    cluster.propose(leader, "still-fine").await;
    let log = cluster.wait_all_applied(2).await;
    assert_eq!(log, vec!["kept", "still-fine"]);
    let leftovers: Vec<_> = std::fs::read_dir(cluster.dir.path().join(format!("node-{target}")))
        .expect("read dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("incoming-snapshot")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files removed");
    cluster.shutdown().await;
}
