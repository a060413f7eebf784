//! `InstallSnapshot`: a stream of chunk bodies through the first-chunk checks and the order, size
//! and checksum tally, then the envelope check the receiver runs on the file it wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing;
use pontoon::raft::eraftpb::MessageType;
use pontoon_fuzz::{split, CLUSTER, MAX_SNAPSHOT_BYTES, NODE};

fuzz_target!(|data: &[u8]| {
    let bodies = split(data);
    let Ok((msg, chunks, received)) =
        fuzzing::install_snapshot(&bodies, CLUSTER, NODE, MAX_SNAPSHOT_BYTES)
    else {
        return;
    };
    assert_eq!(msg.get_msg_type(), MessageType::MsgSnapshot);
    assert_eq!(msg.to, NODE);
    assert_eq!(chunks as usize, bodies.len(), "every chunk is counted");
    assert!(received.len() as u64 <= MAX_SNAPSHOT_BYTES);
    let meta = msg.get_snapshot().get_metadata();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &received).expect("write");
    let from_file = fuzzing::SnapshotEnvelope::verify_file(file.path(), meta);
    let in_memory = fuzzing::SnapshotEnvelope::verify(&received, meta);
    assert_eq!(
        from_file.is_ok(),
        in_memory.is_ok(),
        "file and memory checks disagree: {from_file:?} / {in_memory:?}"
    );
});
