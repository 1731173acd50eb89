//! Attacks on the supervisor itself, from a worker that drives its own
//! socket (it finds it by scanning its descriptors, as any cell can): a flood
//! of descriptors, frame headers announcing huge frames, and result frames it
//! writes itself past zygote.py's capture. Each in a real jail, checked from
//! inside (what the payload recorded or forged) and from outside (the
//! supervisor's own descriptors, what it returned, the sandboxes live on).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use csv_agent::sandbox::{CellResult, CellStatus, Sandbox, Task};
use serde_json::Value;

/// The tests here count the descriptors of this process: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Python helpers: the worker's own socket, a frame, this cell's number.
const PRELUDE: &str = r#"
import array, json, os, socket, stat, struct, sys, time

def own_socket():
    for fd in range(3, 1024):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            return fd, socket.socket(fileno=os.dup(fd))
    raise RuntimeError("the worker has no socket")

def frame(message):
    body = json.dumps(message, ensure_ascii=False).encode()
    return struct.pack(">I", len(body)) + body

def cell_number():
    # The zygote compiles cell K as "<cell-K>".
    return int(sys._getframe().f_code.co_filename[len("<cell-"):-1])

def record(name, **progress):
    # Atomic, so a SIGKILL never leaves half a file.
    with open(f"/tmp/{name}.tmp", "w") as handle:
        json.dump(progress, handle)
    os.chmod(f"/tmp/{name}.tmp", 0o644)  # read by another worker (another uid)
    os.replace(f"/tmp/{name}.tmp", f"/tmp/{name}.json")
"#;

fn payload(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// Open descriptors of this process, which is the supervisor.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Samples `open_fds` until dropped; `peak()` is the most it saw.
struct FdSampler {
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicUsize::new(open_fds()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(open_fds(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        FdSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(task: &mut Task, code: &str) -> CellResult {
    task.run_cell(code).await.expect("the cell runs")
}

/// A worker of this sandbox answers a trivial cell.
async fn assert_answers(sb: &Sandbox) {
    let mut worker = sb.acquire().await.expect("the zygote forks a worker");
    let cell = worker.exec("6 * 7").await.expect("the cell runs");
    assert_ok(&cell);
    assert_eq!(cell.result.as_deref(), Some("42"), "{cell:#?}");
}

/// The cell was ended by the supervisor for breaking the protocol.
fn assert_violation(cell: &CellResult, what: &str) {
    assert_eq!(cell.status, CellStatus::Crashed, "{what}: {cell:#?}");
    assert_eq!(
        cell.error.as_ref().and_then(|e| e["type"].as_str()),
        Some("ProtocolViolation"),
        "{what}: {cell:#?}"
    );
    assert!(
        cell.stdout.is_empty() && cell.result.is_none(),
        "{what}: {cell:#?}"
    );
}

// A worker floods its socket with descriptors (250 per message, each message
// also a byte of a frame announced as 60 MiB), another announces a
// 0x7fffffff-byte frame, a third announces a 5 MiB frame (under the bound)
// and trickles it. The supervisor must hold none of the descriptors, end each
// cell (violation, violation, timeout) without waiting for the frame, and
// both the attacked sandbox and a bystander keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_make_the_supervisor_hold_descriptors_or_frames() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (bystander, _bdir) = sandbox().await;
    let (sb, _dir) = sandbox_with(|l| l.cell_timeout = Duration::from_secs(4)).await;
    let mut flood = sb.task();
    let mut huge = sb.task();
    let mut trickle = sb.task();
    for task in [&mut flood, &mut huge, &mut trickle] {
        task.ready().await.expect("a worker");
    }
    let mut by_task = bystander.task();
    assert_ok(&run(&mut by_task, "x = 1").await);
    let before = open_fds();
    let sampler = FdSampler::start();

    let flood_code = payload(
        r#"
fd, sock = own_socket()
nulls = [os.open("/dev/null", os.O_RDONLY) for _ in range(250)]
rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", nulls))]
batches, error = 0, None
record("flood", fd=fd, sending=0, batches=0, error=None)
deadline = time.time() + 2
while time.time() < deadline:
    data = struct.pack(">I", 60 << 20) + b"{" if batches == 0 else b" "
    # Recorded before sending: the supervisor may kill us before sendmsg returns.
    record("flood", fd=fd, sending=batches + 1, batches=batches, error=None)
    try:
        sock.sendmsg([data], rights)
    except OSError as exc:
        error = repr(exc)
        record("flood", fd=fd, sending=batches + 1, batches=batches, error=error)
        break
    batches += 1
    record("flood", fd=fd, sending=batches, batches=batches, error=None)
print("flood finished", batches, error)
"#,
    );
    let huge_code = payload(
        r#"
fd, sock = own_socket()
record("huge", fd=fd, sent=0)
sock.sendall(struct.pack(">I", 0x7fffffff))
sent = 0
for _ in range(200):
    sock.sendall(b"x" * 4096)
    sent += 4096
    record("huge", fd=fd, sent=sent)
    time.sleep(0.01)
print("huge finished", sent)
"#,
    );
    let trickle_code = payload(
        r#"
fd, sock = own_socket()
sock.sendall(struct.pack(">I", 5 << 20) + b'{"type":"result","stdout":"')
sent = 0
while True:
    sock.sendall(b"y" * 1024)
    sent += 1024
    record("trickle", fd=fd, sent=sent)
    time.sleep(0.02)
"#,
    );
    let attack = async {
        let t0 = Instant::now();
        let a = run(&mut flood, &flood_code).await;
        let b = run(&mut huge, &huge_code).await;
        let fast = t0.elapsed();
        let c = run(&mut trickle, &trickle_code).await;
        (a, b, fast, c)
    };
    let bystander_cells = async {
        let mut answers = Vec::new();
        for i in 0..5 {
            answers.push(run(&mut by_task, &format!("x = x + {i}\nx")).await);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answers
    };
    let ((flood_cell, huge_cell, fast, trickle_cell), answers) =
        tokio::join!(attack, bystander_cells);
    let peak = sampler.peak();
    drop(sampler);

    // inside: the attacks ran (the payloads found their socket and sent)
    let mut reader = sb.task();
    let seen = run(
        &mut reader,
        "import json\nprint(json.dumps({n: json.load(open(f'/tmp/{n}.json')) for n in ('flood', 'huge', 'trickle')}))",
    )
    .await;
    assert_ok(&seen);
    let seen: Value = serde_json::from_str(seen.stdout.trim()).expect("the records");
    eprintln!("attacker records: {seen}");
    for name in ["flood", "huge", "trickle"] {
        assert!(seen[name]["fd"].as_i64().is_some_and(|fd| fd > 2), "{seen}");
    }
    assert!(
        seen["flood"]["sending"].as_u64().is_some_and(|b| b >= 1),
        "the flood never got to send descriptors: {seen}"
    );
    assert!(
        seen["trickle"]["sent"].as_u64().is_some_and(|b| b > 0),
        "{seen}"
    );

    // outside: no descriptor held, each cell ended, the fault log says why
    let after = open_fds();
    eprintln!("supervisor descriptors: {before} before, peak {peak}, {after} after");
    assert!(
        peak <= before + 50 && after <= before + 50,
        "the supervisor held worker descriptors: {before} open before, peak {peak}, {after} after"
    );
    assert_violation(&flood_cell, "descriptor flood");
    let flood_error = flood_cell
        .error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(flood_error.contains("descriptors"), "{flood_error}");
    assert_violation(&huge_cell, "0x7fffffff-byte header");
    let huge_error = huge_cell
        .error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(huge_error.contains("2147483647"), "{huge_error}");
    assert!(
        fast < Duration::from_secs(3),
        "the violations were not cut short: {fast:?}"
    );
    assert_eq!(
        trickle_cell.status,
        CellStatus::Timeout,
        "{trickle_cell:#?}"
    );
    assert!(trickle_cell.stdout.is_empty(), "{trickle_cell:#?}");
    let faults = sb.faults();
    assert_eq!(
        faults
            .iter()
            .filter(|f| f.detail.starts_with("protocol violation"))
            .count(),
        2,
        "{faults:#?}"
    );
    assert!(
        faults.iter().any(|f| f.cause == CellStatus::Timeout),
        "{faults:#?}"
    );

    // both sandboxes live on
    for (i, cell) in answers.iter().enumerate() {
        assert_ok(cell);
        let expected = 1 + (0..=i).sum::<usize>();
        assert_eq!(cell.result.as_deref(), Some(expected.to_string().as_str()));
    }
    assert_answers(&sb).await;
    assert_answers(&bystander).await;
    sb.shutdown().await;
    bystander.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "took {:?}",
        started.elapsed()
    );
}

/// A cell that writes its own `result` frame (status, stdout, result and
/// counters of its choosing) for its own cell number, then exits.
fn forged(status: &str, stdout_bytes: usize, cell_offset: i64) -> String {
    payload(&format!(
        r#"
fd, sock = own_socket()
sock.sendall(frame({{
    "type": "result", "cell": cell_number() + {cell_offset}, "status": "{status}",
    "stdout": "FORGED-" + "A" * {stdout_bytes}, "stdout_truncated": 0,
    "stderr": "", "stderr_truncated": 0,
    "result": "FORGED-" + "B" * (1 << 20), "error": None,
    "submitted": None, "hooks": [], "elapsed_ms": 0.0,
}}))
os._exit(0)
"#
    ))
}

// The worker's frame bypasses zygote.py's capture: what the supervisor
// returns must still be capped (and say so), and a frame of the wrong status
// or cell, or over the frame bound, is not data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_a_worker_forges_are_capped_or_refused() {
    let _serial = SERIAL.lock().await;
    let (sb, dir) = sandbox().await;
    let cap = sb.limits().max_output_bytes as usize;

    // 3 MiB of stdout and 1 MiB of result: within the frame bound, so the
    // frame is read, and cut to the cap here.
    let mut task = sb.task();
    let cell = run(&mut task, &forged("ok", 3 << 20, 0)).await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:#?}");
    assert!(
        cell.stdout.starts_with("FORGED-AAAA"),
        "not the forged frame"
    );
    assert!(
        cell.stdout.len() <= cap + 64,
        "{} bytes of stdout",
        cell.stdout.len()
    );
    let cut = (3 << 20) + 7 - cap;
    assert_eq!(cell.stdout_truncated, cut as u64);
    assert!(
        cell.stdout
            .ends_with(&format!("\n[... {cut} bytes truncated]\n")),
        "the cut is not said: {}",
        &cell.stdout[cell.stdout.len() - 80..]
    );
    let result = cell.result.as_deref().unwrap_or_default();
    assert!(result.starts_with("FORGED-BBBB") && result.len() <= cap + 64);
    assert!(
        result.ends_with(" bytes truncated]\n"),
        "{}",
        &result[result.len() - 80..]
    );

    // An unknown status and a result for another cell are violations.
    let cell = run(&mut task, &forged("pwned", 10, 0)).await;
    assert_violation(&cell, "unknown status");
    let error = cell
        .error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("unknown status"), "{error}");
    let cell = run(&mut task, &forged("ok", 10, 1)).await;
    assert_violation(&cell, "another cell's result");
    let error = cell
        .error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("expected the result of cell"), "{error}");
    assert_answers(&sb).await;
    sb.shutdown().await;

    // Through the binary: 3 MiB forged (capped) then 40 MiB forged (over
    // the frame bound: refused), and the JSON it prints stays small.
    let csv = write_csv(dir.path(), "cli.csv", SMALL_CSV);
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        csv.to_str().expect("utf-8 path"),
        "--json",
        "--code",
        &forged("ok", 3 << 20, 0),
        "--code",
        &forged("ok", 40 << 20, 0),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.len() < 4 * cap,
        "{} bytes of JSON for two cells",
        stdout.len()
    );
    assert!(stderr.len() < 64 * 1024, "{} bytes of log", stderr.len());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout:.2000}");
    assert_eq!(lines[0]["status"], "ok");
    let first = lines[0]["stdout"].as_str().unwrap_or_default();
    assert!(first.starts_with("FORGED-") && first.ends_with(" bytes truncated]\n"));
    assert_eq!(lines[1]["status"], "crashed");
    assert_eq!(lines[1]["error"]["type"], "ProtocolViolation");
    assert!(
        lines[1]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit")),
        "{}",
        lines[1]
    );
}
