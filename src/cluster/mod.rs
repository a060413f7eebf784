//! Cluster membership and the `Raft` entry point: bootstrap a node, run it, stop it.

mod join;

pub use crate::node::AddressBook;
pub use join::{request_id_with, JoinTicket};
pub(crate) use join::{reserved_id_from, ticket_from};

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{ConfState, Snapshot};
use raft::RawNode;
use slog::Logger;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::node::{
    RaftNode, ReadBatcher, Role, RunLoop, SessionTable, Shared, SoftStatus, Waiters, Writer,
};
use crate::rpc::RaftGrpcService;
use crate::state_machine::{AbstractStateMachine, SnapshotSource};
use crate::storage::{LmdbStorage, LogStore, SnapshotEnvelope, StagedLog, StorageOptions};
use crate::transport::ClientPool;
use crate::transport::{FaultInjector, GrpcTransport, Transport};

use crate::node::INITIAL_INDEX;
/// Term of the snapshot a new static cluster starts from.
const INITIAL_TERM: u64 = 1;

/// How long a stopping node waits for in-flight RPCs before closing its server anyway.
const SERVER_DRAIN: Duration = Duration::from_secs(2);

struct Parts<F: AbstractStateMachine> {
    run_loop: RunLoop<LmdbStorage, F>,
    listener: TcpListener,
    /// The gRPC server, TLS already configured (so bad TLS material fails `bootstrap`).
    server: tonic::transport::Server,
    service: RaftGrpcService,
    stopped_tx: watch::Sender<bool>,
    started_tx: watch::Sender<bool>,
    /// The address the members knew this node by, when it now has another (see
    /// `node::relocation`).
    moved_from: Option<String>,
}

/// A pontoon node: bootstrap it, spawn `run()`, use it through its `RaftNode` (`Deref`).
///
/// ```no_run
/// # use pontoon::{Raft, Config, AbstractStateMachine};
/// # async fn demo<F: AbstractStateMachine>(fsm: F) -> pontoon::Result<()> {
/// let raft = Raft::bootstrap(1, "127.0.0.1:60061", fsm, Config::default(), pontoon::default_logger()).await?;
/// tokio::spawn(raft.clone().run());
/// let response = raft.propose(b"command".to_vec()).await?;
/// # Ok(()) }
/// ```
pub struct Raft<F: AbstractStateMachine> {
    node: RaftNode,
    parts: Arc<Mutex<Option<Parts<F>>>>,
    local_addr: SocketAddr,
}

impl<F: AbstractStateMachine> Clone for Raft<F> {
    fn clone(&self) -> Self {
        Raft {
            node: self.node.clone(),
            parts: self.parts.clone(),
            local_addr: self.local_addr,
        }
    }
}

impl<F: AbstractStateMachine> Deref for Raft<F> {
    type Target = RaftNode;
    fn deref(&self) -> &RaftNode {
        &self.node
    }
}

impl<F: AbstractStateMachine> Raft<F> {
    /// Prepare node `node_id`, listening on `raft_addr`, with state machine `fsm`.
    ///
    /// - A brand-new data dir with `config.initial_peers` starts a static cluster of those peers
    ///   (a single-node cluster when the list holds only this node).
    /// - A brand-new data dir without it starts a node that is not a member yet: it waits to be
    ///   added by `join_cluster` with a ticket from `Raft::request_id`.
    /// - An existing data dir resumes: its log, hard state, members and latest snapshot are
    ///   loaded (the state machine is restored from the snapshot and the log after it is replayed
    ///   as raft commits it); `initial_peers` is ignored.
    ///
    /// Fails with a clear error when the address cannot be bound or the data dir belongs to
    /// another node or cluster. Nothing runs until `run()` is spawned.
    ///
    /// A one-node cluster in a temporary directory: bootstrap, run, propose, stop.
    ///
    /// ```
    /// use pontoon::{AbstractStateMachine, Config, Raft, Result};
    ///
    /// /// Counts the commands applied; `apply` answers the new count.
    /// #[derive(Clone, Default)]
    /// struct Counter(u64);
    ///
    /// #[pontoon::async_trait]
    /// impl AbstractStateMachine for Counter {
    ///     async fn apply(&mut self, _command: Vec<u8>) -> Result<Vec<u8>> {
    ///         self.0 += 1;
    ///         Ok(self.0.to_be_bytes().to_vec())
    ///     }
    ///     async fn snapshot(&self) -> Result<Vec<u8>> {
    ///         Ok(self.0.to_be_bytes().to_vec())
    ///     }
    ///     async fn restore(&mut self, snapshot: Vec<u8>) -> Result<()> {
    ///         let bytes = snapshot.try_into().map_err(|_| pontoon::Error::Encoding("not 8 bytes".into()))?;
    ///         self.0 = u64::from_be_bytes(bytes);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main] async fn main() -> Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let config = Config {
    ///     data_dir: dir.path().join("node-1"),
    ///     // A static cluster of one; port 0: the system picks a free port.
    ///     initial_peers: Some(pontoon::parse_peers("1=127.0.0.1:0")?),
    ///     ..Config::default()
    /// };
    /// let raft = Raft::bootstrap(1, "127.0.0.1:0", Counter::default(), config, pontoon::default_logger()).await?;
    /// let running = tokio::spawn(raft.clone().run());
    ///
    /// raft.wait_for_leader(std::time::Duration::from_secs(10)).await?;
    /// let answer = raft.propose(b"tick".to_vec()).await?;
    /// assert_eq!(answer, 1u64.to_be_bytes());
    ///
    /// raft.quit().await?;
    /// running.await.expect("run() panicked")?; // Ok: it stopped because it was asked to
    /// # Ok(()) }
    /// ```
    pub async fn bootstrap(
        node_id: u64,
        raft_addr: impl Into<String>,
        fsm: F,
        config: Config,
        logger: Logger,
    ) -> Result<Self> {
        config.validate(node_id)?;
        let logger = logger.new(slog::o!("node" => node_id));
        let listen = listen_addr(raft_addr.into(), node_id, &config, &logger).await?;
        let (listener, local_addr, raft_addr) = bind_listener(&listen, &config, &logger).await?;
        check_own_initial_address(node_id, &raft_addr, &config)?;
        let server = grpc_server(&config)?;
        let storage = StorageOptions::default();
        let prepared = prepare_node(node_id, raft_addr, fsm, config, logger, storage, |wiring| {
            let transport = GrpcTransport::new(
                wiring.node_id,
                &wiring.raft_addr,
                &wiring.config,
                wiring.feedback,
                wiring.metrics,
                wiring.faults,
                wiring.logger,
            );
            transport as Arc<dyn Transport>
        })
        .await?;
        let service = RaftGrpcService::new(prepared.node.clone());
        Ok(Raft {
            node: prepared.node,
            parts: Arc::new(Mutex::new(Some(Parts {
                run_loop: prepared.run_loop,
                listener,
                server,
                service,
                stopped_tx: prepared.stopped_tx,
                started_tx: prepared.started_tx,
                moved_from: prepared.moved_from,
            }))),
            local_addr,
        })
    }

    /// Run `f` on the state machine once this node has applied every write acknowledged before
    /// the call started (a ReadIndex barrier, shared with concurrent reads). Works on followers.
    /// `f` runs inside the run loop: keep it short.
    pub async fn linearizable_read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&F) -> R + Send + 'static,
    ) -> Result<R> {
        self.node.read_index().await?;
        self.node
            .query_erased(move |fsm| {
                fsm.downcast_ref::<F>()
                    .map(f)
                    .ok_or_else(|| Error::Other("state machine type mismatch".into()))
            })
            .await?
    }

    /// Serve the `Read` RPC (used by `pontoon::client::RaftServiceClient::read`): after a
    /// linearizable barrier, `handler(state_machine, query)` produces the answer.
    pub fn set_query_handler(
        &self,
        handler: impl Fn(&F, &[u8]) -> Result<Vec<u8>> + Send + Sync + 'static,
    ) {
        self.node
            .set_query_handler_erased(Arc::new(move |fsm, query| {
                let fsm = fsm
                    .downcast_ref::<F>()
                    .ok_or_else(|| Error::Other("state machine type mismatch".into()))?;
                handler(fsm, query)
            }));
    }

    /// The handle to this node.
    pub fn raft_node(&self) -> &RaftNode {
        &self.node
    }

    /// The address the gRPC server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve RPCs and drive the run loop until `quit()` (or a fatal error). Spawn it:
    /// `tokio::spawn(raft.clone().run())`. When it returns, storage is closed and the port freed.
    ///
    /// Returns `Ok` when the node stopped because it was asked to (`quit`, `leave`), and an
    /// error when it stopped on its own: `Error::Removed` once it learns a membership change
    /// removed it, `Error::LogLost`, a storage or state machine failure. Calling it a second
    /// time (on any clone) fails with `Error::AlreadyRunning`.
    ///
    /// ```no_run
    /// # use pontoon::{AbstractStateMachine, Error, Raft};
    /// # async fn demo<F: AbstractStateMachine>(raft: Raft<F>) -> pontoon::Result<()> {
    /// let running = tokio::spawn(raft.clone().run());
    /// // ... serve the application through `raft` ...
    /// raft.quit().await?;
    /// match running.await.expect("run() panicked") {
    ///     Ok(()) => {} // stopped because it was asked to
    ///     Err(Error::Removed { .. }) => {
    ///         // a membership change removed this node: its data dir is of no further use
    ///     }
    ///     Err(e) => return Err(e), // storage, state machine, lost log: see the message
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn run(self) -> Result<()> {
        let parts = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(Error::AlreadyRunning)?;
        let Parts {
            run_loop,
            listener,
            mut server,
            service,
            stopped_tx,
            started_tx,
            moved_from,
        } = parts;
        let _ = started_tx.send(true);
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut server = tokio::spawn(
            server
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                }),
        );
        let logger = run_loop.logger.clone();
        // Aborted when `run` returns or its future is dropped.
        let announcer = moved_from.map(|known| {
            AbortOnDrop(tokio::spawn(
                self.node
                    .clone()
                    .announce_new_address(known, logger.clone()),
            ))
        });
        // The loop owns the storage; when `run` returns, the loop and every storage handle are
        // dropped, which closes the LMDB environment.
        let outcome = run_loop.run().await;
        let _ = shutdown_tx.send(());
        drop(announcer);
        if tokio::time::timeout(SERVER_DRAIN, &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
        }
        slog::info!(logger, "node stopped");
        let _ = stopped_tx.send(true);
        outcome
    }
}

/// A node ready to run, with no server around it: what `Raft::bootstrap` serves over gRPC, and
/// what a simulation drives with its own transport.
pub(crate) struct PreparedNode<F: AbstractStateMachine> {
    pub(crate) node: RaftNode,
    pub(crate) run_loop: RunLoop<LmdbStorage, F>,
    /// Set when the node has fully stopped (see `RaftNode::stopped`).
    pub(crate) stopped_tx: watch::Sender<bool>,
    /// Set when the run loop took over the mailbox (see `RaftNode::send_until`).
    pub(crate) started_tx: watch::Sender<bool>,
    /// The address the members knew this node by, when it now has another.
    pub(crate) moved_from: Option<String>,
}

/// What a transport is built from (see `prepare_node`).
pub(crate) struct TransportWiring {
    pub(crate) node_id: u64,
    pub(crate) raft_addr: String,
    pub(crate) config: Config,
    /// Where the transport reports unreachable peers, snapshot transfers and refusals.
    pub(crate) feedback: crate::transport::PeerFeedback,
    pub(crate) metrics: Metrics,
    pub(crate) faults: Arc<FaultInjector>,
    pub(crate) logger: Logger,
}

/// The address to listen on: `raft_addr`, except that port 0 on a resumed data dir means the
/// port the members already know (they never learn a new one).
async fn listen_addr(
    raft_addr: String,
    node_id: u64,
    config: &Config,
    logger: &Logger,
) -> Result<String> {
    if crate::config::port_of(&raft_addr) != Some(0) || config.advertise_addr.is_some() {
        return Ok(raft_addr);
    }
    let dir = config.data_dir.clone();
    let known = crate::blocking::run_blocking(move || known_own_addr(&dir, node_id)).await?;
    let Some(known) = known else {
        return Ok(raft_addr);
    };
    slog::info!(logger, "port 0 on a resumed data dir: listening on the port the members know"; "addr" => &known);
    Ok(same_host_with_port(&raft_addr, &known).unwrap_or(raft_addr))
}

/// Bind the raft port; returns the listener, the bound address and the address peers reach
/// this node at.
async fn bind_listener(
    listen: &str,
    config: &Config,
    logger: &Logger,
) -> Result<(TcpListener, SocketAddr, String)> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on raft address {listen}: {e}"),
        ))
    })?;
    let local_addr = listener.local_addr()?;
    let raft_addr = advertised_addr(listen, local_addr, config.advertise_addr.as_deref())?;
    if local_addr.ip().is_unspecified() && config.advertise_addr.is_none() {
        slog::warn!(logger, "listening on every interface without advertise_addr: only this machine can reach the address peers are told"; "announced" => &raft_addr);
    }
    Ok((listener, local_addr, raft_addr))
}

/// A new static member's own entry in `initial_peers` is what every member will dial for good:
/// refuse to start when peers would reach it elsewhere.
fn check_own_initial_address(node_id: u64, raft_addr: &str, config: &Config) -> Result<()> {
    let Some(own) = config.initial_peers.as_ref().and_then(|p| p.get(&node_id)) else {
        return Ok(());
    };
    let new_dir = !config.data_dir.join("data.mdb").exists();
    if new_dir && own != raft_addr && crate::config::port_of(own) != Some(0) {
        return Err(Error::Config(format!(
            "initial_peers gives this node ({node_id}) the address {own}, but peers would \
             reach it at {raft_addr}: make the two the same, or set advertise_addr \
             (memstore: --advertise-addr) to {own} if that is how they reach it"
        )));
    }
    Ok(())
}

/// Open the data dir's storage (creating it for a new node) and drop snapshot files a previous
/// run received but never installed.
/// `storage` says where the WAL and the snapshot files go; the sizes the config sets win.
async fn open_storage(
    node_id: u64,
    config: &Config,
    storage: StorageOptions,
) -> Result<LmdbStorage> {
    let dir = config.data_dir.clone();
    let cluster = config.cluster_id.clone();
    let options = StorageOptions {
        initial_map_size: config.initial_map_size,
        entry_cache_bytes: config.entry_cache_bytes,
        ..storage
    };
    let store = crate::blocking::run_blocking(move || {
        LmdbStorage::open_with(dir, node_id, &cluster, options)
    })
    .await??;
    crate::rpc::remove_stale_snapshot_files(&config.data_dir);
    Ok(store)
}

/// Where a node starts from: what it has applied and the replicated framework state.
struct StartState {
    /// The data dir already held a node (it resumes).
    resumed: bool,
    applied: u64,
    max_node_id: u64,
    removed: Vec<u64>,
    peers: Peers,
    /// The client session table as of `applied` (see `node::session_table`).
    sessions: SessionTable,
}

/// Load where this node starts: a resumed data dir restores the state machine from its latest
/// snapshot; a new static member stores the initial snapshot; a node that is no member yet
/// starts empty, knowing only itself.
async fn initial_state<F: AbstractStateMachine>(
    node_id: u64,
    raft_addr: &str,
    store: &LmdbStorage,
    fsm: &mut F,
    config: &Config,
    logger: &Logger,
) -> Result<StartState> {
    let resumed = {
        let store = store.clone();
        crate::blocking::run_blocking(move || store.is_initialized()).await??
    };
    let mut start = StartState {
        resumed,
        applied: 0,
        max_node_id: 0,
        removed: Vec::new(),
        peers: Peers::new(),
        sessions: SessionTable::default(),
    };
    if resumed {
        start.peers = store.peers()?;
        if let Some((index, envelope)) = restore_latest_snapshot(store, fsm).await? {
            start.applied = index;
            start.max_node_id = envelope.max_node_id;
            start.removed = envelope.removed;
            start.sessions = SessionTable::decode(&envelope.sessions)?;
            // The snapshot's commit and the writer's commit of the book are separate: a crash
            // may keep a snapshot newer than the stored book. The log is replayed only after
            // the snapshot, so take the newer of the two.
            if index > store.peers_index() {
                start.peers = envelope.peers;
            }
            raise_commit_to(store, index, logger).await?;
        }
    } else if let Some(initial) = config.initial_peers.clone() {
        start.peers = store_initial_snapshot(node_id, raft_addr, initial, store, fsm).await?;
        start.max_node_id = start.peers.keys().copied().max().unwrap_or(node_id);
        start.applied = INITIAL_INDEX;
    } else {
        // Not a member of anything yet: wait for a leader to add this node
        // (`join_cluster`), which sends it a snapshot with the members and their addresses.
        start.peers = Peers::from([(node_id, raft_addr.to_string())]);
    }
    Ok(start)
}

/// A new static cluster starts from a snapshot at index 1 holding the initial members and the
/// state machine's initial state. Its log then starts at 2, so a node that joins later is
/// caught up by that (or a later) snapshot: the initial membership is never an entry it would
/// have to replay. Returns the members (this node's own port 0 replaced by `raft_addr`).
async fn store_initial_snapshot<F: AbstractStateMachine>(
    node_id: u64,
    raft_addr: &str,
    mut initial: Peers,
    store: &LmdbStorage,
    fsm: &mut F,
) -> Result<Peers> {
    // Its own entry with port 0 ("any free port"): the address it got.
    if let Some(own) = initial.get_mut(&node_id) {
        if crate::config::port_of(own) == Some(0) {
            *own = raft_addr.to_string();
        }
    }
    let max_node_id = initial.keys().copied().max().unwrap_or(node_id);
    let voters: Vec<u64> = initial.keys().copied().collect();
    let conf_state = ConfState::from((voters, vec![]));
    let envelope = SnapshotEnvelope {
        index: INITIAL_INDEX,
        term: INITIAL_TERM,
        peers: initial.clone(),
        max_node_id,
        user_data: fsm.snapshot().await?,
        ..Default::default()
    }
    .with_conf_state(&conf_state);
    let mut snapshot = Snapshot::default();
    snapshot.set_data(envelope.encode()?.into());
    let meta = snapshot.mut_metadata();
    meta.index = INITIAL_INDEX;
    meta.term = INITIAL_TERM;
    meta.set_conf_state(conf_state);
    let store = store.clone();
    let book = initial.clone();
    crate::blocking::run_blocking(move || {
        store.install_snapshot(snapshot.get_metadata(), snapshot.get_data(), &book)
    })
    .await??;
    Ok(initial)
}

/// The address the members know this node by, when it restarted on another one (`run` then
/// asks them to record the new one). Not when it listens on every interface, which no member
/// could dial.
fn moved_from(peers: &Peers, node_id: u64, raft_addr: &str, logger: &Logger) -> Option<String> {
    let known = peers.get(&node_id).filter(|stored| *stored != raft_addr)?;
    if crate::config::has_unspecified_host(raft_addr) {
        slog::warn!(logger, "this node listens on every interface at another address than the members know, and no member could dial it: set advertise_addr to the address they should use"; "given" => raft_addr, "known" => known);
        return None;
    }
    Some(known.clone())
}

/// Open the storage (the WAL and snapshot files on `storage.fs`), load the starting state and
/// build the run loop and its handle around the transport `make_transport` returns. Nothing
/// runs yet and nothing listens.
pub(crate) async fn prepare_node<F: AbstractStateMachine>(
    node_id: u64,
    raft_addr: String,
    mut fsm: F,
    config: Config,
    logger: Logger,
    storage: StorageOptions,
    make_transport: impl FnOnce(TransportWiring) -> Arc<dyn Transport>,
) -> Result<PreparedNode<F>> {
    let store = open_storage(node_id, &config, storage).await?;
    let start = initial_state(node_id, &raft_addr, &store, &mut fsm, &config, &logger).await?;
    let moved_from = moved_from(&start.peers, node_id, &raft_addr, &logger);
    slog::info!(logger, "node prepared"; "resumed" => start.resumed, "configured" => start.resumed || config.initial_peers.is_some(), "applied" => start.applied, "peers" => ?start.peers, "addr" => &raft_addr);
    let mut prepared = build_run_loop(
        node_id,
        raft_addr,
        fsm,
        store,
        start,
        config,
        logger,
        make_transport,
    )?;
    prepared.moved_from = moved_from;
    Ok(prepared)
}

/// Build raft (over the staged log), the mailbox, the status channels, the address book, the
/// transport, the run loop and the `RaftNode` handle.
#[allow(clippy::too_many_arguments)]
fn build_run_loop<F: AbstractStateMachine>(
    node_id: u64,
    raft_addr: String,
    fsm: F,
    store: LmdbStorage,
    start: StartState,
    config: Config,
    logger: Logger,
    make_transport: impl FnOnce(TransportWiring) -> Arc<dyn Transport>,
) -> Result<PreparedNode<F>> {
    let mut raft_config = config.raft.clone();
    raft_config.id = node_id;
    raft_config.applied = start.applied;
    let raft_logger = {
        use slog::Drain;
        let filtered = slog::LevelFilter::new(logger.clone(), config.raft_log_level);
        Logger::root(filtered.fuse(), slog::o!())
    };
    let raw = RawNode::new(&raft_config, StagedLog::new(store.clone()), &raft_logger)?;

    let (mailbox_tx, mailbox_rx) = mpsc::channel(config.mailbox_capacity);
    let replayed_until = raw.raft.raft_log.committed;
    let initial = SoftStatus {
        role: raw.raft.state.into(),
        term: raw.raft.term,
        leader_id: raw.raft.leader_id,
        commit: raw.raft.raft_log.committed,
        applied: start.applied,
    };
    let (status_tx, status_rx) = watch::channel(initial);
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let (started_tx, started_rx) = watch::channel(false);
    let book = AddressBook::new(start.peers.clone());
    book.extend_removed(&start.removed);
    let metrics = Metrics::new(node_id);
    let faults = Arc::new(FaultInjector::default());
    let transport = make_transport(TransportWiring {
        node_id,
        raft_addr: raft_addr.clone(),
        config: config.clone(),
        feedback: crate::node::peer_feedback(mailbox_tx.clone()),
        metrics: metrics.clone(),
        faults: faults.clone(),
        logger: logger.clone(),
    });
    transport.set_peers(&start.peers);

    let node = RaftNode {
        shared: Arc::new(Shared {
            id: node_id,
            addr: raft_addr,
            config: config.clone(),
            mailbox: mailbox_tx,
            status: status_rx,
            stopped: stopped_rx,
            started: started_rx,
            peers: book.clone(),
            clients: ClientPool::default(),
            query_handler: std::sync::RwLock::new(None),
            metrics: metrics.clone(),
            cut_snapshot_stream_after: std::sync::atomic::AtomicU64::new(0),
            faults,
        }),
    };
    let waiters = Waiters::new(node_id);
    // The ReadIndex rounds need a number of their own for this run too (see `node::reads`);
    // they share the proposals' rather than draw another, which would shift every later draw
    // and change what the simulation's recorded seeds replay.
    let reads = ReadBatcher::new(waiters.nonce());
    let run_loop = RunLoop {
        raw,
        writer: Writer::idle(),
        store,
        fsm,
        mailbox: mailbox_rx,
        transport,
        peers: book,
        config,
        status_tx,
        logger,
        waiters,
        applied: start.applied,
        replayed_until,
        commit_dirty: false,
        pending_conf: None,
        peers_dirty: false,
        leader_since: None,
        max_node_id: start.max_node_id,
        sessions: start.sessions,
        reads,
        metrics,
        snapshot_policy: Default::default(),
        snapshot_task: None,
        fatal: None,
        proposal_batch: Vec::new(),
        proposals_marked_held: 0,
        vote_withheld_warned_term: 0,
        leaving: false,
        left: false,
        removal: None,
    };
    Ok(PreparedNode {
        node,
        run_loop,
        stopped_tx,
        started_tx,
        moved_from: None,
    })
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The tonic server of a node: plaintext, or mutual TLS when `config.tls` is set (clients must
/// present a certificate signed by the configured CA).
fn grpc_server(config: &Config) -> Result<tonic::transport::Server> {
    let server = tonic::transport::Server::builder().tcp_nodelay(true);
    match &config.tls {
        None => Ok(server),
        Some(tls) => server.tls_config(tls.server_config()).map_err(|e| {
            Error::Tls(crate::tls::TlsError::Setup(format!(
                "server TLS: {}",
                crate::tls::error_chain(&e)
            )))
        }),
    }
}

/// A terminal logger at info level: what pontoon uses when the application has none.
pub fn default_logger() -> Logger {
    use slog::Drain;
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    let drain = slog::LevelFilter::new(drain, slog::Level::Info).fuse();
    Logger::root(drain, slog::o!())
}

impl Role {
    /// True for the leader.
    pub fn is_leader(self) -> bool {
        self == Role::Leader
    }
}

/// The commit index is not fsynced on its own (it rides on the next write) and snapshots are
/// stored in the background, so after a crash the stored snapshot can be ahead of the stored
/// commit index. Everything a snapshot covers was committed, so the stored commit is raised to
/// the snapshot's index before raft starts (raft-rs refuses an applied index above commit).
async fn raise_commit_to(store: &LmdbStorage, index: u64, logger: &slog::Logger) -> Result<()> {
    let mut hs = store.hard_state()?;
    if hs.commit >= index {
        return Ok(());
    }
    slog::info!(logger, "stored commit index behind the snapshot; raising it"; "commit" => hs.commit, "snapshot" => index);
    hs.commit = index;
    let store = store.clone();
    crate::blocking::run_blocking(move || {
        store.persist(crate::storage::PersistBatch {
            hard_state: Some(hs),
            ..Default::default()
        })
    })
    .await??;
    Ok(())
}

/// The address the members know this node by, as recorded in its data dir (None for a new or
/// unreadable dir: the open that follows says what is wrong with it).
fn known_own_addr(dir: &std::path::Path, node_id: u64) -> Option<String> {
    if !dir.join("data.mdb").exists() {
        return None;
    }
    let store = LmdbStorage::open_read_only(dir).ok()?;
    store.peers().ok()?.remove(&node_id)
}

/// `listen` (`HOST:0`) with the port of `known`.
fn same_host_with_port(listen: &str, known: &str) -> Option<String> {
    let (host, _) = listen.rsplit_once(':')?;
    let port = crate::config::port_of(known)?;
    Some(format!("{host}:{port}"))
}

/// The address this node announces to its peers: `advertise` when set, else the listen address
/// `listen`, with the port the system picked (`bound`) when it asked for port 0. Listening on
/// every interface with port 0 leaves nothing to announce: that is a configuration error.
fn advertised_addr(listen: &str, bound: SocketAddr, advertise: Option<&str>) -> Result<String> {
    if let Some(addr) = advertise {
        return Ok(addr.to_string());
    }
    match listen.rsplit_once(':') {
        Some((_, "0")) if bound.ip().is_unspecified() => Err(Error::Config(format!(
            "raft address {listen} listens on every interface with port 0, which peers cannot \
             reach: set advertise_addr (memstore: --advertise-addr) to the address they reach \
             this node at (it got port {})",
            bound.port()
        ))),
        Some((host, "0")) => Ok(format!("{host}:{}", bound.port())),
        _ => Ok(listen.to_string()),
    }
}

/// Restore `fsm` from the latest stored snapshot, if there is one. Returns the snapshot's index
/// and its envelope header (without user bytes).
///
/// The file is checked (checksum, header, metadata) on a storage thread, reading it in blocks;
/// the state machine then reads it through `restore_from`, so a restart does not hold the whole
/// snapshot in memory beside the state rebuilt from it.
async fn restore_latest_snapshot<S: LogStore, F: AbstractStateMachine>(
    store: &S,
    fsm: &mut F,
) -> Result<Option<(u64, SnapshotEnvelope)>> {
    let store = store.clone();
    let found = crate::blocking::run_blocking(move || -> Result<_> {
        if let Some((meta, path)) = store.latest_snapshot_file()? {
            let fs = store.file_system();
            let (header, source) = SnapshotEnvelope::open_checked(&*fs, &path, &meta)?;
            return Ok(Some((meta.index, header, source)));
        }
        let Some(snapshot) = store.latest_snapshot()? else {
            return Ok(None);
        };
        let meta = snapshot.get_metadata();
        let mut envelope = SnapshotEnvelope::decode(snapshot.get_data())?;
        envelope.check_matches(meta)?;
        let user_data = std::mem::take(&mut envelope.user_data);
        Ok(Some((
            meta.index,
            envelope,
            SnapshotSource::from_bytes(user_data),
        )))
    })
    .await??;
    let Some((index, envelope, mut source)) = found else {
        return Ok(None);
    };
    crate::node::restore_checked(fsm, &mut source).await?;
    Ok(Some((index, envelope)))
}

#[cfg(test)]
mod tests {
    use super::advertised_addr;

    #[test]
    fn a_node_announces_the_port_it_got_or_the_address_it_is_told_to() {
        let bound = "127.0.0.1:40123".parse().expect("addr");
        assert_eq!(
            advertised_addr("127.0.0.1:0", bound, None).expect("ok"),
            "127.0.0.1:40123"
        );
        assert_eq!(
            advertised_addr("localhost:0", bound, None).expect("ok"),
            "localhost:40123"
        );
        assert_eq!(
            advertised_addr("127.0.0.1:7000", bound, None).expect("ok"),
            "127.0.0.1:7000"
        );
        assert_eq!(
            advertised_addr("0.0.0.0:7000", bound, Some("db1:7000")).expect("ok"),
            "db1:7000"
        );
        let any = "0.0.0.0:40123".parse().expect("addr");
        let err = advertised_addr("0.0.0.0:0", any, None).expect_err("nothing to announce");
        assert!(err.to_string().contains("advertise_addr"), "{err}");
        assert!(err.to_string().contains("40123"), "{err}");
    }
}
