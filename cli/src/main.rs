//! pontoon-cli: inspect pontoon nodes and data dirs.
//!
//! This build knows the command layout; the `debug` commands are filled in by the CLI issue and
//! say so instead of pretending to work.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pontoon-cli",
    version,
    about = "Inspect pontoon nodes and data dirs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Look at what is on disk or in a node's head.
    Debug {
        #[command(subcommand)]
        what: Debug,
    },
}

#[derive(Subcommand)]
enum Debug {
    /// Print the persisted state of a data dir (node id, hard state, log entries, ...).
    Persisted {
        /// The node's data dir.
        dir: String,
    },
    /// Print the live status of the node at ADDR.
    Node {
        /// The node's raft address (host:port).
        addr: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Debug {
            what: Debug::Persisted { dir },
        } => format!("debug persisted {dir}"),
        Command::Debug {
            what: Debug::Node { addr },
        } => format!("debug node {addr}"),
    };
    eprintln!(
        "pontoon-cli: `{what}` is not available in this build yet (see `pontoon-cli --help`)"
    );
    std::process::exit(2);
}
