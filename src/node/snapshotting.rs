//! Snapshots on the run loop: when to take one, taking one, and installing the leader's.
//!
//! # When a snapshot is taken
//!
//! Serialising the state costs time proportional to the whole state, while a snapshot exists to
//! bound the log, which grows with what was written. Taking one after every `snapshot_threshold`
//! entries alone makes a growing state ever more expensive to keep: at a million keys each
//! snapshot serialises all of them again for a few thousand new ones. So an automatic snapshot
//! waits for two things (see [`SnapshotPolicy::is_due`]):
//!
//! 1. `snapshot_threshold` entries applied since the last snapshot, and
//! 2. those entries' bytes adding up to `snapshot_log_ratio` times the last snapshot's size.
//!
//! The work spent on snapshots then stays proportional to the bytes written, and the log holds at
//! most about `max(snapshot_threshold entries, snapshot_log_ratio x snapshot size)` plus
//! `compaction_margin`. `snapshot_interval` and explicit requests (`make_snapshot`) ignore the
//! byte condition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::eraftpb::{Snapshot, SnapshotMetadata};
use tokio::sync::oneshot;

use super::run_loop::RunLoop;
use super::session_table::SessionTable;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state_machine::{AbstractStateMachine, FrozenState, SnapshotSink, SnapshotSource};
use crate::storage::{LogStore, SnapshotEnvelope, StorageError};

/// What the automatic snapshot decision needs to remember between snapshots.
#[derive(Debug)]
pub(crate) struct SnapshotPolicy {
    /// When the last snapshot was taken or installed (or the node started).
    last_at: tokio::time::Instant,
    /// Bytes of entry data applied since then.
    applied_bytes: u64,
    /// Size of the state machine's part of the last snapshot; 0 until this process took or
    /// installed one, so the first snapshot after a restart comes by entry count alone. Shared
    /// because a frozen state's snapshot learns its size on a blocking thread, after the loop
    /// moved on.
    last_bytes: Arc<AtomicU64>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            last_at: tokio::time::Instant::now(),
            applied_bytes: 0,
            last_bytes: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl SnapshotPolicy {
    /// An entry of `bytes` data was applied.
    pub(crate) fn on_applied(&mut self, bytes: usize) {
        self.applied_bytes = self.applied_bytes.saturating_add(bytes as u64);
    }

    /// A snapshot whose state machine data is `bytes` long was taken or installed.
    pub(crate) fn on_taken(&mut self, bytes: u64) {
        self.on_started();
        self.last_bytes.store(bytes, Ordering::Relaxed);
    }

    /// A snapshot of the state as of now is being written; its size arrives through
    /// `size_report` when it is done.
    pub(crate) fn on_started(&mut self) {
        self.last_at = tokio::time::Instant::now();
        self.applied_bytes = 0;
    }

    /// Where a snapshot written off the loop reports its size (see `on_started`).
    pub(crate) fn size_report(&self) -> Arc<AtomicU64> {
        self.last_bytes.clone()
    }

    /// Whether to snapshot now, `entries_since` entries after the last snapshot's index.
    pub(crate) fn is_due(&self, config: &Config, entries_since: u64) -> bool {
        if entries_since == 0 {
            return false;
        }
        let timed_out = config
            .snapshot_interval
            .is_some_and(|every| self.last_at.elapsed() >= every);
        let last_bytes = self.last_bytes.load(Ordering::Relaxed);
        let log_grown = self.applied_bytes as f64 >= config.snapshot_log_ratio * last_bytes as f64;
        timed_out || (entries_since >= config.snapshot_threshold && log_grown)
    }
}

/// Restore `fsm` from `source`, then check that the bytes it read are the ones verified before
/// (see `SnapshotSource`). A mismatch is a `Corrupt` storage error, which stops the node: the
/// state just restored is never used.
pub(crate) async fn restore_checked<F: AbstractStateMachine>(
    fsm: &mut F,
    source: &mut SnapshotSource,
) -> Result<()> {
    let restored = fsm.restore_from(source).await;
    source.finish().map_err(|e| StorageError::Corrupt {
        what: "snapshot file".into(),
        reason: e.to_string(),
    })?;
    restored
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    /// Install a snapshot from the leader. Its data is usually a reference to the file the
    /// transport received it into (see `storage::snapshot_file_ref`): the storage thread checks
    /// that file and moves it into the store, and the state machine then reads it through
    /// `restore_from`, so the snapshot is never held in memory whole.
    pub(crate) async fn install_snapshot(&mut self, mut snapshot: Snapshot) -> Result<()> {
        // A snapshot of our own still being stored would otherwise land after this one and
        // name an older state as the latest.
        if let Some(task) = self.snapshot_task.take() {
            if let Ok(Some(e)) = task.await {
                return Err(e);
            }
        }
        let meta = snapshot.take_metadata();
        let index = meta.index;
        let data = snapshot.take_data();
        let file = crate::storage::snapshot_file_ref(&data);
        let store = self.store.clone();
        let (envelope, mut source) = crate::blocking::run_blocking(move || -> Result<_> {
            match &file {
                Some(path) => {
                    let installed = (|| -> Result<_> {
                        // Checked again here: the file is what the store will keep.
                        // The source's open file stays readable after the store renames it.
                        let fs = store.file_system();
                        let (header, source) = SnapshotEnvelope::open_checked(&*fs, path, &meta)?;
                        store.install_snapshot_file(&meta, path, &header.peers)?;
                        Ok((header, source))
                    })();
                    if installed.is_err() {
                        let _ = store.file_system().remove_file(path);
                    }
                    installed
                }
                None => {
                    let bytes = Vec::from(data);
                    SnapshotEnvelope::verify(&bytes, &meta)?;
                    let peers = SnapshotEnvelope::decode_header(&bytes)?.peers;
                    store.install_snapshot(&meta, &bytes, &peers)?;
                    let mut envelope = SnapshotEnvelope::decode_owned(bytes)?;
                    let user_data = std::mem::take(&mut envelope.user_data);
                    Ok((envelope, SnapshotSource::from_bytes(user_data)))
                }
            }
        })
        .await??;
        let user_data_len = source.len();
        // Decoded before anything changes: a table that cannot be read stops the node with the
        // state machine untouched.
        let sessions = SessionTable::decode(&envelope.sessions)?;
        // Before any entry after the snapshot is applied (which would call this node's waiters
        // at or below it "overwritten").
        self.waiters.on_snapshot_installed(index);
        restore_checked(&mut self.fsm, &mut source).await?;
        self.snapshot_policy.on_taken(user_data_len);
        self.max_node_id = envelope.max_node_id;
        self.sessions = sessions;
        self.metrics.sessions_open.set(self.sessions.len() as i64);
        self.peers.extend_removed(&envelope.removed);
        self.peers.replace(envelope.peers);
        self.prune_redirects();
        self.sync_transport();
        self.applied = index;
        self.metrics.snapshots.inc();
        slog::info!(self.logger, "installed snapshot from leader"; "index" => index);
        Ok(())
    }

    /// Snapshot the state machine at the applied index, then store it and compact the log below
    /// it (keeping `compaction_margin` entries for followers slightly behind).
    ///
    /// The state machine is first asked to `freeze()` its state: a frozen copy is written on a
    /// blocking thread and nothing of the state's size runs on the loop. Otherwise the user's
    /// `snapshot_to()` runs on the loop (it must see the state exactly at `applied`). Either way
    /// the bytes stream to a storage thread that writes and checksums the file.
    /// Syncing, the LMDB write and compaction then finish in the background, so a large state
    /// does not stall heartbeats; `reply` (if any) is answered when the snapshot is stored.
    /// One snapshot at a time: while one is being stored, another request gets `NotReady`.
    pub(crate) async fn start_snapshot(&mut self, reply: Option<oneshot::Sender<Result<u64>>>) {
        let answer = |reply: Option<oneshot::Sender<Result<u64>>>, r: Result<u64>| {
            if let Some(reply) = reply {
                let _ = reply.send(r);
            }
        };
        if self
            .snapshot_task
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            answer(
                reply,
                Err(Error::NotReady("a snapshot is being stored".into())),
            );
            return;
        }
        let index = self.applied;
        if index == 0 {
            answer(
                reply,
                Err(Error::InvalidRequest(
                    "nothing applied yet, nothing to snapshot".into(),
                )),
            );
            return;
        }
        let term = match self.raw.raft.raft_log.term(index) {
            Ok(t) => t,
            Err(e) => return answer(reply, Err(e.into())),
        };
        let conf_state = self.raw.raft.prs().conf().to_conf_state();
        let envelope = SnapshotEnvelope {
            index,
            term,
            peers: self.peers.to_peers(),
            max_node_id: self.max_node_id,
            removed: self.peers.removed(),
            sessions: match self.sessions.encode() {
                Ok(bytes) => bytes,
                Err(e) => return answer(reply, Err(e)),
            },
            ..Default::default()
        }
        .with_conf_state(&conf_state);
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        // Keep exactly `compaction_margin` entries at or below the snapshot index.
        let compact_to = (index + 1).saturating_sub(self.config.compaction_margin);
        let store = self.store.clone();
        // A storage thread writes the file while the state machine serialises into the sink, so
        // the state is never held twice in memory.
        let (sink, chunks) = SnapshotSink::channel();
        let store_file = move || -> Result<u64> {
            let mut chunks = Some(chunks);
            let mut size = 0;
            store.save_snapshot_with(&meta, &mut |file| {
                let chunks = chunks.take().ok_or_else(|| {
                    StorageError::InvalidOperation("snapshot data requested twice".into())
                })?;
                size = envelope.write_streamed(chunks, file)?;
                Ok(())
            })?;
            if compact_to > 1 {
                store.compact(compact_to)?;
            }
            Ok(size)
        };
        let metrics = self.metrics.clone();
        let logger = self.logger.clone();
        // A failed write or sync of the store stops the node (see `stops_the_node`); the
        // returned error is the loop's to stop with.
        let conclude = move |produced: Result<u64>, stored: Result<u64>| -> Option<Error> {
            let (stored, fatal) = match stored {
                Err(e) if stops_the_node(&e) => (
                    Err(Error::Other(format!("snapshot not stored: {e}"))),
                    Some(e),
                ),
                other => (other, None),
            };
            let result = match (produced, stored) {
                (Ok(_), Ok(size)) => {
                    metrics.snapshots.inc();
                    metrics.snapshot_bytes.observe(size as f64);
                    slog::info!(logger, "snapshot taken"; "index" => index, "term" => term, "bytes" => size, "compacted_below" => compact_to);
                    Ok(index)
                }
                (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
                // One side failing stops the other; say both, the first cause is among them.
                (Err(made), Err(stored)) => Err(Error::Other(format!(
                    "snapshot not taken: {made} (storage: {stored})"
                ))),
            };
            if let Err(e) = &result {
                slog::error!(logger, "snapshot not taken; the log is not compacted"; "error" => %e);
            }
            answer(reply, result);
            fatal
        };
        if crate::blocking::is_simulated() {
            // A simulation runs it all inline, in this order: the state machine's bytes first
            // (they fit the sink's queue: a simulated state is small), then the file.
            let produced = match self.fsm.freeze() {
                Some(frozen) => {
                    self.snapshot_policy.on_started();
                    let bytes = write_frozen(frozen, sink);
                    if let Ok(bytes) = &bytes {
                        self.snapshot_policy
                            .size_report()
                            .store(*bytes, Ordering::Relaxed);
                    }
                    bytes
                }
                None => self.snapshot_on_loop(sink).await,
            };
            if let Some(e) = conclude(produced, store_file()) {
                self.fatal.get_or_insert(e);
            }
            return;
        }
        let stored = tokio::task::spawn_blocking(store_file);
        // The state machine's bytes: written off the loop from a frozen copy when it can give
        // one, else serialised here (the loop waits, so the state cannot move meanwhile).
        let produced = match self.fsm.freeze() {
            Some(frozen) => {
                self.snapshot_policy.on_started();
                let size_report = self.snapshot_policy.size_report();
                Produced::Frozen(tokio::task::spawn_blocking(move || {
                    let bytes = write_frozen(frozen, sink)?;
                    size_report.store(bytes, Ordering::Relaxed);
                    Ok(bytes)
                }))
            }
            None => Produced::OnLoop(self.snapshot_on_loop(sink).await),
        };
        self.snapshot_task = Some(tokio::spawn(async move {
            let produced = match produced {
                Produced::OnLoop(produced) => produced,
                Produced::Frozen(task) => task.await.unwrap_or_else(|e| {
                    Err(Error::StateMachine(format!(
                        "writing the frozen state failed: {e}"
                    )))
                }),
            };
            let stored = match stored.await {
                Ok(r) => r,
                Err(e) => Err(Error::Other(format!("storage thread failed: {e}"))),
            };
            conclude(produced, stored)
        }));
    }

    /// A snapshot stored in the background that failed in a way that stops the node: take its
    /// error (the loop stops with it). Called every turn; never waits.
    pub(crate) async fn take_snapshot_failure(&mut self) -> Option<Error> {
        if !self.snapshot_task.as_ref().is_some_and(|t| t.is_finished()) {
            return None;
        }
        let task = self.snapshot_task.take()?;
        task.await.ok().flatten()
    }
}

/// Whether a failure to store a snapshot stops the node: a failed write or sync of the disk (a
/// sync is never retried, and the disk may have dropped what it said it wrote) or damage found,
/// as for the log. A refusal (an older snapshot, a state machine that stopped writing) does not.
fn stops_the_node(e: &Error) -> bool {
    matches!(
        e,
        Error::Storage(StorageError::Io(_) | StorageError::Lmdb(_) | StorageError::Corrupt { .. })
    )
}

impl<S: LogStore, F: AbstractStateMachine> RunLoop<S, F> {
    /// Serialise the state machine into `sink` on the loop (`snapshot_to`); returns its byte
    /// count.
    async fn snapshot_on_loop(&mut self, mut sink: SnapshotSink) -> Result<u64> {
        let written = self.fsm.snapshot_to(&mut sink).await;
        let produced = finish_sink(written, sink);
        if let Ok(user_bytes) = &produced {
            self.snapshot_policy.on_taken(*user_bytes);
        }
        produced
    }
}

/// Where the state machine's snapshot bytes come from (see `start_snapshot`).
enum Produced {
    /// `snapshot_to` already ran on the loop; its outcome.
    OnLoop(Result<u64>),
    /// A frozen state being written on a blocking thread.
    Frozen(tokio::task::JoinHandle<Result<u64>>),
}

/// Write a frozen state into `sink` and finish it (see `finish_sink`).
fn write_frozen(frozen: Box<dyn FrozenState>, mut sink: SnapshotSink) -> Result<u64> {
    let written = frozen.write_snapshot(&mut sink);
    finish_sink(written, sink)
}

/// Finish `sink` once the state machine wrote everything into it (`written` is `Ok`); returns
/// the state machine's byte count. On an error the unfinished sink is dropped, which tells the
/// storage thread to discard the file.
fn finish_sink(written: Result<()>, sink: SnapshotSink) -> Result<u64> {
    written?;
    sink.finish()
        .map_err(|e| Error::StateMachine(format!("writing the snapshot: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold: u64, ratio: f64) -> Config {
        Config {
            snapshot_threshold: threshold,
            snapshot_log_ratio: ratio,
            ..Config::default()
        }
    }

    /// A frozen state that writes `bytes`, or fails after writing them.
    struct Frozen {
        bytes: Vec<u8>,
        fail: bool,
    }

    impl FrozenState for Frozen {
        fn write_snapshot(self: Box<Self>, out: &mut SnapshotSink) -> Result<()> {
            std::io::Write::write_all(out, &self.bytes).map_err(|e| Error::Other(e.to_string()))?;
            if self.fail {
                return Err(Error::StateMachine("serialiser failed".into()));
            }
            Ok(())
        }
    }

    /// What the storage side received: the bytes, and whether the sink was finished.
    fn received(
        rx: std::sync::mpsc::Receiver<crate::state_machine::SnapshotChunk>,
    ) -> (Vec<u8>, bool) {
        let mut bytes = Vec::new();
        let mut ended = false;
        for chunk in rx.iter() {
            match chunk {
                crate::state_machine::SnapshotChunk::Data(d) => bytes.extend_from_slice(&d),
                crate::state_machine::SnapshotChunk::End => ended = true,
            }
        }
        (bytes, ended)
    }

    #[test]
    fn a_frozen_state_written_in_full_finishes_the_sink_with_its_length() {
        let (sink, rx) = SnapshotSink::channel();
        let state = Box::new(Frozen {
            bytes: b"frozen state".to_vec(),
            fail: false,
        });
        let writer = std::thread::spawn(move || write_frozen(state, sink));
        let (bytes, ended) = received(rx);
        assert_eq!(writer.join().expect("thread").expect("written"), 12);
        assert_eq!(bytes, b"frozen state");
        assert!(ended, "a finished snapshot is marked complete");
    }

    #[test]
    fn a_frozen_state_that_fails_leaves_the_sink_unfinished_so_the_file_is_discarded() {
        let (sink, rx) = SnapshotSink::channel();
        let state = Box::new(Frozen {
            bytes: vec![7; 3 << 20],
            fail: true,
        });
        let writer = std::thread::spawn(move || write_frozen(state, sink));
        let (_, ended) = received(rx);
        let outcome = writer.join().expect("thread");
        assert!(
            matches!(outcome, Err(Error::StateMachine(_))),
            "{outcome:?}"
        );
        assert!(
            !ended,
            "the storage side must not take a partial snapshot as complete"
        );
    }

    #[test]
    fn a_size_reported_off_the_loop_is_what_the_byte_condition_compares_against() {
        let c = config(10, 1.0);
        let mut policy = SnapshotPolicy::default();
        policy.on_started();
        policy.size_report().store(1_000, Ordering::Relaxed);
        policy.on_applied(999);
        assert!(!policy.is_due(&c, 10));
        policy.on_applied(1);
        assert!(policy.is_due(&c, 10));
    }

    #[test]
    fn nothing_applied_is_never_due() {
        let policy = SnapshotPolicy::default();
        let mut c = config(1, 0.0);
        c.snapshot_interval = Some(std::time::Duration::ZERO);
        assert!(!policy.is_due(&c, 0));
    }

    #[test]
    fn below_the_entry_threshold_is_not_due_whatever_the_bytes() {
        let mut policy = SnapshotPolicy::default();
        policy.on_applied(1 << 30);
        assert!(!policy.is_due(&config(100, 1.0), 99));
        assert!(policy.is_due(&config(100, 1.0), 100));
    }

    #[test]
    fn a_large_state_waits_until_the_log_written_since_matches_its_size() {
        let mut policy = SnapshotPolicy::default();
        policy.on_taken(1_000_000);
        let c = config(100, 1.0);
        for _ in 0..999 {
            policy.on_applied(1_000);
        }
        assert!(
            !policy.is_due(&c, 999),
            "999 kB of log after a 1 MB snapshot"
        );
        policy.on_applied(1_000);
        assert!(policy.is_due(&c, 1_000));
        // Half the ratio, half the log.
        let mut policy = SnapshotPolicy::default();
        policy.on_taken(1_000_000);
        policy.on_applied(500_000);
        assert!(policy.is_due(&config(100, 0.5), 500));
    }

    #[test]
    fn ratio_zero_snapshots_by_entry_count_alone() {
        let mut policy = SnapshotPolicy::default();
        policy.on_taken(u64::MAX / 2);
        assert!(policy.is_due(&config(100, 0.0), 100));
    }

    #[test]
    fn taking_a_snapshot_starts_the_byte_count_again() {
        let mut policy = SnapshotPolicy::default();
        policy.on_applied(5_000);
        policy.on_taken(4_000);
        assert!(!policy.is_due(&config(1, 1.0), 10));
        policy.on_applied(4_000);
        assert!(policy.is_due(&config(1, 1.0), 10));
    }

    #[test]
    fn the_interval_snapshots_a_large_state_regardless_of_bytes() {
        let mut policy = SnapshotPolicy::default();
        policy.on_taken(1 << 40);
        let mut c = config(1_000_000, 1.0);
        c.snapshot_interval = Some(std::time::Duration::ZERO);
        assert!(policy.is_due(&c, 1));
    }
}
