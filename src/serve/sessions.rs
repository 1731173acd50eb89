//! Sessions: one [`Task`] (a fresh worker forked for it, its namespace kept
//! across cells) per id, owned by the [`Principal`] that created it.
//!
//! Ids are 128 random bits; a lookup by anyone but the owner is "unknown"
//! (404), the same answer as for an id that never existed. A session runs
//! one cell at a time (a second concurrent cell is refused with 409, not
//! queued behind a cell that may run for the whole timeout). It expires
//! after the idle timeout; deleting it kills its worker even mid-cell.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use super::auth::Principal;
use super::pool::{Pool, Slot};
use crate::sandbox::{CellResult, CellStatus, SandboxError, Task};

pub struct Session {
    pub id: String,
    owner: Principal,
    pub slot: Arc<Slot>,
    task: tokio::sync::Mutex<Task>,
    /// Cell timeout when a request does not give one.
    pub default_timeout: Duration,
    /// The sandbox's own cell limit (the server's maximum).
    max_timeout: Duration,
    created: Instant,
    last_used: super::LastUsed,
    cells: AtomicU64,
    closed: AtomicBool,
    /// A cell is running (a second one is refused).
    running: AtomicBool,
    /// Wakes a running cell when the session is deleted (its worker is then killed).
    deleted: Notify,
}

/// How a cell request ended, other than with a result.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("a cell is already running in this session")]
    Busy,
    #[error("the session was deleted while the cell ran")]
    Deleted,
    /// The worker or its zygote was lost for a reason outside the code;
    /// the session's state is gone and the session is closed.
    #[error("the session's worker was lost ({0}); its state is gone, create a new session")]
    Lost(#[source] SandboxError),
}

#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub dataset: String,
    pub dataset_hash: String,
    pub cells: u64,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub worker_host_pid: Option<u32>,
    pub worker_memory_bytes: Option<u64>,
    pub timeout: f64,
}

impl Session {
    /// Run one cell within `timeout` (at most the sandbox's own limit,
    /// which the server set to its maximum). A timeout from here kills the
    /// worker the same way the sandbox's own does (dropping the cell drops
    /// the worker, which kills it and its cgroup) and reports the same
    /// result; the next cell runs in a fresh worker.
    pub async fn run_cell(&self, code: &str, timeout: Duration) -> Result<CellResult, CellError> {
        // Busy is its own flag: readers (health, info) hold the task's lock
        // for an instant, which must not look like a running cell.
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(CellError::Busy);
        }
        let _running = Running(&self.running);
        let mut task = self.task.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(CellError::Deleted);
        }
        self.last_used.touch();
        self.cells.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let limit = self.max_timeout;
        let cell = async {
            if timeout >= limit {
                Some(task.run_cell(code).await)
            } else {
                tokio::time::timeout(timeout, task.run_cell(code))
                    .await
                    .ok()
            }
        };
        let outcome = tokio::select! {
            r = cell => r,
            _ = self.deleted.notified() => return Err(CellError::Deleted),
        };
        self.last_used.touch();
        match outcome {
            Some(Ok(result)) => Ok(result),
            Some(Err(e)) => Err(CellError::Lost(e)),
            None => Ok(timed_out(timeout, started.elapsed())),
        }
    }

    pub fn info(&self) -> SessionInfo {
        let (pid, mem) = match self.task.try_lock() {
            Ok(t) => (
                t.worker().map(|w| w.host_pid),
                t.worker().and_then(|w| w.cgroup_memory()),
            ),
            Err(_) => (None, None),
        };
        SessionInfo {
            id: self.id.clone(),
            dataset: self.slot.label.clone(),
            dataset_hash: self.slot.key.hash.clone(),
            cells: self.cells.load(Ordering::Relaxed),
            age_ms: self.created.elapsed().as_millis() as u64,
            idle_ms: self.last_used.idle_for().as_millis() as u64,
            worker_host_pid: pid,
            worker_memory_bytes: mem,
            timeout: self.default_timeout.as_secs_f64(),
        }
    }

    /// Bytes the session's worker allocated (0 while a cell runs or unknown).
    fn worker_memory(&self) -> u64 {
        self.task
            .try_lock()
            .ok()
            .and_then(|t| t.worker().and_then(|w| w.cgroup_memory()))
            .unwrap_or(0)
    }
}

/// Clears the running flag however the cell ends (also when its request is dropped).
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The result the sandbox gives a cell that passed its wall-clock limit
/// (same status, type and message as `Worker::exec`'s).
fn timed_out(timeout: Duration, elapsed: Duration) -> CellResult {
    CellResult {
        status: CellStatus::Timeout,
        stdout: String::new(),
        stderr: String::new(),
        result: None,
        error: Some(serde_json::json!({
            "type": "Timeout",
            "message": format!(
                "the cell ran longer than the {} s wall-clock limit; the worker was killed",
                timeout.as_secs_f64()
            ),
            "traceback": null,
        })),
        submitted: None,
        hooks: Vec::new(),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        stdout_truncated: 0,
        stderr_truncated: 0,
    }
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the server holds its maximum of {0} sessions; delete one or retry later")]
    Full(usize),
    #[error(transparent)]
    Pool(#[from] super::pool::PoolError),
    #[error("forking the session's worker: {0}")]
    Worker(#[source] SandboxError),
    #[error("no randomness for a session id: {0}")]
    Random(getrandom::Error),
}

pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Live sessions plus those being created (the bound counts both).
    count: Mutex<usize>,
    pub max: usize,
    pub idle_timeout: Duration,
}

/// Where a new session's worker comes from.
pub struct NewSession<'a> {
    pub owner: Principal,
    pub key: super::pool::PoolKey,
    pub label: &'a str,
    pub csv: &'a std::path::Path,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

impl Sessions {
    pub fn new(max: usize, idle_timeout: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            count: Mutex::new(0),
            max,
            idle_timeout,
        }
    }

    fn reserve(&self) -> Result<(), CreateError> {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        if *n >= self.max {
            return Err(CreateError::Full(self.max));
        }
        *n += 1;
        Ok(())
    }

    fn unreserve(&self) {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated by every idle session's worker.
    pub fn workers_memory(&self) -> u64 {
        self.all().iter().map(|s| s.worker_memory()).sum()
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A session with a worker of its own, ready for its first cell.
    pub async fn create(
        &self,
        pool: &Pool,
        new: NewSession<'_>,
    ) -> Result<Arc<Session>, CreateError> {
        self.reserve()?;
        let made = self.create_reserved(pool, new).await;
        if made.is_err() {
            self.unreserve();
        }
        made
    }

    async fn create_reserved(
        &self,
        pool: &Pool,
        new: NewSession<'_>,
    ) -> Result<Arc<Session>, CreateError> {
        let id = super::auth::new_session_id().map_err(CreateError::Random)?;
        let (slot, sandbox) = pool
            .checkout(new.key, new.label, new.csv, &|| self.workers_memory())
            .await?;
        let mut task = sandbox.task();
        if let Err(e) = task.ready().await {
            pool.release(&slot);
            return Err(CreateError::Worker(e));
        }
        let session = Arc::new(Session {
            id: id.clone(),
            owner: new.owner,
            slot,
            task: tokio::sync::Mutex::new(task),
            default_timeout: new.default_timeout,
            max_timeout: new.max_timeout,
            created: Instant::now(),
            last_used: super::LastUsed::now(),
            cells: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            running: AtomicBool::new(false),
            deleted: Notify::new(),
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, session.clone());
        }
        Ok(session)
    }

    /// The session `id` if `who` owns it.
    pub fn get(&self, id: &str, who: &Principal) -> Option<Arc<Session>> {
        let m = self.map.lock().ok()?;
        m.get(id).filter(|s| &s.owner == who).cloned()
    }

    /// What `who` owns.
    pub fn owned_by(&self, who: &Principal) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .all()
            .iter()
            .filter(|s| &s.owner == who)
            .map(|s| s.info())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Remove the session `id` owned by `who`; its worker is killed (mid-cell
    /// too). False when there is no such session for `who`.
    pub fn delete(&self, pool: &Pool, id: &str, who: &Principal) -> bool {
        let removed = {
            let Ok(mut m) = self.map.lock() else {
                return false;
            };
            match m.get(id) {
                Some(s) if &s.owner == who => m.remove(id),
                _ => None,
            }
        };
        match removed {
            Some(s) => {
                self.close(pool, &s);
                true
            }
            None => false,
        }
    }

    fn close(&self, pool: &Pool, s: &Session) {
        if !s.closed.swap(true, Ordering::AcqRel) {
            s.deleted.notify_waiters();
            pool.release(&s.slot);
            self.unreserve();
        }
    }

    /// Drop a session whose worker was lost (no owner check: the server
    /// already resolved it).
    pub fn discard(&self, pool: &Pool, s: &Session) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&s.id);
        }
        self.close(pool, s);
    }

    /// Close sessions idle past the timeout; returns how many.
    pub fn expire(&self, pool: &Pool) -> usize {
        let stale: Vec<Arc<Session>> = self
            .all()
            .into_iter()
            .filter(|s| {
                s.last_used.idle_for() >= self.idle_timeout && !s.running.load(Ordering::Acquire)
            })
            .collect();
        for s in &stale {
            self.discard(pool, s);
        }
        stale.len()
    }

    /// Close every session (the drain).
    pub fn close_all(&self, pool: &Pool) {
        for s in self.all() {
            self.discard(pool, &s);
        }
    }
}
