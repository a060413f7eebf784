//! memstore: a replicated in-memory key-value store built on pontoon.
//!
//! One node:   cargo run --example memstore -- --id 1 --raft-addr 127.0.0.1:60061 \
//!               --web-server 127.0.0.1:8001 --data-dir ./data/node-1 \
//!               --initial-peers 1=127.0.0.1:60061,2=127.0.0.1:60062,3=127.0.0.1:60063
//! Whole local cluster in one process: cargo run --example memstore -- --local-cluster 3
//! Mutual TLS and a join token: add --tls-cert node.pem --tls-key node.key --tls-ca ca.pem
//!               --join-token SECRET (every node and every joiner needs them).

mod http1;
mod store;
mod web;
mod write_route;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pontoon::storage::LmdbStorage;
use pontoon::{Config, Raft};

use store::HashStore;

/// mimalloc instead of the system allocator: under load glibc's malloc spent about a fifth of the
/// HTTP threads' time on requests allocated on one thread and freed on another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "memstore", about = "A replicated key-value store on pontoon")]
struct Args {
    /// Node id (1 or above). Optional on restart: the data dir remembers it.
    #[arg(long)]
    id: Option<u64>,
    /// Address this node's raft gRPC server listens on and peers reach it at. Port 0 takes
    /// any free port (announced to the cluster as the one it got).
    #[arg(long, default_value = "127.0.0.1:60061")]
    raft_addr: String,
    /// Address peers reach this node at, when it is not --raft-addr (listening on 0.0.0.0,
    /// behind a port mapping).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8001")]
    web_server: String,
    /// Data directory (one LMDB environment per node). With --local-cluster, the parent of
    /// node-1, node-2, ...
    #[arg(long, default_value = "./memstore-data")]
    data_dir: PathBuf,
    /// Static cluster members, e.g. 1=127.0.0.1:60061,2=127.0.0.1:60062,3=127.0.0.1:60063.
    #[arg(long)]
    initial_peers: Option<String>,
    /// Join an existing cluster through this member (dynamic membership).
    #[arg(long)]
    peer_addr: Option<String>,
    /// Cluster name; nodes and data dirs of another cluster are refused.
    #[arg(long, default_value = "memstore")]
    cluster_id: String,
    /// Start N nodes in this process on 127.0.0.1 (raft 60061.., HTTP 8001..) and serve them all.
    #[arg(long)]
    local_cluster: Option<u64>,
    /// Take a snapshot and compact the log every this many applied entries.
    #[arg(long, default_value_t = Config::default().snapshot_threshold)]
    snapshot_threshold: u64,
    /// Also wait until the log since the last snapshot is this fraction of its size (0: by
    /// entry count alone).
    #[arg(long, default_value_t = Config::default().snapshot_log_ratio)]
    snapshot_log_ratio: f64,
    /// Entries kept behind a snapshot for slow followers.
    #[arg(long, default_value_t = Config::default().compaction_margin)]
    compaction_margin: u64,
    /// Print what the data dir DIR holds, with memstore's entries decoded, and exit
    /// (like `pontoon-cli debug persisted`, which shows them as raw text).
    #[arg(long, value_name = "DIR")]
    show_persisted: Option<PathBuf>,
    /// PEM certificate (chain) of this node, for mutual TLS on all gRPC traffic. Needs
    /// --tls-key and --tls-ca too.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM certificate(s) of the CA that signs every member's certificate.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Check every server certificate for this name instead of the host of the peer address.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Shared secret required to reserve an id or change membership (sent by joiners too).
    /// Without TLS it travels in clear.
    #[arg(long, value_name = "SECRET")]
    join_token: Option<String>,
    /// Worker threads of the runtime that serves HTTP, apart from the one that runs the raft
    /// nodes, so that many busy HTTP connections do not queue ahead of the nodes' run loops and
    /// gRPC tasks. 0 serves HTTP on the nodes' runtime.
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
    /// `Config::append_window`: while this many of the leader's entries are uncommitted, new
    /// writes wait and are appended together once the commit index moves. 0 never holds.
    #[arg(long, default_value_t = Config::default().append_window)]
    append_window: u64,
    /// `Config::max_sessions`: client sessions (`POST /sessions`) kept open; opening one more
    /// expires the least recently used, whose writes are then refused with 410.
    #[arg(long, default_value_t = Config::default().max_sessions)]
    max_sessions: u64,
}

/// TLS material and join token, read and checked once at startup.
#[derive(Clone, Default)]
struct Security {
    tls: Option<pontoon::TlsConfig>,
    join_token: Option<String>,
}

impl Security {
    fn from_args(args: &Args) -> Result<Self, Box<dyn std::error::Error>> {
        let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
            (None, None, None) => {
                if args.tls_server_name.is_some() {
                    return Err("--tls-server-name needs --tls-cert, --tls-key and --tls-ca".into());
                }
                None
            }
            (Some(cert), Some(key), Some(ca)) => {
                let tls = pontoon::TlsConfig::from_pem_files(cert, key, ca)?;
                Some(match &args.tls_server_name {
                    Some(name) => tls.with_server_name(name.clone())?,
                    None => tls,
                })
            }
            _ => {
                return Err("--tls-cert, --tls-key and --tls-ca go together: give all three".into())
            }
        };
        Ok(Security {
            tls,
            join_token: args.join_token.clone(),
        })
    }

    fn apply(&self, config: Config) -> Config {
        Config {
            tls: self.tls.clone(),
            join_token: self.join_token.clone(),
            ..config
        }
    }
}

struct Spec {
    id: u64,
    raft_addr: String,
    web_addr: String,
    data_dir: PathBuf,
    initial_peers: Option<pontoon::Peers>,
}

/// One node of this process: its handle, the task running it and the task serving its HTTP.
struct Node {
    raft: Raft<HashStore>,
    /// Ends with the node: `Ok` once it quit or left, an error or a panic otherwise.
    run: tokio::task::JoinHandle<pontoon::Result<()>>,
    http: tokio::task::JoinHandle<()>,
}

async fn start_node(
    spec: Spec,
    args: &Args,
    security: &Security,
    logger: &pontoon::slog::Logger,
    http_runtime: &tokio::runtime::Handle,
) -> Result<Node, Box<dyn std::error::Error>> {
    let config = security.apply(Config {
        cluster_id: args.cluster_id.clone(),
        snapshot_threshold: args.snapshot_threshold,
        snapshot_log_ratio: args.snapshot_log_ratio,
        compaction_margin: args.compaction_margin,
        data_dir: spec.data_dir.clone(),
        initial_peers: spec.initial_peers,
        propose_timeout: Duration::from_secs(5),
        append_window: args.append_window,
        max_sessions: args.max_sessions,
        advertise_addr: args.advertise_addr.clone(),
        ..Default::default()
    });
    let store = HashStore::default();
    let raft = Raft::bootstrap(
        spec.id,
        spec.raft_addr.clone(),
        store.clone(),
        config,
        logger.clone(),
    )
    .await?;
    // pontoon::client's `read(key)` is answered from the map after a linearizable barrier.
    raft.set_query_handler(|store: &HashStore, key: &[u8]| {
        let key =
            std::str::from_utf8(key).map_err(|e| pontoon::Error::InvalidRequest(e.to_string()))?;
        Ok(store.get(key).unwrap_or_default().into_bytes())
    });
    // Bound here (so a taken port fails the start), registered with the HTTP runtime below.
    let listener = std::net::TcpListener::bind(&spec.web_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on HTTP address {}: {e}", spec.web_addr))?;
    let app = web::Routes::new(web::AppState {
        raft: raft.clone(),
        store,
    });
    let runner = raft.clone();
    let web_logger = logger.clone();
    let run = tokio::spawn(async move {
        let outcome = runner.run().await;
        if let Err(e) = &outcome {
            pontoon::slog::crit!(web_logger, "node stopped with an error"; "error" => %e);
        }
        outcome
    });
    let stopper = raft.clone();
    // The HTTP server drains in-flight requests (e.g. the answer to POST /leave) once the node
    // has stopped; main waits for it before exiting.
    let http_logger = logger.clone();
    let http = http_runtime.spawn(async move {
        let shutdown = async move { stopper.stopped().await };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                pontoon::slog::crit!(http_logger, "HTTP listener unusable"; "error" => %e);
                return;
            }
        };
        http1::serve(listener, app, shutdown, http_logger).await;
    });
    println!(
        "node {} up: raft {} | http http://{} (data {})",
        spec.id,
        raft.raft_addr(),
        spec.web_addr,
        spec.data_dir.display()
    );
    Ok(Node { raft, run, http })
}

fn main() {
    let args = Args::parse();
    let result = build_runtimes(args.http_threads).and_then(|(nodes_rt, http_rt)| {
        let http = http_rt
            .as_ref()
            .map_or_else(|| nodes_rt.handle().clone(), |rt| rt.handle().clone());
        let result = nodes_rt.block_on(real_main(args, http));
        // In-flight HTTP connections end with the process.
        if let Some(rt) = http_rt {
            rt.shutdown_background();
        }
        result
    });
    if let Err(e) = result {
        eprintln!("memstore: {e}");
        std::process::exit(1);
    }
}

/// A node resumed on its data dir that stopped half-way through a join: once the leader's
/// snapshot made it a member (a learner), promote it; if no leader adds it within 15 s, say what
/// to do. A voter has nothing to finish. Given `--peer-addr`, a member that does not list this
/// node says at once that the join never got as far as adding it.
async fn finish_interrupted_join(
    node: &Raft<HashStore>,
    peer_addr: Option<&str>,
    security: &Security,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut asked_peer = peer_addr.is_none();
    loop {
        let role = node.inspect().await.ok().and_then(|s| {
            s.peers
                .into_iter()
                .find(|p| p.id == node.id())
                .map(|p| p.role)
        });
        match role {
            Some(pontoon::PeerRole::Voter) => return,
            Some(_) => {
                println!("node {} is still a learner: finishing its join", node.id());
                match node.finish_join().await {
                    Ok(()) => println!("node {} joined and is a voter", node.id()),
                    Err(e) => eprintln!(
                        "node {} could not finish its join (it stays a learner): {e}",
                        node.id()
                    ),
                }
                return;
            }
            None if !asked_peer => {
                asked_peer = true;
                let Some(peer) = peer_addr else { continue };
                let options = pontoon::debug::RemoteOptions {
                    tls: security.tls.clone(),
                    join_token: security.join_token.clone(),
                };
                if let Ok((_, members, _)) = pontoon::debug::discover_with(peer, &options).await {
                    if !members.contains_key(&node.id()) {
                        eprintln!(
                            "node {} is not a member of the cluster at {peer}: its join stopped \
                             before the leader added it. Stop it, remove its data dir and join \
                             again with --peer-addr",
                            node.id()
                        );
                        return;
                    }
                }
            }
            None if tokio::time::Instant::now() >= deadline => {
                eprintln!(
                    "node {} is not a member of any cluster (its join did not finish, or it was removed). \
                     Stop it, remove its data dir and join again with --peer-addr; if a member \
                     still lists it (GET /peers), remove it there first (POST /members/{}/remove)",
                    node.id(),
                    node.id()
                );
                return;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The runtime of the raft nodes and, with `http_threads` above 0, a separate one for HTTP.
fn build_runtimes(
    http_threads: usize,
) -> Result<(tokio::runtime::Runtime, Option<tokio::runtime::Runtime>), Box<dyn std::error::Error>>
{
    let nodes = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let http = match http_threads {
        0 => None,
        n => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .thread_name("memstore-http")
                .enable_all()
                .build()?,
        ),
    };
    Ok((nodes, http))
}

async fn real_main(
    args: Args,
    http_runtime: tokio::runtime::Handle,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = &args.show_persisted {
        let formatter = |bytes: &[u8]| {
            use pontoon::AbstractLogEntry;
            store::LogEntry::decode(bytes).ok().map(|e| match e {
                store::LogEntry::Insert { key, value } => format!("insert {key} = {value}"),
                store::LogEntry::Incr { key } => format!("incr {key}"),
            })
        };
        let state = pontoon::debug::read_persisted(dir, None, None, Some(&formatter))?;
        let text = pontoon::debug::render_persisted(&state);
        // A reader that stops early (`| head`) is not an error.
        use std::io::Write;
        return match std::io::stdout().lock().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        };
    }
    let security = Security::from_args(&args)?;
    let logger = pontoon::default_logger();
    let mut join_ticket = None;
    // A member's data dir resumed: if the node stopped half-way through its join (a learner
    // not yet promoted), it finishes the join once it is up.
    let mut resumed_member = false;
    let specs = match args.local_cluster {
        Some(n) => {
            if n == 0 || n > 9 {
                return Err("--local-cluster takes 1 to 9 nodes".into());
            }
            if args.advertise_addr.is_some() {
                return Err("--advertise-addr is for one node; --local-cluster nodes listen and are reached on 127.0.0.1".into());
            }
            if args.data_dir.join("data.mdb").exists() {
                return Err(format!(
                    "{} is a single node's data dir; give --local-cluster a --data-dir of its own \
                     (it holds node-1, node-2, ...)",
                    args.data_dir.display()
                )
                .into());
            }
            let peers: pontoon::Peers = (1..=n)
                .map(|i| (i, format!("127.0.0.1:{}", 60060 + i)))
                .collect();
            (1..=n)
                .map(|i| Spec {
                    id: i,
                    raft_addr: peers[&i].clone(),
                    web_addr: format!("127.0.0.1:{}", 8000 + i),
                    data_dir: args.data_dir.join(format!("node-{i}")),
                    initial_peers: Some(peers.clone()),
                })
                .collect()
        }
        None => {
            if args.peer_addr.is_some() && args.initial_peers.is_some() {
                return Err(
                    "--peer-addr and --initial-peers exclude each other: a static member \
                            lists its peers, a joining node asks a member for a ticket"
                        .into(),
                );
            }
            if args.data_dir.join("node-1").join("data.mdb").exists() {
                return Err(format!(
                    "{} holds a --local-cluster's nodes (node-1, ...); give this node a --data-dir \
                     of its own, or run --local-cluster again to resume them",
                    args.data_dir.display()
                )
                .into());
            }
            let stored = LmdbStorage::peek_identity(&args.data_dir)?;
            let member = match &stored {
                Some(_) => {
                    use pontoon::storage::LogStore;
                    LmdbStorage::open_read_only(&args.data_dir)?.is_initialized()?
                }
                None => false,
            };
            // A data dir with an identity but no membership was left by a join that stopped
            // before the leader's snapshot arrived. It starts as a node waiting to be added
            // (never as a one-node cluster of its own, which would split the cluster it meant to
            // join), and finishes the join if the leader had added it.
            resumed_member = stored.is_some();
            if let Some(identity) = &stored {
                if member && (args.peer_addr.is_some() || args.initial_peers.is_some()) {
                    println!(
                        "data dir {} resumes node {}: --peer-addr / --initial-peers are ignored",
                        args.data_dir.display(),
                        identity.node_id
                    );
                }
            }
            // A fresh node given --peer-addr asks the cluster for an id (a join ticket); a restart
            // on an existing data dir resumes and ignores --peer-addr.
            let ticket = match (&args.peer_addr, &stored) {
                (Some(peer), None) => {
                    if args.id.is_some() {
                        return Err(
                            "--id cannot be combined with --peer-addr: the cluster reserves the id"
                                .into(),
                        );
                    }
                    // Check both addresses before an id is reserved: a join that fails after
                    // the ticket burns that id for good.
                    for (what, addr) in [("raft", &args.raft_addr), ("HTTP", &args.web_server)] {
                        std::net::TcpListener::bind(addr)
                            .map_err(|e| format!("cannot listen on {what} address {addr}: {e}"))?;
                    }
                    let config = security.apply(Config {
                        cluster_id: args.cluster_id.clone(),
                        ..Default::default()
                    });
                    let ticket = pontoon::cluster::request_id_with(
                        &config,
                        args.advertise_addr
                            .clone()
                            .unwrap_or(args.raft_addr.clone()),
                        peer.clone(),
                    )
                    .await?;
                    println!(
                        "joining cluster {:?} as node {} (ticket from {peer})",
                        ticket.cluster_id, ticket.reserved_id
                    );
                    Some(ticket)
                }
                _ => None,
            };
            join_ticket = ticket.clone();
            let id = match (args.id, &stored, &ticket) {
                (_, _, Some(t)) => t.reserved_id,
                (Some(id), _, _) => id,
                (None, Some(s), _) => s.node_id,
                (None, None, None) => 1,
            };
            let initial_peers = match args.initial_peers.as_deref() {
                Some(spec) => Some(pontoon::parse_peers(spec)?),
                // Neither a peer list nor a cluster to join, on a new data dir: a single-node
                // cluster of this node.
                None if ticket.is_none() && stored.is_none() => {
                    let own = args.advertise_addr.clone();
                    Some(pontoon::Peers::from([(
                        id,
                        own.unwrap_or(args.raft_addr.clone()),
                    )]))
                }
                None => None,
            };
            vec![Spec {
                id,
                raft_addr: args.raft_addr.clone(),
                web_addr: args.web_server.clone(),
                data_dir: args.data_dir.clone(),
                initial_peers,
            }]
        }
    };
    // Listen for Ctrl-C / SIGINT before anything starts: a signal that arrives while the nodes
    // start or wait for a leader is kept and honoured once they are up, instead of being lost
    // (a script's background job starts with SIGINT ignored until a handler is installed).
    let (interrupt_tx, mut interrupted) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(true);
        }
    });
    let first_web = specs[0].web_addr.clone();
    let mut nodes = Vec::new();
    let mut runs = Vec::new();
    let mut servers = Vec::new();
    for spec in specs {
        let node = start_node(spec, &args, &security, &logger, &http_runtime).await?;
        nodes.push(node.raft);
        runs.push(node.run);
        servers.push(node.http);
    }
    if let Some(ticket) = join_ticket {
        nodes[0].join_cluster(vec![ticket]).await?;
        println!("node {} joined and is a voter", nodes[0].id());
    } else if resumed_member {
        finish_interrupted_join(&nodes[0], args.peer_addr.as_deref(), &security).await;
    }
    tokio::select! {
        elected = nodes[0].wait_for_leader(Duration::from_secs(15)) => {
            match elected {
                Ok(leader) => {
                    println!("leader elected: node {leader}");
                    println!("try: curl -XPUT http://{first_web}/store/hello/world && curl http://{first_web}/store/hello");
                }
                // The node stopped (removed, or a fatal error): the next step says why.
                Err(_) if nodes[0].is_stopped() => {}
                Err(_) => println!(
                    "no leader after 15 s: a quorum of the members may be down, or this node is not \
                     a member (removed, or another cluster's peers); GET http://{first_web}/debug shows \
                     what it knows"
                ),
            }
            if !nodes[0].is_stopped() {
                println!("Ctrl-C to stop");
            }
        }
        _ = interrupted.wait_for(|stop| *stop) => {}
    }
    let all_stopped = {
        let nodes = nodes.clone();
        async move {
            for node in &nodes {
                node.stopped().await;
            }
        }
    };
    tokio::select! {
        _ = interrupted.wait_for(|stop| *stop) => {}
        _ = all_stopped => {
            // Say why: a node that left the cluster ends cleanly, one that hit a fatal error (or
            // a panic) makes the process fail.
            let mut failures = Vec::new();
            for (node, run) in nodes.iter().zip(runs) {
                match run.await {
                    Ok(Ok(())) => println!("node {} stopped (it left the cluster)", node.id()),
                    Ok(Err(e)) => failures.push(format!("node {} stopped with an error: {e}", node.id())),
                    Err(e) => failures.push(format!("node {} crashed: {e}", node.id())),
                }
            }
            for http in servers {
                let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
            }
            if failures.is_empty() {
                return Ok(());
            }
            return Err(failures.join("; ").into());
        }
    }
    println!("stopping...");
    // All at once: one by one, the last nodes would hold elections while the first stop.
    let quits: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move { (node.id(), node.quit().await) })
        })
        .collect();
    for quit in quits {
        match quit.await {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => eprintln!("node {id} did not stop cleanly: {e}"),
            Err(e) => eprintln!("a node's stop task failed: {e}"),
        }
    }
    println!("stopped");
    Ok(())
}
