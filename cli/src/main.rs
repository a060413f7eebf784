//! pontoon-cli: see what is on disk and in every node's head, and run the few admin calls an
//! operator needs. Human output is aligned tables; `--json` is stable machine output.
//! Errors are one line on stderr and a non-zero exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pontoon::debug;

#[derive(Parser)]
#[command(
    name = "pontoon-cli",
    version,
    about = "Inspect pontoon data dirs and running nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PEM client certificate, for clusters that run mutual TLS (with --tls-key and --tls-ca).
    #[arg(long, global = true, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, value_name = "FILE")]
    tls_key: Option<String>,
    /// PEM certificate(s) of the CA that signs the nodes' certificates.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<String>,
    /// Check the nodes' certificates for this name instead of the host of the address.
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// The cluster's join token, needed by `member remove` when the cluster has one.
    #[arg(long, global = true, value_name = "SECRET")]
    join_token: Option<String>,
}

impl Cli {
    /// TLS material (read and checked now) and join token for the calls to running nodes.
    fn remote_options(&self) -> Result<debug::RemoteOptions, String> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                let tls =
                    pontoon::TlsConfig::from_pem_files(cert, key, ca).map_err(|e| e.to_string())?;
                Some(match &self.tls_server_name {
                    Some(name) => tls.with_server_name(name).map_err(|e| e.to_string())?,
                    None => tls,
                })
            }
            _ => {
                return Err("--tls-cert, --tls-key and --tls-ca go together: give all three".into())
            }
        };
        Ok(debug::RemoteOptions {
            tls,
            join_token: self.join_token.clone(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Look at what is on disk or in a node's head.
    Debug {
        #[command(subcommand)]
        what: Debug,
    },
    /// List or change the members of a cluster.
    Member {
        #[command(subcommand)]
        what: Member,
    },
    /// Take a snapshot on one node now (and compact its log).
    Snapshot {
        /// The node's raft address (host:port).
        #[arg(long, value_parser = raft_addr)]
        addr: String,
    },
}

#[derive(Subcommand)]
enum Debug {
    /// The persisted state of a data dir: identity, hard state, conf state, snapshot, address
    /// book and log entries. Opens LMDB read-only, so it works while the node runs.
    Persisted {
        /// The node's data dir.
        dir: std::path::PathBuf,
        /// First entry index to show (default: the first in the log).
        #[arg(long)]
        from: Option<u64>,
        /// Last entry index to show (default: the last in the log).
        #[arg(long)]
        to: Option<u64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The live status of the node at ADDR: role, term, indexes, peers' progress.
    Node {
        /// The node's raft address (host:port).
        #[arg(value_parser = raft_addr)]
        addr: String,
        #[arg(long)]
        json: bool,
        /// Refuse to talk to a node of another cluster.
        #[arg(long, default_value = "")]
        cluster_id: String,
    },
    /// The status of every member found through the node at ADDR, unreachable ones marked.
    Cluster {
        /// Any member's raft address (host:port).
        #[arg(value_parser = raft_addr)]
        addr: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "")]
        cluster_id: String,
    },
}

#[derive(Subcommand)]
enum Member {
    /// Members with address, role and progress.
    List {
        /// Any member's raft address.
        #[arg(long, value_parser = raft_addr)]
        addr: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a member (sent to the leader).
    Remove {
        id: u64,
        #[arg(long, value_parser = raft_addr)]
        addr: String,
    },
    /// Record a member's new raft address through the log, when it moved and cannot say so
    /// itself (a node restarted on its data dir at a new address tells the members on its own).
    UpdateAddress {
        id: u64,
        /// The address the member now listens on (HOST:PORT).
        #[arg(value_parser = raft_addr)]
        new_addr: String,
        /// Any member's raft address.
        #[arg(long, value_parser = raft_addr)]
        addr: String,
    },
    /// Move leadership to a member (sent to the leader).
    TransferLeader {
        id: u64,
        #[arg(long, value_parser = raft_addr)]
        addr: String,
    },
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<String, String> {
    // A transport failure most often means the address is not a node's raft (gRPC) port:
    // memstore's HTTP port, say, closes the connection on a gRPC call.
    let err = |e: pontoon::Error| match e {
        pontoon::Error::Transport(_) => format!(
            "{e}; is that the node's raft (gRPC) address? (memstore: --raft-addr, not \
             --web-server)"
        ),
        e => e.to_string(),
    };
    let remote = cli.remote_options()?;
    let remote = &remote;
    match cli.command {
        Command::Debug { what } => match what {
            Debug::Persisted {
                dir,
                from,
                to,
                json: as_json,
            } => {
                let state = debug::read_persisted(&dir, from, to, None).map_err(err)?;
                if as_json {
                    json(&state)
                } else {
                    Ok(debug::render_persisted(&state))
                }
            }
            Debug::Node {
                addr,
                json: as_json,
                cluster_id,
            } => {
                let status = debug::node_status_with(&addr, &cluster_id, remote)
                    .await
                    .map_err(err)?;
                if as_json {
                    json(&status)
                } else {
                    Ok(debug::render_node(&status))
                }
            }
            Debug::Cluster {
                addr,
                json: as_json,
                cluster_id,
            } => {
                let rows = debug::cluster_status_with(&addr, &cluster_id, remote)
                    .await
                    .map_err(err)?;
                if as_json {
                    json(&rows)
                } else {
                    Ok(debug::render_cluster(&rows))
                }
            }
        },
        Command::Member { what } => match what {
            Member::List {
                addr,
                json: as_json,
            } => {
                let rows = debug::cluster_status_with(&addr, "", remote)
                    .await
                    .map_err(err)?;
                if as_json {
                    json(&rows)
                } else {
                    Ok(debug::render_cluster(&rows))
                }
            }
            Member::Remove { id, addr } => {
                debug::remove_member_with(&addr, id, remote)
                    .await
                    .map_err(err)?;
                Ok(format!("node {id} removed\n"))
            }
            Member::UpdateAddress { id, new_addr, addr } => {
                debug::update_member_address_with(&addr, id, &new_addr, remote)
                    .await
                    .map_err(err)?;
                Ok(format!("node {id} is now reached at {new_addr}\n"))
            }
            Member::TransferLeader { id, addr } => {
                debug::transfer_leader_with(&addr, id, remote)
                    .await
                    .map_err(err)?;
                Ok(format!("leadership moved to node {id}\n"))
            }
        },
        Command::Snapshot { addr } => {
            let index = debug::create_snapshot_with(&addr, remote)
                .await
                .map_err(err)?;
            Ok(format!("snapshot taken at index {index}\n"))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(mut out) => {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            // A reader that stops early (`| head`) is not an error: stop writing quietly.
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pontoon-cli: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("pontoon-cli: {}", e.lines().next().unwrap_or("failed"));
            ExitCode::FAILURE
        }
    }
}

/// A node's raft (gRPC) address as `HOST:PORT`, checked before anything is dialled: a missing
/// port or a bare port would otherwise surface as a confusing transport error.
fn raft_addr(value: &str) -> Result<String, String> {
    let hint = "expected HOST:PORT of a node's raft (gRPC) address, e.g. 127.0.0.1:60061 \
                (not its HTTP port)";
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(value.to_string())
        }
        _ => Err(hint.to_string()),
    }
}
