//! The depth-first search for a linearization of one key (step 3 of the algorithm in the
//! module docs): Wing & Gong / Lowe with a memo of visited states and the exact pruning rules
//! listed there.

use std::collections::HashSet;

use super::{Outcome, SearchOp, Verdict};

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

pub(super) struct Search<'s, 'a> {
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
    pub(super) fn new(ops: &'s [SearchOp<'a>], values: usize, max_states: usize) -> Self {
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
    pub(super) fn run(mut self, value_names: &[Option<String>]) -> (Verdict, usize) {
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
