//! Episodes per second of the main job: the program teacher over the shipped
//! datasets, run in-process exactly as `csv-agent run --fresh` runs it, and
//! where the time goes — zygote start, cell execution inside workers, fork +
//! protocol (trace wall time minus execution), and the supervisor's own CPU.
//!
//! `cargo bench --bench pipeline` (3 runs; `-- --runs N` for more,
//! `-- --max-questions N` for a shorter run, `-- --spares N` to size the
//! pre-forked worker pool instead of the pipeline's policy).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use csv_agent::datasets::Registry;
use csv_agent::pipeline::{self, RunSettings, Silent};
use csv_agent::sandbox::image::{self, ImageProgress, ImageSpec};
use csv_agent::sandbox::{Sandbox, SandboxOptions};
use csv_agent::schema::Episode;
use csv_agent::store;
use csv_agent::teacher::ProgramTeacher;

struct Quiet;
impl ImageProgress for Quiet {
    fn step(&self, message: &str) {
        eprintln!("image: {message}");
    }
    fn line(&self, _: &str) {}
}

fn init_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_csv-agent"))
}

/// user + system CPU seconds of this process (the supervisor: jails are
/// other processes).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here offsets 11 and 12.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

struct RunFigures {
    wall: f64,
    episodes: usize,
    verified: usize,
    traces: usize,
    cells: usize,
    trace_wall: f64,
    worker_wait: f64,
    execution: f64,
    supervisor_cpu: f64,
    workers: csv_agent::sandbox::WorkerStats,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let runs = flag("--runs").unwrap_or(3).max(1);
    let max_questions = flag("--max-questions");
    // Pre-forked workers per sandbox (default: the pipeline's policy).
    let spares = flag("--spares");
    let image = image::ensure(&ImageSpec::from_env(), &Quiet).expect("the image builds");
    let registry =
        Registry::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")).expect("registry");
    let datasets = registry.list().expect("datasets");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let out = tempfile::tempdir().expect("tempdir");

    // Zygote start alone, once per dataset.
    let mut starts = Vec::new();
    for d in &datasets {
        let mut opts = SandboxOptions::new(&d.csv, image.clone()).expect("options");
        opts.init_program = init_program();
        let t = Instant::now();
        let sandbox = runtime
            .block_on(Sandbox::start(opts))
            .expect("sandbox starts");
        starts.push(t.elapsed().as_secs_f64());
        runtime.block_on(sandbox.shutdown());
    }

    let jobs = datasets.len().min(4);
    let concurrency = 2 * cpus;
    println!(
        "pipeline bench: program teacher, {} datasets, jobs {jobs}, {concurrency} questions in flight per dataset, {} spare workers per sandbox, {cpus} CPUs, {runs} runs{}",
        datasets.len(),
        spares.unwrap_or_else(|| csv_agent::capacity::spare_workers(concurrency)),
        max_questions.map(|m| format!(", at most {m} questions per dataset")).unwrap_or_default()
    );
    println!(
        "{:>4} {:>8} {:>9} {:>9} {:>11}",
        "run", "wall s", "episodes", "verified", "episodes/s"
    );
    let mut figures = Vec::new();
    for i in 0..runs {
        let settings = RunSettings {
            datasets: datasets.clone(),
            unusable: Vec::new(),
            out: out.path().to_path_buf(),
            max_questions,
            jobs,
            question_concurrency: concurrency,
            spare_workers: spares,
            shard: None,
            fresh: true,
            image: image.clone(),
            allow_degraded: false,
            questions_only: false,
            templates: None,
            init_program: Some(init_program()),
            sources: Default::default(),
            limits: Default::default(),
            recovery: Default::default(),
            serve: None,
        };
        let cpu_before = own_cpu();
        let workers_before = csv_agent::sandbox::process_totals();
        let t = Instant::now();
        let summary = runtime
            .block_on(pipeline::run(
                settings,
                Arc::new(ProgramTeacher),
                Arc::new(Silent),
            ))
            .expect("the run completes");
        let wall = t.elapsed().as_secs_f64();
        let supervisor_cpu = own_cpu() - cpu_before;
        let episodes: Vec<Episode> =
            store::read_jsonl(&out.path().join(store::EPISODES_FILE)).expect("episodes");
        let traces: Vec<&csv_agent::schema::Trace> = episodes
            .iter()
            .flat_map(|e| std::iter::once(&e.gold_trace).chain(e.consistency_traces.iter()))
            .collect();
        let f = RunFigures {
            wall,
            episodes: episodes.len(),
            verified: summary.verified as usize,
            traces: traces.len(),
            cells: traces.iter().map(|t| t.turns.len()).sum(),
            trace_wall: traces.iter().map(|t| t.elapsed).sum(),
            worker_wait: traces.iter().map(|t| t.worker_wait).sum(),
            execution: traces
                .iter()
                .flat_map(|t| t.turns.iter())
                .map(|turn| turn.execution.elapsed_ms / 1000.0)
                .sum(),
            supervisor_cpu,
            workers: csv_agent::sandbox::process_totals().since(&workers_before),
        };
        println!(
            "{:>4} {:>8.1} {:>9} {:>9} {:>11.2}",
            i + 1,
            f.wall,
            f.episodes,
            f.verified,
            f.episodes as f64 / f.wall
        );
        figures.push(f);
    }
    let med_wall = median(figures.iter().map(|f| f.wall).collect());
    let rate = median(figures.iter().map(|f| f.episodes as f64 / f.wall).collect());
    // The run whose wall time is the median, for the breakdown.
    let f = figures
        .iter()
        .min_by(|a, b| {
            (a.wall - med_wall)
                .abs()
                .total_cmp(&(b.wall - med_wall).abs())
        })
        .expect("at least one run");
    let overhead = (f.trace_wall - f.worker_wait - f.execution).max(0.0);
    println!("\nmedian: {med_wall:.1} s per run, {rate:.2} episodes/s");
    println!("where the time goes (median run; traces of a question run concurrently, so sums exceed wall time):");
    println!(
        "  zygote start per dataset        p50 {:.2} s (of {} datasets, started in parallel by the run)",
        median(starts.clone()),
        starts.len()
    );
    println!(
        "  traces                          {} traces, {} cells, {:.1} s summed wall",
        f.traces, f.cells, f.trace_wall
    );
    println!(
        "  cell execution in workers       {:.1} s ({:.0} % of trace time, {:.1} ms per cell)",
        f.execution,
        100.0 * f.execution / f.trace_wall.max(1e-9),
        1000.0 * f.execution / f.cells.max(1) as f64
    );
    println!(
        "  waiting for a worker (fork)     {:.1} s ({:.0} %, {:.1} ms per trace)",
        f.worker_wait,
        100.0 * f.worker_wait / f.trace_wall.max(1e-9),
        1000.0 * f.worker_wait / f.traces.max(1) as f64
    );
    println!(
        "  forks                           {} workers for {} traces, {:.1} ms each (request to hello; {:.1} s summed); {} of {} tasks took a pre-forked spare",
        f.workers.forks,
        f.traces,
        f.workers.mean_fork_ms(),
        f.workers.fork_seconds,
        f.workers.from_spares,
        f.workers.from_spares + f.workers.fresh
    );
    println!(
        "  CPU of the jails                zygotes {:.1} s (imports, loading, forks), workers {:.1} s (set-up, cells, exit); supervisor below",
        f.workers.zygote_cpu, f.workers.worker_cpu
    );
    println!(
        "  protocol + scheduling (rest)    {:.1} s ({:.0} %, {:.1} ms per cell)",
        overhead,
        100.0 * overhead / f.trace_wall.max(1e-9),
        1000.0 * overhead / f.cells.max(1) as f64
    );
    println!(
        "  supervisor CPU (user + sys)     {:.2} s ({:.1} ms per episode)",
        f.supervisor_cpu,
        1000.0 * f.supervisor_cpu / f.episodes.max(1) as f64
    );
}
