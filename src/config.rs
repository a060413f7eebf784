//! Node configuration. Embeds raft-rs' `raft::Config` and adds what the framework owns: where data
//! lives, which cluster this is, timing, snapshot policy and resource limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::tls::TlsConfig;

/// Node id -> raft address (`host:port`) for every member.
pub type Peers = BTreeMap<u64, String>;

/// Configuration of one pontoon node. `Config::default()` is a sane production starting point;
/// `data_dir` and, for a static cluster, `initial_peers` are what most users set.
#[derive(Clone)]
pub struct Config {
    /// raft-rs settings (election/heartbeat ticks, inflight limits, pre-vote, ...). `id` and
    /// `applied` are filled in by pontoon.
    ///
    /// Reads: `raft.read_only_option` is `Safe` by default: every linearizable read round
    /// confirms leadership with a quorum of heartbeats. `ReadOnlyOption::LeaseBased` skips that
    /// round trip and trusts the leader's lease instead (it requires `check_quorum`, which is on
    /// by default). A lease is only as good as the clocks: if a node's clock runs fast or a
    /// process pauses longer than the election timeout, a deposed leader can serve a stale read.
    /// Choose it only where bounded clock drift and no long pauses are guaranteed.
    pub raft: raft::Config,
    /// Name of the cluster. Every RPC carries it and the data dir records it: a node of another
    /// cluster, or a data dir written by one, is refused.
    pub cluster_id: String,
    /// This node's data dir: the log (`wal/`), LMDB (identity, membership, snapshot metadata)
    /// and snapshot files. Created when missing; one node at a time (it is locked while open).
    pub data_dir: PathBuf,
    /// Members of a static cluster (including this node). Used only when the data dir is new.
    /// This node's own entry may have port 0 when it listens on port 0 (see `advertise_addr`);
    /// every other member needs its real address.
    pub initial_peers: Option<Peers>,
    /// The address peers reach this node at, when it is not the address it listens on (it
    /// listens on `0.0.0.0`, or behind a container's port mapping or NAT). `None`: the listen
    /// address, or, when that has port 0, its host with the port the system picked, so tests
    /// and single-machine setups can take any free port.
    pub advertise_addr: Option<String>,
    /// How often raft's logical clock ticks.
    pub tick_interval: Duration,
    /// Take a snapshot and compact the log once this many entries were applied since the last one.
    /// Log entries, not commands: one entry may carry up to `max_commands_per_entry` commands.
    pub snapshot_threshold: u64,
    /// Besides `snapshot_threshold` entries, wait until the entries applied since the last
    /// snapshot add up to this fraction of that snapshot's size. A snapshot costs time in
    /// proportion to the whole state; this keeps that cost in proportion to what was written, so
    /// a large state is not serialised again after every few thousand small writes. 0 snapshots
    /// by entry count alone. Default 1.0: the log grows to about one snapshot's worth of bytes.
    pub snapshot_log_ratio: f64,
    /// Entries kept (at or below the snapshot index) when compacting, for followers slightly
    /// behind: the log holds at most `compaction_margin` entries more than the snapshot policy
    /// lets it grow to (`snapshot_threshold` entries with `snapshot_log_ratio` 0).
    pub compaction_margin: u64,
    /// Also take a snapshot when this much time passed since the last one and something was
    /// applied since (`None`: only by entry count).
    pub snapshot_interval: Option<Duration>,
    /// Snapshots travel to followers in chunks of this many bytes.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot accepted from a leader, in bytes.
    pub max_snapshot_bytes: u64,
    /// Deadline of one snapshot transfer.
    pub snapshot_timeout: Duration,
    /// Deadline of a proposal (local or forwarded). On expiry the outcome is unknown.
    pub propose_timeout: Duration,
    /// Deadline of one RPC to a peer.
    pub rpc_timeout: Duration,
    /// Capacity of the run loop's mailbox; callers wait (bounded by their deadline) when it is full.
    pub mailbox_capacity: usize,
    /// Capacity of each peer's outbound queue; when full, messages are dropped (raft retransmits).
    pub peer_queue_capacity: usize,
    /// At most this many raft messages travel in one RPC.
    pub max_batch_messages: usize,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Largest proposal accepted, in bytes.
    pub max_proposal_bytes: usize,
    /// At most this many client sessions are open at once; opening one more expires the one
    /// used least recently. Carried in each session's opening entry, so the leader's value at
    /// that time is what every node applies. With `session_window` it bounds the session
    /// table: at most `max_sessions * session_window` answers are kept.
    pub max_sessions: u64,
    /// The largest window a session may have: how many of its commands may be unanswered at
    /// once (a session that asks for more gets this many). Each node keeps the answers of at
    /// most this many commands per session.
    pub session_window: u64,
    /// How long `Session::propose` keeps retrying one command before it answers
    /// `OutcomeUnknown` (the command then applied at most once).
    pub session_retry_timeout: Duration,
    /// At most this many user commands proposed in the same turn share one log entry (see
    /// `node::command_batch`); a batch also stays within `raft.max_size_per_msg` bytes. Packing
    /// saves raft's per-entry work on every node under load; `apply` still sees each command on
    /// its own. 1 gives every command its own entry.
    pub max_commands_per_entry: usize,
    /// The leader's append window (0, the default, turns it off). With N above 0: while N of the
    /// leader's log entries are appended but not yet committed, new proposals wait, and they are
    /// appended together (in one entry, see `max_commands_per_entry`) as soon as the commit index
    /// moves. Holding stops early once the waiting proposals fill an entry, and a proposal never
    /// waits when nothing is in flight (a lone client sees no change).
    ///
    /// Why: when writes arrive one by one from many network clients, the leader appends a small
    /// entry nearly every turn, and each entry costs a message to every follower, an ack back
    /// and a Ready on every node. Waiting for the commit packs what arrived meanwhile into one
    /// entry. That pays when the CPU is the limit (many concurrent clients) and costs latency
    /// when it is not: a held write waits up to one commit round. Measured with memstore over
    /// HTTP (docs/performance.md): 1 gave +4% at 64 connections and +13% at 256 (medians of
    /// interleaved pairs) and -10% at 8.
    pub append_window: u64,
    /// At most this many proposals may wait for their commit on one node; more get `Busy`.
    pub max_pending_proposals: usize,
    /// Initial LMDB map size in bytes; it grows on demand.
    pub initial_map_size: usize,
    /// Bytes of the newest log entries kept in memory after they are written, so replication
    /// and apply do not read back from the files what was just appended (0: read every entry
    /// from the files). Older entries are read from the files and checked against their
    /// checksum.
    pub entry_cache_bytes: usize,
    /// Deadline of `join_cluster` (learner, catch-up, promotion).
    pub join_timeout: Duration,
    /// A joining learner is promoted to voter once its log is at most this many entries behind
    /// the leader's.
    pub promotion_lag: u64,
    /// Mutual TLS for every gRPC connection (`None`: plaintext). When set, the server accepts
    /// only clients with a certificate signed by the CA, and every outgoing connection presents
    /// this node's certificate and checks the server's. Build it with
    /// `TlsConfig::from_pem_files`, which reads and checks the files once.
    pub tls: Option<TlsConfig>,
    /// Shared secret for membership: when set, `RequestId` and `ChangeConfig` RPCs must carry
    /// the same token or are refused with `Error::Unauthorized`. This node also sends it on its
    /// own such calls (forwarding, joining). Without TLS it travels in clear.
    pub join_token: Option<String>,
    /// The lowest level of raft-rs' own log lines that reach the logger. Default `Warning`:
    /// raft-rs reports every vote, election step and configuration switch at `Info`, and
    /// pontoon already logs what matters of those once (`role changed`, membership changes).
    /// `Info` or `Debug` show raft-rs' reasoning when debugging an election.
    pub raft_log_level: slog::Level,
}

/// Default of `Config::entry_cache_bytes`.
pub const DEFAULT_ENTRY_CACHE_BYTES: usize = 64 << 20;

impl Default for Config {
    fn default() -> Self {
        let raft = raft::Config {
            election_tick: 10,
            heartbeat_tick: 3,
            max_inflight_msgs: 256,
            max_size_per_msg: 1024 * 1024,
            pre_vote: true,
            check_quorum: true,
            // Bound the log a leader accepts beyond what is committed (raft drops proposals past it).
            max_uncommitted_size: 256 * 1024 * 1024,
            // Several appends queued for one follower go out as one message.
            batch_append: true,
            // Committed entries handed to apply in one Ready: bounded, so the run loop can read
            // them ahead (and stop cleanly on a read error) without holding the whole log.
            max_committed_size_per_ready: 64 * 1024 * 1024,
            ..Default::default()
        };
        Config {
            raft,
            cluster_id: "pontoon".to_string(),
            data_dir: PathBuf::from("./pontoon-data"),
            initial_peers: None,
            advertise_addr: None,
            tick_interval: Duration::from_millis(100),
            snapshot_threshold: 10_000,
            snapshot_log_ratio: 1.0,
            compaction_margin: 1_000,
            snapshot_interval: None,
            snapshot_chunk_bytes: 1024 * 1024,
            max_snapshot_bytes: 64 * 1024 * 1024 * 1024,
            snapshot_timeout: Duration::from_secs(300),
            propose_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(5),
            mailbox_capacity: 16 * 1024,
            peer_queue_capacity: 8 * 1024,
            max_batch_messages: 512,
            max_message_bytes: 64 * 1024 * 1024,
            max_proposal_bytes: 8 * 1024 * 1024,
            max_sessions: 4096,
            session_window: 64,
            session_retry_timeout: Duration::from_secs(30),
            max_commands_per_entry: 1024,
            append_window: 0,
            raft_log_level: slog::Level::Warning,
            max_pending_proposals: 64 * 1024,
            initial_map_size: 1 << 30,
            entry_cache_bytes: DEFAULT_ENTRY_CACHE_BYTES,
            join_timeout: Duration::from_secs(60),
            promotion_lag: 100,
            tls: None,
            join_token: None,
        }
    }
}

impl std::fmt::Debug for Config {
    // raft::Config has no Debug; show what identifies the setup.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cluster_id", &self.cluster_id)
            .field("data_dir", &self.data_dir)
            .field("initial_peers", &self.initial_peers)
            .field("advertise_addr", &self.advertise_addr)
            .field("tick_interval", &self.tick_interval)
            .field("election_tick", &self.raft.election_tick)
            .field("heartbeat_tick", &self.raft.heartbeat_tick)
            .field("snapshot_threshold", &self.snapshot_threshold)
            .field("snapshot_log_ratio", &self.snapshot_log_ratio)
            .field("tls", &self.tls)
            .field("join_token", &self.join_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The port of a `HOST:PORT` address (`[::1]:7000` too); `None` when there is none.
pub(crate) fn port_of(addr: &str) -> Option<u16> {
    let (host, port) = addr.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    port.parse().ok()
}

/// Whether the host of a HOST:PORT address is the unspecified address (`0.0.0.0`, `[::]`), which
/// means "every interface" to a listener and cannot be dialled from another machine.
pub(crate) fn has_unspecified_host(addr: &str) -> bool {
    addr.rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|host| host.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_unspecified())
}

impl Config {
    /// Check the settings that raft-rs does not check itself, then raft-rs' own validation.
    pub fn validate(&self, node_id: u64) -> Result<()> {
        if node_id == 0 {
            return Err(Error::Config(
                "node id 0 is reserved by raft; use 1 or above".into(),
            ));
        }
        if self.cluster_id.is_empty() {
            return Err(Error::Config("cluster_id must not be empty".into()));
        }
        if self.tick_interval.is_zero() {
            return Err(Error::Config("tick_interval must be above zero".into()));
        }
        if self.max_sessions == 0 || self.session_window == 0 {
            return Err(Error::Config(
                "max_sessions and session_window must be above zero".into(),
            ));
        }
        if self.snapshot_threshold == 0 {
            return Err(Error::Config(
                "snapshot_threshold must be above zero".into(),
            ));
        }
        if !(self.snapshot_log_ratio.is_finite() && self.snapshot_log_ratio >= 0.0) {
            return Err(Error::Config(format!(
                "snapshot_log_ratio must be a finite number of 0 or above, not {}",
                self.snapshot_log_ratio
            )));
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes >= self.max_message_bytes {
            return Err(Error::Config(
                "snapshot_chunk_bytes must be above zero and below max_message_bytes".into(),
            ));
        }
        if self.mailbox_capacity == 0
            || self.peer_queue_capacity == 0
            || self.max_batch_messages == 0
            || self.max_commands_per_entry == 0
        {
            return Err(Error::Config(
                "queue capacities and max_commands_per_entry must be above zero".into(),
            ));
        }
        if self.join_token.as_deref() == Some("") {
            return Err(Error::Config(
                "join_token must not be empty; use None for no token".into(),
            ));
        }
        if let Some(peers) = &self.initial_peers {
            if !peers.contains_key(&node_id) {
                return Err(Error::Config(format!(
                    "initial_peers {peers:?} does not contain this node's id {node_id}"
                )));
            }
            if peers.contains_key(&0) {
                return Err(Error::Config("initial_peers contains id 0".into()));
            }
            if let Some((id, addr)) = peers
                .iter()
                .find(|(id, addr)| **id != node_id && port_of(addr) == Some(0))
            {
                return Err(Error::Config(format!(
                    "initial_peers gives node {id} the address {addr}: port 0 only means \"any \
                     free port\" for this node's own entry; give every other member its real address"
                )));
            }
        }
        if let Some(addr) = &self.advertise_addr {
            if !matches!(port_of(addr), Some(port) if port != 0) {
                return Err(Error::Config(format!(
                    "advertise_addr {addr:?} is not HOST:PORT with a port above 0"
                )));
            }
        }
        let mut raft = self.raft.clone();
        raft.id = node_id;
        raft.validate().map_err(|e| Error::Config(e.to_string()))
    }
}

/// Parse `1=127.0.0.1:60061,2=127.0.0.1:60062` into a peer map.
pub fn parse_peers(spec: &str) -> Result<Peers> {
    let mut peers = Peers::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            Error::Config(format!("peer {part:?} is not of the form ID=HOST:PORT"))
        })?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("peer id {id:?} is not a number")))?;
        if id == 0 {
            return Err(Error::Config("peer id 0 is reserved".into()));
        }
        let addr = addr.trim();
        if addr.is_empty() {
            return Err(Error::Config(format!("peer {id} has no address")));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(Error::Config(format!("peer id {id} appears twice")));
        }
    }
    if peers.is_empty() {
        return Err(Error::Config("the peer list is empty".into()));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_peers_accepts_list_and_rejects_garbage() {
        let p = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2").expect("valid list");
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "127.0.0.1:2");
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("0=a").is_err());
        assert!(parse_peers("").is_err());
    }

    /// Found by the `parse_peers` fuzz target: `7009=` gave node 7009 an empty address.
    #[test]
    fn parse_peers_rejects_an_empty_address() {
        let err = parse_peers(" 7009=, 9=[::1]:9 ").expect_err("empty address");
        assert!(err.to_string().contains("no address"), "{err}");
        assert_eq!(parse_peers(" 9 = [::1]:9 ").expect("valid")[&9], "[::1]:9");
    }

    #[test]
    fn port_0_is_only_for_this_nodes_own_entry_and_never_advertised() {
        let mut c = Config {
            initial_peers: Some(parse_peers("1=127.0.0.1:0,2=127.0.0.1:7002").expect("valid")),
            ..Default::default()
        };
        c.validate(1).expect("own entry may ask for any free port");
        let err = c.validate(2).expect_err("another member's port 0");
        assert!(err.to_string().contains("node 1"), "{err}");
        for bad in ["db1", "db1:0", ":7000", "db1:x"] {
            c.advertise_addr = Some(bad.into());
            assert!(c.validate(1).is_err(), "{bad} accepted");
        }
        c.advertise_addr = Some("[::1]:7000".into());
        c.validate(1).expect("an IPv6 advertised address");
    }

    #[test]
    fn validate_rejects_missing_self_and_zero_id() {
        let mut c = Config::default();
        assert!(c.validate(0).is_err());
        c.initial_peers = Some(parse_peers("2=a").expect("valid"));
        assert!(c.validate(1).is_err());
        assert!(c.validate(2).is_ok());
    }
}
