//! The session table: replicated state that makes a retried command apply at most once.
//!
//! A client that gets no definite answer for a write (a timeout, a leader change, a dropped
//! connection) cannot tell whether it applied. Retrying blindly may apply it twice; not retrying
//! may lose it. With a session (the client sessions of the Raft dissertation, section 6.3) the
//! client numbers its commands, and every node remembers, per session, the answers of the
//! commands it applied. A retry of a number already applied is answered from the table without
//! calling the state machine, so retrying until an answer arrives applies every command exactly
//! once.
//!
//! # How it is kept identical on every node
//!
//! The table changes only when entries are applied, and only as a function of the log:
//! - a session is opened by a `FrameworkEntry::OpenSession` entry, and its id is that entry's
//!   log index (unique, and never handed out again);
//! - a command carries `(session, seq, acked)` in front of the user's bytes (`SessionCommand`,
//!   varints: a few bytes);
//!   applying it consults and updates the table;
//! - expiry is by count, never by a clock: when more than `max_sessions` sessions are open, the
//!   one used least recently (by log index) is dropped. The limit rides in every
//!   `OpenSession` entry, so nodes with different configurations still agree.
//!
//! The table is part of every snapshot (a trailer of the snapshot envelope) and is rebuilt from
//! the snapshot and the log after it on restart, exactly like the state machine.
//!
//! # The window, and why memory is bounded
//!
//! `acked` is the client's promise that it has the answers of every command numbered up to it.
//! Their answers are dropped, and a command numbered at or below `acked` is refused: it already
//! applied once and its client has the answer. A session keeps answers only for
//! `acked + 1 ..= acked + window`, and a command numbered beyond that is refused as well (a
//! `Session` never sends one: it waits for the window to move). So the table holds at most
//! `max_sessions * window` answers.
//!
//! # Invariants
//! - A command whose `(session, seq)` was applied is never given to the state machine again.
//! - Every refusal (unknown or expired session, a number outside the window) is decided the same
//!   way on every node and applies nothing: it is a definite answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest encoding of a session command's header: three LEB128 varints of at most 10 bytes.
pub const MAX_SESSION_HEADER_LEN: usize = 30;

/// The header of a command sent through a session: which session, which number, and up to which
/// number the client already has every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionCommand {
    /// The session's id (the log index of the entry that opened it).
    pub session: u64,
    /// The command's number in its session, from 1. A retry carries the same number.
    pub seq: u64,
    /// The client has the answers of every command numbered up to this one (below `seq`).
    pub acked: u64,
}

impl SessionCommand {
    /// `session`, `seq` and `seq - acked` as LEB128 varints, then `payload`. Every command of a
    /// session pays this in every node's log, so it is kept small: a few bytes for a client
    /// that acknowledges as it goes (`seq - acked` is then 1), against 24 as fixed words.
    /// An `acked` at or above `seq` (a client bug) becomes a distance of 0, so the command
    /// arrives acknowledging itself and the table refuses it like any acknowledged number.
    pub fn encode_with(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_SESSION_HEADER_LEN + payload.len());
        put_varint(&mut out, self.session);
        put_varint(&mut out, self.seq);
        put_varint(&mut out, self.seq.saturating_sub(self.acked));
        out.extend_from_slice(payload);
        out
    }

    /// The header and the user's bytes of an encoded session command; a header that is cut
    /// short or malformed is an `Encoding` error.
    pub fn split(bytes: &[u8]) -> Result<(SessionCommand, &[u8])> {
        let bad = || Error::Encoding("malformed session command header".into());
        let (session, rest) = take_varint(bytes).ok_or_else(bad)?;
        let (seq, rest) = take_varint(rest).ok_or_else(bad)?;
        let (distance, rest) = take_varint(rest).ok_or_else(bad)?;
        let header = SessionCommand {
            session,
            seq,
            acked: seq.saturating_sub(distance),
        };
        Ok((header, rest))
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A LEB128 varint and what follows it; `None` when cut short or longer than a u64.
fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        value |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// What applying `OpenSession` answers: the session id and its window, u64 big-endian each.
pub fn opened_answer(id: u64, window: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&window.to_be_bytes());
    out
}

/// The session id and window of an `opened_answer`.
pub fn decode_opened(bytes: &[u8]) -> Result<(u64, u64)> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
    };
    match (bytes.len(), word(0), word(8)) {
        (16, Some(id), Some(window)) => Ok((id, window)),
        _ => Err(Error::Encoding(format!(
            "a session's opening answered {} bytes, not an id and a window",
            bytes.len()
        ))),
    }
}

/// An answer as the table keeps it: what `apply` returned, or its error's message (always a
/// `StateMachine` error: see `applying::applied_with_error`).
type StoredAnswer = std::result::Result<Vec<u8>, String>;

/// One open session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    /// How many unacknowledged numbers the session may use, as its `OpenSession` said.
    window: u64,
    /// Log index of the last entry that used the session (opened it or carried a command).
    last_used: u64,
    /// The highest `acked` any of its commands carried.
    acked: u64,
    /// Answers of the applied commands numbered above `acked`.
    answers: BTreeMap<u64, StoredAnswer>,
}

/// What to do with a session command (see `SessionTable::check`).
#[derive(Debug)]
pub enum Verdict {
    /// A new number: give the command to the state machine, then `record` its answer.
    Apply,
    /// Already decided: answer this without applying anything.
    Answer(Result<Vec<u8>>),
}

/// Every open session and the answers it keeps. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTable {
    sessions: BTreeMap<u64, SessionState>,
    /// How many sessions are kept, as the latest `OpenSession` entry said.
    max_sessions: u64,
}

impl SessionTable {
    /// Open the session whose id is `index` (the log index of its `OpenSession` entry), then
    /// drop the least recently used sessions beyond `max_sessions`.
    pub fn open(&mut self, index: u64, max_sessions: u64, window: u64) -> u64 {
        self.max_sessions = max_sessions.max(1);
        self.sessions.insert(
            index,
            SessionState {
                window: window.max(1),
                last_used: index,
                acked: 0,
                answers: BTreeMap::new(),
            },
        );
        while self.sessions.len() as u64 > self.max_sessions {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.last_used, **id))
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.sessions.remove(&id);
                }
                None => break,
            }
        }
        index
    }

    /// Decide what applying `cmd` at log `index` does, and note the session's use and the
    /// client's acknowledgement. Call `record` after an `Apply` verdict.
    pub fn check(&mut self, index: u64, cmd: &SessionCommand) -> Verdict {
        let Some(state) = self.sessions.get_mut(&cmd.session) else {
            return Verdict::Answer(Err(Error::SessionExpired(format!(
                "session {} is not open: it was never opened or it expired (at most {} sessions \
                 are kept, the least recently used is dropped first)",
                cmd.session, self.max_sessions
            ))));
        };
        state.last_used = index;
        if cmd.acked > state.acked {
            state.acked = cmd.acked;
            // Usually one answer goes (a client acknowledges as it goes): pop from the front
            // rather than split the map, which allocates (the run loop applies every command).
            while let Some(oldest) = state.answers.first_entry() {
                if *oldest.key() > cmd.acked {
                    break;
                }
                let _dropped = oldest.remove();
            }
        }
        if let Some(answer) = state.answers.get(&cmd.seq) {
            return Verdict::Answer(answer.clone().map_err(Error::StateMachine));
        }
        if cmd.seq <= state.acked {
            return Verdict::Answer(Err(Error::SessionExpired(format!(
                "command {} of session {} was answered before (its client acknowledged it) and \
                 its answer is no longer kept; it is not applied again",
                cmd.seq, cmd.session
            ))));
        }
        if cmd.seq - state.acked > state.window {
            return Verdict::Answer(Err(Error::InvalidRequest(format!(
                "command {} of session {} is beyond its window of {} unacknowledged commands \
                 (acknowledged up to {}); it was not applied",
                cmd.seq, cmd.session, state.window, state.acked
            ))));
        }
        Verdict::Apply
    }

    /// Keep the answer of a command `check` said to apply.
    pub fn record(&mut self, cmd: &SessionCommand, answer: &Result<Vec<u8>>) {
        if let Some(state) = self.sessions.get_mut(&cmd.session) {
            let stored = match answer {
                Ok(bytes) => Ok(bytes.clone()),
                Err(Error::StateMachine(m)) => Err(m.clone()),
                Err(other) => Err(other.to_string()),
            };
            state.answers.insert(cmd.seq, stored);
        }
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open (the table then adds nothing to a snapshot).
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// How many answers the table keeps in all.
    #[cfg(test)]
    pub fn answers(&self) -> usize {
        self.sessions.values().map(|s| s.answers.len()).sum()
    }

    /// The table's bytes in a snapshot; empty when no session is open, so a cluster that never
    /// uses sessions writes the same snapshots as before they existed.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        Ok(bincode::serialize(self)?)
    }

    /// The table a snapshot carries (empty bytes: no session).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(SessionTable::default());
        }
        bincode::deserialize(bytes)
            .map_err(|e| Error::Encoding(format!("session table in the snapshot: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(session: u64, seq: u64, acked: u64) -> SessionCommand {
        SessionCommand {
            session,
            seq,
            acked,
        }
    }

    /// Apply `c` at `index` the way the run loop does, counting calls of the state machine.
    fn apply(
        table: &mut SessionTable,
        index: u64,
        c: SessionCommand,
        calls: &mut u64,
    ) -> Result<Vec<u8>> {
        match table.check(index, &c) {
            Verdict::Apply => {
                *calls += 1;
                let answer = Ok(calls.to_be_bytes().to_vec());
                table.record(&c, &answer);
                answer
            }
            Verdict::Answer(answer) => answer,
        }
    }

    #[test]
    fn a_header_round_trips_small_and_cut_or_overlong_ones_are_refused() {
        for c in [
            cmd(7, 3, 2),
            cmd(1 << 40, 1 << 33, 5),
            cmd(u64::MAX, u64::MAX, 0),
        ] {
            let bytes = c.encode_with(b"incr x");
            assert_eq!(
                SessionCommand::split(&bytes).expect("split"),
                (c, &b"incr x"[..])
            );
            let header_len = bytes.len() - 6;
            assert!(header_len <= MAX_SESSION_HEADER_LEN);
            for cut in 0..header_len {
                assert!(
                    matches!(
                        SessionCommand::split(&bytes[..cut]),
                        Err(Error::Encoding(_))
                    ),
                    "{c:?} cut at {cut}"
                );
            }
        }
        assert_eq!(
            cmd(300, 299, 298).encode_with(b"").len(),
            5,
            "a few bytes, not 24"
        );
        // Eleven continuation bytes cannot be a u64.
        assert!(SessionCommand::split(&[0xff; 11]).is_err());
    }

    #[test]
    fn a_retried_number_is_answered_from_the_table_without_applying_again() {
        let mut table = SessionTable::default();
        let s = table.open(5, 10, 4);
        let mut calls = 0;
        let first = apply(&mut table, 6, cmd(s, 1, 0), &mut calls).expect("applied");
        let retry = apply(&mut table, 9, cmd(s, 1, 0), &mut calls).expect("answered");
        assert_eq!((first, calls), (retry, 1));
    }

    #[test]
    fn an_acknowledged_number_is_refused_and_its_answer_dropped() {
        let mut table = SessionTable::default();
        let s = table.open(1, 10, 4);
        let mut calls = 0;
        apply(&mut table, 2, cmd(s, 1, 0), &mut calls).expect("applied");
        apply(&mut table, 3, cmd(s, 2, 1), &mut calls).expect("applied");
        assert_eq!(table.answers(), 1, "the answer of 1 was dropped");
        let late = apply(&mut table, 4, cmd(s, 1, 0), &mut calls);
        assert!(matches!(late, Err(Error::SessionExpired(_))), "{late:?}");
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_number_beyond_the_window_is_refused_without_applying() {
        let mut table = SessionTable::default();
        let s = table.open(1, 10, 2);
        let mut calls = 0;
        let far = apply(&mut table, 2, cmd(s, 3, 0), &mut calls);
        assert!(matches!(far, Err(Error::InvalidRequest(_))), "{far:?}");
        apply(&mut table, 3, cmd(s, 2, 0), &mut calls).expect("inside the window");
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_least_recently_used_session_expires_first_and_its_commands_are_refused() {
        let mut table = SessionTable::default();
        let mut calls = 0;
        let a = table.open(1, 2, 4);
        let b = table.open(2, 2, 4);
        apply(&mut table, 3, cmd(a, 1, 0), &mut calls).expect("a used after b opened");
        let c = table.open(4, 2, 4);
        assert_eq!(table.len(), 2);
        let on_b = apply(&mut table, 5, cmd(b, 1, 0), &mut calls);
        assert!(matches!(on_b, Err(Error::SessionExpired(_))), "{on_b:?}");
        apply(&mut table, 6, cmd(a, 2, 1), &mut calls).expect("a is still open");
        apply(&mut table, 7, cmd(c, 1, 0), &mut calls).expect("c is open");
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_failed_apply_is_answered_with_the_same_error_on_retry() {
        let mut table = SessionTable::default();
        let s = table.open(1, 10, 4);
        let c = cmd(s, 1, 0);
        assert!(matches!(table.check(2, &c), Verdict::Apply));
        table.record(&c, &Err(Error::StateMachine("not a number".into())));
        match table.check(3, &c) {
            Verdict::Answer(Err(Error::StateMachine(m))) => assert_eq!(m, "not a number"),
            other => panic!("expected the stored error, got {other:?}"),
        }
    }

    #[test]
    fn the_table_round_trips_through_snapshot_bytes_and_an_empty_one_adds_nothing() {
        assert!(SessionTable::default().encode().expect("encode").is_empty());
        let mut table = SessionTable::default();
        let s = table.open(3, 10, 4);
        let mut calls = 0;
        apply(&mut table, 4, cmd(s, 1, 0), &mut calls).expect("applied");
        let bytes = table.encode().expect("encode");
        assert_eq!(SessionTable::decode(&bytes).expect("decode"), table);
        assert!(SessionTable::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A property over many generated histories: whatever order and however often commands
    /// (and their retries) reach the table, with whatever acknowledgements, and with sessions
    /// expiring as others open, no (session, seq) reaches the state machine twice. Each history
    /// comes from a seed; a failure names it.
    #[test]
    fn no_number_is_ever_applied_twice_in_generated_histories() {
        for seed in 0..3000u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |bound: u64| {
                // xorshift64*: deterministic, good enough to vary histories.
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
            };
            let mut table = SessionTable::default();
            let mut sessions: Vec<u64> = (1..=3).map(|i| table.open(i, 3, 6)).collect();
            let mut applied = std::collections::BTreeSet::new();
            for step in 0..200u64 {
                let index = 10 + step;
                if next(20) == 0 {
                    // Opening more sessions than are kept expires the least recently used.
                    sessions.push(table.open(index, 3, 6));
                    continue;
                }
                let session = sessions[next(sessions.len() as u64) as usize];
                let seq = 1 + next(14);
                let c = cmd(session, seq, next(seq + 1));
                if let Verdict::Apply = table.check(index, &c) {
                    assert!(
                        applied.insert((c.session, c.seq)),
                        "seed {seed}: {c:?} applied twice"
                    );
                    table.record(&c, &Ok(Vec::new()));
                }
            }
        }
    }
}
