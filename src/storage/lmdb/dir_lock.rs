//! One writer per data dir: an exclusive lock on `<data dir>/LOCK`, held while the store is open.
//!
//! Why: LMDB lets several processes share an environment, and the WAL has no such protocol. Two
//! nodes started on one data dir (a second process, a copy-pasted command line, a restart while
//! the old process still runs) would both append and acknowledge, and one's writes would
//! overwrite the other's on disk. The lock is `flock`-style: the kernel releases it when the
//! holder exits, however it exits, so a crash never leaves a stale lock behind. It conflicts
//! between two opens in one process too. Read-only opens (the CLI) do not take it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::storage::StorageError;

/// The lock file's name inside the data dir.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Held for as long as the store is open; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Take the data dir's lock, or say who holds it. The file records the holder's pid (for the
    /// message only; the lock itself is the kernel's).
    pub(crate) fn acquire(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut recorded = String::new();
                let _ = file.read_to_string(&mut recorded);
                let holder = match recorded.trim() {
                    "" => "holder unknown".to_string(),
                    pid if pid.parse::<u32>() == Ok(std::process::id()) => {
                        format!("pid {pid}, this process")
                    }
                    pid => format!("pid {pid}"),
                };
                return Err(StorageError::InUse {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(DataDirLock { _file: file })
    }
}
