//! The values `LmdbStorage` reads back from LMDB and its WAL: every record decoder on the same
//! bytes; what decodes must round-trip through its encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing as f;
use pontoon_fuzz::same_pb;

fuzz_target!(|data: &[u8]| {
    // The log: a WAL segment read as replay reads it (never a panic, whatever the bytes).
    let _ = f::read_wal_segment(data);
    if let Ok((cs, index)) = f::decode_conf_state(data) {
        let bytes = f::encode_conf_state(&cs, index).expect("re-encodes");
        let (again, again_index) = f::decode_conf_state(&bytes).expect("and decodes");
        assert_eq!(again_index, index);
        assert!(same_pb(&again, &cs), "conf state: {again:?} / {cs:?}");
    }
    if let Ok(meta) = f::decode_snapshot_meta(data) {
        let bytes = f::encode_pb("snapshot_meta", &meta).expect("re-encodes");
        let again = f::decode_snapshot_meta(&bytes).expect("and decodes");
        assert!(
            same_pb(&again, &meta),
            "snapshot meta: {again:?} / {meta:?}"
        );
    }
    if let Ok(peers) = f::decode_peers(data) {
        let bytes = f::encode_peers(&peers).expect("re-encodes");
        assert_eq!(f::decode_peers(&bytes).expect("and decodes"), peers);
    }
    if let Ok(version) = f::decode_format_version(data) {
        assert_eq!(version.to_be_bytes(), data);
    }
    if let Ok(id) = f::decode_node_id(data) {
        assert_eq!(id.to_be_bytes(), data[..8]);
    }
    if let Ok(cluster) = f::decode_cluster_id(data) {
        assert_eq!(cluster.as_bytes(), data);
    }
    // A snapshot's stored data: a reference to a received file, or an envelope.
    if let Some(path) = f::snapshot_file_ref(data) {
        assert!(data.ends_with(path.as_os_str().as_encoded_bytes()));
    }
});
