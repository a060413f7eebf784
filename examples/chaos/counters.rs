//! The counter workload: clients increment a few counters with `POST /incr/{key}` and retry
//! every increment whose outcome they do not know, then the final counters are compared with the
//! increments the clients were told succeeded.
//!
//! Each client opens a client session (`POST /sessions`, to any node) and sends its increments
//! with `pontoon-session` / `pontoon-seq`: a retry carries the same number, so it is answered
//! from the session table instead of counting again. With `--no-sessions` the clients retry the
//! same way without the headers, which is how a naive client gets duplicates: an attempt that
//! timed out or lost its connection may still have been committed, and the retry counts again.
//!
//! What counts as a definite answer, per attempt:
//! - 200: the increment applied (once, with a session) — acknowledged;
//! - a refusal marked `pontoon-outcome: not-applied` that the log decided (4xx: 410 expired
//!   session, 400, 409): final, nothing applied by this attempt;
//! - a 503 marked `not-applied`, or a refused connection: this attempt handed nothing to the
//!   log, but an earlier attempt of the same increment may have, so it is retried;
//! - anything else (a timeout, a broken connection, a 5xx marked `unknown`): unknown, retried
//!   with the same number, to a random node.
//!
//! The check, per counter: acknowledged <= final <= acknowledged + unresolved, where
//! "unresolved" are increments given up without a definite answer (the only ones whose effect
//! is not known). Below: lost increments; above: doubled ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

/// First and largest pause between two attempts of one request.
const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_millis(500);
/// Longest one increment is retried while the load runs; past it the increment is unresolved.
const MAX_RETRY_TIME: Duration = Duration::from_secs(120);

/// The counter keys (disjoint from the linearizability workload's `k{i}` and `ledger-*`).
pub fn counter_key(i: u64) -> String {
    format!("counter-{i}")
}

/// What the counter clients share.
pub struct Counters {
    pub addrs: Vec<String>,
    pub keys: u64,
    /// Send the session headers (the default); false for `--no-sessions`.
    pub sessions: bool,
    pub request_timeout: Duration,
    /// Set when the load stops: no new increment starts, the ones in flight are still retried
    /// for up to `finish_limit` (the cluster is healed by then) so few stay unresolved.
    pub stop: AtomicBool,
    pub finish_limit: Duration,
    pub tally: Mutex<Tally>,
}

/// What the clients saw.
#[derive(Default, Clone, Serialize)]
pub struct Tally {
    /// Per counter: increments answered 200.
    pub acked: BTreeMap<String, u64>,
    /// Per counter: increments given up with an attempt whose outcome is unknown.
    pub unresolved: BTreeMap<String, u64>,
    /// Increments definitely refused (nothing applied).
    pub refused: u64,
    /// Attempts after the first, over all increments.
    pub retries: u64,
    /// Attempts whose outcome was unknown (timeouts, broken connections, 5xx `unknown`).
    pub unknown_attempts: u64,
    pub sessions_opened: u64,
    /// Increments answered 410: their session had expired.
    pub sessions_expired: u64,
}

/// How one increment ended.
enum Ended {
    Acked,
    /// Nothing applied, for sure.
    Refused,
    /// Given up while an attempt's outcome was unknown: it may have applied (once, with a
    /// session).
    Unresolved,
    /// 410: the session expired. `maybe_applied` when an earlier attempt had an unknown outcome.
    Expired {
        maybe_applied: bool,
    },
}

/// How one attempt ended.
enum Attempt {
    Acked,
    /// Decided in the log without applying (4xx marked `not-applied`); 410 separately.
    Refused,
    Expired,
    /// This attempt handed nothing over (503 `not-applied`, connection refused).
    NotSent,
    Unknown,
}

impl Counters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// One client's loop until `stop`: open a session (again after one expired), then increment
    /// random counters one at a time.
    pub async fn run_client(self: Arc<Self>, client: u64, seed: u64) {
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut rng = StdRng::seed_from_u64(seed ^ client.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
        // (session id, number of the next increment)
        let mut session: Option<(u64, u64)> = None;
        while !self.stopping() {
            if self.sessions && session.is_none() {
                match self.open_session(&http, &mut rng).await {
                    Some(id) => session = Some((id, 1)),
                    None => return,
                }
            }
            let key = counter_key(rng.random_range(0..self.keys.max(1)));
            let ended = self.increment(&http, &mut rng, &key, session).await;
            // A number is never reused, whatever happened to it.
            if let Some((_, seq)) = session.as_mut() {
                *seq += 1;
            }
            let mut tally = self.lock();
            match ended {
                Ended::Acked => *tally.acked.entry(key).or_default() += 1,
                Ended::Refused => tally.refused += 1,
                Ended::Unresolved => *tally.unresolved.entry(key).or_default() += 1,
                Ended::Expired { maybe_applied } => {
                    tally.sessions_expired += 1;
                    if maybe_applied {
                        *tally.unresolved.entry(key).or_default() += 1;
                    } else {
                        tally.refused += 1;
                    }
                    session = None;
                }
            }
        }
    }

    /// `POST /sessions` to random nodes until one answers an id; None once the load stops.
    async fn open_session(&self, http: &reqwest::Client, rng: &mut StdRng) -> Option<u64> {
        let mut backoff = BACKOFF_START;
        while !self.stopping() {
            let addr = &self.addrs[rng.random_range(0..self.addrs.len())];
            if let Ok(resp) = http.post(format!("http://{addr}/sessions")).send().await {
                if resp.status().is_success() {
                    if let Some(id) = resp
                        .text()
                        .await
                        .ok()
                        .and_then(|b| b.trim().parse::<u64>().ok())
                    {
                        self.lock().sessions_opened += 1;
                        return Some(id);
                    }
                }
            }
            // A failed opening at worst leaves an unused session open; it expires in time.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
        None
    }

    /// One increment of `key`, retried (same session number) until a definite answer, or until
    /// `MAX_RETRY_TIME`, or `finish_limit` after the load stopped.
    async fn increment(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        key: &str,
        session: Option<(u64, u64)>,
    ) -> Ended {
        let mut give_up = Instant::now() + MAX_RETRY_TIME;
        let mut backoff = BACKOFF_START;
        let mut maybe_applied = false;
        let mut first = true;
        loop {
            if !first {
                self.lock().retries += 1;
            }
            first = false;
            let addr = &self.addrs[rng.random_range(0..self.addrs.len())];
            match self.attempt(http, addr, key, session).await {
                Attempt::Acked => return Ended::Acked,
                Attempt::Expired => return Ended::Expired { maybe_applied },
                Attempt::Refused if maybe_applied => return Ended::Unresolved,
                Attempt::Refused => return Ended::Refused,
                Attempt::NotSent => {}
                Attempt::Unknown => {
                    maybe_applied = true;
                    self.lock().unknown_attempts += 1;
                }
            }
            if self.stopping() {
                give_up = give_up.min(Instant::now() + self.finish_limit);
            }
            if Instant::now() >= give_up {
                return if maybe_applied {
                    Ended::Unresolved
                } else {
                    Ended::Refused
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    async fn attempt(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
        session: Option<(u64, u64)>,
    ) -> Attempt {
        let mut request = http.post(format!("http://{addr}/incr/{key}"));
        if let Some((id, seq)) = session {
            // One increment in flight per client: `pontoon-acked` is left to its default,
            // seq - 1, which also tells the cluster to refuse late copies of earlier numbers.
            request = request
                .header("pontoon-session", id.to_string())
                .header("pontoon-seq", seq.to_string());
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    // 200 is the acknowledgement, even if the body is then cut short.
                    return Attempt::Acked;
                }
                let not_applied = resp
                    .headers()
                    .get("pontoon-outcome")
                    .is_some_and(|v| v.as_bytes() == b"not-applied");
                match (status.as_u16(), not_applied) {
                    (410, _) => Attempt::Expired,
                    (400..=499, true) => Attempt::Refused,
                    (_, true) => Attempt::NotSent,
                    _ => Attempt::Unknown,
                }
            }
            Err(e) if e.is_connect() => Attempt::NotSent,
            Err(_) => Attempt::Unknown,
        }
    }
}

/// The verdict on one counter.
#[derive(Clone, Serialize)]
pub struct CounterCheck {
    pub key: String,
    pub acked: u64,
    pub unresolved: u64,
    /// The value on each node (an absent key is 0; None: the node did not answer, or not with a
    /// number, which fails the check).
    pub values: Vec<Option<u64>>,
    pub lost: u64,
    pub doubled: u64,
    pub ok: bool,
}

/// Compare one counter's final values (one per node) with what the clients were told.
pub fn check_counter(
    key: &str,
    acked: u64,
    unresolved: u64,
    values: Vec<Result<Option<String>, String>>,
) -> CounterCheck {
    let mut lost = 0;
    let mut doubled = 0;
    let mut readable = true;
    let mut numbers = Vec::new();
    for value in values {
        let n = match value {
            Ok(None) => Some(0),
            Ok(Some(v)) => v.trim().parse::<u64>().ok(),
            Err(_) => None,
        };
        match n {
            Some(n) => {
                lost = lost.max(acked.saturating_sub(n));
                doubled = doubled.max(n.saturating_sub(acked + unresolved));
            }
            None => readable = false,
        }
        numbers.push(n);
    }
    let agree = numbers.windows(2).all(|w| w[0] == w[1]);
    CounterCheck {
        key: key.to_string(),
        acked,
        unresolved,
        values: numbers,
        lost,
        doubled,
        ok: readable && agree && lost == 0 && doubled == 0,
    }
}
