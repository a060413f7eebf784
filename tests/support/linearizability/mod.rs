//! Linearizability checker for a key/value store seen as one register per key.
//!
//! Chaos tests drive many concurrent clients against a cluster, record every operation with the
//! time it was invoked and the time its answer arrived ([`History`]), and then ask [`check`]
//! whether some single total order of those operations explains every answer while respecting
//! real time. This module knows nothing about pontoon; it is included both from `tests/support`
//! and, through `#[path]`, from examples, so it depends on std, serde and serde_json only.
//!
//! # Model
//!
//! * Every key is an independent register whose initial value is `None` (absent). A write sets
//!   it; a read returns it. Linearizability is compositional (a history is linearizable iff its
//!   restriction to every object is), so keys are checked one at a time.
//! * Times are nanoseconds from one common origin (for example an `Instant` taken at the start
//!   of the run, see [`History::now_ns`]). Operation `a` precedes operation `b` in real time iff
//!   `a.complete_ns < b.invoke_ns`; equal timestamps count as concurrent, which can only hide a
//!   violation, never invent one.
//! * [`Outcome::Ok`]: the operation took effect exactly once, at some instant inside
//!   `[invoke_ns, complete_ns]`, and a read's value is what it observed.
//! * [`Outcome::Fail`]: the operation definitely did not take effect. It is dropped.
//! * [`Outcome::Unknown`]: the client gave up (timeout, lost connection). A write may take effect
//!   at any instant after `invoke_ns`, however late, or never; its `complete_ns` is ignored. An
//!   unknown read tells nothing and is dropped, as is a failed read.
//!
//! # Invariants of a result
//!
//! * A key listed in [`CheckReport::violations`] has been proven non-linearizable: no order of
//!   its operations exists. Every shortcut below is exact (it only prunes orders that cannot
//!   work, or only refutes what cannot be explained), so a correctly recorded history never
//!   raises a false alarm.
//! * A key listed in [`CheckReport::undecided`] hit the state budget
//!   ([`CheckOptions::max_states_per_key`]) before the search finished. Nothing was proven
//!   either way; it is *not* counted as a violation, so callers that need a verdict must also
//!   look at [`CheckReport::is_decided`].
//! * Every other key has a valid linearization.
//!
//! # Algorithm, per key
//!
//! 1. Preparation. Failed operations and unsuccessful reads are dropped. An unknown write whose
//!    value no successful read returned is dropped too: it can be placed after everything, where
//!    it changes no answer. An unknown write that is the only write of a value some read
//!    returned must have taken effect before the first such read completed, which becomes its
//!    deadline; from then on it is as constrained as a successful write. Only an unknown write
//!    sharing its value with other writes stays optional (it may be left out).
//! 2. Quick refutations, each O(n log n) and each a proof by itself (see
//!    [`CheckOptions::quick_refutations`]): a read of a value never written or only written
//!    after the read completed; a stale read (every write of its value was certainly
//!    overwritten before the read began); two values with one writer each that real time forces
//!    into both orders. They also give the most precise reasons.
//! 3. A depth-first search in the style of Wing & Gong as refined by Lowe. Invocations and
//!    deadlines are kept in time order in a doubly linked list (dancing links, so backtracking
//!    restores it exactly). Only an operation invoked before the first deadline still in the
//!    list may be linearized next; once the one owning that deadline is out of choices, the
//!    search backtracks. Every (set of linearized operations, register value) reached is
//!    remembered, and reaching one again prunes the branch: its first visit already failed.
//!    On top of that, pruning that keeps the search exact but near-linear on typical histories:
//!    a read that can take effect now always does (reads commute with everything but writes);
//!    no write may hide a value some read must still return; among writes whose values are
//!    interchangeable, only the one due first is tried; values no read is left to return are
//!    all the same value to the memo.
//!
//! # Cost
//!
//! When every write writes a distinct value (which is what a chaos test should do, e.g.
//! `"<client>-<seq>"`), step 2 decides every violation and the search visits about one state
//! per operation: thousands of operations from tens of clients take milliseconds. Repeated
//! values leave more to the search, whose worst case is exponential in the number of
//! concurrent operations; the budget turns that into an undecided key instead of a hang.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

mod refutations;
mod search;

use refutations::{opposed_values, stale_read};
use search::Search;

/// What an operation did to its key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum OpKind {
    /// Set the key to `value`.
    Write { value: String },
    /// Read the key; `value` is what the read returned (`None`: the key was absent).
    Read { value: Option<String> },
}

/// How an operation ended, as far as the client can tell.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Outcome {
    /// Took effect once, between invocation and completion; a read's value is trustworthy.
    Ok,
    /// Definitely did not take effect (for example refused before being proposed).
    Fail,
    /// May or may not have taken effect, possibly after the client stopped waiting
    /// (timeout, connection lost).
    Unknown,
}

/// One client operation on one key, as recorded by the test driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// Which client issued it. Informational: one client's operations are expected not to
    /// overlap, but the checker relies on the timestamps only.
    pub client: u64,
    /// The register this operation touched.
    pub key: String,
    /// Write or read, with the value written or returned.
    pub kind: OpKind,
    /// When the client sent the request, in nanoseconds from the run's origin.
    pub invoke_ns: u64,
    /// When the client got the answer (or gave up), in nanoseconds from the run's origin.
    pub complete_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Ok => "",
            Outcome::Fail => " (failed)",
            Outcome::Unknown => " (outcome unknown)",
        };
        match &self.kind {
            OpKind::Write { value } => write!(
                f,
                "client {} wrote {:?} to {:?} over [{}, {}] ns{}",
                self.client, value, self.key, self.invoke_ns, self.complete_ns, outcome
            ),
            OpKind::Read { value } => write!(
                f,
                "client {} read {:?} from {:?} over [{}, {}] ns{}",
                self.client, value, self.key, self.invoke_ns, self.complete_ns, outcome
            ),
        }
    }
}

/// Thread-safe recorder of completed operations, shared by all clients of a run (wrap it in an
/// `Arc`). It also holds the run's time origin so every client stamps against the same clock.
#[derive(Debug)]
pub struct History {
    origin: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose time origin is now.
    pub fn new() -> Self {
        History {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since this history was created: the clock to use for `invoke_ns` and
    /// `complete_ns`. Monotonic, so an operation never completes before it was invoked.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Append one finished (or abandoned) operation. Recording order does not matter.
    pub fn record(&self, op: Op) {
        self.lock().push(op);
    }

    /// A copy of everything recorded so far, in recording order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    // A client task that panicked while holding the lock must not cost the others their records.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A key proven non-linearizable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Why: names the operation that could not be explained and what the register held.
    pub reason: String,
    /// All recorded operations on this key (including failed and unknown ones), sorted by
    /// invocation time, so the violation can be read without the rest of the history.
    pub ops: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?} is not linearizable ({} ops): {}",
            self.key,
            self.ops.len(),
            self.reason
        )
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckReport {
    /// Operations that constrain the result: every op except failed ones and reads whose
    /// outcome is unknown.
    pub ops_checked: usize,
    /// Distinct keys in the history.
    pub keys: usize,
    /// Keys proven non-linearizable, in key order.
    pub violations: Vec<Violation>,
    /// Keys whose search ran out of budget: neither proven nor refuted, and deliberately not
    /// counted as violations. See [`CheckReport::is_decided`].
    pub undecided: Vec<String>,
    /// Search states visited over all keys (a measure of how hard the history was).
    pub states_explored: usize,
}

impl CheckReport {
    /// No key was proven non-linearizable. Undecided keys do not make this false; check
    /// [`CheckReport::is_decided`] as well when a budget overrun must fail the test.
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every key got a verdict (no search ran out of budget).
    pub fn is_decided(&self) -> bool {
        self.undecided.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops on {} keys checked: {} violation(s), {} undecided key(s), {} states explored",
            self.ops_checked,
            self.keys,
            self.violations.len(),
            self.undecided.len(),
            self.states_explored
        )?;
        for violation in &self.violations {
            write!(f, "\n  {violation}")?;
        }
        for key in &self.undecided {
            write!(f, "\n  key {key:?}: search budget exhausted")?;
        }
        Ok(())
    }
}

/// Tuning for [`check_with`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Most distinct search states remembered for one key before giving up on it and listing
    /// it as undecided. Bounds both time and memory on adversarial histories.
    pub max_states_per_key: usize,
    /// Before searching a key, look for the patterns that prove a violation by themselves
    /// (a read of a value never written or only written later, a stale read, two single-writer
    /// values forced into opposite orders). They are exact and O(n log n), and give the most
    /// precise reasons; the search alone reaches the same verdicts, more slowly. Off only to
    /// test the search.
    pub quick_refutations: bool,
}

/// Default for [`CheckOptions::max_states_per_key`]: far more than a linearizable chaos history
/// needs (roughly one state per operation plus backtracking), small enough to stay within a few
/// hundred MB and seconds.
pub const DEFAULT_MAX_STATES_PER_KEY: usize = 500_000;

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
            quick_refutations: true,
        }
    }
}

/// Check a history with the default options. See the module documentation for the model.
pub fn check(ops: &[Op]) -> CheckReport {
    check_with(ops, &CheckOptions::default())
}

/// Check a history: each key independently, keys in order.
pub fn check_with(ops: &[Op], options: &CheckOptions) -> CheckReport {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = CheckReport {
        keys: by_key.len(),
        ..Default::default()
    };
    for (key, key_ops) in by_key {
        report.ops_checked += key_ops.iter().filter(|op| carries_information(op)).count();
        let (verdict, states) = check_key(&key_ops, options);
        report.states_explored += states;
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Undecided => report.undecided.push(key.to_string()),
            Verdict::Violation(reason) => {
                let mut all: Vec<Op> = key_ops.iter().map(|op| (*op).clone()).collect();
                all.sort_by_key(|op| (op.invoke_ns, op.complete_ns));
                report.violations.push(Violation {
                    key: key.to_string(),
                    reason,
                    ops: all,
                });
            }
        }
    }
    report
}

/// Write the history and its report as one pretty-printed JSON document
/// `{"linearizable": bool, "report": CheckReport, "ops": [Op]}`, for inspecting a failed run.
pub fn write_history_json(ops: &[Op], report: &CheckReport, path: &Path) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Document<'a> {
        linearizable: bool,
        report: &'a CheckReport,
        ops: &'a [Op],
    }
    let document = Document {
        linearizable: report.is_linearizable(),
        report,
        ops,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut out, &document).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether an operation can constrain the order: failed ops never happened, and a read that did
/// not succeed returned nothing trustworthy.
fn carries_information(op: &Op) -> bool {
    match (&op.kind, op.outcome) {
        (_, Outcome::Fail) => false,
        (OpKind::Read { .. }, Outcome::Unknown) => false,
        (OpKind::Write { .. }, Outcome::Unknown) => true,
        (_, Outcome::Ok) => true,
    }
}

enum Verdict {
    Linearizable,
    Violation(String),
    Undecided,
}

/// One operation as the search sees it. Values are interned: 0 is `None`.
struct SearchOp<'a> {
    op: &'a Op,
    /// `Some(v)`: a write of v. `None`: a read.
    writes: Option<u32>,
    /// For a read, the value it returned.
    reads: u32,
    /// Latest instant at which it can take effect and still matter; `None` for an unknown
    /// write that need not be linearized at all.
    deadline: Option<u64>,
}

fn check_key<'a>(ops: &[&'a Op], options: &CheckOptions) -> (Verdict, usize) {
    let mut relevant: Vec<&'a Op> = ops
        .iter()
        .copied()
        .filter(|op| carries_information(op))
        .collect();
    relevant.sort_by_key(|op| (op.invoke_ns, op.complete_ns));

    if let Some(op) = relevant
        .iter()
        .find(|op| op.outcome == Outcome::Ok && op.complete_ns < op.invoke_ns)
    {
        let reason = format!("malformed history: {op} completes before it was invoked");
        return (Verdict::Violation(reason), 0);
    }

    // Per written value: how many writes (successful or unknown) wrote it, and the earliest
    // invocation among them.
    let mut written: HashMap<&'a str, (usize, u64)> = HashMap::new();
    for op in &relevant {
        if let OpKind::Write { value } = &op.kind {
            let entry = written.entry(value.as_str()).or_insert((0, op.invoke_ns));
            entry.0 += 1;
            entry.1 = entry.1.min(op.invoke_ns);
        }
    }
    // Reads whose value cannot have come from any write: the clearest explanations there are.
    for read in relevant.iter().filter(|_| options.quick_refutations) {
        let OpKind::Read { value: Some(seen) } = &read.kind else {
            continue;
        };
        match written.get(seen.as_str()) {
            None => {
                let failed = ops.iter().any(|op| {
                    op.outcome == Outcome::Fail
                        && matches!(&op.kind, OpKind::Write { value } if value == seen)
                });
                let note = if failed {
                    " (a write of it failed, so it never took effect)"
                } else {
                    ""
                };
                let reason = format!(
                    "{read} returned a value that no successful or unknown write on this key \
                     wrote{note}"
                );
                return (Verdict::Violation(reason), 0);
            }
            Some(&(_, first_invoke)) if first_invoke > read.complete_ns => {
                let reason = format!(
                    "{read} returned a value that was only written after the read completed"
                );
                return (Verdict::Violation(reason), 0);
            }
            Some(_) => {}
        }
    }

    // The earliest completion of a successful read of each value.
    let mut first_seen: HashMap<&'a str, u64> = HashMap::new();
    for op in &relevant {
        if let OpKind::Read { value: Some(v) } = &op.kind {
            let at = first_seen.entry(v.as_str()).or_insert(op.complete_ns);
            *at = (*at).min(op.complete_ns);
        }
    }
    // An unknown write nobody observed can be linearized last, after everything, where it
    // changes no answer: leave it out. One that is the only write of a value a read returned
    // must have taken effect before that read completed: give it that deadline, which makes it
    // as constrained as a successful write (a deadline before its invocation leaves the search
    // no place for it). Only an unknown write sharing its value with other writes stays
    // optional.
    let mut search_ops: Vec<SearchOp> = Vec::with_capacity(relevant.len());
    let mut interned: HashMap<&'a str, u32> = HashMap::new();
    let mut value_names: Vec<Option<String>> = vec![None];
    let mut intern = |value: Option<&'a str>| -> u32 {
        let Some(v) = value else { return 0 };
        *interned.entry(v).or_insert_with(|| {
            value_names.push(Some(v.to_string()));
            value_names.len() as u32 - 1
        })
    };
    for op in relevant {
        let (writes, reads, deadline) = match (&op.kind, op.outcome) {
            (OpKind::Read { value }, _) => (None, intern(value.as_deref()), Some(op.complete_ns)),
            (OpKind::Write { value }, Outcome::Ok) => {
                (Some(intern(Some(value))), 0, Some(op.complete_ns))
            }
            (OpKind::Write { value }, _) => match first_seen.get(value.as_str()) {
                None => continue,
                Some(&seen) if written[value.as_str()].0 == 1 => {
                    (Some(intern(Some(value))), 0, Some(seen))
                }
                Some(_) => (Some(intern(Some(value))), 0, None),
            },
        };
        search_ops.push(SearchOp {
            op,
            writes,
            reads,
            deadline,
        });
    }

    if options.quick_refutations {
        let refutation = stale_read(&search_ops, &value_names)
            .or_else(|| opposed_values(&search_ops, &value_names));
        if let Some(reason) = refutation {
            return (Verdict::Violation(reason), 0);
        }
    }
    Search::new(&search_ops, value_names.len(), options.max_states_per_key).run(&value_names)
}
