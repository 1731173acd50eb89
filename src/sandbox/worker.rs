//! [`Worker`]: one forked worker, a REPL whose namespace lives across cells;
//! running a cell, and finding out why a worker was lost.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pidfd::pidfd_send_signal;
use super::protocol::{self, FramedSocket, FromWorker, ProtocolError, ScopeStatus, ToWorker};
use super::reaper;
use super::zygote::Shared;
use super::{cgroup, CellResult, CellStatus, ExitInfo, Fault, SandboxError};

/// How long a lost worker's exit report (from the zygote) is waited for
/// before its death is put down to the infrastructure.
pub(super) const EXIT_REPORT_WAIT: Duration = Duration::from_secs(5);

/// One forked worker: a REPL whose namespace lives across cells.
pub struct Worker {
    pub id: u64,
    /// Pid on the host (from SCM_CREDENTIALS of its hello).
    pub host_pid: u32,
    /// Pid inside the jail.
    pub ns_pid: i32,
    pub scope: ScopeStatus,
    /// The worker's own seccomp filter, as it reported it.
    pub filter: ScopeStatus,
    /// Its uid inside the jail.
    pub uid: Option<u32>,
    /// Taken right after the hello: every signal goes through it.
    pub(super) pidfd: OwnedFd,
    pub(super) socket: FramedSocket,
    pub(super) group: Option<Arc<cgroup::Group>>,
    pub(super) shared: Arc<Shared>,
    pub(super) next_cell: u64,
    pub(super) dead: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("host_pid", &self.host_pid)
            .finish()
    }
}

impl Worker {
    pub fn is_alive(&self) -> bool {
        !self.dead && !self.reaped()
    }

    /// The zygote has reported this worker's exit (it has been reaped).
    pub(super) fn reaped(&self) -> bool {
        self.shared
            .exits
            .lock()
            .map(|e| e.contains_key(&self.id))
            .unwrap_or(false)
    }

    /// Why a worker that died while idle (after cell `cell`) is an
    /// infrastructure loss: SIGKILLed with no OOM event, or its zygote
    /// gone. `None` when its own code may have done it (another signal or
    /// an exit from a thread it left running).
    pub(super) fn idle_loss(&self, cell: u64) -> Option<SandboxError> {
        if let Some(reason) = self.shared.gone_reason() {
            return Some(SandboxError::ZygoteGone(reason));
        }
        let exit = self
            .shared
            .exits
            .lock()
            .ok()
            .and_then(|e| e.get(&self.id).copied());
        let oom = self
            .group
            .as_ref()
            .map(|g| g.oom_kills() > 0)
            .unwrap_or(false);
        match exit {
            Some(ExitInfo {
                signal: Some(libc::SIGKILL),
                ..
            }) if !oom => Some(self.killed_from_outside(
                cell,
                "SIGKILL between cells, with no OOM event in its cgroup".to_string(),
            )),
            _ => None,
        }
    }

    /// Bytes charged to this worker's cgroup (what it allocated itself).
    pub fn cgroup_memory(&self) -> Option<u64> {
        self.group.as_ref().and_then(|g| g.memory_usage())
    }

    /// Run one cell. Timeouts, OOM kills and crashes come back as a
    /// [`CellResult`] with that status, never as an `Err`; the worker is then
    /// dead and must be replaced (see [`Task`](super::Task)).
    pub async fn exec(&mut self, code: &str) -> Result<CellResult, SandboxError> {
        if self.dead {
            return Err(SandboxError::Worker {
                worker_id: self.id,
                detail: "this worker is dead; start a new task".to_string(),
            });
        }
        let cell = self.next_cell;
        self.next_cell += 1;
        let started = Instant::now();
        if self
            .socket
            .send(&ToWorker::Exec {
                cell,
                code: code.to_string(),
            })
            .await
            .is_err()
        {
            return self.lost(cell, started).await;
        }
        let timeout = self.shared.limits.cell_timeout;
        match tokio::time::timeout(timeout, self.socket.recv()).await {
            Err(_) => {
                self.kill_and_sweep().await;
                let detail = format!(
                    "the cell ran longer than the {} s wall-clock limit; the worker was killed",
                    timeout.as_secs_f64()
                );
                self.record_fault(cell, CellStatus::Timeout, &detail);
                Ok(CellResult::lost(
                    CellStatus::Timeout,
                    "Timeout",
                    detail,
                    started.elapsed(),
                ))
            }
            Ok(Ok(Some(frame))) => {
                let checked = match protocol::decode::<FromWorker>("worker", &frame.body) {
                    Ok(FromWorker::Result(reply)) if reply.cell == cell => {
                        CellResult::from_reply(reply, self.shared.limits.max_output_bytes).map_err(
                            |source| ProtocolError::Reply {
                                channel: "worker",
                                cell,
                                source,
                            },
                        )
                    }
                    Ok(other) => Err(ProtocolError::NotTheResult {
                        channel: "worker",
                        cell,
                        got: other.kind(),
                    }),
                    Err(e) => Err(e),
                };
                drop(frame);
                Ok(match checked {
                    Ok(result) => result,
                    Err(e) => self.violation(cell, started, &e.to_string()).await,
                })
            }
            Ok(Err(e)) if e.is_violation() => {
                Ok(self.violation(cell, started, &e.to_string()).await)
            }
            Ok(Ok(None)) | Ok(Err(_)) => self.lost(cell, started).await,
        }
    }

    /// The worker broke the protocol (sent descriptors, an oversized or
    /// malformed frame, a reply of the wrong shape, status or cell): it is
    /// hostile. Kill it, log a fault, and report the cell as `crashed` with
    /// error type `ProtocolViolation`; nothing it sent is passed on.
    pub(super) async fn violation(
        &mut self,
        cell: u64,
        started: Instant,
        detail: &str,
    ) -> CellResult {
        self.kill_and_sweep().await;
        let refused = self.socket.refused_descriptors();
        let detail = if refused > 0 {
            format!("protocol violation: {detail} ({refused} descriptors refused in all)")
        } else {
            format!("protocol violation: {detail}")
        };
        self.record_fault(cell, CellStatus::Crashed, &detail);
        CellResult::lost(
            CellStatus::Crashed,
            "ProtocolViolation",
            format!("the worker was killed: {detail}"),
            started.elapsed(),
        )
    }

    /// The worker died during a cell: find out why. What its own code
    /// caused (an OOM kill of its cgroup, a signal such as SIGSEGV or
    /// SIGABRT, an exit) is a `crashed` or `oom` cell; what came from
    /// outside (a SIGKILL the supervisor did not send and no OOM event, or
    /// the whole zygote gone) is an infrastructure `Err`.
    pub(super) async fn lost(
        &mut self,
        cell: u64,
        started: Instant,
    ) -> Result<CellResult, SandboxError> {
        self.dead = true;
        let exit = self.wait_exit(EXIT_REPORT_WAIT).await;
        let oom = self
            .group
            .as_ref()
            .map(|g| g.oom_kills() > 0)
            .unwrap_or(false);
        self.kill_and_sweep().await;
        if !oom {
            match exit {
                Some(ExitInfo {
                    signal: Some(libc::SIGKILL),
                    ..
                }) => {
                    return Err(self.killed_from_outside(
                        cell,
                        "SIGKILL with no timeout and no OOM event in its cgroup".to_string(),
                    ));
                }
                None => {
                    if let Some(reason) = self.shared.gone_reason() {
                        self.record_incident(cell, &format!("the zygote is gone ({reason})"));
                        return Err(SandboxError::ZygoteGone(reason));
                    }
                    // No exit report: nothing shows the program killed it
                    // (a crash of its own is reported at once), so it is not
                    // data; the question runs again.
                    return Err(self.killed_from_outside(
                        cell,
                        format!(
                            "it vanished with no exit report within {} s",
                            EXIT_REPORT_WAIT.as_secs()
                        ),
                    ));
                }
                _ => {}
            }
        }
        let (status, kind, detail) = if oom {
            (
                CellStatus::Oom,
                "OutOfMemory",
                format!(
                    "the worker exceeded its {} MiB memory limit and was killed by the OOM killer",
                    self.shared.limits.memory_bytes >> 20
                ),
            )
        } else {
            let how = match exit {
                Some(ExitInfo {
                    signal: Some(sig), ..
                }) => format!("killed by signal {sig} ({})", signal_name(sig)),
                Some(ExitInfo {
                    exit_code: Some(code),
                    ..
                }) => format!("exited with status {code}"),
                _ => "vanished".to_string(),
            };
            (
                CellStatus::Crashed,
                "WorkerCrashed",
                format!("the worker {how} during the cell"),
            )
        };
        self.record_fault(cell, status, &detail);
        Ok(CellResult::lost(status, kind, detail, started.elapsed()))
    }

    /// The worker was lost to something outside its code (during or after
    /// cell `cell`): logged as such, and the infrastructure error for it.
    pub(super) fn killed_from_outside(&self, cell: u64, detail: String) -> SandboxError {
        self.record_incident(cell, &detail);
        SandboxError::WorkerKilled {
            worker_id: self.id,
            host_pid: self.host_pid,
            cell,
            detail,
        }
    }

    /// A worker lost to the infrastructure: logged, not a fault of its code.
    pub(super) fn record_incident(&self, cell: u64, detail: &str) {
        tracing::warn!(
            "sandbox {} worker {} (host pid {}) cell {}: lost from outside: {}",
            self.shared.id,
            self.id,
            self.host_pid,
            cell,
            detail
        );
    }

    pub(super) async fn wait_exit(&self, limit: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.shared.exit_notify.notified();
            if let Some(info) = self
                .shared
                .exits
                .lock()
                .ok()
                .and_then(|e| e.get(&self.id).copied())
            {
                return Some(info);
            }
            if self
                .shared
                .zygote_gone
                .lock()
                .map(|g| g.is_some())
                .unwrap_or(true)
            {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    pub(super) fn record_fault(&self, cell: u64, cause: CellStatus, detail: &str) {
        tracing::warn!(
            "sandbox {} worker {} (host pid {}) cell {}: {}: {}",
            self.shared.id,
            self.id,
            self.host_pid,
            cell,
            cause.as_str(),
            detail
        );
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.push(Fault {
                worker_id: self.id,
                host_pid: self.host_pid,
                cell,
                cause,
                detail: detail.to_string(),
            });
        }
    }

    /// SIGKILL the worker and everything it started. The worker itself is
    /// signalled through the pidfd taken when it started, so a pid number
    /// reused after it was reaped is never a target; what it started goes
    /// with its cgroup (`cgroup.kill`), or without one, with its process
    /// group — signalled only while the pidfd says the leader is still there
    /// (alive or a zombie: its pid, hence the group id, cannot be reused
    /// before it is reaped). Returns whether the worker was still there.
    ///
    /// The window left without a cgroup: the zygote may reap the leader
    /// between that check and `killpg`, and the group id be reused in that
    /// instant by an unrelated new group of the same user namespace.
    ///
    /// The sweep of its cgroup (which may sleep on cgroup v1) runs on a
    /// thread of its own, never here: this returns at once. Async code that
    /// must know the group is empty awaits `Worker::kill_and_sweep`.
    pub fn kill(&mut self) -> bool {
        let (there, _sweep) = self.kill_and_start_sweep();
        there
    }

    /// [`Worker::kill`], then wait (without blocking the runtime) until its
    /// cgroup is empty.
    pub(super) async fn kill_and_sweep(&mut self) -> bool {
        let (there, sweep) = self.kill_and_start_sweep();
        if let Some(sweep) = sweep {
            sweep.wait().await;
        }
        there
    }

    fn kill_and_start_sweep(&mut self) -> (bool, Option<reaper::Done>) {
        self.dead = true;
        // Whatever it sent and we buffered is of no use any more.
        self.socket.release();
        let there = pidfd_send_signal(&self.pidfd, 0).is_ok();
        if there {
            if self.group.is_none() {
                if let Ok(pgid) = i32::try_from(self.host_pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = pidfd_send_signal(&self.pidfd, libc::SIGKILL);
        }
        let sweep = self.group.clone().map(|group| {
            let slow = self
                .shared
                .slow_cgroup_kill
                .filter(|(worker, _)| *worker == self.id)
                .map(|(_, delay)| delay);
            reaper::spawn("a worker's cgroup sweep", move || {
                if let Some(delay) = slow {
                    std::thread::sleep(delay);
                }
                group.kill_all();
            })
        });
        (there, sweep)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.dead {
            self.kill();
        }
        if let Some(group) = self.group.take() {
            // rmdir waits for the zygote to reap the worker; never on the
            // async runtime.
            let _ = reaper::spawn("removing a worker's cgroup", move || group.remove());
        }
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown")
}
