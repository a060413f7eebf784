//! Writes the seed corpora in `fuzz/seeds/<target>/` from real encodings:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::path::{Path, PathBuf};

use pontoon::fuzzing::{self as f, ConfChangeContext, FrameworkEntry, ProposalContext};
use pontoon::node::EntryKind;
use pontoon::raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, HardState,
    Message, MessageType, SnapshotMetadata,
};
use pontoon::transport::pb;
use pontoon_fuzz::{join, CLUSTER, NODE, PEER};
use protobuf::Message as _;

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("create seed dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn raft_message(msg_type: MessageType, entries: usize) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(msg_type);
    msg.from = PEER;
    msg.to = NODE;
    msg.term = 3;
    msg.index = 10;
    msg.log_term = 2;
    msg.commit = 9;
    for i in 0..entries {
        msg.entries.push(Entry {
            index: 11 + i as u64,
            term: 3,
            data: format!("set k{i} v{i}").into_bytes().into(),
            context: user_context(i as u64).into(),
            ..Default::default()
        });
    }
    msg
}

fn user_context(seq: u64) -> Vec<u8> {
    ProposalContext {
        kind: EntryKind::User,
        node_id: PEER,
        nonce: 0x5eed,
        seq,
    }
    .encode()
}

fn conf_state() -> ConfState {
    ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..Default::default()
    }
}

fn envelope() -> f::SnapshotEnvelope {
    let mut env = f::SnapshotEnvelope {
        index: 42,
        term: 3,
        max_node_id: 4,
        user_data: b"the state machine's bytes".to_vec(),
        ..Default::default()
    }
    .with_conf_state(&conf_state());
    for id in 1..=4 {
        env.peers.insert(id, format!("127.0.0.1:6006{id}"));
    }
    env
}

fn conf_change_v2() -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 4;
    let mut cc = ConfChangeV2::default();
    cc.changes.push(single);
    cc
}

fn main() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");

    // raft_message_batch: SendMessages bodies.
    let batch = |messages: Vec<Message>| {
        f::encode_body(&pb::MessageBatch {
            cluster_id: CLUSTER.into(),
            from: PEER,
            messages: messages
                .iter()
                .map(|m| m.write_to_bytes().expect("encode"))
                .collect(),
        })
    };
    let t = "raft_message_batch";
    write(
        &root,
        t,
        "heartbeat",
        &batch(vec![raft_message(MessageType::MsgHeartbeat, 0)]),
    );
    write(
        &root,
        t,
        "append",
        &batch(vec![raft_message(MessageType::MsgAppend, 3)]),
    );
    write(
        &root,
        t,
        "mixed",
        &batch(vec![
            raft_message(MessageType::MsgRequestVote, 0),
            raft_message(MessageType::MsgAppendResponse, 0),
            raft_message(MessageType::MsgReadIndex, 0),
        ]),
    );
    write(&root, t, "empty", &batch(vec![]));

    // snapshot_stream: chunk bodies of a real envelope, in one and in three chunks.
    let data = envelope().encode().expect("envelope");
    let mut header = raft_message(MessageType::MsgSnapshot, 0);
    let meta = header.mut_snapshot().mut_metadata();
    meta.index = 42;
    meta.term = 3;
    meta.set_conf_state(conf_state());
    let header = header.write_to_bytes().expect("encode");
    let stream = |pieces: &[&[u8]]| {
        let bodies: Vec<Vec<u8>> = pieces
            .iter()
            .enumerate()
            .map(|(seq, piece)| {
                f::encode_body(&pb::SnapshotChunk {
                    cluster_id: if seq == 0 {
                        CLUSTER.into()
                    } else {
                        String::new()
                    },
                    from: PEER,
                    message: if seq == 0 { header.clone() } else { Vec::new() },
                    total_size: data.len() as u64,
                    crc32: pontoon::storage::crc32(&data),
                    seq: seq as u64,
                    data: piece.to_vec(),
                })
            })
            .collect();
        join(&bodies.iter().map(Vec::as_slice).collect::<Vec<_>>())
    };
    let t = "snapshot_stream";
    write(&root, t, "one_chunk", &stream(&[&data]));
    let third = data.len() / 3;
    write(
        &root,
        t,
        "three_chunks",
        &stream(&[&data[..third], &data[third..2 * third], &data[2 * third..]]),
    );

    // rpc_requests: 0 = ChangeConfig, 1 = RequestId.
    let t = "rpc_requests";
    let mut cc = vec![0u8];
    cc.extend(f::encode_body(&pb::ChangeConfigRequest {
        cluster_id: CLUSTER.into(),
        conf_change: conf_change_v2().write_to_bytes().expect("encode"),
        addrs: [(4, "127.0.0.1:60064".to_string())].into(),
        join_token: String::new(),
    }));
    write(&root, t, "change_config", &cc);
    let mut rid = vec![1u8];
    rid.extend(f::encode_body(&pb::RequestIdRequest {
        cluster_id: String::new(),
        raft_addr: "127.0.0.1:60065".into(),
        join_token: String::new(),
    }));
    write(&root, t, "request_id", &rid);

    // join_ticket: split(RequestId answer, GetPeers answer, raft_addr).
    let t = "join_ticket";
    let peers = f::encode_body(&pb::GetPeersResponse {
        peers: (1..=3)
            .map(|id| (id, format!("127.0.0.1:6006{id}")))
            .collect(),
        cluster_id: CLUSTER.into(),
        leader_id: 1,
    });
    write(
        &root,
        t,
        "ticket",
        &join(&[&f::reserved_id_reply(4), &peers, b"127.0.0.1:60064"]),
    );
    let not_leader = f::encode_body(&pb::ProposeResponse {
        status: pb::ProposeStatus::NotLeader as i32,
        leader_id: 1,
        leader_addr: "127.0.0.1:60061".into(),
        ..Default::default()
    });
    write(
        &root,
        t,
        "not_leader",
        &join(&[&not_leader, &peers, b"127.0.0.1:60064"]),
    );

    // snapshot_envelope.
    let t = "snapshot_envelope";
    write(&root, t, "envelope", &data);
    write(
        &root,
        t,
        "empty_envelope",
        &f::SnapshotEnvelope::default().encode().expect("envelope"),
    );

    // storage_records: one value of each record.
    let t = "storage_records";
    let mut entry = raft_message(MessageType::MsgAppend, 1).entries[0].clone();
    entry.index = 5;
    let hs = HardState {
        term: 3,
        vote: 1,
        commit: 9,
        ..Default::default()
    };
    write(
        &root,
        t,
        "wal_segment",
        &f::encode_wal_segment(&[entry], &hs).expect("segment"),
    );
    write(
        &root,
        t,
        "conf_state",
        &f::encode_conf_state(&conf_state(), 12).expect("cs"),
    );
    let mut meta = SnapshotMetadata {
        index: 42,
        term: 3,
        ..Default::default()
    };
    meta.set_conf_state(conf_state());
    write(
        &root,
        t,
        "snapshot_meta",
        &f::encode_pb("snapshot_meta", &meta).expect("meta"),
    );
    write(
        &root,
        t,
        "peers",
        &f::encode_peers(&envelope().peers).expect("peers"),
    );
    write(&root, t, "format_version", &1u32.to_be_bytes());
    write(&root, t, "node_id", &NODE.to_be_bytes());
    write(&root, t, "cluster_id", CLUSTER.as_bytes());
    write(
        &root,
        t,
        "file_ref",
        b"PONTOON-SNAPSHOT-FILE:/data/incoming-snapshot-1-7.snap",
    );

    // entry_context: type byte | split(context, data).
    let t = "entry_context";
    write(
        &root,
        t,
        "user",
        &[&[0u8][..], &join(&[&user_context(1), b"set x 1"])].concat(),
    );
    let batch_ctx = ProposalContext {
        kind: EntryKind::UserBatch,
        node_id: PEER,
        nonce: 0x5eed,
        seq: 5,
    }
    .encode();
    let batch = f::command_batch::encode([b"set x 1".as_slice(), b"", b"set y 2"]);
    write(
        &root,
        t,
        "user_batch",
        &[&[0u8][..], &join(&[&batch_ctx, &batch])].concat(),
    );
    let framework_ctx = ProposalContext {
        kind: EntryKind::Framework,
        node_id: PEER,
        nonce: 0x5eed,
        seq: 2,
    }
    .encode();
    let reserve = FrameworkEntry::ReserveId {
        raft_addr: "127.0.0.1:60064".into(),
    }
    .encode()
    .expect("framework entry");
    write(
        &root,
        t,
        "framework",
        &[&[0u8][..], &join(&[&framework_ctx, &reserve])].concat(),
    );
    let cc_ctx = ConfChangeContext {
        proposal: user_context(3),
        addrs: [(4, "127.0.0.1:60064".to_string())].into(),
    }
    .encode()
    .expect("context");
    let v2 = conf_change_v2().write_to_bytes().expect("encode");
    write(
        &root,
        t,
        "conf_change_v2",
        &[&[2u8][..], &join(&[&cc_ctx, &v2])].concat(),
    );
    let mut v1 = ConfChange::default();
    v1.set_change_type(ConfChangeType::RemoveNode);
    v1.node_id = 3;
    let v1 = v1.write_to_bytes().expect("encode");
    write(
        &root,
        t,
        "conf_change",
        &[&[1u8][..], &join(&[&[], &v1])].concat(),
    );

    // parse_peers.
    let t = "parse_peers";
    write(
        &root,
        t,
        "three",
        b"1=127.0.0.1:60061,2=127.0.0.1:60062,3=127.0.0.1:60063",
    );
    write(&root, t, "spaces", b" 7 = node-7.example:7000 , 9=[::1]:9 ");

    println!("seeds written to {}", root.display());
}
