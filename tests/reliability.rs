//! Reliability: fault injection during real runs of the binary. The test
//! finds the jail's processes of its own `csv-agent` child through /proc
//! (the monitor `csv-agent __jail-init` is a child of it, the zygote
//! `zygote.py` a child of the monitor, workers children of the zygote) and
//! kills them with SIGKILL at random points: the same command must finish
//! with the episodes of an undisturbed run (same ids, same verdicts), no
//! episode mentioning the infrastructure, and the incidents counted. See
//! docs/reliability.md.

mod common;
#[path = "support/openai_server.rs"]
mod openai_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use csv_agent::sandbox::{CellStatus, SandboxError};
use csv_agent::schema::Episode;
use openai_server::{Request, Response, Server};
use serde_json::Value;

const MAX_QUESTIONS: &str = "20";

fn registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn program_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--questions",
        "template",
        "--datasets",
        s(&registry()),
        "--only",
        "penguins",
        "--max-questions",
        MAX_QUESTIONS,
        "--concurrency",
        "4",
        "--out",
        s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn spawn(args: &[String]) -> Child {
    let _ = image();
    Command::new(BIN)
        .args(args)
        .env("OPENAI_API_KEY", "sk-test")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CSV_AGENT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn csv-agent")
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("wait")
}

fn run(args: &[String]) -> Output {
    finish(spawn(args))
}

fn episodes(out: &Path) -> Vec<Episode> {
    let body = std::fs::read_to_string(out.join("episodes.jsonl")).unwrap_or_default();
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("episode parses ({e}): {l}")))
        .collect()
}

fn episode_count(out: &Path) -> usize {
    std::fs::read_to_string(out.join("episodes.jsonl"))
        .map(|b| b.lines().count())
        .unwrap_or(0)
}

fn log_text(out: &Path, slug: &str) -> String {
    std::fs::read_to_string(out.join("logs").join(format!("{slug}.log"))).unwrap_or_default()
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
        .expect("summary is json")
}

fn incidents(out: &Path, slug: &str) -> Value {
    let sum = summary(out);
    sum["datasets"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["dataset"] == slug))
        .map(|d| d["incidents"].clone())
        .unwrap_or_else(|| panic!("{slug} in summary: {sum}"))
}

/// id → (verified, diagnosis, reason, answer): what must not change.
fn verdicts(episodes: &[Episode]) -> BTreeMap<String, (bool, Option<String>, Option<String>)> {
    let mut map = BTreeMap::new();
    for e in episodes {
        let before = map.insert(
            e.episode_id.clone(),
            (e.verified, e.diagnosis.clone(), e.reason.clone()),
        );
        assert!(before.is_none(), "episode {} written twice", e.episode_id);
    }
    map
}

/// No episode may carry an infrastructure failure.
fn assert_no_infrastructure(out: &Path) {
    let body = std::fs::read_to_string(out.join("episodes.jsonl")).expect("episodes");
    for needle in [
        "zygote is gone",
        "from outside",
        "infrastructure",
        "the sandbox failed",
        "could not be started",
    ] {
        assert!(
            !body.contains(needle),
            "an episode mentions {needle:?}: {}",
            body.lines().find(|l| l.contains(needle)).unwrap_or("")
        );
    }
}

// ------------------------------------------------------------------ /proc

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
struct JailPids {
    monitor: u32,
    zygote: u32,
    workers: Vec<u32>,
}

/// The jails of the csv-agent process `root` that have a zygote.
fn jails(root: u32) -> Vec<JailPids> {
    let mut out = Vec::new();
    for monitor in children(root) {
        if !cmdline(monitor).contains("__jail-init") {
            continue;
        }
        for zygote in children(monitor) {
            if cmdline(zygote).contains("zygote.py") {
                out.push(JailPids {
                    monitor,
                    zygote,
                    workers: children(zygote),
                });
            }
        }
    }
    out
}

/// SIGKILL `pid`; false when it had already exited (a worker may finish its
/// task between being listed and being killed).
fn try_sigkill(pid: u32) -> bool {
    let pid = i32::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) with a pid we just read from /proc; no memory involved.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    let error = std::io::Error::last_os_error();
    assert!(
        rc == 0 || error.raw_os_error() == Some(libc::ESRCH),
        "kill {pid}: {error}"
    );
    rc == 0
}

fn sigkill(pid: u32) {
    assert!(try_sigkill(pid), "kill {pid}: it is gone already");
}

/// A small random source (no dependency): seeded from the clock, printed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        eprintln!("fault-injection seed: {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Wait until `ready` holds, the child still running.
fn wait_for(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while !ready() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended before {what}"
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one live jail of the child (after `restarts` completed restarts).
fn live_jail(child: &mut Child, out: &Path, slug: &str, restarts: usize) -> JailPids {
    let pid = child.id();
    let mut found = None;
    wait_for(child, "a live jail", || {
        // The previous restart has completed (its line names the new sandbox).
        let done = log_text(out, slug)
            .lines()
            .filter(|l| l.contains("incident: restart ") && l.contains(" replaces "))
            .count();
        if done < restarts {
            return false;
        }
        let live: Vec<JailPids> = jails(pid)
            .into_iter()
            .filter(|j| !j.workers.is_empty())
            .collect();
        found = live.last().cloned();
        found.is_some()
    });
    found.expect("a jail")
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    Zygote,
    Monitor,
    Workers,
}

impl Kill {
    fn apply(self, jail: &JailPids) -> usize {
        match self {
            Kill::Zygote => {
                sigkill(jail.zygote);
                1
            }
            Kill::Monitor => {
                sigkill(jail.monitor);
                1
            }
            Kill::Workers => jail.workers.iter().filter(|&&w| try_sigkill(w)).count(),
        }
    }
    fn restarts(self) -> usize {
        match self {
            Kill::Zygote | Kill::Monitor => 1,
            Kill::Workers => 0,
        }
    }
}

const GROUND_TRUTH_STARTS: &str = "establishing ground truth";

/// Times ground truth was started in `out` (the log is appended to by
/// every run).
fn ground_truth_starts(out: &Path, slug: &str) -> usize {
    log_text(out, slug).matches(GROUND_TRUTH_STARTS).count()
}

/// Wait until this run starts ground truth (`before`: the count of earlier runs).
fn wait_for_ground_truth(child: &mut Child, out: &Path, slug: &str, before: usize) {
    wait_for(child, "ground truth started", || {
        ground_truth_starts(out, slug) > before
    });
}

/// Kill once while ground truth is being computed, then at each
/// (episodes written, what) point; returns the restarts caused.
/// `gt_before`: ground-truth starts logged before this run.
#[allow(clippy::too_many_arguments)]
fn inject(
    child: &mut Child,
    out: &Path,
    slug: &str,
    rng: &mut Rng,
    gt_before: usize,
    during_ground_truth: Option<Kill>,
    plan: &[(usize, Kill)],
) -> usize {
    let mut restarts = 0;
    if let Some(kill) = during_ground_truth {
        wait_for_ground_truth(child, out, slug, gt_before);
        std::thread::sleep(Duration::from_millis(rng.range(50, 300)));
        let jail = live_jail(child, out, slug, restarts);
        eprintln!("during ground truth: {kill:?} {jail:?}");
        kill.apply(&jail);
        restarts += kill.restarts();
    }
    for &(after, kill) in plan {
        wait_for(child, &format!("{after} episodes"), || {
            episode_count(out) >= after
        });
        // Workers may finish between being listed and being killed: list
        // again until at least one is hit.
        loop {
            let jail = live_jail(child, out, slug, restarts);
            eprintln!("after {} episodes: {kill:?} {jail:?}", episode_count(out));
            if kill.apply(&jail) > 0 {
                break;
            }
        }
        restarts += kill.restarts();
    }
    restarts
}

// ------------------------------------------------------------------ baselines

/// The undisturbed program-teacher run, once per test process.
fn program_baseline() -> &'static (tempfile::TempDir, Vec<Episode>) {
    static BASE: OnceLock<(tempfile::TempDir, Vec<Episode>)> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let started = Instant::now();
        let o = run(&program_args(&out, &[]));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        eprintln!("undisturbed run: {:.1} s", started.elapsed().as_secs_f64());
        let all = episodes(&out);
        assert_eq!(all.len(), 20);
        assert_eq!(incidents(&out, "penguins")["restarts"], 0);
        (dir, all)
    })
}

fn assert_same_episodes(out: &Path, base: &[Episode]) {
    let got = verdicts(&episodes(out));
    let want = verdicts(base);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "episode ids differ from the undisturbed run"
    );
    assert_eq!(got, want, "verdicts differ from the undisturbed run");
    assert_no_infrastructure(out);
}

// ------------------------------------------------------------------ tests

#[test]
fn killing_the_zygote_the_monitor_and_workers_changes_no_episode() {
    let (_base_dir, base) = program_baseline();
    let mut rng = Rng::new();

    // 1. The zygote killed while the run establishes the ground truth (the
    //    program teacher's traces are those runs): the questions in flight
    //    run again in a new sandbox.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let args = program_args(&out, &[]);
    let mut child = spawn(&args);
    let restarts = inject(
        &mut child,
        &out,
        "penguins",
        &mut rng,
        0,
        Some(Kill::Zygote),
        &[],
    );
    let o = finish(child);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(restarts, 1);
    assert_same_episodes(&out, base);
    let inc = incidents(&out, "penguins");
    assert_eq!(inc["restarts"], 1, "{inc}");
    assert!(inc["retries"].as_u64().unwrap_or(0) >= 1, "{inc}");
    let log = log_text(&out, "penguins");
    assert!(log.contains("incident: retry ground truth of"), "{log}");

    // 2. Questions from an earlier run's file, so that the program teacher
    //    runs every program itself, question by question: workers, the
    //    monitor and the zygote killed between episodes.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let args = program_args(&out, &[]);
    let mut questions_args = args.clone();
    questions_args[0] = "questions".into();
    questions_args[1] = "--source".into();
    let o = run(&questions_args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let started = Instant::now();
    let mut child = spawn(&args);
    let k1 = rng.range(1, 4) as usize;
    let k2 = k1 + rng.range(3, 5) as usize;
    let k3 = k2 + rng.range(3, 5) as usize;
    let restarts = inject(
        &mut child,
        &out,
        "penguins",
        &mut rng,
        0,
        None,
        &[(k1, Kill::Workers), (k2, Kill::Monitor), (k3, Kill::Zygote)],
    );
    let o = finish(child);
    eprintln!("disturbed run: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(restarts, 2);
    assert_same_episodes(&out, base);

    let inc = incidents(&out, "penguins");
    assert_eq!(inc["restarts"], 2, "{inc}");
    let lost = inc["workers_lost"].as_u64().unwrap_or(0);
    let retries = inc["retries"].as_u64().unwrap_or(0);
    assert!(lost >= 2, "{inc}");
    assert!(retries >= 2 && retries <= lost, "{inc}");
    assert_eq!(summary(&out)["incidents"], inc);
    let log = log_text(&out, "penguins");
    assert_eq!(log.matches("incident: restart ").count(), 2, "{log}");
    assert!(log.contains("incident: retry "), "{log}");
    // Whether a killed worker was running a cell (then "killed from
    // outside" is logged) or idle (then nothing was lost) depends on the
    // moment; the classification itself is asserted in
    // a_worker_killed_by_its_code_is_a_cell_and_one_killed_from_outside_is_infrastructure.
    assert_eq!(
        log.matches("incident: worker lost").count() as u64,
        lost,
        "{log}"
    );

    let status = Command::new(BIN)
        .args(["status", "--out", s(&out)])
        .output()
        .expect("status");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains(&format!(
            "2 restarts, {lost} workers lost, 0 OOM kills, 0 timeouts, {retries} retries"
        )),
        "{shown}"
    );
}

#[test]
fn a_run_killed_during_ground_truth_and_one_out_of_restarts_complete_on_rerun() {
    let (_base_dir, base) = program_baseline();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    // No restarts: the sandbox's death leaves questions failed by the
    // infrastructure, which the next run of the same command must redo.
    let args = program_args(&out, &["--max-restarts", "0"]);
    let mut rng = Rng::new();

    // 1. The whole run killed while ground truth is computed.
    let mut child = spawn(&args);
    wait_for_ground_truth(&mut child, &out, "penguins", 0);
    std::thread::sleep(Duration::from_millis(rng.range(50, 300)));
    child.kill().expect("SIGKILL the run");
    let _ = child.wait();

    // 2. The same command; its zygote killed during ground truth, no
    // restart allowed: the run ends with infrastructure failures.
    let before = ground_truth_starts(&out, "penguins");
    assert_eq!(before, 1);
    let mut child = spawn(&args);
    inject(
        &mut child,
        &out,
        "penguins",
        &mut rng,
        before,
        Some(Kill::Zygote),
        &[],
    );
    let o = finish(child);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let sum = summary(&out);
    let failures = sum["datasets"][0]["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!failures.is_empty(), "{sum}");
    assert!(
        failures.iter().all(|f| f["stage"] == "infrastructure"),
        "only infrastructure failures: {sum}"
    );
    assert!(
        failures.iter().any(|f| f["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ground truth not established"))),
        "{sum}"
    );
    assert_no_infrastructure(&out);

    // 3. The same command again: everything completes, nothing needs --fresh.
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_same_episodes(&out, base);
    let sum = summary(&out);
    assert_eq!(sum["datasets"][0]["failures"], Value::Array(vec![]));
    assert_eq!(sum["datasets"][0]["questions"], 20);
}

// ------------------------------------------------------------------ LLM teacher

/// A scripted model: two turns per trace (a slow cell, then submit), so a
/// kill lands mid-trace.
fn scripted(req: &Request) -> Response {
    if req.contains("Reply with OK.") {
        return Response::reply("OK");
    }
    match req.n_assistant() {
        0 => Response::reply(
            "Counting first.\n```python\nimport time\ntime.sleep(0.3)\nn = int(len(df))\nprint(n)\n```",
        ),
        _ => Response::reply("Submitting.\n```python\nsubmit(n)\n```"),
    }
}

fn llm_args(out: &Path, url: &str) -> Vec<String> {
    [
        "run",
        "--teacher",
        "llm",
        "--model",
        "scripted-model",
        "--base-url",
        url,
        "--questions",
        "template",
        "--n-consistency",
        "1",
        "--max-turns",
        "3",
        "--datasets",
        s(&registry()),
        "--only",
        "penguins",
        "--max-questions",
        "10",
        "--concurrency",
        "3",
        "--out",
        s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

#[test]
fn the_llm_teacher_survives_kills_with_the_same_episodes() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(Server::start(scripted));
    let url = server.base_url();

    let base_dir = tempfile::tempdir().expect("tempdir");
    let base_out = base_dir.path().join("out");
    let o = run(&llm_args(&base_out, &url));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let base = episodes(&base_out);
    assert_eq!(base.len(), 10);

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut rng = Rng::new();
    let mut child = spawn(&llm_args(&out, &url));
    let k1 = rng.range(1, 3) as usize;
    let k2 = k1 + rng.range(2, 3) as usize;
    let restarts = inject(
        &mut child,
        &out,
        "penguins",
        &mut rng,
        0,
        None,
        &[(k1, Kill::Zygote), (k2, Kill::Workers)],
    );
    let o = finish(child);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(restarts, 1);
    assert_same_episodes(&out, &base);
    let inc = incidents(&out, "penguins");
    assert_eq!(inc["restarts"], 1, "{inc}");
    assert!(inc["workers_lost"].as_u64().unwrap_or(0) >= 2, "{inc}");
    assert!(inc["retries"].as_u64().unwrap_or(0) >= 2, "{inc}");
    drop(server);
}

// ------------------------------------------------------------------ part 4

/// What the program's own code does to its worker stays a cell status; a
/// worker killed from outside, or its zygote gone, is an infrastructure
/// error (`Err`, `is_infrastructure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_by_its_code_is_a_cell_and_one_killed_from_outside_is_infrastructure() {
    let (sb, _dir) = sandbox_with(|l| {
        l.cell_timeout = Duration::from_secs(3);
        l.memory_bytes = 256 << 20;
    })
    .await;
    let mut task = sb.task();
    let c = task
        .run_cell("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
        .await
        .expect("a crash of its own is a cell");
    assert_eq!(c.status, CellStatus::Crashed, "{c:#?}");
    let c = task
        .run_cell("import os\nos.abort()")
        .await
        .expect("an abort is a cell");
    assert_eq!(c.status, CellStatus::Crashed, "{c:#?}");
    let c = task
        .run_cell("import numpy as np\nblob = np.ones(100_000_000)\nblob.sum()")
        .await
        .expect("its own OOM is a cell");
    assert_eq!(c.status, CellStatus::Oom, "{c:#?}");
    let c = task
        .run_cell("while True: pass")
        .await
        .expect("a timeout is a cell");
    assert_eq!(c.status, CellStatus::Timeout, "{c:#?}");

    // Killed from outside while it runs a cell.
    task.ready().await.expect("a worker");
    let pid = task.worker().expect("worker").host_pid;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigkill(pid);
    });
    let e = task
        .run_cell("import time\ntime.sleep(5)")
        .await
        .expect_err("a worker killed from outside is not a cell");
    killer.await.expect("killer");
    assert!(
        matches!(e, SandboxError::WorkerKilled { host_pid, .. } if host_pid == pid),
        "{e}"
    );
    assert!(e.is_infrastructure(), "{e}");
    // The task goes on in a fresh worker; the sandbox is alive.
    let c = task.run_cell("1 + 1").await.expect("cell");
    assert_eq!(c.result.as_deref(), Some("2"));
    assert!(sb.is_alive());
    // Only the code's own faults are faults.
    let causes: Vec<_> = sb.faults().iter().map(|f| f.cause).collect();
    assert_eq!(
        causes,
        vec![
            CellStatus::Crashed,
            CellStatus::Crashed,
            CellStatus::Oom,
            CellStatus::Timeout
        ]
    );

    // Killed from outside while idle, between two cells of the task: its
    // state is gone, so the next cell is an infrastructure error too (not
    // a silent fresh worker).
    let c = task.run_cell("state = 7").await.expect("cell");
    assert_eq!(c.status, CellStatus::Ok, "{c:#?}");
    let pid = task.worker().expect("worker").host_pid;
    sigkill(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = task
        .run_cell("state")
        .await
        .expect_err("a worker killed between cells is not a cell");
    assert!(
        matches!(e, SandboxError::WorkerKilled { host_pid, .. } if host_pid == pid),
        "{e}"
    );
    let c = task.run_cell("1 + 2").await.expect("cell");
    assert_eq!(c.result.as_deref(), Some("3"));

    // The zygote killed from outside during a cell.
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigkill(zygote);
    });
    let e = task
        .run_cell("import time\ntime.sleep(5)")
        .await
        .expect_err("the zygote gone is not a cell");
    killer.await.expect("killer");
    assert!(matches!(e, SandboxError::ZygoteGone(_)), "{e}");
    assert!(e.is_infrastructure(), "{e}");
    assert!(!sb.is_alive());
    let e = sb.task().run_cell("1").await.expect_err("no more workers");
    assert!(e.is_infrastructure(), "{e}");
    sb.shutdown().await;
}

/// Unmounts a test's tmpfs, even when the test fails.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk under `--out` (a 160 KiB tmpfs): the run stops with a clear
/// error and exit 2, and nothing half-written is taken for data; with space
/// freed, the same command finishes with exactly the episodes of an
/// undisturbed run, each once.
#[test]
fn a_full_disk_stops_the_run_and_a_rerun_completes_exactly_once() {
    let base = &program_baseline().1;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160k", "tmpfs", s(&out)])
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let _guard = Mounted(out.clone());

    let o = run(&program_args(&out, &[]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("No space left on device") || err.contains("disk is full"),
        "{}",
        text(&o)
    );
    // Whatever was written is whole: every line parses.
    let partial = episodes(&out);
    assert!(partial.len() < base.len(), "the disk filled before the end");

    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m", s(&out)])
        .status()
        .expect("remount runs");
    assert!(grown.success());
    let o = run(&program_args(&out, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_same_episodes(&out, base);
}

const OOM_TEMPLATE: &str = r#"
name = "needs_too_much_memory"
description = "A reference program that allocates far more than a worker may"
difficulty = "EASY"
n_steps = 1
question = "How many rows does the table have?"
hint = "len(df)"
output_type = "scalar"
output_schema = "integer"
max_bindings = 1
[[steps]]
reasoning = "Allocate, then count."
code = """
blob = bytearray(900 * 2**20)
submit(len(df))
"""
[[alternatives]]
name = "shape"
reasoning = "Count the rows."
code = """
submit(int(df.shape[0]))
"""
"#;

const SLOW_TEMPLATE: &str = r#"
name = "takes_too_long"
description = "A reference program that outlasts the cell timeout"
difficulty = "EASY"
n_steps = 1
question = "How many columns does the table have?"
hint = "df.shape[1]"
output_type = "scalar"
output_schema = "integer"
max_bindings = 1
[[steps]]
reasoning = "Wait, then count."
code = """
import time
time.sleep(30)
submit(int(df.shape[1]))
"""
[[alternatives]]
name = "columns"
reasoning = "Count the columns."
code = """
submit(len(df.columns))
"""
"#;

/// A program that exceeds its worker's memory or the cell timeout fails as
/// the program's fault (never a restart, never infrastructure), and each
/// OOM kill and timeout kill is an incident line in the dataset's log and a
/// count in summary.json.
#[test]
fn oom_kills_and_timeouts_of_programs_are_counted_as_incidents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(templates.join("needs_too_much_memory.toml"), OOM_TEMPLATE).expect("write");
    std::fs::write(templates.join("takes_too_long.toml"), SLOW_TEMPLATE).expect("write");
    let out = dir.path().join("out");
    let args: Vec<String> = [
        "run",
        "--questions",
        "template",
        "--datasets",
        s(&registry()),
        "--only",
        "penguins",
        "--templates",
        s(&templates),
        "--max-questions",
        "2",
        "--memory",
        "256M",
        "--cell-timeout",
        "3s",
        "--out",
        s(&out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let sum = summary(&out);
    let ds = &sum["datasets"][0];
    let failures = ds["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 2, "{sum}");
    for f in &failures {
        assert_eq!(f["stage"], "ground_truth", "the program's fault: {f}");
    }
    let inc = incidents(&out, "penguins");
    assert!(inc["oom_kills"].as_u64().unwrap_or(0) >= 1, "{inc}");
    assert!(inc["timeouts"].as_u64().unwrap_or(0) >= 1, "{inc}");
    assert_eq!(inc["restarts"], 0, "{inc}");
    let log = log_text(&out, "penguins");
    let lines = |word: &str| {
        log.lines()
            .filter(|l| l.contains("incident:") && l.to_lowercase().contains(word))
            .count()
    };
    assert!(lines("oom kill") >= 1, "{log}");
    assert!(lines("timeout kill") >= 1, "{log}");
    assert!(episodes(&out).is_empty());
}

/// The zygote killed while it is still importing the data stack (the
/// dataset's first sandbox never became ready): the start is tried again
/// within the restart budget, and the run ends with the undisturbed
/// episodes and one restart.
#[test]
fn a_sandbox_killed_while_starting_is_started_again() {
    let base = &program_baseline().1;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut child = spawn(&program_args(&out, &[]));
    let root = child.id();
    let mut zygote = None;
    wait_for(&mut child, "a zygote", || {
        zygote = jails(root).first().map(|j| j.zygote);
        zygote.is_some()
    });
    let zygote = zygote.expect("a zygote");
    // Still loading: no "ready" yet means no question has started.
    assert_eq!(ground_truth_starts(&out, "penguins"), 0);
    sigkill(zygote);
    let o = finish(child);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_same_episodes(&out, base);
    assert_eq!(incidents(&out, "penguins")["restarts"], 1);
    assert!(
        log_text(&out, "penguins").contains("incident: the sandbox did not start"),
        "{}",
        log_text(&out, "penguins")
    );
}
