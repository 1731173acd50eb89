//! The control channel to the zygote: waiting for it to be ready, the
//! reader that dispatches its messages, and forking workers through it.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::instrument::WithSubscriber;
use tracing::Instrument;

use super::pidfd::{pidfd_inner_pid, pidfd_open};
use super::protocol::{
    self, ChannelPolicy, FramedSocket, FromWorker, FromZygote, ProtocolError, ToZygote, ZygoteReady,
};
use super::zygote::Shared;
use super::{cgroup, reaper, ExitInfo, SandboxError, Worker};

/// Why the zygote did not hand over a worker.
pub(super) struct ForkRefusal {
    pub(super) error: String,
    pub(super) transient: bool,
}

impl ForkRefusal {
    pub(super) fn fatal(error: impl Into<String>) -> Self {
        ForkRefusal {
            error: error.into(),
            transient: false,
        }
    }
}

pub(super) type ForkReply = Result<(i32, OwnedFd), ForkRefusal>;

pub(super) async fn wait_ready(
    mut control_rx: FramedSocket,
    shared: &Arc<Shared>,
    timeout: Duration,
) -> Result<ZygoteReady, SandboxError> {
    let first = tokio::time::timeout(timeout, control_rx.recv_msg::<FromZygote>("ready"))
        .await
        .map_err(|_| {
            SandboxError::Timeout(
                timeout,
                "the zygote to import the data stack and load the CSV",
            )
        })?;
    let ready = match first {
        Ok((FromZygote::Ready(ready), _)) => ready,
        Ok((FromZygote::LoadError { error }, _)) => return Err(SandboxError::Load(error)),
        Ok((other, _)) => {
            return Err(ProtocolError::Unexpected {
                channel: "control",
                expected: "ready",
                got: format!("{other:?}"),
            }
            .into())
        }
        Err(ProtocolError::Unexpected { got, .. }) if got == "end of stream" => {
            // Give the stderr reader a moment to collect the last words.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let tail = shared
                .jail
                .lock()
                .ok()
                .and_then(|j| j.as_ref().map(|j| j.stderr_tail.text()))
                .unwrap_or_default();
            return Err(SandboxError::ZygoteGone(if tail.is_empty() {
                "it exited during start-up without a word".to_string()
            } else {
                format!("it exited during start-up:\n{tail}")
            }));
        }
        Err(e) => return Err(e.into()),
    };
    if ready.version != protocol::PROTOCOL_VERSION {
        return Err(ProtocolError::Unexpected {
            channel: "control",
            expected: "protocol version 1 (the zygote does not match this binary)",
            got: format!("version {}", ready.version),
        }
        .into());
    }
    let reader_shared = Arc::downgrade(shared);
    // The reader runs in the caller's span and subscriber (the CLI's
    // `dataset` span and log file), whichever runtime thread polls it.
    tokio::spawn(
        control_reader(control_rx, reader_shared)
            .in_current_span()
            .with_current_subscriber(),
    );
    Ok(ready)
}

/// Dispatch the zygote's messages: fork replies to their waiters, exits to
/// the exit table.
pub(super) async fn control_reader(mut rx: FramedSocket, shared: std::sync::Weak<Shared>) {
    let reason = loop {
        let frame = match rx.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the zygote closed its control socket".to_string(),
            Err(e) => break e.to_string(),
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let msg: FromZygote = match protocol::decode("control", &frame.body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(sandbox = %shared.id, "{e}");
                continue;
            }
        };
        let mut fds = frame.fds.into_iter();
        match msg {
            FromZygote::Forked { worker_id, pid } => {
                let reply = fds
                    .next()
                    .map(|fd| (pid, fd))
                    .ok_or_else(|| ForkRefusal::fatal("the forked message carried no socket"));
                if let Some(tx) = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&worker_id))
                {
                    let _ = tx.send(reply);
                }
            }
            FromZygote::ForkFailed {
                worker_id,
                error,
                transient,
            } => {
                if let Some(tx) = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&worker_id))
                {
                    let _ = tx.send(Err(ForkRefusal { error, transient }));
                }
            }
            FromZygote::Exited {
                worker_id,
                exit_code,
                signal,
                ..
            } => {
                if let Ok(mut exits) = shared.exits.lock() {
                    exits.insert(worker_id, ExitInfo { exit_code, signal });
                }
                shared.exit_notify.notify_waiters();
            }
            FromZygote::Error { error } => {
                tracing::warn!(sandbox = %shared.id, "zygote: {error}")
            }
            other => tracing::warn!(sandbox = %shared.id, "zygote sent an unexpected {other:?}"),
        }
    };
    if let Some(shared) = shared.upgrade() {
        if !shared.closed.load(Ordering::Relaxed) {
            tracing::warn!("sandbox {}: {reason}", shared.id);
        }
        if let Ok(mut gone) = shared.zygote_gone.lock() {
            *gone = Some(reason);
        }
        if let Ok(mut pending) = shared.pending.lock() {
            for (_, tx) in pending.drain() {
                let _ = tx.send(Err(ForkRefusal::fatal("the zygote is gone")));
            }
        }
        shared.exit_notify.notify_waiters();
    }
}

pub(super) const FORK_TIMEOUT: Duration = Duration::from_secs(30);
/// Forks tried before a transient `fork_failed` is reported.
pub(super) const FORK_ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each further one (50, 100, 200 ms).
pub(super) const FORK_BACKOFF: Duration = Duration::from_millis(50);

/// Fork a worker; a transient refusal (fork's EAGAIN, a hand-over that
/// failed for lack of room for the descriptor) is retried a few times with
/// a short backoff, each time as a new worker id.
pub(super) async fn fork_worker(shared: &Arc<Shared>) -> Result<Worker, SandboxError> {
    let mut attempt = 1;
    loop {
        let started = std::time::Instant::now();
        match fork_once(shared).await {
            Ok(worker) => {
                shared.stats.forked(started.elapsed());
                return Ok(worker);
            }
            Err(SandboxError::Fork {
                worker_id,
                error,
                transient: true,
            }) => {
                if attempt >= FORK_ATTEMPTS {
                    return Err(SandboxError::Fork {
                        worker_id,
                        error: format!("{error} (tried {FORK_ATTEMPTS} times)"),
                        transient: true,
                    });
                }
                tracing::info!(
                    "sandbox {}: forking worker {worker_id} failed ({error}); retrying",
                    shared.id
                );
                tokio::time::sleep(FORK_BACKOFF * (1 << (attempt - 1))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub(super) async fn fork_once(shared: &Arc<Shared>) -> Result<Worker, SandboxError> {
    if let Some(reason) = shared.gone_reason() {
        return Err(SandboxError::ZygoteGone(reason));
    }
    let worker_id = shared.next_worker.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    if let Ok(mut pending) = shared.pending.lock() {
        pending.insert(worker_id, tx);
    }
    // The group exists before the worker does, so it can be placed in it
    // before it runs a single line of user code.
    let group = if shared.zygote_group.is_some() {
        Some(Arc::new(
            cgroup::Group::create(
                &cgroup::sandbox_group_path(&shared.id, &format!("worker-{worker_id}")),
                cgroup::GroupLimits {
                    memory_bytes: shared.limits.memory_bytes,
                    pids: shared.limits.pids,
                },
            )
            .map_err(|e| SandboxError::WorkerStart {
                worker_id,
                detail: e.to_string(),
            })?,
        ))
    } else {
        None
    };
    // The group of a worker that never started: removed off the runtime.
    let cleanup = |group: &Option<Arc<cgroup::Group>>| {
        if let Some(g) = group.clone() {
            let _ = reaper::spawn("removing an unused worker cgroup", move || g.remove());
        }
    };
    if let Err(e) = shared
        .control_tx
        .send(&ToZygote::Fork {
            worker_id,
            limits: shared.worker_limits.clone(),
        })
        .await
    {
        cleanup(&group);
        return Err(e.into());
    }
    let (ns_pid, fd) = match tokio::time::timeout(FORK_TIMEOUT, rx).await {
        Ok(Ok(Ok(reply))) => reply,
        Ok(Ok(Err(ForkRefusal { error, transient }))) => {
            cleanup(&group);
            return Err(SandboxError::Fork {
                worker_id,
                error,
                transient,
            });
        }
        Ok(Err(_)) => {
            cleanup(&group);
            return Err(SandboxError::ZygoteGone(
                "control reader stopped".to_string(),
            ));
        }
        Err(_) => {
            cleanup(&group);
            return Err(SandboxError::Timeout(
                FORK_TIMEOUT,
                "the zygote to fork a worker",
            ));
        }
    };
    let mut socket = FramedSocket::new(
        fd,
        "worker",
        ChannelPolicy::worker(shared.limits.max_output_bytes),
    )?;
    let hello = tokio::time::timeout(FORK_TIMEOUT, socket.recv_msg::<FromWorker>("hello")).await;
    let (scope, filter, uid, host_pid) = match hello {
        Ok(Ok((FromWorker::Hello { version, .. }, _))) if version != protocol::PROTOCOL_VERSION => {
            cleanup(&group);
            return Err(ProtocolError::Unexpected {
                channel: "worker",
                expected: "a hello of protocol version 1",
                got: format!("version {version}"),
            }
            .into());
        }
        Ok(Ok((
            FromWorker::Hello {
                scope,
                filter,
                uid,
                pid,
                ..
            },
            frame,
        ))) => {
            let host_pid = frame
                .sender_pid
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| SandboxError::WorkerStart {
                    worker_id,
                    detail: format!("hello from jail pid {pid} carried no credentials"),
                });
            match host_pid {
                Ok(h) => (scope, filter, uid, h),
                Err(e) => {
                    cleanup(&group);
                    return Err(e);
                }
            }
        }
        Ok(Ok((other, _))) => {
            cleanup(&group);
            return Err(ProtocolError::Unexpected {
                channel: "worker",
                expected: "hello",
                got: other.kind(),
            }
            .into());
        }
        Ok(Err(e)) => {
            cleanup(&group);
            return Err(e.into());
        }
        Err(_) => {
            cleanup(&group);
            return Err(SandboxError::Timeout(FORK_TIMEOUT, "a new worker's hello"));
        }
    };
    // A pidfd first, before anything else: from here on the worker is
    // signalled through it, never through a pid number that may be reused.
    // The hello's host pid could in principle already belong to someone else
    // (the worker died, was reaped and its pid recycled within this instant):
    // the pidfd's innermost pid must still be the worker's jail pid.
    let pidfd = match pidfd_open(host_pid) {
        Ok(fd) if pidfd_inner_pid(&fd) == Some(ns_pid) => fd,
        Ok(_) => {
            cleanup(&group);
            return Err(SandboxError::WorkerStart {
                worker_id,
                detail: format!("host pid {host_pid} is no longer the worker (jail pid {ns_pid}): it exited before its first cell"),
            });
        }
        Err(e) => {
            cleanup(&group);
            return Err(SandboxError::WorkerStart {
                worker_id,
                detail: format!("pidfd_open({host_pid}): {e}"),
            });
        }
    };
    let mut worker = Worker {
        id: worker_id,
        host_pid,
        ns_pid,
        scope,
        filter,
        uid,
        pidfd,
        socket,
        group,
        shared: shared.clone(),
        next_cell: 1,
        dead: false,
    };
    if let Some(g) = &worker.group {
        if let Err(e) = g.add(host_pid) {
            worker.kill();
            return Err(SandboxError::WorkerStart {
                worker_id,
                detail: e.to_string(),
            });
        }
    }
    if !worker.filter.applied && !shared.allow_degraded {
        let reason = worker.filter.error.clone().unwrap_or_default();
        worker.kill();
        return Err(SandboxError::Worker {
            worker_id,
            detail: format!(
                "the worker's own seccomp filter could not be applied ({reason}); pass --allow-degraded to run without it"
            ),
        });
    }
    if let (Some(expected), Some(got)) = (shared.worker_ids, worker.uid) {
        if got < expected.first || got >= expected.first + expected.count {
            worker.kill();
            return Err(SandboxError::Worker {
                worker_id,
                detail: format!("the worker runs as uid {got}, not one of its own"),
            });
        }
    }
    if !worker.scope.applied {
        let reason = worker
            .scope
            .error
            .clone()
            .unwrap_or_else(|| "no reason given".to_string());
        if !shared.allow_degraded {
            // Fail closed: the worker has run no code of ours; it dies now
            // (dropping it kills it and removes its cgroup).
            worker.kill();
            return Err(SandboxError::WorkerScope { worker_id, reason });
        }
        tracing::warn!(
            sandbox = %shared.id,
            "worker {worker_id}: per-worker landlock scope not applied: {reason}"
        );
    }
    Ok(worker)
}
