//! Shared helpers of the fuzz targets: how one input is cut into several byte strings, and the
//! fixed identity of the node the targets play.

/// The cluster the fuzzed node belongs to.
pub const CLUSTER: &str = "fuzz-cluster";
/// The fuzzed node's id.
pub const NODE: u64 = 2;
/// The node that sends to it in the seeds.
pub const PEER: u64 = 1;
/// The snapshot size limit the fuzzed receiver enforces.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 20;

/// Cut `data` into parts, each `u16 BE length | bytes`; a length past the end takes the rest.
pub fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (part, tail) = rest.split_at(len.min(rest.len()));
        parts.push(part);
        data = tail;
    }
    parts
}

/// The inverse of `split`, for seeds (each part at most 65535 bytes).
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        let len = u16::try_from(part.len()).expect("seed part longer than 65535 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Whether two protobuf messages hold the same known fields. rust-protobuf 2's `PartialEq` also
/// compares how unknown fields are held (no map vs an empty map), which a round trip may change
/// without changing any value, so round trips are checked on the text format instead.
pub fn same_pb<M: protobuf::Message>(a: &M, b: &M) -> bool {
    protobuf::text_format::print_to_string(a) == protobuf::text_format::print_to_string(b)
}
