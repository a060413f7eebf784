//! Snapshot data as plain files beside LMDB: `<data dir>/snapshots/<index>-<term>.snap`.
//!
//! Why files: a snapshot is one large value written whole and read whole. In LMDB every new
//! snapshot was copied into freshly allocated pages (the old ones are reusable only later), so
//! the map grew to several snapshots' size, a write held a second copy of the data in memory, and
//! reading it mapped its pages into the process. A file is written from the caller's buffer,
//! synced, and renamed into place.
//!
//! Invariants:
//! - A `.snap` file is complete and durable before anything refers to it: it is written under a
//!   temporary name, synced, renamed, and the directory synced.
//! - LMDB's `snapshot_meta` names the current file (by index and term). Files it does not name
//!   (an older snapshot not deleted yet, or a newer one whose metadata a crash cut off) and
//!   temporary files are deleted when the store opens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{read_all, FileCursor, FileSystem, OpenMode};
use super::records::corrupt;
use super::StorageError;

const DIR: &str = "snapshots";
const SUFFIX: &str = ".snap";
const TMP_PREFIX: &str = "writing-";

/// The snapshot file the metadata names is not there.
fn missing(path: &Path) -> StorageError {
    corrupt(
        "snapshot",
        format!("{} is missing (the metadata names it)", path.display()),
    )
}

/// The snapshot files of one data dir.
pub(crate) struct SnapshotFiles {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
}

impl SnapshotFiles {
    /// The snapshot directory of `data_dir` (created unless `read_only`).
    pub(crate) fn open(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        read_only: bool,
    ) -> Result<Self, StorageError> {
        let dir = data_dir.join(DIR);
        if !read_only && !fs.exists(&dir) {
            fs.create_dir_all(&dir)?;
            fs.sync_dir(data_dir)?;
        }
        Ok(SnapshotFiles { fs, dir })
    }

    fn name(index: u64, term: u64) -> String {
        format!("{index:020}-{term:020}{SUFFIX}")
    }

    fn path(&self, index: u64, term: u64) -> PathBuf {
        self.dir.join(Self::name(index, term))
    }

    /// Durably store the data of the snapshot at `index`/`term`.
    pub(crate) fn write(&self, index: u64, term: u64, data: &[u8]) -> Result<(), StorageError> {
        self.write_with(index, term, &mut |file| Ok(file.write_all(data)?))
    }

    /// Durably store the snapshot at `index`/`term` whose data `fill` writes into the file (it
    /// may seek back and patch what it wrote). If `fill` fails, nothing is stored.
    pub(crate) fn write_with(
        &self,
        index: u64,
        term: u64,
        fill: &mut dyn FnMut(&mut FileCursor) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}", Self::name(index, term)));
        let written = (|| -> Result<(), StorageError> {
            let file = self.fs.open(&tmp, OpenMode::CreateTruncate)?;
            fill(&mut FileCursor::new(file.clone()))?;
            file.sync_all()?;
            self.fs.rename(&tmp, &self.path(index, term))?;
            Ok(self.fs.sync_dir(&self.dir)?)
        })();
        if written.is_err() {
            let _ = self.fs.remove_file(&tmp);
        }
        written
    }

    /// Durably store the snapshot at `index`/`term` whose complete data is the file at `from`
    /// (a snapshot the transport received into the data dir): the file is synced and renamed
    /// into place instead of being copied. Should the rename fail (`from` on another file
    /// system), the data is copied. `from` is gone afterwards either way.
    pub(crate) fn adopt(&self, index: u64, term: u64, from: &Path) -> Result<(), StorageError> {
        self.fs.open(from, OpenMode::Read)?.sync_all()?;
        if self.fs.rename(from, &self.path(index, term)).is_ok() {
            return Ok(self.fs.sync_dir(&self.dir)?);
        }
        let mut source = FileCursor::new(self.fs.open(from, OpenMode::Read)?);
        self.write_with(index, term, &mut |file| {
            std::io::copy(&mut source, file)?;
            Ok(())
        })?;
        let _ = self.fs.remove_file(from);
        Ok(())
    }

    /// The path of the snapshot at `index`/`term`, after checking that the file is there.
    pub(crate) fn existing_path(&self, index: u64, term: u64) -> Result<PathBuf, StorageError> {
        self.check(index, term)?;
        Ok(self.path(index, term))
    }

    /// The data of the snapshot at `index`/`term`.
    pub(crate) fn read(&self, index: u64, term: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path(index, term);
        read_all(&*self.fs, &path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing(&path)
            } else {
                StorageError::Io(e)
            }
        })
    }

    /// Check that the file of the snapshot at `index`/`term` is there.
    pub(crate) fn check(&self, index: u64, term: u64) -> Result<(), StorageError> {
        let path = self.path(index, term);
        if self.fs.is_file(&path) {
            Ok(())
        } else {
            Err(missing(&path))
        }
    }

    /// Delete every snapshot file but the one of `index`/`term` (`None`: keep none), and every
    /// temporary file.
    pub(crate) fn keep_only(&self, keep: Option<(u64, u64)>) -> Result<(), StorageError> {
        let keep = keep.map(|(index, term)| Self::name(index, term));
        for path in self.fs.list(&self.dir)? {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let ours = name.ends_with(SUFFIX) || name.starts_with(TMP_PREFIX);
            if ours && Some(name) != keep.as_deref() {
                match self.fs.remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}
