//! `Raft::request_id` on the joining side: the `RequestId` answer and the `GetPeers` answer
//! (response bodies from a member) turned into a `JoinTicket`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing;
use pontoon::JoinTicket;
use pontoon_fuzz::split;

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let raft_addr = String::from_utf8_lossy(part(2)).into_owned();
    let Ok(ticket) = fuzzing::join_ticket(part(0), part(1), raft_addr.clone()) else {
        return;
    };
    assert_ne!(ticket.reserved_id, 0, "ticket for node 0");
    assert!(!ticket.peers.contains_key(&0), "peer list names node 0");
    assert!(
        !ticket.peers.contains_key(&ticket.reserved_id),
        "reserved id is a member already"
    );
    assert_eq!(ticket.raft_addr, raft_addr);
    assert_eq!(
        ticket.leader_addr,
        ticket
            .peers
            .get(&ticket.leader_id)
            .cloned()
            .unwrap_or_default()
    );
    let json = serde_json::to_string(&ticket).expect("a ticket serialises");
    let again: JoinTicket = serde_json::from_str(&json).expect("and deserialises");
    assert_eq!(again, ticket, "ticket round trip");
});
