//! The memstore example's HTTP API over a real 3-node cluster: routes, status codes, no hangs.

#[path = "../examples/memstore/http1.rs"]
mod http1;
#[path = "../examples/memstore/store.rs"]
mod store;
mod support;
#[path = "../examples/memstore/web.rs"]
mod web;
#[path = "../examples/memstore/write_route.rs"]
mod write_route;

use std::time::Duration;

use pontoon::Raft;
use store::HashStore;
use support::{free_addrs, test_config, test_logger};

/// Parse Prometheus text exposition strictly enough to catch malformed output, and return the
/// value of `name` (summed over label sets).
fn metric_value(text: &str, name: &str) -> f64 {
    let mut total = None;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).expect("TYPE has a kind");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let value: f64 = value.parse().expect("a numeric sample value");
        let metric = series.split('{').next().expect("metric name");
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {metric:?}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "unterminated labels in {series:?}");
        }
        if metric == name {
            *total.get_or_insert(0.0) += value;
        }
    }
    total.unwrap_or_else(|| panic!("metric {name} missing"))
}

struct HttpNode {
    raft: Raft<HashStore>,
    url: String,
}

/// An HTTP client whose every request gives up after `timeout`, so no test hangs on a node.
/// The `pontoon-outcome` header of an answer.
fn outcome(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get(web::OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client")
}

async fn start_cluster(dir: &std::path::Path) -> Vec<HttpNode> {
    start_cluster_with(dir, |_| {}).await
}

/// `start_cluster` with a config change applied to every node.
async fn start_cluster_with(
    dir: &std::path::Path,
    tweak: fn(&mut pontoon::Config),
) -> Vec<HttpNode> {
    let addrs = free_addrs(3);
    let peers: pontoon::Peers = (1..=3).zip(addrs).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let store = HashStore::default();
        let mut config = test_config(dir, id, &peers, "memstore-test");
        tweak(&mut config);
        let raft = Raft::bootstrap(id, peers[&id].clone(), store.clone(), config, test_logger())
            .await
            .expect("bootstrap");
        tokio::spawn(raft.clone().run());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // The server memstore runs: its HTTP/1 loop, with the write route's shortcut.
        let app = web::Routes::new(web::AppState {
            raft: raft.clone(),
            store,
        });
        tokio::spawn(http1::serve(
            listener,
            app,
            std::future::pending(),
            test_logger(),
        ));
        nodes.push(HttpNode { raft, url });
    }
    nodes[0]
        .raft
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    nodes
}

/// The fault routes exist only with the fault-injection feature (the README's test command
/// enables it).
#[cfg(feature = "fault-injection")]
async fn check_fault_routes(http: &reqwest::Client, url: &str) {
    let cut = http
        .post(format!("{url}/fault/partition/2,3"))
        .send()
        .await
        .expect("fault");
    assert_eq!(cut.status(), 200);
    let healed = http
        .post(format!("{url}/fault/heal"))
        .send()
        .await
        .expect("heal");
    assert_eq!(healed.status(), 200);
    let bad = http
        .post(format!("{url}/fault/drop/7"))
        .send()
        .await
        .expect("drop");
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_routes_answer_with_values_and_clear_status_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let http = http_client(Duration::from_secs(15));
    let leader = nodes[0].raft.get_leader_id();
    let follower = nodes
        .iter()
        .find(|n| n.raft.id() != leader)
        .expect("a follower");

    // A write through a follower is forwarded, committed, applied, and answers with the value.
    let put = http
        .put(format!("{}/store/greeting/hello", follower.url))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    assert_eq!(put.text().await.expect("body"), "hello");
    // Numeric keys work too.
    let put = http
        .put(format!("{}/store/42/answer", nodes[0].url))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);

    for node in &nodes {
        support::eventually(
            Duration::from_secs(10),
            "every node serves the value",
            || node.raft.status().applied >= 3,
        )
        .await;
        let got = http
            .get(format!("{}/store/greeting", node.url))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 200);
        assert_eq!(got.text().await.expect("body"), "hello");
        let got = http
            .get(format!("{}/store/42", node.url))
            .send()
            .await
            .expect("get");
        assert_eq!(got.text().await.expect("body"), "answer");
    }

    let metrics = |url: String| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .expect("metrics");
            assert_eq!(response.status(), 200);
            response.text().await.expect("body")
        }
    };
    let before = metrics(nodes[0].url.clone()).await;
    let commits_before = metric_value(&before, "pontoon_committed_entries_total");
    metric_value(&before, "pontoon_fsyncs_total");
    metric_value(&before, "pontoon_term");
    for i in 0..5 {
        let put = http
            .put(format!("{}/store/m{i}/v", nodes[0].url))
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200);
    }
    // The counter moves when node 1 applies an entry. When node 1 is a follower, its writes
    // were forwarded and answered once the leader applied them, so it may still be applying.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = metrics(nodes[0].url.clone()).await;
        let commits = metric_value(&after, "pontoon_committed_entries_total");
        if commits >= commits_before + 5.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "commit counter grows with writes: {commits_before} before, {commits} after"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stale = http
        .get(format!("{}/store/greeting?consistency=stale", nodes[2].url))
        .send()
        .await
        .expect("stale get");
    assert_eq!(stale.text().await.expect("body"), "hello");

    let missing = http
        .get(format!("{}/store/nope", nodes[1].url))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    // The write route's shortcut decodes percent-escapes as the router does, and leaves every
    // path it does not take to the router, which answers as before.
    let put = http
        .put(format!(
            "{}/store/caf%C3%A9%20au%20lait/%E2%9C%93",
            nodes[0].url
        ))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    assert_eq!(put.text().await.expect("body"), "\u{2713}");
    let got = http
        .get(format!("{}/store/caf%C3%A9%20au%20lait", nodes[0].url))
        .send()
        .await
        .expect("get");
    assert_eq!(got.text().await.expect("body"), "\u{2713}");
    let extra_segment = http
        .put(format!("{}/store/a/b/c", nodes[0].url))
        .send()
        .await
        .expect("put");
    assert_eq!(extra_segment.status(), 404, "no route has three segments");
    let not_utf8 = http
        .put(format!("{}/store/k%FF/v", nodes[0].url))
        .send()
        .await
        .expect("put");
    assert_eq!(not_utf8.status(), 400, "a key that is not UTF-8 is refused");

    let big = "v".repeat(web::MAX_VALUE_BYTES + 1);
    let too_big = http
        .put(format!("{}/store/k/{big}", nodes[0].url))
        .send()
        .await
        .expect("put");
    assert_eq!(too_big.status(), 400);

    let leader_json: serde_json::Value = serde_json::from_str(
        &http
            .get(format!("{}/leader", follower.url))
            .send()
            .await
            .expect("leader")
            .text()
            .await
            .expect("body"),
    )
    .expect("leader json");
    assert_eq!(leader_json["leader_id"], leader);

    let peers: serde_json::Value = serde_json::from_str(
        &http
            .get(format!("{}/peers", nodes[2].url))
            .send()
            .await
            .expect("peers")
            .text()
            .await
            .expect("body"),
    )
    .expect("peers json");
    let members = peers.as_array().expect("a list of members");
    assert_eq!(members.len(), 3);
    assert!(members
        .iter()
        .all(|m| m["role"] == "voter" && m["addr"].is_string()));

    let debug: pontoon::NodeStatus = serde_json::from_str(
        &http
            .get(format!("{}/debug", nodes[0].url))
            .send()
            .await
            .expect("debug")
            .text()
            .await
            .expect("body"),
    )
    .expect("debug json is a NodeStatus");
    assert_eq!(debug.id, 1);
    assert_eq!(debug.peers.len(), 3);
    assert!(debug.applied_index >= 3);

    let bad_id = http
        .post(format!("{}/transfer_leader/abc", nodes[0].url))
        .send()
        .await
        .expect("post");
    assert_eq!(bad_id.status(), 400);
    let unknown_id = http
        .post(format!(
            "{}/transfer_leader/99",
            nodes[(leader - 1) as usize].url
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(
        unknown_id.status(),
        404,
        "transfer to a node that is not a member"
    );
    let remove_unknown = http
        .post(format!("{}/members/99/remove", nodes[0].url))
        .send()
        .await
        .expect("post");
    assert_eq!(
        remove_unknown.status(),
        404,
        "removing a node that is not a member"
    );
    for refused in [&unknown_id, &remove_unknown] {
        assert_eq!(
            outcome(refused),
            Some("not-applied"),
            "nothing was proposed"
        );
    }
    let campaign_on_leader = http
        .post(format!("{}/campaign", nodes[(leader - 1) as usize].url))
        .send()
        .await
        .expect("post");
    assert_eq!(
        campaign_on_leader.status(),
        409,
        "the leader cannot campaign"
    );

    let snap = http
        .post(format!("{}/snapshot", nodes[1].url))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(snap.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&snap.text().await.expect("body")).expect("json");
    assert!(body["snapshot_index"].as_u64().expect("index") >= 3);

    #[cfg(feature = "fault-injection")]
    check_fault_routes(&http, &nodes[0].url).await;

    // Transfer leadership to a follower and see the cluster follow. raft-rs gives up a transfer
    // after an election timeout, and leadership can move on its own under a loaded machine, so
    // a 503 is retried against whoever leads now (bounded by a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(50);
    loop {
        let current = nodes[0].raft.get_leader_id();
        let Some(from) = nodes.iter().find(|n| n.raft.id() == current) else {
            assert!(
                std::time::Instant::now() < deadline,
                "no leader to transfer from"
            );
            tokio::time::sleep(backoff).await;
            continue;
        };
        let target = nodes
            .iter()
            .map(|n| n.raft.id())
            .find(|id| *id != current)
            .expect("a follower");
        let moved = http
            .post(format!("{}/transfer_leader/{target}", from.url))
            .send()
            .await
            .expect("transfer");
        let status = moved.status();
        let answer = moved.text().await.unwrap_or_default();
        if status == 503 && std::time::Instant::now() < deadline {
            eprintln!("leader transfer {current} -> {target} answered {answer:?}; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        assert_eq!(status, 200, "leader transfer answered {answer:?}");
        assert_eq!(from.raft.get_leader_id(), target);
        break;
    }

    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}

/// `POST /incr/{key}` on `url`: the status, the outcome header and the body.
async fn incr(http: &reqwest::Client, url: &str, key: &str) -> (u16, Option<String>, String) {
    let response = http
        .post(format!("{url}/incr/{key}"))
        .send()
        .await
        .expect("incr");
    let status = response.status().as_u16();
    let outcome = outcome(&response).map(str::to_string);
    (status, outcome, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_incr_counts_through_the_log_on_any_node_and_refuses_values_that_are_not_numbers()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let http = http_client(Duration::from_secs(15));
    let leader_id = nodes[0].raft.get_leader_id();
    let leader = nodes
        .iter()
        .find(|n| n.raft.id() == leader_id)
        .expect("the leader");
    let follower = nodes
        .iter()
        .find(|n| n.raft.id() != leader_id)
        .expect("a follower");

    // A missing key counts from zero; each increment answers the new value, and a read sees it.
    let first = incr(&http, &leader.url, "hits").await;
    assert_eq!((first.0, first.2.as_str()), (200, "1"));
    let second = incr(&http, &leader.url, "hits").await;
    assert_eq!((second.0, second.2.as_str()), (200, "2"));
    let got = http
        .get(format!("{}/store/hits", leader.url))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.expect("body"), "2");

    // Through a follower: forwarded to the leader, counted once, read back on the follower (a
    // linearizable read, so it sees the increment it answered).
    let third = incr(&http, &follower.url, "hits").await;
    assert_eq!((third.0, third.2.as_str()), (200, "3"));
    let got = http
        .get(format!("{}/store/hits", follower.url))
        .send()
        .await
        .expect("get");
    assert_eq!(got.text().await.expect("body"), "3");

    // A key holding text is no counter: refused with a one-line reason, nothing changed, and
    // the header says a retry cannot count twice.
    let put = http
        .put(format!("{}/store/name/alice", leader.url))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let (status, outcome, reason) = incr(&http, &follower.url, "name").await;
    assert_eq!(status, 409, "{reason:?}");
    assert_eq!(outcome.as_deref(), Some("not-applied"));
    assert_eq!(
        reason.trim().lines().count(),
        1,
        "one-line reason: {reason:?}"
    );
    assert!(reason.contains("not a counter"), "{reason:?}");
    // Every node applied the refused entry and kept the value.
    let last = leader.raft.status().applied;
    for node in &nodes {
        support::eventually(
            Duration::from_secs(10),
            "every node applies the refused increment",
            || node.raft.status().applied >= last,
        )
        .await;
        let got = http
            .get(format!("{}/store/name?consistency=stale", node.url))
            .send()
            .await
            .expect("get");
        assert_eq!(
            got.text().await.expect("body"),
            "alice",
            "node {}",
            node.raft.id()
        );
    }

    // A key over the limit is refused before anything is proposed.
    let long_key = "k".repeat(web::MAX_KEY_BYTES + 1);
    let (status, outcome, _) = incr(&http, &leader.url, &long_key).await;
    assert_eq!((status, outcome.as_deref()), (400, Some("not-applied")));

    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_write_without_quorum_answers_503_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    // Stop two of three nodes: no quorum.
    let survivor = &nodes[0];
    nodes[1].raft.quit().await.expect("quit");
    nodes[2].raft.quit().await.expect("quit");
    let http = http_client(Duration::from_secs(30));
    let put = http
        .put(format!("{}/store/k/v", survivor.url))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(put.status(), 503);
    // Without a quorum the write may sit uncommitted in a leader's log (`unknown`) or never have
    // been accepted (`not-applied`); the header says which, so a client knows if a retry is safe.
    let outcome = put
        .headers()
        .get("pontoon-outcome")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert!(
        matches!(outcome.as_deref(), Some("unknown") | Some("not-applied")),
        "outcome header: {outcome:?}"
    );
    let reason = put.text().await.expect("body");
    assert!(
        !reason.trim().is_empty() && reason.trim().lines().count() == 1,
        "one-line reason: {reason:?}"
    );
    survivor.raft.quit().await.expect("quit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_body_put_enforces_the_value_limit_with_413_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let http = http_client(Duration::from_secs(15));
    let url = &nodes[0].url;
    // A value of exactly the limit, as a body, is stored.
    let largest = "v".repeat(web::MAX_VALUE_BYTES);
    let put = http
        .put(format!("{url}/store/big"))
        .body(largest.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    // One byte more is refused before anything is proposed.
    let too_big = http
        .put(format!("{url}/store/big"))
        .body("w".repeat(web::MAX_VALUE_BYTES + 1))
        .send()
        .await
        .expect("put");
    assert_eq!(too_big.status(), 413);
    assert_eq!(
        outcome(&too_big),
        Some("not-applied"),
        "the router's own refusal"
    );
    // No key: no such route (not the "missing key" 404), marked as not applied.
    let no_key = http
        .put(format!("{url}/store/"))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(no_key.status(), 404);
    assert_eq!(outcome(&no_key), Some("not-applied"));
    assert!(no_key
        .text()
        .await
        .expect("body")
        .starts_with("no route PUT /store/"));
    // A key over the limit: 400, not applied.
    let long_key = http
        .put(format!(
            "{url}/store/{}/v",
            "k".repeat(web::MAX_KEY_BYTES + 1)
        ))
        .send()
        .await
        .expect("put");
    assert_eq!(long_key.status(), 400);
    assert_eq!(outcome(&long_key), Some("not-applied"));
    // Not UTF-8: 400, marked as not applied.
    let binary = http
        .put(format!("{url}/store/bin"))
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .expect("put");
    assert_eq!(binary.status(), 400);
    assert_eq!(
        binary
            .headers()
            .get("pontoon-outcome")
            .map(|v| v.as_bytes()),
        Some(&b"not-applied"[..])
    );
    let absent = http
        .get(format!("{url}/store/bin"))
        .send()
        .await
        .expect("get");
    assert_eq!(absent.status(), 404, "a refused write must not be applied");
    // The node keeps serving, and the stored value is the accepted one.
    let get = http
        .get(format!("{url}/store/big"))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 200);
    assert_eq!(get.text().await.expect("body"), largest);
    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_snapshot_streamed_to_disk_restores_every_key_after_restart() {
    // memstore freezes its map and pontoon's snapshot thread serialises it straight into the
    // snapshot file; a node restarted from that file must hold every key before replaying
    // anything.
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let http = http_client(Duration::from_secs(15));
    let value = |i: usize| format!("value-{i}-{}", "x".repeat(i % 300));
    for i in 0..200 {
        let put = http
            .put(format!("{}/store/key-{i}/{}", nodes[0].url, value(i)))
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200);
    }
    // A counter is a value like any other: it lives in the snapshot too.
    for expected in 1..=3 {
        let (status, _, body) = incr(&http, &nodes[0].url, "counter").await;
        assert_eq!((status, body), (200, expected.to_string()));
    }
    // Node 1 answered every write (forwarding when it is not the leader), but may still be
    // applying the last ones: take the snapshot once it has them all.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = http
            .get(format!("{}/store/counter?consistency=stale", nodes[0].url))
            .send()
            .await
            .expect("get");
        // The counter is the last write: at 3, node 1 has applied them all.
        if got.status() == 200 && got.text().await.expect("body") == "3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never applied the writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = http
        .post(format!("{}/snapshot", nodes[0].url))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(snap.status(), 200);
    let peers = nodes[0].raft.get_peers();
    nodes[0].raft.quit().await.expect("quit");

    let store = HashStore::default();
    let config = test_config(dir.path(), 1, &peers, "memstore-test");
    let restarted = Raft::bootstrap(1, peers[&1].clone(), store.clone(), config, test_logger())
        .await
        .expect("restart from the streamed snapshot");
    assert_eq!(store.get("counter").as_deref(), Some("3"), "the counter");
    for i in 0..200 {
        assert_eq!(
            store.get(&format!("key-{i}")),
            Some(value(i)),
            "key-{i} after restoring the snapshot"
        );
    }
    drop(restarted);
    for node in &nodes[1..] {
        node.raft.quit().await.expect("quit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_follower_behind_a_compacted_log_installs_the_snapshot_file_and_holds_every_key() {
    // The leader compacts its log past what a stopped follower holds, so the follower can only
    // catch up from a snapshot. It receives the snapshot into a file and memstore's
    // `restore_from` deserialises the map straight from that file.
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster_with(dir.path(), |c| c.compaction_margin = 5).await;
    let http = http_client(Duration::from_secs(15));
    let leader_id = nodes[0].raft.get_leader_id();
    let leader = nodes
        .iter()
        .find(|n| n.raft.id() == leader_id)
        .expect("the leader");
    let behind = nodes
        .iter()
        .find(|n| n.raft.id() != leader_id)
        .expect("a follower");
    let behind_id = behind.raft.id();
    let peers = behind.raft.get_peers();
    behind.raft.quit().await.expect("quit");

    let value = |i: usize| format!("v{i}-{}", "y".repeat(i % 200));
    for i in 0..300 {
        let put = http
            .put(format!("{}/store/k{i}/{}", leader.url, value(i)))
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200, "write {i}");
    }
    let snap = http
        .post(format!("{}/snapshot", leader.url))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(snap.status(), 200);

    let store = HashStore::default();
    let config = test_config(dir.path(), behind_id, &peers, "memstore-test");
    let restarted = Raft::bootstrap(
        behind_id,
        peers[&behind_id].clone(),
        store.clone(),
        config,
        test_logger(),
    )
    .await
    .expect("restart the follower");
    tokio::spawn(restarted.clone().run());
    support::eventually(
        Duration::from_secs(30),
        "the follower holds the last key",
        || store.get("k299").is_some(),
    )
    .await;
    let metrics = restarted.metrics_text();
    assert!(
        metric_value(&metrics, "pontoon_snapshot_chunks_received_total") >= 1.0,
        "the follower caught up from a streamed snapshot, not from the log"
    );
    for i in 0..300 {
        assert_eq!(store.get(&format!("k{i}")), Some(value(i)), "k{i}");
    }
    restarted.quit().await.expect("quit");
    for node in nodes.iter().filter(|n| n.raft.id() != behind_id) {
        node.raft.quit().await.expect("quit");
    }
}

/// What a client that sends an oversized request saw: the start of the answer it read, and
/// whether every byte of its request was sent without the connection failing.
struct OversizedOutcome {
    answer: String,
    sent_in_full: Result<(), std::io::Error>,
}

/// Send `head` and then `trailing` bytes of filler to `addr` in 64 KiB pieces, while reading
/// what the server answers. The client's send buffer is kept small, so the request cannot hide
/// in kernel buffers: unless the server reads it, the client's writes fail once the server
/// closes (a socket closed with unread input is reset by the kernel).
async fn send_oversized_request(addr: &str, head: Vec<u8>, trailing: usize) -> OversizedOutcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(32 * 1024).expect("send buffer");
    let stream = socket
        .connect(addr.parse().expect("an address"))
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        const PIECE: usize = 64 * 1024;
        let filler = vec![b'a'; PIECE];
        for piece in head.chunks(PIECE) {
            writer.write_all(piece).await?;
        }
        let mut sent = 0;
        while sent < trailing {
            let n = PIECE.min(trailing - sent);
            writer.write_all(&filler[..n]).await?;
            sent += n;
        }
        Ok(())
    });
    // Read until the server closes (or resets), keeping the first bytes: the status line and
    // headers are all this needs.
    let reading = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while answer.len() < 64 * 1024 {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        answer
    };
    // Guards against a hang, not timing assertions: both end long before.
    let answer = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the server answers and closes");
    let sent_in_full = tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .expect("the client's writes end")
        .expect("the sending task");
    OversizedOutcome {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        sent_in_full,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_refusals_of_oversized_requests_reach_a_client_that_is_still_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let addr = nodes[0].url.trim_start_matches("http://").to_string();
    const MIB: usize = 1024 * 1024;
    // Each request is well under the server's lingering bound (`http1::LINGER_MAX_BYTES`), so
    // the server reads all of it after answering.
    let cases: [(&str, Vec<u8>, usize, &str); 3] = [
        (
            // The request line alone outgrows hyper's read buffer (about 400 KiB): 431.
            "a 1 MiB URL",
            b"GET /store/".to_vec(),
            MIB,
            "HTTP/1.1 431 ",
        ),
        (
            // A URL hyper reads whole but refuses (over 64 KiB), then a body still coming: 414.
            "a 100 KiB URL with a 1 MiB body",
            format!(
                "PUT /store/{} HTTP/1.1\r\nhost: x\r\ncontent-length: {MIB}\r\n\r\n",
                "k".repeat(100 * 1024),
            )
            .into_bytes(),
            MIB,
            "HTTP/1.1 414 ",
        ),
        (
            // A body over the value limit, refused by the router from its length alone: 413.
            "a 1 MiB body",
            format!("PUT /store/big HTTP/1.1\r\nhost: x\r\ncontent-length: {MIB}\r\n\r\n")
                .into_bytes(),
            MIB,
            "HTTP/1.1 413 ",
        ),
    ];
    const _: () = assert!(MIB + 200 * 1024 < http1::LINGER_MAX_BYTES);
    let mut failures = Vec::new();
    for (what, head, trailing, status_line) in cases {
        let seen = send_oversized_request(&addr, head, trailing).await;
        if !seen.answer.starts_with(status_line) {
            let start: String = seen.answer.chars().take(80).collect();
            failures.push(format!("{what}: expected {status_line:?}, read {start:?}"));
        }
        // A client that sends its whole request before it reads (many do) sees the answer only
        // if its writes are not refused first.
        if let Err(e) = seen.sent_in_full {
            failures.push(format!("{what}: the rest of the request was refused: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The node keeps serving.
    let http = http_client(Duration::from_secs(15));
    let put = http
        .put(format!("{}/store/after/ok", nodes[0].url))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}

/// `POST /sessions` on `url`: the new session's id.
async fn open_session(http: &reqwest::Client, url: &str) -> u64 {
    let response = http
        .post(format!("{url}/sessions"))
        .send()
        .await
        .expect("open session");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key(web::WINDOW_HEADER),
        "the answer says the window"
    );
    let body = response.text().await.expect("body");
    body.trim().parse().expect("a decimal session id")
}

/// Send `request` with `headers` (name, value): the status, the outcome header and the body.
async fn send_with(
    request: reqwest::RequestBuilder,
    headers: &[(&str, String)],
) -> (u16, Option<String>, String) {
    let request = headers
        .iter()
        .fold(request, |r, (name, value)| r.header(*name, value));
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let outcome = outcome(&response).map(str::to_string);
    (status, outcome, response.text().await.expect("body"))
}

/// The headers of write `seq` of `session` (acked left to its default, seq - 1).
fn in_session(session: u64, seq: u64) -> Vec<(&'static str, String)> {
    vec![
        (web::SESSION_HEADER, session.to_string()),
        (web::SEQ_HEADER, seq.to_string()),
    ]
}

/// `key`'s value as node `url` holds it right now.
async fn stale_value(http: &reqwest::Client, url: &str, key: &str) -> Option<String> {
    let got = http
        .get(format!("{url}/store/{key}?consistency=stale"))
        .send()
        .await
        .expect("get");
    match got.status().as_u16() {
        200 => Some(got.text().await.expect("body")),
        404 => None,
        other => panic!("GET {key}: status {other}"),
    }
}

/// Wait until every node has applied what the leader had applied when called.
async fn every_node_caught_up(nodes: &[HttpNode]) {
    let leader = nodes[0].raft.get_leader_id();
    let target = nodes
        .iter()
        .find(|n| n.raft.id() == leader)
        .map_or(0, |n| n.raft.status().applied);
    for node in nodes {
        support::eventually(Duration::from_secs(10), "every node caught up", || {
            node.raft.status().applied >= target
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_a_session_write_retried_on_another_node_is_answered_as_before_and_applied_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let http = http_client(Duration::from_secs(15));
    let (a, b) = (&nodes[0].url, &nodes[1].url);
    let session = open_session(&http, &nodes[2].url).await;

    // Increment 1 of the session on node a; a plain increment moves the counter after it.
    let first = send_with(http.post(format!("{a}/incr/hits")), &in_session(session, 1)).await;
    assert_eq!((first.0, first.2.as_str()), (200, "1"), "{first:?}");
    let plain = incr(&http, a, "hits").await;
    assert_eq!((plain.0, plain.2.as_str()), (200, "2"));
    // The retry (the client never saw the first answer) on node b: the same answer, from the
    // session table, and the counter does not move.
    let retry = send_with(http.post(format!("{b}/incr/hits")), &in_session(session, 1)).await;
    assert_eq!(
        retry, first,
        "the retry answers exactly as the first attempt"
    );
    let got = http
        .get(format!("{b}/store/hits"))
        .send()
        .await
        .expect("get");
    assert_eq!(got.text().await.expect("body"), "2", "counted once");

    // A refusal is an answer too: an increment of a value that is no counter, retried after the
    // value became one, is answered with the same 409 and counts nothing.
    let put = http
        .put(format!("{a}/store/name/alice"))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let refused = send_with(http.post(format!("{a}/incr/name")), &in_session(session, 2)).await;
    assert_eq!(refused.0, 409, "{refused:?}");
    let put = http
        .put(format!("{a}/store/name/7"))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let retry = send_with(http.post(format!("{b}/incr/name")), &in_session(session, 2)).await;
    assert_eq!(retry, refused);

    // The PUT routes, the path form (which has a shortcut) and the body form: a retry of an
    // old number answers the old value and does not overwrite what was written since.
    let put = send_with(
        http.put(format!("{a}/store/color/red")),
        &in_session(session, 3),
    )
    .await;
    assert_eq!((put.0, put.2.as_str()), (200, "red"));
    let later = http
        .put(format!("{a}/store/color/blue"))
        .send()
        .await
        .expect("put");
    assert_eq!(later.status(), 200);
    let retry = send_with(
        http.put(format!("{b}/store/color/red")),
        &in_session(session, 3),
    )
    .await;
    assert_eq!(retry, put);
    let body = send_with(
        http.put(format!("{a}/store/shape")).body("round"),
        &in_session(session, 4),
    )
    .await;
    assert_eq!((body.0, body.2.as_str()), (200, "round"));
    let later = http
        .put(format!("{a}/store/shape/square"))
        .send()
        .await
        .expect("put");
    assert_eq!(later.status(), 200);
    let retry = send_with(
        http.put(format!("{b}/store/shape")).body("round"),
        &in_session(session, 4),
    )
    .await;
    assert_eq!(retry, body);

    every_node_caught_up(&nodes).await;
    for node in &nodes {
        let url = &node.url;
        assert_eq!(stale_value(&http, url, "hits").await.as_deref(), Some("2"));
        assert_eq!(stale_value(&http, url, "name").await.as_deref(), Some("7"));
        assert_eq!(
            stale_value(&http, url, "color").await.as_deref(),
            Some("blue")
        );
        assert_eq!(
            stale_value(&http, url, "shape").await.as_deref(),
            Some("square")
        );
    }
    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_a_write_of_an_expired_session_answers_410_and_applies_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One session kept: opening a second expires the first.
    let nodes = start_cluster_with(dir.path(), |c| c.max_sessions = 1).await;
    let http = http_client(Duration::from_secs(15));
    let url = &nodes[0].url;
    let old = open_session(&http, url).await;
    let first = send_with(http.post(format!("{url}/incr/hits")), &in_session(old, 1)).await;
    assert_eq!((first.0, first.2.as_str()), (200, "1"));
    let new = open_session(&http, &nodes[1].url).await;
    assert_ne!(old, new);

    // Every write route of the expired session: 410, marked as having applied nothing, with a
    // one-line reason, and indeed nothing changed.
    let writes = [
        http.post(format!("{url}/incr/hits")),
        http.put(format!("{url}/store/k/v")),
        http.put(format!("{url}/store/k")).body("v"),
    ];
    for (i, request) in writes.into_iter().enumerate() {
        let (status, outcome, reason) = send_with(request, &in_session(old, 2 + i as u64)).await;
        assert_eq!(status, 410, "{reason}");
        assert_eq!(outcome.as_deref(), Some("not-applied"));
        assert_eq!(reason.trim().lines().count(), 1, "{reason:?}");
        assert!(reason.contains("session"), "{reason:?}");
    }
    // The new session works.
    let counted = send_with(http.post(format!("{url}/incr/hits")), &in_session(new, 1)).await;
    assert_eq!((counted.0, counted.2.as_str()), (200, "2"));
    every_node_caught_up(&nodes).await;
    for node in &nodes {
        assert_eq!(
            stale_value(&http, &node.url, "hits").await.as_deref(),
            Some("2")
        );
        assert_eq!(stale_value(&http, &node.url, "k").await, None);
    }
    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_bad_session_headers_answer_400_and_propose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let http = http_client(Duration::from_secs(15));
    let url = &nodes[0].url;
    let session = open_session(&http, url).await;
    let applied_before = nodes[0].raft.status().applied;
    let s = session.to_string();
    let h = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
    };
    let bad = [
        h(&[(web::SESSION_HEADER, "abc"), (web::SEQ_HEADER, "1")]),
        h(&[(web::SESSION_HEADER, &s), (web::SEQ_HEADER, "-1")]),
        h(&[(web::SESSION_HEADER, &s), (web::SEQ_HEADER, "0")]),
        h(&[(web::SESSION_HEADER, &s)]),
        h(&[(web::SEQ_HEADER, "1")]),
        h(&[(web::ACKED_HEADER, "1")]),
        h(&[
            (web::SESSION_HEADER, &s),
            (web::SEQ_HEADER, "2"),
            (web::ACKED_HEADER, "2"),
        ]),
        h(&[
            (web::SESSION_HEADER, &s),
            (web::SEQ_HEADER, "2"),
            (web::ACKED_HEADER, "x"),
        ]),
    ];
    for headers in &bad {
        let requests = [
            http.post(format!("{url}/incr/hits")),
            http.put(format!("{url}/store/k/v")),
            http.put(format!("{url}/store/k")).body("v"),
        ];
        for request in requests {
            let (status, outcome, reason) = send_with(request, headers).await;
            assert_eq!(status, 400, "{headers:?}: {reason}");
            assert_eq!(outcome.as_deref(), Some("not-applied"), "{headers:?}");
            assert_eq!(reason.trim().lines().count(), 1, "{reason:?}");
        }
    }
    // Nothing reached the log: no entry was applied anywhere since, and no key exists.
    assert_eq!(nodes[0].raft.status().applied, applied_before);
    assert_eq!(stale_value(&http, url, "hits").await, None);
    assert_eq!(stale_value(&http, url, "k").await, None);
    for node in &nodes {
        node.raft.quit().await.expect("quit");
    }
}
