//! Starting a jail: the supervisor side of the re-exec.
//!
//! The supervisor never forks from its (multi-threaded, tokio) process. It
//! spawns its own binary in init mode with a clean environment and two
//! sockets in fixed places — the control socket for the zygote at fd 3 and the
//! sync socket for the init at fd 4 — plus the dataset's descriptor at fd 5,
//! places the init in the zygote's cgroup,
//! sends the [`JailSpec`], writes the uid/gid maps when the init has unshared,
//! and waits for the init's report of the layers it applied.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::instrument::WithSubscriber;
use tracing::Instrument;

use super::cgroup::Group;
use super::init::INIT_ARG;
use super::landlock::LandlockSpec;
use super::layers::Layer;
use super::mounts::FsSpec;
use super::protocol::{decode, encode, FromInit, ProtocolError, ToInit, MAX_FRAME};
use super::rlimits::RlimitSpec;
use super::uids::{JailIds, WorkerIds};

/// Where the zygote finds its control socket.
pub const CONTROL_FD: RawFd = 3;
/// Where the init finds its sync socket.
pub const SYNC_FD: RawFd = 4;
/// Where the init finds the dataset: the descriptor the supervisor opened
/// (`O_PATH | O_NOFOLLOW`) and checked, so the jail mounts exactly the file
/// that was checked, whatever happens to its path afterwards.
pub const DATASET_FD: RawFd = 5;

/// Everything the init needs to build the jail: a declarative model, applied
/// by the init, decided by the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    pub fs: FsSpec,
    pub landlock: LandlockSpec,
    pub rlimits: RlimitSpec,
    pub hostname: String,
    /// The zygote command line inside the jail (`argv[0]` is the path).
    pub argv: Vec<String>,
    /// The zygote's whole environment: nothing of the host's is passed.
    pub env: Vec<(String, String)>,
    pub allow_degraded: bool,
    /// The ids the zygote gives its workers (per-worker uid mode): the
    /// zygote then keeps the capabilities to switch a worker to one of them.
    pub worker_ids: Option<WorkerIds>,
    /// How to run when no user namespace can be made; `None` refuses
    /// (set only with `--allow-degraded`).
    pub unconfined: Option<UnconfinedSpec>,
}

/// The host-path variant of the jail, for hosts without user namespaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnconfinedSpec {
    /// Private, writable working directory (also HOME and TMPDIR).
    pub workdir: PathBuf,
    /// The dataset's descriptor, kept open (not close-on-exec) for the
    /// zygote, which reads the dataset as `/proc/self/fd/<n>`.
    #[serde(default)]
    pub dataset_fd: Option<RawFd>,
    pub landlock: LandlockSpec,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start the jail init {program}: {source}")]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the jail's sockets failed: {0}")]
    Socket(#[source] nix::Error),
    #[error("placing the jail in its cgroup failed: {0}")]
    Cgroup(String),
    #[error("writing the uid/gid maps of pid {pid} failed: {detail}")]
    IdMap { pid: i32, detail: String },
    #[error("jail setup failed at {step}: {error}")]
    Init { step: String, error: String },
    #[error("the jail init exited before finishing its setup ({status}){stderr}")]
    Died { status: String, stderr: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the jail init did not answer within {0:?}")]
    Timeout(Duration),
}

/// A started jail: the init (monitor) process and our end of the control socket.
pub struct JailProcess {
    pub child: tokio::process::Child,
    pub control: OwnedFd,
    /// Layers as the init applied them.
    pub applied: Vec<Layer>,
    /// Host pid of the init (monitor); the zygote is its only child.
    pub init_pid: u32,
    /// Our end of the sync socket; dropping it makes the monitor kill the jail.
    pub sync: OwnedFd,
    /// Why the jail runs without namespaces, when it does.
    pub unconfined: Option<String>,
    /// The last lines the jail wrote to stderr (for error messages).
    pub stderr_tail: StderrTail,
}

/// The last lines a jail wrote to its stderr.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl StderrTail {
    const KEEP: usize = 40;

    fn push(&self, line: String) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() == Self::KEEP {
                v.pop_front();
            }
            v.push_back(line);
        }
    }

    /// The kept lines, joined; empty when the jail said nothing.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| v.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SpawnError::Socket)
}

/// Put each `(descriptor, target number)` in place in a freshly forked child
/// (before exec), without close-on-exec, and close `DATASET_FD` when no
/// descriptor goes there. Each source is first duplicated above every target
/// (close-on-exec), so a source that already sits on another's target number
/// is never clobbered. Only async-signal-safe calls: `fcntl`, `dup2`, `close`.
fn place_fds(moves: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let mut high = [-1; 3];
    for (slot, (fd, _)) in high.iter_mut().zip(moves) {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own; async-signal-safe.
        let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *slot = dup;
    }
    for (dup, (_, target)) in high.iter().zip(moves) {
        // SAFETY: dup2 is async-signal-safe; the new descriptor has no CLOEXEC.
        if unsafe { libc::dup2(*dup, *target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if !moves.iter().any(|(_, target)| *target == DATASET_FD) {
        // Whatever our caller left there must not pass for a dataset.
        // SAFETY: close is async-signal-safe; EBADF (nothing there) is fine.
        unsafe { libc::close(DATASET_FD) };
    }
    Ok(())
}

async fn read_init_frame(
    stream: &mut tokio::net::UnixStream,
) -> Result<Option<FromInit>, ProtocolError> {
    let channel = "init";
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
        Err(source) => return Err(ProtocolError::Io { channel, source }),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge { channel, len });
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| ProtocolError::Truncated { channel })?;
    decode(channel, &body).map(Some)
}

/// Write the uid and gid maps of `pid` so root in the jail is `ids` on the
/// host, and the worker ids (per-worker uid mode) their host range. The
/// supervisor writes them itself (host root, or an unprivileged caller's one
/// own id, after denying `setgroups`: required then, and it keeps the jail
/// from ever changing groups); with a subordinate range, the set-uid helpers
/// `newuidmap`/`newgidmap` write them after checking `/etc/subuid` and
/// `/etc/subgid`.
async fn write_id_maps(pid: i32, ids: JailIds) -> Result<(), SpawnError> {
    let fail = |detail: String| SpawnError::IdMap { pid, detail };
    if ids.via_newidmap {
        for (helper, gid) in [("newuidmap", false), ("newgidmap", true)] {
            let program = super::uids::find_helper(helper)
                .ok_or_else(|| fail(format!("{helper} is not installed")))?;
            let mut cmd = tokio::process::Command::new(&program);
            cmd.arg(pid.to_string()).env_clear().stdin(Stdio::null());
            for line in ids.map_lines(gid) {
                cmd.args(line.iter().map(|n| n.to_string()));
            }
            let out = cmd
                .output()
                .await
                .map_err(|e| fail(format!("{}: {e}", program.display())))?;
            if !out.status.success() {
                return Err(fail(format!(
                    "{} {}: {}",
                    program.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        return Ok(());
    }
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), text.as_bytes())
            .map_err(|e| fail(format!("{file}: {e}")))
    };
    let table = |gid: bool| {
        ids.map_lines(gid)
            .iter()
            .map(|[a, b, c]| format!("{a} {b} {c}\n"))
            .collect::<String>()
    };
    write("setgroups", "deny".to_string())?;
    write("uid_map", table(false))?;
    write("gid_map", table(true))?;
    Ok(())
}

/// Start the init, build the jail and return once the init has reported the
/// layers it applied and is about to exec the zygote. `dataset`, when given,
/// reaches the init at [`DATASET_FD`] (a bind whose `fd` names it mounts it).
pub async fn launch(
    program: &std::path::Path,
    spec: &JailSpec,
    dataset: Option<BorrowedFd<'_>>,
    group: Option<&Group>,
    ids: JailIds,
    setup_timeout: Duration,
) -> Result<JailProcess, SpawnError> {
    let (control_ours, control_theirs) = socketpair()?;
    let (sync_ours, sync_theirs) = socketpair()?;
    let mut moves = vec![
        (control_theirs.as_raw_fd(), CONTROL_FD),
        (sync_theirs.as_raw_fd(), SYNC_FD),
    ];
    if let Some(fd) = dataset {
        moves.push((fd.as_raw_fd(), DATASET_FD));
    }

    let mut cmd = std::process::Command::new(program);
    cmd.arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls fcntl,
    // dup2 and close, which are async-signal-safe; `moves` was built before
    // the fork and is only read.
    unsafe {
        cmd.pre_exec(move || place_fds(&moves));
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpawnError::Exec {
            program: program.to_path_buf(),
            source,
        })?;
    drop(control_theirs);
    drop(sync_theirs);
    let init_pid = child.id().unwrap_or(0);

    // Collect the init's (and later the zygote's) stderr for diagnostics.
    let stderr_tail = StderrTail::default();
    if let Some(stderr) = child.stderr.take() {
        let sink = stderr_tail.clone();
        let reader = async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                jail_line(&line);
                sink.push(line);
            }
        };
        // In the caller's span and subscriber: the lines land in the
        // dataset's log file whichever runtime thread reads them.
        tokio::spawn(reader.in_current_span().with_current_subscriber());
    }

    // The cgroup first: the init must be inside before it creates its cgroup
    // namespace, so the namespace's root is the zygote's own group.
    if let Some(group) = group {
        group
            .add(init_pid)
            .map_err(|e| SpawnError::Cgroup(e.to_string()))?;
    }

    let std_sync = std::os::unix::net::UnixStream::from(sync_ours);
    std_sync
        .set_nonblocking(true)
        .map_err(|source| ProtocolError::Io {
            channel: "init",
            source,
        })?;
    let mut sync =
        tokio::net::UnixStream::from_std(std_sync).map_err(|source| ProtocolError::Io {
            channel: "init",
            source,
        })?;
    sync.write_all(&encode(&ToInit::Spec {
        spec: Box::new(spec.clone()),
    }))
    .await
    .map_err(|source| ProtocolError::Io {
        channel: "init",
        source,
    })?;

    let conversation = async {
        let mut applied = None;
        let mut unconfined = None;
        loop {
            match read_init_frame(&mut sync).await? {
                Some(FromInit::Unconfined { reason }) => unconfined = Some(reason),
                Some(FromInit::Unshared { pid }) => {
                    let reply = match write_id_maps(pid, ids).await {
                        Ok(()) => ToInit::Mapped,
                        Err(e) => ToInit::Abort {
                            error: e.to_string(),
                        },
                    };
                    sync.write_all(&encode(&reply))
                        .await
                        .map_err(|source| ProtocolError::Io {
                            channel: "init",
                            source,
                        })?;
                }
                Some(FromInit::Applied { layers }) => {
                    applied = Some(layers);
                    break;
                }
                Some(FromInit::Failed { step, error }) => {
                    return Err(SpawnError::Init { step, error });
                }
                None => break,
            }
        }
        Ok::<_, SpawnError>(applied.map(|a| (a, unconfined)))
    };
    let (applied, unconfined) = match tokio::time::timeout(setup_timeout, conversation).await {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => {
            let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(s)) => s.to_string(),
                _ => "still running".to_string(),
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stderr = stderr_tail.text();
            return Err(SpawnError::Died {
                status,
                stderr: if stderr.is_empty() {
                    String::new()
                } else {
                    format!(":\n{stderr}")
                },
            });
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(SpawnError::Timeout(setup_timeout)),
    };
    // The monitor kills the jail when this socket closes: it lives exactly
    // as long as the JailProcess.
    let sync = sync
        .into_std()
        .map(OwnedFd::from)
        .map_err(|source| ProtocolError::Io {
            channel: "init",
            source,
        })?;
    Ok(JailProcess {
        child,
        control: control_ours,
        applied,
        init_pid,
        sync,
        unconfined,
        stderr_tail,
    })
}

/// A line the jail wrote to its stderr, as a tracing event (target
/// `csv_agent::sandbox::jail`). The zygote's lines (`zygote[pid]: …`) and
/// the init's (`csv-agent init: …`) say what went wrong or what it is doing
/// (shutting down), at debug level as before; a Python traceback or a
/// warning printed by the interpreter (`…Error: …`, `…Warning: …`) is a
/// warning.
fn jail_line(line: &str) {
    match jail_line_level(line) {
        tracing::Level::WARN => {
            tracing::warn!(target: "csv_agent::sandbox::jail", "[jail] {line}")
        }
        _ => tracing::debug!(target: "csv_agent::sandbox::jail", "[jail] {line}"),
    }
}

fn jail_line_level(line: &str) -> tracing::Level {
    let head = line.split(':').next().unwrap_or_default().trim();
    let exception = !head.is_empty()
        && !head.contains(' ')
        && (head.ends_with("Error") || head.ends_with("Warning"));
    if exception
        || line.starts_with("Traceback (most recent call last)")
        || line.starts_with("Fatal Python error")
    {
        tracing::Level::WARN
    } else {
        tracing::Level::DEBUG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_lines_that_report_a_python_failure_are_warnings() {
        for line in [
            "Traceback (most recent call last):",
            "MemoryError",
            "ModuleNotFoundError: No module named 'pandas'",
            "DeprecationWarning: something",
            "Fatal Python error: Segmentation fault",
        ] {
            assert_eq!(jail_line_level(line), tracing::Level::WARN, "{line}");
        }
        for line in [
            "zygote[1]: shutdown requested",
            "csv-agent init: execve failed",
            "zygote[1]: forking worker 3 failed: OSError: [Errno 11]",
            "",
        ] {
            assert_eq!(jail_line_level(line), tracing::Level::DEBUG, "{line}");
        }
    }
}
