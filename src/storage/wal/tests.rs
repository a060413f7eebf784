use std::os::unix::fs::FileExt;

use raft::eraftpb::{Entry, HardState};

use super::{list_segments, Wal, WalOptions};
use crate::storage::fs;
use crate::storage::StorageError;

/// A WAL on real files, without the entry cache, so reads go to the files.
fn open_wal(
    dir: &std::path::Path,
    read_only: bool,
    segment_bytes: u64,
) -> Result<Wal, StorageError> {
    let options = WalOptions {
        segment_bytes,
        cache_bytes: 0,
    };
    Wal::open(fs::real(), dir, read_only, options)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes().into(),
        ..Default::default()
    }
}

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
        ..Default::default()
    }
}

/// Every entry `low..=high` reads back as written.
fn assert_log(wal: &Wal, low: u64, high: u64, term_of: impl Fn(u64) -> u64) {
    assert_eq!(wal.truncated().0 + 1, low, "first index");
    assert_eq!(wal.last_index(), high, "last index");
    if low <= high {
        let got = wal.entries(low, high + 1, None).expect("entries");
        let want: Vec<Entry> = (low..=high).map(|i| entry(i, term_of(i))).collect();
        assert_eq!(got, want);
    }
}

const SMALL: u64 = 1024;

/// Where a segment's records end and the zeros written ahead of them begin.
fn records_end(segment: &std::path::Path) -> u64 {
    let bytes = std::fs::read(segment).expect("read segment");
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}

#[test]
fn entries_and_hard_state_come_back_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, SMALL).expect("open");
    wal.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
        .expect("append");
    // A new leader overwrites 7.. with a shorter suffix of term 2.
    wal.append(&[entry(7, 2), entry(8, 2)], Some(&hard_state(2, 6)))
        .expect("overwrite");
    let term_of = |i| if i >= 7 { 2 } else { 1 };
    assert_log(&wal, 1, 8, term_of);
    drop(wal);
    let wal = open_wal(dir.path(), false, SMALL).expect("reopen");
    assert_log(&wal, 1, 8, term_of);
    assert_eq!(wal.hard_state(), hard_state(2, 6));
}

#[test]
fn segments_rotate_and_compaction_deletes_the_old_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, SMALL).expect("open");
    for i in 1..=200 {
        wal.append(&[entry(i, 3)], Some(&hard_state(3, i - 1)))
            .expect("append");
    }
    let before = wal.segment_count();
    assert!(before > 4, "1 KiB segments rotate: {before}");
    wal.compact(150).expect("compact");
    let after = wal.segment_count();
    assert!(
        after < before,
        "compaction deleted segments: {before} -> {after}"
    );
    assert_eq!(
        list_segments(&fs::RealFs, dir.path()).expect("list").len(),
        after
    );
    assert_eq!(wal.truncated(), (149, 3));
    assert_log(&wal, 150, 200, |_| 3);
    drop(wal);
    // Replay starts at a segment whose entries begin after deleted ones; the compaction record
    // covers the gap.
    let wal = open_wal(dir.path(), false, SMALL).expect("reopen");
    assert_eq!(wal.truncated(), (149, 3));
    assert_log(&wal, 150, 200, |_| 3);
    assert_eq!(wal.hard_state(), hard_state(3, 199));
    wal.append(&[entry(201, 4)], None)
        .expect("append after reopen");
    assert_eq!(wal.term(201), Some(4));
}

/// A WAL holding entries 1..=5 in one segment, closed; its dir and that segment.
fn five_entries_in_one_segment() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, 1 << 20).expect("open");
    wal.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
        .expect("append");
    drop(wal);
    let (_, last) = list_segments(&fs::RealFs, dir.path())
        .expect("list")
        .pop()
        .expect("a segment");
    (dir, last)
}

#[test]
fn a_torn_tail_is_cut_off_and_the_log_goes_on() {
    let (dir, last) = five_entries_in_one_segment();
    let intact = records_end(&last);
    assert!(
        intact < std::fs::metadata(&last).expect("meta").len(),
        "the segment is filled ahead with zeros"
    );
    // A crash in the middle of the next write: a frame header promising more than is there.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open segment");
    f.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9], intact)
        .expect("write");
    drop(f);
    let wal = open_wal(dir.path(), false, 1 << 20).expect("reopen");
    assert_log(&wal, 1, 5, |_| 1);
    assert_eq!(std::fs::metadata(&last).expect("meta").len(), intact);
    wal.append(&[entry(6, 1)], None).expect("append");
    drop(wal);
    let wal = open_wal(dir.path(), false, 1 << 20).expect("reopen");
    assert_log(&wal, 1, 6, |_| 1);
}

#[test]
fn damage_before_the_newest_segment_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, SMALL).expect("open");
    for i in 1..=60 {
        wal.append(&[entry(i, 1)], None).expect("append");
    }
    drop(wal);
    let segments = list_segments(&fs::RealFs, dir.path()).expect("list");
    assert!(segments.len() >= 3);
    let victim = &segments[1].1;
    let mut bytes = std::fs::read(victim).expect("read");
    let mid = records_end(victim) as usize / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(victim, &bytes).expect("write");
    let err = open_wal(dir.path(), false, SMALL).err().expect("refused");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(victim).expect("read"), bytes);
    assert_eq!(
        list_segments(&fs::RealFs, dir.path()).expect("list").len(),
        segments.len()
    );
}

#[test]
fn an_interrupted_segment_creation_is_redone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, 1 << 20).expect("open");
    wal.append(&[entry(1, 1), entry(2, 1)], None)
        .expect("append");
    drop(wal);
    // The crash hit after the next segment's file was created, before its start was written.
    std::fs::File::create(dir.path().join(format!("{:016x}.seg", 2))).expect("create");
    let wal = open_wal(dir.path(), false, 1 << 20).expect("reopen");
    assert_log(&wal, 1, 2, |_| 1);
    wal.append(&[entry(3, 1)], None).expect("append");
    drop(wal);
    let wal = open_wal(dir.path(), false, 1 << 20).expect("reopen");
    assert_log(&wal, 1, 3, |_| 1);
}

#[test]
fn a_reset_replaces_the_log_and_frees_its_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, SMALL).expect("open");
    for i in 1..=80 {
        wal.append(&[entry(i, 1)], None).expect("append");
    }
    // A snapshot at 50 from a leader whose log disagrees from 40 on.
    wal.reset((50, 2), &hard_state(2, 50)).expect("reset");
    assert_eq!(wal.segment_count(), 1, "every older segment is dead");
    assert_log(&wal, 51, 50, |_| 2);
    assert_eq!(wal.term(50), Some(2));
    wal.append(&[entry(51, 2)], None).expect("append");
    drop(wal);
    let wal = open_wal(dir.path(), false, SMALL).expect("reopen");
    assert_eq!(wal.truncated(), (50, 2));
    assert_log(&wal, 51, 51, |_| 2);
    assert_eq!(wal.hard_state(), hard_state(2, 50));
}

#[test]
fn a_read_only_open_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let ro = open_wal(&wal_dir, true, SMALL).expect("open missing dir read-only");
    assert_eq!(ro.last_index(), 0);
    assert!(!wal_dir.exists());
    assert!(ro.append(&[entry(1, 1)], None).is_err());
    let wal = open_wal(&wal_dir, false, SMALL).expect("open");
    wal.append(&[entry(1, 1)], None).expect("append");
    let ro = open_wal(&wal_dir, true, SMALL).expect("open read-only");
    assert_log(&ro, 1, 1, |_| 1);
}

/// Issue 21, defect 2: an uncommitted tail that straddles a segment rotation, overwritten by a
/// new leader from below the rotation point, then a compaction that deletes the older segment.
/// Replay meets the higher append first (after a gap), then the overwrite below where the gap
/// began; it used to refuse its own log ("append at N overwrites compacted log") forever.
#[test]
fn an_overwrite_from_below_a_deleted_segment_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, SMALL).expect("open");
    let mut last = 0;
    while wal.segment_count() < 2 {
        last += 1;
        wal.append(&[entry(last, 1)], None).expect("append");
    }
    // `last` started the second segment; everything before it sits in the first.
    let rotated_at = last;
    wal.append(&[entry(last + 1, 1), entry(last + 2, 1)], None)
        .expect("the tail straddles the rotation");
    // A new leader of term 2 overwrites from below the rotation point.
    let from = rotated_at - 2;
    wal.append(
        &(from..=from + 5).map(|i| entry(i, 2)).collect::<Vec<_>>(),
        Some(&hard_state(2, from + 5)),
    )
    .expect("overwrite");
    wal.compact(rotated_at + 1)
        .expect("compact past the first segment");
    assert_eq!(wal.segment_count(), 1, "the first segment is deleted");
    let term_of = |i| if i >= from { 2 } else { 1 };
    assert_log(&wal, rotated_at + 1, from + 5, term_of);
    drop(wal);
    let wal = open_wal(dir.path(), false, SMALL).expect("the log replays");
    assert_log(&wal, rotated_at + 1, from + 5, term_of);
    assert_eq!(wal.truncated(), (rotated_at, 2));
}

/// Issue 21, defect 5: a damaged record in the middle of the newest segment, followed by
/// intact (acknowledged) records, is not a torn tail: the open is refused and nothing is cut.
#[test]
fn a_damaged_record_followed_by_intact_ones_in_the_newest_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path(), false, 1 << 20).expect("open");
    for i in 1..=10 {
        wal.append(&[entry(i, 1)], None).expect("append");
    }
    drop(wal);
    let (_, newest) = list_segments(&fs::RealFs, dir.path())
        .expect("list")
        .pop()
        .expect("a segment");
    let mut bytes = std::fs::read(&newest).expect("read");
    let mid = records_end(&newest) as usize / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, &bytes).expect("write");
    let err = open_wal(dir.path(), false, 1 << 20).err().expect("refused");
    assert!(
        err.to_string().contains("followed by an intact record"),
        "{err}"
    );
    assert_eq!(std::fs::read(&newest).expect("read"), bytes, "nothing cut");
}

/// The torn tail a crash leaves can be the later sectors of the last write without its
/// beginning (sectors reach the disk in any order): that is still a torn tail, cut on open.
#[test]
fn the_remains_of_a_torn_last_write_after_zeros_are_cut() {
    let (dir, last) = five_entries_in_one_segment();
    let intact = records_end(&last);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open segment");
    // The frame header never made it; a later sector of the record did.
    f.write_all_at(&[0x5a; 100], intact + 600).expect("write");
    drop(f);
    let wal = open_wal(dir.path(), false, 1 << 20).expect("reopen");
    assert_log(&wal, 1, 5, |_| 1);
}

/// Issue 21, defect 1: bytes read back from the file that do not match what was written (a
/// FUSE race returned zeros) are read again, and when they stay bad the read is an error that
/// names the file and offset; the entry cache serves what was just written without a read.
#[test]
fn bad_bytes_from_the_file_system_are_retried_then_reported_and_recent_entries_need_no_read() {
    use crate::storage::fs::{FileSystem, SimDisk, SimFaults};
    let disk = SimDisk::new(7);
    let dir = std::path::Path::new("/data/wal");
    let open = |cache_bytes| {
        let options = WalOptions {
            segment_bytes: 1 << 20,
            cache_bytes,
        };
        Wal::open(std::sync::Arc::new(disk.clone()), dir, false, options).expect("open")
    };
    let wal = open(1 << 20);
    wal.append(&(1..=20).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
        .expect("append");
    let always_bad = SimFaults {
        bad_read_ppm: 1_000_000,
        ..Default::default()
    };
    disk.set_faults(always_bad);
    assert_log(&wal, 1, 20, |_| 1);
    assert_eq!(disk.stats().bad_reads, 0, "served from the cache");
    drop(wal);
    disk.set_faults(SimFaults::default());
    let wal = open(0);
    disk.set_faults(always_bad);
    let err = wal.entries(3, 5, None).expect_err("bad bytes every time");
    let text = err.to_string();
    assert!(
        text.contains("/data/wal/") && text.contains("offset"),
        "{text}"
    );
    assert_eq!(disk.stats().bad_reads, super::READ_ATTEMPTS as u64);
    // A race that returns bad bytes a few times: the retry reads the real ones.
    disk.set_faults(SimFaults::default());
    disk.bad_next_reads(super::READ_ATTEMPTS as u32 - 1);
    assert_log(&wal, 1, 20, |_| 1);
    assert_eq!(disk.stats().bad_reads, 2 * super::READ_ATTEMPTS as u64 - 1);
    assert!(disk.exists(dir));
}

/// Issue 21, item 4 (fsyncgate): after a failed sync the WAL never writes again, even once the
/// disk answers; a restart after the power cut replays only what a sync confirmed.
#[test]
fn a_failed_sync_stops_the_wal_and_a_restart_keeps_only_what_was_synced() {
    use crate::storage::fs::{SimDisk, SimFaults};
    for seed in 0..20 {
        let disk = SimDisk::new(seed);
        let dir = std::path::Path::new("/data/wal");
        let open = || {
            let options = WalOptions {
                segment_bytes: 1 << 20,
                cache_bytes: 1 << 20,
            };
            Wal::open(std::sync::Arc::new(disk.clone()), dir, false, options)
        };
        let wal = open().expect("open");
        wal.append(&[entry(1, 1), entry(2, 1)], Some(&hard_state(1, 0)))
            .expect("append");
        disk.set_faults(SimFaults {
            sync_error_ppm: 1_000_000,
            ..Default::default()
        });
        wal.append(&[entry(3, 1)], None)
            .expect_err("the sync failed");
        disk.set_faults(SimFaults::default());
        let again = wal.append(&[entry(3, 1)], None).expect_err("no retry");
        assert!(again.to_string().contains("restart the node"), "{again}");
        assert!(wal.compact(2).is_err(), "no other write either");
        drop(wal);
        disk.crash();
        let wal = open().expect("reopen after the power cut");
        assert_log(&wal, 1, 2, |_| 1);
        assert_eq!(wal.hard_state(), hard_state(1, 0), "seed {seed}");
    }
}
