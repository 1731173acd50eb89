//! [`Task`]: one trace's cells, in one worker, replaced when it is lost.

use super::{CellResult, Sandbox, SandboxError, Worker};

/// One trace's cells. The REPL state lives in the worker; when a cell costs
/// the worker its life (timeout, OOM, crash) the next cell runs in a fresh
/// worker with a fresh namespace.
pub struct Task {
    pub(super) sandbox: Sandbox,
    pub(super) worker: Option<Worker>,
    pub(super) cells: u64,
    pub(super) restarts: u64,
}

impl Task {
    pub async fn run_cell(&mut self, code: &str) -> Result<CellResult, SandboxError> {
        let worker = match self.worker.take() {
            Some(w) if w.is_alive() => w,
            Some(w) => {
                // It died while idle, between cells: no code of the task
                // was running. Killed from outside (or the zygote gone),
                // the task's state is lost to the infrastructure.
                if let Some(e) = w.idle_loss(self.cells) {
                    return Err(e);
                }
                self.restarts += 1;
                self.sandbox.acquire().await?
            }
            None => {
                if self.cells > 0 {
                    self.restarts += 1;
                }
                self.sandbox.acquire().await?
            }
        };
        let mut worker = worker;
        self.cells += 1;
        let result = worker.exec(code).await;
        // A worker that answered and then died (killed right after its
        // reply) is kept, so the next cell judges how it died (`idle_loss`)
        // instead of silently going on in a fresh worker without the state.
        let answered = matches!(&result, Ok(r) if !r.status.lost_worker());
        if worker.is_alive() || answered {
            self.worker = Some(worker);
        }
        result
    }

    /// Acquire the task's worker now (a spare or a fresh fork) rather than
    /// in the first cell, so callers can tell waiting for a worker from
    /// running code.
    pub async fn ready(&mut self) -> Result<(), SandboxError> {
        if self.worker.is_none() {
            self.worker = Some(self.sandbox.acquire().await?);
        }
        Ok(())
    }

    /// Workers that had to be replaced after a lost one.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }
}
