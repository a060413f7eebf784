//! A committed log entry as the run loop (and `pontoon-cli debug persisted`) reads it: the
//! proposal context, a framework entry's data, a batch of user commands, a conf change and its
//! context.
//! Input: `type byte | split(context, data)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing as f;
use pontoon::raft::eraftpb::{Entry, EntryType};
use pontoon_fuzz::{same_pb, split};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let parts = split(rest);
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let mut entry = Entry::default();
    entry.set_entry_type(match kind % 3 {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        _ => EntryType::EntryConfChangeV2,
    });
    entry.index = 7;
    entry.term = 3;
    entry.context = part(0).to_vec().into();
    entry.data = part(1).to_vec().into();

    if let Some(ctx) = f::ProposalContext::decode(&entry.context) {
        assert_eq!(ctx.encode(), entry.context.as_ref(), "context round trip");
    }
    if let Ok(fe) = f::FrameworkEntry::decode(&entry.data) {
        let bytes = fe.encode().expect("re-encodes");
        assert_eq!(f::FrameworkEntry::decode(&bytes).expect("and decodes"), fe);
    }
    if let Ok(commands) = f::command_batch::decode(&entry.data) {
        // The format has one spelling per batch: decoding then encoding gives the bytes back.
        let again = f::command_batch::encode(commands.iter().copied());
        assert_eq!(again.as_slice(), entry.data.as_ref(), "batch round trip");
    }
    if let Ok(ctx) = f::ConfChangeContext::decode(&entry.context) {
        let bytes = ctx.encode().expect("re-encodes");
        assert_eq!(
            f::ConfChangeContext::decode(&bytes).expect("and decodes"),
            ctx
        );
        // The proposer's context inside a conf change's context.
        let _ = f::ProposalContext::decode(&ctx.proposal);
    }
    let cc = f::decode_conf_change(&entry);
    if entry.get_entry_type() == EntryType::EntryNormal {
        assert!(cc.is_err(), "a normal entry read as a conf change");
    }
    let view = f::view_entry(&entry);
    assert_eq!(view.size, entry.data.len());

    // The same entry as stored in the log and read back (the log has no entry 0).
    match f::wal_entry_round_trip(&entry) {
        Ok(again) => assert!(
            same_pb(&again, &entry),
            "stored entry: {again:?} / {entry:?}"
        ),
        Err(e) => assert_eq!(entry.index, 0, "entry {entry:?} not stored: {e}"),
    }
});
