//! `GrpcTransport`: one sender task per peer.
//!
//! Each peer has a bounded queue. Its task takes whatever is queued (up to `max_batch_messages`)
//! and pushes it as one batch into a long-lived `StreamMessages` stream to the peer. The stream
//! keeps batches in order and lets the next one leave without waiting for the peer to answer the
//! previous one (a unary call per batch spent most of its time waiting on the round trip).
//!
//! Opening the stream proves the peer is there (it checks cluster and sender first). When opening
//! fails, the stream ends with an error (the peer refused a batch, or the connection broke) or
//! the peer takes no batch within the RPC timeout, the batch is dropped, the peer is reported
//! unreachable to raft (which then probes instead of pipelining) and the task waits with capped
//! exponential backoff before opening a new stream. Nothing here ever blocks the run loop.

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
use super::snapshot_sender::snapshot_chunks;
use super::{FaultInjector, PeerEvent, PeerFeedback, Transport, Verdict};
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::client_pool::connect_lazy;
use super::wire::{
    is_removal_of, STREAM_CLUSTER_HEADER, STREAM_FROM_ADDR_HEADER, STREAM_FROM_HEADER,
};
use crate::config::{Config, Peers};
use crate::metrics::Metrics;
use crate::transport::pb::raft_service_client::RaftServiceClient as GrpcClient;

const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// Batches that may wait in an open stream before the sender waits for the peer to take them.
const STREAM_DEPTH: usize = 64;

/// The open `StreamMessages` call to one peer.
struct OpenStream {
    batches: mpsc::Sender<pb::MessageBatch>,
    /// Finishes when the call does: with the status the peer ended it with, `None` when it
    /// closed the stream without one.
    ended: JoinHandle<Option<Status>>,
}

impl OpenStream {
    /// Why the call ended (wait for the watcher, which has finished or is about to).
    async fn end_status(self) -> Status {
        match self.ended.await {
            Ok(Some(status)) => status,
            Ok(None) => Status::unavailable("the peer closed the message stream"),
            Err(_) => Status::unavailable("the message stream's watcher stopped"),
        }
    }
}

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
    feedback: PeerFeedback,
    peers: Mutex<HashMap<u64, PeerSender>>,
    metrics: Metrics,
    faults: Arc<FaultInjector>,
    logger: Logger,
    raft_addr: String,
}

impl GrpcTransport {
    /// `feedback` takes unreachable / snapshot / removal reports (the node turns them into
    /// commands for its run loop). `raft_addr` is
    /// this node's own address, announced on every stream so that a peer that does not know it
    /// yet (a node restarted half-way through its join) can answer.
    pub fn new(
        node_id: u64,
        raft_addr: &str,
        config: &Config,
        feedback: PeerFeedback,
        metrics: Metrics,
        faults: Arc<FaultInjector>,
        logger: Logger,
    ) -> Arc<Self> {
        Arc::new(GrpcTransport {
            node_id,
            raft_addr: raft_addr.to_string(),
            cluster_id: config.cluster_id.clone(),
            config: config.clone(),
            feedback,
            peers: Mutex::new(HashMap::new()),
            metrics,
            faults,
            logger,
        })
    }

    fn spawn_sender(&self, peer_id: u64, addr: String) -> PeerSender {
        let (tx, rx) = mpsc::channel(self.config.peer_queue_capacity);
        let worker = SenderWorker {
            from: self.node_id,
            from_addr: self.raft_addr.clone(),
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
            metrics_chunks: self.metrics.snapshot_chunks_sent.clone(),
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
            match self.faults.verdict(to) {
                Verdict::Pass => {}
                Verdict::Drop => {
                    self.metrics
                        .peer_messages_dropped
                        .with_label_values(&[&to.to_string()])
                        .inc();
                    continue;
                }
                Verdict::Delay(delay) => {
                    if let Some(peer) = peers.get(&to) {
                        let queue = peer.queue.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = queue.try_send(msg);
                        });
                    }
                    continue;
                }
            }
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
                self.feedback.report(PeerEvent::Unreachable(to));
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    self.feedback
                        .report(PeerEvent::SnapshotSent(to, SnapshotStatus::Failure));
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
    from_addr: String,
    to: u64,
    addr: String,
    cluster_id: String,
    config: Config,
    feedback: PeerFeedback,
    sent: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
    metrics_chunks: prometheus::IntCounter,
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
        let mut stream: Option<OpenStream> = None;
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
            // Snapshots travel on their own stream; everything else in one batch call.
            let (snapshots, messages): (Vec<Message>, Vec<Message>) = batch
                .drain(..)
                .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            if !messages.is_empty() {
                let ok = self
                    .send_batch(
                        &mut client,
                        &mut stream,
                        &messages,
                        &mut failing,
                        &mut backoff,
                    )
                    .await;
                if !ok {
                    for _ in &snapshots {
                        self.report_snapshot(SnapshotStatus::Failure);
                    }
                    self.pause(&mut queue, &mut backoff).await;
                    continue;
                }
            }
            for snapshot in snapshots {
                match self.stream_snapshot(&mut client, snapshot).await {
                    Ok(chunks) => {
                        slog::info!(self.logger, "snapshot sent"; "chunks" => chunks);
                        self.report_snapshot(SnapshotStatus::Finish);
                    }
                    Err(reason) => {
                        slog::warn!(self.logger, "snapshot transfer failed; raft will retry"; "reason" => reason);
                        self.report_snapshot(SnapshotStatus::Failure);
                        self.feedback.report(PeerEvent::Unreachable(self.to));
                    }
                }
            }
        }
    }

    fn report_snapshot(&self, status: SnapshotStatus) {
        self.feedback
            .report(PeerEvent::SnapshotSent(self.to, status));
    }

    /// Push one batch into the stream (opening it first when there is none); false when it
    /// failed (the caller backs off).
    async fn send_batch(
        &self,
        client: &mut GrpcClient<Channel>,
        stream: &mut Option<OpenStream>,
        messages: &[Message],
        failing: &mut bool,
        backoff: &mut Duration,
    ) -> bool {
        let mut encoded = Vec::with_capacity(messages.len());
        for m in messages {
            match m.write_to_bytes() {
                Ok(b) => encoded.push(b),
                Err(e) => slog::error!(self.logger, "cannot encode raft message"; "error" => %e),
            }
        }
        let batch = pb::MessageBatch {
            cluster_id: self.cluster_id.clone(),
            from: self.from,
            messages: encoded,
        };
        match self.push(client, stream, batch, failing, backoff).await {
            Ok(()) => {
                self.sent.inc_by(messages.len() as u64);
                true
            }
            Err(status) => {
                self.dropped.inc_by(messages.len() as u64);
                let removed = is_removal_of(&status, self.from);
                if !removed {
                    self.on_failure(failing, &status.to_string());
                }
                if removed {
                    // A member applied this node's removal: the run loop stops the node.
                    self.feedback.report(PeerEvent::RemovedBy {
                        by: self.to,
                        reason: status.message().to_string(),
                    });
                    *backoff = BACKOFF_CAP;
                } else if status.code() == tonic::Code::PermissionDenied {
                    // Another cluster answers at this address: retrying faster will not help.
                    *backoff = BACKOFF_CAP;
                }
                false
            }
        }
    }

    async fn push(
        &self,
        client: &mut GrpcClient<Channel>,
        stream: &mut Option<OpenStream>,
        batch: pb::MessageBatch,
        failing: &mut bool,
        backoff: &mut Duration,
    ) -> Result<(), Status> {
        if let Some(ended) = stream.take_if(|s| s.ended.is_finished()) {
            return Err(ended.end_status().await);
        }
        let open = match stream {
            Some(open) => open,
            None => {
                let open = self.open_stream(client).await?;
                if *failing {
                    slog::info!(self.logger, "peer reachable again"; "addr" => &self.addr);
                }
                *failing = false;
                *backoff = BACKOFF_START;
                stream.insert(open)
            }
        };
        match tokio::time::timeout(self.config.rpc_timeout, open.batches.send(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => match stream.take() {
                Some(ended) => Err(ended.end_status().await),
                None => Err(Status::unavailable("the message stream ended")),
            },
            Err(_) => {
                if let Some(stuck) = stream.take() {
                    stuck.ended.abort();
                }
                Err(Status::deadline_exceeded(
                    "the peer took no message within the RPC timeout",
                ))
            }
        }
    }

    /// Open a `StreamMessages` call; it is accepted once the peer checked cluster and sender.
    async fn open_stream(&self, client: &mut GrpcClient<Channel>) -> Result<OpenStream, Status> {
        let (batches, outbound) = mpsc::channel(STREAM_DEPTH);
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
        let meta = request.metadata_mut();
        meta.insert_bin(
            STREAM_CLUSTER_HEADER,
            tonic::metadata::BinaryMetadataValue::from_bytes(self.cluster_id.as_bytes()),
        );
        meta.insert(STREAM_FROM_HEADER, self.from.into());
        if let Ok(addr) = self.from_addr.parse() {
            meta.insert(STREAM_FROM_ADDR_HEADER, addr);
        }
        let response =
            match tokio::time::timeout(self.config.rpc_timeout, client.stream_messages(request))
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "opening the message stream timed out",
                    ))
                }
            };
        let mut inbound = response.into_inner();
        let ended = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        });
        Ok(OpenStream { batches, ended })
    }

    /// Stream one MsgSnapshot in chunks of `snapshot_chunk_bytes`, read from the store's
    /// snapshot file a few chunks ahead of the stream (see `snapshot_sender`).
    async fn stream_snapshot(
        &self,
        client: &mut GrpcClient<Channel>,
        mut msg: Message,
    ) -> Result<u64, String> {
        let data = msg.mut_snapshot().take_data();
        let message = msg.write_to_bytes().map_err(|e| e.to_string())?;
        let (chunks, count) = snapshot_chunks(
            data,
            message,
            self.cluster_id.clone(),
            self.from,
            self.config.snapshot_chunk_bytes,
            self.metrics_chunks.clone(),
        )
        .await?;
        let call = client.install_snapshot(chunks);
        match tokio::time::timeout(self.config.snapshot_timeout, call).await {
            Ok(Ok(ack)) if ack.get_ref().chunks == count => Ok(count),
            Ok(Ok(ack)) => Err(format!(
                "the peer acknowledged {} of {count} chunks",
                ack.get_ref().chunks
            )),
            Ok(Err(status)) => Err(status.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    fn on_failure(&self, failing: &mut bool, reason: &str) {
        if !*failing {
            slog::warn!(self.logger, "cannot reach peer; will retry with backoff"; "addr" => &self.addr, "reason" => reason);
        }
        *failing = true;
        self.feedback.report(PeerEvent::Unreachable(self.to));
    }

    /// Wait out the backoff, then discard what queued up meanwhile: those messages are stale and
    /// raft resends what still matters once it probes the peer again.
    async fn pause(&self, queue: &mut mpsc::Receiver<Message>, backoff: &mut Duration) {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(BACKOFF_CAP);
        while let Ok(m) = queue.try_recv() {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.feedback
                    .report(PeerEvent::SnapshotSent(self.to, SnapshotStatus::Failure));
            }
        }
    }
}
