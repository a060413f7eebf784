//! `parse_peers`: the `ID=HOST:PORT,...` peer lists of the configuration (and of the CLI).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::fuzzing::parse_peers;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(peers) = parse_peers(spec) else {
        return;
    };
    assert!(!peers.is_empty());
    assert!(!peers.contains_key(&0), "node 0 accepted");
    for addr in peers.values() {
        assert!(!addr.is_empty(), "empty address accepted in {spec:?}");
        assert_eq!(addr.trim(), addr);
    }
    // Written back in the same syntax, the list reads the same.
    let again: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
    assert_eq!(parse_peers(&again.join(",")).expect("re-parses"), peers);
});
