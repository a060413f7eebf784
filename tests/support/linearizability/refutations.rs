//! Quick refutations: cheap, exact proofs that a key's history is not linearizable (step 2 of
//! the algorithm in the module docs), tried before the search. Each gives a precise reason.

use std::collections::HashMap;

use super::{Outcome, SearchOp};

/// A cheap, exact refutation: a successful read of v although every write of v that could
/// have taken effect before the read completed had certainly been overwritten before the read
/// was invoked (another write of a different value started after it completed and completed
/// before the read started). Covers stale reads and lost writes whatever the values, in
/// O(n log n).
pub(super) fn stale_read(ops: &[SearchOp], value_names: &[Option<String>]) -> Option<String> {
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
pub(super) fn opposed_values(ops: &[SearchOp], value_names: &[Option<String>]) -> Option<String> {
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
