//! [`SandboxError`]: everything that can go wrong starting a sandbox or
//! running a worker, and which of it is the infrastructure's fault.

use std::path::PathBuf;
use std::time::Duration;

use super::protocol::ProtocolError;
use super::{spawn, ImageError, Layer};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("dataset {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Spawn(#[from] spawn::SpawnError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("refusing to run code with isolation layers missing:\n{}\nfix the host, or pass --allow-degraded to run with the layers that work", format_layers(.0))]
    Degraded(Vec<Layer>),
    #[error("the image location {path} lies under {reserved}, which the jail mounts for itself; keep images elsewhere (set CSV_AGENT_CACHE_DIR, e.g. to ~/.cache/csv-agent or /var/tmp/csv-agent)")]
    ImageLocation {
        path: PathBuf,
        reserved: &'static str,
    },
    #[error("the zygote could not load the dataset: {0}")]
    Load(String),
    #[error("the zygote is gone ({0})")]
    ZygoteGone(String),
    #[error("forking worker {worker_id} failed: {error}")]
    Fork {
        worker_id: u64,
        error: String,
        /// A shortage that may pass (fork's EAGAIN, a failed hand-over):
        /// `fork_worker` retries these before reporting them.
        transient: bool,
    },
    #[error("worker {worker_id}: its own Landlock domain could not be applied ({reason}); refusing to run code in it (pass --allow-degraded to accept workers without it)")]
    WorkerScope { worker_id: u64, reason: String },
    #[error("worker {worker_id}: {detail}")]
    Worker { worker_id: u64, detail: String },
    /// A worker could not be started for a reason outside any code: its
    /// cgroup, its pidfd, or the worker gone before its first cell.
    #[error("worker {worker_id} could not be started: {detail}")]
    WorkerStart { worker_id: u64, detail: String },
    /// The worker died during a cell for a reason outside its code: a
    /// SIGKILL the supervisor did not send (no timeout) with no OOM event
    /// in its cgroup — another process, the host's OOM killer.
    #[error("worker {worker_id} (host pid {host_pid}) was killed from outside the sandbox during cell {cell}: {detail}")]
    WorkerKilled {
        worker_id: u64,
        host_pid: u32,
        cell: u64,
        detail: String,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

impl SandboxError {
    /// An infrastructure failure: the sandbox (zygote, monitor, control
    /// socket) is gone, a worker was lost for a reason outside its code, a
    /// worker could not be started, or the supervisor's own I/O failed.
    /// Worth retrying in a healthy sandbox; never a fact about a program.
    /// Everything else (the dataset, the image, missing layers, a refused
    /// worker scope) would fail the same way again.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            SandboxError::Io { .. }
            | SandboxError::Spawn(_)
            | SandboxError::Protocol(_)
            | SandboxError::ZygoteGone(_)
            | SandboxError::Fork { .. }
            | SandboxError::WorkerStart { .. }
            | SandboxError::WorkerKilled { .. }
            | SandboxError::Timeout(..) => true,
            SandboxError::Dataset { .. }
            | SandboxError::Image(_)
            | SandboxError::Degraded(_)
            | SandboxError::ImageLocation { .. }
            | SandboxError::Load(_)
            | SandboxError::WorkerScope { .. }
            | SandboxError::Worker { .. } => false,
        }
    }
}

pub(super) fn format_layers(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| format!("  {}: {} ({})", l.name, l.status.as_str(), l.detail))
        .collect::<Vec<_>>()
        .join("\n")
}
