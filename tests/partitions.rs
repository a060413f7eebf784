//! Behaviour under injected network faults (partitions, loss, delay and reordering).

mod support;

use std::time::Duration;

use support::{eventually, TestCluster};

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
            e.is_retryable() || matches!(e, pontoon::Error::Timeout(_)),
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
