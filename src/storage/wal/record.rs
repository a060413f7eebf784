//! The records of a WAL segment and their framing.
//!
//! Every record is `len u32 LE | crc32 u32 LE | body`, where `len` counts the body and the CRC
//! covers it. The body starts with a kind byte; integers are little-endian:
//! - `Start` (first record of every segment): `magic[8] | version u32 | seq u64 | truncated index
//!   u64 | truncated term u64 | hard state (len-prefixed protobuf)`. It carries the whole log state
//!   that is not an entry, so the segments before it can be deleted once compaction passed them.
//! - `Append`: `hard state (len-prefixed, length 0 = unchanged) | count u32 | count × (len u32 |
//!   eraftpb::Entry)`. Entries at or above the first one's index replace what was there.
//! - `Compact`: `index u64 | term u64`: every entry up to `index` is gone; `term` is its term.
//! - `Reset`: `index u64 | term u64 | hard state`: the log was replaced by a snapshot at `index`.
//!
//! An all-zero frame header (the zeros written ahead of the records) ends a segment. A record
//! whose frame is cut short or whose CRC does not match ends the readable log; only the last
//! segment may end that way (a write the crash interrupted, never acknowledged).

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, HardState};

use crate::storage::records::corrupt;
use crate::storage::StorageError;

/// Identifies a pontoon WAL segment.
pub(crate) const MAGIC: &[u8; 8] = b"PONTWAL\0";
/// The segment format this build writes and reads.
pub(crate) const WAL_VERSION: u32 = 1;
/// Bytes of `len | crc` before every record body.
pub(crate) const FRAME_HEADER: usize = 8;
/// Largest record body accepted when reading (a bigger length is corruption, not a record).
pub(crate) const MAX_RECORD: usize = 1 << 30;

const KIND_START: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_RESET: u8 = 4;

/// A decoded record. Entries are located, not decoded: `(index, term, offset of the entry's bytes
/// within the record body, length)`.
#[derive(Debug, PartialEq)]
pub(crate) enum Record {
    Start {
        seq: u64,
        truncated: (u64, u64),
        hard_state: HardState,
    },
    Append {
        hard_state: Option<HardState>,
        entries: Vec<LocatedEntry>,
    },
    Compact {
        truncated: (u64, u64),
    },
    Reset {
        truncated: (u64, u64),
        hard_state: HardState,
    },
}

/// Where an entry sits inside an `Append` body, with the two fields the index keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LocatedEntry {
    pub index: u64,
    pub term: u64,
    pub offset: usize,
    pub len: u32,
}

/// Builds one framed record in a reusable buffer.
pub(crate) struct RecordBuf {
    buf: Vec<u8>,
}

impl RecordBuf {
    fn begin(kind: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        buf.push(kind);
        RecordBuf { buf }
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn pb(&mut self, what: &str, msg: &impl PbMessage) -> Result<(), StorageError> {
        let at = self.buf.len();
        self.u32(0);
        msg.write_to_vec(&mut self.buf)
            .map_err(|e| corrupt(what, e))?;
        let len = frame_len(self.buf.len() - at - 4)?;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Fill in the frame header and hand out the bytes to write.
    fn finish(mut self) -> Result<Vec<u8>, StorageError> {
        let body_len = frame_len(self.buf.len() - FRAME_HEADER)?;
        let crc = crc32fast::hash(&self.buf[FRAME_HEADER..]);
        self.buf[..4].copy_from_slice(&body_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(self.buf)
    }
}

fn frame_len(len: usize) -> Result<u32, StorageError> {
    u32::try_from(len)
        .ok()
        .filter(|&l| (l as usize) <= MAX_RECORD)
        .ok_or_else(|| StorageError::InvalidOperation(format!("WAL record of {len} bytes")))
}

pub(crate) fn encode_start(
    seq: u64,
    truncated: (u64, u64),
    hard_state: &HardState,
) -> Result<Vec<u8>, StorageError> {
    let mut r = RecordBuf::begin(KIND_START);
    r.buf.extend_from_slice(MAGIC);
    r.u32(WAL_VERSION);
    r.u64(seq);
    r.u64(truncated.0);
    r.u64(truncated.1);
    r.pb("WAL hard state", hard_state)?;
    r.finish()
}

/// Offset (from the start of the framed record) and length of one entry's bytes.
pub(crate) type EntrySpan = (usize, u32);

/// An `Append` record, and for each entry the offset of its bytes within the framed record.
pub(crate) fn encode_append(
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<(Vec<u8>, Vec<EntrySpan>), StorageError> {
    let mut r = RecordBuf::begin(KIND_APPEND);
    match hard_state {
        Some(hs) => r.pb("WAL hard state", hs)?,
        None => r.u32(0),
    }
    let count = u32::try_from(entries.len())
        .map_err(|_| StorageError::InvalidOperation("too many entries in one batch".into()))?;
    r.u32(count);
    let mut spans = Vec::with_capacity(entries.len());
    for e in entries {
        let at = r.buf.len();
        r.u32(0);
        e.write_to_vec(&mut r.buf)
            .map_err(|err| corrupt("WAL entry", err))?;
        let len = frame_len(r.buf.len() - at - 4)?;
        r.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        spans.push((at + 4, len));
    }
    Ok((r.finish()?, spans))
}

pub(crate) fn encode_compact(truncated: (u64, u64)) -> Result<Vec<u8>, StorageError> {
    let mut r = RecordBuf::begin(KIND_COMPACT);
    r.u64(truncated.0);
    r.u64(truncated.1);
    r.finish()
}

pub(crate) fn encode_reset(
    truncated: (u64, u64),
    hard_state: &HardState,
) -> Result<Vec<u8>, StorageError> {
    let mut r = RecordBuf::begin(KIND_RESET);
    r.u64(truncated.0);
    r.u64(truncated.1);
    r.pb("WAL hard state", hard_state)?;
    r.finish()
}

/// What the next frame at the start of `bytes` holds.
pub(crate) enum Frame<'a> {
    /// A complete record with a matching CRC: its body and the frame's total size.
    Record(&'a [u8], usize),
    /// Nothing left.
    End,
    /// A frame cut short, too long or with a wrong CRC.
    Torn(&'static str),
}

pub(crate) fn next_frame(bytes: &[u8]) -> Frame<'_> {
    // Nothing left, or the zeros a segment is filled with ahead of its records.
    if bytes.iter().take(FRAME_HEADER).all(|&b| b == 0) {
        return Frame::End;
    }
    if bytes.len() < FRAME_HEADER {
        return Frame::Torn("frame header cut short");
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 || len > MAX_RECORD {
        return Frame::Torn("impossible record length");
    }
    let Some(body) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Torn("record cut short");
    };
    if crc32fast::hash(body) != crc {
        return Frame::Torn("record checksum mismatch");
    }
    Frame::Record(body, FRAME_HEADER + len)
}

/// Reads the fields of a record body, answering `Corrupt` when it runs short.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let end = self.at.checked_add(n);
        let out = end
            .and_then(|end| self.body.get(self.at..end))
            .ok_or_else(|| corrupt("WAL record", "shorter than its fields"))?;
        self.at += n;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        let mut arr = [0u8; 8];
        arr.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(arr))
    }

    fn pair(&mut self) -> Result<(u64, u64), StorageError> {
        Ok((self.u64()?, self.u64()?))
    }

    fn hard_state(&mut self) -> Result<Option<HardState>, StorageError> {
        let len = self.u32()? as usize;
        if len == 0 {
            return Ok(None);
        }
        let bytes = self.take(len)?;
        HardState::parse_from_bytes(bytes)
            .map(Some)
            .map_err(|e| corrupt("WAL hard state", e))
    }

    fn done(&self) -> Result<(), StorageError> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(corrupt("WAL record", "trailing bytes"))
        }
    }
}

/// Decode a record body (`next_frame` checked its CRC). Offsets of entries are relative to the
/// body; the caller adds the body's position in the file.
pub(crate) fn decode(body: &[u8]) -> Result<Record, StorageError> {
    let (&kind, rest) = body
        .split_first()
        .ok_or_else(|| corrupt("WAL record", "empty"))?;
    let mut r = Reader { body: rest, at: 0 };
    let record = match kind {
        KIND_START => {
            if r.take(MAGIC.len())? != MAGIC {
                return Err(corrupt("WAL segment", "not a pontoon WAL segment"));
            }
            let version = r.u32()?;
            if version != WAL_VERSION {
                return Err(corrupt(
                    "WAL segment",
                    format!("segment format {version}, this build reads {WAL_VERSION}"),
                ));
            }
            let seq = r.u64()?;
            let truncated = r.pair()?;
            let hard_state = r.hard_state()?.unwrap_or_default();
            Record::Start {
                seq,
                truncated,
                hard_state,
            }
        }
        KIND_APPEND => {
            let hard_state = r.hard_state()?;
            let count = r.u32()? as usize;
            let mut entries = Vec::with_capacity(count.min(rest.len() / 4));
            for _ in 0..count {
                let len = r.u32()?;
                let offset = 1 + r.at;
                let bytes = r.take(len as usize)?;
                let (index, term) = entry_index_term(bytes)?;
                entries.push(LocatedEntry {
                    index,
                    term,
                    offset,
                    len,
                });
            }
            check_consecutive(&entries)?;
            Record::Append {
                hard_state,
                entries,
            }
        }
        KIND_COMPACT => Record::Compact {
            truncated: r.pair()?,
        },
        KIND_RESET => {
            let truncated = r.pair()?;
            let hard_state = r.hard_state()?.unwrap_or_default();
            Record::Reset {
                truncated,
                hard_state,
            }
        }
        other => return Err(corrupt("WAL record", format!("unknown kind {other}"))),
    };
    r.done()?;
    Ok(record)
}

fn check_consecutive(entries: &[LocatedEntry]) -> Result<(), StorageError> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(corrupt(
                "WAL record",
                format!("entry {} follows entry {}", pair[1].index, pair[0].index),
            ));
        }
    }
    Ok(())
}

/// Decode a stored entry.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    Entry::parse_from_bytes(bytes).map_err(|e| corrupt("WAL entry", e))
}

fn entry_index_term(bytes: &[u8]) -> Result<(u64, u64), StorageError> {
    let entry = decode_entry(bytes)?;
    if entry.index == 0 {
        return Err(corrupt("WAL entry", "index 0"));
    }
    Ok((entry.index, entry.term))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn only_record(bytes: &[u8]) -> Record {
        match next_frame(bytes) {
            Frame::Record(body, size) => {
                assert_eq!(size, bytes.len());
                decode(body).expect("decode")
            }
            _ => panic!("not a whole record"),
        }
    }

    #[test]
    fn every_record_kind_round_trips() {
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..Default::default()
        };
        let start = encode_start(7, (4, 2), &hs).expect("encode");
        assert_eq!(
            only_record(&start),
            Record::Start {
                seq: 7,
                truncated: (4, 2),
                hard_state: hs.clone()
            }
        );
        let entries = vec![entry(5, 3, b"five"), entry(6, 3, b"six")];
        let (append, spans) = encode_append(&entries, Some(&hs)).expect("encode");
        let Record::Append {
            hard_state,
            entries: located,
        } = only_record(&append)
        else {
            panic!("not an append");
        };
        assert_eq!(hard_state, Some(hs.clone()));
        for ((loc, (at, len)), e) in located.iter().zip(&spans).zip(&entries) {
            assert_eq!((loc.index, loc.term), (e.index, e.term));
            assert_eq!(FRAME_HEADER + loc.offset, *at);
            assert_eq!(loc.len, *len);
            let bytes = &append[*at..*at + *len as usize];
            assert_eq!(&decode_entry(bytes).expect("entry"), e);
        }
        assert_eq!(
            only_record(&encode_compact((8, 3)).expect("encode")),
            Record::Compact { truncated: (8, 3) }
        );
        assert_eq!(
            only_record(&encode_reset((20, 4), &hs).expect("encode")),
            Record::Reset {
                truncated: (20, 4),
                hard_state: hs
            }
        );
    }

    #[test]
    fn a_cut_or_flipped_frame_is_torn_never_a_record() {
        let (append, _) =
            encode_append(&[entry(1, 1, b"x"), entry(2, 1, b"y")], None).expect("encode");
        for cut in 1..append.len() {
            assert!(
                matches!(next_frame(&append[..cut]), Frame::Torn(_)),
                "cut {cut}"
            );
        }
        for i in 0..append.len() {
            let mut bad = append.clone();
            bad[i] ^= 0x40;
            assert!(matches!(next_frame(&bad), Frame::Torn(_)), "flip at {i}");
        }
    }

    #[test]
    fn a_record_with_valid_crc_but_bad_fields_is_corrupt() {
        let mut r = RecordBuf::begin(KIND_APPEND);
        r.u32(0);
        r.u32(2); // claims two entries, holds none
        let bytes = r.finish().expect("encode");
        let Frame::Record(body, _) = next_frame(&bytes) else {
            panic!("frame");
        };
        assert!(matches!(decode(body), Err(StorageError::Corrupt { .. })));
        let unknown = RecordBuf::begin(99).finish().expect("encode");
        let Frame::Record(body, _) = next_frame(&unknown) else {
            panic!("frame");
        };
        assert!(matches!(decode(body), Err(StorageError::Corrupt { .. })));
    }
}
