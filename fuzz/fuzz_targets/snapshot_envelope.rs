//! `SnapshotEnvelope`: every way pontoon reads one (`decode`, `decode_header`, `decode_owned`,
//! `verify`, `verify_file`) on the same bytes, which must agree; an envelope that decodes must
//! survive `encode`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing::SnapshotEnvelope;
use pontoon::raft::eraftpb::SnapshotMetadata;

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The metadata an envelope would travel with.
fn metadata_of(env: &SnapshotEnvelope) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index: env.index,
        term: env.term,
        ..Default::default()
    };
    let cs = meta.mut_conf_state();
    cs.voters = env.voters.clone();
    cs.learners = env.learners.clone();
    cs.voters_outgoing = env.voters_outgoing.clone();
    meta
}

fuzz_target!(|data: &[u8]| {
    let decoded = SnapshotEnvelope::decode(data);
    let header = SnapshotEnvelope::decode_header(data);
    let owned = SnapshotEnvelope::decode_owned(data.to_vec());
    assert_eq!(decoded.is_ok(), header.is_ok(), "decode vs decode_header");
    assert_eq!(decoded.is_ok(), owned.is_ok(), "decode vs decode_owned");

    // The metadata the envelope claims (so verify can succeed), and a default one.
    let mut metas = vec![SnapshotMetadata::default()];
    if let Ok(h) = &header {
        metas.push(metadata_of(h));
    }
    let path = scratch().join("envelope");
    std::fs::write(&path, data).expect("write scratch file");
    for meta in &metas {
        let in_memory = SnapshotEnvelope::verify(data, meta);
        let from_file = SnapshotEnvelope::verify_file(&path, meta);
        assert_eq!(
            in_memory.is_ok(),
            from_file.is_ok(),
            "verify and verify_file disagree: {in_memory:?} / {from_file:?}"
        );
        if in_memory.is_ok() {
            assert!(decoded.is_ok(), "verified but does not decode");
        }
    }

    if let Ok(env) = decoded {
        let owned = owned.expect("checked above");
        assert_eq!(owned, env, "decode_owned vs decode");
        let header = header.expect("checked above");
        assert_eq!(
            header,
            SnapshotEnvelope {
                user_data: Vec::new(),
                ..env.clone()
            },
            "decode_header vs decode"
        );
        assert!(
            SnapshotEnvelope::verify(data, &metadata_of(&env)).is_ok(),
            "an envelope does not match its own metadata"
        );
        let bytes = env.encode().expect("a decoded envelope re-encodes");
        let again = SnapshotEnvelope::decode(&bytes).expect("a re-encoded envelope decodes");
        assert_eq!(again, env, "envelope round trip");
    }
});
