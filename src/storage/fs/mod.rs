//! The file layer under the WAL and the snapshot files: the few operations they use, behind one
//! small interface, so that a test can put a simulated disk under the real storage code.
//!
//! Why an interface and not `std::fs` directly: the durability rules (sync the data before
//! acknowledging, sync the directory before trusting a name, never retry a failed sync) can only
//! be tested against a disk that forgets what was not synced. A killed process keeps the page
//! cache, so kill -9 tests never see that; `SimDisk` models a power cut instead.
//!
//! - [`RealFs`]: the operating system's files; what every node uses in production.
//! - [`SimDisk`]: an in-memory disk that models what a power cut may keep (see its docs) and
//!   injects I/O errors and bad reads on request.
//!
//! LMDB does not go through this layer: it syncs its own commits and is trusted with only those.

mod cursor;
mod real;
mod sim;

pub use cursor::FileCursor;
pub use real::RealFs;
pub use sim::{CrashReport, SimDisk, SimDiskStats, SimFaults};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading only.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails with `AlreadyExists` if the name is taken.
    CreateNew,
    /// A file for reading and writing, emptied if it exists and created if it does not.
    CreateTruncate,
}

/// One open file. Positions are explicit (`read_at` / `write_all_at`), so one handle can be
/// shared by threads without a seek position to race on; [`FileCursor`] adds `Read` / `Write` /
/// `Seek` for streaming code.
pub trait DiskFile: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; answers how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset`, extending the file if needed. Not durable until synced.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the file's data (and its length, where the data needs it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Make the file's data and metadata durable: `fsync`. The file's *name* still needs a
    /// directory sync.
    fn sync_all(&self) -> io::Result<()>;
    /// Cut or extend the file to `len` bytes (not durable until synced).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fill `buf` from `offset`, or fail with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the bytes asked for",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The file system operations the WAL and the snapshot files need. Paths are absolute or
/// relative to the process's working directory, as with `std::fs`.
pub trait FileSystem: Send + Sync + 'static {
    /// Open `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;
    /// Create `path` and its missing parents (not durable until each parent is synced).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Rename `from` to `to`, replacing `to` (atomic; durable after syncing the directories).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove the file `path` (durable after syncing its directory).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The paths of the entries of directory `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Make the names in `dir` (files created, renamed into or removed from it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` names a file (not a directory).
    fn is_file(&self, path: &Path) -> bool;
}

/// The file system production nodes use.
pub fn real() -> Arc<dyn FileSystem> {
    Arc::new(RealFs)
}

/// Read all of `path`.
pub fn read_all(fs: &dyn FileSystem, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path, OpenMode::Read)?;
    let len = file.len()?;
    let mut out = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact_at(&mut out, 0)?;
    Ok(out)
}
