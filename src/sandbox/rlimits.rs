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
    set(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", spec.nofile)?;
    set(Resource::RLIMIT_NPROC, "RLIMIT_NPROC", spec.nproc)?;
    Ok(format!(
        "core 0, fsize {} MiB, nofile {}, nproc {}; per worker: cpu seconds",
        spec.fsize_bytes >> 20,
        spec.nofile,
        spec.nproc
    ))
}
