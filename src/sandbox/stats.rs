//! How workers were obtained: forks (timed from the request to the
//! worker's hello, which covers the zygote's fork and the worker's own
//! jail set-up) and acquisitions served by a pre-forked spare or by a fork
//! while the task waited. Counted per sandbox and for the whole process
//! (the pipeline bench reads the process totals).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerStats {
    /// Workers forked (spares included).
    pub forks: u64,
    /// Summed wall time of those forks, from request to hello.
    pub fork_seconds: f64,
    /// Tasks that got a pre-forked spare.
    pub from_spares: u64,
    /// Tasks that waited for a fork of their own.
    pub fresh: u64,
    /// CPU seconds (user + system) of zygotes themselves, read as they
    /// were shut down: importing the stack, loading the data, and every
    /// fork (the kernel copies the address space in the parent).
    pub zygote_cpu: f64,
    /// CPU seconds of the workers those zygotes had reaped: their jail
    /// set-up, their cells, and tearing their address space down at exit.
    pub worker_cpu: f64,
}

impl WorkerStats {
    /// Mean fork time in milliseconds (0 without forks).
    pub fn mean_fork_ms(&self) -> f64 {
        if self.forks == 0 {
            0.0
        } else {
            1000.0 * self.fork_seconds / self.forks as f64
        }
    }

    /// The difference `self - earlier` (counters only grow).
    pub fn since(&self, earlier: &WorkerStats) -> WorkerStats {
        WorkerStats {
            forks: self.forks.saturating_sub(earlier.forks),
            fork_seconds: (self.fork_seconds - earlier.fork_seconds).max(0.0),
            from_spares: self.from_spares.saturating_sub(earlier.from_spares),
            fresh: self.fresh.saturating_sub(earlier.fresh),
            zygote_cpu: (self.zygote_cpu - earlier.zygote_cpu).max(0.0),
            worker_cpu: (self.worker_cpu - earlier.worker_cpu).max(0.0),
        }
    }
}

impl std::fmt::Display for WorkerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let acquired = self.from_spares + self.fresh;
        write!(
            f,
            "{} workers forked ({:.1} ms each on average, request to hello); {} of {} tasks got a pre-forked spare",
            self.forks,
            self.mean_fork_ms(),
            self.from_spares,
            acquired
        )?;
        if self.zygote_cpu + self.worker_cpu > 0.0 {
            write!(
                f,
                "; CPU: zygote {:.1} s, workers {:.1} s",
                self.zygote_cpu, self.worker_cpu
            )?;
        }
        Ok(())
    }
}

pub(super) struct Counters {
    forks: AtomicU64,
    fork_ns: AtomicU64,
    from_spares: AtomicU64,
    fresh: AtomicU64,
    zygote_cpu_ns: AtomicU64,
    worker_cpu_ns: AtomicU64,
}

static PROCESS: Counters = Counters::new();

impl Counters {
    pub(super) const fn new() -> Counters {
        Counters {
            forks: AtomicU64::new(0),
            fork_ns: AtomicU64::new(0),
            from_spares: AtomicU64::new(0),
            fresh: AtomicU64::new(0),
            zygote_cpu_ns: AtomicU64::new(0),
            worker_cpu_ns: AtomicU64::new(0),
        }
    }

    pub(super) fn forked(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        for c in [self, &PROCESS] {
            c.forks.fetch_add(1, Ordering::Relaxed);
            c.fork_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    pub(super) fn acquired(&self, spare: bool) {
        for c in [self, &PROCESS] {
            if spare {
                c.from_spares.fetch_add(1, Ordering::Relaxed);
            } else {
                c.fresh.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The CPU of a zygote (`host_pid`) and of the workers it reaped, read
    /// from procfs before it is shut down.
    pub(super) fn zygote_ended(&self, host_pid: u32) {
        let Ok(stat) = procfs::process::Process::new(host_pid as i32).and_then(|p| p.stat()) else {
            return;
        };
        let tick_ns = 1e9 / procfs::ticks_per_second() as f64;
        let own = ((stat.utime + stat.stime) as f64 * tick_ns) as u64;
        let children = ((stat.cutime + stat.cstime).max(0) as f64 * tick_ns) as u64;
        for c in [self, &PROCESS] {
            c.zygote_cpu_ns.fetch_add(own, Ordering::Relaxed);
            c.worker_cpu_ns.fetch_add(children, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            forks: self.forks.load(Ordering::Relaxed),
            fork_seconds: self.fork_ns.load(Ordering::Relaxed) as f64 / 1e9,
            from_spares: self.from_spares.load(Ordering::Relaxed),
            fresh: self.fresh.load(Ordering::Relaxed),
            zygote_cpu: self.zygote_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
            worker_cpu: self.worker_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Every sandbox of this process, since it started.
pub fn process_totals() -> WorkerStats {
    PROCESS.snapshot()
}
