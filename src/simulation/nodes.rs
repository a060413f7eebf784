//! Simulated nodes: the real run loop and storage of one node as a task on the simulation's
//! runtime, which the nemesis can crash, restart on the same data dir, and pause (the task is
//! not polled at all, as a stopped process; its messages wait in its mailbox).
//!
//! A crash is a power cut: the task and everything it owns is dropped at once (the process
//! loses its memory), then the node's simulated disk (`SimDisk`, under the WAL and the snapshot
//! files) keeps only what was synced and, drawn from the seed, part of what was not. LMDB runs
//! on real files, which keep every commit (LMDB syncs each one).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rand::Rng;
use slog::Logger;
use tokio::task::JoinHandle;

use super::kv::SimKv;
use super::network::{sim_addr, SimNetwork};
use crate::cluster::{prepare_node, PreparedNode};
use crate::config::{Config, Peers};
use crate::error::{Error, Result};
use crate::node::RaftNode;
use crate::storage::fs::{CrashReport, FileSystem, SimDisk, SimFaults};
use crate::storage::StorageOptions;

/// Whether a task may be polled: a paused node's task is not.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, Option<Waker>)>,
}

impl Gate {
    fn set_paused(&self, paused: bool) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 = paused;
            if paused {
                None
            } else {
                state.1.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A future that is not polled while its gate is closed.
struct Pausable<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
}

impl<F: Future> Future for Pausable<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.0 {
                state.1 = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.inner.as_mut().poll(cx)
    }
}

/// A started node.
struct Running {
    node: RaftNode,
    task: JoinHandle<Result<()>>,
    gate: Arc<Gate>,
    paused: bool,
}

/// How a node's process ended on its own (not crashed by the nemesis).
pub enum Ended {
    /// Its run loop returned this.
    Returned(Result<()>),
    /// It panicked.
    Panicked(String),
}

/// One simulated node and its data dir, across crashes and restarts.
pub struct SimNode {
    /// The node id.
    pub id: u64,
    dir: PathBuf,
    /// Its disk for the WAL and the snapshot files; it outlives the process.
    disk: SimDisk,
    /// Its WAL's segment size (`SimOptions::wal_segment_bytes`).
    segment_bytes: u64,
    running: Option<Running>,
    /// It knows it was removed: never started again.
    pub removed: bool,
    /// How often it was started.
    pub starts: u32,
    /// Its disk failed calls or returned bad reads since the machine last lost power (an injected
    /// disk fault): its page cache may hold writes whose sync failed, which no later sync will
    /// write, so a node that stops on the fault must not restart before the machine reboots.
    pub disk_fault: bool,
}

impl SimNode {
    /// A node that has not started yet, keeping its data in `dir` (LMDB) and on a simulated
    /// disk drawn from `disk_seed` (the rest).
    pub fn new(id: u64, dir: PathBuf, disk_seed: u64, segment_bytes: u64) -> Self {
        SimNode {
            id,
            dir,
            disk: SimDisk::new(disk_seed),
            segment_bytes,
            running: None,
            removed: false,
            starts: 0,
            disk_fault: false,
        }
    }

    /// Make its disk fail calls or return bad reads (`SimFaults::default()` heals it).
    pub fn set_disk_faults(&mut self, faults: SimFaults) {
        self.disk_fault |= faults != SimFaults::default();
        self.disk.set_faults(faults);
    }

    /// The machine of a node that stopped on a disk error reboots: what its disk did not sync
    /// may be gone (a failed sync may have dropped it), and the disk works again.
    pub fn reboot_after_disk_error(&mut self) -> CrashReport {
        self.disk.set_faults(SimFaults::default());
        // The power cut ends the disk fault too (the machine comes back healthy), so the restart
        // is not refused by the fault.
        self.disk.set_faults(SimFaults::default());
        self.disk_fault = false;
        self.disk.crash()
    }

    /// Its handle, while it runs.
    pub fn handle(&self) -> Option<&RaftNode> {
        self.running.as_ref().map(|r| &r.node)
    }

    /// True while its process exists (paused or not).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// True while it is paused.
    pub fn is_paused(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.paused)
    }

    /// Start its process over its data dir: a new static member with `initial_peers` the first
    /// time, a joining node without. Its election timeout is drawn here, fixed for this start
    /// (raft-rs would otherwise draw it from an unseeded generator).
    pub async fn start(
        &mut self,
        base: &Config,
        initial_peers: Option<Peers>,
        net: &SimNetwork,
        rng: &mut impl Rng,
        logger: &Logger,
    ) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut config = base.clone();
        config.data_dir = self.dir.clone();
        config.initial_peers = initial_peers;
        let election = rng.random_range(base.raft.election_tick..base.raft.election_tick * 2);
        config.raft.election_tick = election;
        config.raft.min_election_tick = election;
        config.raft.max_election_tick = election + 1;
        config.validate(self.id)?;
        let logger = logger.new(slog::o!("node" => self.id));
        let fs: Arc<dyn FileSystem> = Arc::new(self.disk.clone());
        net.starting(self.id, self.dir.clone(), fs.clone());
        let id = self.id;
        // A crashed predecessor's writer task may still hold the storage for a moment (its
        // abort lands when the runtime next polls it): retry the open a few times.
        let mut attempts = 0;
        let prepared = loop {
            let transport_net = net.clone();
            match prepare_node(
                id,
                sim_addr(id),
                SimKv::default(),
                config.clone(),
                logger.clone(),
                StorageOptions {
                    fs: fs.clone(),
                    // Small segments: preallocation stays small on the in-memory disk, and the
                    // WAL rolls over and drops segments often.
                    segment_bytes: self.segment_bytes,
                    ..StorageOptions::default()
                },
                move |_| transport_net.transport(id),
            )
            .await
            {
                Ok(prepared) => break prepared,
                Err(e) if attempts < 5 && is_env_busy(&e) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let PreparedNode {
            node,
            run_loop,
            stopped_tx,
            started_tx,
            ..
        } = prepared;
        net.attach(id, node.clone());
        let gate = Arc::new(Gate::default());
        let _ = started_tx.send(true);
        let task = tokio::spawn(Pausable {
            inner: Box::pin(async move {
                let outcome = run_loop.run().await;
                let _ = stopped_tx.send(true);
                outcome
            }),
            gate: gate.clone(),
        });
        self.running = Some(Running {
            node,
            task,
            gate,
            paused: false,
        });
        self.starts += 1;
        Ok(())
    }

    /// Cut its power: the run loop, its writer and everything they hold are dropped where
    /// they stand, and its disk keeps what a power cut may keep.
    pub async fn crash(&mut self, net: &SimNetwork) -> CrashReport {
        let Some(running) = self.running.take() else {
            return CrashReport::default();
        };
        net.detach(self.id);
        running.gate.set_paused(false);
        running.task.abort();
        let _ = running.task.await;
        // Let the aborted writer task be dropped too (it holds a storage handle).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        // The power cut ends the disk fault too (the machine comes back healthy), so the restart
        // is not refused by the fault.
        self.disk.set_faults(SimFaults::default());
        self.disk_fault = false;
        self.disk.crash()
    }

    /// Stop it gracefully (`quit`) and return how its run loop ended.
    pub async fn quit(&mut self, net: &SimNetwork) -> Option<Ended> {
        let running = self.running.take()?;
        running.gate.set_paused(false);
        let _ = running.node.quit().await;
        let ended = collect(running.task).await;
        net.detach(self.id);
        Some(ended)
    }

    /// Pause or resume its process.
    pub fn set_paused(&mut self, paused: bool) {
        if let Some(running) = &mut self.running {
            running.paused = paused;
            running.gate.set_paused(paused);
        }
    }

    /// If its process ended on its own (removed, or a fatal error), how; it is then no longer
    /// running.
    pub async fn take_ended(&mut self, net: &SimNetwork) -> Option<Ended> {
        if !self.running.as_ref()?.task.is_finished() {
            return None;
        }
        let running = self.running.take()?;
        net.detach(self.id);
        Some(collect(running.task).await)
    }
}

async fn collect(task: JoinHandle<Result<()>>) -> Ended {
    match task.await {
        Ok(outcome) => Ended::Returned(outcome),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Ended::Panicked(text)
        }
        Err(e) => Ended::Returned(Err(Error::Other(format!("task ended: {e}")))),
    }
}

/// Whether opening storage failed because this process still has the env open.
fn is_env_busy(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("already") && text.contains("open")
}
