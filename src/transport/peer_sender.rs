//! `GrpcTransport`: one sender task per peer.
//!
//! Each peer has a bounded queue. Its task takes whatever is queued (up to `max_batch_messages`)
//! and delivers it in one `SendMessages` call. On failure the batch is dropped, the peer is
//! reported unreachable to raft (which then probes instead of pipelining) and the task waits with
//! capped exponential backoff before the next attempt. Nothing here ever blocks the run loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use slog::Logger;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::pb;
use super::Transport;
use crate::client::connect_lazy;
use crate::config::{Config, Peers};
use crate::metrics::Metrics;
use crate::node::Command;

const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

struct PeerSender {
    addr: String,
    queue: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

/// The default transport: tonic clients, one task per peer.
pub struct GrpcTransport {
    node_id: u64,
    cluster_id: String,
    config: Config,
    feedback: mpsc::Sender<Command>,
    peers: Mutex<HashMap<u64, PeerSender>>,
    metrics: Metrics,
    logger: Logger,
}

impl GrpcTransport {
    /// `feedback` is the run loop's mailbox, for unreachable / snapshot reports.
    pub fn new(
        node_id: u64,
        config: &Config,
        feedback: mpsc::Sender<Command>,
        metrics: Metrics,
        logger: Logger,
    ) -> Arc<Self> {
        Arc::new(GrpcTransport {
            node_id,
            cluster_id: config.cluster_id.clone(),
            config: config.clone(),
            feedback,
            peers: Mutex::new(HashMap::new()),
            metrics,
            logger,
        })
    }

    fn spawn_sender(&self, peer_id: u64, addr: String) -> PeerSender {
        let (tx, rx) = mpsc::channel(self.config.peer_queue_capacity);
        let worker = SenderWorker {
            from: self.node_id,
            to: peer_id,
            addr: addr.clone(),
            cluster_id: self.cluster_id.clone(),
            config: self.config.clone(),
            feedback: self.feedback.clone(),
            sent: self
                .metrics
                .peer_messages_sent
                .with_label_values(&[&peer_id.to_string()]),
            dropped: self
                .metrics
                .peer_messages_dropped
                .with_label_values(&[&peer_id.to_string()]),
            logger: self.logger.new(slog::o!("peer" => peer_id)),
        };
        let task = tokio::spawn(worker.run(rx));
        PeerSender {
            addr,
            queue: tx,
            task,
        }
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        let peers = self.peers.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, p) in peers.drain() {
            p.task.abort();
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        for msg in messages {
            let to = msg.to;
            let Some(peer) = peers.get(&to) else {
                slog::debug!(self.logger, "dropping message for unknown peer"; "to" => to, "type" => ?msg.get_msg_type());
                continue;
            };
            if let Err(e) = peer.queue.try_send(msg) {
                let msg = match e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                };
                // Queue full: drop (raft retransmits) and let raft slow down for this peer.
                self.metrics
                    .peer_messages_dropped
                    .with_label_values(&[&to.to_string()])
                    .inc();
                let _ = self.feedback.try_send(Command::ReportUnreachable(to));
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    let _ = self
                        .feedback
                        .try_send(Command::ReportSnapshot(to, SnapshotStatus::Failure));
                }
            }
        }
    }

    fn set_peers(&self, book: &Peers) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.retain(|id, sender| {
            let keep = book.get(id) == Some(&sender.addr);
            if !keep {
                sender.task.abort();
            }
            keep
        });
        for (&id, addr) in book {
            if id != self.node_id && !peers.contains_key(&id) {
                let sender = self.spawn_sender(id, addr.clone());
                peers.insert(id, sender);
            }
        }
    }
}

struct SenderWorker {
    from: u64,
    to: u64,
    addr: String,
    cluster_id: String,
    config: Config,
    feedback: mpsc::Sender<Command>,
    sent: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
    logger: Logger,
}

impl SenderWorker {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let mut client = match connect_lazy(&self.addr, &self.config) {
            Ok(c) => c,
            Err(e) => {
                slog::error!(self.logger, "invalid peer address; messages to this peer are dropped"; "addr" => &self.addr, "error" => %e);
                while queue.recv().await.is_some() {}
                return;
            }
        };
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        let mut batch = Vec::with_capacity(self.config.max_batch_messages);
        while let Some(first) = queue.recv().await {
            batch.clear();
            batch.push(first);
            while batch.len() < self.config.max_batch_messages {
                match queue.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let snapshots: Vec<u64> = batch
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .map(|m| m.to)
                .collect();
            let mut encoded = Vec::with_capacity(batch.len());
            for m in &batch {
                match m.write_to_bytes() {
                    Ok(b) => encoded.push(b),
                    Err(e) => {
                        slog::error!(self.logger, "cannot encode raft message"; "error" => %e)
                    }
                }
            }
            let request = pb::MessageBatch {
                cluster_id: self.cluster_id.clone(),
                from: self.from,
                messages: encoded,
            };
            let sent =
                tokio::time::timeout(self.config.rpc_timeout, client.send_messages(request)).await;
            match sent {
                Ok(Ok(_)) => {
                    self.sent.inc_by(batch.len() as u64);
                    if failing {
                        slog::info!(self.logger, "peer reachable again"; "addr" => &self.addr);
                    }
                    failing = false;
                    backoff = BACKOFF_START;
                    for _ in &snapshots {
                        let _ = self
                            .feedback
                            .try_send(Command::ReportSnapshot(self.to, SnapshotStatus::Finish));
                    }
                }
                Ok(Err(status)) => {
                    self.dropped.inc_by(batch.len() as u64);
                    self.on_failure(&mut failing, &snapshots, &status.to_string())
                        .await;
                    if status.code() == tonic::Code::PermissionDenied {
                        // Another cluster answers at this address: retrying faster will not help.
                        backoff = BACKOFF_CAP;
                    }
                    self.pause(&mut queue, &mut backoff).await;
                }
                Err(_) => {
                    self.dropped.inc_by(batch.len() as u64);
                    self.on_failure(&mut failing, &snapshots, "timed out").await;
                    self.pause(&mut queue, &mut backoff).await;
                }
            }
        }
    }

    async fn on_failure(&self, failing: &mut bool, snapshots: &[u64], reason: &str) {
        if !*failing {
            slog::warn!(self.logger, "cannot reach peer; will retry with backoff"; "addr" => &self.addr, "reason" => reason);
        }
        *failing = true;
        let _ = self.feedback.try_send(Command::ReportUnreachable(self.to));
        for _ in snapshots {
            let _ = self
                .feedback
                .try_send(Command::ReportSnapshot(self.to, SnapshotStatus::Failure));
        }
    }

    /// Wait out the backoff, then discard what queued up meanwhile: those messages are stale and
    /// raft resends what still matters once it probes the peer again.
    async fn pause(&self, queue: &mut mpsc::Receiver<Message>, backoff: &mut Duration) {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(BACKOFF_CAP);
        while let Ok(m) = queue.try_recv() {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let _ = self
                    .feedback
                    .try_send(Command::ReportSnapshot(self.to, SnapshotStatus::Failure));
            }
        }
    }
}
