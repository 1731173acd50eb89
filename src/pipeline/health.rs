//! Sandbox health: the pipeline owns each dataset's [`Sandbox`] through a
//! [`Jail`], which starts a new one when the old one dies (bounded, with
//! backoff), and keeps the incident counts of the dataset: restarts, workers
//! lost, OOM kills, timeouts and retries. Every incident is also a line in
//! the dataset's log (the caller's `dataset` span routes `tracing` there).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::sandbox::{CellStatus, Sandbox, SandboxError, SandboxOptions};
use crate::serve::source::{RemoteSource, Workers};

/// What the pipeline does when the infrastructure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// New sandboxes started per dataset after the first one died.
    pub max_restarts: u32,
    /// Wait before the first restart; doubled for each further one.
    pub backoff: Duration,
    /// Times one question (or the profile) is run again after an
    /// infrastructure failure before it is reported as failed (and left to
    /// the next run).
    pub max_retries: u32,
}

impl Recovery {
    /// The wait before restart number `restart` (counting from 1).
    fn backoff_before(&self, restart: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << restart.saturating_sub(1).min(10))
    }
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            max_restarts: 3,
            backoff: Duration::from_millis(500),
            max_retries: 3,
        }
    }
}

/// Incident counts of a dataset (or of a run, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incidents {
    /// New sandboxes started after one died.
    pub restarts: u64,
    /// Traces that lost their worker (or their whole sandbox) to the
    /// infrastructure: killed from outside, the zygote gone.
    pub workers_lost: u64,
    /// Workers killed by their own cgroup's OOM killer (the program's fault).
    pub oom_kills: u64,
    /// Cells killed at the wall-clock limit (the program's fault).
    pub timeouts: u64,
    /// Questions (or profiles) run again after an infrastructure failure.
    pub retries: u64,
}

impl Incidents {
    pub fn add(&mut self, other: &Incidents) {
        self.restarts += other.restarts;
        self.workers_lost += other.workers_lost;
        self.oom_kills += other.oom_kills;
        self.timeouts += other.timeouts;
        self.retries += other.retries;
    }

    pub fn is_empty(&self) -> bool {
        *self == Incidents::default()
    }
}

/// Why a task that met the infrastructure is not run again.
#[derive(Debug)]
pub enum GiveUp {
    /// It failed on the infrastructure `max_retries` + 1 times.
    Retries,
    /// The dataset's sandbox could not be replaced.
    Restarts(Exhausted),
}

/// The dataset's sandbox could not be kept alive.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the sandbox died and was restarted {restarts} time(s), the limit; last: {last}")]
pub struct Exhausted {
    pub restarts: u32,
    pub last: String,
}

struct Current {
    generation: u64,
    /// A local sandbox, or a running server's (`run --serve`), which
    /// restarts its own and never needs replacing here.
    sandbox: Workers,
}

/// One dataset's sandbox, replaced when it dies.
pub struct Jail {
    opts: SandboxOptions,
    recovery: Recovery,
    current: tokio::sync::Mutex<Current>,
    incidents: Mutex<Incidents>,
    /// Faults already counted, per sandbox generation.
    faults_seen: Mutex<HashMap<u64, usize>>,
    restarts: Mutex<u32>,
    exhausted: Mutex<Option<Exhausted>>,
}

impl Jail {
    /// Start the dataset's first sandbox. A start cut short by the
    /// infrastructure (the zygote or monitor killed while it loads, a spawn
    /// or I/O failure) is tried again within the restart budget, after the
    /// same backoff, each try an incident; any other error (a bad dataset,
    /// a missing layer, the image) fails at once.
    pub async fn start(opts: SandboxOptions, recovery: Recovery) -> Result<Jail, SandboxError> {
        let mut incidents = Incidents::default();
        let mut restarts = 0u32;
        let sandbox = loop {
            match Sandbox::start(opts.clone()).await {
                Ok(sandbox) => break sandbox,
                Err(e) if e.is_infrastructure() && restarts < recovery.max_restarts => {
                    restarts += 1;
                    let wait = recovery.backoff_before(restarts);
                    warn!(
                        "incident: the sandbox did not start ({e}); restart {restarts} of {} after {:.1} s",
                        recovery.max_restarts,
                        wait.as_secs_f64()
                    );
                    incidents.restarts += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Jail {
            opts,
            recovery,
            current: tokio::sync::Mutex::new(Current {
                generation: 0,
                sandbox: Workers::Local(sandbox),
            }),
            incidents: Mutex::new(incidents),
            faults_seen: Mutex::new(HashMap::new()),
            restarts: Mutex::new(restarts),
            exhausted: Mutex::new(None),
        })
    }

    /// The dataset's workers from a running `csv-agent serve` (`--serve`):
    /// nothing to start or restart here; a lost session is retried like a
    /// lost worker.
    pub fn remote(source: RemoteSource, opts: SandboxOptions, recovery: Recovery) -> Jail {
        Jail {
            opts,
            recovery,
            current: tokio::sync::Mutex::new(Current {
                generation: 0,
                sandbox: Workers::Remote(std::sync::Arc::new(source)),
            }),
            incidents: Mutex::new(Incidents::default()),
            faults_seen: Mutex::new(HashMap::new()),
            restarts: Mutex::new(0),
            exhausted: Mutex::new(None),
        }
    }

    /// The live sandbox and its generation (a shared handle).
    pub async fn current(&self) -> (u64, Workers) {
        let current = self.current.lock().await;
        (current.generation, current.sandbox.clone())
    }

    pub fn incidents(&self) -> Incidents {
        self.incidents.lock().map(|i| *i).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut Incidents)) {
        if let Ok(mut i) = self.incidents.lock() {
            f(&mut i);
        }
    }

    /// An infrastructure failure of a trace of `what` (a question id, or
    /// `profile`): logged and counted as a worker lost.
    fn lost(&self, what: &str, error: &dyn std::fmt::Display) {
        warn!("incident: worker lost ({what}): {error}");
        self.count(|i| i.workers_lost += 1);
    }

    /// `what` is run again (attempt `attempt`, counting from 2).
    fn retry(&self, what: &str, attempt: u32) {
        warn!("incident: retry {what} (attempt {attempt})");
        self.count(|i| i.retries += 1);
    }

    /// One step of every retry loop: attempt `attempt` of `what` (a
    /// question id, `ground truth of …`, `profile`) failed on the
    /// infrastructure in sandbox generation `generation`. Logged and counted
    /// as a lost worker; then either the number of the next attempt (a dead
    /// sandbox replaced first, the retry logged and counted) or why not.
    pub async fn after_failure(
        &self,
        what: &str,
        error: &dyn std::fmt::Display,
        generation: u64,
        attempt: u32,
    ) -> Result<u32, GiveUp> {
        self.lost(what, error);
        if attempt > self.recovery.max_retries {
            return Err(GiveUp::Retries);
        }
        self.recover(generation).await.map_err(GiveUp::Restarts)?;
        self.retry(what, attempt + 1);
        Ok(attempt + 1)
    }

    /// After an infrastructure failure seen in generation `generation`:
    /// make sure a live sandbox is there. A dead one is replaced (once, by
    /// whichever question notices first), after a backoff, within the
    /// restart budget; past it every caller gets [`Exhausted`].
    pub async fn recover(&self, generation: u64) -> Result<(), Exhausted> {
        if let Some(e) = self.exhausted.lock().ok().and_then(|e| e.clone()) {
            return Err(e);
        }
        let mut current = self.current.lock().await;
        if current.generation != generation || current.sandbox.is_alive() {
            // Already replaced, or only a worker was lost.
            return Ok(());
        }
        let mut last = current
            .sandbox
            .gone_reason()
            .unwrap_or_else(|| "the zygote is gone".to_string());
        warn!("incident: sandbox {} died: {last}", current.sandbox.id());
        loop {
            let restarts = {
                let mut r = self.restarts.lock().map_err(|_| Exhausted {
                    restarts: 0,
                    last: last.clone(),
                })?;
                if *r >= self.recovery.max_restarts {
                    let e = Exhausted {
                        restarts: *r,
                        last: last.clone(),
                    };
                    warn!("incident: no more restarts: {e}");
                    if let Ok(mut x) = self.exhausted.lock() {
                        *x = Some(e.clone());
                    }
                    return Err(e);
                }
                *r += 1;
                *r
            };
            let wait = self.recovery.backoff_before(restarts);
            tokio::time::sleep(wait).await;
            self.count(|i| i.restarts += 1);
            match Sandbox::start(self.opts.clone()).await {
                Ok(sandbox) => {
                    warn!(
                        "incident: restart {restarts} of {} after {:.1} s: sandbox {} replaces {}",
                        self.recovery.max_restarts,
                        wait.as_secs_f64(),
                        sandbox.id(),
                        current.sandbox.id()
                    );
                    let old = std::mem::replace(&mut current.sandbox, Workers::Local(sandbox));
                    self.count_faults(current.generation, &old);
                    current.generation += 1;
                    // Whatever still holds the old one fails and retries.
                    tokio::spawn(old.shutdown());
                    return Ok(());
                }
                Err(e) => {
                    warn!("incident: restart {restarts} failed: {e}");
                    last = e.to_string();
                }
            }
        }
    }

    /// Count and log the faults (timeouts, OOM kills) that the live
    /// sandbox recorded since the last call.
    pub async fn harvest_faults(&self) {
        let (generation, sandbox) = self.current().await;
        self.count_faults(generation, &sandbox);
    }

    fn count_faults(&self, generation: u64, sandbox: &Workers) {
        let faults = sandbox.faults();
        let Ok(mut seen) = self.faults_seen.lock() else {
            return;
        };
        let from = seen.get(&generation).copied().unwrap_or(0);
        for fault in faults.iter().skip(from) {
            match fault.cause {
                CellStatus::Oom => {
                    warn!(
                        "incident: OOM kill: worker {} (host pid {}) cell {}: {}",
                        fault.worker_id, fault.host_pid, fault.cell, fault.detail
                    );
                    self.count(|i| i.oom_kills += 1);
                }
                CellStatus::Timeout => {
                    warn!(
                        "incident: timeout kill: worker {} (host pid {}) cell {}: {}",
                        fault.worker_id, fault.host_pid, fault.cell, fault.detail
                    );
                    self.count(|i| i.timeouts += 1);
                }
                _ => {}
            }
        }
        seen.insert(generation, faults.len().max(from));
    }

    /// Stop the live sandbox (replaced ones were stopped when replaced).
    pub async fn shutdown(self) {
        self.harvest_faults().await;
        let current = self.current.into_inner();
        let local = match &current.sandbox {
            Workers::Local(sandbox) => Some(sandbox.clone()),
            Workers::Remote(_) => None,
        };
        current.sandbox.shutdown().await;
        if let Some(sandbox) = local {
            info!("sandbox {}: {}", sandbox.id(), sandbox.worker_stats());
        }
    }
}
