//! Lazily connected gRPC clients to nodes: one per address, shared by the transport, proposal
//! forwarding (`RaftNode`) and the application client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::transport::{Channel, Endpoint};

use super::pb::raft_service_client::RaftServiceClient as GrpcClient;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tls::TlsError;

/// A client to `addr` (`host:port`) that connects on first use and reconnects by itself. With
/// `config.tls` set the connection is mutual TLS (`https`), otherwise plaintext.
pub fn connect_lazy(addr: &str, config: &Config) -> Result<GrpcClient<Channel>> {
    let host_port = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))
        .map_err(|e| Error::InvalidRequest(format!("bad peer address {addr:?}: {e}")))?
        .connect_timeout(config.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(10));
    let endpoint = match &config.tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config(config.rpc_timeout))
            .map_err(|e| {
                Error::Tls(TlsError::Setup(format!(
                    "client TLS for {addr:?}: {}",
                    crate::tls::error_chain(&e)
                )))
            })?,
        None => endpoint,
    };
    Ok(GrpcClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes))
}

/// One lazily connected client per address, reused across calls.
#[derive(Clone, Default)]
pub struct ClientPool {
    clients: Arc<Mutex<HashMap<String, GrpcClient<Channel>>>>,
}

impl ClientPool {
    /// The client for `addr`, created on first use.
    pub fn get(&self, addr: &str, config: &Config) -> Result<GrpcClient<Channel>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c = connect_lazy(addr, config)?;
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
