//! Talking to pontoon nodes over gRPC from outside: `RaftServiceClient` for applications, and
//! `connect_lazy` for a raw gRPC client to one node (the channels live in `transport`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::node::{NodeStatus, SessionCommand};
use crate::session::{Session, SessionRoute};
use crate::tls::TlsConfig;
use crate::transport::pb;
pub use crate::transport::{connect_lazy, ClientPool};

/// A client for applications that talk to a pontoon cluster from outside: it finds the leader,
/// follows `NotLeader` answers, moves on from dead members with capped backoff, and bounds
/// every call by a deadline.
///
/// Proposal outcomes: `Ok` means committed and applied. `Timeout` / `OutcomeUnknown` mean the
/// entry may or may not be applied; a proposal is never re-sent after it may have reached a
/// leader, so a retry is the caller's decision. For commands that must apply exactly once
/// through retries, use a session (`RaftServiceClient::session`).
///
/// Clones share the connections and what the client learnt about the leader.
#[derive(Clone)]
pub struct RaftServiceClient {
    cluster_id: String,
    config: Config,
    deadline: Duration,
    max_attempts: usize,
    known: Arc<Mutex<Vec<String>>>,
    leader: Arc<Mutex<Option<String>>>,
    pool: ClientPool,
}

/// Options of a `RaftServiceClient` before it connects (see `RaftServiceClient::builder`).
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    addrs: Vec<String>,
    cluster_id: String,
    deadline: Duration,
    tls: Option<TlsConfig>,
}

impl ClientBuilder {
    /// The deadline of each call (default 10 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Talk to the cluster over mutual TLS: present this certificate, trust only this CA.
    /// Required when the nodes run with `Config::tls`.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Learn the members from the first address that answers. Fails with a clear error when
    /// none answers within the deadline.
    pub async fn connect(self) -> Result<RaftServiceClient> {
        if self.addrs.is_empty() {
            return Err(Error::InvalidRequest("no member addresses given".into()));
        }
        let config = Config {
            rpc_timeout: self.deadline.min(Duration::from_secs(2)),
            tls: self.tls,
            ..Config::default()
        };
        let client = RaftServiceClient {
            cluster_id: self.cluster_id,
            config,
            deadline: self.deadline,
            max_attempts: 64,
            known: Arc::new(Mutex::new(self.addrs)),
            leader: Arc::new(Mutex::new(None)),
            pool: ClientPool::default(),
        };
        client.get_peers().await?;
        Ok(client)
    }
}

enum Call {
    Propose(Vec<u8>),
    Read(Vec<u8>),
    OpenSession(u64),
    SessionCommand(SessionCommand, Vec<u8>),
}

impl Call {
    /// Whether the call may append to the log (so an unanswered one has an unknown outcome).
    fn writes(&self) -> bool {
        !matches!(self, Call::Read(_))
    }
}

const CLIENT_BACKOFF_START: Duration = Duration::from_millis(20);
const CLIENT_BACKOFF_CAP: Duration = Duration::from_millis(500);

impl RaftServiceClient {
    /// Connect to a cluster through any of `addrs` (raft addresses of members) and learn the
    /// other members from the first one that answers. Fails with a clear error when none
    /// answers within the deadline (10 s; see `with_deadline`).
    ///
    /// ```no_run
    /// # async fn demo() -> pontoon::Result<()> {
    /// use pontoon::client::RaftServiceClient;
    ///
    /// let addrs = vec!["10.0.0.1:60061".to_string(), "10.0.0.2:60061".to_string()];
    /// let client = RaftServiceClient::connect(addrs, "prod").await?;
    /// let answer = client.propose(b"set x 1".to_vec()).await?; // committed and applied
    /// let value = client.read(b"get x".to_vec()).await?; // the nodes' query handler answers
    /// # Ok(()) }
    /// ```
    pub async fn connect(addrs: Vec<String>, cluster_id: impl Into<String>) -> Result<Self> {
        Self::connect_with(addrs, cluster_id, Duration::from_secs(10)).await
    }

    /// `connect` with a per-call deadline.
    pub async fn connect_with(
        addrs: Vec<String>,
        cluster_id: impl Into<String>,
        deadline: Duration,
    ) -> Result<Self> {
        Self::builder(addrs, cluster_id)
            .deadline(deadline)
            .connect()
            .await
    }

    /// A client with more options (TLS, deadline); finish with `ClientBuilder::connect`.
    ///
    /// ```no_run
    /// # async fn demo() -> pontoon::Result<()> {
    /// let tls = pontoon::TlsConfig::from_pem_files("client.pem", "client.key", "ca.pem")?;
    /// let client = pontoon::client::RaftServiceClient::builder(vec!["10.0.0.1:60061".into()], "prod")
    ///     .tls(tls)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(addrs: Vec<String>, cluster_id: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addrs,
            cluster_id: cluster_id.into(),
            deadline: Duration::from_secs(10),
            tls: None,
        }
    }

    /// Change the per-call deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The members as the cluster reports them (also refreshes this client's address list).
    pub async fn get_peers(&self) -> Result<Peers> {
        let until = Instant::now() + self.deadline;
        let addrs = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut last_error = String::new();
        for addr in addrs.iter().cycle().take(addrs.len() * 3) {
            if Instant::now() >= until {
                break;
            }
            let mut grpc = self.pool.get(addr, &self.config)?;
            let request = pb::GetPeersRequest {
                cluster_id: self.cluster_id.clone(),
            };
            let timeout = self.config.rpc_timeout.min(until - Instant::now());
            match tokio::time::timeout(timeout, grpc.get_peers(request)).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let peers: Peers = reply.peers.into_iter().collect();
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    for a in peers.values() {
                        if !known.contains(a) {
                            known.push(a.clone());
                        }
                    }
                    if let Some(leader) = peers.get(&reply.leader_id) {
                        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(leader.clone());
                    }
                    return Ok(peers);
                }
                Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                    return Err(self.cluster_mismatch(&status))
                }
                Ok(Err(status)) => last_error = format!("{addr}: {}", status.message()),
                Err(_) => last_error = format!("{addr}: timed out"),
            }
        }
        Err(Error::Transport(format!(
            "no member reachable at {addrs:?} (last error: {last_error})"
        )))
    }

    /// The live status of the member at `addr`.
    pub async fn debug_node(&self, addr: &str) -> Result<NodeStatus> {
        let mut grpc = self.pool.get(addr, &self.config)?;
        let request = pb::DebugNodeRequest {
            cluster_id: self.cluster_id.clone(),
        };
        let reply = tokio::time::timeout(self.deadline, grpc.debug_node(request))
            .await
            .map_err(|_| Error::timeout(format!("status of {addr}")))?
            .map_err(|s| Error::Transport(format!("{addr}: {}", s.message())))?;
        Ok(serde_json::from_str(&reply.into_inner().json)?)
    }

    /// Propose an entry; returns what the state machine's `apply` returned.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        self.call(Call::Propose(data)).await
    }

    /// Open a client session on the cluster: commands sent through it (`Session::propose`)
    /// apply exactly once however often they are retried. Window: the leader's
    /// `Config::session_window`. Opening is always safe to retry.
    pub async fn session(&self) -> Result<Session> {
        Session::open(Box::new(self.clone()), 0).await
    }

    /// A linearizable read answered by the cluster's query handler (`Raft::set_query_handler`).
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        self.call(Call::Read(query))
            .await
            .map_err(|e| read_error("read", e))
    }

    /// A linearizable read answered by the member at `addr`, which need not be the leader: it
    /// waits until it has applied everything up to a read index the leader confirmed, then runs
    /// its query handler. For spreading reads over members, or reading near the caller. One
    /// attempt, no failover: an unreachable member is a `Transport` error.
    pub async fn read_from(&self, addr: &str, query: Vec<u8>) -> Result<Vec<u8>> {
        let mut grpc = self.pool.get(addr, &self.config)?;
        let request = pb::ReadRequest {
            cluster_id: self.cluster_id.clone(),
            query,
        };
        let reply = tokio::time::timeout(self.deadline, grpc.read(request))
            .await
            .map_err(|_| Error::timeout(format!("read from {addr}")))?
            .map_err(|status| match status.code() {
                tonic::Code::PermissionDenied => self.cluster_mismatch(&status),
                _ => Error::Transport(format!("{addr}: {}", status.message())),
            })?;
        crate::node::response_to_result(reply.into_inner())
            .map_err(|e| read_error(&format!("read from {addr}"), e))
    }

    /// A member's refusal of a request for another cluster, naming both clusters.
    fn cluster_mismatch(&self, status: &tonic::Status) -> Error {
        Error::ClusterMismatch {
            local: self.cluster_id.clone(),
            remote: crate::transport::wire::refusing_cluster(status),
        }
    }

    async fn call(&self, call: Call) -> Result<Vec<u8>> {
        let until = Instant::now() + self.deadline;
        let mut backoff = CLIENT_BACKOFF_START;
        let mut rotation = 0usize;
        let mut reached_any = false;
        for _ in 0..self.max_attempts {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let addr = match self
                .leader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                Some(a) => a,
                None => {
                    let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    rotation += 1;
                    known[rotation % known.len()].clone()
                }
            };
            let mut grpc = self.pool.get(&addr, &self.config)?;
            let remaining = until - now;
            let reply = match &call {
                Call::Propose(data) => {
                    let request = pb::ProposeRequest {
                        cluster_id: self.cluster_id.clone(),
                        data: data.clone(),
                        ..Default::default()
                    };
                    tokio::time::timeout(remaining, grpc.propose(request)).await
                }
                Call::Read(query) => {
                    let request = pb::ReadRequest {
                        cluster_id: self.cluster_id.clone(),
                        query: query.clone(),
                    };
                    tokio::time::timeout(remaining, grpc.read(request)).await
                }
                Call::OpenSession(window) => {
                    let request = pb::OpenSessionRequest {
                        cluster_id: self.cluster_id.clone(),
                        window: *window,
                    };
                    tokio::time::timeout(remaining, grpc.open_session(request)).await
                }
                Call::SessionCommand(header, data) => {
                    let request = pb::ProposeRequest {
                        cluster_id: self.cluster_id.clone(),
                        data: data.clone(),
                        session_id: header.session,
                        seq: header.seq,
                        acked: header.acked,
                    };
                    tokio::time::timeout(remaining, grpc.propose(request)).await
                }
            };
            let reply = match reply {
                Err(_) => {
                    return Err(if call.writes() {
                        Error::write_timeout("proposal through the client")
                    } else {
                        Error::timeout("read through the client")
                    })
                }
                Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                    return Err(self.cluster_mismatch(&status))
                }
                Ok(Err(status)) if crate::node::is_connect_error(&status) => {
                    // Never reached that member: safe to try another.
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tokio::time::sleep(
                        backoff.min(until.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    backoff = (backoff * 2).min(CLIENT_BACKOFF_CAP);
                    continue;
                }
                Ok(Err(status)) => {
                    return Err(if call.writes() {
                        Error::OutcomeUnknown(format!("{addr}: {}", status.message()))
                    } else {
                        Error::Transport(format!("{addr}: {}", status.message()))
                    })
                }
                Ok(Ok(reply)) => reply.into_inner(),
            };
            reached_any = true;
            match crate::node::response_to_result(reply) {
                Ok(bytes) => {
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                    return Ok(bytes);
                }
                Err(Error::NotLeader {
                    leader_addr: Some(leader),
                    ..
                }) if leader != addr => {
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    if !known.contains(&leader) {
                        known.push(leader.clone());
                    }
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(leader);
                }
                Err(e) if e.is_retryable() => {
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tokio::time::sleep(
                        backoff.min(until.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    backoff = (backoff * 2).min(CLIENT_BACKOFF_CAP);
                }
                Err(e) => return Err(e),
            }
        }
        if reached_any {
            Err(Error::NoLeader)
        } else {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Err(Error::Transport(format!(
                "no member reachable at {known:?} within {:?}",
                self.deadline
            )))
        }
    }
}

/// A read has no side effect: an "unknown outcome" from it is just a timeout of `what`.
fn read_error(what: &str, e: Error) -> Error {
    match e {
        Error::OutcomeUnknown(m) => Error::timeout(format!("{what}: {m}")),
        other => other,
    }
}

#[crate::async_trait]
impl SessionRoute for RaftServiceClient {
    async fn open(&self, window: u64) -> Result<(u64, u64)> {
        let answer = self.call(Call::OpenSession(window)).await?;
        crate::node::decode_opened(&answer)
    }

    async fn send(&self, header: SessionCommand, data: Vec<u8>) -> Result<Vec<u8>> {
        self.call(Call::SessionCommand(header, data)).await
    }

    fn retry_timeout(&self) -> Duration {
        self.config.session_retry_timeout
    }
}
