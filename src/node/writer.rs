//! The writer: a dedicated thread that makes Readies durable while the run loop goes on.
//!
//! The run loop hands each Ready's batch (entries, hard state, conf state, address book) to the
//! writer with the messages that must wait for it (`persisted_messages`: votes and follower acks).
//! The writer takes everything queued at that moment, merges it into one write (one WAL record
//! and one `fdatasync` for several Readies: group commit across turns) and reports the highest
//! Ready number it made durable, handing those messages back. Only then does the loop send them and call raft-rs'
//! `on_persist_ready`, which is what lets raft count this node's copy towards a commit.
//!
//! Invariants:
//! - Jobs are written in submission order; a merged write is equivalent to writing its jobs
//!   one after another (a later job's entries replace the earlier ones from their first index).
//! - A job is reported done only after its write is durable (the WAL record synced, and the LMDB
//!   transaction committed when the batch changed the membership).
//! - A failed write is reported and the thread stops: the loop treats it as fatal, so nothing
//!   written after a lost write can ever be acknowledged.
//!
//! In a deterministic simulation (see `crate::blocking`) the writer is a task on the
//! simulation's runtime instead of a thread, writing inline when it is polled; it merges what
//! is queued the same way.

use std::thread::JoinHandle;

use raft::eraftpb::Message;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::storage::{LogStore, PersistBatch};

/// One Ready's worth of writing.
pub(crate) struct WriteJob {
    /// The Ready's number (raft-rs `Ready::number`).
    pub number: u64,
    pub batch: PersistBatch,
    /// Messages that may leave only once this batch is durable.
    pub persisted_messages: Vec<Message>,
}

/// What the writer reports after one transaction.
pub(crate) struct WriteDone {
    /// The highest Ready number now durable (every lower one is too).
    pub number: u64,
    /// How many jobs the transaction covered.
    pub jobs: usize,
    /// The jobs' persisted messages, in submission order.
    pub messages: Vec<Message>,
    pub result: Result<()>,
}

/// The run loop's side of the writer thread.
pub(crate) struct Writer {
    jobs: Option<mpsc::UnboundedSender<WriteJob>>,
    done: Option<mpsc::UnboundedReceiver<WriteDone>>,
    inflight: usize,
    thread: Option<WriterRuns>,
}

/// Where the writer runs.
enum WriterRuns {
    /// Its own thread (always, outside a simulation).
    Thread(JoinHandle<()>),
    /// A task on the simulation's runtime.
    Task(tokio::task::JoinHandle<()>),
}

impl Writer {
    /// A writer whose thread is not started yet: the thread (and its handle on the store) exists
    /// only while the node runs, so a node that is bootstrapped but never run, or has stopped,
    /// leaves its data dir free to open again.
    pub(crate) fn idle() -> Self {
        Writer {
            jobs: None,
            done: None,
            inflight: 0,
            thread: None,
        }
    }

    /// Start the writer thread for `store`.
    pub(crate) fn start<S: LogStore>(
        &mut self,
        store: S,
        metrics: Metrics,
        node_id: u64,
    ) -> Result<()> {
        let (job_tx, mut job_rx) = mpsc::unbounded_channel::<WriteJob>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let thread = if crate::blocking::is_simulated() {
            WriterRuns::Task(tokio::spawn(async move {
                while let Some(first) = job_rx.recv().await {
                    if !write_merged(&store, &metrics, first, &mut job_rx, &done_tx) {
                        return;
                    }
                }
            }))
        } else {
            let thread = std::thread::Builder::new()
                .name(format!("pontoon-writer-{node_id}"))
                .spawn(move || {
                    while let Some(first) = job_rx.blocking_recv() {
                        if !write_merged(&store, &metrics, first, &mut job_rx, &done_tx) {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::Other(format!("cannot start the writer thread: {e}")))?;
            WriterRuns::Thread(thread)
        };
        self.jobs = Some(job_tx);
        self.done = Some(done_rx);
        self.inflight = 0;
        self.thread = Some(thread);
        Ok(())
    }

    /// Jobs submitted and not reported done yet.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight
    }

    /// Queue a job. Never blocks.
    pub(crate) fn submit(&mut self, job: WriteJob) -> Result<()> {
        let sender = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Other("the writer has stopped".into()))?;
        sender
            .send(job)
            .map_err(|_| Error::Other("the writer thread has stopped".into()))?;
        self.inflight += 1;
        Ok(())
    }

    /// The next completion, or `None` when nothing is in flight or the writer is gone.
    pub(crate) async fn next_done(&mut self) -> Option<WriteDone> {
        if self.inflight == 0 {
            return None;
        }
        let done = self.done.as_mut()?.recv().await?;
        self.inflight = self.inflight.saturating_sub(done.jobs);
        Some(done)
    }

    /// Stop the thread after it finished what was queued, and wait for it (so the store's last
    /// handle held by the writer is released when this returns).
    pub(crate) async fn shutdown(&mut self) {
        self.jobs = None;
        match self.thread.take() {
            Some(WriterRuns::Thread(thread)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Some(WriterRuns::Task(task)) => {
                let _ = task.await;
            }
            None => {}
        }
    }
}

impl Drop for Writer {
    /// A simulated writer ends with its run loop, as a writer thread ends with its process:
    /// a crash of a simulated node must not leave its writer holding the store.
    fn drop(&mut self) {
        if let Some(WriterRuns::Task(task)) = &self.thread {
            task.abort();
        }
    }
}

/// Write `first` and every job queued behind it as one transaction, and report it. False when
/// the writer must stop (the write failed, or the run loop is gone).
fn write_merged<S: LogStore>(
    store: &S,
    metrics: &Metrics,
    first: WriteJob,
    jobs: &mut mpsc::UnboundedReceiver<WriteJob>,
    done: &mpsc::UnboundedSender<WriteDone>,
) -> bool {
    let mut number = first.number;
    let mut count = 1;
    let mut messages = first.persisted_messages;
    let mut batch = first.batch;
    // Everything queued meanwhile goes into the same transaction.
    while let Ok(next) = jobs.try_recv() {
        number = next.number;
        count += 1;
        messages.extend(next.persisted_messages);
        batch.merge(next.batch);
    }
    let result = write_batch(store, metrics, batch);
    let failed = result.is_err();
    let report = WriteDone {
        number,
        jobs: count,
        messages,
        result,
    };
    done.send(report).is_ok() && !failed
}

/// Write one batch (one transaction, one fsync) and count it in the metrics; an empty batch
/// writes nothing. Blocks on the disk: call it from the writer thread or the blocking pool.
pub(crate) fn write_batch<S: LogStore>(
    store: &S,
    metrics: &Metrics,
    batch: PersistBatch,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    if !batch.entries.is_empty() {
        metrics.ready_entries.observe(batch.entries.len() as f64);
    }
    let started = std::time::Instant::now();
    let result = store.persist(batch).map_err(Error::from);
    metrics
        .fsync_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.fsyncs.inc();
    result
}
