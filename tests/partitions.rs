//! Behaviour under injected network faults (partitions, loss, delay and reordering).

mod support;

use std::time::Duration;

use pontoon::Raft;
use support::{eventually, AppliedLog, TestCluster};
use tokio::task::JoinHandle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_serves_no_stale_reads_and_catches_up_after_healing() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.wait_for_leader().await;
    cluster.propose(old, "before").await;
    cluster.isolate(old);

    // The majority side elects a new leader and keeps taking writes.
    let others: Vec<u64> = cluster.followers_of(old);
    let mut new_leader = 0;
    eventually(
        Duration::from_secs(20),
        "the majority elects a new leader",
        || {
            new_leader = others
                .iter()
                .copied()
                .find(|id| cluster.node(*id).is_leader())
                .unwrap_or(0);
            new_leader != 0
        },
    )
    .await;
    cluster.propose(new_leader, "during-partition").await;

    // The isolated old leader never returns a value older than that acknowledged write.
    let read = cluster
        .node(old)
        .linearizable_read(|log| log.snapshot_entries())
        .await;
    match read {
        Ok(entries) => assert!(
            entries.contains(&"during-partition".to_string()),
            "stale linearizable read on the isolated node: {entries:?}"
        ),
        Err(e) => assert!(
            e.is_retryable() || matches!(e, pontoon::Error::Timeout { .. }),
            "{e}"
        ),
    }

    cluster.heal_all();
    let log = cluster.wait_all_applied(2).await;
    assert_eq!(log, vec!["before", "during-partition"]);
    let seen = cluster
        .node(old)
        .linearizable_read(|log| log.snapshot_entries())
        .await
        .expect("read after healing");
    assert_eq!(seen, log);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_and_nodes_converge_under_loss_delay_and_reordering() {
    let cluster = TestCluster::start(3).await;
    for node in cluster.nodes.values() {
        node.raft.faults().set_drop_rate(0.1);
        node.raft
            .faults()
            .set_delay(Duration::from_millis(0), Duration::from_millis(15));
    }
    let leader = cluster.wait_for_leader().await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let raft = cluster.node(leader).clone();
        tasks.push(tokio::spawn(async move {
            // Lost messages only delay commits; a retry is safe only for definite failures.
            let data = format!("lossy-{i}");
            for _ in 0..5 {
                match raft.propose(data.clone().into_bytes()).await {
                    Ok(_) => return Some(data),
                    Err(e) if e.is_retryable() => continue,
                    Err(_) => return None,
                }
            }
            None
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Some(d) = t.await.expect("task") {
            acknowledged.push(d);
        }
    }
    assert!(
        acknowledged.len() >= 50,
        "most writes commit despite 10% loss: {}",
        acknowledged.len()
    );
    cluster.heal_all();
    let n = acknowledged.len();
    let log = cluster.wait_all_applied(n).await;
    for a in &acknowledged {
        assert!(log.contains(a), "acknowledged write {a} missing");
    }
    cluster.shutdown().await;
}

/// With `Config::append_window = 1`, proposals that arrive while the leader has an entry in
/// flight are held (not appended) until that entry commits, then appended together as one
/// entry; every proposer still gets its own command's answer, and nothing is lost or reordered.
/// The followers' acks are delayed to keep the first entry uncommitted for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_arriving_while_an_entry_is_uncommitted_wait_and_share_one_entry() {
    const HELD: usize = 5;
    let HeldWrites {
        cluster,
        node,
        base,
        first,
        later,
        ..
    } = hold_writes(HELD, Duration::from_secs(5)).await;
    let status = node.inspect().await.expect("inspect");
    assert_eq!(status.held_proposals, HELD);
    assert_eq!(
        status.last_index,
        base + 1,
        "only the first write is in the log while it is uncommitted"
    );
    assert!(
        status.commit_index <= base,
        "the first write is still uncommitted"
    );

    cluster.heal_all();
    let mut answers = Vec::new();
    for task in std::iter::once(first).chain(later) {
        let (result, data) = task.await.expect("task");
        let answer = String::from_utf8(result.expect("the write is applied")).expect("utf8");
        assert!(answer.ends_with(&format!(":{data}")), "{data} got {answer}");
        answers.push(answer);
    }
    let log = cluster.wait_all_applied(2 + HELD).await;
    assert_eq!(log[..2], ["warm-up".to_string(), "first".to_string()]);
    let status = node.inspect().await.expect("inspect");
    assert_eq!(
        status.last_index,
        base + 2,
        "the held writes were appended as one entry"
    );
    assert_eq!(status.held_proposals, 0);
    assert_eq!(answers.len(), 1 + HELD);
    cluster.shutdown().await;
}

/// A leader that stops while the append window holds proposals refuses them as definitely not
/// applied (safe to retry), while the write already in its log gets "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_proposals_of_a_leader_that_stops_are_refused_as_not_applied() {
    const HELD: usize = 3;
    let HeldWrites {
        mut cluster,
        leader,
        first,
        later,
        ..
    } = hold_writes(HELD, Duration::from_secs(3600)).await;

    cluster.stop_node(leader).await;
    match first.await.expect("task").0 {
        Err(pontoon::Error::OutcomeUnknown(_)) => {}
        other => panic!("the appended write must be reported unknown, got {other:?}"),
    }
    for task in later {
        match task.await.expect("task").0 {
            Err(e @ pontoon::Error::ProposalDropped(_)) => assert!(e.is_retryable()),
            other => panic!("a held write must be refused as not applied, got {other:?}"),
        }
    }
    cluster.heal_all();
    cluster.shutdown().await;
}

/// A write in flight through the test: its outcome and its data.
type WriteTask = JoinHandle<(pontoon::Result<Vec<u8>>, String)>;

/// What `hold_writes` leaves behind.
struct HeldWrites {
    cluster: TestCluster,
    leader: u64,
    node: Raft<AppliedLog>,
    /// The leader's last index before the first write.
    base: u64,
    /// The write appended and left uncommitted.
    first: WriteTask,
    /// The writes the leader holds.
    later: Vec<WriteTask>,
}

/// Start 3 nodes with `append_window = 1`, commit a warm-up write, delay the followers' acks by
/// `ack_delay`, then have the leader append a first write (uncommitted until an ack arrives)
/// and hold `n` later ones.
async fn hold_writes(n: usize, ack_delay: Duration) -> HeldWrites {
    let cluster = TestCluster::start_with(3, |c| {
        c.append_window = 1;
        // The leader hears no ack for the delay; without check_quorum it does not step down for
        // that (its heartbeats still reach the followers, so they elect nobody).
        c.raft.check_quorum = false;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, "warm-up").await;
    cluster.wait_all_applied(1).await;
    let node = cluster.node(leader).clone();
    let base = node.inspect().await.expect("inspect").last_index;
    let proposed_before = support::metric(&node, "pontoon_proposals_total");
    let held_before = support::metric(&node, "pontoon_proposals_held_total");
    for follower in cluster.followers_of(leader) {
        cluster
            .node(follower)
            .faults()
            .set_delay(ack_delay, ack_delay);
    }
    let propose = |data: String| {
        let node = node.clone();
        tokio::spawn(async move { (node.propose(data.clone().into_bytes()).await, data) })
    };
    let first = propose("first".into());
    eventually(
        Duration::from_secs(10),
        "the first write is appended",
        || support::metric(&node, "pontoon_proposals_total") == proposed_before + 1.0,
    )
    .await;
    let later: Vec<_> = (0..n).map(|i| propose(format!("later-{i}"))).collect();
    wait_until_held(&node, n, held_before).await;
    HeldWrites {
        cluster,
        leader,
        node,
        base,
        first,
        later,
    }
}

/// Wait until the leader `node` has held `n` proposals since `pontoon_proposals_held_total` read
/// `counted_before` (an earlier write, such as one made while the leader's first entry was still
/// uncommitted, may have been held too). On timeout, fail with the node's view (role, term,
/// indexes) to tell a lost leadership apart.
async fn wait_until_held(node: &pontoon::RaftNode, n: usize, counted_before: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = support::metric(node, "pontoon_proposals_held_total") - counted_before;
        if held == n as f64 {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let status = node.inspect().await;
            panic!("timed out waiting until {n} writes are held: {held} were; status {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
