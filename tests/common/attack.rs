//! Helpers of the attack suites: payloads that report what they observed as
//! JSON, and host-side checks that the zygote and sibling workers are whole.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use csv_agent::sandbox::{CellResult, Sandbox, Worker};
use serde_json::Value;

use super::assert_ok;

/// Python helpers every payload starts with: `attempt(fn)` runs a probe and
/// records its value or the error it raised; `report(**obs)` prints the
/// observations as one JSON line (the last line of stdout); `sys_call(nr,
/// *args)` makes a raw system call and records its result or errno.
pub const PRELUDE: &str = r#"
import ctypes, errno, json, os, resource, signal, socket, stat, sys, time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": True, "value": fn(*args, **kwargs)}
    except Exception as exc:
        return {"ok": False, "type": type(exc).__name__, "errno": getattr(exc, "errno", None), "message": str(exc)}

def sys_call(nr, *args):
    ctypes.set_errno(0)
    r = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r < 0:
        e = ctypes.get_errno()
        return {"ok": False, "errno": e, "message": os.strerror(e)}
    return {"ok": True, "value": r}

def read(path, mode="r"):
    with open(path, mode) as handle:
        return handle.read()

def write(path, data="pwned\n", mode="w"):
    with open(path, mode) as handle:
        return handle.write(data)

def report(**observations):
    print(json.dumps(observations, default=repr))
"#;

/// The prelude plus `body`, with every `@NAME@` marker replaced.
pub fn payload(body: &str, vars: &[(&str, String)]) -> String {
    let mut code = format!("{PRELUDE}\n{body}");
    for (name, value) in vars {
        code = code.replace(&format!("@{name}@"), value);
    }
    let unfilled = code.split('@').skip(1).step_by(2).any(|marker| {
        !marker.is_empty() && marker.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    });
    assert!(!unfilled, "unfilled marker in {code}");
    code
}

/// A fresh random marker; if it ever shows in a cell's output, the jail leaked.
pub fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    format!("SECRET-{}", hex::encode(bytes))
}

/// An `attempt()` record that failed.
pub fn assert_refused(obs: &Value, what: &str) {
    assert_eq!(
        obs["ok"],
        Value::Bool(false),
        "`{what}` should have failed inside the jail, it gave {obs}"
    );
}

/// The JSON the payload printed last (the cell must have succeeded).
pub fn observed(cell: &CellResult) -> Value {
    assert_ok(cell);
    let line = cell
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("the payload printed no JSON: {cell:#?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON from the payload ({e}): {line}"))
}

/// An `attempt()`/`sys_call()` record that failed with one of these errnos.
pub fn assert_refused_with(obs: &Value, what: &str, errnos: &[i32]) {
    assert_refused(obs, what);
    let errno = obs["errno"].as_i64().unwrap_or(-1);
    assert!(
        errnos.iter().any(|e| i64::from(*e) == errno),
        "`{what}` failed with errno {errno}, expected one of {errnos:?}: {obs}"
    );
}

/// An `attempt()`/`sys_call()` record that succeeded.
pub fn assert_allowed(obs: &Value, what: &str) {
    assert_eq!(
        obs["ok"],
        Value::Bool(true),
        "`{what}` must keep working for the caller itself: {obs}"
    );
}

pub async fn exec(worker: &mut Worker, code: &str) -> CellResult {
    worker.exec(code).await.expect("the cell runs")
}

/// The worker answers a trivial cell.
pub async fn assert_answers(worker: &mut Worker) {
    let cell = exec(worker, "6 * 7").await;
    assert_ok(&cell);
    assert_eq!(cell.result.as_deref(), Some("42"), "{cell:#?}");
}

/// Host-side liveness: the pid exists and is neither a zombie nor stopped.
pub fn host_pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?');
    !matches!(state, 'Z' | 'X' | 'x' | 'T' | 't')
}

pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Outside: the zygote is alive on the host and forks a worker that answers.
pub async fn assert_sandbox_healthy(sb: &Sandbox) {
    let zygote = sb.zygote_host_pid().expect("the zygote has a host pid");
    assert!(
        host_pid_alive(zygote),
        "the zygote (host pid {zygote}) is gone"
    );
    let mut fresh = sb.acquire().await.expect("the zygote forks a new worker");
    assert_answers(&mut fresh).await;
    assert!(
        host_pid_alive(zygote),
        "the zygote (host pid {zygote}) is gone"
    );
}

/// Host pids of every process in the jail's pid namespace (zombies included).
pub fn jail_processes(sb: &Sandbox) -> Vec<u32> {
    let zygote = sb.zygote_host_pid().expect("the zygote has a host pid");
    let ns = std::fs::read_link(format!("/proc/{zygote}/ns/pid")).expect("the zygote's pid ns");
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .map(|l| l == ns)
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}
