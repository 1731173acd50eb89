//! The jail init: our own binary, re-executed by the supervisor with
//! [`INIT_ARG`], single-threaded, that turns itself into the jail and execs the
//! zygote.
//!
//! [`main`] reads top to bottom in the order the kernel needs. The process
//! splits in two at the pid namespace: the *monitor* (stays outside the new pid
//! namespace, waits, and kills the jail if the supervisor goes away) and the
//! *jail* child (pid 1 inside, becomes the zygote through `execve`).
//!
//! Nothing here may start threads or an async runtime, and after `fork` a
//! failure is reported over the sync channel, never by a panic.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

use super::layers::Layer;
use super::protocol::{read_frame_blocking, write_frame_blocking, FromInit, ToInit};
use super::spawn::{JailSpec, UnconfinedSpec, CONTROL_FD, DATASET_FD, SYNC_FD};
use super::{caps, landlock, mounts, rlimits, seccomp};

/// First argument that turns the binary into the jail init.
pub const INIT_ARG: &str = "__jail-init";

const CHANNEL: &str = "init";

/// Every namespace at once: created together, they all belong to the new user
/// namespace, so the jail's root has capabilities over them and over nothing
/// on the host.
fn namespace_flags() -> CloneFlags {
    CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
}

struct Failure {
    step: &'static str,
    error: String,
}

fn fail(step: &'static str) -> impl FnOnce(String) -> Failure {
    move |error| Failure { step, error }
}

/// Entry point of the init mode; returns the process exit status.
pub fn main() -> i32 {
    // Whatever the supervisor's own caller left open without close-on-exec
    // was inherited through the exec; nothing of it may reach the jail.
    if let Err(e) = close_inherited_descriptors() {
        eprintln!("csv-agent init: closing inherited descriptors failed: {e}");
        return 2;
    }
    // SAFETY: the supervisor placed the sync socket at SYNC_FD before exec and
    // nothing else in this fresh process owns it.
    let mut sync = unsafe { UnixStream::from_raw_fd(SYNC_FD) };
    let spec = match read_frame_blocking::<_, ToInit>(&mut sync, CHANNEL) {
        Ok(Some(ToInit::Spec { spec })) => *spec,
        Ok(other) => {
            eprintln!("csv-agent init: expected the jail spec first, got {other:?}");
            return 2;
        }
        Err(e) => {
            eprintln!("csv-agent init: reading the jail spec failed: {e}");
            return 2;
        }
    };
    match monitor(&mut sync, &spec) {
        Ok(code) => code,
        Err(f) => {
            let _ = write_frame_blocking(
                &mut sync,
                CHANNEL,
                &FromInit::Failed {
                    step: f.step.to_string(),
                    error: f.error,
                },
            );
            2
        }
    }
}

fn monitor(sync: &mut UnixStream, spec: &JailSpec) -> Result<i32, Failure> {
    // The sync socket must not reach Python; the control socket must. The
    // dataset's descriptor is mounted by us (or, without namespaces, handed
    // to the zygote explicitly), never inherited by accident.
    set_cloexec(sync.as_raw_fd(), true).map_err(fail("descriptors"))?;
    set_cloexec(CONTROL_FD, false).map_err(fail("descriptors"))?;
    let _ = set_cloexec(DATASET_FD, true);

    // 1. Host root keeps supplementary groups (gid 0 among them) across
    //    unshare; they would still open group-readable files on the host.
    //    (Root of a user namespace whose setgroups is denied cannot, and
    //    need not: its groups were fixed by whoever made that namespace.)
    if Uid::effective().is_root() {
        match nix::unistd::setgroups(&[]) {
            Ok(()) => {}
            Err(nix::Error::EPERM) if !in_initial_user_namespace() => {}
            Err(e) => return Err(fail("groups")(e.to_string())),
        }
    }

    // 2. Open bind sources while we still have the caller's host credentials.
    let sources =
        mounts::open_sources(&spec.fs.binds).map_err(|e| fail("filesystem")(e.to_string()))?;

    // 3. New namespaces. The caller (supervisor) writes our uid/gid maps: only
    //    a process in the parent namespace may map us to an unprivileged host
    //    uid other than our own.
    if let Err(e) = unshare(namespace_flags()) {
        let reason = format!(
            "unshare(user, mount, pid, net, ipc, uts, cgroup) failed: {e}{}",
            if e == nix::Error::EPERM || e == nix::Error::ENOSPC {
                " (user namespaces are disabled or exhausted on this host: check sysctl user.max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns)"
            } else {
                ""
            }
        );
        let Some(u) = &spec.unconfined else {
            return Err(fail("namespaces")(format!(
                "{reason}; pass --allow-degraded to run without namespaces"
            )));
        };
        drop(sources);
        write_frame_blocking(sync, CHANNEL, &FromInit::Unconfined { reason })
            .map_err(|e| fail("namespaces")(e.to_string()))?;
        // SAFETY: single-threaded process, as for the jail's fork below.
        return match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let outcome = unconfined(sync, spec, u);
                child_exit(sync, outcome)
            }
            Ok(ForkResult::Parent { child }) => Ok(watch(sync, child)),
            Err(e) => Err(fail("exec")(format!("fork failed: {e}"))),
        };
    }
    write_frame_blocking(
        sync,
        CHANNEL,
        &FromInit::Unshared {
            pid: std::process::id() as i32,
        },
    )
    .map_err(|e| fail("namespaces")(e.to_string()))?;
    match read_frame_blocking::<_, ToInit>(sync, CHANNEL) {
        Ok(Some(ToInit::Mapped)) => {}
        Ok(Some(ToInit::Abort { error })) => return Err(fail("user_namespace")(error)),
        other => {
            return Err(fail("user_namespace")(format!(
                "expected `mapped` from the supervisor, got {other:?}"
            )))
        }
    }
    // 4. Become the namespace's root (uid 0 inside = the unprivileged jail uid outside).
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| fail("user_namespace")(format!("setresgid(0) failed: {e}")))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| fail("user_namespace")(format!("setresuid(0) failed: {e}")))?;

    // 5. The first child after unshare(CLONE_NEWPID) is pid 1 of the new namespace.
    // SAFETY: this process is single-threaded (a fresh exec that started no
    // threads), so the child may do anything after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let outcome = jail(sync, spec, &sources);
            child_exit(sync, outcome)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sources);
            Ok(watch(sync, child))
        }
        Err(e) => Err(fail("pid_namespace")(format!(
            "fork into the new pid namespace failed: {e}"
        ))),
    }
}

/// End a forked child whose set-up failed (it never returns on success: it
/// has exec'd): report the failure to the supervisor and leave.
fn child_exit(sync: &mut UnixStream, outcome: Result<Never, Failure>) -> ! {
    let code = match outcome {
        Ok(never) => match never {},
        Err(f) => {
            let _ = write_frame_blocking(
                sync,
                CHANNEL,
                &FromInit::Failed {
                    step: f.step.to_string(),
                    error: f.error,
                },
            );
            2
        }
    };
    // SAFETY: leaving the forked child without running the parent's atexit
    // handlers or flushing its copied stdio buffers.
    unsafe { libc::_exit(code) }
}

/// Close every descriptor above the dataset's (0-2 are /dev/null and the
/// log pipe, 3 the control socket, 4 the sync socket, 5 the dataset, which
/// the supervisor closed before exec when there is none).
fn close_inherited_descriptors() -> std::io::Result<()> {
    let first = (DATASET_FD + 1) as libc::c_uint;
    // SAFETY: close_range only closes descriptors of this process; none above
    // SYNC_FD is owned by anything in this freshly executed program.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.9: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > DATASET_FD)
        .collect();
    for fd in fds {
        // SAFETY: as above; a descriptor already closed (the directory's own)
        // just returns EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Whether we run in the host's user namespace (its uid_map is the identity
/// over the whole range).
fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// The monitor's loop: exit with the jail's status, or kill the jail when the
/// supervisor's end of the sync socket closes (the supervisor died).
fn watch(sync: &UnixStream, child: Pid) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 2,
        }
        let mut fds = [PollFd::new(sync.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(n) if n > 0 => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLIN) {
                    let mut probe = [0u8; 1];
                    let gone = matches!(
                        nix::sys::socket::recv(
                            sync.as_raw_fd(),
                            &mut probe,
                            nix::sys::socket::MsgFlags::MSG_DONTWAIT
                        ),
                        Ok(0) | Err(nix::Error::ECONNRESET)
                    );
                    if gone {
                        let _ = kill(child, Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        return 137;
                    }
                }
            }
            _ => {}
        }
    }
}

enum Never {}

/// Pid 1 of the jail: build the root, restrict itself layer by layer, exec the
/// zygote.
fn jail(
    sync: &mut UnixStream,
    spec: &JailSpec,
    sources: &[mounts::Source],
) -> Result<Never, Failure> {
    let mut layers: Vec<Layer> = Vec::new();
    // Die with the monitor: if it is killed, the whole jail goes with it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| fail("pdeathsig")(e.to_string()))?;
    // Own session: a terminal's Ctrl-C reaches the supervisor, not the jail.
    let _ = nix::unistd::setsid();

    // Compile the seccomp policy early: a broken policy should fail before any
    // mount is made, and compiling allocates, which is best done unrestricted.
    let programs =
        seccomp::compile(seccomp::JAIL_FILTERS).map_err(|e| fail("seccomp")(e.to_string()));

    // Filesystem: new root, binds, pivot_root.
    mounts::build_root(&spec.fs, sources).map_err(|e| fail("filesystem")(e.to_string()))?;
    layers.push(Layer::active("filesystem", "tmpfs root (read-only) with read-only binds; /data read-only; /tmp and /dev/shm size-capped"));

    // UTS: a hostname that says nothing about the host.
    nix::unistd::sethostname(&spec.hostname).map_err(|e| fail("uts_namespace")(e.to_string()))?;

    lock_down(
        sync,
        layers,
        spec,
        &spec.landlock,
        &spec.argv,
        &spec.env,
        programs,
        spec.worker_ids.is_some(),
    )
}

/// Without a user namespace (only with --allow-degraded): no new root, no
/// namespaces; the host filesystem stays, and Landlock limits it to the image,
/// the system libraries, the dataset and a private work directory.
fn unconfined(
    sync: &mut UnixStream,
    spec: &JailSpec,
    u: &UnconfinedSpec,
) -> Result<Never, Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| fail("pdeathsig")(e.to_string()))?;
    let _ = nix::unistd::setsid();
    let programs =
        seccomp::compile(seccomp::UNCONFINED_FILTERS).map_err(|e| fail("seccomp")(e.to_string()));
    nix::unistd::chdir(&u.workdir)
        .map_err(|e| fail("filesystem")(format!("cannot enter {}: {e}", u.workdir.display())))?;
    if let Some(fd) = u.dataset_fd {
        // The zygote reads the checked file as /proc/self/fd/<fd>.
        set_cloexec(fd, false).map_err(fail("descriptors"))?;
    }
    let layers = vec![Layer::unavailable(
        "filesystem",
        "no mount namespace: the host filesystem is visible, limited by Landlock to the image, the system libraries, the dataset and a private work directory",
    )];
    lock_down(
        sync,
        layers,
        spec,
        &u.landlock,
        &u.argv,
        &u.env,
        programs,
        false,
    )
}

/// The layers every jail gets, in the order the kernel needs, then `execve`:
/// rlimits, Landlock, capabilities, no_new_privs, seccomp. With
/// `per_worker_ids` the zygote keeps what it needs to give each worker its
/// own uid ([`caps::ZYGOTE_KEEPS`]).
#[allow(clippy::too_many_arguments)]
fn lock_down(
    sync: &mut UnixStream,
    mut layers: Vec<Layer>,
    spec: &JailSpec,
    landlock_spec: &landlock::LandlockSpec,
    argv: &[String],
    env: &[(String, String)],
    programs: Result<Vec<(&'static str, seccompiler::BpfProgram)>, Failure>,
    per_worker_ids: bool,
) -> Result<Never, Failure> {
    // rlimits before the capabilities go (raising hard limits needs CAP_SYS_RESOURCE).
    let detail = rlimits::apply(&spec.rlimits).map_err(|e| fail("rlimits")(e.to_string()))?;
    layers.push(Layer::active("rlimits", detail));

    // Landlock: path rules for everything exec'd from here on.
    match landlock::apply(landlock_spec) {
        Ok(abi) => layers.push(Layer::active(
            "landlock",
            format!("ABI {abi}; signal and abstract-socket scoping"),
        )),
        Err(e) if spec.allow_degraded => layers.push(Layer::unavailable("landlock", e.to_string())),
        Err(e) => {
            return Err(fail("landlock")(format!(
                "{e} (pass --allow-degraded to run without it)"
            )))
        }
    }

    // Capabilities: nothing left, not even in the bounding set.
    let detail = if per_worker_ids {
        caps::keep_only(&caps::ZYGOTE_KEEPS)
    } else {
        caps::drop_all()
    }
    .map_err(|e| fail("capabilities")(e.to_string()))?;
    layers.push(Layer::active("capabilities", detail));

    caps::set_no_new_privs().map_err(|e| fail("no_new_privs")(e.to_string()))?;
    layers.push(Layer::active("no_new_privs", "PR_SET_NO_NEW_PRIVS set"));

    // Build exec arguments before seccomp (no allocation surprises after it).
    let (path, argv, envp) = exec_args(argv, env).map_err(fail("exec"))?;

    // seccomp last: every earlier step needed calls the filter forbids.
    let seccomp_layer = match programs
        .and_then(|p| seccomp::apply(&p).map_err(|e| fail("seccomp")(e.to_string())))
    {
        Ok(()) => Layer::active(
            "seccomp",
            format!(
                "{} allowed system calls, EPERM otherwise",
                seccomp::allowed_syscall_count()
            ),
        ),
        Err(f) if spec.allow_degraded => Layer::unavailable("seccomp", f.error),
        Err(f) => {
            return Err(Failure {
                step: f.step,
                error: format!("{} (pass --allow-degraded to run without it)", f.error),
            })
        }
    };
    layers.push(seccomp_layer);

    write_frame_blocking(sync, CHANNEL, &FromInit::Applied { layers })
        .map_err(|e| fail("report")(e.to_string()))?;

    let err = match nix::unistd::execve(&path, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // The supervisor stopped listening on the sync socket after `applied`:
    // say it on stderr too, which it keeps for its error message.
    let message = format!("execve {path:?} failed: {err}");
    eprintln!("csv-agent init: {message}");
    Err(fail("exec")(message))
}

type ExecArgs = (CString, Vec<CString>, Vec<CString>);

fn exec_args(argv: &[String], env: &[(String, String)]) -> Result<ExecArgs, String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let path = c(&argv.first().cloned().unwrap_or_default())?;
    let argv = argv.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((path, argv, envp))
}

fn set_cloexec(fd: i32, on: bool) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: borrowing a descriptor this process owns for one fcntl call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flag = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flag))
        .map(|_| ())
        .map_err(|e| format!("fcntl({}) failed: {e}", fd.as_raw_fd()))
}
