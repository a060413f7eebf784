//! The framework RPCs' request bodies: `ChangeConfig` (a conf change and addresses) and
//! `RequestId` (an announced raft address). The first byte picks the RPC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing;
use pontoon::raft::eraftpb::ConfChangeV2;
use pontoon_fuzz::{same_pb, CLUSTER};
use protobuf::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 2 {
        0 => {
            if let Ok((cc, _addrs)) = fuzzing::change_config(body, CLUSTER) {
                let bytes = cc.write_to_bytes().expect("an accepted change re-encodes");
                let again = ConfChangeV2::parse_from_bytes(&bytes).expect("and decodes");
                assert!(same_pb(&again, &cc), "round trip: {again:?} / {cc:?}");
            }
        }
        _ => {
            if let Ok(addr) = fuzzing::request_id(body, CLUSTER) {
                assert!(addr.contains(':'), "accepted raft_addr {addr:?}");
            }
        }
    }
});
