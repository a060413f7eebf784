//! What a node reports about itself: a light `SoftStatus` published after every loop turn (read
//! without asking the loop), and the full `NodeStatus` behind `RaftNode::inspect`.

use serde::{Deserialize, Serialize};

/// The node's role, as raft-rs names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
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
    pub role: Role,
    pub term: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub commit: u64,
    pub applied: u64,
}

/// What a member is in the configuration: a voter counts towards quorums and may lead; a
/// learner receives the log and votes on nothing. Serialised as `"voter"` / `"learner"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerRole {
    Voter,
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
    pub id: u64,
    pub addr: Option<String>,
    /// Voter or learner.
    pub role: PeerRole,
    /// Only known on the leader.
    pub matched: Option<u64>,
    pub next_index: Option<u64>,
    /// raft-rs progress state (`Probe`, `Replicate`, `Snapshot`), leader only.
    pub state: Option<String>,
    /// Whether the leader heard from this member within the last election timeout (leader only).
    pub recent_active: Option<bool>,
}

/// Everything `inspect()` reports; serialises to the JSON shown by `GET /debug` and the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub cluster_id: String,
    pub role: Role,
    pub term: u64,
    pub vote: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub pending_proposals: usize,
    /// Proposals the leader holds until its commit index moves (`Config::append_window`).
    #[serde(default)]
    pub held_proposals: usize,
    /// Linearizable reads asked of this node, and the ReadIndex rounds that served them.
    pub read_index_requests: u64,
    pub read_index_rounds: u64,
    pub peers: Vec<PeerStatus>,
}
