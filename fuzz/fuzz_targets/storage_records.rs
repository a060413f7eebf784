//! The values `LmdbStorage` reads back from LMDB: every record decoder on the same bytes; what
//! decodes must round-trip through its encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing as f;
use pontoon_fuzz::same_pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = f::decode_entry(data) {
        let bytes = f::encode_entry(&entry).expect("an entry re-encodes");
        let again = f::decode_entry(&bytes).expect("and decodes");
        assert!(same_pb(&again, &entry), "entry: {again:?} / {entry:?}");
        assert_eq!(f::entry_term(&bytes).expect("term prefix"), entry.term);
    }
    if let Ok(term) = f::entry_term(data) {
        assert_eq!(term.to_be_bytes(), data[..8]);
    }
    if let Ok(hs) = f::decode_hard_state(data) {
        let bytes = f::encode_pb("hard_state", &hs).expect("re-encodes");
        let again = f::decode_hard_state(&bytes).expect("and decodes");
        assert!(same_pb(&again, &hs), "hard state: {again:?} / {hs:?}");
    }
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
    if let Ok((index, term)) = f::decode_truncated(data) {
        assert_eq!(f::encode_truncated(index, term), data);
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
