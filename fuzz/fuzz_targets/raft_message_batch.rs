//! `SendMessages`: the request body as the gRPC server receives it, through the cluster check and
//! the batch decode to the raft messages the run loop would be handed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing;
use pontoon::raft::eraftpb::{Message, MessageType};
use pontoon_fuzz::{same_pb, CLUSTER, NODE};
use protobuf::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = fuzzing::send_messages(data, CLUSTER, NODE) else {
        return;
    };
    let from = messages.first().map(|m| m.from);
    for msg in &messages {
        assert_eq!(msg.to, NODE, "a message for another node was accepted");
        assert_eq!(Some(msg.from), from, "one batch, several senders");
        assert_ne!(
            msg.get_msg_type(),
            MessageType::MsgSnapshot,
            "a snapshot outside InstallSnapshot was accepted"
        );
        let bytes = msg
            .write_to_bytes()
            .expect("an accepted message re-encodes");
        let again = Message::parse_from_bytes(&bytes).expect("a re-encoded message decodes");
        assert!(same_pb(&again, msg), "round trip: {again:?} / {msg:?}");
    }
});
