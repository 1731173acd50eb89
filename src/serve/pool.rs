//! The warm sandboxes: one [`Sandbox`] per (dataset content hash, worker
//! memory limit), started on first use or ahead of time, restarted when its
//! zygote died, evicted when it has no session and has been idle past the
//! idle timeout, or — least recently used first — when starting another
//! would pass the memory budget.
//!
//! Memory is what the kernel charges: each zygote's cgroup usage (imports,
//! loaded frame, page cache it read) plus each live worker's own cgroup
//! usage (the sessions module adds those). Without cgroups the figures are
//! 0 and the budget does not bind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::sandbox::{Image, Limits, Sandbox, SandboxOptions};

/// Which sandbox serves a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// sha256 of the CSV's bytes, 16 hex digits (`pipeline::dataset_hash`).
    pub hash: String,
    /// Per-worker memory limit (a cgroup setting of the whole sandbox).
    pub memory_bytes: u64,
}

/// What every sandbox of the pool is started with.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub image: Image,
    /// Base limits; `cell_timeout` is the server's maximum (a request may
    /// ask for less, never more).
    pub limits: Limits,
    pub allow_degraded: bool,
    pub spare_workers: usize,
    pub memory_budget: u64,
    pub idle_timeout: Duration,
}

/// One dataset's place in the pool.
pub struct Slot {
    pub key: PoolKey,
    /// What the client named: a slug or a path.
    pub label: String,
    pub csv: PathBuf,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    /// Cheap copy of the live sandbox for readers that must not wait for a start.
    current: Mutex<Option<Sandbox>>,
    last_used: super::LastUsed,
    /// Live sessions on this sandbox (it is never evicted while > 0).
    pub sessions: AtomicUsize,
    starts: AtomicU64,
}

impl Slot {
    fn current(&self) -> Option<Sandbox> {
        self.current.lock().ok().and_then(|c| c.clone())
    }
    /// What the live zygote loaded (rows, columns, separator…).
    pub fn zygote(&self) -> Option<crate::sandbox::protocol::ZygoteReady> {
        self.current().map(|s| s.zygote().clone())
    }
    /// Bytes charged to the zygote's cgroup (0 when not running or unknown).
    pub fn zygote_memory(&self) -> u64 {
        self.current()
            .and_then(|s| s.zygote_cgroup_memory())
            .unwrap_or(0)
    }
}

/// Why no sandbox could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "the memory budget ({budget} MiB) is used ({used} MiB) by sandboxes with live sessions"
    )]
    Budget { budget: u64, used: u64 },
    #[error("starting the sandbox for {label}: {source}")]
    Start {
        label: String,
        #[source]
        source: Box<crate::sandbox::SandboxError>,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A sandbox's line in `/v1/health`.
#[derive(Debug, Serialize)]
pub struct SlotReport {
    pub dataset: String,
    pub hash: String,
    pub worker_memory_bytes: u64,
    pub alive: bool,
    pub sessions: usize,
    pub zygote_memory_bytes: u64,
    pub idle_ms: u64,
    pub starts: u64,
    pub zygote_host_pid: Option<u32>,
}

pub struct Pool {
    settings: PoolSettings,
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
    /// Content hashes by (path, size, mtime, inode): a large CSV is hashed once.
    hashes: Mutex<HashMap<PathBuf, (u64, SystemTime, u64, String)>>,
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Pool {
        Pool {
            settings,
            slots: Mutex::new(HashMap::new()),
            hashes: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The content hash of `csv` (cached while its size, mtime and inode stay).
    pub async fn hash_of(&self, csv: &Path) -> Result<String, PoolError> {
        use std::os::unix::fs::MetadataExt;
        let read = |source| PoolError::Read {
            path: csv.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(csv).map_err(read)?;
        let stamp = (meta.len(), meta.modified().map_err(read)?, meta.ino());
        if let Some((len, mtime, ino, hash)) =
            self.hashes.lock().ok().and_then(|h| h.get(csv).cloned())
        {
            if (len, mtime, ino) == stamp {
                return Ok(hash);
            }
        }
        let owned = csv.to_path_buf();
        let hash = tokio::task::spawn_blocking(move || crate::pipeline::dataset_hash(&owned))
            .await
            .map_err(|e| read(std::io::Error::other(e.to_string())))?
            .map_err(read)?;
        if let Ok(mut h) = self.hashes.lock() {
            h.insert(csv.to_path_buf(), (stamp.0, stamp.1, stamp.2, hash.clone()));
        }
        Ok(hash)
    }

    /// The live sandbox for `key`, started (or restarted) if needed. The
    /// slot's session count is raised before returning, so the sandbox
    /// cannot be evicted between this call and the session's worker.
    pub async fn checkout(
        &self,
        key: PoolKey,
        label: &str,
        csv: &Path,
        extra_memory: &(dyn Fn() -> u64 + Send + Sync),
    ) -> Result<(Arc<Slot>, Sandbox), PoolError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        key: key.clone(),
                        label: label.to_string(),
                        csv: csv.to_path_buf(),
                        sandbox: tokio::sync::Mutex::new(None),
                        current: Mutex::new(None),
                        last_used: super::LastUsed::now(),
                        sessions: AtomicUsize::new(0),
                        starts: AtomicU64::new(0),
                    })
                })
                .clone()
        };
        slot.sessions.fetch_add(1, Ordering::AcqRel);
        slot.last_used.touch();
        match self.live_sandbox(&slot, extra_memory).await {
            Ok(sb) => Ok((slot, sb)),
            Err(e) => {
                slot.sessions.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Give back what [`checkout`](Self::checkout) took.
    pub fn release(&self, slot: &Slot) {
        slot.sessions.fetch_sub(1, Ordering::AcqRel);
        slot.last_used.touch();
    }

    async fn live_sandbox(
        &self,
        slot: &Slot,
        extra_memory: &(dyn Fn() -> u64 + Send + Sync),
    ) -> Result<Sandbox, PoolError> {
        let mut guard = slot.sandbox.lock().await;
        if let Some(sb) = guard.as_ref() {
            if sb.is_alive() {
                return Ok(sb.clone());
            }
            let reason = sb.gone_reason().unwrap_or_default();
            eprintln!(
                "csv-agent serve: the sandbox of {} died ({reason}); restarting it",
                slot.label
            );
        }
        if let Some(dead) = guard.take() {
            if let Ok(mut c) = slot.current.lock() {
                *c = None;
            }
            tokio::spawn(dead.shutdown());
        }
        self.make_room(slot, extra_memory).await?;
        let mut opts =
            SandboxOptions::new(&slot.csv, self.settings.image.clone()).map_err(|source| {
                PoolError::Start {
                    label: slot.label.clone(),
                    source: Box::new(source),
                }
            })?;
        opts.limits = Limits {
            memory_bytes: slot.key.memory_bytes,
            zygote_memory_bytes: self
                .settings
                .limits
                .zygote_memory_bytes
                .max(slot.key.memory_bytes),
            ..self.settings.limits.clone()
        };
        opts.allow_degraded = self.settings.allow_degraded;
        opts.spare_workers = self.settings.spare_workers;
        let sb = Sandbox::start(opts)
            .await
            .map_err(|source| PoolError::Start {
                label: slot.label.clone(),
                source: Box::new(source),
            })?;
        slot.starts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = slot.current.lock() {
            *c = Some(sb.clone());
        }
        *guard = Some(sb.clone());
        Ok(sb)
    }

    /// Before a start: while the pool uses more than the budget, stop the
    /// least recently used sandbox that has no session. `extra_memory`
    /// measures what live workers use (the sessions module's; only called
    /// here, when a sandbox must start, since it reads every worker's cgroup).
    async fn make_room(
        &self,
        starting: &Slot,
        extra_memory: &(dyn Fn() -> u64 + Send + Sync),
    ) -> Result<(), PoolError> {
        loop {
            let slots = self.all_slots();
            let used: u64 = slots.iter().map(|s| s.zygote_memory()).sum::<u64>() + extra_memory();
            if used < self.settings.memory_budget {
                return Ok(());
            }
            let victim = slots
                .iter()
                .filter(|s| s.key != starting.key && s.sessions.load(Ordering::Acquire) == 0)
                .filter(|s| s.current().is_some())
                .max_by_key(|s| s.last_used.idle_for())
                .cloned();
            match victim {
                Some(v) => {
                    eprintln!(
                        "csv-agent serve: evicting {} (idle {:.0} s) to stay within the memory budget",
                        v.label,
                        v.last_used.idle_for().as_secs_f64()
                    );
                    self.stop(&v).await;
                }
                None => {
                    return Err(PoolError::Budget {
                        budget: self.settings.memory_budget >> 20,
                        used: used >> 20,
                    })
                }
            }
        }
    }

    async fn stop(&self, slot: &Slot) {
        let taken = slot.sandbox.lock().await.take();
        if let Ok(mut c) = slot.current.lock() {
            *c = None;
        }
        if let Some(sb) = taken {
            sb.shutdown().await;
        }
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Stop sandboxes with no session idle past the idle timeout; restart
    /// nothing (a dead sandbox is restarted on its next use).
    pub async fn evict_idle(&self) {
        for slot in self.all_slots() {
            if slot.sessions.load(Ordering::Acquire) == 0
                && slot.current().is_some()
                && slot.last_used.idle_for() >= self.settings.idle_timeout
            {
                eprintln!(
                    "csv-agent serve: stopping the idle sandbox of {}",
                    slot.label
                );
                self.stop(&slot).await;
            }
        }
    }

    /// Stop everything (the drain's last step).
    pub async fn shutdown(&self) {
        for slot in self.all_slots() {
            self.stop(&slot).await;
        }
    }

    pub fn zygotes_memory(&self) -> u64 {
        self.all_slots().iter().map(|s| s.zygote_memory()).sum()
    }

    pub fn report(&self) -> Vec<SlotReport> {
        let mut out: Vec<SlotReport> = self
            .all_slots()
            .iter()
            .filter_map(|s| {
                let sb = s.current()?;
                Some(SlotReport {
                    dataset: s.label.clone(),
                    hash: s.key.hash.clone(),
                    worker_memory_bytes: s.key.memory_bytes,
                    alive: sb.is_alive(),
                    sessions: s.sessions.load(Ordering::Acquire),
                    zygote_memory_bytes: sb.zygote_cgroup_memory().unwrap_or(0),
                    idle_ms: s.last_used.idle_for().as_millis() as u64,
                    starts: s.starts.load(Ordering::Relaxed),
                    zygote_host_pid: sb.zygote_host_pid(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.dataset.cmp(&b.dataset));
        out
    }
}
