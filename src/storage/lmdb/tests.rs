//! `LmdbStorage` checked against raft-rs' `MemStorage` on the same operation sequences.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage};

use super::*;
use crate::storage::{LogStore, PersistBatch};

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    e.set_data(format!("data-{index}-{term}").into_bytes().into());
    e
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata()
        .set_conf_state(ConfState::from((voters, vec![])));
    s.set_data(b"snap".to_vec().into());
    s
}

/// Persist a batch of entries alone.
fn append(lmdb: &LmdbStorage, entries: Vec<Entry>) -> Result<(), StorageError> {
    lmdb.persist(PersistBatch {
        entries,
        ..Default::default()
    })
}

fn open(dir: &tempfile::TempDir) -> LmdbStorage {
    LmdbStorage::open(dir.path(), 1, "test", 1 << 20).expect("open")
}

enum Op {
    Append(Vec<Entry>),
    Compact(u64),
    ApplySnapshot(Snapshot),
}

fn apply(ops: &[Op], lmdb: &LmdbStorage, mem: &MemStorage) {
    for op in ops {
        match op {
            Op::Append(ents) => {
                mem.wl().append(ents).expect("mem append");
                append(lmdb, ents.clone()).expect("lmdb append");
            }
            Op::Compact(i) => {
                mem.wl().compact(*i).expect("mem compact");
                lmdb.compact(*i).expect("lmdb compact");
            }
            Op::ApplySnapshot(s) => {
                mem.wl().apply_snapshot(s.clone()).expect("mem snapshot");
                lmdb.install_snapshot(s.get_metadata(), s.get_data(), &Peers::new())
                    .expect("lmdb snapshot");
            }
        }
    }
}

fn outcome<T: PartialEq + std::fmt::Debug>(r: raft::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(raft::Error::Store(raft::StorageError::Compacted)) => "compacted".into(),
        Err(raft::Error::Store(raft::StorageError::Unavailable)) => "unavailable".into(),
        Err(e) => format!("other error {e}"),
    }
}

/// Compare first/last index, term of every index and every in-bounds entries range.
/// `term(first - 1)` is compared only where MemStorage keeps it (at its snapshot index): LMDB
/// storage keeps the term of the last compacted entry as raft's `Storage` docs ask.
fn assert_same(lmdb: &LmdbStorage, mem: &MemStorage, snap_index: u64) {
    let first = mem.first_index().expect("first");
    let last = mem.last_index().expect("last");
    assert_eq!(lmdb.first_index().expect("first"), first, "first_index");
    assert_eq!(lmdb.last_index().expect("last"), last, "last_index");
    for idx in 0..last + 3 {
        if idx + 1 == first && idx != snap_index {
            assert!(
                lmdb.term(idx).is_ok(),
                "lmdb keeps the term of the last compacted entry {idx}"
            );
            continue;
        }
        assert_eq!(
            outcome(lmdb.term(idx)),
            outcome(mem.term(idx)),
            "term({idx})"
        );
    }
    for low in first.saturating_sub(2).max(1)..=last {
        for high in low + 1..=last + 1 {
            for max in [None, Some(0), Some(40), Some(u64::MAX)] {
                let ctx = GetEntriesContext::empty(false);
                assert_eq!(
                    outcome(lmdb.entries(low, high, max, ctx)),
                    outcome(mem.entries(low, high, max, GetEntriesContext::empty(false))),
                    "entries({low}, {high}, {max:?})"
                );
            }
        }
    }
}

fn check_sequence(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    let mem = MemStorage::new();
    apply(&ops, &lmdb, &mem);
    let snap_index = ops
        .iter()
        .filter_map(|op| match op {
            Op::ApplySnapshot(s) => Some(s.get_metadata().index),
            _ => None,
        })
        .next_back()
        .unwrap_or(0);
    assert_same(&lmdb, &mem, snap_index);
    // The same state must come back after reopening the data dir.
    drop(lmdb);
    let reopened = open(&dir);
    assert_same(&reopened, &mem, snap_index);
}

#[test]
fn append_matches_memstorage() {
    check_sequence(vec![Op::Append((1..=10).map(|i| entry(i, 1)).collect())]);
}

#[test]
fn conflicting_suffix_is_truncated_like_memstorage() {
    check_sequence(vec![
        Op::Append((1..=10).map(|i| entry(i, 1)).collect()),
        // A new leader overwrites 6.. with term 2 and a shorter log.
        Op::Append((6..=8).map(|i| entry(i, 2)).collect()),
    ]);
    check_sequence(vec![
        Op::Append((1..=5).map(|i| entry(i, 1)).collect()),
        Op::Append(vec![entry(3, 3)]),
        Op::Append((4..=9).map(|i| entry(i, 3)).collect()),
    ]);
}

#[test]
fn compaction_matches_memstorage() {
    check_sequence(vec![
        Op::Append((1..=20).map(|i| entry(i, 1 + i / 7)).collect()),
        Op::Compact(8),
        Op::Append((21..=25).map(|i| entry(i, 4)).collect()),
        Op::Compact(5), // below the compacted index: no-op
        Op::Compact(22),
    ]);
}

#[test]
fn snapshot_apply_matches_memstorage() {
    check_sequence(vec![
        Op::Append((1..=10).map(|i| entry(i, 1)).collect()),
        Op::ApplySnapshot(snapshot(15, 2, vec![1, 2, 3])),
        Op::Append((16..=20).map(|i| entry(i, 2)).collect()),
    ]);
}

#[test]
fn snapshot_apply_sets_hard_state_and_conf_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    let hs = HardState {
        term: 1,
        vote: 2,
        ..Default::default()
    };
    lmdb.persist(PersistBatch {
        hard_state: Some(hs),
        ..Default::default()
    })
    .expect("hs");
    let snap = snapshot(9, 3, vec![1, 2]);
    lmdb.install_snapshot(
        snap.get_metadata(),
        snap.get_data(),
        &Peers::from([(1, "a".to_string())]),
    )
    .expect("install");
    let state = lmdb.initial_state().expect("state");
    assert_eq!(state.hard_state.term, 3);
    assert_eq!(state.hard_state.commit, 9);
    assert_eq!(state.hard_state.vote, 2);
    assert_eq!(state.conf_state.voters, vec![1, 2]);
    assert_eq!(lmdb.peers().expect("peers")[&1], "a");
    let stored = lmdb.snapshot(0, 2).expect("snapshot");
    assert_eq!(stored.get_metadata().index, 9);
    // raft gets a reference to the file, which the transport streams.
    let file = crate::storage::snapshot_file_ref(stored.get_data()).expect("a file reference");
    assert_eq!(std::fs::read(file).expect("read"), b"snap");
    // A snapshot older than the compacted log is refused and changes nothing.
    assert!(lmdb
        .install_snapshot(
            snapshot(3, 1, vec![1]).get_metadata(),
            b"old",
            &Peers::new()
        )
        .is_err());
    assert_eq!(lmdb.first_index().expect("first"), 10);
}

#[test]
fn gap_and_compacted_appends_are_refused_without_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    append(&lmdb, (1..=5).map(|i| entry(i, 1)).collect()).expect("append");
    let gap = append(&lmdb, vec![entry(8, 1)]);
    assert!(matches!(gap, Err(StorageError::InvalidOperation(_))));
    lmdb.compact(4).expect("compact");
    let below = append(&lmdb, vec![entry(2, 2)]);
    assert!(matches!(below, Err(StorageError::InvalidOperation(_))));
    assert_eq!(lmdb.last_index().expect("last"), 5);
    assert_eq!(lmdb.term(5).expect("term"), 1);
}

#[test]
fn hard_state_and_entries_survive_reopen_from_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let lmdb = open(&dir);
        let hs = HardState {
            term: 4,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        lmdb.persist(PersistBatch {
            entries: (1..=3).map(|i| entry(i, 4)).collect(),
            hard_state: Some(hs),
            conf_state: Some((ConfState::from((vec![1, 2, 3], vec![])), 2)),
            peers: Some((Peers::from([(2, "b".to_string())]), 0)),
        })
        .expect("persist");
    }
    let lmdb = open(&dir);
    let state = lmdb.initial_state().expect("state");
    assert_eq!(
        (
            state.hard_state.term,
            state.hard_state.vote,
            state.hard_state.commit
        ),
        (4, 1, 3)
    );
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(lmdb.conf_state_index(), 2);
    assert_eq!(lmdb.peers().expect("peers")[&2], "b");
    let e = lmdb
        .entries(1, 4, None, GetEntriesContext::empty(false))
        .expect("entries");
    assert_eq!(e.len(), 3);
    assert_eq!(
        e[2].write_to_bytes().expect("enc"),
        entry(3, 4).write_to_bytes().expect("enc")
    );
}

#[test]
fn data_dir_of_another_cluster_or_node_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(&dir));
    let before = std::fs::read(dir.path().join("data.mdb")).expect("read");
    let foreign = LmdbStorage::open(dir.path(), 1, "other", 1 << 20);
    assert!(
        matches!(foreign, Err(StorageError::ForeignCluster { .. })),
        "got {:?}",
        foreign.err()
    );
    let wrong_node = LmdbStorage::open(dir.path(), 2, "test", 1 << 20);
    assert!(matches!(
        wrong_node,
        Err(StorageError::WrongNode {
            found: 1,
            expected: 2,
            ..
        })
    ));
    assert_eq!(
        std::fs::read(dir.path().join("data.mdb")).expect("read"),
        before
    );
    let msg = LmdbStorage::open(dir.path(), 1, "other", 1 << 20)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("belongs to cluster \"test\""), "{msg}");
}

#[test]
fn non_lmdb_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("data.mdb"),
        b"this is not lmdb at all, just text",
    )
    .expect("write");
    let err = LmdbStorage::open(dir.path(), 1, "test", 1 << 20);
    assert!(
        matches!(err, Err(StorageError::NotADataDir { .. })),
        "got {:?}",
        err.err()
    );
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    assert!(matches!(
        LmdbStorage::open(&file, 1, "test", 1 << 20),
        Err(StorageError::NotADataDir { .. })
    ));
}

#[test]
fn map_grows_instead_of_failing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Start with a tiny 64 KiB map and write well over it. The log lives in the WAL, so what
    // goes to LMDB is the membership: an address book of ~200 KiB.
    let lmdb = LmdbStorage::open(dir.path(), 1, "test", 64 * 1024).expect("open");
    let book: Peers = (1..=4000u64)
        .map(|id| {
            (
                id,
                format!("node-{id:05}.a-rather-long-host-name.example:7000"),
            )
        })
        .collect();
    for round in 0..4u64 {
        let mut peers = book.clone();
        peers.insert(1, format!("round-{round}:7000"));
        lmdb.persist(PersistBatch {
            peers: Some((peers, 0)),
            ..Default::default()
        })
        .expect("persist grows the map");
    }
    let stored = lmdb.peers().expect("peers");
    assert_eq!(stored.len(), 4000);
    assert_eq!(stored[&1], "round-3:7000");
}

#[test]
fn peek_identity_reads_without_creating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("node");
    assert_eq!(LmdbStorage::peek_identity(&sub).expect("peek"), None);
    assert!(!sub.exists());
    drop(LmdbStorage::open(&sub, 5, "c", 1 << 20).expect("open"));
    let id = LmdbStorage::peek_identity(&sub)
        .expect("peek")
        .expect("some");
    assert_eq!((id.node_id, id.cluster_id.as_str()), (5, "c"));
}

#[test]
fn a_received_snapshot_whose_log_reset_a_crash_cut_off_is_finished_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    append(&lmdb, (1..=10).map(|i| entry(i, 1)).collect()).expect("append");
    // `install_snapshot` stores the snapshot in LMDB, then resets the log: stop in between.
    lmdb.save_snapshot(&snapshot(20, 3, vec![1]))
        .expect("store");
    drop(lmdb);
    let lmdb = open(&dir);
    assert_eq!(lmdb.first_index().expect("first"), 21);
    assert_eq!(lmdb.last_index().expect("last"), 20);
    assert_eq!(lmdb.term(20).expect("term"), 3);
    let hs = lmdb.hard_state().expect("hs");
    assert_eq!((hs.term, hs.commit), (3, 20));
    append(&lmdb, vec![entry(21, 3)]).expect("append after the snapshot");
    drop(lmdb);
    // A log that agrees with the stored snapshot is kept as it is.
    let lmdb = open(&dir);
    lmdb.save_snapshot(&snapshot(21, 3, vec![1]))
        .expect("store");
    drop(lmdb);
    let lmdb = open(&dir);
    assert_eq!(lmdb.first_index().expect("first"), 21);
    assert_eq!(lmdb.last_index().expect("last"), 21);
}

fn snapshot_file_names(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("snapshots"))
        .expect("snapshots dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn only_the_current_snapshot_file_stays_and_a_missing_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    append(&lmdb, (1..=12).map(|i| entry(i, 1)).collect()).expect("append");
    lmdb.save_snapshot(&snapshot(5, 1, vec![1])).expect("first");
    lmdb.save_snapshot(&snapshot(9, 1, vec![1]))
        .expect("second");
    assert_eq!(snapshot_file_names(&dir).len(), 1, "the older file is gone");
    assert!(
        lmdb.save_snapshot(&snapshot(7, 1, vec![1])).is_err(),
        "an older snapshot never replaces a newer one"
    );
    drop(lmdb);
    // A crash left a newer file whose metadata never landed, and a half-written one.
    let snaps = dir.path().join("snapshots");
    std::fs::write(snaps.join(format!("{:020}-{:020}.snap", 11, 1)), b"orphan").expect("write");
    std::fs::write(snaps.join("writing-x.snap"), b"half").expect("write");
    let lmdb = open(&dir);
    assert_eq!(
        snapshot_file_names(&dir),
        vec![format!("{:020}-{:020}.snap", 9, 1)]
    );
    let stored = lmdb.latest_snapshot().expect("read").expect("a snapshot");
    assert_eq!(stored.get_metadata().index, 9);
    assert_eq!(stored.get_data(), b"snap");
    drop(lmdb);
    // The file the metadata names is gone: refuse to open.
    std::fs::remove_file(snaps.join(format!("{:020}-{:020}.snap", 9, 1))).expect("rm");
    let err = LmdbStorage::open(dir.path(), 1, "test", 1 << 20)
        .err()
        .expect("refused");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

#[test]
fn a_received_snapshot_file_is_moved_into_the_store_not_copied_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    append(&lmdb, (1..=4).map(|i| entry(i, 1)).collect()).expect("append");
    let received = dir.path().join("incoming-snapshot-2-1.snap");
    std::fs::write(&received, b"received snapshot").expect("write");
    let meta = snapshot(9, 3, vec![1, 2]).take_metadata();
    lmdb.install_snapshot_file(&meta, &received, &Peers::from([(2, "b".to_string())]))
        .expect("install");
    assert!(!received.exists(), "the received file was taken over");
    assert_eq!(lmdb.first_index().expect("first"), 10, "the log was reset");
    let (stored_meta, path) = lmdb
        .latest_snapshot_file()
        .expect("read")
        .expect("a snapshot file");
    assert_eq!(stored_meta.index, 9);
    assert_eq!(std::fs::read(&path).expect("read"), b"received snapshot");
    drop(lmdb);
    let lmdb = open(&dir);
    let stored = lmdb.latest_snapshot().expect("read").expect("a snapshot");
    assert_eq!(stored.get_metadata().index, 9);
    assert_eq!(stored.get_data(), b"received snapshot");
    assert_eq!(lmdb.peers().expect("peers")[&2], "b");
    // One older than the compacted log is refused, and its file is left to the caller.
    let old = dir.path().join("incoming-snapshot-old.snap");
    std::fs::write(&old, b"old").expect("write");
    let meta = snapshot(3, 1, vec![1]).take_metadata();
    assert!(lmdb
        .install_snapshot_file(&meta, &old, &Peers::new())
        .is_err());
    assert_eq!(snapshot_file_names(&dir).len(), 1);
}

#[test]
fn a_data_dir_open_for_writing_refuses_a_second_writer_until_it_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(&dir);
    first
        .persist(PersistBatch {
            entries: vec![entry(1, 1)],
            ..Default::default()
        })
        .expect("persist");

    // A second writer (another node started on the same dir) is refused before LMDB is opened,
    // with who holds the dir, and the first store's log is untouched.
    let second = LmdbStorage::open(dir.path(), 1, "test", 1 << 20);
    match &second {
        Err(StorageError::InUse { holder, .. }) => {
            assert!(holder.contains(&std::process::id().to_string()), "{holder}");
        }
        other => panic!("expected InUse, got {:?}", other.as_ref().err()),
    }
    let msg = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("is in use by another node"), "{msg}");
    assert_eq!(first.last_index().expect("last"), 1);

    // Closing the store releases the lock: the node can be restarted on its dir.
    drop(first);
    let again = open(&dir);
    assert_eq!(again.last_index().expect("last"), 1);
}

#[test]
fn a_refused_foreign_dir_is_left_without_a_lock_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(&dir));
    std::fs::remove_file(dir.path().join("LOCK")).expect("remove the lock file");
    let foreign = LmdbStorage::open(dir.path(), 1, "other", 1 << 20);
    assert!(matches!(foreign, Err(StorageError::ForeignCluster { .. })));
    assert!(!dir.path().join("LOCK").exists());
}

#[test]
fn an_empty_data_mdb_is_not_a_data_dir_for_a_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("data.mdb"), b"").expect("write");
    match LmdbStorage::open_read_only(dir.path()) {
        Err(StorageError::NotADataDir { reason, .. }) => {
            assert!(reason.contains("empty"), "{reason}")
        }
        other => panic!("expected NotADataDir, got {:?}", other.err()),
    }
}

#[test]
fn a_reader_refusing_a_foreign_data_mdb_leaves_the_dir_as_it_found_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A 64 KiB file that is not an LMDB environment.
    std::fs::write(dir.path().join("data.mdb"), vec![0x5a; 64 * 1024]).expect("write");
    assert!(LmdbStorage::open_read_only(dir.path()).is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("data.mdb")]);
}

/// The run loop asks for the latest snapshot file (raft's `snapshot()`) while a snapshot task
/// stores a newer one and deletes the older file. It must get one of the two, never an error:
/// raft-rs panics on an unexpected storage error.
#[test]
fn the_latest_snapshot_file_is_found_while_newer_snapshots_replace_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lmdb = open(&dir);
    append(&lmdb, (1..=2).map(|i| entry(i, 1)).collect()).expect("append");
    lmdb.save_snapshot(&snapshot(1, 1, vec![1]))
        .expect("first snapshot");
    let writer = lmdb.clone();
    let saves = std::thread::spawn(move || {
        for index in 2..=1500 {
            writer
                .save_snapshot(&snapshot(index, 1, vec![1]))
                .expect("save");
        }
    });
    let mut looked = 0u64;
    while !saves.is_finished() {
        lmdb.latest_snapshot_file()
            .expect("a snapshot file, not an error")
            .expect("a snapshot");
        looked += 1;
    }
    saves.join().expect("saver");
    assert!(looked > 0);
}

/// Issue 21, defect 4: a conf change at X and a snapshot of this node's own at A >= X, the
/// snapshot's LMDB commit landing before the writer's commit of the conf state, then a crash.
/// The entries up to A are never replayed, so the restart must take the membership (and the
/// address book) from the snapshot, not from the older stored conf state.
#[test]
fn a_restart_trusts_a_snapshot_newer_than_the_stored_membership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let book = crate::config::Peers::from([(1, "a:1".to_string())]);
    store
        .install_snapshot(snapshot(1, 1, vec![1]).get_metadata(), b"s", &book)
        .expect("initial snapshot");
    append(&store, (2..=10).map(|i| entry(i, 1)).collect()).expect("append");
    // Entry 5 added voter 2; the writer's conf-state commit never landed. The snapshot at 8 did.
    store
        .save_snapshot(&snapshot(8, 1, vec![1, 2]))
        .expect("snapshot");
    drop(store);
    let store = open(&dir);
    let state = store.initial_state().expect("initial state");
    assert_eq!(
        state.conf_state.voters,
        vec![1, 2],
        "the snapshot's membership"
    );
    assert_eq!(store.conf_state().expect("conf").1, 8);
    assert_eq!(
        store.peers_index(),
        1,
        "the stored book is older than the snapshot"
    );
    // Once the writer records a newer conf state, that one counts.
    store
        .persist(PersistBatch {
            conf_state: Some((ConfState::from((vec![1, 2, 3], vec![])), 9)),
            peers: Some((book.clone(), 9)),
            ..Default::default()
        })
        .expect("persist");
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.initial_state().expect("state").conf_state.voters,
        vec![1, 2, 3]
    );
    assert_eq!(store.peers_index(), 9);
}
