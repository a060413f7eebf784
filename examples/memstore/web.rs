//! The memstore HTTP API (raftify's routes). Every error is a status code with a one-line reason;
//! no request waits longer than the node's propose timeout.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::service::TowerToHyperService;
use pontoon::{AbstractLogEntry, Error, Raft, SessionCommand};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use crate::store::{HashStore, IncrReply, LogEntry};
use crate::write_route::put_path;

/// Longest value accepted by `PUT /store/{key}/{value}` and `PUT /store/{key}` (body). A larger
/// body is refused with 413 before it is read in full.
pub const MAX_VALUE_BYTES: usize = 4 * 1024;

/// Longest key accepted by the write routes: keys live in every node's map and every snapshot.
pub const MAX_KEY_BYTES: usize = 1024;

/// Response header on every error answer of a write: `not-applied` when the write definitely
/// changed nothing (it is not in the log, or the store refused it as it applied it, as with
/// `POST /incr` of a value that is not a counter), so a retry cannot apply it twice; `unknown`
/// when it may still be committed and applied later (a timeout, the node stopping, the leader
/// changing mid-flight). Clients that must not apply a write twice check this before retrying,
/// or send the write through a client session (`SESSION_HEADER`), where a retry with the same
/// number is always safe whatever this says.
pub const OUTCOME_HEADER: &str = "pontoon-outcome";

/// Request headers that send a write through a client session (see `session_header`): the
/// session's id, as `POST /sessions` answered it ...
pub const SESSION_HEADER: &str = "pontoon-session";
/// ... the write's number in that session, from 1 (a retry carries the same number) ...
pub const SEQ_HEADER: &str = "pontoon-seq";
/// ... and, optionally, the number up to which the client has every answer (default: seq - 1).
pub const ACKED_HEADER: &str = "pontoon-acked";

/// Response header of `POST /sessions`: how many unacknowledged numbers the session may use
/// (numbers beyond `acked` + this are refused with 400).
pub const WINDOW_HEADER: &str = "pontoon-session-window";

#[derive(Clone)]
pub struct AppState {
    pub raft: Raft<HashStore>,
    pub store: HashStore,
}

/// memstore's HTTP service: `PUT /store/{key}/{value}`, the route every write benchmark drives,
/// is answered directly; every other request goes through the axum router.
///
/// Why the shortcut: routing and extracting through axum cost about as much CPU per request as
/// the rest of the HTTP handling on a two-core machine under wrk. The shortcut answers exactly
/// as the router's `put_value` would: it takes only paths with two non-empty segments after
/// `/store/` that percent-decode to UTF-8, and leaves anything else (including what the router
/// would refuse) to the router. A PUT that carries any session header goes to the router too:
/// the shortcut proposes without a session, which would apply a retried write twice.
#[derive(Clone)]
pub struct Routes {
    state: AppState,
    router: TowerToHyperService<Router>,
}

impl Routes {
    pub fn new(state: AppState) -> Self {
        Routes {
            router: TowerToHyperService::new(router(state.clone())),
            state,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.method() == Method::PUT && !has_session_headers(req.headers()) {
            if let Some((key, value)) = put_path(req.uri().path()) {
                let state = self.state.clone();
                return Box::pin(async move { Ok(insert(state, key, value, None).await) });
            }
        }
        let routed = self.router.call(req);
        Box::pin(routed)
    }
}

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/store/{key}/{value}", put(put_value))
        .route(
            "/store/{key}",
            get(get_value)
                .put(put_body)
                .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES)),
        )
        .route("/incr/{key}", post(incr))
        .route("/sessions", post(open_session))
        .route("/leader", get(leader))
        .route("/peers", get(peers))
        .route("/debug", get(debug))
        .route("/snapshot", post(snapshot))
        .route("/leave", post(leave))
        .route("/leave_joint", post(leave_joint))
        .route("/members/{id}/remove", post(remove_member))
        .route("/transfer_leader/{id}", post(transfer_leader))
        .route("/campaign", post(campaign))
        .route("/metrics", get(metrics))
        .fallback(no_such_route);
    #[cfg(feature = "fault-injection")]
    let router = router
        .route("/fault/partition/{peers}", post(fault_partition))
        .route("/fault/drop/{fraction}", post(fault_drop))
        .route("/fault/delay/{min_ms}/{max_ms}", post(fault_delay))
        .route("/fault/heal", post(fault_heal));
    router
        .layer(axum::middleware::map_response(mark_refusal))
        .with_state(state)
}

/// Every refusal the router itself answers (a body over the limit, a path that is not UTF-8, an
/// unknown route) carries the outcome header too: nothing was proposed.
async fn mark_refusal(mut response: Response) -> Response {
    if response.status().is_client_error() && !response.headers().contains_key(OUTCOME_HEADER) {
        response.headers_mut().insert(
            OUTCOME_HEADER,
            axum::http::HeaderValue::from_static("not-applied"),
        );
    }
    response
}

async fn no_such_route(method: Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}; see docs/operations.md, \"Trying the local cluster\"\n",
            uri.path()
        ),
    )
        .into_response()
}

/// `POST /fault/partition/2,3`: lose all raft traffic between this node and nodes 2 and 3.
#[cfg(feature = "fault-injection")]
async fn fault_partition(State(s): State<AppState>, Path(peers): Path<String>) -> Response {
    let ids: Result<Vec<u64>, _> = peers.split(',').map(|p| p.trim().parse::<u64>()).collect();
    match ids {
        Ok(ids) => {
            s.raft.faults().partition_from(&ids);
            (StatusCode::OK, format!("partitioned from {ids:?}\n")).into_response()
        }
        Err(_) => bad_node_id(&peers),
    }
}

/// `POST /fault/drop/0.2`: drop 20% of outgoing raft messages.
#[cfg(feature = "fault-injection")]
async fn fault_drop(State(s): State<AppState>, Path(fraction): Path<String>) -> Response {
    match fraction.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => {
            s.raft.faults().set_drop_rate(f);
            (StatusCode::OK, format!("dropping {f}\n")).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "fraction must be between 0 and 1\n",
        )
            .into_response(),
    }
}

/// `POST /fault/delay/0/20`: delay outgoing raft messages by 0-20 ms (reorders them).
#[cfg(feature = "fault-injection")]
async fn fault_delay(State(s): State<AppState>, Path((min, max)): Path<(u64, u64)>) -> Response {
    s.raft.faults().set_delay(
        std::time::Duration::from_millis(min),
        std::time::Duration::from_millis(max),
    );
    (StatusCode::OK, format!("delaying {min}-{max} ms\n")).into_response()
}

/// `POST /fault/heal`: remove every injected fault on this node.
#[cfg(feature = "fault-injection")]
async fn fault_heal(State(s): State<AppState>) -> Response {
    s.raft.faults().heal();
    (StatusCode::OK, "healed\n").into_response()
}

fn error_response(e: Error) -> Response {
    let status = match &e {
        Error::InvalidRequest(_) | Error::Encoding(_) => StatusCode::BAD_REQUEST,
        Error::UnknownNode(_) => StatusCode::NOT_FOUND,
        Error::ChangeInProgress(_) | Error::WouldLoseQuorum(_) => StatusCode::CONFLICT,
        Error::NotLeader { .. }
        | Error::NoLeader
        | Error::Timeout { .. }
        | Error::OutcomeUnknown(_)
        | Error::ProposalDropped(_)
        | Error::NotReady(_)
        | Error::Busy(_)
        | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Error::StateMachine(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // The session is not open (it expired, least recently used first) or the number was
        // acknowledged by the client: refused where the log is applied, the same on every node.
        Error::SessionExpired(_) => StatusCode::GONE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // Refused before anything was proposed, or (a session's refusal) decided in the log without
    // applying anything: this request changed nothing.
    let refused = matches!(
        e,
        Error::UnknownNode(_)
            | Error::InvalidRequest(_)
            | Error::Encoding(_)
            | Error::NotRunning
            | Error::SessionExpired(_)
    );
    let outcome = if e.is_retryable() || refused || status == StatusCode::BAD_REQUEST {
        "not-applied"
    } else {
        "unknown"
    };
    (status, [(OUTCOME_HEADER, outcome)], format!("{e}\n")).into_response()
}

/// The session a write's headers name, checked before anything is proposed: `Ok(None)` when
/// the request carries none of the session headers (a plain write), `Err` with a one-line
/// reason when they are malformed or incomplete.
///
/// `pontoon-acked` may be left out: it then defaults to `seq - 1`, which is right for a client
/// with one write in flight at a time (it has every answer before the one it is sending). A
/// client with several writes in flight must send it, or the earlier writes' answers are
/// dropped and their retries refused with 410.
pub fn session_header(headers: &HeaderMap) -> Result<Option<SessionCommand>, String> {
    // One value, decimal (zero is refused below: session ids and numbers start at 1).
    let number = |name: &str| -> Result<Option<u64>, String> {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(format!("header {name} is given more than once"));
        }
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        match parsed {
            Some(n) => Ok(Some(n)),
            None => Err(format!("header {name} must be a decimal number")),
        }
    };
    let session = number(SESSION_HEADER)?;
    let seq = number(SEQ_HEADER)?;
    let acked = number(ACKED_HEADER)?;
    match (session, seq) {
        (None, None) if acked.is_none() => Ok(None),
        (Some(session), Some(seq)) => {
            if session == 0 || seq == 0 {
                return Err(format!(
                    "headers {SESSION_HEADER} and {SEQ_HEADER} start at 1"
                ));
            }
            let acked = acked.unwrap_or(seq - 1);
            if acked >= seq {
                // The table would drop this very write's answer and refuse it: a client bug.
                return Err(format!(
                    "header {ACKED_HEADER} ({acked}) must be below {SEQ_HEADER} ({seq})"
                ));
            }
            Ok(Some(SessionCommand {
                session,
                seq,
                acked,
            }))
        }
        _ => Err(format!(
            "a session write needs both {SESSION_HEADER} and {SEQ_HEADER} \
             ({ACKED_HEADER} is optional)"
        )),
    }
}

/// Whether a request carries any session header (the PUT shortcut leaves those to the router).
fn has_session_headers(headers: &HeaderMap) -> bool {
    [SESSION_HEADER, SEQ_HEADER, ACKED_HEADER]
        .iter()
        .any(|name| headers.contains_key(*name))
}

/// A 400 for bad session headers: nothing was proposed.
fn bad_session_headers(reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(OUTCOME_HEADER, "not-applied")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// Propose `bytes`, through the session when the request named one: the first attempt of a
/// (session, seq) applies, every later one is answered from the session table.
async fn propose(
    s: &AppState,
    session: Option<SessionCommand>,
    bytes: Vec<u8>,
) -> pontoon::Result<Vec<u8>> {
    match session {
        Some(header) => s.raft.propose_in_session(header, bytes).await,
        None => s.raft.propose(bytes).await,
    }
}

/// `POST /sessions`: open a client session through the log; answers its id (decimal) and its
/// window in `pontoon-session-window`. Its writes then carry `pontoon-session` and
/// `pontoon-seq` and apply at most once however often they are retried, to any node.
async fn open_session(State(s): State<AppState>) -> Response {
    match s.raft.open_session(0).await {
        Ok((id, window)) => (
            StatusCode::OK,
            [(WINDOW_HEADER, window.to_string())],
            id.to_string(),
        )
            .into_response(),
        // An unknown outcome may leave an unused session open; it expires like any other.
        Err(e) => error_response(e),
    }
}

async fn put_value(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((key, value)): Path<(String, String)>,
) -> Response {
    match session_header(&headers) {
        Ok(session) => insert(s, key, value, session).await,
        Err(reason) => bad_session_headers(reason),
    }
}

/// `PUT /store/{key}` with the value as the request body (UTF-8, at most `MAX_VALUE_BYTES`).
async fn put_body(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let session = match session_header(&headers) {
        Ok(session) => session,
        Err(reason) => return bad_session_headers(reason),
    };
    match String::from_utf8(body.to_vec()) {
        Ok(value) => insert(s, key, value, session).await,
        Err(_) => (
            StatusCode::BAD_REQUEST,
            [(OUTCOME_HEADER, "not-applied")],
            "the value must be UTF-8 text\n",
        )
            .into_response(),
    }
}

async fn insert(
    s: AppState,
    key: String,
    value: String,
    session: Option<SessionCommand>,
) -> Response {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
        return (
            StatusCode::BAD_REQUEST,
            [(OUTCOME_HEADER, "not-applied")],
            format!(
                "key must be 1 to {MAX_KEY_BYTES} bytes and value at most {MAX_VALUE_BYTES} bytes\n"
            ),
        )
            .into_response();
    }
    let entry = LogEntry::Insert { key, value };
    let bytes = match entry.encode() {
        Ok(b) => b,
        Err(e) => return error_response(e),
    };
    match propose(&s, session, bytes).await {
        Ok(answer) => (StatusCode::OK, answer).into_response(),
        Err(e) => error_response(e),
    }
}

/// `POST /incr/{key}`: add one to the key's counter and answer its new value. The counter is the
/// key's value as a decimal number (see `store`), so `GET /store/{key}` reads it. With session
/// headers a retry is answered exactly as the first attempt that applied, without counting again.
async fn incr(State(s): State<AppState>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    let session = match session_header(&headers) {
        Ok(session) => session,
        Err(reason) => return bad_session_headers(reason),
    };
    if key.len() > MAX_KEY_BYTES {
        return (
            StatusCode::BAD_REQUEST,
            [(OUTCOME_HEADER, "not-applied")],
            format!("key must be 1 to {MAX_KEY_BYTES} bytes\n"),
        )
            .into_response();
    }
    let entry = LogEntry::Incr { key: key.clone() };
    let bytes = match entry.encode() {
        Ok(b) => b,
        Err(e) => return error_response(e),
    };
    // The answer is rendered from `apply`'s bytes alone, and a session keeps those bytes: a
    // retry gets the same status and body as the attempt that applied.
    let answer = match propose(&s, session, bytes).await {
        Ok(answer) => answer,
        Err(e) => return error_response(e),
    };
    // The store refused the increment as it applied it: committed, but nothing changed, on
    // every node alike, so the outcome is `not-applied`.
    let refused = |reason: String| {
        (
            StatusCode::CONFLICT,
            [(OUTCOME_HEADER, "not-applied")],
            reason,
        )
            .into_response()
    };
    match bincode::deserialize::<IncrReply>(&answer) {
        Ok(IncrReply::Counted(n)) => (StatusCode::OK, n.to_string()).into_response(),
        Ok(IncrReply::NotACounter) => refused(format!(
            "key {key:?} holds a value that is not a counter (digits only, below 2^64); left unchanged\n"
        )),
        Ok(IncrReply::AtMaximum) => refused(format!(
            "counter {key:?} is at its maximum, 2^64-1; left unchanged\n"
        )),
        // Only a store that answers in another encoding gets here. The increment was applied
        // (or refused) all the same: what happened is unknown to this client.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(OUTCOME_HEADER, "unknown")],
            format!("the store's answer to the increment is unreadable: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
pub struct ReadParams {
    /// `stale` reads this node's copy without a ReadIndex round; anything else is linearizable.
    consistency: Option<String>,
}

/// `GET /store/{key}`: linearizable by default (never older than an acknowledged write, on any
/// node); `?consistency=stale` answers from the local copy at once.
async fn get_value(
    State(s): State<AppState>,
    Path(key): Path<String>,
    Query(params): Query<ReadParams>,
) -> Response {
    let value = if params.consistency.as_deref() == Some("stale") {
        s.store.get(&key)
    } else {
        let k = key.clone();
        match s.raft.linearizable_read(move |store| store.get(&k)).await {
            Ok(v) => v,
            Err(e) => return error_response(e),
        }
    };
    match value {
        Some(v) => (StatusCode::OK, v).into_response(),
        None => (StatusCode::NOT_FOUND, format!("key {key:?} not found\n")).into_response(),
    }
}

async fn leader(State(s): State<AppState>) -> Response {
    let id = s.raft.get_leader_id();
    if id == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader is known right now\n",
        )
            .into_response();
    }
    Json(serde_json::json!({ "leader_id": id, "leader_addr": s.raft.get_peers().get(&id) }))
        .into_response()
}

/// Members with their address and role, from this node's applied configuration.
async fn peers(State(s): State<AppState>) -> Response {
    match s.raft.inspect().await {
        Ok(status) => {
            let members: Vec<_> = status
                .peers
                .iter()
                .map(|p| serde_json::json!({ "id": p.id, "addr": p.addr, "role": p.role }))
                .collect();
            Json(members).into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn debug(State(s): State<AppState>) -> Response {
    match s.raft.inspect().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error_response(e),
    }
}

async fn snapshot(State(s): State<AppState>) -> Response {
    match s.raft.make_snapshot().await {
        Ok(index) => Json(serde_json::json!({ "snapshot_index": index })).into_response(),
        Err(e) => error_response(e),
    }
}

async fn leave(State(s): State<AppState>) -> Response {
    // Answer first, then leave: the node (and this HTTP server) stop once it is removed.
    let raft = s.raft.clone();
    match raft.leave().await {
        Ok(()) => (
            StatusCode::OK,
            format!("node {} left the cluster and stopped\n", raft.id()),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

fn bad_node_id(id: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("node id {id:?} is not a number\n"),
    )
        .into_response()
}

/// The membership after a change, as `{"voters": [...], "learners": [...]}`.
fn members_json(cs: &pontoon::raft::eraftpb::ConfState) -> Response {
    Json(serde_json::json!({ "voters": cs.voters, "learners": cs.learners })).into_response()
}

async fn leave_joint(State(s): State<AppState>) -> Response {
    match s.raft.leave_joint().await {
        Ok(cs) => members_json(&cs),
        Err(e) => error_response(e),
    }
}

async fn remove_member(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return bad_node_id(&id);
    };
    match s.raft.remove_node(id).await {
        Ok(cs) => members_json(&cs),
        Err(e) => error_response(e),
    }
}

async fn transfer_leader(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return bad_node_id(&id);
    };
    match s.raft.transfer_leader(id).await {
        Ok(()) => (StatusCode::OK, format!("leadership moved to node {id}\n")).into_response(),
        Err(e) => error_response(e),
    }
}

/// Prometheus text format.
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.raft.metrics_text(),
    )
        .into_response()
}

async fn campaign(State(s): State<AppState>) -> Response {
    if s.raft.is_leader() {
        return (StatusCode::CONFLICT, "this node is already the leader\n").into_response();
    }
    match s.raft.campaign().await {
        // A hint, not a guarantee: with pre-vote and check-quorum, followers that still hear a
        // leader ignore it.
        Ok(()) => (
            StatusCode::OK,
            "campaign started (followers that still hear a leader ignore it)\n",
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}
