//! `FileCursor`: `Read`, `Write` and `Seek` over a positioned [`DiskFile`], for code that streams
//! (a snapshot written chunk by chunk, a snapshot read by the state machine).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::DiskFile;

/// A file with a position of its own. Clones of the underlying handle keep their own cursors.
pub struct FileCursor {
    file: Arc<dyn DiskFile>,
    pos: u64,
}

impl FileCursor {
    /// A cursor at the start of `file`.
    pub fn new(file: Arc<dyn DiskFile>) -> Self {
        FileCursor { file, pos: 0 }
    }

    /// The file under the cursor.
    pub fn file(&self) -> &Arc<dyn DiskFile> {
        &self.file
    }
}

impl Read for FileCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for FileCursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FileCursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = |b: u64, d: i64| {
            b.checked_add_signed(d)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))
        };
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => base(self.pos, d)?,
            SeekFrom::End(d) => base(self.file.len()?, d)?,
        };
        Ok(self.pos)
    }
}
