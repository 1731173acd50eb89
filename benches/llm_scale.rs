//! How many LLM-teacher traces one machine keeps in flight: the pipeline
//! (`csv_agent::pipeline::run`, as `csv-agent run --teacher llm` runs it)
//! against a loopback OpenAI-compatible server that answers every request
//! after a fixed latency (1 s by default), with a stateless three-turn
//! script (look at `df.shape`; compute a count and `hook` it; `submit`).
//! Each trace holds one forked worker for its whole conversation, so the
//! traces in flight are the live workers; the bench measures them while
//! the run goes on.
//!
//! Load: `--copies` copies of each shipped dataset (a copy is the same CSV
//! with trailing blank lines, so it has its own content hash and question
//! ids; pandas skips the blank lines), all `--jobs` at once,
//! `--concurrency` questions in flight per dataset, each question 1 gold +
//! `--n` consistency traces.
//!
//! Sampled every 250 ms from a thread of its own: the workers (the live,
//! non-zombie children of every zygote of this process, found through
//! `/proc/<pid>/task/*/children`), the requests waiting at the server, the
//! host's MemAvailable and CPU, this process's RSS; every `--pss-every`
//! ticks the Pss (`smaps_rollup`) of every zygote and worker.
//!
//! Supervisor CPU per turn: this process's user + system CPU over the run
//! (`getrusage(RUSAGE_SELF)`) minus the server's thread (the server runs on
//! a current-thread tokio runtime of its own) and the sampler's thread
//! (both read with `RUSAGE_THREAD`), divided by the chat requests served.
//!
//! Questions (ground truth, CPU-heavy) are made before the measured run by
//! a questions-only run and cached in `target/bench-data/llm-scale/`; the
//! measured run reuses them (it checks that it did). The run is CPU-bound,
//! so the bench first waits (up to 10 min) for the host to be idle.
//!
//! Verdict: traces in flight = the plateau median of live workers less
//! every spare the sandboxes may hold (a lower bound), against 256; memory
//! = the drop of the host's MemAvailable at the peak, against 24 GiB.
//!
//! `cargo bench --bench llm_scale` (`-- --help` lists the knobs).

#[path = "../tests/support/openai_server.rs"]
mod openai_server;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use csv_agent::datasets::{Dataset, Registry};
use csv_agent::llm::{Client, LlmSettings};
use csv_agent::pipeline::{self, Reporter, RunSettings};
use csv_agent::sandbox::image::{self, Image, ImageProgress, ImageSpec};
use csv_agent::sandbox::memory::Smaps;
use csv_agent::sandbox::{Sandbox, SandboxOptions};
use csv_agent::schema::{Episode, Trace};
use csv_agent::store;
use csv_agent::teacher::agent::AgentConfig;
use csv_agent::teacher::{LlmTeacher, LlmTeacherConfig, NConsistency, ProgramTeacher};
use openai_server::{Options, Request, Response, Server};

const TARGET_TRACES: f64 = 256.0;
const TARGET_MEMORY_GIB: f64 = 24.0;
const TICK: Duration = Duration::from_millis(250);
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

const HELP: &str = "cargo bench --bench llm_scale -- [options]
  --copies K          copies of each shipped dataset (default 3: 12 datasets)
  --jobs J            datasets at once (default: all of them)
  --concurrency Q     questions in flight per dataset (default 4)
  --n N               consistency traces per question (default 6)
  --turns T           replies per trace, 2 or more (default 3)
  --latency-ms MS     the server's latency per reply (default 1000)
  --max-questions M   questions per dataset (default 39, the smallest dataset's count)
  --pss-every TICKS   read Pss every TICKS x 250 ms (default 80: 20 s; a
                      reading walks every worker's page tables, ~2-4 ms each)
  --no-wait           start the measured run even if the host is busy
  --fresh-questions   make the questions again instead of using the cache";

// ------------------------------------------------------------------ settings

#[derive(Debug, Clone)]
struct Config {
    copies: usize,
    jobs: Option<usize>,
    concurrency: usize,
    n: u32,
    turns: usize,
    latency: Duration,
    max_questions: usize,
    pss_every: u64,
    fresh_questions: bool,
    /// Wait (up to 10 min) for the host to be idle before the measured run.
    wait_quiet: bool,
}

impl Config {
    fn from_args() -> Config {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{HELP}");
            std::process::exit(0);
        }
        let flag = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .map(|v| {
                    v.parse::<u64>()
                        .unwrap_or_else(|_| panic!("{name} takes a whole number, not `{v}`"))
                })
        };
        Config {
            copies: flag("--copies").unwrap_or(3).max(1) as usize,
            jobs: flag("--jobs").map(|j| j.max(1) as usize),
            concurrency: flag("--concurrency").unwrap_or(4).max(1) as usize,
            n: flag("--n").unwrap_or(6) as u32,
            turns: flag("--turns").unwrap_or(3).max(2) as usize,
            latency: Duration::from_millis(flag("--latency-ms").unwrap_or(1000)),
            max_questions: flag("--max-questions").unwrap_or(39).max(1) as usize,
            pss_every: flag("--pss-every").unwrap_or(80).max(1),
            fresh_questions: args.iter().any(|a| a == "--fresh-questions"),
            wait_quiet: !args.iter().any(|a| a == "--no-wait"),
        }
    }
}

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

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/llm-scale")
}

// ------------------------------------------------------------------ the model

/// A stateless solution for any question, picked by the turn number alone
/// so that any number of conversations are served at once. The last reply
/// recomputes what it submits, so a worker lost in between changes nothing.
fn script(turns: usize) -> impl Fn(&Request) -> Response + Send + Sync {
    const LOOK: &str = "First I look at the size of the data.\n\n```python\nprint(df.shape)\n```";
    const COMPUTE: &str = "I count the rows without missing values.\n\n```python\nn_complete = int(df.dropna().shape[0])\nhook(n_complete, 'n_complete = int(df.dropna().shape[0])', name='n_complete')\nprint(n_complete)\n```";
    const SUBMIT: &str = "I submit the count.\n\n```python\nsubmit(int(df.dropna().shape[0]))\n```";
    move |req: &Request| {
        let turn = req.n_assistant();
        if turn + 1 >= turns {
            Response::reply(SUBMIT)
        } else if turn + 2 == turns {
            Response::reply(COMPUTE)
        } else {
            Response::reply(LOOK)
        }
    }
}

/// The loopback server on a thread of its own (a current-thread runtime),
/// so that its CPU can be told apart from the supervisor's.
struct ServerThread {
    server: Arc<Server>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<f64>,
}

impl ServerThread {
    fn start(
        latency: Duration,
        script: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> ServerThread {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loopback-llm".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the server's runtime");
                runtime.block_on(async move {
                    let options = Options {
                        latency,
                        // Long run: keep counts only, not every request.
                        record_requests: false,
                    };
                    let server = Server::start_with(options, script).await;
                    tx.send(Arc::new(server)).expect("the bench waits for it");
                    let _ = stopped.await;
                });
                thread_cpu()
            })
            .expect("spawn the server thread");
        let server = rx.recv().expect("the server starts");
        ServerThread {
            server,
            stop,
            thread,
        }
    }

    /// Stops the server; returns its thread's CPU seconds.
    fn stop(self) -> f64 {
        let _ = self.stop.send(());
        self.thread.join().expect("the server thread")
    }
}

// ------------------------------------------------------------------ /proc

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// user + system CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    rusage(libc::RUSAGE_THREAD)
}

/// user + system CPU seconds of this process, all threads, no children.
fn process_cpu() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

/// user + system CPU seconds of the children this process has reaped, and
/// of their reaped descendants: the jail monitors, zygotes and workers.
fn children_cpu() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}

/// (own, reaped children's) user + system CPU seconds of a process.
fn proc_cpu(pid: u32) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<f64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14–17 of stat; here 11–14.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let f = |i: usize| fields.get(i).copied().unwrap_or(0.0) / hz;
    Some((f(11) + f(12), f(13) + f(14)))
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = fs::read_to_string(path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The state letter of `/proc/<pid>/stat` (`Z` for a zombie).
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn is_zygote(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|arg| arg.ends_with(b"zygote.py")))
        .unwrap_or(false)
}

/// The zygotes started by this process: each is pid 1 of a jail, the child
/// of a jail monitor (`csv-agent __jail-init`), which is our child.
fn zygotes() -> Vec<u32> {
    let me = std::process::id();
    children(me)
        .into_iter()
        .flat_map(children)
        .filter(|&p| is_zygote(p))
        .collect()
}

/// The live (non-zombie) workers of a zygote.
fn workers(zygote: u32) -> Vec<u32> {
    children(zygote)
        .into_iter()
        .filter(|&p| state(p).is_some_and(|s| s != 'Z'))
        .collect()
}

fn meminfo(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn self_status(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// (busy, total) jiffies of all CPUs.
fn host_cpu() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The soft RLIMIT_NOFILE of this process.
fn nofile_limit() -> u64 {
    // SAFETY: getrlimit only writes the struct we pass.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur
}

fn pss(pid: u32) -> Option<u64> {
    Smaps::read(pid).ok().map(|s| s.pss)
}

// ------------------------------------------------------------------ sampling

#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    zygotes: usize,
    workers: usize,
    /// Requests read by the server and not yet answered.
    at_server: usize,
    requests: u64,
    episodes: u64,
    mem_available: u64,
    supervisor_rss: u64,
    /// Open file descriptors of this process.
    fds: usize,
    /// (busy, total) host jiffies.
    cpu: (u64, u64),
    /// Pss of the zygotes and of the workers, when read at this tick.
    pss: Option<(u64, u64)>,
}

/// Counts finished questions for the sampler.
#[derive(Default)]
struct Counting {
    episodes: AtomicU64,
    failed: AtomicU64,
}

impl Reporter for Counting {
    fn dataset_started(&self, _: &str, _: usize, _: usize) {}
    fn question_finished(&self, _: &str, status: csv_agent::store::QuestionStatus) {
        if status == csv_agent::store::QuestionStatus::Failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.episodes.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn dataset_finished(&self, _: &pipeline::DatasetSummary) {}
}

/// What the sampler hands back.
struct Sampled {
    samples: Vec<Sample>,
    /// The sampler thread's own CPU seconds.
    cpu: f64,
    /// Of which reading Pss.
    pss_cpu: f64,
    /// Per zygote, the last (own, reaped workers') CPU seconds seen.
    zygote_cpu: BTreeMap<u32, (f64, f64)>,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sampled>,
}

impl Sampler {
    fn start(server: Arc<Server>, counting: Arc<Counting>, pss_every: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                let mut tick = 0u64;
                let mut zygote_cpu = BTreeMap::new();
                let mut pss_cpu = 0.0;
                while !stopping.load(Ordering::Relaxed) {
                    let next = started + TICK * (tick as u32 + 1);
                    let zygotes = zygotes();
                    let per_zygote: Vec<Vec<u32>> = zygotes.iter().map(|&z| workers(z)).collect();
                    for &z in &zygotes {
                        if let Some(cpu) = proc_cpu(z) {
                            zygote_cpu.insert(z, cpu);
                        }
                    }
                    let pss = (tick % pss_every == 0).then(|| {
                        let cpu = thread_cpu();
                        let z: u64 = zygotes.iter().filter_map(|&p| pss(p)).sum();
                        let w: u64 = per_zygote.iter().flatten().filter_map(|&p| pss(p)).sum();
                        pss_cpu += thread_cpu() - cpu;
                        (z, w)
                    });
                    samples.push(Sample {
                        t: started.elapsed().as_secs_f64(),
                        zygotes: zygotes.len(),
                        workers: per_zygote.iter().map(Vec::len).sum(),
                        at_server: server.in_flight(),
                        requests: server.request_count(),
                        episodes: counting.episodes.load(Ordering::Relaxed),
                        mem_available: meminfo("MemAvailable"),
                        supervisor_rss: self_status("VmRSS"),
                        fds: fs::read_dir("/proc/self/fd")
                            .map(|d| d.count())
                            .unwrap_or(0),
                        cpu: host_cpu(),
                        pss,
                    });
                    tick += 1;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Sampled {
                    samples,
                    cpu: thread_cpu(),
                    pss_cpu,
                    zygote_cpu,
                }
            })
            .expect("spawn the sampler");
        Sampler { stop, thread }
    }

    fn stop(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler")
    }
}

// ------------------------------------------------------------------ data

/// `copies` copies of every shipped dataset under `target/bench-data`
/// (readable by the jail user): copy 0 is the file as shipped, copy k has
/// k trailing blank lines, which pandas skips but which give it its own
/// content hash and so its own question ids.
fn dataset_copies(copies: usize) -> Vec<Dataset> {
    let shipped = Registry::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets"))
        .expect("the shipped registry")
        .list()
        .expect("the shipped datasets");
    let root = bench_dir().join(format!("datasets-{copies}"));
    for d in &shipped {
        let csv = fs::read(&d.csv).expect("a shipped CSV");
        let meta = fs::read(d.dir.join("meta.json")).expect("a shipped meta.json");
        for k in 0..copies {
            let slug = if k == 0 {
                d.slug.clone()
            } else {
                format!("{}-copy{k}", d.slug)
            };
            let dir = root.join(slug);
            fs::create_dir_all(&dir).expect("create a dataset copy");
            let mut bytes = csv.clone();
            if !bytes.ends_with(b"\n") {
                bytes.push(b'\n');
            }
            bytes.extend(std::iter::repeat_n(b'\n', k));
            write_if_changed(&dir.join("data.csv"), &bytes);
            write_if_changed(&dir.join("meta.json"), &meta);
        }
    }
    Registry::open(&root)
        .expect("the copies' registry")
        .list()
        .expect("the copies")
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs::read(path).ok().as_deref() != Some(bytes) {
        fs::write(path, bytes).expect("write a dataset copy");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the output directory");
    for entry in fs::read_dir(from)
        .expect("read the questions cache")
        .flatten()
    {
        let name = entry.file_name();
        if name == ".lock" {
            continue;
        }
        let target = to.join(&name);
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy the questions cache");
        }
    }
}

fn modified(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn settings(
    datasets: &[Dataset],
    image: &Image,
    cfg: &Config,
    jobs: usize,
    out: &Path,
    questions_only: bool,
) -> RunSettings {
    RunSettings {
        datasets: datasets.to_vec(),
        unusable: Vec::new(),
        out: out.to_path_buf(),
        max_questions: Some(cfg.max_questions),
        jobs,
        question_concurrency: cfg.concurrency,
        spare_workers: None,
        shard: None,
        fresh: questions_only,
        image: image.clone(),
        allow_degraded: false,
        questions_only,
        templates: None,
        init_program: Some(init_program()),
        sources: Default::default(),
        limits: Default::default(),
        recovery: Default::default(),
        serve: None,
    }
}

// ------------------------------------------------------------------ figures

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

fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        return 0.0;
    }
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// Makes the questions (ground truth included) once per copies × cap and
/// keeps them in `target/bench-data/llm-scale/`: the measured run reuses
/// them instead of spending its CPU on reference programs.
fn questions_cache(
    runtime: &tokio::runtime::Runtime,
    datasets: &[Dataset],
    image: &Image,
    cfg: &Config,
    jobs: usize,
) -> PathBuf {
    let cache = bench_dir().join(format!("questions-c{}-m{}", cfg.copies, cfg.max_questions));
    if !cfg.fresh_questions && cache.join(store::MANIFEST_FILE).is_file() {
        println!("questions: from the cache {}", cache.display());
        return cache;
    }
    let t = Instant::now();
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache).expect("create the questions cache");
    let summary = runtime
        .block_on(pipeline::run(
            settings(datasets, image, cfg, jobs, &cache, true),
            Arc::new(ProgramTeacher),
            Arc::new(pipeline::Silent),
        ))
        .expect("the questions run completes");
    let n: u64 = summary.datasets.iter().map(|d| d.questions).sum();
    println!(
        "questions: made {n} (with ground truth) in {:.1} s, cached in {}",
        t.elapsed().as_secs_f64(),
        cache.display()
    );
    cache
}

/// The zygotes of the run's first `jobs` datasets started together, no
/// workers, their Pss summed while all are alive (so that the image's
/// pages they share are split as they will be during the run).
fn idle_zygotes_pss(
    runtime: &tokio::runtime::Runtime,
    datasets: &[Dataset],
    image: &Image,
    jobs: usize,
) -> u64 {
    let t = Instant::now();
    let sandboxes: Vec<Sandbox> = runtime.block_on(async {
        let starts = datasets.iter().take(jobs).map(|d| {
            let mut opts = SandboxOptions::new(&d.csv, image.clone()).expect("options");
            opts.init_program = init_program();
            opts.spare_workers = 0;
            Sandbox::start(opts)
        });
        futures::future::join_all(starts)
            .await
            .into_iter()
            .map(|s| s.expect("a sandbox starts"))
            .collect()
    });
    let started = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let idle = zygotes();
    let pss_sum: u64 = idle.iter().filter_map(|&p| pss(p)).sum();
    println!(
        "idle zygotes: {} alive together, no workers, Pss {:.0} MiB ({:.1} MiB each); started together in {:.1} s",
        idle.len(),
        pss_sum as f64 / MIB,
        pss_sum as f64 / MIB / idle.len().max(1) as f64,
        started
    );
    runtime.block_on(async {
        for s in sandboxes {
            s.shutdown().await;
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    pss_sum
}

/// Share of the host's CPUs busy over `seconds`, now.
fn host_load(seconds: u64) -> f64 {
    let a = host_cpu();
    std::thread::sleep(Duration::from_secs(seconds));
    let b = host_cpu();
    100.0 * (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

/// Other work on the machine would be counted in the run's figures (the
/// host is CPU-bound during the run): wait until it is idle, up to 10 min.
fn wait_for_idle_host(wait: bool) {
    const IDLE: f64 = 10.0;
    let started = Instant::now();
    let mut load = host_load(3);
    while wait && load > IDLE && started.elapsed() < Duration::from_secs(600) {
        eprintln!("host CPU {load:.0} % busy: waiting for it to be idle");
        load = host_load(10);
    }
    println!(
        "host CPU busy just before the run: {load:.0} %{}",
        if load > IDLE {
            " — something else is running; the figures include it"
        } else {
            ""
        }
    );
}

/// Everything the measured run yields.
struct Measured {
    wall: f64,
    stopped: bool,
    failed_questions: u64,
    episodes: Vec<Episode>,
    samples: Vec<Sample>,
    requests: u64,
    peak_at_server: usize,
    /// CPU seconds over the run.
    process_cpu: f64,
    server_cpu: f64,
    sampler_cpu: f64,
    sampler_pss_cpu: f64,
    jails_cpu: f64,
    zygotes_own_cpu: f64,
    workers_cpu: f64,
    mem_before: u64,
    rss_before: u64,
    rss_peak: u64,
    questions_remade: bool,
}

fn measured_run(
    runtime: &tokio::runtime::Runtime,
    datasets: &[Dataset],
    image: &Image,
    cfg: &Config,
    jobs: usize,
    cache: &Path,
) -> Measured {
    let server = ServerThread::start(cfg.latency, script(cfg.turns));
    let mut llm = LlmSettings::new(server.server.base_url(), "loopback");
    llm.max_concurrent_requests = 1024;
    let client = Client::new(llm).expect("the client");
    let sampling = serde_json::json!({"temperature": null, "top_p": null, "max_tokens": null});
    let teacher = LlmTeacher::new(
        Arc::new(client),
        sampling,
        LlmTeacherConfig {
            agent: AgentConfig {
                max_turns: cfg.turns as u32 + 2,
                ..AgentConfig::default()
            },
            n_consistency: NConsistency::fixed(cfg.n),
        },
    );
    let out = tempfile::tempdir().expect("tempdir");
    copy_dir(cache, out.path());
    let questions_dir = out.path().join(store::QUESTIONS_DIR);
    let questions_before = modified(&questions_dir);
    let counting = Arc::new(Counting::default());
    let mem_before = meminfo("MemAvailable");
    let rss_before = self_status("VmRSS");
    let cpu_before = process_cpu();
    let children_before = children_cpu();
    let sampler = Sampler::start(server.server.clone(), counting.clone(), cfg.pss_every);
    let t = Instant::now();
    let summary = runtime
        .block_on(pipeline::run(
            settings(datasets, image, cfg, jobs, out.path(), false),
            Arc::new(teacher),
            counting.clone(),
        ))
        .expect("the run completes");
    let wall = t.elapsed().as_secs_f64();
    let sampled = sampler.stop();
    let process_cpu = process_cpu() - cpu_before;
    let jails_cpu = children_cpu() - children_before;
    let requests = server.server.request_count();
    let peak_at_server = server.server.max_in_flight();
    let server_cpu = server.stop();
    Measured {
        wall,
        stopped: summary.stopped.is_some(),
        failed_questions: counting.failed.load(Ordering::Relaxed),
        episodes: store::read_jsonl(&out.path().join(store::EPISODES_FILE)).expect("episodes"),
        samples: sampled.samples,
        requests,
        peak_at_server,
        process_cpu,
        server_cpu,
        sampler_cpu: sampled.cpu,
        sampler_pss_cpu: sampled.pss_cpu,
        jails_cpu,
        zygotes_own_cpu: sampled.zygote_cpu.values().map(|c| c.0).sum(),
        workers_cpu: sampled.zygote_cpu.values().map(|c| c.1).sum(),
        mem_before,
        rss_before,
        rss_peak: self_status("VmHWM"),
        questions_remade: modified(&questions_dir) != questions_before,
    }
}

fn main() {
    let cfg = Config::from_args();
    let bench_started = Instant::now();
    let image = image::ensure(&ImageSpec::from_env(), &Quiet).expect("the image builds");
    let datasets = dataset_copies(cfg.copies);
    let jobs = cfg.jobs.unwrap_or(datasets.len()).min(datasets.len());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let planned = jobs * cfg.concurrency * (1 + cfg.n as usize);
    println!(
        "llm scale bench: {} datasets ({} shipped x {} copies), {jobs} at once, {} questions in flight each, 1 gold + {} consistency traces per question, {} replies per trace, {} ms per reply, at most {} questions per dataset; {cpus} CPUs, {:.1} GiB RAM",
        datasets.len(),
        datasets.len() / cfg.copies,
        cfg.copies,
        cfg.concurrency,
        cfg.n,
        cfg.turns,
        cfg.latency.as_millis(),
        cfg.max_questions,
        meminfo("MemTotal") as f64 / GIB,
    );
    println!(
        "planned: {planned} traces in flight (datasets at once × questions × traces per question)"
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cache = questions_cache(&runtime, &datasets, &image, &cfg, jobs);
    let idle_pss = idle_zygotes_pss(&runtime, &datasets, &image, jobs);
    wait_for_idle_host(cfg.wait_quiet);
    let m = measured_run(&runtime, &datasets, &image, &cfg, jobs, &cache);
    if m.questions_remade {
        println!("WARNING: the run made its questions again (the cache was stale), so ground truth is in the figures; rerun");
        let _ = fs::remove_dir_all(&cache);
    }
    report(&cfg, jobs, cpus, planned, idle_pss, &m);
    println!(
        "bench wall time {:.0} s",
        bench_started.elapsed().as_secs_f64()
    );
}

fn report(cfg: &Config, jobs: usize, cpus: usize, planned: usize, idle_pss: u64, m: &Measured) {
    let samples = &m.samples;
    let traces: Vec<&Trace> = m
        .episodes
        .iter()
        .flat_map(|e| std::iter::once(&e.gold_trace).chain(e.consistency_traces.iter()))
        .collect();
    let mut stops: BTreeMap<String, usize> = BTreeMap::new();
    for tr in &traces {
        *stops
            .entry(tr.stop.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    println!(
        "\nrun: {:.1} s wall, {} episodes ({} failed questions), {} traces, {} turns, {} chat requests; trace stops: {:?}{}",
        m.wall,
        m.episodes.len(),
        m.failed_questions,
        traces.len(),
        traces.iter().map(|t| t.turns.len()).sum::<usize>(),
        m.requests,
        stops,
        if m.stopped { " — the run STOPPED early" } else { "" }
    );

    // The plateau: the middle 60 % of the time with requests at the server.
    let busy: Vec<&Sample> = samples.iter().filter(|s| s.at_server > 0).collect();
    let first = busy.first().map(|s| s.t).unwrap_or(0.0);
    let last = busy.last().map(|s| s.t).unwrap_or(0.0);
    let (from, to) = (first + 0.2 * (last - first), first + 0.8 * (last - first));
    let plateau: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to)
        .collect();
    println!(
        "plateau: {from:.1}–{to:.1} s of the run (the middle 60 % of the {:.1} s with requests at the server), {} samples\n",
        last - first,
        plateau.len()
    );
    let med = |f: &dyn Fn(&Sample) -> f64| median(plateau.iter().map(|s| f(s)).collect());
    let workers_plateau = med(&|s| s.workers as f64);
    let at_server_plateau = med(&|s| s.at_server as f64);
    let spares = (jobs * cfg.concurrency.clamp(1, 8)) as f64;
    let (p0, p1) = match (plateau.first(), plateau.last()) {
        (Some(a), Some(b)) => ((*a).clone(), (*b).clone()),
        _ => Default::default(),
    };
    let dt = (p1.t - p0.t).max(1e-9);
    let traces_per_s = (p1.episodes - p0.episodes) as f64 * (1 + cfg.n) as f64 / dt;
    let turns_per_s = (p1.requests - p0.requests) as f64 / dt;
    let plateau_busy = 100.0 * (p1.cpu.0 - p0.cpu.0) as f64 / (p1.cpu.1 - p0.cpu.1).max(1) as f64;
    let seconds_at_target = samples
        .iter()
        .filter(|s| s.at_server as f64 >= TARGET_TRACES)
        .count() as f64
        * TICK.as_secs_f64();

    println!("| measurement | value |");
    println!("|---|---|");
    println!("| traces planned in flight (datasets × questions × traces) | {planned} |");
    println!(
        "| live workers (zygote children, incl. ≤ {spares:.0} idle spares), peak / plateau median | {} / {workers_plateau:.0} |",
        samples.iter().map(|s| s.workers).max().unwrap_or(0),
    );
    println!(
        "| requests waiting at the server (traces waiting on the model), peak / plateau median | {} / {at_server_plateau:.0} |",
        m.peak_at_server
    );
    println!(
        "| time with ≥ {TARGET_TRACES:.0} requests at the server | {seconds_at_target:.1} s |"
    );
    println!(
        "| traces completed per second (plateau) | {traces_per_s:.1} ({turns_per_s:.0} chat requests/s) |"
    );
    let wall_times: Vec<f64> = traces.iter().map(|t| t.elapsed).collect();
    let waits: Vec<f64> = traces.iter().map(|t| t.worker_wait).collect();
    println!(
        "| trace wall time p50 / p95 (ideal {} replies × {:.1} s) | {:.2} / {:.2} s |",
        cfg.turns,
        cfg.latency.as_secs_f64(),
        median(wall_times.clone()),
        quantile(wall_times, 0.95),
    );
    println!(
        "| waiting for a worker per trace p50 / p95 / max | {:.0} / {:.0} / {:.0} ms |",
        1000.0 * median(waits.clone()),
        1000.0 * quantile(waits.clone(), 0.95),
        1000.0 * waits.iter().cloned().fold(0.0, f64::max)
    );
    let sum = |f: &dyn Fn(&Trace) -> f64| traces.iter().map(|t| f(t)).sum::<f64>();
    let total_trace = sum(&|t| t.elapsed).max(1e-9);
    let model = sum(&|t| t.usage.map(|u| u.latency_s).unwrap_or(0.0));
    let wait = sum(&|t| t.worker_wait);
    let cells = sum(&|t| {
        t.turns
            .iter()
            .map(|x| x.execution.elapsed_ms / 1000.0)
            .sum()
    });
    let share = |x: f64| 100.0 * x / total_trace;
    println!(
        "| trace time: model / waiting for a worker / cells / rest (CPU queue, protocol) | {:.0} / {:.0} / {:.0} / {:.0} % |",
        share(model),
        share(wait),
        share(cells),
        share(total_trace - model - wait - cells)
    );

    let supervisor_cpu = (m.process_cpu - m.server_cpu - m.sampler_cpu).max(0.0);
    let per_request = |cpu: f64| 1000.0 * cpu / m.requests.max(1) as f64;
    println!(
        "| supervisor CPU per turn (this process less the server and sampler threads) | {:.2} ms ({supervisor_cpu:.1} CPU-s / {} requests) |",
        per_request(supervisor_cpu),
        m.requests
    );
    println!(
        "| same, upper bound with the in-process server | {:.2} ms |",
        per_request(m.process_cpu - m.sampler_cpu)
    );
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let host_busy = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => (b.cpu.0 - a.cpu.0) as f64 / hz,
        _ => 0.0,
    };
    let n_traces = traces.len().max(1) as f64;
    println!("| host CPU busy, plateau | {plateau_busy:.0} % of {cpus} CPUs |");
    println!(
        "| host CPU over the run | {host_busy:.0} CPU-s of {:.0} ({:.1} ms per trace) |",
        m.wall * cpus as f64,
        1000.0 * host_busy / n_traces
    );
    println!(
        "| … zygotes' own (forks) / workers (reaped) / monitors + rest | {:.1} / {:.1} / {:.1} CPU-s ({:.1} / {:.1} ms per trace) |",
        m.zygotes_own_cpu,
        m.workers_cpu,
        m.jails_cpu - m.zygotes_own_cpu - m.workers_cpu,
        1000.0 * m.zygotes_own_cpu / n_traces,
        1000.0 * m.workers_cpu / n_traces
    );
    println!(
        "| … this process: supervisor / server thread / sampler thread (of which reading Pss) | {supervisor_cpu:.1} / {:.1} / {:.1} ({:.1}) CPU-s |",
        m.server_cpu, m.sampler_cpu, m.sampler_pss_cpu
    );
    println!(
        "| … neither (kernel threads, other processes) | {:.1} CPU-s |",
        host_busy - m.process_cpu - m.jails_cpu
    );

    // Memory at the Pss reading with the most workers.
    let at_peak = samples
        .iter()
        .filter(|s| s.pss.is_some())
        .max_by_key(|s| s.workers)
        .cloned()
        .unwrap_or_default();
    let (z_pss, w_pss) = at_peak.pss.unwrap_or((0, 0));
    let n_workers = at_peak.workers.max(1) as f64;
    let min_available = samples
        .iter()
        .map(|s| s.mem_available)
        .min()
        .unwrap_or(m.mem_before);
    let drop = m.mem_before.saturating_sub(min_available) as f64;
    println!(
        "| Pss of zygotes + workers at the reading with the most workers ({} workers, {} zygotes, t = {:.0} s) | {:.2} GiB (zygotes {:.0} MiB, workers {:.0} MiB) |",
        at_peak.workers,
        at_peak.zygotes,
        at_peak.t,
        (z_pss + w_pss) as f64 / GIB,
        z_pss as f64 / MIB,
        w_pss as f64 / MIB
    );
    println!(
        "| per worker: (that Pss − idle zygotes' {:.0} MiB) / workers | {:.1} MiB |",
        idle_pss as f64 / MIB,
        (z_pss + w_pss).saturating_sub(idle_pss) as f64 / n_workers / MIB
    );
    println!(
        "| per worker: workers' own Pss / workers | {:.1} MiB |",
        w_pss as f64 / n_workers / MIB
    );
    let marginal_host = (drop - idle_pss as f64).max(0.0) / n_workers;
    println!(
        "| host MemAvailable before → lowest (drop) | {:.2} → {:.2} GiB ({:.2} GiB) |",
        m.mem_before as f64 / GIB,
        min_available as f64 / GIB,
        drop / GIB
    );
    println!(
        "| per worker, host-wide: (drop − idle zygotes' Pss) / workers | {:.1} MiB |",
        marginal_host / MIB
    );
    println!(
        "| this process's open files, peak (incl. the in-process server's sockets; soft RLIMIT_NOFILE) | {} ({}) |",
        samples.iter().map(|s| s.fds).max().unwrap_or(0),
        nofile_limit()
    );
    println!(
        "| supervisor RSS before / peak sampled / VmHWM | {:.0} / {:.0} / {:.0} MiB |",
        m.rss_before as f64 / MIB,
        samples.iter().map(|s| s.supervisor_rss).max().unwrap_or(0) as f64 / MIB,
        m.rss_peak as f64 / MIB
    );

    println!("\ntimeline (every 5 s): t s | zygotes | workers | at server | episodes | Pss GiB (last reading) | MemAvailable GiB | supervisor RSS MiB");
    let mut next = 0.0;
    let mut last_pss = None;
    for s in samples {
        last_pss = s.pss.or(last_pss);
        if s.t + 1e-9 >= next {
            println!(
                "  {:>5.1} | {:>3} | {:>4} | {:>4} | {:>5} | {} | {:.2} | {:.0}",
                s.t,
                s.zygotes,
                s.workers,
                s.at_server,
                s.episodes,
                last_pss
                    .map(|(z, w)| format!("{:.2}", (z + w) as f64 / GIB))
                    .unwrap_or_else(|| "-".into()),
                s.mem_available as f64 / GIB,
                s.supervisor_rss as f64 / MIB
            );
            next += 5.0;
        }
    }

    // Traces in flight: live workers less every spare the sandboxes may
    // hold (a lower bound: a spare is an idle worker). Memory: the
    // host-wide MemAvailable drop, which also counts what Pss does not
    // (page tables, kernel stacks, per-worker cgroups, socket buffers).
    let sustained = (workers_plateau - spares).max(0.0);
    let met = sustained >= TARGET_TRACES && drop / GIB <= TARGET_MEMORY_GIB;
    println!(
        "\nverdict: {} — {sustained:.0} traces in flight sustained (plateau median of {workers_plateau:.0} live workers less ≤ {spares:.0} spares; {at_server_plateau:.0} of them waiting on the model at a time), host memory {:.2} GiB at the peak, {:.1} MiB per worker host-wide above the idle zygotes ({jobs} zygotes + 256 traces ≈ {:.2} GiB); target ≥ {TARGET_TRACES:.0} traces within {TARGET_MEMORY_GIB:.0} GiB",
        if met { "MET" } else { "MISSED" },
        drop / GIB,
        marginal_host / MIB,
        (idle_pss as f64 + marginal_host * TARGET_TRACES) / GIB
    );
}
