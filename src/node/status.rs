//! What a node reports about itself: a light `SoftStatus` published after every loop turn (read
//! without asking the loop), and the full `NodeStatus` behind `RaftNode::inspect`.

use serde::{Deserialize, Serialize};

/// The node's role, as raft-rs names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Following a leader (or waiting for one): proposals made here are forwarded.
    Follower,
    /// Campaigning for leadership in a new term.
    Candidate,
    /// Checking with a pre-vote that it could win before starting a real election (raft-rs
    /// `pre_vote`), so a node cut off from the cluster does not raise the term.
    PreCandidate,
    /// The leader of the current term: proposals are appended here.
    Leader,
    /// The run loop has stopped (after `quit` or a fatal error).
    Stopped,
}

impl From<raft::StateRole> for Role {
    fn from(r: raft::StateRole) -> Self {
        match r {
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::PreCandidate => Role::PreCandidate,
            raft::StateRole::Leader => Role::Leader,
        }
    }
}

/// Cheap, always-current facts published by the run loop through a watch channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftStatus {
    /// This node's raft role.
    pub role: Role,
    /// This node's current term.
    pub term: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    /// The highest log index this node knows to be committed.
    pub commit: u64,
    /// The index of the last entry this node's state machine applied.
    pub applied: u64,
}

/// What a member is in the configuration: a voter counts towards quorums and may lead; a
/// learner receives the log and votes on nothing. Serialised as `"voter"` / `"learner"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerRole {
    /// Counts towards quorums and may become leader.
    Voter,
    /// Receives the log (to catch up before a promotion, or as a read replica) but votes on
    /// nothing.
    Learner,
}

impl std::fmt::Display for PeerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerRole::Voter => "voter",
            PeerRole::Learner => "learner",
        })
    }
}

/// Replication progress of one member as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The member's node id.
    pub id: u64,
    /// Its raft address, when this node's address book has it.
    pub addr: Option<String>,
    /// Voter or learner.
    pub role: PeerRole,
    /// Only known on the leader.
    /// The highest log index known to be replicated on this member (only known on the leader).
    pub matched: Option<u64>,
    /// The next log index the leader will send this member (leader only).
    pub next_index: Option<u64>,
    /// raft-rs progress state (`Probe`, `Replicate`, `Snapshot`), leader only.
    pub state: Option<String>,
    /// Whether the leader heard from this member within the last election timeout (leader only).
    pub recent_active: Option<bool>,
}

/// Everything `inspect()` reports; serialises to the JSON shown by `GET /debug` and the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u64,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// Its raft role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// The node it voted for in `term` (0: none).
    pub vote: u64,
    /// The leader it knows of (0: none).
    pub leader_id: u64,
    /// The highest log index it knows to be committed.
    pub commit_index: u64,
    /// The last log index its state machine applied.
    pub applied_index: u64,
    /// The first index in its log (earlier entries are compacted into the snapshot).
    pub first_index: u64,
    /// The last index in its log.
    pub last_index: u64,
    /// Index of the last entry its latest snapshot covers.
    pub snapshot_index: u64,
    /// Term of that entry.
    pub snapshot_term: u64,
    /// Proposals proposed on this node and waiting for their entry to be applied.
    pub pending_proposals: usize,
    /// Proposals the leader holds until its commit index moves (`Config::append_window`).
    #[serde(default)]
    pub held_proposals: usize,
    /// Linearizable reads asked of this node, and the ReadIndex rounds that served them.
    pub read_index_requests: u64,
    /// ReadIndex rounds this node started; concurrent reads share one.
    pub read_index_rounds: u64,
    /// Every voter and learner in the current configuration, with the leader's view of its
    /// progress when this node is the leader.
    pub peers: Vec<PeerStatus>,
}
