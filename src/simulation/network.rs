//! The simulated network: every raft message a node sends is dropped, delayed, duplicated (and
//! so reordered) or cut by a partition, as drawn from the run's seed, then handed to the
//! receiver's mailbox the way the gRPC server would.
//!
//! Snapshots travel as a reference to the sender's snapshot file (see
//! `transport::snapshot_file_ref`); on delivery the file is copied into the receiver's data dir
//! under the name the gRPC receiver uses, and the sender hears that the transfer finished (or
//! failed), as it would from the stream.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Peers;
use crate::node::{Command, RaftNode};
use crate::storage::fs::{FileSystem, OpenMode};
use crate::transport::Transport;

/// The raft address of simulated node `id` (never dialled; the network routes by id). Here, not
/// beside the nodes, because the network hands it to a receiver that has no address for a
/// sender, as the gRPC server learns it from a stream's header.
pub fn sim_addr(id: u64) -> String {
    format!("10.0.0.{id}:7000")
}

/// How the network treats messages right now (the nemesis changes it during a run).
#[derive(Clone, Debug)]
pub struct LinkFaults {
    /// Chance that a message is lost.
    pub drop: f64,
    /// Chance that a message is delivered twice.
    pub duplicate: f64,
    /// Shortest one-way latency.
    pub min_latency: Duration,
    /// Longest one-way latency (latencies in between are uniform, so messages reorder).
    pub max_latency: Duration,
}

impl LinkFaults {
    /// A healthy network: nothing lost, a millisecond or two of latency.
    pub fn healthy() -> Self {
        LinkFaults {
            drop: 0.0,
            duplicate: 0.0,
            min_latency: Duration::from_micros(500),
            max_latency: Duration::from_millis(2),
        }
    }
}

/// Counters of what the network did in a run.
#[derive(Clone, Debug, Default)]
pub struct NetworkStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Copies put in the receiver's mailbox.
    pub delivered: u64,
    /// Lost at random.
    pub dropped: u64,
    /// Lost to a partition (or a stopped receiver).
    pub cut: u64,
    /// Extra copies.
    pub duplicated: u64,
    /// Snapshot files copied to a receiver.
    pub snapshots: u64,
}

/// A node as the network knows it.
struct Endpoint {
    /// Bumped at every start: messages addressed to an earlier incarnation are lost with it.
    incarnation: u64,
    /// The running node, if it runs.
    node: Option<RaftNode>,
    data_dir: PathBuf,
    /// Its disk, where snapshot files are read and received.
    fs: Arc<dyn FileSystem>,
}

struct NetState {
    rng: StdRng,
    faults: LinkFaults,
    /// Directed links that lose everything (partitions).
    cut: BTreeSet<(u64, u64)>,
    endpoints: BTreeMap<u64, Endpoint>,
    stats: NetworkStats,
    next_file: u64,
}

/// The network of one simulated cluster. Cheap to clone.
#[derive(Clone)]
pub struct SimNetwork {
    state: Arc<Mutex<NetState>>,
}

impl SimNetwork {
    /// A healthy network drawing its randomness from `seed`.
    pub fn new(seed: u64) -> Self {
        SimNetwork {
            state: Arc::new(Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                faults: LinkFaults::healthy(),
                cut: BTreeSet::new(),
                endpoints: BTreeMap::new(),
                stats: NetworkStats::default(),
                next_file: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `id` (data dir `data_dir` on disk `fs`) is starting: a new incarnation, reachable
    /// once `attach` names its handle.
    pub(crate) fn starting(&self, id: u64, data_dir: PathBuf, fs: Arc<dyn FileSystem>) -> u64 {
        let mut state = self.lock();
        let endpoint = state.endpoints.entry(id).or_insert(Endpoint {
            incarnation: 0,
            node: None,
            data_dir: data_dir.clone(),
            fs: fs.clone(),
        });
        endpoint.incarnation += 1;
        endpoint.node = None;
        endpoint.data_dir = data_dir;
        endpoint.fs = fs;
        endpoint.incarnation
    }

    /// The started node's handle: messages to `id` reach it from now on.
    pub(crate) fn attach(&self, id: u64, node: RaftNode) {
        if let Some(endpoint) = self.lock().endpoints.get_mut(&id) {
            endpoint.node = Some(node);
        }
    }

    /// Node `id` stopped (crashed or quit): messages to it are lost.
    pub(crate) fn detach(&self, id: u64) {
        if let Some(endpoint) = self.lock().endpoints.get_mut(&id) {
            endpoint.node = None;
            endpoint.incarnation += 1;
        }
    }

    /// The transport node `id` sends through.
    pub(crate) fn transport(&self, id: u64) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            from: id,
            known: Mutex::new(BTreeSet::new()),
            net: self.clone(),
        })
    }

    /// Set how messages are treated from now on.
    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().faults = faults;
    }

    /// Cut every link between `side` and the other nodes in `all`, both ways.
    pub fn partition(&self, side: &BTreeSet<u64>, all: &BTreeSet<u64>) {
        let mut state = self.lock();
        for a in side {
            for b in all.difference(side) {
                state.cut.insert((*a, *b));
                state.cut.insert((*b, *a));
            }
        }
    }

    /// Restore every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetworkStats {
        self.lock().stats.clone()
    }

    /// Decide the fate of `msg` from `from` and schedule its copies.
    fn send_one(&self, from: u64, msg: Message) {
        let to = msg.to;
        let mut state = self.lock();
        state.stats.sent += 1;
        let Some(incarnation) = state.endpoints.get(&to).map(|e| e.incarnation) else {
            state.stats.cut += 1;
            return;
        };
        let faults = state.faults.clone();
        let lost = state.cut.contains(&(from, to));
        let dropped = !lost && state.rng.random_bool(faults.drop);
        let copies = if state.rng.random_bool(faults.duplicate) {
            2
        } else {
            1
        };
        let mut delays = Vec::with_capacity(copies);
        for _ in 0..copies {
            let span = faults.max_latency.saturating_sub(faults.min_latency);
            let extra = state.rng.random_range(0..=span.as_micros() as u64);
            delays.push(faults.min_latency + Duration::from_micros(extra));
        }
        if lost || dropped {
            if lost {
                state.stats.cut += 1;
            } else {
                state.stats.dropped += 1;
            }
            drop(state);
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                // The stream would fail; the sender hears of it and raft retries.
                self.report_snapshot(from, to, SnapshotStatus::Failure);
            }
            return;
        }
        state.stats.duplicated += copies as u64 - 1;
        drop(state);
        for delay in delays {
            let net = self.clone();
            let msg = msg.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                net.deliver(from, msg, incarnation);
            });
        }
    }

    /// Hand `msg` to its receiver if it still runs the incarnation it was sent to and no
    /// partition cut the link meanwhile.
    fn deliver(&self, from: u64, mut msg: Message, incarnation: u64) {
        let to = msg.to;
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let mut state = self.lock();
        let cut = state.cut.contains(&(from, to));
        let target = state
            .endpoints
            .get(&to)
            .filter(|e| e.incarnation == incarnation && !cut)
            .and_then(|e| {
                e.node
                    .clone()
                    .map(|n| (n, e.data_dir.clone(), e.fs.clone()))
            });
        let Some((node, data_dir, to_fs)) = target else {
            state.stats.cut += 1;
            drop(state);
            if is_snapshot {
                self.report_snapshot(from, to, SnapshotStatus::Failure);
            }
            return;
        };
        let from_fs = state.endpoints.get(&from).map(|e| e.fs.clone());
        if node.shared.peers.is_removed(from) {
            // A member refuses a node it saw removed, and the node learns it (as over gRPC).
            drop(state);
            self.feedback(
                from,
                Command::RemovedBy {
                    by: to,
                    reason: format!("node {to} applied the removal of node {from}"),
                },
            );
            return;
        }
        if is_snapshot {
            let name = format!("incoming-snapshot-{from}-{}.snap", state.next_file);
            state.next_file += 1;
            // The receiver always gets a file, whether the sender's snapshot is a file (the
            // usual case) or bytes held in its store (the initial snapshot). Like the gRPC
            // receiver, it is not synced: the store syncs what it keeps.
            let target = data_dir.join(name);
            let data = msg.get_snapshot().get_data();
            let bytes = match (crate::storage::snapshot_file_ref(data), from_fs) {
                (Some(source), Some(fs)) => crate::storage::fs::read_all(&*fs, &source),
                (Some(_), None) => Err(std::io::Error::other("unknown sender")),
                (None, _) => Ok(data.to_vec()),
            };
            let copied = bytes.and_then(|bytes| {
                // The data dir exists on a real machine; on a simulated disk only once the
                // store made a directory under it.
                to_fs.create_dir_all(&data_dir)?;
                let file = to_fs.open(&target, OpenMode::CreateTruncate)?;
                file.write_all_at(&bytes, 0)?;
                Ok(target)
            });
            // Like the gRPC receiver, hand raft only a file whose envelope checks out (the
            // sender's disk may have read back bad bytes); otherwise the transfer failed.
            let copied = copied.and_then(|target| {
                let meta = msg.get_snapshot().get_metadata();
                match crate::storage::SnapshotEnvelope::verify_file_in(&*to_fs, &target, meta) {
                    Ok(()) => Ok(target),
                    Err(e) => {
                        let _ = to_fs.remove_file(&target);
                        Err(std::io::Error::other(e.to_string()))
                    }
                }
            });
            let Ok(target) = copied else {
                drop(state);
                self.report_snapshot(from, to, SnapshotStatus::Failure);
                return;
            };
            msg.mut_snapshot()
                .set_data(crate::storage::snapshot_file_data(&target));
            state.stats.snapshots += 1;
        }
        state.stats.delivered += 1;
        drop(state);
        if !is_snapshot && node.shared.peers.get(from).is_none() {
            // The gRPC server learns the address of a sender it has none for from the stream's
            // `pontoon-from-addr` header before it delivers what the stream carries, so the
            // receiver can answer (`stream_messages`). Snapshots come by another call, which
            // does not. Without this, a member that missed the entry adding a node never
            // answers that node once it leads, so the leader never learns it needs a snapshot.
            let book = Peers::from([(from, sim_addr(from))]);
            let _ = node.shared.mailbox.try_send(Command::LearnPeers(book));
        }
        // A full mailbox loses the message, as a full peer queue does; raft retransmits.
        let _ = node.shared.mailbox.try_send(Command::Raft(Box::new(msg)));
        if is_snapshot {
            self.report_snapshot(from, to, SnapshotStatus::Finish);
        }
    }

    fn report_snapshot(&self, from: u64, to: u64, status: SnapshotStatus) {
        self.feedback(from, Command::ReportSnapshot(to, status));
    }

    /// Transport feedback to node `id`'s run loop, if it runs.
    fn feedback(&self, id: u64, cmd: Command) {
        let node = self.lock().endpoints.get(&id).and_then(|e| e.node.clone());
        if let Some(node) = node {
            let _ = node.shared.mailbox.try_send(cmd);
        }
    }
}

/// One node's side of the simulated network.
struct SimTransport {
    from: u64,
    /// The peers its address book lists: messages to anyone else are dropped, as the gRPC
    /// transport has no sender for them.
    known: Mutex<BTreeSet<u64>>,
    net: SimNetwork,
}

impl Transport for SimTransport {
    fn send(&self, messages: Vec<Message>) {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for msg in messages {
            if known.contains(&msg.to) {
                self.net.send_one(self.from, msg);
            }
        }
    }

    fn set_peers(&self, peers: &Peers) {
        let ids = peers
            .keys()
            .copied()
            .filter(|id| *id != self.from)
            .collect();
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = ids;
    }
}
