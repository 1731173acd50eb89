//! Resource limits of the jail: no core dumps, a cap on file size and open
//! files, and a process-count backstop. CPU seconds and the address-space
//! fallback are set per worker by the zygote after `fork` (they count from the
//! worker's own start).

use nix::sys::resource::{setrlimit, Resource};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RlimitSpec {
    /// Largest file the jail may write (also bounds memfd output capture).
    pub fsize_bytes: u64,
    /// Open files of the zygote (capped at the hard limit the jail inherits);
    /// each worker lowers its own to the worker limit. The zygote's is higher
    /// on purpose: in single-uid mode the kernel refuses to pass descriptors
    /// (a new worker's socket) once the user's descriptors in flight exceed
    /// the sender's RLIMIT_NOFILE, and workers, at their lower limit, cannot
    /// push that count anywhere near the zygote's.
    pub nofile: u64,
    /// Processes and threads of the jail user inside its user namespace: the
    /// fork-bomb backstop where no pids cgroup is available.
    pub nproc: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("setting {resource} to {value} failed: {source}")]
pub struct RlimitError {
    resource: &'static str,
    value: u64,
    #[source]
    source: nix::Error,
}

/// Signals queued with information (real-time signals, `sigqueue`) that one
/// uid of the jail may have pending. The kernel counts them per user: in
/// per-worker uid mode this bounds one worker; in single-uid mode, one jail.
pub const SIGPENDING: u64 = 4096;

pub fn apply(spec: &RlimitSpec) -> Result<String, RlimitError> {
    let set = |resource: Resource, name: &'static str, value: u64| {
        setrlimit(resource, value, value).map_err(|source| RlimitError {
            resource: name,
            value,
            source,
        })
    };
    set(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    set(Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE", spec.fsize_bytes)?;
    let (_, nofile_hard) =
        nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| RlimitError {
            resource: "RLIMIT_NOFILE",
            value: spec.nofile,
            source,
        })?;
    let nofile = spec.nofile.min(nofile_hard);
    set(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile)?;
    set(Resource::RLIMIT_NPROC, "RLIMIT_NPROC", spec.nproc)?;
    set(Resource::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING", SIGPENDING)?;
    // Locked memory and POSIX message queues are counted per user on the
    // host; the jail needs neither (mlock and mq_open are also refused by
    // seccomp), so none of either.
    set(Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", 0)?;
    set(Resource::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE", 0)?;
    Ok(format!(
        "core 0, fsize {} MiB, nofile {} (zygote), nproc {}, sigpending {SIGPENDING}, memlock 0, msgqueue 0; per worker: cpu seconds, nofile",
        spec.fsize_bytes >> 20,
        nofile,
        spec.nproc
    ))
}
