//! What a data dir holds, read through a read-only LMDB handle (safe while the node runs).

use std::path::Path;

use raft::eraftpb::{ConfChangeType, ConfChangeV2, EntryType};
use raft::Storage;
use serde::{Deserialize, Serialize};

use super::table::render_table;
use crate::config::Peers;
use crate::error::Result;
use crate::node::{
    command_batch, decode_conf_change, ConfChangeContext, EntryKind, FrameworkEntry,
    ProposalContext,
};
use crate::storage::{LmdbStorage, LogStore};

/// Turns a user entry's bytes into text; `None` falls back to the default rendering.
pub type EntryFormatter = dyn Fn(&[u8]) -> Option<String> + Send + Sync;

/// UTF-8 when printable, hex otherwise.
pub fn default_formatter(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t') => s.to_string(),
        _ => {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// One log entry, decoded as far as pontoon can.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    /// The entry's log index.
    pub index: u64,
    /// The term the entry was proposed in.
    pub term: u64,
    /// `normal`, `conf_change` or `conf_change_v2`.
    pub entry_type: String,
    /// `user`, `batch` (several user commands in one entry), `session` (session commands),
    /// `framework`, `noop` or `membership`.
    pub kind: String,
    /// Size of the entry's data in bytes.
    pub size: usize,
    /// The data, rendered (user entries through the formatter). A batch shows its count and
    /// its first commands.
    pub data: String,
    /// Every command of a batch entry, rendered through the formatter (empty for other kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

/// How many commands of a batch entry its one-line `data` shows.
const BATCH_COMMANDS_SHOWN: usize = 4;

/// The latest snapshot stored in a data dir, as `PersistedState::snapshot` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// Index of the last entry the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The voters as of the snapshot.
    pub voters: Vec<u64>,
    /// The learners as of the snapshot.
    pub learners: Vec<u64>,
    /// Size of the stored snapshot in bytes (its file's length).
    pub bytes: usize,
}

/// Everything `pontoon-cli debug persisted` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// The node id the data dir belongs to.
    pub node_id: u64,
    /// The cluster the data dir belongs to.
    pub cluster_id: String,
    /// The on-disk format version the data dir was written with (see `storage::FORMAT_VERSION`).
    pub format_version: u32,
    /// The persisted raft term (hard state).
    pub term: u64,
    /// The node this one voted for in `term` (0: none).
    pub vote: u64,
    /// The persisted commit index (hard state); the node may have known a higher one.
    pub commit: u64,
    /// The voters of the latest stored membership (conf state).
    pub voters: Vec<u64>,
    /// The learners of that membership.
    pub learners: Vec<u64>,
    /// The outgoing voters while in a joint configuration (empty otherwise).
    pub voters_outgoing: Vec<u64>,
    /// The log index that membership took effect at.
    pub conf_state_index: u64,
    /// The first index still in the log (the entries before it are in the snapshot).
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// WAL segment files the log spans.
    pub log_segments: usize,
    /// The latest stored snapshot, if any.
    pub snapshot: Option<SnapshotView>,
    /// The address book as stored: every member's id and raft address.
    pub peers: Peers,
    /// The entries asked for (`read_persisted`'s range, clamped to the log), decoded.
    pub entries: Vec<EntryView>,
}

/// Read a data dir (read-only) and decode the entries in `[from, to]` (clamped to the log).
pub fn read_persisted(
    dir: impl AsRef<Path>,
    from: Option<u64>,
    to: Option<u64>,
    formatter: Option<&EntryFormatter>,
) -> Result<PersistedState> {
    let store = LmdbStorage::open_read_only(dir)?;
    let identity = store.identity()?;
    let hs = store.hard_state()?;
    let (cs, conf_state_index) = store.conf_state()?;
    let first = store.first_index()?;
    let last = store.last_index()?;
    // The snapshot's size from its file: reading a large snapshot whole just to measure it would
    // cost its size in memory, on a machine that may be running the node.
    let snapshot = match store.latest_snapshot_file()? {
        Some((meta, path)) => Some((
            meta,
            store
                .file_system()
                .open(&path, crate::storage::fs::OpenMode::Read)?
                .len()? as usize,
        )),
        None => store
            .latest_snapshot()?
            .map(|s| (s.get_metadata().clone(), s.get_data().len())),
    }
    .map(|(meta, bytes)| SnapshotView {
        index: meta.index,
        term: meta.term,
        voters: meta.get_conf_state().voters.clone(),
        learners: meta.get_conf_state().learners.clone(),
        bytes,
    });
    let low = from.unwrap_or(first).max(first);
    let high = to.unwrap_or(last).min(last);
    let mut entries = Vec::new();
    if low <= high {
        let ctx = raft::GetEntriesContext::empty(false);
        for entry in store.entries(low, high + 1, None, ctx)? {
            entries.push(view_entry(&entry, formatter));
        }
    }
    Ok(PersistedState {
        node_id: identity.node_id,
        cluster_id: identity.cluster_id,
        format_version: identity.format_version,
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        conf_state_index,
        first_index: first,
        last_index: last,
        log_segments: store.log_segments(),
        snapshot,
        peers: store.peers()?,
        entries,
    })
}

pub(crate) fn view_entry(
    entry: &raft::eraftpb::Entry,
    formatter: Option<&EntryFormatter>,
) -> EntryView {
    let data = entry.get_data();
    let render = |command: &[u8]| {
        formatter
            .and_then(|f| f(command))
            .unwrap_or_else(|| default_formatter(command))
    };
    let mut commands = Vec::new();
    let (entry_type, kind, text) = match entry.get_entry_type() {
        EntryType::EntryNormal => {
            let (kind, text) = match ProposalContext::decode(entry.get_context()) {
                Some(c) if c.kind == EntryKind::UserBatch => (
                    "batch",
                    match command_batch::decode(data) {
                        Ok(batch) => {
                            commands = batch.iter().map(|c| render(c)).collect();
                            summarize_batch(&commands)
                        }
                        Err(e) => format!("unreadable batch: {e}"),
                    },
                ),
                Some(c) if c.kind == EntryKind::Session => (
                    "session",
                    match command_batch::decode(data) {
                        Ok(batch) => {
                            commands = batch
                                .iter()
                                .map(|c| match crate::node::SessionCommand::split(c) {
                                    Ok((h, payload)) => format!(
                                        "session {} #{} (acked {}): {}",
                                        h.session,
                                        h.seq,
                                        h.acked,
                                        render(payload)
                                    ),
                                    Err(e) => format!("unreadable session command: {e}"),
                                })
                                .collect();
                            summarize_batch(&commands)
                        }
                        Err(e) => format!("unreadable session entry: {e}"),
                    },
                ),
                Some(c) if c.kind == EntryKind::Framework => (
                    "framework",
                    match FrameworkEntry::decode(data) {
                        Ok(FrameworkEntry::ReserveId { raft_addr }) => {
                            format!("reserve a node id for {raft_addr}")
                        }
                        Ok(FrameworkEntry::UpdateAddress { node_id, raft_addr }) => {
                            format!("node {node_id} is now reached at {raft_addr}")
                        }
                        Ok(FrameworkEntry::OpenSession {
                            max_sessions,
                            window,
                        }) => format!(
                            "open a client session (window {window}, at most {max_sessions} sessions)"
                        ),

                        Err(e) => format!("unreadable framework entry: {e}"),
                    },
                ),
                None if data.is_empty() => ("noop", "(empty entry of a new leader)".to_string()),
                _ => ("user", render(data)),
            };
            ("normal", kind, text)
        }
        t @ (EntryType::EntryConfChange | EntryType::EntryConfChangeV2) => {
            let cc = decode_conf_change(entry);
            let addrs = ConfChangeContext::decode(entry.get_context())
                .map(|c| c.addrs)
                .unwrap_or_default();
            let text = match cc {
                Ok(cc) => describe_conf_change(&cc, &addrs),
                Err(e) => format!("unreadable conf change: {e}"),
            };
            let name = if t == EntryType::EntryConfChange {
                "conf_change"
            } else {
                "conf_change_v2"
            };
            (name, "membership", text)
        }
    };
    EntryView {
        index: entry.index,
        term: entry.term,
        entry_type: entry_type.to_string(),
        kind: kind.to_string(),
        size: data.len(),
        data: text,
        commands,
    }
}

/// `N commands: first | second | ...`, cut after `BATCH_COMMANDS_SHOWN`.
fn summarize_batch(commands: &[String]) -> String {
    let shown = commands
        .iter()
        .take(BATCH_COMMANDS_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" | ");
    match commands.len().saturating_sub(BATCH_COMMANDS_SHOWN) {
        0 => format!("{} commands: {shown}", commands.len()),
        more => format!("{} commands: {shown} | ... {more} more", commands.len()),
    }
}

fn describe_conf_change(cc: &ConfChangeV2, addrs: &Peers) -> String {
    if cc.get_changes().is_empty() {
        return "leave joint configuration".to_string();
    }
    let parts: Vec<String> = cc
        .get_changes()
        .iter()
        .map(|c| {
            let id = c.node_id;
            let at = addrs
                .get(&id)
                .map(|a| format!(" at {a}"))
                .unwrap_or_default();
            match c.get_change_type() {
                ConfChangeType::AddNode => format!("add voter {id}{at}"),
                ConfChangeType::AddLearnerNode => format!("add learner {id}{at}"),
                ConfChangeType::RemoveNode => format!("remove {id}"),
            }
        })
        .collect();
    parts.join(", ")
}

/// The human rendering: a summary block, then the entries as an aligned table.
pub fn render_persisted(state: &PersistedState) -> String {
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = String::new();
    out.push_str(&format!("node id:        {}\n", state.node_id));
    out.push_str(&format!("cluster id:     {}\n", state.cluster_id));
    out.push_str(&format!("format version: {}\n", state.format_version));
    out.push_str(&format!(
        "hard state:     term={} vote={} commit={}\n",
        state.term, state.vote, state.commit
    ));
    out.push_str(&format!(
        "conf state:     voters=[{}] learners=[{}] outgoing=[{}] (as of index {})\n",
        list(&state.voters),
        list(&state.learners),
        list(&state.voters_outgoing),
        state.conf_state_index
    ));
    out.push_str(&format!(
        "log:            first={} last={} (WAL segment files: {})\n",
        state.first_index, state.last_index, state.log_segments
    ));
    match &state.snapshot {
        Some(s) => out.push_str(&format!(
            "snapshot:       index={} term={} voters=[{}] bytes={}\n",
            s.index,
            s.term,
            list(&s.voters),
            s.bytes
        )),
        None => out.push_str("snapshot:       none\n"),
    }
    out.push_str("peers:\n");
    for (id, addr) in &state.peers {
        out.push_str(&format!("  {id} = {addr}\n"));
    }
    out.push_str(&format!("entries ({} shown):\n", state.entries.len()));
    let rows: Vec<Vec<String>> = state
        .entries
        .iter()
        .map(|e| {
            vec![
                e.index.to_string(),
                e.term.to_string(),
                e.entry_type.clone(),
                e.kind.clone(),
                e.size.to_string(),
                e.data.clone(),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["index", "term", "type", "kind", "size", "data"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::EntryKind;

    fn batch_entry(commands: &[&[u8]]) -> raft::eraftpb::Entry {
        let ctx = ProposalContext {
            kind: EntryKind::UserBatch,
            node_id: 1,
            nonce: 7,
            seq: 3,
        };
        raft::eraftpb::Entry {
            index: 9,
            term: 2,
            context: ctx.encode().into(),
            data: command_batch::encode(commands.iter().copied()).into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_entry_is_shown_with_every_command_and_a_short_summary() {
        let commands: Vec<Vec<u8>> = (0..6).map(|i| format!("set k{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
        let upper: &EntryFormatter = &|data| Some(String::from_utf8_lossy(data).to_uppercase());
        let view = view_entry(&batch_entry(&refs), Some(upper));
        assert_eq!(view.kind, "batch");
        assert_eq!(
            view.commands,
            (0..6).map(|i| format!("SET K{i}")).collect::<Vec<_>>()
        );
        assert_eq!(
            view.data,
            "6 commands: SET K0 | SET K1 | SET K2 | SET K3 | ... 2 more"
        );
    }

    #[test]
    fn an_unreadable_batch_is_shown_as_such() {
        let mut entry = batch_entry(&[b"a", b"b"]);
        entry.data = entry.data[..5].to_vec().into();
        let view = view_entry(&entry, None);
        assert_eq!(view.kind, "batch");
        assert!(view.data.starts_with("unreadable batch"), "{}", view.data);
        assert!(view.commands.is_empty());
    }
}
