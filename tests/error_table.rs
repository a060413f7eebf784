//! The README's table "What a `propose` error means", checked row by row: each row names the
//! tests that provoke its errors and show the entry's fate the row promises (not in the log,
//! maybe applied, applied). `every_row_of_the_readme_table_has_its_tests` keeps the table and the
//! tests together: a row without a test, or a test that no longer exists, fails it.

mod support;

use std::path::Path;
use std::time::Duration;

use pontoon::Error;
use support::{eventually, TestCluster};

/// Each row's first cell (as in the README), and the tests that check it (`file::function`).
const ROWS: &[(&str, &[&str])] = &[
    (
        "`NotLeader`, `NoLeader`, `ProposalDropped`",
        &["error_table::a_not_leader_answer_means_the_entry_is_not_in_the_log"],
    ),
    (
        "`Busy`, `NotReady`",
        &["limits::proposals_beyond_the_pending_limit_get_busy"],
    ),
    (
        "`Timeout`, `OutcomeUnknown`",
        &["error_table::a_write_that_timed_out_can_still_apply_later"],
    ),
    (
        "`StateMachine`",
        &["error_table::a_state_machine_error_means_the_entry_applied_on_every_node"],
    ),
    (
        "`InvalidRequest`",
        &["limits::a_proposal_over_the_size_limit_is_refused_and_the_node_keeps_serving"],
    ),
    (
        "`NotRunning`, `ShuttingDown`",
        &[
            "cluster::a_proposal_to_a_node_that_is_not_running_fails_with_not_running",
            "error_table::a_proposal_to_a_node_that_stopped_is_refused_and_never_applied",
        ],
    ),
    (
        "`SessionExpired` (sessions only)",
        &["sessions::a_command_of_an_expired_session_is_refused_and_applies_nothing"],
    ),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_row_of_the_readme_table_has_its_tests() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let table = readme
        .split("## What a `propose` error means")
        .nth(1)
        .expect("the README has the error table section");
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its separator
        .filter_map(|l| l.split('|').nth(1).map(str::trim))
        .collect();
    assert!(
        !rows.is_empty(),
        "no rows found in the README's error table"
    );
    for row in &rows {
        assert!(
            ROWS.iter().any(|(cell, _)| cell == row),
            "README row {row:?} has no tests listed in tests/error_table.rs"
        );
    }
    for (cell, tests) in ROWS {
        assert!(
            rows.contains(cell),
            "row {cell:?} is no longer in the README"
        );
        for test in *tests {
            let (file, function) = test.split_once("::").expect("file::function");
            let source = std::fs::read_to_string(root().join("tests").join(format!("{file}.rs")))
                .unwrap_or_else(|e| panic!("tests/{file}.rs: {e}"));
            assert!(
                source.contains(&format!("async fn {function}()"))
                    || source.contains(&format!("fn {function}()")),
                "tests/{file}.rs has no test {function} (listed for row {cell:?})"
            );
        }
    }
}

/// Propose `marker` and wait until every node applied it: whatever was proposed before it and
/// is not applied by then never will be at that position.
async fn applied_everywhere(cluster: &TestCluster, marker: &str) {
    let leader = cluster.wait_for_leader().await;
    cluster.propose(leader, marker).await;
    eventually(
        Duration::from_secs(20),
        &format!("{marker} everywhere"),
        || {
            cluster
                .nodes
                .keys()
                .all(|&id| cluster.times_applied(id, marker) == 1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_leader_answer_means_the_entry_is_not_in_the_log() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    match cluster
        .node(follower)
        .propose_local(b"refused".to_vec())
        .await
    {
        Err(Error::NotLeader { leader_id, .. }) => assert_eq!(leader_id, Some(leader)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    applied_everywhere(&cluster, "marker").await;
    for &id in cluster.nodes.keys() {
        assert_eq!(
            cluster.times_applied(id, "refused"),
            0,
            "node {id} applied it"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_can_still_apply_later() {
    let mut cluster = TestCluster::start_with(3, |c| {
        c.propose_timeout = Duration::from_secs(1);
        // The leader keeps leading alone, so its entry waits for followers to come back.
        c.raft.check_quorum = false;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers_of(leader);
    for &f in &followers {
        cluster.stop_node(f).await;
    }
    let err = cluster
        .node(leader)
        .propose(b"late".to_vec())
        .await
        .expect_err("no quorum to commit it");
    assert!(
        err.outcome_unknown(),
        "a write's timeout is unknown: {err:?}"
    );
    for &f in &followers {
        cluster.start_node(f).await;
    }
    // "Maybe committed": here it was in the leader's log and commits once followers return.
    eventually(
        Duration::from_secs(20),
        "the timed-out write applied",
        || {
            cluster
                .nodes
                .keys()
                .all(|&id| cluster.times_applied(id, "late") == 1)
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_error_means_the_entry_applied_on_every_node() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    applied_everywhere(&cluster, "before").await;
    let calls = |id: u64| {
        cluster.nodes[&id]
            .fsm
            .apply_calls
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before: Vec<u64> = cluster.nodes.keys().map(|&id| calls(id)).collect();
    match cluster.node(leader).propose(b"refuse:no".to_vec()).await {
        Err(Error::StateMachine(msg)) => assert!(msg.contains("no"), "{msg}"),
        other => panic!("expected StateMachine, got {other:?}"),
    }
    // Committed: every node's `apply` saw it (and refused it the same way).
    applied_everywhere(&cluster, "after").await;
    for (i, &id) in cluster.nodes.keys().enumerate() {
        assert_eq!(
            calls(id),
            before[i] + 2,
            "node {id}: the refused entry and the marker"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_to_a_node_that_stopped_is_refused_and_never_applied() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let stopped = cluster.follower_of(leader);
    let handle = cluster.node(stopped).clone();
    cluster.stop_node(stopped).await;
    match handle.propose(b"too late".to_vec()).await {
        Err(Error::ShuttingDown) => {}
        other => panic!("expected ShuttingDown, got {other:?}"),
    }
    cluster.start_node(stopped).await;
    applied_everywhere(&cluster, "marker").await;
    for &id in cluster.nodes.keys() {
        assert_eq!(
            cluster.times_applied(id, "too late"),
            0,
            "node {id} applied it"
        );
    }
    cluster.shutdown().await;
}
