//! How much a run does at once when the user does not say: datasets at a
//! time (`--jobs`) and questions in flight per dataset (`--concurrency`),
//! from the memory the machine has available now and what a zygote and a
//! worker were measured to cost (`csv-agent sandbox profile`, the memory
//! section of `cargo bench --bench jail`; docs/architecture.md, "Capacity").
//!
//! A leaf module: numbers in, a plan out (and MemAvailable read from
//! procfs). The CLI prints the plan at start.

use std::fmt;

/// What one sandbox costs, as measured with the default task of
/// `csv-agent sandbox profile` in every worker (docs/architecture.md,
/// "Memory and start-up"): a line through penguins (15 kB: a cold zygote
/// 128 MiB of Pss, a worker 13.5 MiB at 64 workers), which the generated
/// 20,000-row CSV (1.6 MB: 130.7 and 16.1 MiB) sits on, and the 50 MB CSV
/// (195.5 and 72 MiB, measured before the zygote prepared its heap for
/// sharing, so on the safe side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// A zygote (the data stack imported, the CSV loaded) as a cold sandbox
    /// measures it: its share of the image's pages included, bytes.
    pub zygote_base: u64,
    /// Its growth per byte of CSV (the loaded frame and the parser's leftovers).
    pub zygote_per_csv_byte: f64,
    /// One more worker forked from the zygote (its marginal Pss), bytes.
    pub worker_base: u64,
    /// Its growth per byte of CSV (what a realistic task allocates on it).
    pub worker_per_csv_byte: f64,
}

/// The measured costs (see [`Costs`]).
pub const MEASURED: Costs = Costs {
    zygote_base: 128 << 20,
    zygote_per_csv_byte: 1.35,
    worker_base: 14 << 20,
    worker_per_csv_byte: 1.2,
};

/// Share of MemAvailable a run plans to use: the rest is the page cache of
/// the image, the supervisor, and the spread of real tasks around the
/// measured one.
pub const MEMORY_SHARE: f64 = 0.7;
/// Never more datasets at once than this by default: beyond it every
/// dataset's zygote start competes for the same CPUs.
pub const MAX_DEFAULT_JOBS: usize = 8;

/// Names the memory a run may plan with, overriding what the machine says
/// (a batch system's allocation, e.g. `$SLURM_MEM_PER_NODE` MiB): bytes,
/// or a number with K/M/G/T (binary units).
pub const MEMORY_ENV: &str = "CSV_AGENT_MEM_AVAILABLE";

/// Where the memory a plan is made from came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    MemAvailable,
    /// The limit of the cgroup this process runs in, less its usage, was
    /// lower than MemAvailable (a container or a batch job's allocation).
    Cgroup,
    /// [`MEMORY_ENV`].
    Environment,
}

/// The memory a run may plan with now: `given` (what [`MEMORY_ENV`] says,
/// read by the caller) when set; otherwise MemAvailable, or the headroom of
/// this process's memory cgroup (its limit, the nearest ancestor's too,
/// less its usage) when that is lower; `fallback` when nothing can be read.
pub fn memory_available(given: Option<u64>, fallback: u64) -> (u64, MemorySource) {
    if let Some(bytes) = given {
        return (bytes, MemorySource::Environment);
    }
    let available = mem_available(fallback);
    match cgroup_headroom() {
        Some(h) if h < available => (h, MemorySource::Cgroup),
        _ => (available, MemorySource::MemAvailable),
    }
}

/// MemAvailable of this machine now (procfs), or `fallback` when it cannot
/// be read.
pub fn mem_available(fallback: u64) -> u64 {
    use procfs::Current;
    procfs::Meminfo::current()
        .ok()
        .and_then(|m| m.mem_available)
        .unwrap_or(fallback)
}

fn read_u64(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Limit less usage of the memory cgroup this process is in (cgroup v1's
/// hierarchical limit; on v2 the lowest `memory.max` up the tree), or None
/// when there is no limit or it cannot be read.
fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_headroom_in(&own, std::path::Path::new("/sys/fs/cgroup"))
}

fn cgroup_headroom_in(own: &str, root: &std::path::Path) -> Option<u64> {
    // v1: "N:memory:/path" (possibly with other controllers in the list).
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let dir = root.join("memory").join(path.trim_start_matches('/'));
            let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
            let limit = stat
                .lines()
                .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
                .and_then(|v| v.trim().parse::<u64>().ok())?;
            let usage = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
            // "No limit" is a page-rounded i64::MAX.
            return (limit < 1 << 60).then(|| limit.saturating_sub(usage));
        }
    }
    // v2: "0::/path"; the tightest memory.max on the way up.
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut best: Option<u64> = None;
    while dir.starts_with(root) {
        if let (Some(max), Some(current)) = (
            read_u64(&dir.join("memory.max")),
            read_u64(&dir.join("memory.current")),
        ) {
            let headroom = max.saturating_sub(current);
            best = Some(best.map_or(headroom, |b| b.min(headroom)));
        }
        if !dir.pop() {
            break;
        }
    }
    best
}

impl Costs {
    pub fn zygote(&self, csv_bytes: u64) -> u64 {
        self.zygote_base + (csv_bytes as f64 * self.zygote_per_csv_byte) as u64
    }

    pub fn worker(&self, csv_bytes: u64) -> u64 {
        self.worker_base + (csv_bytes as f64 * self.worker_per_csv_byte) as u64
    }
}

/// What the plan is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// The memory to plan with, bytes, and where it came from
    /// ([`memory_available`]).
    pub mem_available: u64,
    pub memory_source: MemorySource,
    /// Datasets in the run.
    pub datasets: usize,
    /// The largest dataset's CSV, bytes (every dataset is planned as if it
    /// were this one).
    pub largest_csv: u64,
    /// Workers one question holds at once (the program teacher: its
    /// reference and alternatives, at most 3; the LLM teacher: 1 + N).
    pub workers_per_question: usize,
    /// Questions in flight per dataset that keep the CPUs busy (the program
    /// teacher: 2 per CPU; the LLM teacher, which waits on the model, more).
    pub wanted_concurrency: usize,
    /// `--jobs` and `--concurrency` when given (then not derived).
    pub jobs: Option<usize>,
    pub concurrency: Option<usize>,
}

/// Datasets at a time and questions in flight, with what they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub jobs: usize,
    pub concurrency: usize,
    /// Bytes one dataset is planned to need: its zygote plus its workers
    /// (in flight and pre-forked spares).
    pub per_dataset: u64,
    pub zygote: u64,
    pub worker: u64,
    pub workers_per_dataset: usize,
    pub mem_available: u64,
    pub memory_source: MemorySource,
    /// The bytes the plan may use (MEMORY_SHARE of `mem_available`).
    pub budget: u64,
    /// What set the number of datasets at a time.
    pub jobs_by: Bound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `--jobs` was given.
    Given,
    /// Every dataset runs at once.
    Datasets,
    /// [`MAX_DEFAULT_JOBS`].
    Cap,
    /// The memory budget.
    Memory,
}

/// Pre-forked spare workers a sandbox keeps for `concurrency` questions in
/// flight (the pipeline's policy; docs/architecture.md, "Throughput").
pub fn spare_workers(concurrency: usize) -> usize {
    concurrency.clamp(1, 8)
}

pub fn plan(inputs: &Inputs, costs: &Costs) -> Plan {
    let budget = (inputs.mem_available as f64 * MEMORY_SHARE) as u64;
    let zygote = costs.zygote(inputs.largest_csv);
    let worker = costs.worker(inputs.largest_csv).max(1);
    let per_question = worker * inputs.workers_per_question.max(1) as u64;
    let need = |concurrency: usize| {
        zygote + per_question * concurrency as u64 + worker * spare_workers(concurrency) as u64
    };
    // Questions in flight: what keeps the CPUs busy, fewer when one dataset
    // alone would not fit, never below 1.
    let concurrency = inputs.concurrency.unwrap_or_else(|| {
        let mut c = inputs.wanted_concurrency.max(1);
        while c > 1 && need(c) > budget {
            c -= 1;
        }
        c
    });
    let per_dataset = need(concurrency);
    let datasets = inputs.datasets.max(1);
    let by_memory = ((budget / per_dataset.max(1)) as usize).max(1);
    let (jobs, jobs_by) = match inputs.jobs {
        Some(j) => (j, Bound::Given),
        None => [
            (datasets, Bound::Datasets),
            (MAX_DEFAULT_JOBS, Bound::Cap),
            (by_memory, Bound::Memory),
        ]
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or((1, Bound::Memory)),
    };
    Plan {
        jobs,
        concurrency,
        per_dataset,
        zygote,
        worker,
        workers_per_dataset: inputs.workers_per_question.max(1) * concurrency
            + spare_workers(concurrency),
        mem_available: inputs.mem_available,
        memory_source: inputs.memory_source,
        budget,
        jobs_by,
    }
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.jobs_by {
            Bound::Given => "--jobs",
            Bound::Datasets => "every dataset",
            Bound::Cap => "the default cap",
            Bound::Memory => "memory",
        };
        let memory = match self.memory_source {
            MemorySource::MemAvailable => "MemAvailable",
            MemorySource::Cgroup => "the cgroup's free limit",
            MemorySource::Environment => MEMORY_ENV,
        };
        write!(
            f,
            "{} dataset(s) at a time ({why}), {} questions in flight each; a dataset is planned at {} MiB \
             (zygote {} MiB + {} workers × {} MiB, measured costs) of {} MiB usable ({:.0} % of {memory} {} MiB)",
            self.jobs,
            self.concurrency,
            mib(self.per_dataset),
            mib(self.zygote),
            self.workers_per_dataset,
            mib(self.worker),
            mib(self.budget),
            MEMORY_SHARE * 100.0,
            mib(self.mem_available),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(mem_gib: u64, datasets: usize, csv: u64) -> Inputs {
        Inputs {
            mem_available: mem_gib << 30,
            memory_source: MemorySource::MemAvailable,
            datasets,
            largest_csv: csv,
            workers_per_question: 3,
            wanted_concurrency: 4,
            jobs: None,
            concurrency: None,
        }
    }

    #[test]
    fn a_big_machine_runs_every_dataset_up_to_the_cap() {
        let p = plan(&inputs(22, 4, 15_000), &MEASURED);
        assert_eq!((p.jobs, p.concurrency, p.jobs_by), (4, 4, Bound::Datasets));
        let p = plan(&inputs(22, 40, 15_000), &MEASURED);
        assert_eq!((p.jobs, p.jobs_by), (MAX_DEFAULT_JOBS, Bound::Cap));
        // 4 questions × 3 workers + 4 spares.
        assert_eq!(p.workers_per_dataset, 16);
        assert_eq!(p.per_dataset, p.zygote + 16 * p.worker);
    }

    #[test]
    fn memory_bounds_jobs_then_concurrency() {
        // 50 MB CSVs: a zygote of ~190 MiB, workers of ~70 MiB.
        let p = plan(&inputs(4, 8, 50_000_000), &MEASURED);
        assert_eq!(p.jobs_by, Bound::Memory);
        assert!(p.jobs >= 1 && p.jobs < 8, "{p:?}");
        assert!(p.jobs as u64 * p.per_dataset <= p.budget, "{p:?}");
        // Too little memory for one dataset at 4 questions: fewer in flight.
        let p = plan(&inputs(1, 2, 50_000_000), &MEASURED);
        assert_eq!(p.jobs, 1);
        assert!(p.concurrency < 4, "{p:?}");
        // Never zero, however little memory there is.
        let p = plan(&inputs(0, 2, 50_000_000), &MEASURED);
        assert_eq!((p.jobs, p.concurrency), (1, 1));
    }

    #[test]
    fn given_values_are_kept() {
        let mut i = inputs(1, 8, 50_000_000);
        i.jobs = Some(6);
        i.concurrency = Some(9);
        let p = plan(&i, &MEASURED);
        assert_eq!((p.jobs, p.concurrency, p.jobs_by), (6, 9, Bound::Given));
    }

    #[test]
    fn cgroup_limits_are_read() {
        let root = tempfile::tempdir().expect("tempdir");
        // v1: the hierarchical limit counts, not the group's own.
        let v1 = root.path().join("memory/slurm/job_7");
        std::fs::create_dir_all(&v1).expect("mkdir");
        std::fs::write(
            v1.join("memory.stat"),
            "cache 0\nhierarchical_memory_limit 4294967296\n",
        )
        .expect("write");
        std::fs::write(v1.join("memory.usage_in_bytes"), "1073741824\n").expect("write");
        assert_eq!(
            cgroup_headroom_in("12:memory:/slurm/job_7\n0::/\n", root.path()),
            Some(3 << 30)
        );
        std::fs::write(
            v1.join("memory.stat"),
            "hierarchical_memory_limit 9223372036854771712\n",
        )
        .expect("write");
        assert_eq!(
            cgroup_headroom_in("12:memory:/slurm/job_7\n", root.path()),
            None
        );
        // v2: the tightest memory.max on the way up.
        let pod = root.path().join("kubepods/pod1");
        let leaf = pod.join("c1");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        std::fs::write(pod.join("memory.max"), "2147483648\n").expect("write");
        std::fs::write(pod.join("memory.current"), "536870912\n").expect("write");
        std::fs::write(leaf.join("memory.max"), "max\n").expect("write");
        std::fs::write(leaf.join("memory.current"), "536870912\n").expect("write");
        assert_eq!(
            cgroup_headroom_in("0::/kubepods/pod1/c1\n", root.path()),
            Some(3 << 29)
        );
    }

    #[test]
    fn the_plan_says_what_it_came_from() {
        let line = plan(&inputs(22, 4, 15_000), &MEASURED).to_string();
        assert!(
            line.starts_with("4 dataset(s) at a time (every dataset), 4 questions in flight each"),
            "{line}"
        );
        assert!(line.contains("MemAvailable 22528 MiB"), "{line}");
    }
}
