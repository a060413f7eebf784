//! Mutual TLS and the join token, black-box over real loopback gRPC.
//!
//! A throwaway CA and node certificates (SANs `localhost` and `127.0.0.1`) are generated when the
//! tests start; a second, unrelated CA plays the stranger.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use pontoon::client::RaftServiceClient;
use pontoon::cluster::request_id_with;
use pontoon::raft::eraftpb::{ConfChangeType, ConfChangeV2, Message, MessageType};
use pontoon::transport::pb;
use pontoon::{Config, Error, Raft, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::{eventually, free_addrs, test_logger, AppliedLog, TestCluster, TestNode};

const TOKEN: &str = "correct horse battery staple";

/// PEM text of one certificate authority and what it signed.
struct Authority {
    ca_pem: String,
    /// (certificate, key) of each leaf, by name.
    leaves: Vec<(&'static str, String, String)>,
}

impl Authority {
    fn new(name: &str, leaves: &[&'static str]) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(params, ca_key);
        let leaves = leaves
            .iter()
            .map(|leaf| {
                let key = KeyPair::generate().expect("leaf key");
                let mut params =
                    CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                        .expect("leaf params");
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, leaf.to_string());
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                let cert = params.signed_by(&key, &issuer).expect("leaf cert");
                (*leaf, cert.pem(), key.serialize_pem())
            })
            .collect();
        Authority {
            ca_pem: ca_cert.pem(),
            leaves,
        }
    }

    fn leaf(&self, name: &str) -> (&str, &str) {
        let (_, cert, key) = self
            .leaves
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("known leaf");
        (cert, key)
    }

    /// TLS material of leaf `name`, trusting `trust`'s CA.
    fn tls(&self, name: &str, trust: &Authority) -> TlsConfig {
        let (cert, key) = self.leaf(name);
        TlsConfig::from_pem(cert, key, trust.ca_pem.as_str()).expect("valid test PEM")
    }
}

struct Pki {
    cluster: Authority,
    stranger: Authority,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki {
        cluster: Authority::new("cluster", &["member", "joiner", "client"]),
        stranger: Authority::new("stranger", &["rogue"]),
    })
}

fn member_tls() -> TlsConfig {
    pki().cluster.tls("member", &pki().cluster)
}

fn with_tls(config: &mut Config) {
    config.tls = Some(member_tls());
}

fn with_token(config: &mut Config) {
    config.join_token = Some(TOKEN.to_string());
}

/// A config for calls from outside the cluster (same cluster id and timeouts as the members).
fn outsider(cluster: &TestCluster, tls: Option<TlsConfig>, token: Option<&str>) -> Config {
    let mut config = cluster.config(1);
    config.initial_peers = None;
    config.tls = tls;
    config.join_token = token.map(str::to_string);
    config
}

/// The members as the leader's applied configuration lists them.
async fn member_ids(cluster: &TestCluster) -> Vec<u64> {
    let leader = cluster.wait_for_leader().await;
    let status = cluster.node(leader).inspect().await.expect("inspect");
    status.peers.iter().map(|p| p.id).collect()
}

/// Reserve an id with `config` (asking member `ask`), start the new node with the same config and
/// join it as a voter.
async fn join_with(cluster: &mut TestCluster, ask: u64, mut config: Config) -> u64 {
    let addr = free_addrs(1).remove(0);
    let ticket = request_id_with(&config, addr.clone(), cluster.peers[&ask].clone())
        .await
        .expect("request_id");
    let id = ticket.reserved_id;
    cluster.peers.insert(id, addr.clone());
    config.data_dir = cluster.dir.path().join(format!("node-{id}"));
    let fsm = AppliedLog::default();
    let raft = Raft::bootstrap(id, addr, fsm.clone(), config, test_logger())
        .await
        .expect("bootstrap joiner");
    let task = tokio::spawn(raft.clone().run());
    raft.join_cluster(vec![ticket]).await.expect("join");
    cluster.nodes.insert(id, TestNode { raft, fsm, task });
    id
}

/// A raft message a stranger would like node `to` to take: a vote request at a far higher term.
fn forged_vote(to: u64) -> pb::MessageBatch {
    use protobuf::Message as _;
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgRequestVote);
    msg.from = 77;
    msg.to = to;
    msg.term = 1_000;
    pb::MessageBatch {
        cluster_id: "test-cluster".into(),
        from: 77,
        messages: vec![msg.write_to_bytes().expect("encode")],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_elects_commits_and_admits_a_tls_joiner() {
    let mut cluster = TestCluster::start_with(3, with_tls).await;
    cluster.propose(1, "one").await;
    cluster.propose(2, "two").await;
    cluster.wait_all_applied(2).await;

    // The joiner has its own certificate from the same CA, loaded from PEM files.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki().cluster.leaf("joiner");
    let paths = ["joiner.pem", "joiner.key", "ca.pem"].map(|n| dir.path().join(n));
    std::fs::write(&paths[0], cert).expect("write cert");
    std::fs::write(&paths[1], key).expect("write key");
    std::fs::write(&paths[2], &pki().cluster.ca_pem).expect("write CA");
    let tls = TlsConfig::from_pem_files(&paths[0], &paths[1], &paths[2]).expect("load PEM files");
    let leader = cluster.wait_for_leader().await;
    let ask = cluster.follower_of(leader);
    let config = outsider(&cluster, Some(tls), None);
    let id = join_with(&mut cluster, ask, config).await;
    assert_eq!(id, 4);
    cluster.propose(id, "three").await;
    let log = cluster.wait_all_applied(3).await;
    assert_eq!(log, vec!["one", "two", "three"]);
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3, 4]);

    // Applications connect with a certificate of the same CA...
    let addrs: Vec<String> = cluster.peers.values().cloned().collect();
    let client = RaftServiceClient::builder(addrs.clone(), cluster.cluster_id.clone())
        .tls(pki().cluster.tls("client", &pki().cluster))
        .deadline(Duration::from_secs(10))
        .connect()
        .await
        .expect("TLS client connects");
    let answer = client.propose(b"four".to_vec()).await.expect("propose");
    assert_eq!(answer, b"4:four");
    // ...and check the servers' name: an override that is not in the certificates fails, one
    // that is (localhost) works.
    let wrong_name = pki()
        .cluster
        .tls("client", &pki().cluster)
        .with_server_name("not-the-cluster.example")
        .expect("valid name");
    let refused = RaftServiceClient::builder(addrs.clone(), cluster.cluster_id.clone())
        .tls(wrong_name)
        .deadline(Duration::from_secs(2))
        .connect()
        .await;
    assert!(
        matches!(refused, Err(Error::Transport(_))),
        "wrong server name accepted"
    );
    let by_name = pki()
        .cluster
        .tls("client", &pki().cluster)
        .with_server_name("localhost")
        .expect("valid name");
    RaftServiceClient::builder(addrs.clone(), cluster.cluster_id.clone())
        .tls(by_name)
        .connect()
        .await
        .expect("server name override that the certificates carry");
    // A plaintext client gets nowhere.
    let plain =
        RaftServiceClient::connect_with(addrs, cluster.cluster_id.clone(), Duration::from_secs(2))
            .await;
    assert!(
        matches!(plain, Err(Error::Transport(_))),
        "plaintext client accepted"
    );
    cluster.wait_all_applied(4).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_node_cannot_deliver_messages_or_join_a_tls_cluster() {
    let cluster = TestCluster::start_with(3, with_tls).await;
    let leader = cluster.wait_for_leader().await;
    let term = cluster.node(leader).status().term;
    let plain = outsider(&cluster, None, None);

    // Raw raft traffic without TLS is refused at the connection, on every member.
    for (&id, addr) in &cluster.peers {
        let mut client = pontoon::client::connect_lazy(addr, &plain).expect("client");
        let sent = client.send_messages(forged_vote(id)).await;
        assert!(sent.is_err(), "node {id} took a plaintext message");
    }
    // So is a plaintext id request, from any member.
    for addr in cluster.peers.values() {
        let asked = request_id_with(&plain, "127.0.0.1:1".into(), addr.clone()).await;
        assert!(
            matches!(asked, Err(Error::Transport(_))),
            "plaintext id request: {asked:?}"
        );
    }
    // A whole plaintext node that claims membership gets nowhere either: it campaigns alone.
    let stray_addr = free_addrs(1).remove(0);
    let mut book = cluster.peers.clone();
    book.insert(4, stray_addr.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let stray_config = Config {
        data_dir: dir.path().join("stray"),
        initial_peers: Some(book),
        ..plain.clone()
    };
    let stray = Raft::bootstrap(
        4,
        stray_addr,
        AppliedLog::default(),
        stray_config,
        test_logger(),
    )
    .await
    .expect("bootstrap stray");
    let stray_task = tokio::spawn(stray.clone().run());
    stray.campaign().await.expect("campaign");
    stray.campaign().await.expect("campaign again");

    // Nothing changed: same leader and term, same members, and writes still commit.
    assert_eq!(cluster.wait_for_leader().await, leader);
    assert_eq!(cluster.node(leader).status().term, term);
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3]);
    cluster.propose(leader, "still fine").await;
    cluster.wait_all_applied(1).await;
    assert!(!stray.is_leader() && stray.get_leader_id() == 0);
    // The failed requests reserved nothing: the next id is still 4.
    let ticket = request_id_with(
        &outsider(&cluster, Some(member_tls()), None),
        "127.0.0.1:1".into(),
        cluster.peers[&leader].clone(),
    )
    .await
    .expect("request_id over TLS");
    assert_eq!(ticket.reserved_id, 4);
    stray.quit().await.expect("quit stray");
    stray_task.await.expect("join").expect("stray ran");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let cluster = TestCluster::start_with(3, with_tls).await;
    let leader = cluster.wait_for_leader().await;
    let term = cluster.node(leader).status().term;
    // A stranger entirely of its own CA, and one that trusts the cluster's CA but still presents
    // a certificate the cluster's CA did not sign (the server must check client certificates).
    let strangers = [
        pki().stranger.tls("rogue", &pki().stranger),
        pki().stranger.tls("rogue", &pki().cluster),
    ];
    for tls in strangers {
        let config = outsider(&cluster, Some(tls), None);
        for (&id, addr) in &cluster.peers {
            let mut client = pontoon::client::connect_lazy(addr, &config).expect("client");
            let sent = client.send_messages(forged_vote(id)).await;
            assert!(
                sent.is_err(),
                "node {id} took a message from a foreign certificate"
            );
            let asked = request_id_with(&config, "127.0.0.1:1".into(), addr.clone()).await;
            assert!(
                matches!(asked, Err(Error::Transport(_))),
                "foreign certificate got an id: {asked:?}"
            );
        }
    }
    assert_eq!(cluster.wait_for_leader().await, leader);
    assert_eq!(cluster.node(leader).status().term, term);
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3]);
    let ticket = request_id_with(
        &outsider(&cluster, Some(member_tls()), None),
        "127.0.0.1:1".into(),
        cluster.peers[&leader].clone(),
    )
    .await
    .expect("request_id with the cluster's CA");
    assert_eq!(ticket.reserved_id, 4, "refused requests reserved nothing");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_guards_request_id() {
    let mut cluster = TestCluster::start_with(3, with_token).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    for ask in [leader, follower] {
        for token in [None, Some("wrong token"), Some("")] {
            let config = outsider(&cluster, None, token);
            let asked =
                request_id_with(&config, "127.0.0.1:1".into(), cluster.peers[&ask].clone()).await;
            assert!(
                matches!(asked, Err(Error::Unauthorized(_))),
                "token {token:?} at node {ask}: {asked:?}"
            );
        }
    }
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3]);
    // The right token, through a follower (which forwards it to the leader): the first id after
    // the members, so the refused requests reserved none.
    let config = outsider(&cluster, None, Some(TOKEN));
    let id = join_with(&mut cluster, follower, config).await;
    assert_eq!(id, 4);
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3, 4]);
    cluster.propose(id, "joined").await;
    cluster.wait_all_applied(1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_config_without_the_token_is_refused() {
    use protobuf::Message as _;
    let cluster = TestCluster::start_with(3, with_token).await;
    let leader = cluster.wait_for_leader().await;
    let mut cc = ConfChangeV2::default();
    let mut single = pontoon::raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 9;
    cc.mut_changes().push(single);
    let conf_change = cc.write_to_bytes().expect("encode");
    let mut client =
        pontoon::client::connect_lazy(&cluster.peers[&leader], &outsider(&cluster, None, None))
            .expect("client");
    for token in ["", "wrong token"] {
        let refused = client
            .change_config(pb::ChangeConfigRequest {
                cluster_id: cluster.cluster_id.clone(),
                conf_change: conf_change.clone(),
                addrs: [(9, "127.0.0.1:1".to_string())].into(),
                join_token: token.to_string(),
            })
            .await
            .expect_err("ChangeConfig without the token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    }
    // The admin tool's removal is refused the same way, as a typed error.
    let removed = pontoon::debug::remove_member(&cluster.peers[&leader], 3).await;
    assert!(
        matches!(removed, Err(Error::Unauthorized(_))),
        "{removed:?}"
    );
    assert_eq!(member_ids(&cluster).await, vec![1, 2, 3]);
    // Nothing was proposed: every node still agrees and writes commit.
    cluster.propose(leader, "after").await;
    let log = cluster.wait_all_applied(1).await;
    assert_eq!(log, vec!["after"]);
    eventually(
        Duration::from_secs(5),
        "members unchanged on every node",
        || {
            cluster
                .nodes
                .values()
                .all(|n| n.raft.get_peers().len() == 3)
        },
    )
    .await;
    cluster.shutdown().await;
}

/// An address update redirects a member's traffic, so it needs the join token like a join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_update_without_the_token_is_refused() {
    let cluster = TestCluster::start_with(3, with_token).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let before = cluster.node(leader).get_peers();
    let mut client =
        pontoon::client::connect_lazy(&cluster.peers[&leader], &outsider(&cluster, None, None))
            .expect("client");
    for token in ["", "wrong token"] {
        let refused = client
            .update_address(pb::UpdateAddressRequest {
                cluster_id: cluster.cluster_id.clone(),
                node_id: follower,
                raft_addr: "127.0.0.1:1".to_string(),
                join_token: token.to_string(),
            })
            .await
            .expect_err("UpdateAddress without the token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    }
    let refused =
        pontoon::debug::update_member_address(&cluster.peers[&leader], follower, "127.0.0.1:1")
            .await;
    assert!(
        matches!(refused, Err(Error::Unauthorized(_))),
        "{refused:?}"
    );
    // Nothing was proposed: the follower is still reached where it was and applies writes.
    cluster.propose(leader, "after").await;
    assert_eq!(cluster.wait_all_applied(1).await, vec!["after"]);
    for (id, node) in &cluster.nodes {
        assert_eq!(
            node.raft.get_peers(),
            before,
            "node {id}'s address book changed"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_of_another_certificate_fails_bootstrap_with_a_typed_error() {
    let (cert, _) = pki().cluster.leaf("member");
    let (_, other_key) = pki().cluster.leaf("joiner");
    let tls = TlsConfig::from_pem(cert, other_key, pki().cluster.ca_pem.as_str())
        .expect("well-formed PEM loads");
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addrs(1).remove(0);
    let config = Config {
        data_dir: dir.path().join("node"),
        initial_peers: Some([(1, addr.clone())].into()),
        tls: Some(tls),
        ..Config::default()
    };
    match Raft::bootstrap(1, addr, AppliedLog::default(), config, test_logger()).await {
        Err(Error::Tls(pontoon::TlsError::Setup(msg))) => {
            assert!(msg.contains("server TLS"), "{msg}")
        }
        Err(other) => panic!("expected a TLS setup error, got {other}"),
        Ok(_) => panic!("a key that is not the certificate's was accepted"),
    }
}
