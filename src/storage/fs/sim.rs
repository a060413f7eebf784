//! `SimDisk`: an in-memory disk that forgets what a power cut may forget.
//!
//! What a running process sees is always the latest state (like the page cache). What survives
//! [`SimDisk::crash`] is decided then, from the disk's own seeded random generator, within what
//! real disks and journaling file systems allow:
//! - A file's data written since its last successful `sync_data` / `sync_all` may be lost, kept,
//!   or torn: each 512-byte sector of each unsynced write is kept or lost on its own, and the
//!   writes are applied in the order they were made. A length change not synced may be lost.
//! - A name created, renamed or removed since its directory was last synced may revert: the
//!   namespace changes not yet synced are kept as a prefix (in the order they were made, as a
//!   journal commits them); a rename moves both names at once or neither. A file no name refers
//!   to any more is gone with its data.
//! - A failed sync (an injected error) drops what it should have written from the durable
//!   state while the process still reads it back: the fsyncgate case, where retrying the sync
//!   would report success for lost data.
//!
//! Faults ([`SimFaults`]): I/O errors and `ENOSPC` on writes, syncs, creates, renames and
//! directory syncs, and bad reads (zeros instead of the stored bytes, once, the stored bytes
//! untouched: what a racy FUSE cache was seen to do).
//!
//! Handles opened before a crash fail every call afterwards: the process that held them is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DiskFile, FileSystem, OpenMode};

const SECTOR: u64 = 512;

/// Fault rates, in parts per million of calls. All zero by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// A write, set_len, create, rename or remove fails with EIO (nothing changes).
    pub write_error_ppm: u32,
    /// A write fails with ENOSPC (nothing changes).
    pub no_space_ppm: u32,
    /// A file or directory sync fails with EIO. A failed file sync loses the unsynced data from
    /// the durable state (see the module docs).
    pub sync_error_ppm: u32,
    /// A read returns zeros instead of the stored bytes (the stored bytes stay intact).
    pub bad_read_ppm: u32,
}

/// What one crash threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Namespace changes (creates, renames, removes, new directories) that reverted.
    pub names_reverted: usize,
    /// Unsynced writes lost whole.
    pub writes_lost: usize,
    /// Unsynced writes kept in part (some sectors new, some old).
    pub writes_torn: usize,
    /// Unsynced writes kept whole.
    pub writes_kept: usize,
}

/// Counts of what the disk was asked to do and what it injected, for a simulation's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    /// File and directory syncs asked of the disk, failed ones included.
    pub syncs: u64,
    /// I/O errors (including out-of-space) the disk injected.
    pub injected_errors: u64,
    /// Reads that returned zeros instead of the stored bytes.
    pub bad_reads: u64,
    /// Power cuts (`SimDisk::crash` calls).
    pub crashes: u64,
}

enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct Inode {
    /// What the process reads.
    data: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Changes since the last sync, oldest first.
    unsynced: Vec<Pending>,
}

#[derive(Clone)]
enum NameOp {
    Set {
        path: PathBuf,
        ino: Option<u64>,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
    MkDir(PathBuf),
}

impl NameOp {
    fn touches(&self, dir: &Path) -> bool {
        match self {
            NameOp::Set { path, .. } | NameOp::MkDir(path) => path.parent() == Some(dir),
            NameOp::Rename { from, to, .. } => {
                from.parent() == Some(dir) || to.parent() == Some(dir)
            }
        }
    }
}

#[derive(Default)]
struct Namespace {
    files: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
}

impl Namespace {
    fn apply(&mut self, op: &NameOp) {
        match op {
            NameOp::Set {
                path,
                ino: Some(ino),
            } => {
                self.files.insert(path.clone(), *ino);
            }
            NameOp::Set { path, ino: None } => {
                self.files.remove(path);
            }
            NameOp::Rename { from, to, ino } => {
                self.files.remove(from);
                self.files.insert(to.clone(), *ino);
            }
            NameOp::MkDir(path) => {
                self.dirs.insert(path.clone());
            }
        }
    }
}

struct State {
    inodes: BTreeMap<u64, Inode>,
    live: Namespace,
    durable: Namespace,
    pending: Vec<NameOp>,
    next_ino: u64,
    generation: u64,
    faults: SimFaults,
    /// Reads still to answer with zeros (`bad_next_reads`).
    bad_next_reads: u32,
    rng: StdRng,
    stats: SimDiskStats,
}

impl State {
    fn roll(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.random_range(0..1_000_000) < ppm
    }

    fn injected(&mut self, what: &str) -> io::Error {
        self.stats.injected_errors += 1;
        io::Error::other(format!("simulated I/O error on {what}"))
    }

    /// An injected failure for a call that changes something, if one is drawn.
    fn write_fault(&mut self, what: &str) -> Option<io::Error> {
        if self.roll(self.faults.write_error_ppm) {
            return Some(self.injected(what));
        }
        if self.roll(self.faults.no_space_ppm) {
            self.stats.injected_errors += 1;
            return Some(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("simulated ENOSPC on {what}"),
            ));
        }
        None
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        // Directories this disk never created (the data dir's parents) count as always there.
        self.live.dirs.contains(dir) || !self.live.dirs.iter().any(|d| dir.starts_with(d))
    }

    fn record(&mut self, op: NameOp) {
        self.live.apply(&op);
        self.pending.push(op);
    }
}

/// An in-memory disk for simulations; see the module docs. Cloning shares the disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// An empty disk whose crash decisions and faults are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                inodes: BTreeMap::new(),
                live: Namespace::default(),
                durable: Namespace::default(),
                pending: Vec::new(),
                next_ino: 1,
                generation: 0,
                faults: SimFaults::default(),
                bad_next_reads: 0,
                rng: StdRng::seed_from_u64(seed),
                stats: SimDiskStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set the fault rates from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// The next `n` reads return zeros (see `SimFaults::bad_read_ppm`).
    pub fn bad_next_reads(&self, n: u32) {
        self.lock().bad_next_reads = n;
    }

    /// What the disk did so far.
    pub fn stats(&self) -> SimDiskStats {
        self.lock().stats
    }

    /// Cut the power: keep what was synced and, drawn at random, part of what was not (see the
    /// module docs). Every handle opened before fails from now on.
    pub fn crash(&self) -> CrashReport {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut report = CrashReport::default();
        st.generation += 1;
        st.stats.crashes += 1;
        // Namespace: a prefix of the changes not synced.
        let keep = st.rng.random_range(0..=st.pending.len());
        report.names_reverted = st.pending.len() - keep;
        for op in st.pending.drain(..).take(keep) {
            st.durable.apply(&op);
        }
        st.live = Namespace {
            files: st.durable.files.clone(),
            dirs: st.durable.dirs.clone(),
        };
        let named: BTreeSet<u64> = st.live.files.values().copied().collect();
        st.inodes.retain(|ino, _| named.contains(ino));
        // Data: per write, lose it, keep it, or tear it at sector boundaries.
        let inos: Vec<u64> = st.inodes.keys().copied().collect();
        for ino in inos {
            let unsynced = std::mem::take(&mut st.inodes.get_mut(&ino).expect("listed").unsynced);
            let mut data = st.inodes[&ino].durable.clone();
            for change in unsynced {
                match change {
                    Pending::SetLen(len) => {
                        if st.rng.random_bool(0.5) {
                            data.resize(len as usize, 0);
                        }
                    }
                    Pending::Write {
                        offset,
                        data: bytes,
                    } => {
                        let mode = st.rng.random_range(0..3);
                        let end = offset + bytes.len() as u64;
                        let mut kept_any = false;
                        let mut lost_any = false;
                        let mut at = offset;
                        while at < end {
                            let sector_end = ((at / SECTOR) + 1) * SECTOR;
                            let piece_end = sector_end.min(end);
                            let keep = match mode {
                                0 => false,
                                1 => true,
                                _ => st.rng.random_bool(0.5),
                            };
                            if keep {
                                if data.len() < piece_end as usize {
                                    data.resize(piece_end as usize, 0);
                                }
                                let from = (at - offset) as usize;
                                let to = (piece_end - offset) as usize;
                                data[at as usize..piece_end as usize]
                                    .copy_from_slice(&bytes[from..to]);
                                kept_any = true;
                            } else {
                                lost_any = true;
                            }
                            at = piece_end;
                        }
                        match (kept_any, lost_any) {
                            (true, false) => report.writes_kept += 1,
                            (true, true) => report.writes_torn += 1,
                            _ => report.writes_lost += 1,
                        }
                    }
                }
            }
            let inode = st.inodes.get_mut(&ino).expect("listed");
            inode.durable = data.clone();
            inode.data = data;
        }
        report
    }

    /// The bytes of `path` as the running process sees them (for tests).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.live.files.get(path)?;
        Some(st.inodes[ino].data.clone())
    }

    /// Change the bytes of `path` at `offset` as if the medium had decayed: durable at once,
    /// no sync needed (for tests of damage detection).
    pub fn damage(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st
            .live
            .files
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such simulated file"))?;
        let inode = st.inodes.get_mut(&ino).expect("named inode exists");
        for data in [&mut inode.data, &mut inode.durable] {
            let end = offset as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset as usize..end].copy_from_slice(bytes);
        }
        Ok(())
    }
}

struct SimFile {
    disk: SimDisk,
    ino: u64,
    generation: u64,
    writable: bool,
}

impl SimFile {
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = self.disk.lock();
        if st.generation != self.generation {
            return Err(io::Error::other(
                "the simulated machine lost power since this file was opened",
            ));
        }
        Ok(st)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.state()?;
        st.stats.syncs += 1;
        let ppm = st.faults.sync_error_ppm;
        let failed = st.roll(ppm);
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(gone)?;
        if failed {
            // The kernel marks the pages clean after a failed writeback: what they held is not
            // on disk, and no later sync will write it.
            inode.unsynced.clear();
            return Err(st.injected("fsync"));
        }
        // Only what was written since the last sync goes to disk: pages a failed sync dropped
        // stay lost although the process still reads them.
        for change in std::mem::take(&mut inode.unsynced) {
            match change {
                Pending::SetLen(len) => inode.durable.resize(len as usize, 0),
                Pending::Write { offset, data } => {
                    let end = offset as usize + data.len();
                    if inode.durable.len() < end {
                        inode.durable.resize(end, 0);
                    }
                    inode.durable[offset as usize..end].copy_from_slice(&data);
                }
            }
        }
        Ok(())
    }
}

fn gone() -> io::Error {
    io::Error::other("simulated file has no inode")
}

impl DiskFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut st = self.state()?;
        let ppm = st.faults.bad_read_ppm;
        let bad = st.bad_next_reads > 0 || st.roll(ppm);
        st.bad_next_reads = st.bad_next_reads.saturating_sub(1);
        let data = &st.inodes.get(&self.ino).ok_or_else(gone)?.data;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        if bad {
            buf[..n].fill(0);
            st.stats.bad_reads += 1;
        } else {
            buf[..n].copy_from_slice(&data[start..start + n]);
        }
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut st = self.state()?;
        if let Some(e) = st.write_fault("write") {
            return Err(e);
        }
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(gone)?;
        let end = offset as usize + buf.len();
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[offset as usize..end].copy_from_slice(buf);
        inode.unsynced.push(Pending::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut st = self.state()?;
        if let Some(e) = st.write_fault("set_len") {
            return Err(e);
        }
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(gone)?;
        inode.data.resize(len as usize, 0);
        inode.unsynced.push(Pending::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.state()?;
        Ok(st.inodes.get(&self.ino).ok_or_else(gone)?.data.len() as u64)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such simulated file or directory", path.display()),
    )
}

impl FileSystem for SimDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut st = self.lock();
        let existing = st.live.files.get(path).copied();
        let ino = match (mode, existing) {
            (OpenMode::Read | OpenMode::ReadWrite, Some(ino)) => ino,
            (OpenMode::Read | OpenMode::ReadWrite, None) => return Err(not_found(path)),
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ))
            }
            (OpenMode::CreateTruncate, Some(ino)) => {
                if let Some(e) = st.write_fault("truncate") {
                    return Err(e);
                }
                let inode = st.inodes.get_mut(&ino).ok_or_else(gone)?;
                inode.data.clear();
                inode.unsynced.push(Pending::SetLen(0));
                ino
            }
            (OpenMode::CreateNew | OpenMode::CreateTruncate, None) => {
                if !path.parent().is_some_and(|p| st.dir_exists(p)) {
                    return Err(not_found(path));
                }
                if let Some(e) = st.write_fault("create") {
                    return Err(e);
                }
                let ino = st.next_ino;
                st.next_ino += 1;
                st.inodes.insert(ino, Inode::default());
                st.record(NameOp::Set {
                    path: path.to_path_buf(),
                    ino: Some(ino),
                });
                ino
            }
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            ino,
            generation: st.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(dir) = at {
            if st.live.dirs.contains(dir) || dir.as_os_str().is_empty() {
                break;
            }
            missing.push(dir.to_path_buf());
            at = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            st.record(NameOp::MkDir(dir));
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.live.files.get(from).ok_or_else(|| not_found(from))?;
        if let Some(e) = st.write_fault("rename") {
            return Err(e);
        }
        st.record(NameOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            ino,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if !st.live.files.contains_key(path) {
            return Err(not_found(path));
        }
        if let Some(e) = st.write_fault("unlink") {
            return Err(e);
        }
        st.record(NameOp::Set {
            path: path.to_path_buf(),
            ino: None,
        });
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let st = self.lock();
        if !st.dir_exists(dir) {
            return Err(not_found(dir));
        }
        let files = st.live.files.keys().filter(|p| p.parent() == Some(dir));
        let dirs = st.live.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files.chain(dirs).cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.stats.syncs += 1;
        if st.roll(st.faults.sync_error_ppm) {
            return Err(st.injected("directory sync"));
        }
        let (now, later): (Vec<NameOp>, Vec<NameOp>) =
            st.pending.drain(..).partition(|op| op.touches(dir));
        for op in &now {
            st.durable.apply(op);
        }
        st.pending = later;
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.live.files.contains_key(path) || st.live.dirs.contains(path)
    }

    fn is_file(&self, path: &Path) -> bool {
        self.lock().live.files.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(disk: &SimDisk, path: &str, bytes: &[u8], sync: bool) {
        let f = disk
            .open(Path::new(path), OpenMode::CreateNew)
            .expect("create");
        f.write_all_at(bytes, 0).expect("write");
        if sync {
            f.sync_all().expect("sync");
        }
    }

    #[test]
    fn synced_data_and_synced_names_survive_every_crash() {
        for seed in 0..50 {
            let disk = SimDisk::new(seed);
            disk.create_dir_all(Path::new("/d")).expect("mkdir");
            write_file(&disk, "/d/a", &[7u8; 2000], true);
            disk.sync_dir(Path::new("/d")).expect("sync dir");
            disk.crash();
            assert_eq!(
                disk.contents(Path::new("/d/a")),
                Some(vec![7u8; 2000]),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn unsynced_writes_are_lost_kept_or_torn_at_sectors() {
        let (mut lost, mut kept, mut torn) = (false, false, false);
        for seed in 0..200 {
            let disk = SimDisk::new(seed);
            write_file(&disk, "/a", &[1u8; 2048], true);
            disk.sync_dir(Path::new("/")).expect("sync dir");
            let f = disk
                .open(Path::new("/a"), OpenMode::ReadWrite)
                .expect("open");
            f.write_all_at(&[2u8; 2048], 0).expect("write");
            disk.crash();
            let after = disk.contents(Path::new("/a")).expect("synced name stays");
            for sector in after.chunks(512) {
                assert!(
                    sector.iter().all(|b| *b == sector[0]),
                    "a sector is never split"
                );
            }
            match (after.contains(&1), after.contains(&2)) {
                (true, false) => lost = true,
                (false, true) => kept = true,
                (true, true) => torn = true,
                _ => unreachable!(),
            }
        }
        assert!(lost && kept && torn, "lost {lost} kept {kept} torn {torn}");
    }

    #[test]
    fn a_file_whose_directory_was_not_synced_may_vanish() {
        let mut vanished = false;
        for seed in 0..50 {
            let disk = SimDisk::new(seed);
            write_file(&disk, "/a", b"data", true);
            disk.crash();
            vanished |= disk.contents(Path::new("/a")).is_none();
        }
        assert!(vanished);
    }

    #[test]
    fn a_rename_survives_whole_or_not_at_all() {
        let (mut old, mut new) = (false, false);
        for seed in 0..50 {
            let disk = SimDisk::new(seed);
            write_file(&disk, "/tmp-a", b"data", true);
            disk.sync_dir(Path::new("/")).expect("sync dir");
            disk.rename(Path::new("/tmp-a"), Path::new("/a"))
                .expect("rename");
            disk.crash();
            let (a, tmp) = (
                disk.exists(Path::new("/a")),
                disk.exists(Path::new("/tmp-a")),
            );
            assert!(a != tmp, "exactly one name after a crash (seed {seed})");
            old |= tmp;
            new |= a;
        }
        assert!(old && new);
    }

    #[test]
    fn a_failed_sync_loses_the_data_even_if_a_later_sync_succeeds() {
        let disk = SimDisk::new(1);
        write_file(&disk, "/a", &[1u8; 512], true);
        disk.sync_dir(Path::new("/")).expect("sync dir");
        let f = disk
            .open(Path::new("/a"), OpenMode::ReadWrite)
            .expect("open");
        f.write_all_at(&[2u8; 512], 0).expect("write");
        disk.set_faults(SimFaults {
            sync_error_ppm: 1_000_000,
            ..Default::default()
        });
        assert!(f.sync_data().is_err());
        disk.set_faults(SimFaults::default());
        f.sync_data().expect("the retried sync reports success");
        let mut buf = [0u8; 1];
        f.read_exact_at(&mut buf, 0).expect("read");
        assert_eq!(buf[0], 2, "the process still reads what it wrote");
        disk.crash();
        assert_eq!(disk.contents(Path::new("/a")), Some(vec![1u8; 512]));
    }

    #[test]
    fn handles_from_before_a_crash_fail() {
        let disk = SimDisk::new(1);
        write_file(&disk, "/a", b"x", true);
        let f = disk.open(Path::new("/a"), OpenMode::Read).expect("open");
        disk.crash();
        assert!(f.len().is_err());
    }

    #[test]
    fn bad_reads_return_zeros_and_leave_the_data_intact() {
        let disk = SimDisk::new(1);
        write_file(&disk, "/a", &[9u8; 64], true);
        disk.set_faults(SimFaults {
            bad_read_ppm: 1_000_000,
            ..Default::default()
        });
        let f = disk.open(Path::new("/a"), OpenMode::Read).expect("open");
        let mut buf = [1u8; 64];
        f.read_exact_at(&mut buf, 0).expect("read");
        assert_eq!(buf, [0u8; 64]);
        assert_eq!(disk.contents(Path::new("/a")), Some(vec![9u8; 64]));
    }
}
