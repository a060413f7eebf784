//! The checks every simulated run must pass, on the clients' history and the nodes' final
//! states.

use std::collections::{BTreeMap, BTreeSet};

use super::kv::SimKv;

// The linearizability checker the chaos tests use (std + serde only, shared by path); its own
// module docs (inner, so their links resolve inside it) describe it.
#[allow(clippy::all, missing_docs)]
#[path = "../../tests/support/linearizability/mod.rs"]
pub mod linearizability;

use linearizability::{Op, OpKind, Outcome};

/// The clients' history is linearizable, key by key. An undecided key (search budget spent)
/// fails too: a run must give a verdict.
pub fn linearizable(ops: &[Op]) -> Vec<String> {
    let report = linearizability::check(ops);
    let mut failures: Vec<String> = report
        .violations
        .iter()
        .map(|v| format!("not linearizable: {v}"))
        .collect();
    for key in &report.undecided {
        failures.push(format!("linearizability undecided for key {key:?}"));
    }
    failures
}

/// Every member ended with the same state, and that state accounts for the history: every
/// acknowledged write was applied (none lost), no write that got a definite error was applied,
/// and no write was applied twice.
pub fn final_states(ops: &[Op], states: &BTreeMap<u64, SimKv>) -> Vec<String> {
    let mut failures = Vec::new();
    let Some((&first_id, first)) = states.iter().next() else {
        return vec!["no member's final state could be read".into()];
    };
    for (id, state) in states {
        if state != first {
            failures.push(format!(
                "node {id} and node {first_id} did not converge: {} vs {} writes applied{}",
                state.writes.len(),
                first.writes.len(),
                first_difference(&state.writes, &first.writes)
            ));
        }
    }
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, value) in &first.writes {
        *applied.entry(value.as_str()).or_default() += 1;
    }
    for (value, times) in &applied {
        if *times > 1 {
            failures.push(format!("write {value:?} was applied {times} times"));
        }
    }
    let mut seen = BTreeSet::new();
    for op in ops {
        let OpKind::Write { value } = &op.kind else {
            continue;
        };
        seen.insert(value.as_str());
        let in_state = applied.contains_key(value.as_str());
        match op.outcome {
            Outcome::Ok if !in_state => {
                failures.push(format!("acknowledged write lost: {op}"));
            }
            Outcome::Fail if in_state => failures.push(format!(
                "a write answered with a definite error was applied: {op}"
            )),
            _ => {}
        }
    }
    for value in applied.keys() {
        if !seen.contains(value) && !value.starts_with("barrier") {
            failures.push(format!("applied a write no client made: {value:?}"));
        }
    }
    failures
}

fn first_difference(a: &[(String, String)], b: &[(String, String)]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(" (first difference at write {i}: {:?} vs {:?})", a[i], b[i]),
        None => String::new(),
    }
}
