//! Looking inside pontoon: what a data dir holds (`persisted`) and what running nodes report
//! (`live`). `pontoon-cli` is a thin shell over these functions; an application can build its own
//! CLI with them and pass an `EntryFormatter` that decodes its own log entries.

mod admin;
mod live;
mod persisted;
mod table;

pub use admin::{
    create_snapshot, create_snapshot_with, discover, discover_with, remove_member,
    remove_member_with, transfer_leader, transfer_leader_with, update_member_address,
    update_member_address_with,
};
pub use live::{
    cluster_status, cluster_status_with, node_status, node_status_with, render_cluster,
    render_node, MemberRow, RemoteOptions,
};
pub use persisted::{
    default_formatter, read_persisted, render_persisted, EntryFormatter, EntryView, PersistedState,
    SnapshotView,
};
pub use table::render_table;

pub(crate) use persisted::view_entry;
