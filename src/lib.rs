//! # pontoon
//!
//! Turn a state machine into a replicated, fault-tolerant service. You write an
//! `AbstractStateMachine` (`apply` / `snapshot` / `restore`) and an `AbstractLogEntry`
//! (`encode` / `decode`); pontoon drives raft-rs, persists the log to its own append-only WAL and
//! everything else to LMDB, and talks to peers over gRPC.
//!
//! ```no_run
//! # use pontoon::{Raft, Config, AbstractStateMachine};
//! # async fn demo<F: AbstractStateMachine>(fsm: F) -> pontoon::Result<()> {
//! let mut config = Config::default();
//! config.data_dir = "./data/node-1".into();
//! config.initial_peers = Some(pontoon::parse_peers("1=127.0.0.1:60061,2=127.0.0.1:60062,3=127.0.0.1:60063")?);
//! let raft = Raft::bootstrap(1, "127.0.0.1:60061", fsm, config, pontoon::default_logger()).await?;
//! tokio::spawn(raft.clone().run());
//! let answer = raft.propose(b"set x 1".to_vec()).await?; // what `apply` returned
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod blocking;
pub mod client;
pub mod cluster;
pub mod config;
pub mod debug;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod node;
pub mod rpc;
mod session;
#[cfg(feature = "simulation")]
#[doc(hidden)]
pub mod simulation;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;

pub use cluster::{default_logger, JoinTicket, Raft};
pub use config::{parse_peers, Config, Peers};
pub use error::{Error, Result};
pub use node::SessionCommand;
pub use node::{NodeStatus, PeerRole, RaftNode, Role, SoftStatus};
pub use session::Session;
pub use state_machine::{
    AbstractLogEntry, AbstractStateMachine, FrozenState, SnapshotSink, SnapshotSource,
};
pub use tls::{TlsConfig, TlsError};

/// The Rust blocks of `docs/*.md` are doctests (`tests/docs.rs` checks that every file with Rust
/// blocks is listed here).
#[cfg(doctest)]
mod docs {
    #[doc = include_str!("../docs/architecture.md")]
    struct Architecture;
    #[doc = include_str!("../docs/operations.md")]
    struct Operations;
    #[doc = include_str!("../docs/performance.md")]
    struct Performance;
    #[doc = include_str!("../docs/testing.md")]
    struct Testing;
}

/// Re-exports so applications need not depend on these crates directly.
pub use async_trait::async_trait;
pub use raft;
pub use slog;
