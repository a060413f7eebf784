//! LazyFS under the nodes' data dirs, for power cuts (`--lazyfs`).
//!
//! Each node's data dir is the mount point of its own LazyFS process, whose bytes land in a root
//! dir beside it. LazyFS keeps written data in its own cache until the application syncs it;
//! `lazyfs::clear-cache` on the node's fault FIFO drops everything not synced, which is what a
//! power cut does to a disk. LazyFS answers `finished::clear-cache` on a second FIFO (the
//! "completed" FIFO, which this runner creates and holds open) once the cache is gone, so the
//! node is restarted only after the cut has really happened.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// How long a mount may take to appear in /proc/mounts (LazyFS allocates its whole cache first).
const MOUNT_LIMIT: Duration = Duration::from_secs(60);
/// How long LazyFS may take to drop a node's cache.
const CLEAR_LIMIT: Duration = Duration::from_secs(20);
/// How long LazyFS may take to exit after its lazy unmount.
const UNMOUNT_LIMIT: Duration = Duration::from_secs(10);

/// One node's LazyFS: mount point (the node's data dir), root, FIFOs, its process.
struct Mount {
    mount: PathBuf,
    root: PathBuf,
    fifo: PathBuf,
    done_fifo: PathBuf,
    config: PathBuf,
    log: PathBuf,
    process: Option<Child>,
    /// Lines LazyFS writes to the completed FIFO, read by a thread of their own.
    done: Option<UnboundedReceiver<String>>,
}

/// The LazyFS mounts of a cluster, one per node (index = node id - 1).
pub struct LazyFs {
    binary: PathBuf,
    mounts: Vec<Mount>,
}

/// The last `n` lines of a text file (for error reports).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether `path` is a mount point in /proc/mounts (octal escapes as the kernel writes them).
fn is_mounted(path: &Path) -> bool {
    let escaped = path
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(escaped.as_str()))
        })
        .unwrap_or(false)
}

impl LazyFs {
    /// Lay out (not yet mount) one LazyFS per data dir; its files go to `dir`.
    pub fn new(binary: PathBuf, data_dirs: &[PathBuf], dir: &Path) -> Result<Self, String> {
        if !binary.is_file() {
            return Err(format!(
                "no LazyFS binary at {}; build it with ../shared/tools/lazyfs/build.sh",
                binary.display()
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mounts = data_dirs
            .iter()
            .enumerate()
            .map(|(i, data_dir)| {
                let name = format!("node-{}", i + 1);
                Mount {
                    mount: data_dir.clone(),
                    root: dir.join(format!("{name}-root")),
                    fifo: dir.join(format!("{name}.fifo")),
                    done_fifo: dir.join(format!("{name}.done.fifo")),
                    config: dir.join(format!("{name}.toml")),
                    log: dir.join(format!("{name}.log")),
                    process: None,
                    done: None,
                }
            })
            .collect();
        Ok(LazyFs { binary, mounts })
    }

    /// Mount node `id`'s data dir and return once the mount is listed in /proc/mounts.
    pub fn mount(&mut self, id: u64) -> Result<(), String> {
        let binary = self.binary.clone();
        let m = &mut self.mounts[(id - 1) as usize];
        for dir in [&m.mount, &m.root] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let config = format!(
            "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n[cache]\napply_eviction=false\n\
             [cache.simple]\ncustom_size=\"1gb\"\nblocks_per_page=1\n[filesystem]\n\
             log_all_operations=false\nlogfile=\"\"\n",
            m.fifo.display(),
            m.done_fifo.display()
        );
        std::fs::write(&m.config, config)
            .map_err(|e| format!("cannot write {}: {e}", m.config.display()))?;
        // LazyFS opens the completed FIFO write-only when it starts, which blocks until there is
        // a reader: create it and hold it open (read-write, so the open itself never blocks).
        if !m.done_fifo.exists() {
            let status = Command::new("mkfifo")
                .arg(&m.done_fifo)
                .status()
                .map_err(|e| format!("mkfifo: {e}"))?;
            if !status.success() {
                return Err(format!("mkfifo {} failed: {status}", m.done_fifo.display()));
            }
        }
        let reader = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&m.done_fifo)
            .map_err(|e| format!("cannot open {}: {e}", m.done_fifo.display()))?;
        let (tx, rx) = unbounded_channel();
        // Ends when the runner exits (the FIFO never sees end-of-file: this process holds a
        // writer end too) or when the receiver is gone.
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        m.done = Some(rx);
        let log =
            File::create(&m.log).map_err(|e| format!("cannot create {}: {e}", m.log.display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", m.log.display()))?;
        let mut child = Command::new(&binary)
            .arg(&m.mount)
            .arg("--config-path")
            .arg(&m.config)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", m.root.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let deadline = Instant::now() + MOUNT_LIMIT;
        loop {
            if is_mounted(&m.mount) {
                m.process = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "LazyFS for {} exited ({status}); its log:\n{}",
                    m.mount.display(),
                    tail(&m.log, 20)
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} not mounted within {MOUNT_LIMIT:?}; LazyFS log:\n{}",
                    m.mount.display(),
                    tail(&m.log, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Power cut of node `id`'s disk: drop every byte LazyFS holds that was not synced, and
    /// return once LazyFS says it is done. The node must not be running.
    pub async fn clear_cache(&mut self, id: u64) -> Result<(), String> {
        let m = &mut self.mounts[(id - 1) as usize];
        if let Some(child) = m.process.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "LazyFS of node {id} exited ({status}); its log:\n{}",
                    tail(&m.log, 20)
                ));
            }
        }
        let done = m
            .done
            .as_mut()
            .ok_or_else(|| format!("node {id}'s data dir is not mounted"))?;
        while done.try_recv().is_ok() {}
        // Read-write, so the open never blocks; LazyFS reads one command per write and drops
        // its last byte (the newline).
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&m.fifo)
            .and_then(|mut f| f.write_all(b"lazyfs::clear-cache\n"))
            .map_err(|e| format!("cannot write to {}: {e}", m.fifo.display()))?;
        let deadline = tokio::time::Instant::now() + CLEAR_LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, done.recv()).await {
                Ok(Some(line)) if line.trim() == "finished::clear-cache" => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(format!("LazyFS of node {id}: completed FIFO closed")),
                Err(_) => {
                    return Err(format!(
                        "LazyFS of node {id} did not confirm the cache clear within \
                         {CLEAR_LIMIT:?}; its log:\n{}",
                        tail(&m.log, 20)
                    ))
                }
            }
        }
    }

    /// Lazily unmount every mount and wait (bounded) for its LazyFS to exit; kill it if it
    /// does not. The nodes must be stopped first. Safe to call more than once.
    pub fn unmount_all(&mut self) {
        for m in &mut self.mounts {
            let Some(mut child) = m.process.take() else {
                continue;
            };
            let unmounted = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&m.mount)
                .stdin(Stdio::null())
                .status();
            if !matches!(&unmounted, Ok(s) if s.success()) {
                eprintln!("fusermount3 -u -z {}: {unmounted:?}", m.mount.display());
            }
            let deadline = Instant::now() + UNMOUNT_LIMIT;
            while !matches!(child.try_wait(), Ok(Some(_)) | Err(_)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!(
                    "LazyFS for {} still runs {UNMOUNT_LIMIT:?} after its unmount: killed",
                    m.mount.display()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
            m.done = None;
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.unmount_all();
    }
}
