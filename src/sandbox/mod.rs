//! The jail: one [`Sandbox`] per dataset (a jailed, pre-warmed Python zygote
//! with the CSV loaded as `df`) and one [`Worker`] per task, forked from it.
//!
//! This module knows nothing of questions, teachers or LLMs. It owns the
//! processes, the layers around them, and the framed protocol to them.
//!
//! ```text
//! supervisor (tokio) ──spawn──▶ jail init (our binary, re-exec'd) ──fork──▶ pid 1: zygote.py
//!                                                                     └─fork─▶ worker, worker, …
//! ```

pub mod caps;
pub mod cgroup;
pub mod image;
pub mod init;
pub mod landlock;
pub mod layers;
pub mod measure;
pub mod memory;
pub mod mounts;
pub mod protocol;
pub mod rlimits;
pub mod seccomp;
pub mod spawn;
pub mod uids;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

pub use image::{Image, ImageError, ImageSpec};
pub use layers::{IsolationReport, Layer, LayerStatus, WorkerIsolation, LAYER_NAMES};
use protocol::{
    CellReply, ChannelPolicy, FramedSocket, FromWorker, FromZygote, ProtocolError, ScopeStatus,
    ToWorker, ToZygote, WorkerLimits, ZygoteReady,
};
pub use uids::{IdLease, JailIds};

/// The zygote program, embedded so the binary is all a host needs besides the image.
pub const ZYGOTE_PY: &str = include_str!("../../sandbox-image/zygote.py");

/// Path of the dataset directory inside the jail.
pub const DATA_DIR: &str = "/data";
/// Open files the zygote may hold (see [`rlimits::RlimitSpec::nofile`]).
const ZYGOTE_NOFILE: u64 = 65_536;

/// Paths the jail mounts or creates itself; nothing of the host may be bound
/// beneath them.
const JAIL_OWN_PATHS: &[&str] = &[
    "/tmp", "/scratch", "/dev", "/proc", "/data", "/sandbox", "/etc",
];

/// Resource limits of one sandbox and its workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory per worker (cgroup limit; address-space fallback without cgroups).
    pub memory_bytes: u64,
    /// Memory of the zygote's own group (imports + the loaded frame).
    pub zygote_memory_bytes: u64,
    /// Processes + threads per worker.
    pub pids: u64,
    /// Wall-clock limit per cell.
    pub cell_timeout: Duration,
    /// CPU seconds per worker (one task).
    pub cpu_seconds: u64,
    /// Bytes kept per output stream per cell.
    pub max_output_bytes: u64,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub fsize_bytes: u64,
    pub nofile: u64,
    /// Jail-wide process backstop (RLIMIT_NPROC inside the user namespace).
    pub nproc: u64,
}

/// Per-worker memory and cell timeout a user chose (`--memory`,
/// `--cell-timeout`, or `[sandbox]` in csv-agent.toml); what is None is
/// derived from the dataset's size by [`Limits::for_dataset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitChoice {
    pub memory_bytes: Option<u64>,
    pub cell_timeout: Option<Duration>,
}

/// The smallest per-worker memory limit accepted: the data stack alone
/// takes about 100 MiB of a worker's share.
pub const MIN_WORKER_MEMORY: u64 = 256 << 20;

impl Limits {
    /// The limits for a dataset whose CSV has `csv_bytes` bytes (the loaded
    /// frame is about that size for numeric data and up to a few times it
    /// for text). Per worker: 1 GiB, or 256 MiB + 6 × the CSV when that is
    /// more (a task's intermediates are copies of columns of the frame: a
    /// 205 MB CSV gets 1.4 GiB); the zygote's group: 4 GiB, or 8 × the
    /// CSV; the cell timeout: 60 s plus 30 s per 100 MB of CSV. A choice
    /// overrides its derived value.
    pub fn for_dataset(csv_bytes: u64, choice: LimitChoice) -> Limits {
        let base = Limits::default();
        let derived_memory = base
            .memory_bytes
            .max((256 << 20) + csv_bytes.saturating_mul(6));
        // Whole MiB, so the report reads cleanly.
        let derived_memory = derived_memory.div_ceil(1 << 20) << 20;
        let derived_timeout =
            base.cell_timeout + Duration::from_secs(csv_bytes.saturating_mul(30) / 100_000_000);
        let memory_bytes = choice.memory_bytes.unwrap_or(derived_memory);
        Limits {
            memory_bytes,
            zygote_memory_bytes: base
                .zygote_memory_bytes
                .max(csv_bytes.saturating_mul(8))
                .max(memory_bytes),
            cell_timeout: choice.cell_timeout.unwrap_or(derived_timeout),
            ..base
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 1 << 30,
            zygote_memory_bytes: 4 << 30,
            pids: 64,
            cell_timeout: Duration::from_secs(60),
            cpu_seconds: 900,
            max_output_bytes: 64 * 1024,
            tmp_bytes: 512 << 20,
            shm_bytes: 64 << 20,
            fsize_bytes: 512 << 20,
            nofile: 1024,
            nproc: 512,
        }
    }
}

/// Parse sizes like `512M`, `2G`, `1.5G`, `4096` (bytes), `64k`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (use e.g. 512M or 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use K, M, G or T)"
            ))
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("size `{text}` must be positive"));
    }
    Ok((value * mult as f64) as u64)
}

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub csv: PathBuf,
    pub image: Image,
    pub limits: Limits,
    /// Run even when a layer is unavailable (it is still reported).
    pub allow_degraded: bool,
    /// The binary to re-execute as the jail init (default: this executable).
    pub init_program: PathBuf,
    /// Workers kept pre-forked so a task starts without waiting.
    pub spare_workers: usize,
    /// Give each worker its own uid where the host lends a uid range (a root
    /// supervisor); `false` forces single-uid mode (see [`uids`]).
    pub worker_uids: bool,
    pub startup_timeout: Duration,
    /// Test-only knobs (see [`TestHooks`]); the default changes nothing.
    #[doc(hidden)]
    pub test_hooks: TestHooks,
}

/// A test hook called with the dataset's canonical path.
#[doc(hidden)]
pub type DatasetHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Test-only knobs of [`SandboxOptions`]: ways to make the races and
/// failures the jail must survive happen on purpose.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// Runs right after `Sandbox::start` opened and checked the dataset,
    /// with its canonical path (a test swaps the path for a symlink here).
    pub after_dataset_open: Option<DatasetHook>,
    /// Extra paths for every worker's own Landlock domain (a path Landlock
    /// refuses makes the worker's scope fail for real).
    pub extra_worker_paths: Vec<String>,
}

impl std::fmt::Debug for TestHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHooks")
            .field("after_dataset_open", &self.after_dataset_open.is_some())
            .field("extra_worker_paths", &self.extra_worker_paths)
            .finish()
    }
}

impl SandboxOptions {
    pub fn new(csv: impl Into<PathBuf>, image: Image) -> Result<Self, SandboxError> {
        let init_program = std::env::current_exe().map_err(|source| SandboxError::Io {
            what: "locating our own executable".to_string(),
            source,
        })?;
        Ok(SandboxOptions {
            csv: csv.into(),
            image,
            limits: Limits::default(),
            allow_degraded: false,
            init_program,
            spare_workers: 1,
            worker_uids: true,
            startup_timeout: Duration::from_secs(180),
            test_hooks: TestHooks::default(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("dataset {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Spawn(#[from] spawn::SpawnError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("refusing to run code with isolation layers missing:\n{}\nfix the host, or pass --allow-degraded to run with the layers that work", format_layers(.0))]
    Degraded(Vec<Layer>),
    #[error("the image location {path} lies under {reserved}, which the jail mounts for itself; keep images elsewhere (set CSV_AGENT_CACHE_DIR, e.g. to ~/.cache/csv-agent or /var/tmp/csv-agent)")]
    ImageLocation {
        path: PathBuf,
        reserved: &'static str,
    },
    #[error("the zygote could not load the dataset: {0}")]
    Load(String),
    #[error("the zygote is gone ({0})")]
    ZygoteGone(String),
    #[error("forking worker {worker_id} failed: {error}")]
    Fork {
        worker_id: u64,
        error: String,
        /// A shortage that may pass (fork's EAGAIN, a failed hand-over):
        /// `fork_worker` retries these before reporting them.
        transient: bool,
    },
    #[error("worker {worker_id}: its own Landlock domain could not be applied ({reason}); refusing to run code in it (pass --allow-degraded to accept workers without it)")]
    WorkerScope { worker_id: u64, reason: String },
    #[error("worker {worker_id}: {detail}")]
    Worker { worker_id: u64, detail: String },
    /// A worker could not be started for a reason outside any code: its
    /// cgroup, its pidfd, or the worker gone before its first cell.
    #[error("worker {worker_id} could not be started: {detail}")]
    WorkerStart { worker_id: u64, detail: String },
    /// The worker died during a cell for a reason outside its code: a
    /// SIGKILL the supervisor did not send (no timeout) with no OOM event
    /// in its cgroup — another process, the host's OOM killer.
    #[error("worker {worker_id} (host pid {host_pid}) was killed from outside the sandbox during cell {cell}: {detail}")]
    WorkerKilled {
        worker_id: u64,
        host_pid: u32,
        cell: u64,
        detail: String,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

impl SandboxError {
    /// An infrastructure failure: the sandbox (zygote, monitor, control
    /// socket) is gone, a worker was lost for a reason outside its code, a
    /// worker could not be started, or the supervisor's own I/O failed.
    /// Worth retrying in a healthy sandbox; never a fact about a program.
    /// Everything else (the dataset, the image, missing layers, a refused
    /// worker scope) would fail the same way again.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            SandboxError::Io { .. }
            | SandboxError::Spawn(_)
            | SandboxError::Protocol(_)
            | SandboxError::ZygoteGone(_)
            | SandboxError::Fork { .. }
            | SandboxError::WorkerStart { .. }
            | SandboxError::WorkerKilled { .. }
            | SandboxError::Timeout(..) => true,
            SandboxError::Dataset { .. }
            | SandboxError::Image(_)
            | SandboxError::Degraded(_)
            | SandboxError::ImageLocation { .. }
            | SandboxError::Load(_)
            | SandboxError::WorkerScope { .. }
            | SandboxError::Worker { .. } => false,
        }
    }
}

fn format_layers(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| format!("  {}: {} ({})", l.name, l.status.as_str(), l.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------ logging

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

static LOG_LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();

/// How much the sandbox writes to stderr: `error`, `warn` (the default),
/// `info` or `debug`. The caller passes its setting in once (the CLI reads
/// `CSV_AGENT_LOG`); the sandbox reads no configuration of its own. A
/// second call changes nothing.
pub fn set_log_level(name: &str) {
    let level = match name.trim().to_ascii_lowercase().as_str() {
        "error" => Level::Error,
        "info" => Level::Info,
        "debug" | "trace" => Level::Debug,
        _ => Level::Warn,
    };
    let _ = LOG_LEVEL.set(level);
}

fn log_level() -> Level {
    *LOG_LEVEL.get_or_init(|| Level::Warn)
}

fn log(level: Level, msg: &str) {
    if level <= log_level() {
        let tag = match level {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        };
        eprintln!("csv-agent: {tag}: {msg}");
    }
}

/// A line the jail wrote to its stderr (init diagnostics, zygote warnings).
pub(crate) fn log_line(source: &str, line: &str) {
    log(Level::Debug, &format!("[{source}] {line}"));
}

// ------------------------------------------------------------------ results

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    Ok,
    Error,
    Timeout,
    Oom,
    Crashed,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Ok => "ok",
            CellStatus::Error => "error",
            CellStatus::Timeout => "timeout",
            CellStatus::Oom => "oom",
            CellStatus::Crashed => "crashed",
        }
    }
    /// The worker did not survive this cell.
    pub fn lost_worker(self) -> bool {
        matches!(
            self,
            CellStatus::Timeout | CellStatus::Oom | CellStatus::Crashed
        )
    }
}

/// The outcome of one cell, in the shape `sandbox exec --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub status: CellStatus,
    pub stdout: String,
    pub stderr: String,
    /// `repr` of a trailing expression.
    pub result: Option<String>,
    /// `{type, message, traceback}` for errors; a description for timeout/oom/crashed.
    pub error: Option<serde_json::Value>,
    pub submitted: Option<serde_json::Value>,
    pub hooks: Vec<serde_json::Value>,
    pub elapsed_ms: f64,
    /// Bytes of stdout / stderr cut by the output cap.
    #[serde(default)]
    pub stdout_truncated: u64,
    #[serde(default)]
    pub stderr_truncated: u64,
}

/// Room above the output cap for the truncation line the zygote appends
/// (`\n[... N bytes truncated]\n`, at most 43 bytes), so text it already cut
/// is not cut twice.
const TRUNCATION_LINE_ROOM: usize = 64;

/// Longest exception class name kept.
const MAX_ERROR_TYPE: usize = 256;

/// Cut `text` to its first `cap` bytes (never inside a UTF-8 character) and
/// add the zygote's truncation line, when it is longer than `cap` plus the
/// room for such a line; returns the bytes cut (0 if none). The same format
/// as `cap_output` in zygote.py.
fn cap_text(text: &mut String, cap: usize) -> u64 {
    if text.len() <= cap.saturating_add(TRUNCATION_LINE_ROOM) {
        return 0;
    }
    let mut cut = cap;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let removed = (text.len() - cut) as u64;
    text.truncate(cut);
    text.shrink_to_fit();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("[... {removed} bytes truncated]\n"));
    removed
}

/// At most `max` characters of what a worker sent, for an error message.
fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A worker's `error` field: `{type, message, traceback}`, all strings, each
/// capped (`type` at [`MAX_ERROR_TYPE`], the others at `cap`); anything else
/// is a protocol violation.
fn checked_error(error: serde_json::Value, cap: usize) -> Result<serde_json::Value, String> {
    let serde_json::Value::Object(mut fields) = error else {
        return Err("an error that is not an object".to_string());
    };
    let mut take = |name: &str, cap: usize| match fields.remove(name) {
        Some(serde_json::Value::String(mut text)) => {
            cap_text(&mut text, cap);
            Ok(text)
        }
        _ => Err(format!("an error without a string {name:?}")),
    };
    let kind = take("type", MAX_ERROR_TYPE)?;
    let message = take("message", cap)?;
    let traceback = take("traceback", cap)?;
    Ok(serde_json::json!({ "type": kind, "message": message, "traceback": traceback }))
}

impl CellResult {
    /// Turn a worker's reply into a result without trusting it: every text
    /// field is cut to the output cap here (whatever the worker claims to
    /// have cut), the counters say what was cut, and a reply that does not
    /// have the documented shape is a protocol violation (`Err` with what was
    /// wrong). `submitted` and `hooks` are bounded by the worker channel's
    /// frame limit, not cut (a cut value would be another answer).
    fn from_reply(reply: CellReply, max_output: u64) -> Result<Self, String> {
        let cap = usize::try_from(max_output).unwrap_or(usize::MAX);
        let status = match reply.status.as_str() {
            "ok" => CellStatus::Ok,
            "error" => CellStatus::Error,
            other => return Err(format!("unknown status {:?}", excerpt(other, 40))),
        };
        if (status == CellStatus::Error) != reply.error.is_some() {
            return Err(format!(
                "status {:?} with {} error",
                reply.status,
                if reply.error.is_some() { "an" } else { "no" }
            ));
        }
        let error = reply.error.map(|e| checked_error(e, cap)).transpose()?;
        let (mut stdout, mut stderr, mut result) = (reply.stdout, reply.stderr, reply.result);
        let stdout_cut = cap_text(&mut stdout, cap);
        let stderr_cut = cap_text(&mut stderr, cap);
        if let Some(text) = &mut result {
            cap_text(text, cap);
        }
        Ok(CellResult {
            status,
            stdout,
            stderr,
            result,
            error,
            submitted: reply.submitted,
            hooks: reply.hooks,
            elapsed_ms: reply.elapsed_ms,
            stdout_truncated: reply.stdout_truncated.saturating_add(stdout_cut),
            stderr_truncated: reply.stderr_truncated.saturating_add(stderr_cut),
        })
    }

    fn lost(status: CellStatus, kind: &str, message: String, elapsed: Duration) -> Self {
        CellResult {
            status,
            stdout: String::new(),
            stderr: String::new(),
            result: None,
            error: Some(serde_json::json!({ "type": kind, "message": message, "traceback": null })),
            submitted: None,
            hooks: Vec::new(),
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            stdout_truncated: 0,
            stderr_truncated: 0,
        }
    }
}

/// How a worker process ended, as the zygote (its parent) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// A fault: something a worker did that cost it its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    pub worker_id: u64,
    pub host_pid: u32,
    pub cell: u64,
    pub cause: CellStatus,
    pub detail: String,
}

// ------------------------------------------------------------------ sandbox

/// Why the zygote did not hand over a worker.
struct ForkRefusal {
    error: String,
    transient: bool,
}

impl ForkRefusal {
    fn fatal(error: impl Into<String>) -> Self {
        ForkRefusal {
            error: error.into(),
            transient: false,
        }
    }
}

type ForkReply = Result<(i32, OwnedFd), ForkRefusal>;

struct Shared {
    id: String,
    limits: Limits,
    worker_limits: WorkerLimits,
    control_tx: FramedSocket,
    pending: Mutex<HashMap<u64, oneshot::Sender<ForkReply>>>,
    exits: Mutex<HashMap<u64, ExitInfo>>,
    exit_notify: Notify,
    zygote_gone: Mutex<Option<String>>,
    next_worker: AtomicU64,
    spares: tokio::sync::Mutex<Vec<Worker>>,
    spare_target: usize,
    refilling: AtomicBool,
    faults: Mutex<Vec<Fault>>,
    closed: AtomicBool,
    zygote_group: Option<cgroup::Group>,
    jail: Mutex<Option<spawn::JailProcess>>,
    /// The private directory of a jail without namespaces.
    workdir: Option<UnconfinedDir>,
    /// Accept workers whose own Landlock domain or seccomp filter failed
    /// (with a warning).
    allow_degraded: bool,
    /// The ids the zygote hands its workers (per-worker uid mode).
    worker_ids: Option<uids::WorkerIds>,
    /// The jail's host ids; declared last so the lease outlives the jail.
    _ids: IdLease,
}

/// One jailed zygote with its dataset loaded. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
    ready: Arc<ZygoteReady>,
    report: Arc<IsolationReport>,
    csv_in_jail: Arc<String>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.shared.id)
            .finish()
    }
}

static SANDBOX_COUNTER: AtomicU64 = AtomicU64::new(0);

fn jail_file_name(csv: &Path) -> String {
    let name = csv
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("data.csv")
        .to_string();
    let safe = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if safe {
        name
    } else {
        "data.csv".to_string()
    }
}

/// Can `uid`/`gid` read this file by its mode bits alone? (The jail reaches the
/// file through a bind mount, so no directory on the way matters.)
fn readable_by(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if owner == uid {
        mode & 0o400 != 0
    } else if group == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

/// What the jail gets to see of the host: the image, the shared libraries
/// Python and the wheels link against, and the time-zone database.
fn system_binds_and_links() -> (Vec<mounts::Bind>, Vec<(PathBuf, PathBuf)>, Vec<PathBuf>) {
    let mut binds = Vec::new();
    let mut links = Vec::new();
    let mut lib_paths = Vec::new();
    for dir in [
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib32",
        "/lib",
        "/lib64",
        "/lib32",
    ] {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    links.push((path.to_path_buf(), target));
                }
            }
            Ok(meta) if meta.is_dir() => {
                binds.push(mounts::Bind {
                    source: path.to_path_buf(),
                    target: path.to_path_buf(),
                    writable: false,
                    optional: true,
                    fd: None,
                });
                lib_paths.push(path.to_path_buf());
            }
            _ => {}
        }
    }
    for (source, optional) in [("/usr/share/zoneinfo", true), ("/etc/ld.so.cache", true)] {
        if Path::new(source).exists() {
            binds.push(mounts::Bind {
                source: PathBuf::from(source),
                target: PathBuf::from(source),
                writable: false,
                optional,
                fd: None,
            });
            lib_paths.push(PathBuf::from(source));
        }
    }
    (binds, links, lib_paths)
}

/// An image (or the cache that will hold it) must not lie under a path the
/// jail mounts for itself: it is bound into the jail at its own host path.
pub fn check_image_location(path: &Path) -> Result<(), SandboxError> {
    match JAIL_OWN_PATHS.iter().find(|p| path.starts_with(p)) {
        Some(reserved) => Err(SandboxError::ImageLocation {
            path: path.to_path_buf(),
            reserved,
        }),
        None => Ok(()),
    }
}

/// What the zygote does to each worker before its first cell, beyond its
/// Landlock domain: the uid it switches to and the seccomp filter it adds.
#[derive(Debug, Clone)]
struct WorkerSetup {
    ids: Option<uids::WorkerIds>,
    /// [`seccomp::WORKER_FILTER`], compiled, as hex.
    filter_hex: String,
    /// Paths added to every worker's Landlock domain (tests only).
    extra_worker_paths: Vec<String>,
}

/// The zygote's configuration (its only argument). `worker_paths` is what a
/// worker's own Landlock domain keeps: everything the jail's domain allows
/// except the shared scratch root (`scratch`), of which each worker gets only
/// its own `task-<id>` directory.
fn zygote_config(
    csv_path: &str,
    limits: &Limits,
    jail_rules: &landlock::LandlockSpec,
    scratch: &Path,
    setup: &WorkerSetup,
) -> serde_json::Value {
    let worker_paths: Vec<String> = jail_rules
        .read_exec
        .iter()
        .chain(&jail_rules.read)
        .chain(&jail_rules.read_write)
        .filter(|p| p.as_path() != scratch)
        .map(|p| p.display().to_string())
        .chain(setup.extra_worker_paths.iter().cloned())
        .collect();
    serde_json::json!({
        "csv": csv_path,
        "control_fd": spawn::CONTROL_FD,
        "max_output": limits.max_output_bytes,
        "max_frame": protocol::worker_frame_limit(limits.max_output_bytes),
        "worker_scope": true,
        "private_tmp": true,
        "worker_paths": worker_paths,
        "threads": 1,
        "worker_ids": setup.ids,
        "worker_filter": {
            "bpf": setup.filter_hex,
            "placeholder": seccomp::WORKER_PID_PLACEHOLDER,
        },
    })
}

/// The private directory of a jail without namespaces: a fresh directory
/// with a random name (mkdtemp semantics: mode 0700, created exclusively, so
/// nothing planted in the shared temporary directory is ever used), holding
/// the work directory and, outside it, the Landlock canary.
#[derive(Debug)]
pub(crate) struct UnconfinedDir {
    root: PathBuf,
}

impl UnconfinedDir {
    /// The zygote's working directory, HOME and TMPDIR (Landlock read-write).
    fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    /// Readable by its mode bits, outside every Landlock rule.
    fn canary(&self) -> PathBuf {
        self.root.join("canary")
    }
    fn remove(&self) {
        // remove_dir_all never follows symlinks.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn unconfined_workdir() -> Result<UnconfinedDir, SandboxError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |what: String| move |source| SandboxError::Io { what, source };
    let temp = std::env::temp_dir();
    let root = tempfile::Builder::new()
        .prefix("csv-agent-jail-")
        .rand_bytes(16)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&temp)
        .map_err(io(format!(
            "creating a private directory in {}",
            temp.display()
        )))?
        .keep();
    let dir = UnconfinedDir { root };
    let made = (|| -> Result<(), SandboxError> {
        let work = dir.work();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .map_err(io(format!(
                "creating the work directory {}",
                work.display()
            )))?;
        let canary = dir.canary();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&canary)
            .and_then(|mut f| f.write_all(b"landlock canary\n"))
            .map_err(io(format!("writing {}", canary.display())))
    })();
    if let Err(e) = made {
        dir.remove();
        return Err(e);
    }
    Ok(dir)
}

/// The host-path variant of `spec`: the same zygote, its files in `workdir`,
/// Landlock limiting the host filesystem to what the zygote needs.
fn unconfined_spec(
    spec: &spawn::JailSpec,
    workdir: &Path,
    limits: &Limits,
    lib_paths: Vec<PathBuf>,
    setup: &WorkerSetup,
) -> Result<spawn::UnconfinedSpec, SandboxError> {
    // The dataset is read through the descriptor the supervisor checked
    // (inherited at DATASET_FD), never through its host path again: the
    // Landlock rule and the zygote's path both name the descriptor.
    let csv = PathBuf::from(unconfined_csv_path());
    let zygote = workdir.join("zygote.py");
    std::fs::write(&zygote, ZYGOTE_PY).map_err(|source| SandboxError::Io {
        what: format!("writing {}", zygote.display()),
        source,
    })?;
    let image_root = spec.landlock.read_exec.first().cloned().unwrap_or_default();
    let mut read_exec = vec![image_root];
    read_exec.extend(lib_paths);
    let workdir_text = workdir.display().to_string();
    let env = spec
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "HOME" | "TMPDIR" => (k.clone(), workdir_text.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let rules = landlock::LandlockSpec {
        read_exec,
        read: vec![
            csv.clone(),
            PathBuf::from("/proc"),
            PathBuf::from("/dev/urandom"),
            PathBuf::from("/dev/random"),
        ],
        read_write: vec![
            workdir.to_path_buf(),
            PathBuf::from("/dev/null"),
            PathBuf::from("/dev/zero"),
        ],
    };
    let mut argv = spec.argv.clone();
    if let Some(script) = argv.iter_mut().find(|a| a.as_str() == "/sandbox/zygote.py") {
        *script = zygote.display().to_string();
    }
    if let Some(config) = argv.last_mut() {
        // No user namespace, so no ids to hand out: one uid, as the caller.
        let setup = WorkerSetup {
            ids: None,
            ..setup.clone()
        };
        *config =
            zygote_config(&csv.display().to_string(), limits, &rules, workdir, &setup).to_string();
    }
    Ok(spawn::UnconfinedSpec {
        workdir: workdir.to_path_buf(),
        dataset_fd: Some(spawn::DATASET_FD),
        landlock: rules,
        argv,
        env,
    })
}

/// Where a jail without namespaces finds the dataset: the descriptor the
/// supervisor opened and checked, inherited by the zygote and its workers.
fn unconfined_csv_path() -> String {
    format!("/proc/self/fd/{}", spawn::DATASET_FD)
}

/// Open the dataset once, as `O_PATH | O_NOFOLLOW` (no open side effects,
/// and a path swapped for a symlink is refused rather than followed), and
/// check what the descriptor refers to: a regular file the jail uid can read
/// by its mode bits. The jail mounts (or, without namespaces, reads) this
/// descriptor, so the checked file is the file the jail gets.
fn open_dataset(csv: &Path, ids: JailIds) -> Result<OwnedFd, SandboxError> {
    use nix::fcntl::OFlag;
    let dataset = |reason: String| SandboxError::Dataset {
        path: csv.to_path_buf(),
        reason,
    };
    let fd = nix::fcntl::open(
        csv,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| dataset(format!("cannot open it: {e}")))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| dataset(format!("cannot read it: {e}")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(dataset(if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            "was replaced by a symbolic link after it was resolved".to_string()
        } else {
            "is not a regular file".to_string()
        }));
    }
    if !readable_by(st.st_mode, st.st_uid, st.st_gid, ids.uid, ids.gid) {
        return Err(dataset(format!(
            "the jail runs as host uid {} and cannot read it; make it readable (chmod o+r) or copy it somewhere readable",
            ids.uid
        )));
    }
    Ok(fd)
}

impl Sandbox {
    /// Build the jail, start the zygote, load the CSV. Fails (listing the
    /// missing layers) when a layer is unavailable and degraded mode is off.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let csv = std::fs::canonicalize(&opts.csv).map_err(|e| SandboxError::Dataset {
            path: opts.csv.clone(),
            reason: format!("cannot open it: {e}"),
        })?;
        // The jail's ids: a uid block of its own, or the single uid.
        let lease = uids::lease(opts.worker_uids);
        // Opened once, here; everything below uses this descriptor, never the
        // path again (a path swapped between the checks and the jail start
        // changes nothing).
        let dataset_fd = open_dataset(&csv, lease.ids)?;
        if let Some(hook) = &opts.test_hooks.after_dataset_open {
            hook(&csv);
        }

        // The image is bound at its own host path; under a path the jail
        // mounts itself it would be hidden or would leak into (say) /tmp.
        check_image_location(&opts.image.root)?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            SANDBOX_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let limits = opts.limits.clone();

        let mut report = IsolationReport::default();
        cgroup::remove_stale_groups();
        let zygote_group = match cgroup::Group::create(
            &cgroup::sandbox_group_path(&id, "zygote"),
            cgroup::GroupLimits {
                memory_bytes: limits.zygote_memory_bytes,
                pids: limits.pids.max(64),
            },
        ) {
            Ok(g) => {
                report.set(Layer::active(
                    "cgroup_limits",
                    format!(
                        "{}; per worker: memory {} MiB, pids {}",
                        g.describe(),
                        limits.memory_bytes >> 20,
                        limits.pids
                    ),
                ));
                Some(g)
            }
            Err(e) => {
                report.set(Layer::unavailable(
                    "cgroup_limits",
                    format!(
                        "{e}; fallback: RLIMIT_AS of {} MiB above the zygote per worker, RLIMIT_NPROC {} per jail",
                        limits.memory_bytes >> 20,
                        limits.nproc
                    ),
                ));
                None
            }
        };
        if !opts.allow_degraded && zygote_group.is_none() {
            // Refused before any jail exists: name what is known to be
            // missing, not every layer that was never measured.
            let mut missing: Vec<Layer> = report.degraded().into_iter().cloned().collect();
            if let Some(reason) = user_namespaces_disabled() {
                missing.insert(0, Layer::unavailable("user_namespace", reason));
            }
            return Err(SandboxError::Degraded(missing));
        }

        let csv_name = jail_file_name(&csv);
        let csv_in_jail = format!("{DATA_DIR}/{csv_name}");
        let (mut binds, symlinks, lib_paths) = system_binds_and_links();
        binds.push(mounts::Bind {
            source: opts.image.root.clone(),
            target: opts.image.root.clone(),
            writable: false,
            optional: false,
            fd: None,
        });
        binds.push(mounts::Bind {
            source: csv.clone(),
            target: PathBuf::from(&csv_in_jail),
            writable: false,
            optional: false,
            fd: Some(spawn::DATASET_FD),
        });
        for (dev, writable) in [
            ("null", true),
            ("zero", true),
            ("urandom", false),
            ("random", false),
        ] {
            let path = PathBuf::from(format!("/dev/{dev}"));
            binds.push(mounts::Bind {
                source: path.clone(),
                target: path,
                writable,
                optional: false,
                fd: None,
            });
        }
        let files = vec![
            mounts::JailFile {
                path: PathBuf::from("/sandbox/zygote.py"),
                contents: ZYGOTE_PY.to_string(),
                mode: 0o444,
            },
            mounts::JailFile {
                path: PathBuf::from("/etc/passwd"),
                contents: "root:x:0:0:csv-agent jail:/tmp:/nonexistent\n".to_string(),
                mode: 0o444,
            },
            mounts::JailFile {
                path: PathBuf::from("/etc/group"),
                contents: "root:x:0:\n".to_string(),
                mode: 0o444,
            },
            mounts::JailFile {
                path: PathBuf::from("/etc/hosts"),
                contents: "127.0.0.1 localhost csv-agent\n".to_string(),
                mode: 0o444,
            },
            // Unix permissions let anyone read this file, no Landlock rule
            // covers it: reading it fails only while Landlock is enforced.
            mounts::JailFile {
                path: PathBuf::from(measure::LANDLOCK_CANARY),
                contents: "landlock canary\n".to_string(),
                mode: 0o444,
            },
        ];
        let lib_paths_for_fallback = lib_paths.clone();
        let mut read_exec = vec![opts.image.root.clone()];
        read_exec.extend(lib_paths);
        let landlock_spec = landlock::LandlockSpec {
            read_exec,
            read: vec![
                PathBuf::from(DATA_DIR),
                PathBuf::from("/sandbox"),
                PathBuf::from("/etc"),
                PathBuf::from("/proc"),
                PathBuf::from("/dev/urandom"),
                PathBuf::from("/dev/random"),
            ],
            read_write: vec![
                PathBuf::from("/tmp"),
                PathBuf::from(mounts::SCRATCH),
                PathBuf::from("/dev/shm"),
                PathBuf::from("/dev/null"),
                PathBuf::from("/dev/zero"),
            ],
        };
        let setup = WorkerSetup {
            ids: lease.workers,
            filter_hex: seccomp::worker_filter_hex().map_err(|e| SandboxError::Io {
                what: "compiling the worker seccomp filter".to_string(),
                source: std::io::Error::other(e.to_string()),
            })?,
            extra_worker_paths: opts.test_hooks.extra_worker_paths.clone(),
        };
        let zygote_config = zygote_config(
            &csv_in_jail,
            &limits,
            &landlock_spec,
            Path::new(mounts::SCRATCH),
            &setup,
        );
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), mounts::SCRATCH.into()),
            ("TMPDIR".into(), mounts::SCRATCH.into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
        ];
        env.extend(opts.image.env.iter().cloned());
        let spec = spawn::JailSpec {
            fs: mounts::FsSpec {
                binds,
                symlinks,
                files,
                tmp_size_bytes: limits.tmp_bytes,
                shm_size_bytes: limits.shm_bytes,
            },
            landlock: landlock_spec,
            rlimits: rlimits::RlimitSpec {
                fsize_bytes: limits.fsize_bytes,
                nofile: ZYGOTE_NOFILE.max(limits.nofile),
                nproc: limits.nproc,
            },
            hostname: "csv-agent".to_string(),
            argv: vec![
                opts.image.python.display().to_string(),
                "-I".to_string(),
                "-B".to_string(),
                "/sandbox/zygote.py".to_string(),
                zygote_config.to_string(),
            ],
            env,
            allow_degraded: opts.allow_degraded,
            worker_ids: lease.workers,
            unconfined: None,
        };
        let mut spec = spec;
        // Without --allow-degraded a host without user namespaces is refused;
        // with it, the init may fall back to running on the host filesystem
        // under Landlock, in a private work directory.
        let workdir = if opts.allow_degraded {
            let dir = unconfined_workdir()?;
            match unconfined_spec(
                &spec,
                &dir.work(),
                &limits,
                lib_paths_for_fallback.clone(),
                &setup,
            ) {
                Ok(u) => spec.unconfined = Some(u),
                Err(e) => {
                    dir.remove();
                    return Err(e);
                }
            }
            Some(dir)
        } else {
            None
        };

        let jail = match spawn::launch(
            &opts.init_program,
            &spec,
            Some(dataset_fd.as_fd()),
            zygote_group.as_ref(),
            lease.ids,
            opts.startup_timeout,
        )
        .await
        {
            Ok(j) => j,
            Err(e) => {
                if let Some(g) = &zygote_group {
                    g.remove();
                    cgroup::remove_parent(&cgroup::sandbox_parent_path(&id));
                }
                if let Some(dir) = &workdir {
                    dir.remove();
                }
                return Err(e.into());
            }
        };
        for layer in &jail.applied {
            report.set(layer.clone());
        }
        // The init has its own copy of the dataset's descriptor now.
        drop(dataset_fd);
        let csv_in_jail = match &jail.unconfined {
            Some(reason) => {
                for ns in layers::NAMESPACE_LAYERS {
                    report.set(Layer::unavailable(ns, reason.clone()));
                }
                unconfined_csv_path()
            }
            None => {
                // Not needed: the jail has its own root.
                if let Some(dir) = &workdir {
                    dir.remove();
                }
                csv_in_jail
            }
        };
        let jail_unconfined = jail.unconfined.is_some();
        let workdir = if jail.unconfined.is_some() {
            workdir
        } else {
            None
        };
        // The init got this far only because unshare() of all of these
        // succeeded; `measure` confirms them from inside and outside.
        for ns in layers::NAMESPACE_LAYERS {
            if report.get(ns).is_none() {
                report.set(Layer::active(ns, "created by the jail init"));
            }
        }
        report.worker_isolation = Some(match (&lease.workers, &jail.unconfined) {
            (Some(_), None) => WorkerIsolation::per_worker_uid(lease.describe()),
            (_, Some(reason)) => WorkerIsolation::single_uid(format!(
                "single uid: no user namespace ({reason}); seccomp argument filters and Landlock scoping separate the workers"
            )),
            (None, None) => WorkerIsolation::single_uid(lease.describe()),
        });
        report.normalize();

        // dup: one descriptor for the reader task, one for senders (tokio
        // cannot register the same descriptor twice).
        // try_clone duplicates with FD_CLOEXEC (F_DUPFD_CLOEXEC); a plain
        // dup(2) would not, and every jail started later by this process
        // would inherit this one's control socket.
        let rx_fd = jail
            .control
            .try_clone()
            .map_err(|source| SandboxError::Io {
                what: "duplicating the control socket".to_string(),
                source,
            })?;
        let control_rx = FramedSocket::new(rx_fd, "control", ChannelPolicy::control())?;
        let control_tx = FramedSocket::new(
            jail.control
                .try_clone()
                .map_err(|source| SandboxError::Io {
                    what: "cloning the control socket".to_string(),
                    source,
                })?,
            "control",
            ChannelPolicy::control(),
        )?;

        let shared = Arc::new(Shared {
            id: id.clone(),
            worker_limits: WorkerLimits {
                cpu_seconds: Some(limits.cpu_seconds),
                address_space_extra: if zygote_group.is_some() {
                    None
                } else {
                    Some(limits.memory_bytes)
                },
                nofile: Some(limits.nofile),
            },
            limits,
            control_tx,
            pending: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            exit_notify: Notify::new(),
            zygote_gone: Mutex::new(None),
            next_worker: AtomicU64::new(1),
            spares: tokio::sync::Mutex::new(Vec::new()),
            spare_target: opts.spare_workers,
            refilling: AtomicBool::new(false),
            faults: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            zygote_group,
            jail: Mutex::new(Some(jail)),
            workdir,
            allow_degraded: opts.allow_degraded,
            worker_ids: if jail_unconfined { None } else { lease.workers },
            _ids: lease,
        });

        let ready = match wait_ready(control_rx, &shared, opts.startup_timeout).await {
            Ok(r) => r,
            Err(e) => {
                shutdown_shared(&shared).await;
                return Err(e);
            }
        };
        let sandbox = Sandbox {
            shared,
            ready: Arc::new(ready),
            report: Arc::new(report),
            csv_in_jail: Arc::new(csv_in_jail),
        };
        sandbox.refill_spares();
        Ok(sandbox)
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }
    /// Layers as set up (the doctor measures them from inside, see [`measure`]).
    pub fn report(&self) -> &IsolationReport {
        &self.report
    }
    pub fn zygote(&self) -> &ZygoteReady {
        &self.ready
    }
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
    /// A file readable by its mode bits that no Landlock rule covers: reading
    /// it from a worker fails only while Landlock is enforced.
    pub fn landlock_canary(&self) -> String {
        match &self.shared.workdir {
            Some(dir) => dir.canary().display().to_string(),
            None => measure::LANDLOCK_CANARY.to_string(),
        }
    }

    pub fn csv_path_in_jail(&self) -> &str {
        &self.csv_in_jail
    }
    /// Host pid of the zygote (pid 1 of the jail).
    pub fn zygote_host_pid(&self) -> Option<u32> {
        let init = self.shared.jail.lock().ok()?.as_ref()?.init_pid;
        let children =
            std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
    /// Bytes charged to the zygote's cgroup: the imports, the loaded CSV and
    /// the page cache it read (None without cgroups).
    pub fn zygote_cgroup_memory(&self) -> Option<u64> {
        self.shared
            .zygote_group
            .as_ref()
            .and_then(|g| g.memory_usage())
    }
    /// Whether the zygote still serves forks (its control socket is open).
    pub fn is_alive(&self) -> bool {
        !self.shared.closed.load(Ordering::Relaxed)
            && self
                .shared
                .zygote_gone
                .lock()
                .map(|g| g.is_none())
                .unwrap_or(false)
    }
    /// Why the zygote is gone, once it is.
    pub fn gone_reason(&self) -> Option<String> {
        self.shared.gone_reason()
    }
    /// Host pid of the jail's monitor (`csv-agent __jail-init`).
    pub fn monitor_host_pid(&self) -> Option<u32> {
        Some(self.shared.jail.lock().ok()?.as_ref()?.init_pid)
    }
    /// Faults seen so far (timeouts, OOM kills, crashes).
    pub fn faults(&self) -> Vec<Fault> {
        self.shared
            .faults
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// A worker for a new task: a pre-forked spare if there is one, else a fresh fork.
    pub async fn acquire(&self) -> Result<Worker, SandboxError> {
        let spare = self.shared.spares.lock().await.pop();
        let worker = match spare {
            Some(w) if w.is_alive() => w,
            _ => fork_worker(&self.shared).await?,
        };
        self.refill_spares();
        Ok(worker)
    }

    /// A task: cells run in one worker; a lost worker is replaced for the next cell.
    pub fn task(&self) -> Task {
        Task {
            sandbox: self.clone(),
            worker: None,
            cells: 0,
            restarts: 0,
        }
    }

    fn refill_spares(&self) {
        if self.shared.spare_target == 0 || self.shared.closed.load(Ordering::Relaxed) {
            return;
        }
        if self.shared.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                if shared.closed.load(Ordering::Relaxed) {
                    break;
                }
                let have = shared.spares.lock().await.len();
                if have >= shared.spare_target {
                    break;
                }
                match fork_worker(&shared).await {
                    Ok(w) => shared.spares.lock().await.push(w),
                    Err(e) => {
                        log(
                            Level::Debug,
                            &format!("pre-forking a spare worker failed: {e}"),
                        );
                        break;
                    }
                }
            }
            shared.refilling.store(false, Ordering::Release);
        });
    }

    /// Stop every worker and the zygote, remove the cgroups.
    pub async fn shutdown(self) {
        shutdown_shared(&self.shared).await;
    }
}

/// Why user namespaces cannot be created here, when the host says so plainly
/// (the jail init finds out for certain; this is for early messages).
fn user_namespaces_disabled() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0 on this host".to_string());
    }
    if !nix::unistd::geteuid().is_root()
        && read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        return Some("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)".to_string());
    }
    None
}

async fn wait_ready(
    mut control_rx: FramedSocket,
    shared: &Arc<Shared>,
    timeout: Duration,
) -> Result<ZygoteReady, SandboxError> {
    let first = tokio::time::timeout(timeout, control_rx.recv_msg::<FromZygote>("ready"))
        .await
        .map_err(|_| {
            SandboxError::Timeout(
                timeout,
                "the zygote to import the data stack and load the CSV",
            )
        })?;
    let ready = match first {
        Ok((FromZygote::Ready(ready), _)) => ready,
        Ok((FromZygote::LoadError { error }, _)) => return Err(SandboxError::Load(error)),
        Ok((other, _)) => {
            return Err(ProtocolError::Unexpected {
                channel: "control",
                expected: "ready",
                got: format!("{other:?}"),
            }
            .into())
        }
        Err(ProtocolError::Unexpected { got, .. }) if got == "end of stream" => {
            // Give the stderr reader a moment to collect the last words.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let tail = shared
                .jail
                .lock()
                .ok()
                .and_then(|j| j.as_ref().map(|j| j.stderr_tail.text()))
                .unwrap_or_default();
            return Err(SandboxError::ZygoteGone(if tail.is_empty() {
                "it exited during start-up without a word".to_string()
            } else {
                format!("it exited during start-up:\n{tail}")
            }));
        }
        Err(e) => return Err(e.into()),
    };
    if ready.version != protocol::PROTOCOL_VERSION {
        return Err(ProtocolError::Unexpected {
            channel: "control",
            expected: "protocol version 1 (the zygote does not match this binary)",
            got: format!("version {}", ready.version),
        }
        .into());
    }
    let reader_shared = Arc::downgrade(shared);
    tokio::spawn(control_reader(control_rx, reader_shared));
    Ok(ready)
}

/// Dispatch the zygote's messages: fork replies to their waiters, exits to
/// the exit table.
async fn control_reader(mut rx: FramedSocket, shared: std::sync::Weak<Shared>) {
    let reason = loop {
        let frame = match rx.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the zygote closed its control socket".to_string(),
            Err(e) => break e.to_string(),
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let msg: FromZygote = match protocol::decode("control", &frame.body) {
            Ok(m) => m,
            Err(e) => {
                log(Level::Warn, &e.to_string());
                continue;
            }
        };
        let mut fds = frame.fds.into_iter();
        match msg {
            FromZygote::Forked { worker_id, pid } => {
                let reply = fds
                    .next()
                    .map(|fd| (pid, fd))
                    .ok_or_else(|| ForkRefusal::fatal("the forked message carried no socket"));
                if let Some(tx) = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&worker_id))
                {
                    let _ = tx.send(reply);
                }
            }
            FromZygote::ForkFailed {
                worker_id,
                error,
                transient,
            } => {
                if let Some(tx) = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&worker_id))
                {
                    let _ = tx.send(Err(ForkRefusal { error, transient }));
                }
            }
            FromZygote::Exited {
                worker_id,
                exit_code,
                signal,
                ..
            } => {
                if let Ok(mut exits) = shared.exits.lock() {
                    exits.insert(worker_id, ExitInfo { exit_code, signal });
                }
                shared.exit_notify.notify_waiters();
            }
            FromZygote::Error { error } => log(Level::Warn, &format!("zygote: {error}")),
            other => log(Level::Warn, &format!("zygote sent an unexpected {other:?}")),
        }
    };
    if let Some(shared) = shared.upgrade() {
        if !shared.closed.load(Ordering::Relaxed) {
            log(Level::Warn, &format!("sandbox {}: {reason}", shared.id));
        }
        if let Ok(mut gone) = shared.zygote_gone.lock() {
            *gone = Some(reason);
        }
        if let Ok(mut pending) = shared.pending.lock() {
            for (_, tx) in pending.drain() {
                let _ = tx.send(Err(ForkRefusal::fatal("the zygote is gone")));
            }
        }
        shared.exit_notify.notify_waiters();
    }
}

/// How long a lost worker's exit report (from the zygote) is waited for
/// before its death is put down to the infrastructure.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(5);

const FORK_TIMEOUT: Duration = Duration::from_secs(30);
/// Forks tried before a transient `fork_failed` is reported.
const FORK_ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each further one (50, 100, 200 ms).
const FORK_BACKOFF: Duration = Duration::from_millis(50);

/// Fork a worker; a transient refusal (fork's EAGAIN, a hand-over that
/// failed for lack of room for the descriptor) is retried a few times with
/// a short backoff, each time as a new worker id.
async fn fork_worker(shared: &Arc<Shared>) -> Result<Worker, SandboxError> {
    let mut attempt = 1;
    loop {
        match fork_once(shared).await {
            Err(SandboxError::Fork {
                worker_id,
                error,
                transient: true,
            }) => {
                if attempt >= FORK_ATTEMPTS {
                    return Err(SandboxError::Fork {
                        worker_id,
                        error: format!("{error} (tried {FORK_ATTEMPTS} times)"),
                        transient: true,
                    });
                }
                log(
                    Level::Info,
                    &format!(
                        "sandbox {}: forking worker {worker_id} failed ({error}); retrying",
                        shared.id
                    ),
                );
                tokio::time::sleep(FORK_BACKOFF * (1 << (attempt - 1))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `pidfd_open(2)`: a descriptor that names this process for as long as it
/// is held, whatever happens to its pid number.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: plain system call with integer arguments; returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)`; signal 0 only asks whether the process is still
/// there (alive or a zombie not yet reaped).
fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: a descriptor we own, a null siginfo and no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The innermost pid (`NSpid`, last field) of the process a pidfd names,
/// from `/proc/self/fdinfo`; `None` once it has been reaped (`-1`).
fn pidfd_inner_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let line = info.lines().find(|l| l.starts_with("NSpid:"))?;
    let pid: i32 = line.split_whitespace().last()?.parse().ok()?;
    (pid > 0).then_some(pid)
}

async fn fork_once(shared: &Arc<Shared>) -> Result<Worker, SandboxError> {
    if let Some(reason) = shared.gone_reason() {
        return Err(SandboxError::ZygoteGone(reason));
    }
    let worker_id = shared.next_worker.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    if let Ok(mut pending) = shared.pending.lock() {
        pending.insert(worker_id, tx);
    }
    // The group exists before the worker does, so it can be placed in it
    // before it runs a single line of user code.
    let group = if shared.zygote_group.is_some() {
        Some(
            cgroup::Group::create(
                &cgroup::sandbox_group_path(&shared.id, &format!("worker-{worker_id}")),
                cgroup::GroupLimits {
                    memory_bytes: shared.limits.memory_bytes,
                    pids: shared.limits.pids,
                },
            )
            .map_err(|e| SandboxError::WorkerStart {
                worker_id,
                detail: e.to_string(),
            })?,
        )
    } else {
        None
    };
    let cleanup = |group: &Option<cgroup::Group>| {
        if let Some(g) = group {
            g.remove();
        }
    };
    if let Err(e) = shared
        .control_tx
        .send(&ToZygote::Fork {
            worker_id,
            limits: shared.worker_limits.clone(),
        })
        .await
    {
        cleanup(&group);
        return Err(e.into());
    }
    let (ns_pid, fd) = match tokio::time::timeout(FORK_TIMEOUT, rx).await {
        Ok(Ok(Ok(reply))) => reply,
        Ok(Ok(Err(ForkRefusal { error, transient }))) => {
            cleanup(&group);
            return Err(SandboxError::Fork {
                worker_id,
                error,
                transient,
            });
        }
        Ok(Err(_)) => {
            cleanup(&group);
            return Err(SandboxError::ZygoteGone(
                "control reader stopped".to_string(),
            ));
        }
        Err(_) => {
            cleanup(&group);
            return Err(SandboxError::Timeout(
                FORK_TIMEOUT,
                "the zygote to fork a worker",
            ));
        }
    };
    let mut socket = FramedSocket::new(
        fd,
        "worker",
        ChannelPolicy::worker(shared.limits.max_output_bytes),
    )?;
    let hello = tokio::time::timeout(FORK_TIMEOUT, socket.recv_msg::<FromWorker>("hello")).await;
    let (scope, filter, uid, host_pid) = match hello {
        Ok(Ok((FromWorker::Hello { version, .. }, _))) if version != protocol::PROTOCOL_VERSION => {
            cleanup(&group);
            return Err(ProtocolError::Unexpected {
                channel: "worker",
                expected: "a hello of protocol version 1",
                got: format!("version {version}"),
            }
            .into());
        }
        Ok(Ok((
            FromWorker::Hello {
                scope,
                filter,
                uid,
                pid,
                ..
            },
            frame,
        ))) => {
            let host_pid = frame
                .sender_pid
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| SandboxError::WorkerStart {
                    worker_id,
                    detail: format!("hello from jail pid {pid} carried no credentials"),
                });
            match host_pid {
                Ok(h) => (scope, filter, uid, h),
                Err(e) => {
                    cleanup(&group);
                    return Err(e);
                }
            }
        }
        Ok(Ok((other, _))) => {
            cleanup(&group);
            return Err(ProtocolError::Unexpected {
                channel: "worker",
                expected: "hello",
                got: other.kind(),
            }
            .into());
        }
        Ok(Err(e)) => {
            cleanup(&group);
            return Err(e.into());
        }
        Err(_) => {
            cleanup(&group);
            return Err(SandboxError::Timeout(FORK_TIMEOUT, "a new worker's hello"));
        }
    };
    // A pidfd first, before anything else: from here on the worker is
    // signalled through it, never through a pid number that may be reused.
    // The hello's host pid could in principle already belong to someone else
    // (the worker died, was reaped and its pid recycled within this instant):
    // the pidfd's innermost pid must still be the worker's jail pid.
    let pidfd = match pidfd_open(host_pid) {
        Ok(fd) if pidfd_inner_pid(&fd) == Some(ns_pid) => fd,
        Ok(_) => {
            cleanup(&group);
            return Err(SandboxError::WorkerStart {
                worker_id,
                detail: format!("host pid {host_pid} is no longer the worker (jail pid {ns_pid}): it exited before its first cell"),
            });
        }
        Err(e) => {
            cleanup(&group);
            return Err(SandboxError::WorkerStart {
                worker_id,
                detail: format!("pidfd_open({host_pid}): {e}"),
            });
        }
    };
    let mut worker = Worker {
        id: worker_id,
        host_pid,
        ns_pid,
        scope,
        filter,
        uid,
        pidfd,
        socket,
        group,
        shared: shared.clone(),
        next_cell: 1,
        dead: false,
    };
    if let Some(g) = &worker.group {
        if let Err(e) = g.add(host_pid) {
            worker.kill();
            return Err(SandboxError::WorkerStart {
                worker_id,
                detail: e.to_string(),
            });
        }
    }
    if !worker.filter.applied && !shared.allow_degraded {
        let reason = worker.filter.error.clone().unwrap_or_default();
        worker.kill();
        return Err(SandboxError::Worker {
            worker_id,
            detail: format!(
                "the worker's own seccomp filter could not be applied ({reason}); pass --allow-degraded to run without it"
            ),
        });
    }
    if let (Some(expected), Some(got)) = (shared.worker_ids, worker.uid) {
        if got < expected.first || got >= expected.first + expected.count {
            worker.kill();
            return Err(SandboxError::Worker {
                worker_id,
                detail: format!("the worker runs as uid {got}, not one of its own"),
            });
        }
    }
    if !worker.scope.applied {
        let reason = worker
            .scope
            .error
            .clone()
            .unwrap_or_else(|| "no reason given".to_string());
        if !shared.allow_degraded {
            // Fail closed: the worker has run no code of ours; it dies now
            // (dropping it kills it and removes its cgroup).
            worker.kill();
            return Err(SandboxError::WorkerScope { worker_id, reason });
        }
        log(
            Level::Warn,
            &format!("worker {worker_id}: per-worker landlock scope not applied: {reason}"),
        );
    }
    Ok(worker)
}

async fn shutdown_shared(shared: &Arc<Shared>) {
    if shared.closed.swap(true, Ordering::AcqRel) {
        return;
    }
    let spares: Vec<Worker> = shared.spares.lock().await.drain(..).collect();
    drop(spares);
    let _ = shared.control_tx.send(&ToZygote::Shutdown).await;
    let jail = shared.jail.lock().ok().and_then(|mut j| j.take());
    if let Some(mut jail) = jail {
        if tokio::time::timeout(Duration::from_secs(5), jail.child.wait())
            .await
            .is_err()
        {
            // Closing the sync socket makes the monitor kill the jail; kill the
            // monitor too in case it is stuck.
            let _ = jail.child.start_kill();
            let _ = jail.child.wait().await;
        }
    }
    if let Some(g) = &shared.zygote_group {
        g.remove();
    }
    cgroup::remove_parent(&cgroup::sandbox_parent_path(&shared.id));
    if let Some(dir) = &shared.workdir {
        dir.remove();
    }
}

impl Shared {
    /// Why the zygote is gone, once it is.
    fn gone_reason(&self) -> Option<String> {
        self.zygote_gone.lock().ok().and_then(|g| g.clone())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Last handle gone without shutdown(): dropping the JailProcess
        // closes the sync socket and kills the init (kill_on_drop); the
        // monitor's death takes the jail with it (PDEATHSIG).
        if let Ok(mut j) = self.jail.lock() {
            j.take();
        }
        if let Some(g) = &self.zygote_group {
            g.remove();
        }
        cgroup::remove_parent(&cgroup::sandbox_parent_path(&self.id));
        if let Some(dir) = &self.workdir {
            dir.remove();
        }
    }
}

// ------------------------------------------------------------------ worker

/// One forked worker: a REPL whose namespace lives across cells.
pub struct Worker {
    pub id: u64,
    /// Pid on the host (from SCM_CREDENTIALS of its hello).
    pub host_pid: u32,
    /// Pid inside the jail.
    pub ns_pid: i32,
    pub scope: ScopeStatus,
    /// The worker's own seccomp filter, as it reported it.
    pub filter: ScopeStatus,
    /// Its uid inside the jail.
    pub uid: Option<u32>,
    /// Taken right after the hello: every signal goes through it.
    pidfd: OwnedFd,
    socket: FramedSocket,
    group: Option<cgroup::Group>,
    shared: Arc<Shared>,
    next_cell: u64,
    dead: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("host_pid", &self.host_pid)
            .finish()
    }
}

impl Worker {
    pub fn is_alive(&self) -> bool {
        !self.dead && !self.reaped()
    }

    /// The zygote has reported this worker's exit (it has been reaped).
    fn reaped(&self) -> bool {
        self.shared
            .exits
            .lock()
            .map(|e| e.contains_key(&self.id))
            .unwrap_or(false)
    }

    /// Why a worker that died while idle (after cell `cell`) is an
    /// infrastructure loss: SIGKILLed with no OOM event, or its zygote
    /// gone. `None` when its own code may have done it (another signal or
    /// an exit from a thread it left running).
    fn idle_loss(&self, cell: u64) -> Option<SandboxError> {
        if let Some(reason) = self.shared.gone_reason() {
            return Some(SandboxError::ZygoteGone(reason));
        }
        let exit = self
            .shared
            .exits
            .lock()
            .ok()
            .and_then(|e| e.get(&self.id).copied());
        let oom = self
            .group
            .as_ref()
            .map(|g| g.oom_kills() > 0)
            .unwrap_or(false);
        match exit {
            Some(ExitInfo {
                signal: Some(libc::SIGKILL),
                ..
            }) if !oom => Some(self.killed_from_outside(
                cell,
                "SIGKILL between cells, with no OOM event in its cgroup".to_string(),
            )),
            _ => None,
        }
    }

    /// Bytes charged to this worker's cgroup (what it allocated itself).
    pub fn cgroup_memory(&self) -> Option<u64> {
        self.group.as_ref().and_then(|g| g.memory_usage())
    }

    /// Run one cell. Timeouts, OOM kills and crashes come back as a
    /// [`CellResult`] with that status, never as an `Err`; the worker is then
    /// dead and must be replaced (see [`Task`]).
    pub async fn exec(&mut self, code: &str) -> Result<CellResult, SandboxError> {
        if self.dead {
            return Err(SandboxError::Worker {
                worker_id: self.id,
                detail: "this worker is dead; start a new task".to_string(),
            });
        }
        let cell = self.next_cell;
        self.next_cell += 1;
        let started = Instant::now();
        if self
            .socket
            .send(&ToWorker::Exec {
                cell,
                code: code.to_string(),
            })
            .await
            .is_err()
        {
            return self.lost(cell, started).await;
        }
        let timeout = self.shared.limits.cell_timeout;
        match tokio::time::timeout(timeout, self.socket.recv()).await {
            Err(_) => {
                self.kill();
                let detail = format!(
                    "the cell ran longer than the {} s wall-clock limit; the worker was killed",
                    timeout.as_secs_f64()
                );
                self.record_fault(cell, CellStatus::Timeout, &detail);
                Ok(CellResult::lost(
                    CellStatus::Timeout,
                    "Timeout",
                    detail,
                    started.elapsed(),
                ))
            }
            Ok(Ok(Some(frame))) => {
                let checked = match protocol::decode::<FromWorker>("worker", &frame.body) {
                    Ok(FromWorker::Result(reply)) if reply.cell == cell => {
                        CellResult::from_reply(reply, self.shared.limits.max_output_bytes)
                    }
                    Ok(other) => Err(format!(
                        "expected the result of cell {cell}, got {}",
                        other.kind()
                    )),
                    Err(e) => Err(e.to_string()),
                };
                drop(frame);
                Ok(match checked {
                    Ok(result) => result,
                    Err(detail) => self.violation(cell, started, &detail),
                })
            }
            Ok(Err(e)) if e.is_violation() => Ok(self.violation(cell, started, &e.to_string())),
            Ok(Ok(None)) | Ok(Err(_)) => self.lost(cell, started).await,
        }
    }

    /// The worker broke the protocol (sent descriptors, an oversized or
    /// malformed frame, a reply of the wrong shape, status or cell): it is
    /// hostile. Kill it, log a fault, and report the cell as `crashed` with
    /// error type `ProtocolViolation`; nothing it sent is passed on.
    fn violation(&mut self, cell: u64, started: Instant, detail: &str) -> CellResult {
        self.kill();
        let refused = self.socket.refused_descriptors();
        let detail = if refused > 0 {
            format!("protocol violation: {detail} ({refused} descriptors refused in all)")
        } else {
            format!("protocol violation: {detail}")
        };
        self.record_fault(cell, CellStatus::Crashed, &detail);
        CellResult::lost(
            CellStatus::Crashed,
            "ProtocolViolation",
            format!("the worker was killed: {detail}"),
            started.elapsed(),
        )
    }

    /// The worker died during a cell: find out why. What its own code
    /// caused (an OOM kill of its cgroup, a signal such as SIGSEGV or
    /// SIGABRT, an exit) is a `crashed` or `oom` cell; what came from
    /// outside (a SIGKILL the supervisor did not send and no OOM event, or
    /// the whole zygote gone) is an infrastructure `Err`.
    async fn lost(&mut self, cell: u64, started: Instant) -> Result<CellResult, SandboxError> {
        self.dead = true;
        let exit = self.wait_exit(EXIT_REPORT_WAIT).await;
        let oom = self
            .group
            .as_ref()
            .map(|g| g.oom_kills() > 0)
            .unwrap_or(false);
        self.kill();
        if !oom {
            match exit {
                Some(ExitInfo {
                    signal: Some(libc::SIGKILL),
                    ..
                }) => {
                    return Err(self.killed_from_outside(
                        cell,
                        "SIGKILL with no timeout and no OOM event in its cgroup".to_string(),
                    ));
                }
                None => {
                    if let Some(reason) = self.shared.gone_reason() {
                        self.record_incident(cell, &format!("the zygote is gone ({reason})"));
                        return Err(SandboxError::ZygoteGone(reason));
                    }
                    // No exit report: nothing shows the program killed it
                    // (a crash of its own is reported at once), so it is not
                    // data; the question runs again.
                    return Err(self.killed_from_outside(
                        cell,
                        format!(
                            "it vanished with no exit report within {} s",
                            EXIT_REPORT_WAIT.as_secs()
                        ),
                    ));
                }
                _ => {}
            }
        }
        let (status, kind, detail) = if oom {
            (
                CellStatus::Oom,
                "OutOfMemory",
                format!(
                    "the worker exceeded its {} MiB memory limit and was killed by the OOM killer",
                    self.shared.limits.memory_bytes >> 20
                ),
            )
        } else {
            let how = match exit {
                Some(ExitInfo {
                    signal: Some(sig), ..
                }) => format!("killed by signal {sig} ({})", signal_name(sig)),
                Some(ExitInfo {
                    exit_code: Some(code),
                    ..
                }) => format!("exited with status {code}"),
                _ => "vanished".to_string(),
            };
            (
                CellStatus::Crashed,
                "WorkerCrashed",
                format!("the worker {how} during the cell"),
            )
        };
        self.record_fault(cell, status, &detail);
        Ok(CellResult::lost(status, kind, detail, started.elapsed()))
    }

    /// The worker was lost to something outside its code (during or after
    /// cell `cell`): logged as such, and the infrastructure error for it.
    fn killed_from_outside(&self, cell: u64, detail: String) -> SandboxError {
        self.record_incident(cell, &detail);
        SandboxError::WorkerKilled {
            worker_id: self.id,
            host_pid: self.host_pid,
            cell,
            detail,
        }
    }

    /// A worker lost to the infrastructure: logged, not a fault of its code.
    fn record_incident(&self, cell: u64, detail: &str) {
        log(
            Level::Warn,
            &format!(
                "sandbox {} worker {} (host pid {}) cell {}: lost from outside: {}",
                self.shared.id, self.id, self.host_pid, cell, detail
            ),
        );
    }

    async fn wait_exit(&self, limit: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.shared.exit_notify.notified();
            if let Some(info) = self
                .shared
                .exits
                .lock()
                .ok()
                .and_then(|e| e.get(&self.id).copied())
            {
                return Some(info);
            }
            if self
                .shared
                .zygote_gone
                .lock()
                .map(|g| g.is_some())
                .unwrap_or(true)
            {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    fn record_fault(&self, cell: u64, cause: CellStatus, detail: &str) {
        log(
            Level::Warn,
            &format!(
                "sandbox {} worker {} (host pid {}) cell {}: {}: {}",
                self.shared.id,
                self.id,
                self.host_pid,
                cell,
                cause.as_str(),
                detail
            ),
        );
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.push(Fault {
                worker_id: self.id,
                host_pid: self.host_pid,
                cell,
                cause,
                detail: detail.to_string(),
            });
        }
    }

    /// SIGKILL the worker and everything it started. The worker itself is
    /// signalled through the pidfd taken when it started, so a pid number
    /// reused after it was reaped is never a target; what it started goes
    /// with its cgroup (`cgroup.kill`), or without one, with its process
    /// group — signalled only while the pidfd says the leader is still there
    /// (alive or a zombie: its pid, hence the group id, cannot be reused
    /// before it is reaped). Returns whether the worker was still there.
    ///
    /// The window left without a cgroup: the zygote may reap the leader
    /// between that check and `killpg`, and the group id be reused in that
    /// instant by an unrelated new group of the same user namespace.
    pub fn kill(&mut self) -> bool {
        self.dead = true;
        // Whatever it sent and we buffered is of no use any more.
        self.socket.release();
        let there = pidfd_send_signal(&self.pidfd, 0).is_ok();
        if there {
            if self.group.is_none() {
                if let Ok(pgid) = i32::try_from(self.host_pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = pidfd_send_signal(&self.pidfd, libc::SIGKILL);
        }
        if let Some(g) = &self.group {
            g.kill_all();
        }
        there
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.dead {
            self.kill();
        }
        if let Some(group) = self.group.take() {
            // rmdir waits for the zygote to reap the worker; do not block the
            // async runtime on it.
            std::thread::spawn(move || group.remove());
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown")
}

// ------------------------------------------------------------------ task

/// One trace's cells. The REPL state lives in the worker; when a cell costs
/// the worker its life (timeout, OOM, crash) the next cell runs in a fresh
/// worker with a fresh namespace.
pub struct Task {
    sandbox: Sandbox,
    worker: Option<Worker>,
    cells: u64,
    restarts: u64,
}

impl Task {
    pub async fn run_cell(&mut self, code: &str) -> Result<CellResult, SandboxError> {
        let worker = match self.worker.take() {
            Some(w) if w.is_alive() => w,
            Some(w) => {
                // It died while idle, between cells: no code of the task
                // was running. Killed from outside (or the zygote gone),
                // the task's state is lost to the infrastructure.
                if let Some(e) = w.idle_loss(self.cells) {
                    return Err(e);
                }
                self.restarts += 1;
                self.sandbox.acquire().await?
            }
            None => {
                if self.cells > 0 {
                    self.restarts += 1;
                }
                self.sandbox.acquire().await?
            }
        };
        let mut worker = worker;
        self.cells += 1;
        let result = worker.exec(code).await;
        // A worker that answered and then died (killed right after its
        // reply) is kept, so the next cell judges how it died (`idle_loss`)
        // instead of silently going on in a fresh worker without the state.
        let answered = matches!(&result, Ok(r) if !r.status.lost_worker());
        if worker.is_alive() || answered {
            self.worker = Some(worker);
        }
        result
    }

    /// Acquire the task's worker now (a spare or a fresh fork) rather than
    /// in the first cell, so callers can tell waiting for a worker from
    /// running code.
    pub async fn ready(&mut self) -> Result<(), SandboxError> {
        if self.worker.is_none() {
            self.worker = Some(self.sandbox.acquire().await?);
        }
        Ok(())
    }

    /// Workers that had to be replaced after a lost one.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_with_the_dataset_and_choices_override_them() {
        let small = Limits::for_dataset(15_000, LimitChoice::default());
        assert_eq!(small, Limits::default());
        // The 205 MB CSV whose workers were OOM-killed at 1 GiB.
        let big = Limits::for_dataset(205_000_000, LimitChoice::default());
        assert_eq!(big.memory_bytes >> 20, 256 + 1173 + 1);
        assert_eq!(big.cell_timeout, Duration::from_secs(60 + 61));
        assert!(big.zygote_memory_bytes >= 4 << 30);
        let chosen = Limits::for_dataset(
            205_000_000,
            LimitChoice {
                memory_bytes: Some(3 << 30),
                cell_timeout: Some(Duration::from_secs(5)),
            },
        );
        assert_eq!(chosen.memory_bytes, 3 << 30);
        assert_eq!(chosen.cell_timeout, Duration::from_secs(5));
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn the_unconfined_directory_has_an_unpredictable_private_name() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // The old predictable names, planted as symlinks by "another user":
        // never followed, never reused, left alone.
        let temp = std::env::temp_dir();
        let decoy_target = tempfile::tempdir().expect("tempdir");
        let mut decoys = Vec::new();
        for n in 0..4 {
            let id = format!("{}-{n}", std::process::id());
            for name in [
                format!("csv-agent-jail-{id}"),
                format!("csv-agent-jail-{id}.canary"),
            ] {
                let path = temp.join(name);
                if std::os::unix::fs::symlink(decoy_target.path(), &path).is_ok() {
                    decoys.push(path);
                }
            }
        }
        let a = unconfined_workdir().expect("a private directory");
        let b = unconfined_workdir().expect("another one");
        assert_ne!(a.root, b.root);
        for dir in [&a, &b] {
            let name = dir
                .root
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a name");
            let random = name.strip_prefix("csv-agent-jail-").expect("the prefix");
            assert!(random.len() >= 16, "{name}");
            assert!(
                !random.starts_with(&format!("{}-", std::process::id())),
                "{name}"
            );
            let root = std::fs::symlink_metadata(&dir.root).expect("root");
            assert!(root.is_dir() && !root.file_type().is_symlink());
            assert_eq!(root.permissions().mode() & 0o777, 0o700);
            assert_eq!(root.uid(), nix::unistd::geteuid().as_raw());
            let work = std::fs::symlink_metadata(dir.work()).expect("work");
            assert!(work.is_dir());
            assert_eq!(work.permissions().mode() & 0o777, 0o700);
            // The canary: readable by its mode bits, outside the work
            // directory (the Landlock read-write rule), inside the private one.
            let canary = std::fs::symlink_metadata(dir.canary()).expect("canary");
            assert!(canary.is_file());
            assert_eq!(canary.permissions().mode() & 0o777, 0o644);
            assert!(!dir.canary().starts_with(dir.work()));
            assert!(dir.canary().starts_with(&dir.root));
        }
        a.remove();
        b.remove();
        assert!(!a.root.exists() && !b.root.exists());
        assert_eq!(
            std::fs::read_dir(decoy_target.path())
                .expect("decoy")
                .count(),
            0,
            "something was written through a planted symlink"
        );
        for decoy in decoys {
            assert!(std::fs::symlink_metadata(&decoy)
                .expect("the decoy is left alone")
                .file_type()
                .is_symlink());
            let _ = std::fs::remove_file(decoy);
        }
    }

    #[test]
    fn jail_file_names_are_kept_only_when_plain() {
        assert_eq!(jail_file_name(Path::new("/x/penguins.csv")), "penguins.csv");
        assert_eq!(jail_file_name(Path::new("/x/my data (1).csv")), "data.csv");
        assert_eq!(jail_file_name(Path::new("/x/ünïcode.tsv")), "data.csv");
    }

    fn reply(status: &str, stdout: String) -> CellReply {
        CellReply {
            cell: 1,
            status: status.to_string(),
            stdout,
            stderr: String::new(),
            stdout_truncated: 0,
            stderr_truncated: 0,
            result: None,
            error: None,
            submitted: None,
            hooks: Vec::new(),
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn a_forged_reply_is_cut_to_the_cap_and_the_cut_is_counted() {
        // 3-byte characters, so the cap falls inside one.
        let mut forged = reply("ok", "€".repeat(1 << 20));
        forged.result = Some("r".repeat(5 << 20));
        forged.stderr = "e".repeat(100_000);
        forged.error = None;
        let cell = CellResult::from_reply(forged, 1000).expect("well-formed");
        assert!(cell.stdout.starts_with(&"€".repeat(333)));
        assert!(
            cell.stdout.ends_with("\n[... 3144729 bytes truncated]\n"),
            "{}",
            &cell.stdout[990..]
        );
        assert_eq!(cell.stdout_truncated, 3 * (1 << 20) - 999);
        assert_eq!(cell.stderr_truncated, 100_000 - 1000);
        for text in [
            &cell.stdout,
            &cell.stderr,
            cell.result.as_ref().expect("result"),
        ] {
            assert!(text.len() <= 1000 + TRUNCATION_LINE_ROOM, "{}", text.len());
        }
    }

    #[test]
    fn text_the_zygote_already_cut_is_passed_on_unchanged() {
        let kept = format!("{}\n[... 123456789 bytes truncated]\n", "a".repeat(1000));
        let mut honest = reply("ok", kept.clone());
        honest.stdout_truncated = 123_456_789;
        let cell = CellResult::from_reply(honest, 1000).expect("well-formed");
        assert_eq!(cell.stdout, kept);
        assert_eq!(cell.stdout_truncated, 123_456_789);
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_a_violation() {
        let unknown = CellResult::from_reply(reply("fine", String::new()), 1000);
        assert!(unknown.is_err_and(|e| e.contains("unknown status")));
        assert!(CellResult::from_reply(reply("error", String::new()), 1000).is_err());
        let mut error = reply("error", String::new());
        error.error = Some(serde_json::json!({"type": "X", "message": 3, "traceback": ""}));
        assert!(CellResult::from_reply(error, 1000).is_err());
        let mut error = reply("error", String::new());
        error.error = Some(serde_json::json!({
            "type": "ValueError",
            "message": "m".repeat(5000),
            "traceback": "t".repeat(5000),
            "extra": "x".repeat(5000),
        }));
        let cell = CellResult::from_reply(error, 1000).expect("well-formed");
        let error = cell.error.expect("error");
        assert_eq!(error["type"], "ValueError");
        assert!(error.get("extra").is_none());
        for key in ["message", "traceback"] {
            let text = error[key].as_str().expect("string");
            assert!(
                text.ends_with("[... 4000 bytes truncated]\n"),
                "{key}: {text}"
            );
        }
    }
}
