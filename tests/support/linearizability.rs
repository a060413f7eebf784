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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

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

/// A cheap, exact refutation: a successful read of v although every write of v that could
/// have taken effect before the read completed had certainly been overwritten before the read
/// was invoked (another write of a different value started after it completed and completed
/// before the read started). Covers stale reads and lost writes whatever the values, in
/// O(n log n).
fn stale_read(ops: &[SearchOp], value_names: &[Option<String>]) -> Option<String> {
    // Writes with a deadline, sorted by invocation, and per suffix the two earliest deadlines
    // of different values: what certainly overwrites a write that completed before the suffix.
    let mut firm: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].writes.is_some() && ops[i].deadline.is_some())
        .collect();
    firm.sort_by_key(|&i| ops[i].op.invoke_ns);
    let deadline = |i: usize| ops[i].deadline.unwrap_or(u64::MAX);
    let mut suffix: Vec<[Option<usize>; 2]> = vec![[None, None]; firm.len() + 1];
    for j in (0..firm.len()).rev() {
        let x = firm[j];
        let [mut first, mut second] = suffix[j + 1];
        if first.is_none_or(|f| deadline(x) < deadline(f)) {
            if first.is_some_and(|f| ops[f].writes != ops[x].writes) {
                second = first;
            }
            first = Some(x);
        } else if ops[first.expect("set")].writes != ops[x].writes
            && second.is_none_or(|s| deadline(x) < deadline(s))
        {
            second = Some(x);
        }
        suffix[j] = [first, second];
    }
    // The write that first certainly overwrites a write of `value` completed at `done`
    // (`None`: the initial value, overwritten by any write).
    let overwriter = |value: u32, done: Option<u64>| -> Option<usize> {
        let from = match done {
            Some(done) => firm.partition_point(|&i| ops[i].op.invoke_ns <= done),
            None => 0,
        };
        suffix[from]
            .into_iter()
            .flatten()
            .find(|&x| ops[x].writes != Some(value))
    };

    // Per value: its writes sorted by invocation, each with the latest instant by which it or
    // an earlier-invoked write of the value is certainly overwritten (running maximum; an
    // optional write never is).
    struct Lasting {
        invoke: u64,
        until: u64,
        write: usize,
        overwriter: Option<usize>,
    }
    let mut by_value: HashMap<u32, Vec<Lasting>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(v) = op.writes {
            let overwriter = op.deadline.and_then(|d| overwriter(v, Some(d)));
            by_value.entry(v).or_default().push(Lasting {
                invoke: op.op.invoke_ns,
                until: overwriter.map_or(u64::MAX, deadline),
                write: i,
                overwriter,
            });
        }
    }
    for writes in by_value.values_mut() {
        writes.sort_by_key(|w| w.invoke);
        for k in 1..writes.len() {
            if writes[k - 1].until > writes[k].until {
                writes[k].until = writes[k - 1].until;
                writes[k].write = writes[k - 1].write;
                writes[k].overwriter = writes[k - 1].overwriter;
            }
        }
    }

    for read in ops.iter().filter(|op| op.writes.is_none()) {
        let (invoke, complete) = (read.op.invoke_ns, read.op.complete_ns);
        let (latest, overwritten_by) = if read.reads == 0 {
            (None, overwriter(0, None))
        } else {
            let Some(writes) = by_value.get(&read.reads) else {
                continue; // reported by the checks before the search
            };
            let p = writes.partition_point(|w| w.invoke <= complete);
            if p == 0 {
                continue; // reported by the checks before the search
            }
            (Some(writes[p - 1].write), writes[p - 1].overwriter)
        };
        let Some(x) = overwritten_by else { continue };
        if deadline(x) >= invoke {
            continue;
        }
        let source = match latest {
            Some(w) => format!(
                "the write of that value that could have lasted longest, {}",
                ops[w].op
            ),
            None => format!("the initial value {:?}", value_names[0]),
        };
        return Some(format!(
            "stale read: {}, but {source}, was certainly overwritten by {}, which started after \
             it and completed before the read started",
            read.op, ops[x].op
        ));
    }
    None
}

/// A value with at most one writer (or `None`, the initial value, with none) together with the
/// reads that returned it: in any linearization the reads of such a value come after its write
/// and before the next write, so the groups of two such values cannot interleave.
struct ValueGroup {
    value: u32,
    /// Earliest completion (deadline) among the group's operations; −1 for the initial value,
    /// which is in place before everything.
    first_completion: i128,
    first_completed: Option<usize>,
    /// Latest invocation among the group's operations.
    last_invocation: i128,
    last_invoked: Option<usize>,
}

/// A cheap, exact refutation: two single-writer values whose groups real time forces each
/// before the other (an operation of each completed before an operation of the other was
/// invoked), e.g. two readers that saw two writes in opposite orders. Found in O(n log n) by
/// sorting groups by first completion and keeping, per prefix, the two latest invocations.
///
/// When every value has a single writer and the read checks before this one passed, the
/// absence of such a pair is also sufficient (the groups can then be put in order), so the
/// search only confirms; it stays in charge for histories with repeated values.
fn opposed_values(ops: &[SearchOp], value_names: &[Option<String>]) -> Option<String> {
    let mut writers = vec![0usize; value_names.len()];
    for op in ops {
        if let Some(v) = op.writes {
            writers[v as usize] += 1;
        }
    }
    let mut groups: Vec<Option<ValueGroup>> = (0..value_names.len())
        .map(|v| {
            (v == 0 || writers[v] == 1).then_some(ValueGroup {
                value: v as u32,
                first_completion: if v == 0 { -1 } else { i128::MAX },
                first_completed: None,
                last_invocation: -1,
                last_invoked: None,
            })
        })
        .collect();
    for (i, op) in ops.iter().enumerate() {
        let v = op.writes.unwrap_or(op.reads) as usize;
        let (Some(group), Some(deadline)) = (groups[v].as_mut(), op.deadline) else {
            continue;
        };
        // An unknown write's deadline is the completion of a read in the same group: name the
        // read.
        if op.op.outcome == Outcome::Ok && i128::from(deadline) < group.first_completion {
            group.first_completion = i128::from(deadline);
            group.first_completed = Some(i);
        }
        if i128::from(op.op.invoke_ns) > group.last_invocation {
            group.last_invocation = i128::from(op.op.invoke_ns);
            group.last_invoked = Some(i);
        }
    }
    let mut groups: Vec<ValueGroup> = groups
        .into_iter()
        .flatten()
        .filter(|g| g.last_invoked.is_some())
        .collect();
    groups.sort_by_key(|g| (g.first_completion, g.value));
    // best[p]: the two groups with the latest invocation among the first p.
    let mut best: Vec<[Option<usize>; 2]> = Vec::with_capacity(groups.len() + 1);
    best.push([None, None]);
    for (i, group) in groups.iter().enumerate() {
        let [mut first, mut second] = best[i];
        let later =
            |a: Option<usize>| a.is_none_or(|a| group.last_invocation > groups[a].last_invocation);
        if later(first) {
            second = first;
            first = Some(i);
        } else if later(second) {
            second = Some(i);
        }
        best.push([first, second]);
    }
    for (a, group) in groups.iter().enumerate() {
        // Groups with an operation completed before `group`'s last invocation: they must start
        // before `group` ends.
        let p = groups.partition_point(|g| g.first_completion < group.last_invocation);
        let Some(b) = best[p].into_iter().flatten().find(|&b| b != a) else {
            continue;
        };
        let other = &groups[b];
        if other.last_invocation > group.first_completion {
            return Some(describe_opposed(ops, value_names, group, other));
        }
    }
    None
}

fn describe_opposed(
    ops: &[SearchOp],
    value_names: &[Option<String>],
    a: &ValueGroup,
    b: &ValueGroup,
) -> String {
    let completed = |g: &ValueGroup| match g.first_completed {
        Some(i) => format!("{} completed", ops[i].op),
        None => "the key started absent".to_string(),
    };
    let invoked = |g: &ValueGroup| match g.last_invoked {
        Some(i) => format!("{} was invoked", ops[i].op),
        None => "the history started".to_string(),
    };
    format!(
        "{va:?} and {vb:?} each have a single writer, so the reads of one all come before the \
         other is written or all after, but real time allows neither: {} before {}, and {} \
         before {}",
        completed(a),
        invoked(b),
        completed(b),
        invoked(a),
        va = value_names[a.value as usize],
        vb = value_names[b.value as usize],
    )
}

const NIL: usize = usize::MAX;

/// Stands in for the register value in memo keys once that value can no longer be read.
const DEAD: u32 = u32::MAX;

/// An invocation or completion, in time order.
struct Event {
    op: usize,
    is_call: bool,
}

/// The choices at one state of the depth-first search.
struct Frame {
    /// Register value in this state.
    state: u32,
    /// Operations that may be linearized next, best first.
    choices: Vec<usize>,
    /// How many of `choices` were tried; the last one tried is the one on the current path.
    tried: usize,
}

/// Where the search got furthest before being stuck: the completion it could not get past.
struct Stuck {
    event: usize,
    linearized: usize,
    state: u32,
    /// A read that still had to return `state`, keeping writes out.
    awaited: Option<usize>,
}

struct Search<'s, 'a> {
    ops: &'s [SearchOp<'a>],
    events: Vec<Event>,
    /// Linked list over the events of operations not linearized yet; slot `events.len()` is
    /// the head sentinel.
    next: Vec<usize>,
    prev: Vec<usize>,
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
    /// Per value: its writes (optional ones included) by invocation, its reads by completion.
    writes_of: Vec<Vec<usize>>,
    reads_of: Vec<Vec<usize>>,
    /// Per operation: linearized on the current path.
    done: Vec<bool>,
    /// Per value: successful reads that returned it, in all and linearized so far.
    readers: Vec<usize>,
    readers_done: Vec<usize>,
    max_states: usize,
}

impl<'s, 'a> Search<'s, 'a> {
    fn new(ops: &'s [SearchOp<'a>], values: usize, max_states: usize) -> Self {
        // (time, calls before completions at equal times so touching intervals overlap, op).
        let mut keyed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            keyed.push((op.op.invoke_ns, false, i));
            if let Some(deadline) = op.deadline {
                keyed.push((deadline, true, i));
            }
        }
        keyed.sort_unstable();
        let events: Vec<Event> = keyed
            .iter()
            .map(|&(_, is_return, op)| Event {
                op,
                is_call: !is_return,
            })
            .collect();
        let n = events.len();
        // All events in order after the head sentinel (slot n).
        let mut next: Vec<usize> = (1..=n).map(|e| if e < n { e } else { NIL }).collect();
        next.push(if n > 0 { 0 } else { NIL });
        let mut prev: Vec<usize> = (0..n).map(|e| if e == 0 { n } else { e - 1 }).collect();
        prev.push(NIL);
        let mut call_of = vec![NIL; ops.len()];
        let mut return_of = vec![None; ops.len()];
        for (e, event) in events.iter().enumerate() {
            if event.is_call {
                call_of[event.op] = e;
            } else {
                return_of[event.op] = Some(e);
            }
        }
        let mut readers = vec![0usize; values];
        let mut writes_of = vec![Vec::new(); values];
        let mut reads_of = vec![Vec::new(); values];
        for (i, op) in ops.iter().enumerate() {
            match op.writes {
                Some(v) => writes_of[v as usize].push(i),
                None => {
                    readers[op.reads as usize] += 1;
                    reads_of[op.reads as usize].push(i);
                }
            }
        }
        for writes in &mut writes_of {
            writes.sort_by_key(|&i| ops[i].op.invoke_ns);
        }
        for reads in &mut reads_of {
            reads.sort_by_key(|&i| ops[i].deadline);
        }
        Search {
            ops,
            events,
            next,
            prev,
            call_of,
            return_of,
            writes_of,
            reads_of,
            done: vec![false; ops.len()],
            readers,
            readers_done: vec![0; values],
            max_states,
        }
    }

    fn head(&self) -> usize {
        self.events.len()
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Exact inverse of `unlink`, valid when undone in reverse order (dancing links).
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(r) = self.return_of[op] {
            self.unlink(r);
        }
        self.done[op] = true;
        if self.ops[op].writes.is_none() {
            self.readers_done[self.ops[op].reads as usize] += 1;
        }
    }

    fn unlift(&mut self, op: usize) {
        self.done[op] = false;
        if self.ops[op].writes.is_none() {
            self.readers_done[self.ops[op].reads as usize] -= 1;
        }
        if let Some(r) = self.return_of[op] {
            self.relink(r);
        }
        self.relink(self.call_of[op]);
    }

    /// Some read of the value was not linearized and no write of it that is left could put
    /// the value back before that read completed: the read must come before any write.
    /// Returns that read.
    fn awaits_read(&self, state: u32) -> Option<usize> {
        let v = state as usize;
        let first_open = |list: &[usize]| list.iter().copied().find(|&i| !self.done[i]);
        let read = first_open(&self.reads_of[v])?;
        first_open(&self.writes_of[v])
            .is_none_or(|write| self.ops[write].op.invoke_ns > self.ops[read].op.complete_ns)
            .then_some(read)
    }

    /// The value as it goes into a memo key: every value that no read is left to return
    /// behaves the same from here on, so they share one key.
    fn memo_value(&self, state: u32) -> u32 {
        let v = state as usize;
        if self.readers_done[v] == self.readers[v] {
            DEAD
        } else {
            state
        }
    }

    /// When `op` is due: its deadline, or never for an optional write.
    fn due(&self, op: usize) -> (u64, usize) {
        (self.ops[op].deadline.unwrap_or(u64::MAX), op)
    }

    /// The choices at `state` among the candidates, the operations whose invocation precedes
    /// the first completion still in the list. Also returns that completion (where the search
    /// is stuck if there is no choice).
    ///
    /// * A read that returned `state` is the only choice when there is one: reads do not
    ///   change the register, so if any order works from here, the one with that read moved to
    ///   the front works too.
    /// * No write while the value awaits a read (see `awaits_read`).
    /// * Otherwise one write per value, the one due first, and one write for all values no
    ///   read is left to return. Exchange argument: if an order works starting with write B,
    ///   and A writes a value that is the same or just as unreadable and is due no later, then
    ///   swapping A and B gives an order that works too: nothing can tell the values apart, and
    ///   B still takes effect before A was due, so before B is.
    /// * Earliest deadline first: the operation due first is the one most likely needed now.
    fn frame(&self, state: u32) -> (Frame, usize) {
        // (value class, write due first in it)
        let mut writes: Vec<(u32, usize)> = Vec::new();
        let mut e = self.next[self.head()];
        while e != NIL && self.events[e].is_call {
            let op = self.events[e].op;
            match self.ops[op].writes {
                None if self.ops[op].reads == state => {
                    let frame = Frame {
                        state,
                        choices: vec![op],
                        tried: 0,
                    };
                    return (frame, e);
                }
                None => {}
                Some(v) => {
                    let class = self.memo_value(v);
                    match writes.iter_mut().find(|(c, _)| *c == class) {
                        Some((_, best)) if self.due(op) < self.due(*best) => *best = op,
                        Some(_) => {}
                        None => writes.push((class, op)),
                    }
                }
            }
            e = self.next[e];
        }
        if self.awaits_read(state).is_some() {
            writes.clear();
        }
        let mut choices: Vec<usize> = writes.into_iter().map(|(_, op)| op).collect();
        choices.sort_by_key(|&op| self.due(op));
        let frame = Frame {
            state,
            choices,
            tried: 0,
        };
        (frame, e)
    }

    /// Depth-first search for an order of the operations that respects real time and the
    /// register's semantics, containing every operation that has a deadline.
    ///
    /// `seen` holds every (linearized set, value) reached. A state reached again cannot
    /// succeed: the search returns as soon as it succeeds, so the first visit's subtree was
    /// searched completely, without success.
    fn run(mut self, value_names: &[Option<String>]) -> (Verdict, usize) {
        let mut required_left = self.ops.iter().filter(|op| op.deadline.is_some()).count();
        let mut linearized = vec![0u64; self.ops.len().div_ceil(64).max(1)];
        let mut seen: HashSet<Box<[u32]>> = HashSet::new();
        let mut scratch: Vec<u32> = Vec::new();
        let mut stuck: Option<Stuck> = None;
        let mut frames: Vec<Frame> = Vec::new();

        let mut state = 0u32;
        loop {
            if required_left == 0 {
                return (Verdict::Linearizable, seen.len());
            }
            // Arrived at a new state.
            let (frame, first_return) = self.frame(state);
            if frame.choices.is_empty()
                && first_return != NIL
                && stuck.as_ref().is_none_or(|s| first_return > s.event)
            {
                stuck = Some(Stuck {
                    event: first_return,
                    linearized: frames.len(),
                    state,
                    awaited: self.awaits_read(state),
                });
            }
            frames.push(frame);

            // Take the next untried choice leading to an unseen state, backtracking as needed.
            loop {
                let Some(top) = frames.last_mut() else {
                    let reason = self.explain(stuck, value_names);
                    return (Verdict::Violation(reason), seen.len());
                };
                if top.tried == top.choices.len() {
                    // Exhausted: undo the step that led here and go on with the parent's choices.
                    frames.pop();
                    if let Some(parent) = frames.last() {
                        let op = parent.choices[parent.tried - 1];
                        state = parent.state;
                        set_bit(&mut linearized, op, false);
                        self.unlift(op);
                        if self.ops[op].deadline.is_some() {
                            required_left += 1;
                        }
                    }
                    continue;
                }
                let op = top.choices[top.tried];
                top.tried += 1;
                let after = self.ops[op].writes.unwrap_or(state);
                set_bit(&mut linearized, op, true);
                self.lift(op);
                encode_state(&linearized, self.memo_value(after), &mut scratch);
                if seen.contains(scratch.as_slice()) {
                    self.unlift(op);
                    set_bit(&mut linearized, op, false);
                    continue;
                }
                if seen.len() >= self.max_states {
                    return (Verdict::Undecided, seen.len());
                }
                seen.insert(scratch.clone().into_boxed_slice());
                if self.ops[op].deadline.is_some() {
                    required_left -= 1;
                }
                state = after;
                break;
            }
        }
    }

    fn explain(&self, stuck: Option<Stuck>, value_names: &[Option<String>]) -> String {
        let Some(stuck) = stuck else {
            return "no order of the operations on this key explains the reads".to_string();
        };
        let blocked = &self.ops[self.events[stuck.event].op];
        let held = &value_names[stuck.state as usize];
        let what = match (blocked.writes, blocked.op.outcome) {
            (None, _) => {
                "no order of this key's operations that respects real time lets the register \
                 hold that value then"
            }
            (Some(_), Outcome::Unknown) => {
                "a read returned its value, so it took effect before that read completed, but \
                 no order that respects real time allows it there"
            }
            (Some(_), _) => {
                "no place for it between its invocation and completion is consistent with the \
                 reads around it"
            }
        };
        let waiting = match stuck.awaited {
            Some(read) => format!(
                ", and {} still had to return that value, so no write could come before it",
                self.ops[read].op
            ),
            None => String::new(),
        };
        format!(
            "{}: {what}. Deepest attempt: {} of {} operations ordered, the register holding \
             {held:?} when this operation had to take effect{waiting}",
            blocked.op,
            stuck.linearized,
            self.ops.len()
        )
    }
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

/// Memo key for (linearized set, register value): the positions where the bitset changes
/// between 0 and 1, then the value. Ops are indexed in invocation order and get linearized
/// roughly in that order, so the set is a few runs and its encoding stays short however long
/// the history is. For a fixed bitset length the encoding is injective.
fn encode_state(bits: &[u64], value: u32, out: &mut Vec<u32>) {
    out.clear();
    let mut carry = 0u64;
    for (w, &word) in bits.iter().enumerate() {
        let mut changes = word ^ ((word << 1) | carry);
        carry = word >> 63;
        while changes != 0 {
            let bit = changes.trailing_zeros();
            out.push(w as u32 * 64 + bit);
            changes &= changes - 1;
        }
    }
    out.push(value);
}
