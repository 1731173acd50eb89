//! Memory and start-up of the jail: `cargo bench --bench jail [-- memory|latency]`.
//!
//! Prints Markdown tables to paste into docs/architecture.md:
//!
//! - **memory**: N = 1, 8, 32, 64 workers forked from one zygote against N
//!   independent ("cold") sandboxes alive at the same time (each its own
//!   jail, imports and CSV, the task run in its one worker), on the shipped
//!   penguins dataset and on a generated 20 000-row CSV of 12 mixed columns
//!   (`csv-agent sandbox mixed-csv`; with `-- --large` also on a ~50 MB one
//!   of the same kind); every worker and every cold sandbox runs the default
//!   profiling task (`src/sandbox/profile_task.py`).
//!   Cold sandboxes start two at a time; before N of them are started the
//!   bench checks that N × one's measured footprint fits in 70 % of
//!   MemAvailable, and otherwise reports the cell as not run.
//! - **latency**: zygote cold start in the jail against a bare import of the
//!   same stack outside any jail, worker acquire with and without a
//!   pre-forked spare, and the round trip of a `1+1` cell.
//!
//! `-- --quick` runs the memory part with N = 1, 2 and one repeat, to try the
//! harness; its figures are not for the docs.
//!
//! Each figure is the median with min and max over repeated runs; ratios are
//! computed within one run (one repeat), then summarised the same way.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csv_agent::sandbox::image::{self, ImageProgress, ImageSpec};
use csv_agent::sandbox::memory::{self, ColdSandbox, MemoryReport};
use csv_agent::sandbox::{Sandbox, SandboxOptions};
use procfs::Current;

/// Repeats of every memory measurement.
const MEMORY_REPEATS: usize = 3;
/// Worker / sandbox counts of the memory comparison.
const COUNTS: &[usize] = &[1, 8, 32, 64];
/// `-- --quick`: a trial run of the harness itself (figures not for docs).
const QUICK_COUNTS: &[usize] = &[1, 2];
/// Cold sandboxes started at once (the host has 2 cores).
const COLD_CONCURRENCY: usize = 2;
/// Share of MemAvailable the cold sandboxes may be expected to take.
const MEMORY_BUDGET: f64 = 0.70;
/// Rows of the large generated CSV of `-- --large` (about 50 MB).
const LARGE_ROWS: usize = 610_000;
/// A pause for freed memory to settle before reading smaps.
const SETTLE: Duration = Duration::from_millis(500);

struct Quiet;
impl ImageProgress for Quiet {
    fn step(&self, m: &str) {
        eprintln!("image: {m}");
    }
    fn line(&self, _: &str) {}
}

// ------------------------------------------------------------------ stats

struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn stat(mut xs: Vec<f64>) -> Stat {
    assert!(!xs.is_empty(), "no samples");
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    Stat {
        median,
        min: xs[0],
        max: xs[n - 1],
        n,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// `median [min–max]` with `digits` decimals.
fn spread(s: &Stat, digits: usize) -> String {
    format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.min, s.max, d = digits)
}

fn options(csv: &Path, image: &image::Image, spares: usize) -> SandboxOptions {
    let mut o = SandboxOptions::new(csv, image.clone()).expect("options");
    o.init_program = PathBuf::from(env!("CARGO_BIN_EXE_csv-agent"));
    o.spare_workers = spares;
    // 64 workers share 2 cores: a task may wait long for its turn.
    o.limits.cell_timeout = Duration::from_secs(900);
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |section: &str| {
        let named: Vec<&String> = args
            .iter()
            .filter(|a| *a == "memory" || *a == "latency")
            .collect();
        named.is_empty() || named.iter().any(|a| *a == section)
    };
    let plan = if args.iter().any(|a| a == "--quick") {
        Plan {
            counts: QUICK_COUNTS,
            repeats: 1,
        }
    } else {
        Plan {
            counts: COUNTS,
            repeats: MEMORY_REPEATS,
        }
    };
    let image = image::ensure(&ImageSpec::from_env(), &Quiet).expect("image");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let penguins = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/penguins/data.csv");
    println!(
        "csv-agent bench on {} ({} CPUs, {:.1} GiB RAM, kernel {})",
        hostname(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        gib(procfs::Meminfo::current().map(|m| m.mem_total).unwrap_or(0)),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!();
    if wanted("memory") {
        let mut csvs = vec![penguins.clone(), generated_csv(memory::MIXED_CSV_ROWS)];
        if args.iter().any(|a| a == "--large") {
            csvs.push(generated_csv(LARGE_ROWS));
        }
        for csv in &csvs {
            let table = rt.block_on(memory_bench(&plan, csv, &image));
            print!("{table}");
            let _ = std::io::stdout().flush();
        }
    }
    if wanted("latency") {
        print!("{}", latency_bench(&rt, &penguins, &image));
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "this host".to_string())
}

// ------------------------------------------------------------------ data

/// The generated mixed-column CSV of `rows` rows (src/sandbox/memory/mixed_csv.rs),
/// written once to `target/bench-data/`.
fn generated_csv(rows: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    memory::ensure_mixed_csv(&dir, rows).expect("write the generated csv")
}

// ------------------------------------------------------------------ memory

/// Which counts, how many repeats.
struct Plan {
    counts: &'static [usize],
    repeats: usize,
}

/// One repeat's figures at one N (bytes).
#[derive(Default, Clone)]
struct Sample {
    shared_total_pss: u64,
    zygote_pss: u64,
    worker_avg_pss: u64,
    worker_avg_uss: u64,
    /// Total Pss of N cold sandboxes alive together; None when not run.
    cold_total_pss: Option<u64>,
    /// N × the footprint of one cold sandbox measured alone in this repeat.
    cold_n_times_one: u64,
}

enum ColdOutcome {
    Ran(u64),
    NotRun { need: u64, available: u64 },
}

async fn memory_bench(plan: &Plan, csv: &Path, image: &image::Image) -> String {
    let code = memory::DEFAULT_TASK;
    let mut samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let mut not_run: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut footprints = Vec::new();
    let started = Instant::now();
    for repeat in 1..=plan.repeats {
        eprintln!(
            "memory bench: {} repeat {repeat}/{}: one zygote, workers up to {}",
            csv.display(),
            plan.repeats,
            plan.counts[plan.counts.len() - 1]
        );
        let shared = shared_phase(plan, csv, image, code).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("memory bench: repeat {repeat}: cold sandboxes, two starting at a time");
        let (one, cold) = cold_phase(plan, csv, image, code).await;
        footprints.push(mib(one));
        for (n, report) in shared {
            let zygote = report.zygote().expect("zygote listed");
            let workers: Vec<_> = report.workers().collect();
            assert_eq!(workers.len(), n, "every worker measured");
            let cold_total = match cold.get(&n) {
                Some(ColdOutcome::Ran(total)) => Some(*total),
                Some(ColdOutcome::NotRun { need, available }) => {
                    not_run.entry(n).or_insert((*need, *available));
                    None
                }
                None => None,
            };
            samples.entry(n).or_default().push(Sample {
                shared_total_pss: report.totals.pss,
                zygote_pss: zygote.pss,
                worker_avg_pss: workers.iter().map(|w| w.pss).sum::<u64>() / n as u64,
                worker_avg_uss: workers.iter().map(|w| w.uss).sum::<u64>() / n as u64,
                cold_total_pss: cold_total,
                cold_n_times_one: n as u64 * one,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "memory bench: {} done in {:.0} s",
        csv.display(),
        started.elapsed().as_secs_f64()
    );
    memory_table(plan, csv, &samples, &not_run, &stat(footprints))
}

/// One sandbox; its workers grow to each of COUNTS, each having run the task.
async fn shared_phase(
    plan: &Plan,
    csv: &Path,
    image: &image::Image,
    code: &str,
) -> Vec<(usize, MemoryReport)> {
    let sandbox = Sandbox::start(options(csv, image, 0))
        .await
        .expect("sandbox starts");
    let mut workers = Vec::new();
    let mut out = Vec::new();
    for &n in plan.counts {
        let more = n - workers.len();
        memory::add_workers(&sandbox, &mut workers, more, code)
            .await
            .expect("the task runs in every worker");
        tokio::time::sleep(SETTLE).await;
        out.push((
            n,
            MemoryReport::collect(&sandbox, &workers).expect("measure"),
        ));
    }
    drop(workers);
    sandbox.shutdown().await;
    out
}

/// Cold sandboxes grow to each of COUNTS (all alive at once), while they fit
/// in the memory budget. Returns one's footprint (measured alone) and the
/// total Pss at each N.
async fn cold_phase(
    plan: &Plan,
    csv: &Path,
    image: &image::Image,
    code: &str,
) -> (u64, BTreeMap<usize, ColdOutcome>) {
    let available = procfs::Meminfo::current()
        .ok()
        .and_then(|m| m.mem_available)
        .expect("MemAvailable");
    let mut pool: Vec<ColdSandbox> = Vec::new();
    let mut out = BTreeMap::new();
    let mut one = 0;
    for &n in plan.counts {
        if n > 1 {
            let need = n as u64 * one;
            if need as f64 > MEMORY_BUDGET * available as f64 {
                out.insert(n, ColdOutcome::NotRun { need, available });
                continue;
            }
        }
        grow_cold(&mut pool, n, csv, image, code).await;
        tokio::time::sleep(SETTLE).await;
        let mut total = 0;
        for cold in &pool {
            let report = cold.report().expect("measure a cold sandbox");
            assert!(report.missing.is_empty(), "a cold worker vanished");
            total += report.totals.pss;
        }
        if n == 1 {
            one = total;
        }
        out.insert(n, ColdOutcome::Ran(total));
        eprintln!(
            "memory bench:   {n} cold sandbox(es) alive: {:.0} MiB total Pss",
            mib(total)
        );
    }
    let mut stops = tokio::task::JoinSet::new();
    for cold in pool {
        stops.spawn(cold.shutdown());
    }
    while stops.join_next().await.is_some() {}
    (one, out)
}

async fn grow_cold(
    pool: &mut Vec<ColdSandbox>,
    n: usize,
    csv: &Path,
    image: &image::Image,
    code: &str,
) {
    let mut starting = tokio::task::JoinSet::new();
    let mut asked = pool.len();
    while pool.len() < n {
        while asked < n && starting.len() < COLD_CONCURRENCY {
            let opts = options(csv, image, 0);
            let code = code.to_string();
            starting.spawn(async move { ColdSandbox::start(opts, &code).await });
            asked += 1;
        }
        let started = starting
            .join_next()
            .await
            .expect("a start in flight")
            .expect("join")
            .expect("a cold sandbox starts and runs the task");
        pool.push(started);
    }
}

fn memory_table(
    plan: &Plan,
    csv: &Path,
    samples: &BTreeMap<usize, Vec<Sample>>,
    not_run: &BTreeMap<usize, (u64, u64)>,
    footprint: &Stat,
) -> String {
    use std::fmt::Write as _;
    let size = std::fs::metadata(csv).map(|m| m.len()).unwrap_or(0);
    let name = csv
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(csv)
        .display()
        .to_string();
    let mut t = String::new();
    let size = if size >= 1_000_000 {
        format!("{:.1} MB", size as f64 / 1e6)
    } else {
        format!("{:.1} kB", size as f64 / 1e3)
    };
    let _ = writeln!(
        t,
        "### Memory: `{name}` ({size}), the default task in every worker\n"
    );
    let _ = writeln!(
        t,
        "One cold sandbox alone (zygote Pss + worker Pss): {} MiB. Figures in MiB (sum of Pss); median [min–max] over {} repeats; ratios per repeat.\n",
        spread(footprint, 1),
        plan.repeats
    );
    let _ = writeln!(
        t,
        "| N | zygote + N workers | zygote Pss | worker Pss (avg) | worker Uss (avg) | N cold sandboxes alive | ratio: cold alive / zygote | N × one cold | ratio: N × one / zygote |"
    );
    let _ = writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, runs) in samples {
        let col = |f: &dyn Fn(&Sample) -> f64| stat(runs.iter().map(f).collect());
        let shared = col(&|s| mib(s.shared_total_pss));
        let (cold_cell, ratio_cell) = if runs.iter().all(|s| s.cold_total_pss.is_some()) {
            let cold = col(&|s| mib(s.cold_total_pss.unwrap_or(0)));
            let ratio = col(&|s| memory::ratio(s.cold_total_pss.unwrap_or(0), s.shared_total_pss));
            (spread(&cold, 0), format!("{}×", spread(&ratio, 2)))
        } else {
            let (need, available) = not_run.get(n).copied().unwrap_or_default();
            (
                format!(
                    "not run: would need {:.1} GiB of {:.1} available",
                    gib(need),
                    gib(available)
                ),
                "—".to_string(),
            )
        };
        let n_times_one = col(&|s| mib(s.cold_n_times_one));
        let ratio_one = col(&|s| memory::ratio(s.cold_n_times_one, s.shared_total_pss));
        let _ = writeln!(
            t,
            "| {n} | {} | {} | {} | {} | {cold_cell} | {ratio_cell} | {} | {}× |",
            spread(&shared, 0),
            spread(&col(&|s| mib(s.zygote_pss)), 1),
            spread(&col(&|s| mib(s.worker_avg_pss)), 1),
            spread(&col(&|s| mib(s.worker_avg_uss)), 1),
            spread(&n_times_one, 0),
            spread(&ratio_one, 2),
        );
    }
    t.push('\n');
    t
}

// ------------------------------------------------------------------ latency

fn latency_bench(rt: &tokio::runtime::Runtime, csv: &Path, image: &image::Image) -> String {
    use std::fmt::Write as _;
    const STARTS: usize = 7;
    // Bare import outside any jail, same interpreter and environment.
    let mut bare = Vec::new();
    for _ in 0..STARTS {
        let t = Instant::now();
        let ok = Command::new(&image.python)
            .args([
                "-I",
                "-B",
                "-c",
                "import pandas, numpy, scipy.stats, sklearn, statsmodels.api",
            ])
            .env_clear()
            .envs(image.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "bare import failed");
        bare.push(ms(t.elapsed()));
    }

    let (cold, acquire_spare, acquire_fresh, acquire_fresh_single, round_trip) =
        rt.block_on(async {
            let mut cold = Vec::new();
            for _ in 0..STARTS {
                let t = Instant::now();
                let sb = Sandbox::start(options(csv, image, 0)).await.expect("start");
                cold.push(ms(t.elapsed()));
                sb.shutdown().await;
            }

            let sb = Sandbox::start(options(csv, image, 1)).await.expect("start");
            let mut spare = Vec::new();
            for _ in 0..30 {
                // Let the refill finish so a spare is waiting.
                tokio::time::sleep(Duration::from_millis(150)).await;
                let t = Instant::now();
                let w = sb.acquire().await.expect("acquire");
                spare.push(ms(t.elapsed()));
                drop(w);
            }
            sb.shutdown().await;

            let sb = Sandbox::start(options(csv, image, 0)).await.expect("start");
            // The same fork in single-uid mode, alternated with the default one
            // so both see the same machine: what a worker's own uid costs.
            let mut single_opts = options(csv, image, 0);
            single_opts.worker_uids = false;
            let single = Sandbox::start(single_opts).await.expect("start");
            let mut fresh = Vec::new();
            let mut fresh_single = Vec::new();
            for _ in 0..30 {
                for (sandbox, times) in [(&sb, &mut fresh), (&single, &mut fresh_single)] {
                    let t = Instant::now();
                    let w = sandbox.acquire().await.expect("acquire");
                    times.push(ms(t.elapsed()));
                    drop(w);
                }
            }
            single.shutdown().await;
            let mut w = sb.acquire().await.expect("acquire");
            for _ in 0..20 {
                w.exec("1+1").await.expect("warm-up");
            }
            let mut rt = Vec::new();
            for _ in 0..500 {
                let t = Instant::now();
                let c = w.exec("1+1").await.expect("cell");
                rt.push(ms(t.elapsed()));
                assert_eq!(c.result.as_deref(), Some("2"));
            }
            drop(w);
            sb.shutdown().await;
            (cold, spare, fresh, fresh_single, rt)
        });

    let mut t = String::new();
    let row = |t: &mut String, name: &str, s: &Stat| {
        let _ = writeln!(
            t,
            "| {name} | {:.3} | {:.3} | {:.3} | {} |",
            s.median, s.min, s.max, s.n
        );
    };
    let bare = stat(bare);
    let cold = stat(cold);
    let _ = writeln!(t, "### Start-up and latency (penguins)\n");
    let _ = writeln!(t, "| measurement | median ms | min ms | max ms | runs |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    row(&mut t, "bare import of the stack, no jail", &bare);
    row(
        &mut t,
        "zygote cold start in the jail (to ready, CSV loaded)",
        &cold,
    );
    row(
        &mut t,
        "worker acquire, spare pre-forked",
        &stat(acquire_spare),
    );
    row(&mut t, "worker acquire, fresh fork", &stat(acquire_fresh));
    row(
        &mut t,
        "worker acquire, fresh fork, single-uid mode",
        &stat(acquire_fresh_single),
    );
    row(&mut t, "cell round trip `1+1`", &stat(round_trip));
    let _ = writeln!(
        t,
        "\njail start / bare import (medians): {:.3} ({:+.1} %)\n",
        cold.median / bare.median,
        (cold.median / bare.median - 1.0) * 100.0
    );
    t
}
