//! Memory of a sandbox's processes, and what sharing one zygote saves.
//!
//! For the zygote and each live worker this module reads
//! `/proc/<host pid>/smaps_rollup` (procfs) into Rss, Pss, Uss and the shared
//! pages, adds what each cgroup is charged, and builds the comparison that
//! `csv-agent sandbox profile` and `cargo bench` report: N workers forked from
//! one zygote against independent ("cold") sandboxes.
//!
//! Which figure means what:
//! - **Rss** counts every resident page in full, in every process that maps it;
//!   summed over processes it counts shared pages many times.
//! - **Pss** splits a page shared by k processes as 1/k to each, so Pss sums to
//!   what the processes really use together.
//! - **Uss** (private clean + private dirty) is what a process alone would free.
//! - **cgroup usage**: the kernel charges a page to the group that touched it
//!   first, so the zygote's imports and loaded CSV stay on the zygote's group
//!   and a worker's group shows only what the worker allocated itself. Pss and
//!   Uss are the fair per-worker figures.
//!
//! Reading another process's smaps_rollup needs ptrace read access. The
//! zygote and its workers are non-dumpable, which the kernel still lets
//! through for a caller with CAP_SYS_PTRACE over the jail's user namespace:
//! root, or the user that created that namespace (the unprivileged case).
//!
//! This module only reads; it never signals or changes a process.

mod mixed_csv;
mod profile;

use std::path::PathBuf;
use std::time::Duration;

use procfs::process::{Process, SmapsRollup};
use procfs::{FromRead, ProcError};
use serde::Serialize;

use super::{CellStatus, Sandbox, SandboxError, SandboxOptions, Worker};

pub use mixed_csv::{
    ensure_mixed_csv, mixed_csv_name, write_mixed_csv, MIXED_CSV_ROWS, MIXED_CSV_VERSION,
};
pub use profile::*;

/// The default profiling task: describe, missing values, a groupby
/// aggregation, a rank correlation and a scipy test, on any CSV.
pub const DEFAULT_TASK: &str = include_str!("../profile_task.py");

/// What the figures mean; part of every report.
pub const NOTE: &str = "Pss splits each shared page evenly among the processes that map it, so it \
sums to the memory they use together; Uss (private clean + private dirty) is what one process \
alone would free; Rss counts shared pages in full in every process. A cgroup is charged for a \
page by the group that touched it first: the zygote's imports and loaded CSV stay on the \
zygote's group, so a worker's cgroup usage is only what it allocated itself. Pss and Uss are the \
fair per-worker figures.";

/// How the cold baseline and the sharing ratio are defined; part of every profile.
pub const COLD_BASELINE_DEFINITION: &str = "cold baseline = N x the footprint of one independent \
sandbox (its own jail, imports and CSV, the same task run in its one worker), where the footprint \
is that sandbox's zygote Pss + worker Pss, measured in the same run while it was the only sandbox \
alive (the two share pages only with each other, so the sum is what one independent jailed \
process that imported the stack, loaded the CSV and ran the task costs); sharing ratio = cold \
baseline / total Pss of the zygote and its N workers";

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("process {pid} is gone (no memory map to read)")]
    Gone { pid: u32 },
    #[error("reading /proc/{pid}/smaps_rollup was refused: the jail's processes are non-dumpable, so only root or the user that owns the jail's user namespace may read them; run the profile as that user")]
    PermissionDenied { pid: u32 },
    #[error("reading /proc/{pid}/smaps_rollup: {detail}")]
    Read { pid: u32, detail: String },
    #[error("parsing smaps_rollup{}: {detail}", .pid.map(|p| format!(" of process {p}")).unwrap_or_default())]
    Parse { pid: Option<u32>, detail: String },
    #[error("the zygote's host pid is unknown: the jail has exited")]
    NoZygote,
    #[error("the task failed in worker {worker_id} ({status}): {detail}; fix the task (it must run cleanly on this CSV) and try again")]
    Task {
        worker_id: u64,
        status: &'static str,
        detail: String,
    },
    #[error("the cold sandbox's report lists {workers} workers, expected exactly one")]
    ColdShape { workers: usize },
    #[error("a task runner stopped: {0}")]
    Join(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl MemoryError {
    /// The process no longer exists (it exited between listing and reading).
    pub fn is_gone(&self) -> bool {
        matches!(self, MemoryError::Gone { .. })
    }
}

// ------------------------------------------------------------------ smaps

/// One process's `smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Smaps {
    pub rss: u64,
    pub pss: u64,
    pub shared_clean: u64,
    pub shared_dirty: u64,
    pub private_clean: u64,
    pub private_dirty: u64,
    /// Swapped-out anonymous memory (0 without swap, and on kernels that omit it).
    pub swap: u64,
}

impl Smaps {
    /// Unique set size: the pages no other process maps.
    pub fn uss(&self) -> u64 {
        self.private_clean + self.private_dirty
    }

    /// Parse the text of a `smaps_rollup` file (fixtures, or a file read elsewhere).
    pub fn parse(text: &str) -> Result<Smaps, MemoryError> {
        let rollup = SmapsRollup::from_read(text.as_bytes()).map_err(|e| MemoryError::Parse {
            pid: None,
            detail: e.to_string(),
        })?;
        Smaps::from_rollup(rollup).map_err(|detail| MemoryError::Parse { pid: None, detail })
    }

    /// Read `/proc/<pid>/smaps_rollup` of a host pid.
    pub fn read(pid: u32) -> Result<Smaps, MemoryError> {
        let raw = i32::try_from(pid).map_err(|_| MemoryError::Read {
            pid,
            detail: "not a valid pid".to_string(),
        })?;
        let rollup = Process::new(raw)
            .and_then(|p| p.smaps_rollup())
            .map_err(|e| read_error(pid, e))?;
        match Smaps::from_rollup(rollup) {
            Ok(s) => Ok(s),
            // A zombie (exited, not yet reaped) has no memory map left.
            Err(_) if !std::path::Path::new(&format!("/proc/{pid}/exe")).exists() => {
                Err(MemoryError::Gone { pid })
            }
            Err(detail) => Err(MemoryError::Parse {
                pid: Some(pid),
                detail,
            }),
        }
    }

    fn from_rollup(rollup: SmapsRollup) -> Result<Smaps, String> {
        let maps = &rollup.memory_map_rollup.0;
        let map = match maps.as_slice() {
            [one] => &one.extension.map,
            [] => return Err("no [rollup] line: the process has no memory map".to_string()),
            more => {
                return Err(format!(
                    "{} mappings where one rollup was expected",
                    more.len()
                ))
            }
        };
        // procfs stores `kB` figures already multiplied to bytes.
        let field = |name: &str| map.get(name).copied();
        let need = |name: &str| field(name).ok_or_else(|| format!("no {name} field"));
        Ok(Smaps {
            rss: need("Rss")?,
            pss: need("Pss")?,
            shared_clean: need("Shared_Clean")?,
            shared_dirty: need("Shared_Dirty")?,
            private_clean: need("Private_Clean")?,
            private_dirty: need("Private_Dirty")?,
            swap: field("Swap").unwrap_or(0),
        })
    }
}

fn read_error(pid: u32, e: ProcError) -> MemoryError {
    match e {
        ProcError::NotFound(_) => MemoryError::Gone { pid },
        ProcError::PermissionDenied(_) => MemoryError::PermissionDenied { pid },
        // smaps_rollup of a process whose mm is already gone fails with ESRCH.
        ProcError::Io(io, _) if io.raw_os_error() == Some(libc::ESRCH) => MemoryError::Gone { pid },
        ProcError::Io(io, _) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            MemoryError::PermissionDenied { pid }
        }
        other => MemoryError::Read {
            pid,
            detail: other.to_string(),
        },
    }
}

// ------------------------------------------------------------------ report

/// Which process of a sandbox a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    Zygote,
    Worker { worker_id: u64 },
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Zygote => write!(f, "zygote"),
            Role::Worker { worker_id } => write!(f, "worker {worker_id}"),
        }
    }
}

/// One process's memory, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    #[serde(flatten)]
    pub role: Role,
    pub host_pid: u32,
    pub rss: u64,
    pub pss: u64,
    pub uss: u64,
    pub shared_clean: u64,
    pub shared_dirty: u64,
    pub swap: u64,
    /// Bytes charged to the process's own cgroup (None without cgroups).
    pub cgroup_usage: Option<u64>,
}

impl ProcessMemory {
    pub fn new(role: Role, host_pid: u32, smaps: Smaps, cgroup_usage: Option<u64>) -> Self {
        ProcessMemory {
            role,
            host_pid,
            rss: smaps.rss,
            pss: smaps.pss,
            uss: smaps.uss(),
            shared_clean: smaps.shared_clean,
            shared_dirty: smaps.shared_dirty,
            swap: smaps.swap,
            cgroup_usage,
        }
    }
}

/// A process that was listed but could not be measured (it exited between
/// listing and reading).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    #[serde(flatten)]
    pub role: Role,
    pub host_pid: u32,
    pub reason: String,
}

/// Sums over the measured processes, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub processes: usize,
    pub rss: u64,
    pub pss: u64,
    pub uss: u64,
    pub swap: u64,
    /// Sum of the cgroup usages, when every process has a group.
    pub cgroup_usage: Option<u64>,
}

impl Totals {
    pub fn of(processes: &[ProcessMemory]) -> Totals {
        Totals {
            processes: processes.len(),
            rss: processes.iter().map(|p| p.rss).sum(),
            pss: processes.iter().map(|p| p.pss).sum(),
            uss: processes.iter().map(|p| p.uss).sum(),
            swap: processes.iter().map(|p| p.swap).sum(),
            cgroup_usage: processes.iter().map(|p| p.cgroup_usage).sum(),
        }
    }
}

/// The memory of one sandbox: the zygote and the workers asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub processes: Vec<ProcessMemory>,
    pub missing: Vec<Missing>,
    pub totals: Totals,
    pub note: &'static str,
}

impl MemoryReport {
    /// Measure the zygote and `workers` of `sandbox`. A worker that is gone
    /// by the time it is read is listed under `missing`; a zygote that is
    /// gone (or any other failure) is an error.
    pub fn collect<'a>(
        sandbox: &Sandbox,
        workers: impl IntoIterator<Item = &'a Worker>,
    ) -> Result<MemoryReport, MemoryError> {
        let zygote_pid = sandbox.zygote_host_pid().ok_or(MemoryError::NoZygote)?;
        let zygote = Smaps::read(zygote_pid)?;
        let mut processes = vec![ProcessMemory::new(
            Role::Zygote,
            zygote_pid,
            zygote,
            sandbox.zygote_cgroup_memory(),
        )];
        let mut missing = Vec::new();
        for worker in workers {
            let role = Role::Worker {
                worker_id: worker.id,
            };
            match Smaps::read(worker.host_pid) {
                Ok(smaps) => processes.push(ProcessMemory::new(
                    role,
                    worker.host_pid,
                    smaps,
                    worker.cgroup_memory(),
                )),
                Err(e) if e.is_gone() => missing.push(Missing {
                    role,
                    host_pid: worker.host_pid,
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(MemoryReport::from_rows(processes, missing))
    }

    pub fn from_rows(processes: Vec<ProcessMemory>, missing: Vec<Missing>) -> MemoryReport {
        MemoryReport {
            totals: Totals::of(&processes),
            processes,
            missing,
            note: NOTE,
        }
    }

    pub fn zygote(&self) -> Option<&ProcessMemory> {
        self.processes.iter().find(|p| p.role == Role::Zygote)
    }

    pub fn workers(&self) -> impl Iterator<Item = &ProcessMemory> {
        self.processes
            .iter()
            .filter(|p| matches!(p.role, Role::Worker { .. }))
    }
}

// ------------------------------------------------------------------ sharing

/// Average or maximum of the workers' figures, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub rss: u64,
    pub pss: u64,
    pub uss: u64,
}

/// What one independent sandbox costs: its zygote and its one worker, after
/// the task ran, measured while it was the only sandbox alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColdFootprint {
    /// Zygote Pss + worker Pss.
    pub footprint: u64,
    pub zygote_pss: u64,
    pub worker_pss: u64,
    /// Zygote Rss + worker Rss (counts their shared pages twice).
    pub rss_sum: u64,
    pub report: MemoryReport,
}

impl ColdFootprint {
    pub fn from_report(report: MemoryReport) -> Result<ColdFootprint, MemoryError> {
        let workers: Vec<&ProcessMemory> = report.workers().collect();
        let (Some(zygote), [worker]) = (report.zygote(), workers.as_slice()) else {
            return Err(MemoryError::ColdShape {
                workers: workers.len(),
            });
        };
        Ok(ColdFootprint {
            footprint: zygote.pss + worker.pss,
            zygote_pss: zygote.pss,
            worker_pss: worker.pss,
            rss_sum: zygote.rss + worker.rss,
            report: report.clone(),
        })
    }
}

/// One sandbox with N workers against N cold sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SharingPoint {
    /// Workers measured (those listed in the report).
    pub workers: usize,
    pub zygote_rss: u64,
    pub zygote_pss: u64,
    pub worker_avg: Figures,
    pub worker_max: Figures,
    /// Pss of the zygote plus its workers.
    pub total_pss: u64,
    /// Workers × the cold footprint.
    pub cold_baseline: u64,
    /// Cold baseline / total Pss.
    pub sharing_ratio: f64,
    pub report: MemoryReport,
}

impl SharingPoint {
    pub fn new(report: MemoryReport, cold_footprint: u64) -> Result<SharingPoint, MemoryError> {
        let zygote = report.zygote().ok_or(MemoryError::NoZygote)?;
        let workers: Vec<&ProcessMemory> = report.workers().collect();
        let n = workers.len() as u64;
        let avg = |f: fn(&ProcessMemory) -> u64| {
            workers
                .iter()
                .map(|w| f(w))
                .sum::<u64>()
                .checked_div(n)
                .unwrap_or(0)
        };
        let max = |f: fn(&ProcessMemory) -> u64| workers.iter().map(|w| f(w)).max().unwrap_or(0);
        let total_pss = report.totals.pss;
        let cold_baseline = n * cold_footprint;
        Ok(SharingPoint {
            workers: workers.len(),
            zygote_rss: zygote.rss,
            zygote_pss: zygote.pss,
            worker_avg: Figures {
                rss: avg(|p| p.rss),
                pss: avg(|p| p.pss),
                uss: avg(|p| p.uss),
            },
            worker_max: Figures {
                rss: max(|p| p.rss),
                pss: max(|p| p.pss),
                uss: max(|p| p.uss),
            },
            total_pss,
            cold_baseline,
            sharing_ratio: ratio(cold_baseline, total_pss),
            report,
        })
    }
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The worker counts measured on the way to `n` for a chart: 1, n/8, n/4,
/// n/2 and n (each at least 1, without repeats).
pub fn checkpoints(n: usize) -> Vec<usize> {
    let mut points: Vec<usize> = [1, n / 8, n / 4, n / 2, n]
        .into_iter()
        .filter(|&k| k >= 1 && k <= n)
        .collect();
    points.sort_unstable();
    points.dedup();
    points
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
