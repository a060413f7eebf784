//! The clients: each one loops over random reads and writes of a few hot keys against random
//! nodes, recording every operation with its invoke/complete time and outcome, and now and then
//! writes a write-once "ledger" key whose survival is checked at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::linearizability::{History, Op, OpKind, Outcome};

/// What the clients share.
pub struct Workload {
    pub history: Arc<History>,
    /// Ledger keys whose write was acknowledged (200): every one must be on every node at the end.
    pub ledger_acked: Mutex<Vec<String>>,
    pub origin: Instant,
    pub stop: AtomicBool,
    pub addrs: Vec<String>,
    pub keys: u64,
    pub request_timeout: Duration,
    /// Read a node's local copy instead of a linearizable read (to show the checker catches it).
    pub stale_reads: bool,
}

/// The hot keys the linearizability check covers.
pub fn hot_key(i: u64) -> String {
    format!("k{i}")
}

impl Workload {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// One client's loop until `stop` is set.
    pub async fn run_client(self: Arc<Self>, client: u64, seed: u64) {
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut rng = StdRng::seed_from_u64(seed ^ client.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            seq += 1;
            let addr = self.addrs[rng.random_range(0..self.addrs.len())].clone();
            if rng.random_bool(0.1) {
                let key = format!("ledger-{client}-{seq}");
                match self.write(&http, &addr, &key, "1").await {
                    Outcome::Ok => self.ledger_acked.lock().expect("ledger lock").push(key),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                continue;
            }
            let key = hot_key(rng.random_range(0..self.keys));
            let invoke_ns = self.now_ns();
            let outcome = if rng.random_bool(0.5) {
                let value = format!("c{client}-{seq}");
                let outcome = self.write(&http, &addr, &key, &value).await;
                self.history.record(Op {
                    client,
                    key,
                    kind: OpKind::Write { value },
                    invoke_ns,
                    complete_ns: self.now_ns(),
                    outcome,
                });
                outcome
            } else {
                let (value, outcome) = self.read(&http, &addr, &key).await;
                self.history.record(Op {
                    client,
                    key,
                    kind: OpKind::Read { value },
                    invoke_ns,
                    complete_ns: self.now_ns(),
                    outcome,
                });
                outcome
            };
            // A client whose node is down or refusing does not spin: it paces its next attempt.
            if outcome != Outcome::Ok {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// PUT and classify: 200 = applied; an error the node marks `not-applied` or a refused
    /// connection (nothing was sent) = did not happen; anything else (timeouts, broken
    /// connections, `unknown`) = may or may not have happened.
    pub async fn write(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
        value: &str,
    ) -> Outcome {
        let resp = http
            .put(format!("http://{addr}/store/{key}/{value}"))
            .send()
            .await;
        match resp {
            // 200 is the acknowledgement (even if the body is then cut short): it happened.
            Ok(resp) if resp.status().is_success() => Outcome::Ok,
            Ok(resp) => {
                let definite = resp
                    .headers()
                    .get("pontoon-outcome")
                    .is_some_and(|v| v.as_bytes() == b"not-applied");
                if definite {
                    Outcome::Fail
                } else {
                    Outcome::Unknown
                }
            }
            Err(e) if e.is_connect() => Outcome::Fail,
            Err(_) => Outcome::Unknown,
        }
    }

    /// Linearizable GET: 200 = the value, 404 = absent, anything else carries no information.
    async fn read(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
    ) -> (Option<String>, Outcome) {
        let query = if self.stale_reads {
            "?consistency=stale"
        } else {
            ""
        };
        match http
            .get(format!("http://{addr}/store/{key}{query}"))
            .send()
            .await
        {
            Ok(resp) if resp.status().as_u16() == 200 => match resp.text().await {
                Ok(body) => (Some(body), Outcome::Ok),
                Err(_) => (None, Outcome::Fail),
            },
            Ok(resp) if resp.status().as_u16() == 404 => (None, Outcome::Ok),
            Ok(_) | Err(_) => (None, Outcome::Fail),
        }
    }

    /// Record a final read (after the cluster converged) through node `addr`.
    pub async fn final_read(&self, http: &reqwest::Client, addr: &str, key: &str) -> Outcome {
        let invoke_ns = self.now_ns();
        let (value, outcome) = self.read(http, addr, key).await;
        self.history.record(Op {
            client: u64::MAX,
            key: key.to_string(),
            kind: OpKind::Read { value },
            invoke_ns,
            complete_ns: self.now_ns(),
            outcome,
        });
        outcome
    }
}
