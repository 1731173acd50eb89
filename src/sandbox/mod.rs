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

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

pub use image::{Image, ImageError, ImageSpec};
pub use layers::{IsolationReport, Layer, LayerStatus, LAYER_NAMES};
use protocol::{
    CellReply, ChannelPolicy, FramedSocket, FromWorker, FromZygote, ProtocolError, ScopeStatus,
    ToWorker, ToZygote, WorkerLimits, ZygoteReady,
};
pub use spawn::JailIds;

/// The zygote program, embedded so the binary is all a host needs besides the image.
pub const ZYGOTE_PY: &str = include_str!("../../sandbox-image/zygote.py");

/// Path of the dataset directory inside the jail.
pub const DATA_DIR: &str = "/data";

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
    pub ids: JailIds,
    pub startup_timeout: Duration,
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
            ids: JailIds::default_for_caller(),
            startup_timeout: Duration::from_secs(180),
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
    Fork { worker_id: u64, error: String },
    #[error("worker {worker_id}: {detail}")]
    Worker { worker_id: u64, detail: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
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

fn log_level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        match std::env::var(crate::config::ENV_LOG)
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "error" => Level::Error,
            "info" => Level::Info,
            "debug" | "trace" => Level::Debug,
            _ => Level::Warn,
        }
    })
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

type ForkReply = Result<(i32, OwnedFd), String>;

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
    /// The private work directory of a jail without namespaces.
    workdir: Option<PathBuf>,
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
fn readable_by(meta: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o400 != 0
    } else if meta.gid() == gid {
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

/// The zygote's configuration (its only argument). `worker_paths` is what a
/// worker's own Landlock domain keeps: everything the jail's domain allows
/// except the shared scratch root (`scratch`), of which each worker gets only
/// its own `task-<id>` directory.
fn zygote_config(
    csv_path: &str,
    limits: &Limits,
    jail_rules: &landlock::LandlockSpec,
    scratch: &Path,
) -> serde_json::Value {
    let worker_paths: Vec<String> = jail_rules
        .read_exec
        .iter()
        .chain(&jail_rules.read)
        .chain(&jail_rules.read_write)
        .filter(|p| p.as_path() != scratch)
        .map(|p| p.display().to_string())
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
    })
}

/// A private (0700) work directory for a jail without namespaces, and next
/// to it the Landlock canary (outside every rule).
fn unconfined_workdir(id: &str) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("csv-agent-jail-{id}"));
    let io = |what: String| move |source| SandboxError::Io { what, source };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("creating the work directory {}", dir.display())))?;
    let canary = PathBuf::from(format!("{}.canary", dir.display()));
    std::fs::write(&canary, "landlock canary\n")
        .map_err(io(format!("writing {}", canary.display())))?;
    Ok(dir)
}

fn remove_workdir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(format!("{}.canary", dir.display()));
}

/// The host-path variant of `spec`: the same zygote, its files in `workdir`,
/// Landlock limiting the host filesystem to what the zygote needs.
fn unconfined_spec(
    spec: &spawn::JailSpec,
    workdir: &Path,
    csv: &Path,
    limits: &Limits,
    lib_paths: Vec<PathBuf>,
) -> Result<spawn::UnconfinedSpec, SandboxError> {
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
            csv.to_path_buf(),
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
        *config = zygote_config(&csv.display().to_string(), limits, &rules, workdir).to_string();
    }
    Ok(spawn::UnconfinedSpec {
        workdir: workdir.to_path_buf(),
        landlock: rules,
        argv,
        env,
    })
}

impl Sandbox {
    /// Build the jail, start the zygote, load the CSV. Fails (listing the
    /// missing layers) when a layer is unavailable and degraded mode is off.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let csv = std::fs::canonicalize(&opts.csv).map_err(|e| SandboxError::Dataset {
            path: opts.csv.clone(),
            reason: format!("cannot open it: {e}"),
        })?;
        let meta = std::fs::metadata(&csv).map_err(|e| SandboxError::Dataset {
            path: csv.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        if !meta.is_file() {
            return Err(SandboxError::Dataset {
                path: csv,
                reason: "is not a regular file".to_string(),
            });
        }
        if !readable_by(&meta, opts.ids.uid, opts.ids.gid) {
            return Err(SandboxError::Dataset {
                path: csv,
                reason: format!(
                    "the jail runs as host uid {} and cannot read it; make it readable (chmod o+r) or copy it somewhere readable",
                    opts.ids.uid
                ),
            });
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
        });
        binds.push(mounts::Bind {
            source: csv.clone(),
            target: PathBuf::from(&csv_in_jail),
            writable: false,
            optional: false,
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
        let zygote_config = zygote_config(
            &csv_in_jail,
            &limits,
            &landlock_spec,
            Path::new(mounts::SCRATCH),
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
                nofile: limits.nofile,
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
            unconfined: None,
        };
        let mut spec = spec;
        // Without --allow-degraded a host without user namespaces is refused;
        // with it, the init may fall back to running on the host filesystem
        // under Landlock, in a private work directory.
        let workdir = if opts.allow_degraded {
            let dir = unconfined_workdir(&id)?;
            spec.unconfined = Some(unconfined_spec(
                &spec,
                &dir,
                &csv,
                &limits,
                lib_paths_for_fallback.clone(),
            )?);
            Some(dir)
        } else {
            None
        };

        let jail = match spawn::launch(
            &opts.init_program,
            &spec,
            zygote_group.as_ref(),
            opts.ids,
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
                    remove_workdir(dir);
                }
                return Err(e.into());
            }
        };
        for layer in &jail.applied {
            report.set(layer.clone());
        }
        let csv_in_jail = match &jail.unconfined {
            Some(reason) => {
                for ns in layers::NAMESPACE_LAYERS {
                    report.set(Layer::unavailable(ns, reason.clone()));
                }
                csv.display().to_string()
            }
            None => {
                // Not needed: the jail has its own root.
                if let Some(dir) = &workdir {
                    remove_workdir(dir);
                }
                csv_in_jail
            }
        };
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
            Some(dir) => format!("{}.canary", dir.display()),
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
                    .ok_or_else(|| "the forked message carried no socket".to_string());
                if let Some(tx) = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&worker_id))
                {
                    let _ = tx.send(reply);
                }
            }
            FromZygote::ForkFailed { worker_id, error } => {
                if let Some(tx) = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&worker_id))
                {
                    let _ = tx.send(Err(error));
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
                let _ = tx.send(Err("the zygote is gone".to_string()));
            }
        }
        shared.exit_notify.notify_waiters();
    }
}

const FORK_TIMEOUT: Duration = Duration::from_secs(30);

async fn fork_worker(shared: &Arc<Shared>) -> Result<Worker, SandboxError> {
    if let Some(reason) = shared.zygote_gone.lock().ok().and_then(|g| g.clone()) {
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
            .map_err(|e| SandboxError::Worker {
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
        Ok(Ok(Err(error))) => {
            cleanup(&group);
            return Err(SandboxError::Fork { worker_id, error });
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
    let (scope, host_pid) = match hello {
        Ok(Ok((FromWorker::Hello { version, .. }, _))) if version != protocol::PROTOCOL_VERSION => {
            cleanup(&group);
            return Err(ProtocolError::Unexpected {
                channel: "worker",
                expected: "a hello of protocol version 1",
                got: format!("version {version}"),
            }
            .into());
        }
        Ok(Ok((FromWorker::Hello { scope, pid, .. }, frame))) => {
            let host_pid = frame
                .sender_pid
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| SandboxError::Worker {
                    worker_id,
                    detail: format!("hello from jail pid {pid} carried no credentials"),
                });
            match host_pid {
                Ok(h) => (scope, h),
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
    if let Some(g) = &group {
        if let Err(e) = g.add(host_pid) {
            kill_pid(host_pid);
            cleanup(&group);
            return Err(SandboxError::Worker {
                worker_id,
                detail: e.to_string(),
            });
        }
    }
    if !scope.applied {
        log(
            Level::Warn,
            &format!(
                "worker {worker_id}: per-worker landlock scope not applied: {}",
                scope.error.clone().unwrap_or_default()
            ),
        );
    }
    Ok(Worker {
        id: worker_id,
        host_pid,
        ns_pid,
        scope,
        socket,
        group,
        shared: shared.clone(),
        next_cell: 1,
        dead: false,
    })
}

fn kill_pid(host_pid: u32) {
    if let Ok(pid) = i32::try_from(host_pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
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
        remove_workdir(dir);
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
            remove_workdir(dir);
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
            return Ok(self.lost(cell, started).await);
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
            Ok(Ok(None)) | Ok(Err(_)) => Ok(self.lost(cell, started).await),
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

    /// The worker died during a cell: find out why.
    async fn lost(&mut self, cell: u64, started: Instant) -> CellResult {
        self.dead = true;
        let exit = self.wait_exit(Duration::from_secs(2)).await;
        let oom = self
            .group
            .as_ref()
            .map(|g| g.oom_kills() > 0)
            .unwrap_or(false);
        self.kill();
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
        CellResult::lost(status, kind, detail, started.elapsed())
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

    /// SIGKILL the worker and everything it started: its process group, and
    /// its cgroup where there is one.
    fn kill(&mut self) {
        self.dead = true;
        // Whatever it sent and we buffered is of no use any more.
        self.socket.release();
        if !self.reaped() {
            // The worker leads its own process group (setpgid in the zygote),
            // and is not reaped before the zygote reports its exit, so its
            // pid cannot have been reused yet.
            if let Ok(pid) = i32::try_from(self.host_pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            kill_pid(self.host_pid);
        }
        if let Some(g) = &self.group {
            g.kill_all();
        }
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
            Some(_) => {
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
        if worker.is_alive() {
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
