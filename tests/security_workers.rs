//! Attacks of a worker on processes other than itself: the zygote (pid 1 of
//! the jail) and a sibling worker of the same sandbox, through every system
//! call that names a process by pid, process group, tid or pidfd. One jail
//! per test; each attack is checked from INSIDE (the call was refused, with
//! which errno) and from OUTSIDE (the victims' limits, nice value, affinity,
//! scheduling policy, OOM score and name are unchanged on the host, the
//! sibling answers a cell and the zygote forks a fresh worker that answers).
//!
//! System call numbers are the x86_64 ones.

mod common;

use std::time::Duration;

use common::attack::*;
use common::*;
use csv_agent::sandbox::{Sandbox, Worker, WorkerIsolation};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;
const ESRCH: i32 = libc::ESRCH;

/// What the host sees of a process that an attack could change.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    limits: String,
    nice: String,
    policy: String,
    cpus: String,
    oom_score_adj: String,
    comm: String,
    ioprio: String,
}

fn snapshot(pid: u32) -> Snapshot {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let stat = read("stat");
    let fields: Vec<String> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    // Fields after the command: state is 0, so nice (19th) is 16, policy (41st) is 38.
    let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
    let cpus = read("status")
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap_or_default()
        .to_string();
    // SAFETY: a plain ioprio_get(IOPRIO_WHO_PROCESS, pid) query.
    let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid as libc::c_long) };
    Snapshot {
        limits: read("limits"),
        nice: field(16),
        policy: field(38),
        cpus,
        oom_score_adj: read("oom_score_adj"),
        comm: read("comm"),
        ioprio: ioprio.to_string(),
    }
}

/// A sandbox with a sibling worker (the victim) and an attacker worker.
struct Scene {
    sb: Sandbox,
    _dir: tempfile::TempDir,
    sibling: Worker,
    attacker: Worker,
    zygote_host: u32,
    before: (Snapshot, Snapshot),
}

impl Scene {
    async fn new(worker_uids: bool) -> Scene {
        let dir = world_readable_dir();
        let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
        let mut opts = options(&csv);
        opts.worker_uids = worker_uids;
        let sb = Sandbox::start(opts).await.expect("sandbox starts");
        let expected = if worker_uids {
            WorkerIsolation::PER_WORKER_UID
        } else {
            WorkerIsolation::SINGLE_UID
        };
        assert_eq!(
            sb.report()
                .worker_isolation
                .as_ref()
                .map(|w| w.mode.as_str()),
            Some(expected),
            "{:?}",
            sb.report().worker_isolation
        );
        let sibling = sb.acquire().await.expect("sibling");
        let attacker = sb.acquire().await.expect("attacker");
        let zygote_host = sb.zygote_host_pid().expect("zygote pid");
        let before = (snapshot(zygote_host), snapshot(sibling.host_pid));
        Scene {
            sb,
            _dir: dir,
            sibling,
            attacker,
            zygote_host,
            before,
        }
    }

    /// Run `body` in the attacker with `@SIB@` the sibling's pid in the jail.
    async fn attack(&mut self, body: &str) -> Value {
        let code = payload(body, &[("SIB", self.sibling.ns_pid.to_string())]);
        observed(&exec(&mut self.attacker, &code).await)
    }

    /// Outside: nothing of the zygote or the sibling changed, both live on,
    /// the sibling answers and the zygote forks a worker that answers.
    async fn assert_unharmed(mut self) {
        let after = (snapshot(self.zygote_host), snapshot(self.sibling.host_pid));
        assert_eq!(
            self.before.0, after.0,
            "the zygote was changed from a worker"
        );
        assert_eq!(
            self.before.1, after.1,
            "the sibling was changed from a worker"
        );
        assert!(host_pid_alive(self.sibling.host_pid), "the sibling is gone");
        assert_answers(&mut self.sibling).await;
        assert_sandbox_healthy(&self.sb).await;
        // The attacker itself is still a working worker.
        assert_answers(&mut self.attacker).await;
        self.sb.shutdown().await;
    }
}

/// Every target: pid 1 (the zygote) and the sibling.
fn for_targets(call: &str) -> String {
    let mut out = String::from("obs = {}\n");
    for (name, pid) in [("zygote", "1"), ("sibling", "@SIB@")] {
        out.push_str(&format!("pid = {pid}\n"));
        out.push_str(&call.replace("KEY", name));
        out.push('\n');
    }
    out.push_str("report(**obs)\n");
    out
}

/// One jail: `call` aimed at the zygote and at the sibling (see
/// [`for_targets`]), every attempt refused with one of `errnos`, then
/// nothing of either victim changed.
async fn refused_against_both(call: &str, errnos: &[i32]) {
    let mut scene = Scene::new(true).await;
    let obs = scene.attack(&for_targets(call)).await;
    assert_all_refused(&obs, errnos);
    // Give a CPU limit of 1 s the chance to fire, had one been set.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    scene.assert_unharmed().await;
}

fn assert_all_refused(obs: &Value, errnos: &[i32]) {
    let map = obs.as_object().expect("observations");
    assert!(!map.is_empty());
    for (what, record) in map {
        assert_refused_with(record, what, errnos);
    }
}

// Reproduced: `resource.prlimit(1, RLIMIT_CPU, (1, 1))` killed the zygote
// the next time it used CPU; a lowered RLIMIT_NOFILE made every fork fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prlimit_of_the_zygote_or_a_sibling_is_refused() {
    refused_against_both(
        r#"
obs["KEY_cpu"] = attempt(resource.prlimit, pid, resource.RLIMIT_CPU, (1, 1))
obs["KEY_nofile"] = attempt(resource.prlimit, pid, resource.RLIMIT_NOFILE, (3, 3))
obs["KEY_nproc"] = attempt(resource.prlimit, pid, resource.RLIMIT_NPROC, (1, 1))
obs["KEY_read"] = attempt(resource.prlimit, pid, resource.RLIMIT_NOFILE)
"#,
        &[EPERM],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_of_other_processes_are_refused() {
    let mut scene = Scene::new(true).await;
    let obs = scene
        .attack(&for_targets(
            r#"
obs["KEY_setpriority_process"] = attempt(os.setpriority, os.PRIO_PROCESS, pid, 17)
obs["KEY_setpriority_pgrp"] = attempt(os.setpriority, os.PRIO_PGRP, pid, 17)
obs["KEY_getpriority_process"] = attempt(os.getpriority, os.PRIO_PROCESS, pid)
obs["KEY_ioprio_set"] = sys_call(251, 1, pid, (3 << 13))
obs["KEY_ioprio_get"] = sys_call(252, 1, pid)
"#,
        ))
        .await;
    assert_all_refused(&obs, &[EPERM]);
    // PRIO_USER reaches every process of a uid (in single-uid mode the
    // zygote's own): refused whoever is named.
    let obs = scene
        .attack(
            r#"
report(
    user_0=attempt(os.setpriority, os.PRIO_USER, 0, 17),
    user_root=attempt(os.setpriority, os.PRIO_USER, 0, 19),
    user_own=attempt(os.setpriority, os.PRIO_USER, os.getuid(), 17),
    get_user=attempt(os.getpriority, os.PRIO_USER, 0),
    ioprio_user=sys_call(251, 3, 0, (3 << 13)),
)
"#,
        )
        .await;
    assert_all_refused(&obs, &[EPERM]);
    scene.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_and_scheduling_of_other_processes_are_refused() {
    refused_against_both(
        r#"
obs["KEY_setaffinity"] = attempt(os.sched_setaffinity, pid, {0})
obs["KEY_getaffinity"] = attempt(os.sched_getaffinity, pid)
obs["KEY_getparam"] = attempt(os.sched_getparam, pid)
obs["KEY_getscheduler"] = attempt(os.sched_getscheduler, pid)
obs["KEY_setscheduler"] = attempt(os.sched_setscheduler, pid, os.SCHED_IDLE, os.sched_param(0))
obs["KEY_setparam"] = attempt(os.sched_setparam, pid, os.sched_param(0))
obs["KEY_rr_interval"] = attempt(os.sched_rr_get_interval, pid)
attr = ctypes.create_string_buffer(56)
obs["KEY_setattr"] = sys_call(314, pid, ctypes.addressof(attr), 0)
obs["KEY_getattr"] = sys_call(315, pid, ctypes.addressof(attr), 56, 0)
"#,
        &[EPERM],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pidfds_memory_and_tracing_calls_on_other_processes_are_refused() {
    refused_against_both(
        r#"
obs["KEY_pidfd_open"] = sys_call(434, pid, 0)
obs["KEY_pidfd_send_signal"] = sys_call(424, 3, 9, 0, 0)
obs["KEY_pidfd_getfd"] = sys_call(438, 3, 0, 0)
iov = ctypes.create_string_buffer(16)
obs["KEY_process_madvise"] = sys_call(440, 3, ctypes.addressof(iov), 1, 4, 0)
obs["KEY_process_mrelease"] = sys_call(448, 3, 0)
obs["KEY_kcmp"] = sys_call(312, os.getpid(), pid, 0, 0, 0)
mask = ctypes.c_ulong(1)
obs["KEY_migrate_pages"] = sys_call(256, pid, 64, ctypes.addressof(mask), ctypes.addressof(mask))
obs["KEY_move_pages"] = sys_call(279, pid, 0, 0, 0, 0, 0)
head = ctypes.c_void_p(0)
size = ctypes.c_size_t(0)
obs["KEY_get_robust_list"] = sys_call(274, pid, ctypes.addressof(head), ctypes.addressof(size))
obs["KEY_ptrace_attach"] = sys_call(101, 16, pid, 0, 0)
buf = ctypes.create_string_buffer(8)
local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
obs["KEY_process_vm_readv"] = sys_call(310, pid, ctypes.addressof(local), 1, ctypes.addressof(local), 1, 0)
obs["KEY_prctl_sched_core"] = sys_call(157, 62, 2, pid, 0, 0)
"#,
        &[EPERM],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_groups_and_sessions_of_others_are_out_of_reach() {
    let mut scene = Scene::new(true).await;
    let obs = scene
        .attack(&for_targets(
            r#"
obs["KEY_getpgid"] = attempt(os.getpgid, pid)
obs["KEY_getsid"] = attempt(os.getsid, pid)
"#,
        ))
        .await;
    assert_all_refused(&obs, &[EPERM]);
    let obs = scene
        .attack(
            r#"
# Join the zygote's process group (so that PRIO_PGRP 0 or kill(0) would
# reach it), move the sibling, adopt the sibling's group.
def clone_parent():
    r = _libc.syscall(ctypes.c_long(56), ctypes.c_long(0x8000 | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    if r == 0:
        os._exit(0)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
report(
    join_zygote_group=attempt(os.setpgid, 0, 1),
    move_sibling=attempt(os.setpgid, @SIB@, @SIB@),
    join_sibling_group=attempt(os.setpgid, 0, @SIB@),
    clone_parent=attempt(clone_parent),
)
"#,
        )
        .await;
    for (what, record) in obs.as_object().expect("obs") {
        assert_refused_with(record, what, &[EPERM, ESRCH]);
    }
    scene.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_to_the_zygote_or_a_sibling_never_arrive() {
    let mut scene = Scene::new(true).await;
    let obs = scene
        .attack(&for_targets(
            r#"
info = ctypes.create_string_buffer(128)
ctypes.memmove(info, (9).to_bytes(4, "little"), 4)
obs["KEY_kill"] = attempt(os.kill, pid, signal.SIGKILL)
obs["KEY_tkill"] = sys_call(200, pid, 9)
obs["KEY_tgkill"] = sys_call(234, pid, pid, 9)
obs["KEY_rt_sigqueueinfo"] = sys_call(129, pid, 10, ctypes.addressof(info))
obs["KEY_rt_tgsigqueueinfo"] = sys_call(297, pid, pid, 10, ctypes.addressof(info))
"#,
        ))
        .await;
    assert_all_refused(&obs, &[EPERM]);
    // SIGIO with a chosen signal (SIGKILL) to an owner set with F_SETOWN:
    // setting the owner is allowed, the signal must never be delivered.
    let obs = scene
        .attack(
            r#"
import fcntl
owners = {}
for name, pid in (("zygote", 1), ("sibling", @SIB@)):
    r, w = os.pipe()
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
    owners[name] = attempt(fcntl.fcntl, r, fcntl.F_SETOWN, pid)
    fcntl.fcntl(r, 10, 9)  # F_SETSIG = SIGKILL
    os.write(w, b"x")
time.sleep(0.3)
report(**owners)
"#,
        )
        .await;
    assert!(obs.as_object().is_some_and(|m| m.len() == 2), "{obs}");
    scene.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_files_of_other_processes_cannot_be_written() {
    refused_against_both(
        r#"
for f, data in (("oom_score_adj", "1000"), ("comm", "pwned"), ("timerslack_ns", "1"), ("autogroup", "19"), ("loginuid", "1"), ("attr/current", "x"), ("sched", "0")):
    obs["KEY_" + f] = attempt(write, f"/proc/{pid}/{f}", data)
obs["KEY_mem_read"] = attempt(read, f"/proc/{pid}/mem", "rb")
obs["KEY_environ"] = attempt(read, f"/proc/{pid}/environ", "rb")
# Descriptors (the zygote's control socket is its fd 3), working directory
# (a sibling's private scratch) and root of another process.
obs["KEY_fd_list"] = attempt(os.listdir, f"/proc/{pid}/fd")
obs["KEY_fd_open"] = attempt(os.open, f"/proc/{pid}/fd/3", os.O_RDWR)
obs["KEY_cwd"] = attempt(os.listdir, f"/proc/{pid}/cwd")
obs["KEY_root"] = attempt(os.listdir, f"/proc/{pid}/root/tmp")
"#,
        &[libc::EACCES, EPERM, libc::ENOENT, libc::EROFS],
    )
    .await;
}

/// The worker filter narrows calls to the caller itself, which must keep
/// working: pid 0, its own pid, its threads asking with 0, its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_keep_working_on_the_caller_itself() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();
    let code = payload(
        r#"
import threading
me = os.getpid()
seen = {}
def in_thread():
    seen["thread_affinity"] = attempt(lambda: sorted(os.sched_getaffinity(0)))
    seen["thread_priority"] = attempt(os.getpriority, os.PRIO_PROCESS, 0)
t = threading.Thread(target=in_thread); t.start(); t.join()
r, w = os.pipe()
child = os.fork()
if child == 0:
    ok = os.sched_getaffinity(0) and resource.prlimit(0, resource.RLIMIT_NOFILE) and os.getpgid(0)
    os.write(w, b"1" if ok else b"0")
    os._exit(0)
os.waitpid(child, 0)
report(
    prlimit_0=attempt(resource.prlimit, 0, resource.RLIMIT_NOFILE),
    prlimit_own=attempt(resource.prlimit, me, resource.RLIMIT_NOFILE),
    setrlimit=attempt(resource.setrlimit, resource.RLIMIT_CORE, (0, 0)),
    affinity_0=attempt(lambda: sorted(os.sched_getaffinity(0))),
    affinity_own=attempt(lambda: sorted(os.sched_getaffinity(me))),
    set_affinity_own=attempt(os.sched_setaffinity, me, os.sched_getaffinity(0)),
    nice_own=attempt(os.setpriority, os.PRIO_PROCESS, 0, 5),
    nice_pgrp=attempt(os.setpriority, os.PRIO_PGRP, 0, 6),
    getpriority_own=attempt(os.getpriority, os.PRIO_PROCESS, me),
    getparam_own=attempt(lambda: os.sched_getparam(me).sched_priority),
    getscheduler_0=attempt(os.sched_getscheduler, 0),
    getpgid_0=attempt(os.getpgid, 0),
    getsid_own=attempt(os.getsid, me),
    sid_is_own=os.getsid(0) == me and os.getpgid(0) == me,
    child=os.read(r, 1).decode(),
    **seen,
)
"#,
        &[],
    );
    let obs = observed(&task.run_cell(&code).await.expect("cell"));
    for (what, record) in obs.as_object().expect("obs") {
        match what.as_str() {
            "sid_is_own" => assert_eq!(record, &Value::Bool(true), "a worker leads its session"),
            "child" => assert_eq!(record, "1", "a worker's child works on itself"),
            _ => assert_allowed(record, what),
        }
    }
    // numpy and scikit-learn (OpenBLAS, OpenMP query affinity) still work.
    let cell = task
        .run_cell(
            "import numpy as np\nfrom sklearn.linear_model import LinearRegression\nX = np.column_stack([np.arange(10.0), np.arange(10.0) ** 2])\nprint(round(float(LinearRegression().fit(X, X @ [1.0, 2.0]).coef_[1]), 6))",
        )
        .await
        .expect("cell");
    assert_ok(&cell);
    assert_eq!(cell.stdout.trim(), "2.0");
    sb.shutdown().await;
}

/// Per-worker uids: from inside, each worker is a uid of its own, not root;
/// its files in the shared /tmp are not readable by a sibling; from outside,
/// the zygote and two workers are three host uids, none of them the
/// supervisor's or another sandbox's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_runs_as_its_own_uid() {
    let (a, _dir_a) = sandbox().await;
    let (b, _dir_b) = sandbox().await;
    let mut w1 = a.acquire().await.expect("w1");
    let mut w2 = a.acquire().await.expect("w2");
    let wb = b.acquire().await.expect("wb");
    let uid_of = |pid: u32| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .expect("uid")
    };
    let host = [
        uid_of(a.zygote_host_pid().expect("zygote a")),
        uid_of(w1.host_pid),
        uid_of(w2.host_pid),
        uid_of(b.zygote_host_pid().expect("zygote b")),
        uid_of(wb.host_pid),
    ];
    let mut unique = host.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        host.len(),
        "host uids must all differ: {host:?}"
    );
    assert!(host.iter().all(|u| *u != 0 && *u != 65534), "{host:?}");

    let c1 = exec(
        &mut w1,
        &payload(
            r#"
write("/tmp/private-of-w1", "mine")
report(uid=os.getuid(), ids=os.getresuid() + os.getresgid(), caps=[l for l in read("/proc/self/status").splitlines() if l.startswith("Cap")])
"#,
            &[],
        ),
    )
    .await;
    let o1 = observed(&c1);
    let c2 = exec(
        &mut w2,
        &payload(
            r#"
report(uid=os.getuid(), read_sibling_file=attempt(read, "/tmp/private-of-w1"), remove_sibling_file=attempt(os.unlink, "/tmp/private-of-w1"), setuid_back=attempt(os.setresuid, 0, 0, 0), setuid_sibling=attempt(os.setresuid, @U1@, @U1@, @U1@))
"#,
            &[("U1", o1["uid"].to_string())],
        ),
    )
    .await;
    let o2 = observed(&c2);
    assert_ne!(o1["uid"], Value::from(0));
    assert_ne!(o1["uid"], o2["uid"]);
    for cap in o1["caps"].as_array().expect("caps") {
        let line = cap.as_str().unwrap_or_default();
        assert!(
            line.ends_with("0000000000000000"),
            "a worker holds a capability: {line}"
        );
    }
    for what in [
        "read_sibling_file",
        "remove_sibling_file",
        "setuid_back",
        "setuid_sibling",
    ] {
        assert_refused_with(&o2[what], what, &[libc::EACCES, EPERM]);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Single-uid mode (an unprivileged caller; forced here): the workers share
/// a uid, and the seccomp argument filters alone refuse the same attacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_uid_mode_refuses_the_same_attacks() {
    let mut scene = Scene::new(false).await;
    let obs = scene
        .attack(&for_targets(
            r#"
obs["KEY_prlimit_cpu"] = attempt(resource.prlimit, pid, resource.RLIMIT_CPU, (1, 1))
obs["KEY_prlimit_nofile"] = attempt(resource.prlimit, pid, resource.RLIMIT_NOFILE, (3, 3))
obs["KEY_setpriority"] = attempt(os.setpriority, os.PRIO_PROCESS, pid, 17)
obs["KEY_setpriority_pgrp"] = attempt(os.setpriority, os.PRIO_PGRP, pid, 17)
obs["KEY_setaffinity"] = attempt(os.sched_setaffinity, pid, {0})
obs["KEY_kill"] = attempt(os.kill, pid, signal.SIGKILL)
obs["KEY_oom_score_adj"] = attempt(write, f"/proc/{pid}/oom_score_adj", "1000")
obs["KEY_fd_open"] = attempt(os.open, f"/proc/{pid}/fd/3", os.O_RDWR)
obs["KEY_cwd"] = attempt(os.listdir, f"/proc/{pid}/cwd")
obs["KEY_mem"] = attempt(read, f"/proc/{pid}/mem", "rb")
obs["KEY_getaffinity"] = attempt(os.sched_getaffinity, pid)
obs["KEY_getpgid"] = attempt(os.getpgid, pid)
"#,
        ))
        .await;
    assert_all_refused(&obs, &[EPERM, libc::EACCES]);
    let obs = scene
        .attack(r#"report(user=attempt(os.setpriority, os.PRIO_USER, 0, 17), uid=os.getuid())"#)
        .await;
    assert_refused_with(&obs["user"], "PRIO_USER", &[EPERM]);
    assert_eq!(
        obs["uid"],
        Value::from(0),
        "single-uid mode: root of the jail"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    scene.assert_unharmed().await;
}

/// Reproduced: a worker that kept about a thousand descriptors in flight on
/// a socketpair exhausted its host uid's in-flight count, and the zygote of
/// another sandbox (same host uid) died handing over its next worker. Now
/// each sandbox has its own host uid (each worker too); in single-uid mode
/// the zygote's higher RLIMIT_NOFILE keeps its hand-over out of a worker's
/// reach. Either way the other sandbox keeps forking and running cells.
async fn descriptors_in_flight_stay_with_their_owner(worker_uids: bool) {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let start = |uids: bool| {
        let mut opts = options(&csv);
        opts.worker_uids = uids;
        Sandbox::start(opts)
    };
    let a = start(worker_uids).await.expect("sandbox a");
    let b = start(worker_uids).await.expect("sandbox b");
    let mut hog = a.acquire().await.expect("hog");
    let code = payload(
        r#"
import array
held = []
sent = 0
error = None
pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(40)]
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
try:
    for left, right in pairs:
        for _ in range(20):
            left.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds[:200]))])
            sent += 200
except OSError as exc:
    error = exc.errno
HOLD = (pairs, fds)
report(sent=sent, error=error)
"#,
        &[],
    );
    let obs = observed(&exec(&mut hog, &code).await);
    let sent = obs["sent"].as_u64().expect("sent");
    assert!(
        sent >= 1000,
        "the hog put at least a thousand descriptors in flight: {obs}"
    );
    // The other sandbox forks fresh workers (each handed over with
    // SCM_RIGHTS) and runs cells, again and again.
    for _ in 0..5 {
        let mut w = b.acquire().await.expect("sandbox b still forks");
        assert_answers(&mut w).await;
    }
    // The hog's own sandbox too, in per-worker mode (the hog's uid is not
    // the zygote's); in single-uid mode, at least its zygote survives.
    if worker_uids {
        assert_sandbox_healthy(&a).await;
    } else {
        let zygote = a.zygote_host_pid().expect("zygote");
        assert!(host_pid_alive(zygote));
    }
    drop(hog);
    assert_sandbox_healthy(&a).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_in_flight_do_not_starve_another_sandbox() {
    descriptors_in_flight_stay_with_their_owner(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_in_flight_do_not_starve_another_sandbox_single_uid() {
    descriptors_in_flight_stay_with_their_owner(false).await;
}

/// Kernel resources counted per user: a worker exhausts what it can of each
/// (pending real-time signals, descriptors in flight above) or is refused the
/// call (inotify, POSIX message queues, locked memory, user namespaces);
/// a sibling of another uid and the zygote are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_kernel_counts_are_per_worker_or_refused() {
    let mut scene = Scene::new(true).await;
    let obs = scene
        .attack(
            r#"
import mmap
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
info = ctypes.create_string_buffer(128)
ctypes.memmove(info, int(signal.SIGRTMIN).to_bytes(4, "little") + (0).to_bytes(4, "little") + (-1).to_bytes(4, "little", signed=True), 12)
queued = 0
last = None
while queued < 100000:
    r = sys_call(129, os.getpid(), int(signal.SIGRTMIN), ctypes.addressof(info))
    if not r["ok"]:
        last = r
        break
    queued += 1
def locked_map():
    m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x2000)
    m.close()
report(
    queued=queued,
    stopped_by=last,
    sigpending=resource.getrlimit(resource.RLIMIT_SIGPENDING),
    inotify=sys_call(294, 0),
    mq_open=sys_call(240, 0, 0, 0, 0),
    mlock=sys_call(149, 0, 4096),
    mlockall=sys_call(151, 1),
    map_locked=attempt(locked_map),
    userns=sys_call(272, 0x10000000),
)
"#,
        )
        .await;
    assert_eq!(obs["queued"], 4096, "bounded by RLIMIT_SIGPENDING: {obs}");
    assert_refused_with(
        &obs["stopped_by"],
        "one more queued signal",
        &[libc::EAGAIN],
    );
    for what in ["inotify", "mq_open", "mlock", "mlockall", "userns"] {
        assert_refused_with(&obs[what], what, &[EPERM]);
    }
    assert_refused_with(
        &obs["map_locked"],
        "mmap(MAP_LOCKED)",
        &[libc::EAGAIN, EPERM],
    );
    // The sibling (another uid) still queues signals of its own.
    let code = payload(
        r#"
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
info = ctypes.create_string_buffer(128)
ctypes.memmove(info, int(signal.SIGRTMIN).to_bytes(4, "little") + (0).to_bytes(4, "little") + (-1).to_bytes(4, "little", signed=True), 12)
report(one=sys_call(129, os.getpid(), int(signal.SIGRTMIN), ctypes.addressof(info)))
"#,
        &[],
    );
    let sib = observed(&exec(&mut scene.sibling, &code).await);
    assert_allowed(&sib["one"], "a sibling's own queued signal");
    // The attacker's pending signals die with it: replace it with a fresh one.
    scene.attacker = scene.sb.acquire().await.expect("fresh attacker");
    scene.assert_unharmed().await;
}

/// A worker that uses up its process limit (RLIMIT_NPROC counts per uid)
/// does not use up the zygote's: the sandbox still forks workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_at_its_process_limit_leaves_the_zygote_forking() {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let sb = Sandbox::start(options_with(&csv, |l| {
        l.nproc = 12;
        l.pids = 64;
    }))
    .await
    .expect("sandbox starts");
    let mut hog = sb.acquire().await.expect("hog");
    let code = payload(
        r#"
import subprocess
children, error = [], None
while len(children) < 64:
    try:
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]))
    except OSError as exc:
        error = exc.errno
        break
HOLD = children
report(children=len(children), error=error)
"#,
        &[],
    );
    let obs = observed(&exec(&mut hog, &code).await);
    assert_eq!(
        obs["error"],
        libc::EAGAIN,
        "the hog reached its limit: {obs}"
    );
    for _ in 0..3 {
        assert_sandbox_healthy(&sb).await;
    }
    drop(hog);
    sb.shutdown().await;
}
