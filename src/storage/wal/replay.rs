//! Reading segments back on open: which files are segments, and replaying one into the index.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::log_index::{EntryLoc, LogIndex, Segment};
use super::record::{self, Frame, Record};
use crate::storage::fs::{DiskFile, FileSystem};
use crate::storage::records::corrupt;
use crate::storage::StorageError;

/// A newest segment this short without a complete `Start` is an interrupted creation.
const MAX_UNSTARTED_LEN: usize = 512;

/// The segment files in `dir`, oldest first. Other files are ignored.
pub(super) fn list_segments(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for path in fs.list(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(hex) = name.strip_suffix(".seg") else {
            continue;
        };
        if hex.len() != 16 {
            continue;
        }
        if let Ok(seq) = u64::from_str_radix(hex, 16) {
            out.push((seq, path));
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Replay one segment into `index`; answers the length of its valid prefix.
/// `None` when it is the newest segment and holds no complete `Start` (see `open`).
pub(super) fn replay_segment(
    index: &mut LogIndex,
    seq: u64,
    file: Arc<dyn DiskFile>,
    path: &Path,
    is_last: bool,
) -> Result<Option<u64>, StorageError> {
    let len = file.len()?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    index.segments.insert(
        seq,
        Segment {
            file,
            path: path.to_path_buf(),
            max_index: 0,
        },
    );
    let mut pos = 0usize;
    let mut first = true;
    loop {
        match record::next_frame(&bytes[pos..]) {
            Frame::End if bytes[pos..].iter().all(|&b| b == 0) => break,
            Frame::End | Frame::Torn(_) if is_last => {
                // The end of the records. What follows may only be zeros or what is left of the
                // one write the crash interrupted; an intact record after it means the damage is
                // in the middle of the log, and cutting there would drop acknowledged records.
                if let Some(intact) = next_intact_record(&bytes, pos + 1) {
                    return Err(corrupt(
                        "WAL segment",
                        format!(
                            "{}: damaged record at byte {pos} is followed by an intact record at \
                             byte {intact}; refusing to cut acknowledged records (restore this \
                             node from a backup, or remove its data dir and let it rejoin)",
                            path.display()
                        ),
                    ));
                }
                break;
            }
            Frame::End => {
                return Err(corrupt(
                    "WAL segment",
                    format!(
                        "{}: zeros in the middle of the log at byte {pos}",
                        path.display()
                    ),
                ));
            }
            Frame::Torn(why) => {
                return Err(corrupt(
                    "WAL segment",
                    format!("{}: {why} at byte {pos}", path.display()),
                ));
            }
            Frame::Record(body, size) => {
                let body_at = (pos + record::FRAME_HEADER) as u64;
                match record::decode(body)? {
                    Record::Start {
                        seq: found,
                        truncated,
                        hard_state,
                    } => {
                        if !first || found != seq {
                            return Err(corrupt(
                                "WAL segment",
                                format!("{}: misplaced segment start", path.display()),
                            ));
                        }
                        index.apply_compact(truncated);
                        index.hard_state = hard_state;
                    }
                    _ if first => {
                        return Err(corrupt(
                            "WAL segment",
                            format!("{}: does not begin with a segment start", path.display()),
                        ));
                    }
                    Record::Append {
                        hard_state,
                        entries,
                    } => {
                        let locs = entries.into_iter().map(|l| {
                            (
                                l.index,
                                EntryLoc {
                                    term: l.term,
                                    seq,
                                    offset: body_at + l.offset as u64,
                                    len: l.len,
                                    crc: crc32fast::hash(
                                        &body[l.offset..l.offset + l.len as usize],
                                    ),
                                },
                            )
                        });
                        index.apply_append(seq, locs, hard_state, true)?;
                    }
                    Record::Compact { truncated } => index.apply_compact(truncated),
                    Record::Reset {
                        truncated,
                        hard_state,
                    } => index.apply_reset(truncated, hard_state),
                }
                first = false;
                pos += size;
            }
        }
    }
    if first {
        // Only a file too short to hold anything but a start may be an interrupted creation;
        // anything longer without a readable start is damage, not a crash.
        if is_last && bytes.len() <= MAX_UNSTARTED_LEN {
            return Ok(None);
        }
        return Err(corrupt(
            "WAL segment",
            format!("{}: no segment start", path.display()),
        ));
    }
    Ok(Some(pos as u64))
}

/// The position of the first record at or after `from` whose frame is whole, whose checksum
/// matches and whose body decodes, if any. Used only past a damaged frame, so every byte offset
/// is tried: the damage hides where the next record would begin.
fn next_intact_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(record::FRAME_HEADER)).find(|&at| {
        matches!(record::next_frame(&bytes[at..]), Frame::Record(body, _) if record::decode(body).is_ok())
    })
}
