//! Self-tests of the linearizability checker the chaos tests rely on: it must accept every
//! linearizable register history (including ones with failed and unknown operations) and reject
//! known non-linearizable ones, with a reason that points at the offending operation.

mod support;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::linearizability::{
    check, check_with, write_history_json, CheckOptions, CheckReport, History, Op, OpKind, Outcome,
};

const K: &str = "k";

fn write(client: u64, value: &str, invoke_ns: u64, complete_ns: u64, outcome: Outcome) -> Op {
    write_key(client, K, value, invoke_ns, complete_ns, outcome)
}

fn write_key(
    client: u64,
    key: &str,
    value: &str,
    invoke_ns: u64,
    complete_ns: u64,
    outcome: Outcome,
) -> Op {
    Op {
        client,
        key: key.to_string(),
        kind: OpKind::Write {
            value: value.to_string(),
        },
        invoke_ns,
        complete_ns,
        outcome,
    }
}

fn read(client: u64, value: Option<&str>, invoke_ns: u64, complete_ns: u64) -> Op {
    read_key(client, K, value, invoke_ns, complete_ns, Outcome::Ok)
}

fn read_key(
    client: u64,
    key: &str,
    value: Option<&str>,
    invoke_ns: u64,
    complete_ns: u64,
    outcome: Outcome,
) -> Op {
    Op {
        client,
        key: key.to_string(),
        kind: OpKind::Read {
            value: value.map(str::to_string),
        },
        invoke_ns,
        complete_ns,
        outcome,
    }
}

fn assert_linearizable(ops: &[Op]) -> CheckReport {
    let report = check(ops);
    assert!(
        report.is_linearizable() && report.is_decided(),
        "expected linearizable: {report}"
    );
    report
}

fn assert_violation(ops: &[Op], key: &str) -> CheckReport {
    let report = check(ops);
    assert!(report.is_decided(), "expected a verdict: {report}");
    assert!(!report.is_linearizable(), "expected a violation: {report}");
    assert_eq!(report.violations.len(), 1, "{report}");
    assert_eq!(report.violations[0].key, key, "{report}");
    report
}

#[test]
fn an_empty_history_is_linearizable() {
    let report = assert_linearizable(&[]);
    assert_eq!((report.ops_checked, report.keys), (0, 0));
}

#[test]
fn reading_an_absent_key_returns_none() {
    assert_linearizable(&[read(1, None, 0, 10)]);
    assert_violation(&[read(1, Some("x"), 0, 10)], K);
}

#[test]
fn sequential_write_then_read_of_that_value_passes() {
    assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Ok),
        read(2, Some("a"), 20, 30),
        write(1, "b", 40, 50, Outcome::Ok),
        read(1, Some("b"), 60, 70),
    ]);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_the_old_or_the_new_value() {
    for seen in [None, Some("a")] {
        assert_linearizable(&[write(1, "a", 0, 100, Outcome::Ok), read(2, seen, 10, 20)]);
    }
}

#[test]
fn a_read_may_see_a_write_whose_interval_only_touches_its_own() {
    // Equal timestamps count as concurrent, so neither order is forced.
    assert_linearizable(&[write(1, "a", 0, 10, Outcome::Ok), read(2, None, 10, 20)]);
    assert_linearizable(&[
        read(2, Some("a"), 0, 10),
        write(1, "a", 10, 20, Outcome::Ok),
    ]);
}

#[test]
fn stale_read_after_a_completed_write_fails() {
    let report = assert_violation(
        &[write(1, "a", 0, 10, Outcome::Ok), read(2, None, 20, 30)],
        K,
    );
    let violation = &report.violations[0];
    // The reason names the read that cannot be explained.
    assert!(
        violation.reason.contains("client 2 read None"),
        "{violation}"
    );
    assert_eq!(violation.ops.len(), 2);
}

#[test]
fn read_of_a_value_never_written_fails() {
    let report = assert_violation(
        &[
            write(1, "a", 0, 10, Outcome::Ok),
            read(2, Some("zzz"), 20, 30),
        ],
        K,
    );
    assert!(
        report.violations[0].reason.contains("\"zzz\""),
        "{}",
        report.violations[0]
    );
}

#[test]
fn read_of_a_value_before_its_write_was_invoked_fails() {
    assert_violation(
        &[
            read(2, Some("a"), 0, 10),
            write(1, "a", 20, 30, Outcome::Ok),
        ],
        K,
    );
}

#[test]
fn a_lost_acknowledged_write_fails() {
    // "b" was acknowledged after "a" completed; a later read going back to "a" lost it.
    let report = assert_violation(
        &[
            write(1, "a", 0, 10, Outcome::Ok),
            read(2, Some("a"), 15, 18),
            write(1, "b", 20, 30, Outcome::Ok),
            read(2, Some("a"), 40, 50),
        ],
        K,
    );
    assert!(
        report.violations[0]
            .reason
            .contains("client 2 read Some(\"a\") from \"k\" over [40, 50]"),
        "{}",
        report.violations[0]
    );
}

#[test]
fn reads_cannot_flip_between_two_settled_concurrent_writes() {
    // Either write may win, but once both completed, later reads must agree on the winner.
    let settled_then = |first: &str, second: &str| {
        vec![
            write(1, "a", 0, 50, Outcome::Ok),
            write(2, "b", 10, 60, Outcome::Ok),
            read(3, Some(first), 70, 80),
            read(4, Some(second), 90, 100),
        ]
    };
    assert_linearizable(&settled_then("a", "a"));
    assert_linearizable(&settled_then("b", "b"));
    assert_violation(&settled_then("a", "b"), K);
    assert_violation(&settled_then("b", "a"), K);
}

#[test]
fn reads_during_concurrent_writes_need_a_consistent_order() {
    // Two overlapping writes, two overlapping reads seeing them in opposite orders: fine as
    // long as real time allows one order that explains both reads.
    assert_linearizable(&[
        write(1, "a", 0, 100, Outcome::Ok),
        write(2, "b", 0, 100, Outcome::Ok),
        read(3, Some("b"), 10, 20),
        read(3, Some("a"), 30, 40),
    ]);
    // Reversed: a sequential reader sees "a" then "b" then "a" again, which needs "a" twice.
    assert_violation(
        &[
            write(1, "a", 0, 100, Outcome::Ok),
            write(2, "b", 0, 100, Outcome::Ok),
            read(3, Some("a"), 10, 20),
            read(3, Some("b"), 30, 40),
            read(3, Some("a"), 50, 60),
        ],
        K,
    );
}

#[test]
fn reads_cannot_flip_between_settled_writes_even_with_repeated_values() {
    // "a" is written twice, so only the search can tell: once both concurrent writes are
    // done, a read of "a" then a read of "b" would need "a" written after "b" and "b" after
    // "a".
    let ops = vec![
        write(1, "a", 0, 5, Outcome::Ok),
        write(1, "a", 6, 50, Outcome::Ok),
        write(2, "b", 10, 60, Outcome::Ok),
        read(3, Some("a"), 70, 80),
        read(4, Some("b"), 90, 100),
    ];
    let report = assert_violation(&ops, K);
    let reason = &report.violations[0].reason;
    // It names the write that could not be placed and the read that kept it out.
    assert!(reason.contains("client 2 wrote \"b\""), "{reason}");
    assert!(reason.contains("client 3 read Some(\"a\")"), "{reason}");
    assert!(
        report.states_explored > 0,
        "decided by the search: {report}"
    );

    let mut settled = ops.clone();
    settled[4] = read(4, Some("a"), 90, 100);
    assert_linearizable(&settled);
}

#[test]
fn an_unknown_write_of_a_repeated_value_is_optional() {
    // The second "a" may or may not have happened; the reads are explained either way.
    assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Ok),
        write(2, "a", 20, 30, Outcome::Unknown),
        write(3, "b", 40, 50, Outcome::Ok),
        read(4, Some("b"), 60, 70),
    ]);
    // Here it must have happened after "b", or the last read cannot see "a".
    assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Ok),
        write(2, "a", 20, 30, Outcome::Unknown),
        write(3, "b", 40, 50, Outcome::Ok),
        read(4, Some("b"), 60, 70),
        read(4, Some("a"), 80, 90),
    ]);
    // But not before its invocation.
    assert_violation(
        &[
            write(1, "a", 0, 10, Outcome::Ok),
            write(3, "b", 40, 50, Outcome::Ok),
            read(4, Some("b"), 60, 70),
            read(4, Some("a"), 80, 90),
            write(2, "a", 100, 110, Outcome::Unknown),
        ],
        K,
    );
}

#[test]
fn an_unknown_write_that_later_shows_up_in_a_read_passes() {
    // The client gave up at 10; the write took effect later.
    assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Unknown),
        read(2, None, 20, 30),
        read(2, Some("a"), 1_000, 1_010),
        read(3, Some("a"), 2_000, 2_010),
    ]);
}

#[test]
fn an_unknown_write_that_never_shows_up_passes() {
    assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Unknown),
        read(2, None, 20, 30),
        read(2, None, 1_000, 1_010),
    ]);
    // Also when other writes come after it and are read.
    assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Ok),
        write(1, "u", 20, 30, Outcome::Unknown),
        write(2, "b", 40, 50, Outcome::Ok),
        read(3, Some("b"), 60, 70),
        read(3, Some("a"), 0, 15),
    ]);
}

#[test]
fn an_unknown_write_cannot_take_effect_before_it_was_invoked() {
    assert_violation(
        &[
            read(2, Some("a"), 0, 10),
            write(1, "a", 20, 30, Outcome::Unknown),
        ],
        K,
    );
}

#[test]
fn an_unknown_write_that_appears_and_then_disappears_fails() {
    assert_violation(
        &[
            write(1, "a", 0, 10, Outcome::Ok),
            write(2, "u", 20, 30, Outcome::Unknown),
            read(3, Some("u"), 40, 50),
            read(3, Some("a"), 60, 70),
        ],
        K,
    );
}

#[test]
fn a_failed_write_whose_value_is_read_fails() {
    let report = assert_violation(
        &[
            write(1, "a", 0, 10, Outcome::Fail),
            read(2, Some("a"), 20, 30),
        ],
        K,
    );
    assert!(
        report.violations[0].reason.contains("failed"),
        "{}",
        report.violations[0]
    );
}

#[test]
fn failed_and_unknown_reads_carry_no_information() {
    let report = assert_linearizable(&[
        write(1, "a", 0, 10, Outcome::Ok),
        read_key(2, K, Some("garbage"), 20, 30, Outcome::Fail),
        read_key(2, K, None, 40, 50, Outcome::Unknown),
        read(3, Some("a"), 60, 70),
    ]);
    assert_eq!(report.ops_checked, 2);
}

#[test]
fn a_malformed_operation_is_reported() {
    let report = assert_violation(&[write(1, "a", 10, 5, Outcome::Ok)], K);
    assert!(
        report.violations[0].reason.contains("malformed"),
        "{}",
        report.violations[0]
    );
}

#[test]
fn keys_are_checked_independently_and_a_violation_names_its_key() {
    let ops = vec![
        write_key(1, "good", "a", 0, 10, Outcome::Ok),
        write_key(1, "bad", "a", 0, 10, Outcome::Ok),
        // On "good" nothing was written after "a": reading it back is right.
        read_key(2, "good", Some("a"), 20, 30, Outcome::Ok),
        // "bad" was overwritten with "b" before this read started.
        write_key(3, "bad", "b", 12, 15, Outcome::Ok),
        read_key(2, "bad", Some("a"), 20, 30, Outcome::Ok),
        // The same value on another key is another register's business.
        write_key(4, "other", "b", 0, 10, Outcome::Ok),
        read_key(4, "other", Some("b"), 40, 50, Outcome::Ok),
    ];
    let report = assert_violation(&ops, "bad");
    assert_eq!(report.keys, 3);
    assert!(
        report.violations[0].ops.iter().all(|op| op.key == "bad"),
        "{:?}",
        report.violations[0].ops
    );
    assert_eq!(report.violations[0].ops.len(), 3);

    // A value written to one key does not explain a read of another.
    let mut cross = ops.clone();
    cross.push(read_key(4, "good", Some("b"), 60, 70, Outcome::Ok));
    let report = check(&cross);
    let keys: Vec<&str> = report.violations.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["bad", "good"], "{report}");
}

#[test]
fn a_search_over_budget_is_undecided_not_a_violation() {
    let ops = simulate(&Sim {
        seed: 7,
        clients: 8,
        ops: 200,
        keys: 1,
        repeat_values: false,
    });
    let report = check_with(
        &ops,
        &CheckOptions {
            max_states_per_key: 3,
            ..CheckOptions::default()
        },
    );
    assert_eq!(report.undecided, ["key-0"], "{report}");
    assert!(report.is_linearizable(), "{report}");
    assert!(!report.is_decided());
    // The same history with the default budget gets its verdict.
    assert_linearizable(&ops);
}

#[test]
fn the_history_recorder_keeps_every_operation_from_every_thread() {
    let history = std::sync::Arc::new(History::new());
    assert!(history.is_empty());
    std::thread::scope(|s| {
        for client in 0..4u64 {
            let history = history.clone();
            s.spawn(move || {
                for i in 0..100 {
                    let invoke_ns = history.now_ns();
                    let complete_ns = history.now_ns();
                    assert!(complete_ns >= invoke_ns);
                    history.record(write_key(
                        client,
                        &format!("key-{client}"),
                        &format!("{client}-{i}"),
                        invoke_ns,
                        complete_ns,
                        Outcome::Ok,
                    ));
                }
            });
        }
    });
    assert_eq!(history.len(), 400);
    let ops = history.ops();
    for client in 0..4u64 {
        let mine: Vec<String> = ops
            .iter()
            .filter(|op| op.client == client)
            .map(|op| match &op.kind {
                OpKind::Write { value } => value.clone(),
                OpKind::Read { .. } => unreachable!(),
            })
            .collect();
        let expected: Vec<String> = (0..100).map(|i| format!("{client}-{i}")).collect();
        assert_eq!(mine, expected);
    }
    assert_linearizable(&ops);
}

#[test]
fn write_history_json_writes_a_parseable_document() {
    let ops = vec![write(1, "a", 0, 10, Outcome::Ok), read(2, None, 20, 30)];
    let report = check(&ops);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.json");
    write_history_json(&ops, &report, &path).expect("write");

    let text = std::fs::read_to_string(&path).expect("read");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("parse");
    assert_eq!(doc["linearizable"], serde_json::Value::Bool(false));
    assert_eq!(doc["report"]["violations"][0]["key"], K);
    let back: Vec<Op> = serde_json::from_value(doc["ops"].clone()).expect("ops");
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].kind, OpKind::Read { value: None });
    let report_back: CheckReport = serde_json::from_value(doc["report"].clone()).expect("report");
    assert_eq!(report_back.violations.len(), 1);
}

// ---- Randomized histories from a simulated linearizable register ----

struct Sim {
    seed: u64,
    clients: u64,
    ops: usize,
    keys: usize,
    /// Draw write values from a small sliding range, so values repeat (and the search, not the
    /// single-writer shortcut, has to decide). Otherwise every write value is unique.
    repeat_values: bool,
}

/// A history produced by a correct register: every operation that takes effect does so at a
/// random instant inside its interval (an unknown write: any time after its invocation, or
/// never), and reads return the value at that instant. About 5% of operations fail and 5% end
/// unknown.
fn simulate(sim: &Sim) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(sim.seed);
    let mut ops: Vec<Op> = Vec::with_capacity(sim.ops);
    // (linearization point, index into ops) of the operations that take effect.
    let mut effects: Vec<(u64, usize)> = Vec::new();
    let mut clock: Vec<u64> = (0..sim.clients).map(|_| rng.random_range(0..100)).collect();
    for i in 0..sim.ops {
        let client = rng.random_range(0..sim.clients);
        let invoke_ns = clock[client as usize] + rng.random_range(0..50);
        let long = rng.random_bool(0.05);
        let complete_ns = invoke_ns + rng.random_range(1..if long { 3_000 } else { 300 });
        clock[client as usize] = complete_ns + 1;
        let key = format!("key-{}", rng.random_range(0..sim.keys));
        let outcome = match rng.random_range(0..100) {
            0..5 => Outcome::Fail,
            5..10 => Outcome::Unknown,
            _ => Outcome::Ok,
        };
        let kind = if rng.random_bool(0.5) {
            let value = if sim.repeat_values {
                format!("v{}", i / 40 + rng.random_range(0..3))
            } else {
                format!("v{i}")
            };
            OpKind::Write { value }
        } else {
            OpKind::Read {
                value: Some("unread".to_string()),
            }
        };
        let effect_at = match (&kind, outcome) {
            (_, Outcome::Ok) => Some(rng.random_range(invoke_ns..=complete_ns)),
            (OpKind::Write { .. }, Outcome::Unknown) if rng.random_bool(0.5) => {
                Some(rng.random_range(invoke_ns..=invoke_ns + 5_000))
            }
            _ => None,
        };
        if let Some(at) = effect_at {
            effects.push((at, ops.len()));
        }
        ops.push(Op {
            client,
            key,
            kind,
            invoke_ns,
            complete_ns,
            outcome,
        });
    }
    effects.sort_unstable();
    let mut registers: HashMap<String, Option<String>> = HashMap::new();
    for (_, i) in effects {
        let op = &mut ops[i];
        let register = registers.entry(op.key.clone()).or_default();
        match &mut op.kind {
            OpKind::Write { value } => *register = Some(value.clone()),
            OpKind::Read { value } => *value = register.clone(),
        }
    }
    ops
}

fn written_value(op: &Op) -> Option<&str> {
    match &op.kind {
        OpKind::Write { value } if op.outcome != Outcome::Fail => Some(value),
        _ => None,
    }
}

/// Turn one successful read in the second half of `key`'s history into a stale read: it
/// returns a value v although every write of v (all acknowledged) completed before another
/// acknowledged write W2 started, and W2 completed before the read started. No order can
/// explain that. Picks the most recent such v, the hardest to tell from a legitimate read.
fn make_one_read_stale(ops: &mut [Op], key: &str) -> usize {
    let reads: Vec<usize> = (0..ops.len())
        .filter(|&i| {
            ops[i].key == key
                && ops[i].outcome == Outcome::Ok
                && matches!(ops[i].kind, OpKind::Read { .. })
        })
        .collect();
    let writes: Vec<&Op> = ops
        .iter()
        .filter(|op| op.key == key && written_value(op).is_some())
        .collect();
    let stale_before = |w2: &Op| -> Option<String> {
        writes
            .iter()
            .filter(|w1| w1.complete_ns < w2.invoke_ns && written_value(w1) != written_value(w2))
            .filter(|w1| {
                writes
                    .iter()
                    .filter(|w| written_value(w) == written_value(w1))
                    .all(|w| w.outcome == Outcome::Ok && w.complete_ns < w2.invoke_ns)
            })
            .max_by_key(|w1| w1.complete_ns)
            .and_then(|w1| written_value(w1).map(str::to_string))
    };
    for &r in &reads[reads.len() / 2..] {
        let Some(w2) = writes
            .iter()
            .filter(|w| w.outcome == Outcome::Ok && w.complete_ns < ops[r].invoke_ns)
            .max_by_key(|w| w.complete_ns)
        else {
            continue;
        };
        if let Some(stale) = stale_before(w2) {
            ops[r].kind = OpKind::Read { value: Some(stale) };
            return r;
        }
    }
    panic!("no read with a value that was certainly overwritten before it started");
}

#[test]
fn simulated_linearizable_histories_pass() {
    for (seed, keys) in [(1, 1), (2, 1), (3, 4)] {
        let ops = simulate(&Sim {
            seed,
            clients: 8,
            ops: 2_000,
            keys,
            repeat_values: false,
        });
        let report = assert_linearizable(&ops);
        assert_eq!(report.keys, keys);
        assert!(report.ops_checked > 1_700, "{report}");
    }
}

#[test]
fn a_simulated_history_with_one_stale_read_fails_on_that_read() {
    for (seed, keys) in [(1, 1), (2, 1), (3, 4)] {
        let sim = Sim {
            seed,
            clients: 8,
            ops: 2_000,
            keys,
            repeat_values: false,
        };
        let mut ops = simulate(&sim);
        let r = make_one_read_stale(&mut ops, "key-0");
        let report = assert_violation(&ops, "key-0");
        let read = ops[r].to_string();
        assert!(
            report.violations[0].reason.contains(&read),
            "expected the reason to name {read}: {report}"
        );
    }
}

#[test]
fn simulated_histories_with_repeated_values_pass_and_a_stale_read_fails() {
    for seed in [1, 3, 5] {
        let sim = Sim {
            seed,
            clients: 8,
            ops: 2_000,
            keys: 1,
            repeat_values: true,
        };
        let mut ops = simulate(&sim);
        assert_linearizable(&ops);
        let r = make_one_read_stale(&mut ops, "key-0");
        let report = assert_violation(&ops, "key-0");
        let read = ops[r].to_string();
        assert!(
            report.violations[0].reason.contains(&read),
            "expected the reason to name {read}: {report}"
        );
    }
}

#[test]
fn the_search_alone_finds_a_stale_read_in_a_long_history() {
    let mut ops = simulate(&Sim {
        seed: 1,
        clients: 8,
        ops: 2_000,
        keys: 1,
        repeat_values: false,
    });
    let search_only = CheckOptions {
        quick_refutations: false,
        ..CheckOptions::default()
    };
    let report = check_with(&ops, &search_only);
    assert!(report.is_linearizable() && report.is_decided(), "{report}");
    make_one_read_stale(&mut ops, "key-0");
    let report = check_with(&ops, &search_only);
    assert!(report.is_decided(), "{report}");
    assert!(!report.is_linearizable(), "{report}");
}

#[test]
fn a_simulated_history_with_one_read_of_a_value_never_written_fails() {
    let mut ops = simulate(&Sim {
        seed: 4,
        clients: 8,
        ops: 2_000,
        keys: 1,
        repeat_values: false,
    });
    let r = ops
        .iter()
        .rposition(|op| op.outcome == Outcome::Ok && matches!(op.kind, OpKind::Read { .. }))
        .expect("a read");
    ops[r].kind = OpKind::Read {
        value: Some("never written".to_string()),
    };
    assert_violation(&ops, "key-0");
}

#[test]
fn a_long_busy_single_key_history_gets_a_verdict() {
    // 5,000 operations from 16 clients on one key: many overlapping intervals. No timing
    // assertion, only that the search finishes within its default budget.
    let sim = Sim {
        seed: 5,
        clients: 16,
        ops: 5_000,
        keys: 1,
        repeat_values: false,
    };
    let ops = simulate(&sim);
    assert_linearizable(&ops);
    let mut stale = ops.clone();
    make_one_read_stale(&mut stale, "key-0");
    assert_violation(&stale, "key-0");
}

// ---- Agreement with a brute-force reference on small random histories ----

/// The definition, executed directly: try every order of the operations that respects real
/// time, where a successful operation must appear, an unknown write may or may not, and
/// failed operations and unsuccessful reads are left out.
fn brute_force_linearizable(ops: &[Op]) -> bool {
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|op| {
            matches!(
                (&op.kind, op.outcome),
                (_, Outcome::Ok) | (OpKind::Write { .. }, Outcome::Unknown)
            )
        })
        .collect();
    // Real time: `a` must come before `b` when it completed before `b` was invoked (an unknown
    // write never completes).
    let before = |a: &Op, b: &Op| a.outcome == Outcome::Ok && a.complete_ns < b.invoke_ns;
    fn extend(
        ops: &[&Op],
        before: &dyn Fn(&Op, &Op) -> bool,
        placed: &mut Vec<bool>,
        state: Option<&str>,
    ) -> bool {
        if ops
            .iter()
            .zip(placed.iter())
            .all(|(op, &p)| p || op.outcome != Outcome::Ok)
        {
            return true;
        }
        for i in 0..ops.len() {
            let ready = !placed[i]
                && (0..ops.len()).all(|j| placed[j] || j == i || !before(ops[j], ops[i]));
            if !ready {
                continue;
            }
            let after = match &ops[i].kind {
                OpKind::Write { value } => Some(value.as_str()),
                OpKind::Read { value } if value.as_deref() == state => state,
                OpKind::Read { .. } => continue,
            };
            placed[i] = true;
            if extend(ops, before, placed, after) {
                return true;
            }
            placed[i] = false;
        }
        false
    }
    extend(&ops, &before, &mut vec![false; ops.len()], None)
}

fn random_small_history(rng: &mut StdRng, values: &[&str]) -> Vec<Op> {
    let n = rng.random_range(1..=7);
    (0..n)
        .map(|client| {
            let invoke_ns = rng.random_range(0..15);
            let complete_ns = invoke_ns + rng.random_range(0..8);
            let outcome = match rng.random_range(0..10) {
                0 => Outcome::Fail,
                1 | 2 => Outcome::Unknown,
                _ => Outcome::Ok,
            };
            let pick = rng.random_range(0..values.len());
            let kind = if rng.random_bool(0.5) {
                OpKind::Write {
                    value: values[pick].to_string(),
                }
            } else {
                let value = rng.random_range(0..=values.len());
                OpKind::Read {
                    value: values.get(value).map(|v| v.to_string()),
                }
            };
            Op {
                client,
                key: K.to_string(),
                kind,
                invoke_ns,
                complete_ns,
                outcome,
            }
        })
        .collect()
}

#[test]
fn verdicts_agree_with_brute_force_on_small_random_histories() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut violations = 0;
    for round in 0..30_000 {
        let values: &[&str] = if round % 2 == 0 {
            &["a", "b"]
        } else {
            &["a", "b", "c", "d"]
        };
        let ops = random_small_history(&mut rng, values);
        let expected = brute_force_linearizable(&ops);
        // With the quick refutations, and the search on its own.
        for quick_refutations in [true, false] {
            let options = CheckOptions {
                quick_refutations,
                ..CheckOptions::default()
            };
            let report = check_with(&ops, &options);
            assert!(report.is_decided(), "{report}");
            assert_eq!(
                report.is_linearizable(),
                expected,
                "round {round}, {options:?}: checker says {report}\nfor {ops:#?}"
            );
        }
        violations += usize::from(!expected);
    }
    // Both kinds of history were exercised.
    assert!((3_000..27_000).contains(&violations), "{violations}");
}
