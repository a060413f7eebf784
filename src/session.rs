//! `Session`: commands that apply exactly once, however often they are retried.
//!
//! A plain `propose` that answers `Timeout` or `OutcomeUnknown` leaves the caller stuck: the
//! command may or may not have applied. A session numbers its commands and the cluster keeps,
//! per session, the answers of those it applied (`node::session_table`), so `Session::propose`
//! retries one command (the same number, across leader changes, forwarding and restarts) until
//! it gets a definite answer, and the state machine sees it once.
//!
//! A session is opened through the log (`RaftNode::session` in a node's process,
//! `RaftServiceClient::session` from outside), and is cheap to share: clones send through the
//! same session, up to its window of commands unanswered at once.
//!
//! The number bookkeeping, on this side:
//! - `next` is the number the next command gets; numbers are never reused.
//! - `acked` is the highest number up to which every command has its final answer. Each
//!   command carries it, and the cluster drops the answers up to it; a late copy of a command at
//!   or below it is refused there, never applied.
//! - A command waits before it takes a number until `next <= acked + window`: the cluster keeps
//!   answers only inside the window.
//! - A number is "answered" whatever the outcome, even when the call is dropped half-way (a
//!   guard does it), so one lost caller never stalls the window.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::node::SessionCommand;

/// Where a session's commands go: a node in this process, or a cluster through the gRPC client.
#[crate::async_trait]
pub(crate) trait SessionRoute: Send + Sync + 'static {
    /// Open a session with at most `window` unanswered commands; answers its id and the window
    /// the leader granted.
    async fn open(&self, window: u64) -> Result<(u64, u64)>;
    /// One attempt to have `header`'s command applied; answers what `apply` returned the first
    /// time this number applied.
    async fn send(&self, header: SessionCommand, data: Vec<u8>) -> Result<Vec<u8>>;
    /// How long one command is retried before `OutcomeUnknown`.
    fn retry_timeout(&self) -> Duration;
}

/// First and largest pause between two attempts of one command.
const RETRY_BACKOFF_START: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_CAP: Duration = Duration::from_millis(500);

/// A client session: `propose` applies each command exactly once however often it has to
/// retry. Clone it to send from several tasks; see the module docs.
///
/// Errors `propose` can still answer, and what each means:
/// - `StateMachine`: the command applied once and `apply` returned this error (a retry would
///   get the same answer).
/// - `SessionExpired`: the session is no longer open (more than `Config::max_sessions` were
///   opened since it was last used). The command did not apply in this call;
///   if an earlier attempt of it got no answer, that attempt may have applied it once. Open a
///   new session.
/// - `OutcomeUnknown`: no definite answer within `Config::session_retry_timeout` (no leader for
///   that long, say). The command applied at most once, and never will later: the session's
///   next command tells the cluster to refuse any late copy.
/// - `Busy`: the session's window stayed full for the whole timeout; nothing was sent.
/// - `InvalidRequest` (too large), `Unauthorized`, `ClusterMismatch`, `ShuttingDown`: nothing
///   was applied by this call (after an earlier unanswered attempt these come as
///   `OutcomeUnknown` instead).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    route: Box<dyn SessionRoute>,
    id: u64,
    window: u64,
    numbers: Mutex<Numbers>,
    /// `acked`, for commands waiting for room in the window.
    acked_tx: watch::Sender<u64>,
}

struct Numbers {
    next: u64,
    acked: u64,
    /// Answered numbers above `acked` (their predecessors are not all answered yet).
    answered: BTreeSet<u64>,
}

impl Session {
    /// Open a session through `route`, asking for `window` (0: the leader's
    /// `Config::session_window`).
    pub(crate) async fn open(route: Box<dyn SessionRoute>, window: u64) -> Result<Session> {
        let (id, window) = route.open(window).await?;
        let (acked_tx, _) = watch::channel(0);
        Ok(Session {
            inner: Arc::new(Inner {
                route,
                id,
                window: window.max(1),
                numbers: Mutex::new(Numbers {
                    next: 1,
                    acked: 0,
                    answered: BTreeSet::new(),
                }),
                acked_tx,
            }),
        })
    }

    /// The session's id (the log index of the entry that opened it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// How many of its commands may be unanswered at once.
    pub fn window(&self) -> u64 {
        self.inner.window
    }

    /// Have `data` applied exactly once and answer what `apply` returned. Retries the same
    /// numbered command until a definite answer or `Config::session_retry_timeout`; see the
    /// type's docs for the errors that remain.
    ///
    /// Several tasks can propose through clones of one session at once, up to its window.
    ///
    /// ```no_run
    /// # async fn demo(client: pontoon::client::RaftServiceClient) -> pontoon::Result<()> {
    /// let session = client.session().await?;
    /// match session.propose(b"withdraw 5".to_vec()).await {
    ///     Ok(answer) => println!("applied once: {answer:?}"),
    ///     Err(pontoon::Error::SessionExpired(_)) => {
    ///         // open a new session; an earlier unanswered attempt may have applied once
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.inner.route.retry_timeout();
        let seq = self.take_number(deadline).await?;
        let _answered = AnsweredOnDrop { session: self, seq };
        self.send_until_decided(seq, data, deadline).await
    }

    /// Wait for room in the window, then take the next number.
    async fn take_number(&self, deadline: Instant) -> Result<u64> {
        let mut acked_rx = self.inner.acked_tx.subscribe();
        loop {
            acked_rx.borrow_and_update();
            {
                let mut numbers = self.lock();
                if numbers.next <= numbers.acked + self.inner.window {
                    let seq = numbers.next;
                    numbers.next += 1;
                    return Ok(seq);
                }
            }
            if tokio::time::timeout_at(deadline, acked_rx.changed())
                .await
                .is_err()
            {
                return Err(Error::Busy(format!(
                    "session {} has {} commands unanswered (its window) and none was answered in \
                     time; nothing was sent",
                    self.inner.id, self.inner.window
                )));
            }
        }
    }

    async fn send_until_decided(
        &self,
        seq: u64,
        data: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let mut backoff = RETRY_BACKOFF_START;
        let mut maybe_sent = false;
        loop {
            let header = SessionCommand {
                session: self.inner.id,
                seq,
                acked: self.lock().acked,
            };
            let error = match self.inner.route.send(header, data.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let retry = error.outcome_unknown()
                || matches!(
                    error,
                    Error::NotLeader { .. }
                        | Error::NoLeader
                        | Error::ProposalDropped(_)
                        | Error::NotReady(_)
                        | Error::Busy(_)
                        | Error::Transport(_)
                        | Error::Timeout { .. }
                );
            maybe_sent |= error.outcome_unknown();
            let now = Instant::now();
            if !retry || now >= deadline {
                let decided = matches!(error, Error::StateMachine(_) | Error::SessionExpired(_));
                if maybe_sent && !decided {
                    return Err(Error::OutcomeUnknown(format!(
                        "command {seq} of session {} got no definite answer ({error}); it \
                         applied at most once and will not apply later",
                        self.inner.id
                    )));
                }
                return Err(error);
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_CAP);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Numbers> {
        self.inner.numbers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answered(&self, seq: u64) {
        let acked = {
            let mut guard = self.lock();
            let numbers = &mut *guard;
            numbers.answered.insert(seq);
            while numbers.answered.remove(&(numbers.acked + 1)) {
                numbers.acked += 1;
            }
            numbers.acked
        };
        self.inner.acked_tx.send_replace(acked);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let numbers = self.lock();
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("window", &self.inner.window)
            .field("next", &numbers.next)
            .field("acked", &numbers.acked)
            .finish()
    }
}

/// Marks a number answered when its `propose` ends, returned or dropped.
struct AnsweredOnDrop<'a> {
    session: &'a Session,
    seq: u64,
}

impl Drop for AnsweredOnDrop<'_> {
    fn drop(&mut self) {
        self.session.answered(self.seq);
    }
}

impl crate::node::RaftNode {
    /// Open a client session through the log (forwarded to the leader), with the window of
    /// `Config::session_window`. Opening is always safe to retry: a session whose opening got
    /// no answer is never used and expires like any other.
    ///
    /// Use a session for commands that are not idempotent (a transfer, an increment): its
    /// `propose` retries through timeouts and leader changes and the state machine still sees
    /// each command once.
    ///
    /// ```no_run
    /// # async fn demo(node: pontoon::RaftNode) -> pontoon::Result<()> {
    /// let session = node.session().await?;
    /// // Applied exactly once, however often it had to be sent.
    /// let answer = session.propose(b"add 10 to x".to_vec()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn session(&self) -> Result<Session> {
        Session::open(Box::new(self.clone()), 0).await
    }

    /// `session` with a window of at most `window` commands unanswered at once (capped by the
    /// leader's `Config::session_window`).
    pub async fn session_with_window(&self, window: u64) -> Result<Session> {
        Session::open(Box::new(self.clone()), window).await
    }
}

#[crate::async_trait]
impl SessionRoute for crate::node::RaftNode {
    async fn open(&self, window: u64) -> Result<(u64, u64)> {
        self.open_session(window).await
    }

    async fn send(&self, header: SessionCommand, data: Vec<u8>) -> Result<Vec<u8>> {
        self.propose_in_session(header, data).await
    }

    fn retry_timeout(&self) -> Duration {
        self.shared.config.session_retry_timeout
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A route that fails the first `fail_first` attempts of every command with an unknown
    /// outcome, and records every header it sees.
    struct Flaky {
        fail_first: u64,
        attempts: Mutex<std::collections::BTreeMap<u64, u64>>,
        headers: Mutex<Vec<SessionCommand>>,
        opened: AtomicU64,
    }

    #[crate::async_trait]
    impl SessionRoute for Arc<Flaky> {
        async fn open(&self, window: u64) -> Result<(u64, u64)> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            Ok((7, window))
        }
        async fn send(&self, header: SessionCommand, data: Vec<u8>) -> Result<Vec<u8>> {
            self.headers.lock().expect("lock").push(header);
            let mut attempts = self.attempts.lock().expect("lock");
            let n = attempts.entry(header.seq).or_default();
            *n += 1;
            if *n <= self.fail_first {
                return Err(Error::OutcomeUnknown("connection reset".into()));
            }
            Ok(data)
        }
        fn retry_timeout(&self) -> Duration {
            Duration::from_secs(30)
        }
    }

    fn flaky(fail_first: u64) -> Arc<Flaky> {
        Arc::new(Flaky {
            fail_first,
            attempts: Mutex::default(),
            headers: Mutex::default(),
            opened: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_retried_with_the_same_number_until_answered() {
        let route = flaky(2);
        let session = Session::open(Box::new(route.clone()), 4)
            .await
            .expect("open");
        assert_eq!(
            session.propose(b"a".to_vec()).await.expect("answered"),
            b"a"
        );
        let seqs: Vec<u64> = route
            .headers
            .lock()
            .expect("lock")
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(seqs, vec![1, 1, 1], "three attempts of command 1");
        session.propose(b"b".to_vec()).await.expect("answered");
        let last = *route.headers.lock().expect("lock").last().expect("sent");
        assert_eq!((last.seq, last.acked), (2, 1), "command 2 acknowledges 1");
    }

    #[tokio::test]
    async fn a_full_window_waits_for_an_answer_and_acknowledges_only_a_complete_prefix() {
        let session = Session::open(Box::new(flaky(0)), 2).await.expect("open");
        // Numbers 1 and 2 taken; 2 answered before 1: acked stays 0 and 3 must wait for 1.
        let deadline = Instant::now() + Duration::from_secs(30);
        let one = session.take_number(deadline).await.expect("1");
        let two = session.take_number(deadline).await.expect("2");
        session.answered(two);
        assert_eq!(session.lock().acked, 0);
        let waiting = {
            let session = session.clone();
            tokio::spawn(async move { session.take_number(deadline).await })
        };
        assert!(!waiting.is_finished());
        session.answered(one);
        assert_eq!(session.lock().acked, 2);
        assert_eq!(waiting.await.expect("task").expect("3"), 3);
    }

    #[tokio::test]
    async fn a_full_window_that_never_moves_answers_busy_without_sending() {
        let session = Session::open(Box::new(flaky(0)), 1).await.expect("open");
        let deadline = Instant::now() + Duration::from_secs(30);
        let _held = session.take_number(deadline).await.expect("1");
        let err = session
            .take_number(Instant::now() + Duration::from_millis(20))
            .await
            .expect_err("no room");
        assert!(matches!(err, Error::Busy(_)), "{err}");
    }
}
