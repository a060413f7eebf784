//! Several client commands carried by one log entry.
//!
//! Under load many proposals reach the leader in the same turn. Each one as its own entry pays
//! raft-rs's per-entry bookkeeping, a protobuf `Entry` (with its 25-byte context) on the wire to
//! every follower, and a record in every node's log. `propose_batch` therefore packs a run of
//! user proposals gathered in one turn into a single entry whose context kind is
//! `EntryKind::UserBatch`. Every node unpacks it when the entry is applied and hands the commands
//! to the state machine one by one, in order, so `apply` sees exactly the same sequence of
//! commands as without batching; only the log indices are shared.
//!
//! # Format
//!
//! `count: u32 BE`, then `count` times `len: u32 BE | len bytes`, and nothing after. A user
//! batch always holds at least two commands (a single proposal stays a plain user entry). The
//! commands of client sessions (`EntryKind::Session`) always travel in this format, even one
//! alone, and are packed only with each other.
//!
//! # Invariants
//!
//! - The batch's context carries the sequence number of its first command; the others follow
//!   consecutively. `propose_batch` only packs proposals with consecutive sequence numbers, so the
//!   proposer's waiters are found again as `seq + i`.
//! - Decoding is total: any byte string is either a well-formed batch or a typed `Encoding` error,
//!   and a count larger than the bytes could hold is refused before anything is allocated.

use raft::eraftpb::Entry;

use super::proposals::{EntryKind, ProposalContext};
use crate::error::{Error, Result};

/// Bytes of one length or count field.
const WORD: usize = 4;

/// Encoded size of a batch of `commands`.
pub fn encoded_len<'a>(commands: impl IntoIterator<Item = &'a [u8]>) -> usize {
    commands
        .into_iter()
        .fold(WORD, |total, c| total + WORD + c.len())
}

/// Pack `commands` into one entry's data. Each command must be shorter than 4 GiB (proposals are
/// bounded by `Config::max_proposal_bytes` long before that).
pub fn encode<'a>(commands: impl IntoIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(commands.clone()));
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_be_bytes());
    let mut count: u32 = 0;
    for c in commands {
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
        count += 1;
    }
    out[count_at..count_at + WORD].copy_from_slice(&count.to_be_bytes());
    out
}

/// The commands of a batch entry, in the order they were proposed.
pub fn decode(data: &[u8]) -> Result<Vec<&[u8]>> {
    let bad = |why: &str| Error::Encoding(format!("malformed command batch: {why}"));
    let (count, mut rest) = split_word(data).ok_or_else(|| bad("no command count"))?;
    // Every command takes at least its length field: a larger count cannot be honest.
    if count > rest.len() / WORD {
        return Err(bad(&format!(
            "{count} commands announced in {} bytes",
            rest.len()
        )));
    }
    let mut commands = Vec::with_capacity(count);
    for i in 0..count {
        let (len, tail) = split_word(rest).ok_or_else(|| bad(&format!("command {i} cut short")))?;
        if len > tail.len() {
            return Err(bad(&format!(
                "command {i} claims {len} bytes, {} left",
                tail.len()
            )));
        }
        let (command, tail) = tail.split_at(len);
        commands.push(command);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad(&format!("{} bytes after the last command", rest.len())));
    }
    Ok(commands)
}

fn split_word(bytes: &[u8]) -> Option<(usize, &[u8])> {
    if bytes.len() < WORD {
        return None;
    }
    let (word, rest) = bytes.split_at(WORD);
    let mut b = [0u8; WORD];
    b.copy_from_slice(word);
    Some((u32::from_be_bytes(b) as usize, rest))
}

/// Turns the proposals of one turn, in order, into the entries of one `MsgPropose`: runs of user
/// proposals with consecutive sequence numbers become batch entries (within the limits), every
/// other proposal and every run of one stays a plain entry.
pub(crate) struct EntryPacker {
    max_commands: usize,
    max_bytes: usize,
    run: Vec<(ProposalContext, Vec<u8>)>,
    /// Encoded size of `run` as a batch.
    run_bytes: usize,
}

impl EntryPacker {
    /// At most `max_commands` commands and (unless one command alone is larger) `max_bytes`
    /// bytes of batch data per entry.
    pub(crate) fn new(max_commands: usize, max_bytes: usize) -> Self {
        EntryPacker {
            max_commands,
            max_bytes,
            run: Vec::new(),
            run_bytes: WORD,
        }
    }

    /// Take the next proposal; answers the offset in `entries` of the entry that will carry it
    /// once `finish` has run.
    pub(crate) fn add(
        &mut self,
        ctx: ProposalContext,
        data: Vec<u8>,
        entries: &mut Vec<Entry>,
    ) -> usize {
        if !self.joins_run(&ctx, data.len()) {
            self.flush(entries);
        }
        self.run_bytes += WORD + data.len();
        self.run.push((ctx, data));
        entries.len()
    }

    /// Emit the last run.
    pub(crate) fn finish(&mut self, entries: &mut Vec<Entry>) {
        self.flush(entries);
    }

    fn joins_run(&self, ctx: &ProposalContext, len: usize) -> bool {
        let Some((last, _)) = self.run.last() else {
            return false;
        };
        matches!(ctx.kind, EntryKind::User | EntryKind::Session)
            && last.kind == ctx.kind
            && last.seq.checked_add(1) == Some(ctx.seq)
            && self.run.len() < self.max_commands
            && self.run_bytes + WORD + len <= self.max_bytes
    }

    fn flush(&mut self, entries: &mut Vec<Entry>) {
        self.run_bytes = WORD;
        let session = self.run.first().map(|(ctx, _)| ctx.kind) == Some(EntryKind::Session);
        let entry = match self.run.len() {
            0 => return,
            1 if !session => {
                let Some((ctx, data)) = self.run.pop() else {
                    return;
                };
                Entry {
                    context: ctx.encode().into(),
                    data: data.into(),
                    ..Default::default()
                }
            }
            _ => {
                let first = ProposalContext {
                    kind: if session {
                        EntryKind::Session
                    } else {
                        EntryKind::UserBatch
                    },
                    ..self.run[0].0
                };
                let data = encode(self.run.iter().map(|(_, d)| d.as_slice()));
                self.run.clear();
                Entry {
                    context: first.encode().into(),
                    data: data.into(),
                    ..Default::default()
                }
            }
        };
        entries.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kind: EntryKind, seq: u64) -> ProposalContext {
        ProposalContext {
            kind,
            node_id: 1,
            nonce: 42,
            seq,
        }
    }

    /// Pack `(kind, seq, len)` proposals; answer each one's entry offset and the entries.
    fn pack(
        max_commands: usize,
        max_bytes: usize,
        proposals: &[(EntryKind, u64, usize)],
    ) -> (Vec<usize>, Vec<Entry>) {
        let mut packer = EntryPacker::new(max_commands, max_bytes);
        let mut entries = Vec::new();
        let offsets = proposals
            .iter()
            .map(|&(kind, seq, len)| packer.add(ctx(kind, seq), vec![seq as u8; len], &mut entries))
            .collect();
        packer.finish(&mut entries);
        (offsets, entries)
    }

    fn kind_of(entry: &Entry) -> EntryKind {
        ProposalContext::decode(&entry.context)
            .expect("context")
            .kind
    }

    #[test]
    fn consecutive_user_proposals_share_an_entry_and_a_lone_one_stays_plain() {
        use EntryKind::{Framework, User, UserBatch};
        let (offsets, entries) = pack(
            100,
            1 << 20,
            &[
                (User, 1, 3),
                (User, 2, 3),
                (User, 3, 3),
                (Framework, 4, 5),
                (User, 5, 2),
            ],
        );
        assert_eq!(offsets, vec![0, 0, 0, 1, 2]);
        assert_eq!(entries.len(), 3);
        assert_eq!(kind_of(&entries[0]), UserBatch);
        assert_eq!(
            ProposalContext::decode(&entries[0].context).map(|c| c.seq),
            Some(1)
        );
        assert_eq!(
            decode(&entries[0].data).expect("batch"),
            vec![[1u8; 3].as_slice(), &[2; 3], &[3; 3]]
        );
        assert_eq!(kind_of(&entries[1]), Framework);
        assert_eq!(kind_of(&entries[2]), User);
        assert_eq!(entries[2].data.as_ref(), &[5, 5]);
    }

    #[test]
    fn session_commands_pack_only_with_each_other_and_always_as_a_batch() {
        use EntryKind::{Session, User, UserBatch};
        let (offsets, entries) = pack(
            100,
            1 << 20,
            &[
                (Session, 1, 2),
                (Session, 2, 2),
                (User, 3, 1),
                (User, 4, 1),
                (Session, 5, 3),
            ],
        );
        assert_eq!(offsets, vec![0, 0, 1, 1, 2]);
        assert_eq!(
            entries.iter().map(kind_of).collect::<Vec<_>>(),
            vec![Session, UserBatch, Session]
        );
        // Alone, a session command is still a batch of one: apply reads one format.
        assert_eq!(
            decode(&entries[2].data).expect("batch"),
            vec![[5u8; 3].as_slice()]
        );
    }

    #[test]
    fn a_run_breaks_at_a_gap_in_sequence_numbers_and_at_the_limits() {
        use EntryKind::User;
        // Seq 3 is missing (a conf change took it): 4 cannot be found as first + 2.
        let (offsets, _) = pack(100, 1 << 20, &[(User, 1, 1), (User, 2, 1), (User, 4, 1)]);
        assert_eq!(offsets, vec![0, 0, 1]);
        let (offsets, _) = pack(2, 1 << 20, &[(User, 1, 1), (User, 2, 1), (User, 3, 1)]);
        assert_eq!(offsets, vec![0, 0, 1]);
        // Count + two 10-byte commands = 32 bytes; the third would make 46.
        let (offsets, entries) = pack(100, 40, &[(User, 1, 10), (User, 2, 10), (User, 3, 10)]);
        assert_eq!(offsets, vec![0, 0, 1]);
        assert!(entries[0].data.len() <= 40);
        // A command larger than the limit still goes, alone.
        let (offsets, entries) = pack(100, 8, &[(User, 1, 50), (User, 2, 50)]);
        assert_eq!(offsets, vec![0, 1]);
        assert_eq!(entries[0].data.len(), 50);
    }

    #[test]
    fn a_batch_round_trips_commands_in_order_including_empty_ones() {
        let commands: Vec<&[u8]> = vec![b"put a 1", b"", b"put b 2"];
        let data = encode(commands.iter().copied());
        assert_eq!(data.len(), encoded_len(commands.iter().copied()));
        assert_eq!(decode(&data).expect("decodes"), commands);
    }

    #[test]
    fn malformed_batches_are_encoding_errors() {
        let good = encode([b"abc".as_slice(), b"de".as_slice()]);
        // Cut anywhere: never a panic, always a typed error.
        for cut in 0..good.len() {
            assert!(
                matches!(decode(&good[..cut]), Err(Error::Encoding(_))),
                "cut at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(Error::Encoding(_))));
        // A count no byte string of this size could hold is refused without allocating for it.
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(decode(&huge), Err(Error::Encoding(_))));
        let mut long = good;
        long[4..8].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(decode(&long), Err(Error::Encoding(_))));
    }
}
