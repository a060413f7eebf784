//! The built `pontoon-cli` binary against a live 3-node cluster and a stopped node's data dir.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::Output;

use pontoon::debug::{MemberRow, PersistedState};
use pontoon::NodeStatus;
use support::TestCluster;

async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pontoon-cli"))
            .args(&args)
            .output()
            .expect("run pontoon-cli")
    })
    .await
    .expect("join")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "pontoon-cli failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_node_cluster_and_member_commands_against_a_live_cluster() {
    let mut cluster = TestCluster::start(3).await;
    for i in 0..3 {
        cluster.propose(1, &format!("w-{i}")).await;
    }
    cluster.wait_all_applied(3).await;
    let leader = cluster.wait_for_leader().await;
    let addr1 = cluster.peers[&1].clone();

    let human = stdout(&cli(&["debug", "node", &addr1]).await);
    assert!(human.starts_with("node 1 ("), "{human}");
    assert!(
        human.contains("term") && human.contains("applied"),
        "{human}"
    );
    assert!(human.contains("id  addr"), "peer table header: {human}");
    let status: NodeStatus =
        serde_json::from_str(&stdout(&cli(&["debug", "node", &addr1, "--json"]).await))
            .expect("json");
    assert_eq!(status.id, 1);
    assert_eq!(status.peers.len(), 3);
    assert!(status.applied_index >= 3);

    let table = stdout(&cli(&["debug", "cluster", &addr1]).await);
    assert_eq!(table.lines().count(), 4, "header + 3 members: {table}");
    assert!(table
        .lines()
        .next()
        .is_some_and(|h| h.starts_with("id  addr")));
    assert!(table.contains("leader"), "{table}");

    // One member down: marked unreachable, the rest still shown.
    let down = cluster.follower_of(leader);
    cluster.stop_node(down).await;
    let up = *cluster.nodes.keys().next().expect("running node");
    let rows: Vec<MemberRow> = serde_json::from_str(&stdout(
        &cli(&["debug", "cluster", &cluster.peers[&up], "--json"]).await,
    ))
    .expect("json");
    assert_eq!(rows.len(), 3);
    let missing = rows
        .iter()
        .find(|r| r.id == down)
        .expect("down member listed");
    assert!(missing.status.is_none() && missing.error.is_some());
    let table = stdout(&cli(&["member", "list", "--addr", &cluster.peers[&up]]).await);
    assert!(table.contains("UNREACHABLE"), "{table}");
    cluster.start_node(down).await;

    // Admin commands, sent through a follower (forwarded to the leader).
    let leader = cluster.wait_for_leader().await;
    let via = cluster.peers[&cluster.follower_of(leader)].clone();
    let target = cluster.follower_of(leader);
    let moved = stdout(
        &cli(&[
            "member",
            "transfer-leader",
            &target.to_string(),
            "--addr",
            &via,
        ])
        .await,
    );
    assert!(moved.contains(&format!("node {target}")), "{moved}");
    let snap = stdout(&cli(&["snapshot", "--addr", &via]).await);
    assert!(snap.starts_with("snapshot taken at index"), "{snap}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_persisted_reads_a_stopped_nodes_data_dir() {
    let mut cluster = TestCluster::start(3).await;
    for i in 0..5 {
        cluster.propose(1, &format!("w-{i}")).await;
    }
    cluster.wait_all_applied(5).await;
    cluster.stop_node(2).await;
    let dir = cluster.dir.path().join("node-2");
    let dir = dir.to_str().expect("utf8 path");

    let human = stdout(&cli(&["debug", "persisted", dir]).await);
    assert!(human.contains("node id:        2"), "{human}");
    assert!(human.contains("cluster id:     test-cluster"), "{human}");
    assert!(human.contains("voters=[1,2,3]"), "{human}");
    assert!(human.contains("index  term  type"), "{human}");
    assert!(human.contains("w-4"), "{human}");

    let state: PersistedState =
        serde_json::from_str(&stdout(&cli(&["debug", "persisted", dir, "--json"]).await))
            .expect("json");
    assert_eq!(state.node_id, 2);
    assert_eq!(state.peers.len(), 3);
    // The snapshot's size is its file's (read from the file system, not by reading the file).
    let snapshot = state.snapshot.as_ref().expect("the initial snapshot");
    let snapshot_file = std::fs::read_dir(cluster.dir.path().join("node-2").join("snapshots"))
        .expect("snapshots dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("a snapshot file");
    assert_eq!(
        snapshot.bytes as u64,
        std::fs::metadata(&snapshot_file).expect("stat").len()
    );
    let user: Vec<&str> = state
        .entries
        .iter()
        .filter(|e| e.kind == "user")
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(user, vec!["w-0", "w-1", "w-2", "w-3", "w-4"]);
    let first_user = state
        .entries
        .iter()
        .find(|e| e.kind == "user")
        .expect("user entry")
        .index;
    let one: PersistedState = serde_json::from_str(&stdout(
        &cli(&[
            "debug",
            "persisted",
            dir,
            "--json",
            "--from",
            &first_user.to_string(),
            "--to",
            &first_user.to_string(),
        ])
        .await,
    ))
    .expect("json");
    assert_eq!(one.entries.len(), 1);
    assert_eq!(one.entries[0].data, "w-0");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_persisted_refuses_what_is_not_a_data_dir_with_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not lmdb").expect("write");
    let fake = tmp.path().join("fake");
    std::fs::create_dir(&fake).expect("mkdir");
    std::fs::write(fake.join("data.mdb"), b"not an lmdb file either").expect("write");
    let missing = tmp.path().join("missing");
    for path in [&missing, &empty, &file, &fake] {
        let out = cli(&["debug", "persisted", path.to_str().expect("utf8")]).await;
        assert!(!out.status.success(), "{path:?} accepted");
        let err = String::from_utf8(out.stderr).expect("utf8");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(err.contains("is not a pontoon data dir"), "{err}");
    }
    assert!(!missing.exists(), "nothing was created");
    assert_eq!(
        std::fs::read_dir(&empty).expect("read").count(),
        0,
        "nothing was written"
    );
}

#[tokio::test]
async fn an_address_without_a_port_is_refused_before_dialling_with_a_hint() {
    for bad in ["127.0.0.1", "60091", "nonsense", ":60061"] {
        let out = cli(&["debug", "node", bad]).await;
        assert!(!out.status.success(), "{bad}: accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("HOST:PORT"), "{bad}: {err}");
    }
}
