//! gRPC client helpers shared by the transport and by `RaftNode` (proposal forwarding).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::transport::{Channel, Endpoint};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::transport::pb::raft_service_client::RaftServiceClient;

/// A client to `addr` (`host:port`) that connects on first use and reconnects by itself.
pub fn connect_lazy(addr: &str, config: &Config) -> Result<RaftServiceClient<Channel>> {
    let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Error::InvalidRequest(format!("bad peer address {addr:?}: {e}")))?
        .connect_timeout(config.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(10));
    Ok(RaftServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes))
}

/// One lazily connected client per address, reused across calls.
#[derive(Clone, Default)]
pub struct ClientPool {
    clients: Arc<Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
}

impl ClientPool {
    /// The client for `addr`, created on first use.
    pub fn get(&self, addr: &str, config: &Config) -> Result<RaftServiceClient<Channel>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c = connect_lazy(addr, config)?;
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
