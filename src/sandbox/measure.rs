//! Measuring the layers of a running sandbox from inside a real worker (what
//! `/proc/self/status`, `/proc/self/mountinfo`, `/proc/net/dev` and a few
//! attempted operations say there) and from outside (namespace identities and
//! the worker's cgroup as the host sees them). `csv-agent doctor` prints this.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::layers::{IsolationReport, Layer, LayerStatus, WorkerIsolation};
use super::{Sandbox, SandboxError};

/// A file every user may read by its mode bits and that no Landlock rule
/// covers: reading it fails only while Landlock is enforced.
pub const LANDLOCK_CANARY: &str = "/landlock-canary";

/// Runs inside a worker and prints one JSON object (after `CANARY = <path>`).
const PROBE: &str = r#"
import json, os, socket, resource
def _status():
    d = {}
    with open('/proc/self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            d[k] = v.strip()
    return d
_st = _status()
_out = {"status": {k: _st.get(k) for k in ["Uid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters", "NSpid"]}}
with open('/proc/self/uid_map') as f:
    _out["uid_map"] = " ".join(f.read().split())
_out["ns"] = {n: os.readlink('/proc/self/ns/' + n) for n in ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup"]}
_out["hostname"] = socket.gethostname()
_out["pids"] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
with open('/proc/net/dev') as f:
    _out["net_devs"] = [l.split(':')[0].strip() for l in f.read().splitlines()[2:]]
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    _out["inet_socket"] = "allowed"
except OSError as e:
    _out["inet_socket"] = os.strerror(e.errno) if e.errno else str(e)
with open('/proc/self/mountinfo') as f:
    _mounts = [l.split() for l in f.read().splitlines()]
_out["root_mount"] = [m for m in _mounts if m[4] == '/'][-1:]
_out["mount_points"] = [m[4] for m in _mounts]
try:
    with open(CANARY) as f:
        f.read()
    _out["landlock_canary"] = "readable"
except OSError as e:
    _out["landlock_canary"] = os.strerror(e.errno) if e.errno else str(e)
try:
    with open('/probe-write', 'w') as f:
        f.write('x')
    _out["root_write"] = "allowed"
except OSError as e:
    _out["root_write"] = os.strerror(e.errno) if e.errno else str(e)
_out["rlimits"] = {n: list(resource.getrlimit(getattr(resource, n))) for n in ["RLIMIT_CORE", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CPU", "RLIMIT_AS"]}
print(json.dumps(_out))
"#;

#[derive(Debug, Deserialize)]
struct Probe {
    status: BTreeMap<String, Option<String>>,
    uid_map: String,
    ns: BTreeMap<String, String>,
    hostname: String,
    pids: Vec<i64>,
    net_devs: Vec<String>,
    inet_socket: String,
    root_mount: Vec<Vec<String>>,
    mount_points: Vec<String>,
    landlock_canary: String,
    root_write: String,
    rlimits: BTreeMap<String, Vec<i64>>,
}

fn host_ns(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// Run the probe in a fresh worker of `sandbox` and judge every layer.
pub async fn measure(sandbox: &Sandbox) -> Result<IsolationReport, SandboxError> {
    let mut worker = sandbox.acquire().await?;
    let probe_code = format!("CANARY = {:?}\n{PROBE}", sandbox.landlock_canary());
    let cell = worker.exec(&probe_code).await?;
    let text = cell.stdout.trim().to_string();
    let probe: Probe = serde_json::from_str(&text).map_err(|e| SandboxError::Worker {
        worker_id: worker.id,
        detail: format!(
            "the isolation probe failed ({e}): {} {:?}",
            text, cell.error
        ),
    })?;
    let worker_pid = worker.host_pid.to_string();
    let mut report = IsolationReport::default();

    // Namespaces: inside and outside must agree on the worker's namespace and
    // it must differ from the supervisor's.
    let names = [
        ("user", "user_namespace"),
        ("pid", "pid_namespace"),
        ("mnt", "mount_namespace"),
        ("net", "network_namespace"),
        ("ipc", "ipc_namespace"),
        ("uts", "uts_namespace"),
        ("cgroup", "cgroup_namespace"),
    ];
    for (ns, layer) in names {
        let inside = probe.ns.get(ns).cloned().unwrap_or_default();
        let outside = host_ns(&worker_pid, ns);
        let ours = host_ns("self", ns);
        let separate = !inside.is_empty() && inside == outside && inside != ours;
        let extra = match ns {
            "user" => {
                let root_is_host_root = probe.uid_map.starts_with("0 0 ");
                if root_is_host_root {
                    report.set(Layer::unavailable(
                        layer,
                        format!("jail root maps to host root ({})", probe.uid_map),
                    ));
                    continue;
                }
                format!("uid_map {}", probe.uid_map)
            }
            "pid" => format!(
                "{} processes visible, NSpid {}",
                probe.pids.len(),
                probe
                    .status
                    .get("NSpid")
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
            ),
            "net" => {
                if probe.net_devs.iter().any(|d| d != "lo") {
                    report.set(Layer::unavailable(
                        layer,
                        format!("interfaces besides lo: {:?}", probe.net_devs),
                    ));
                    continue;
                }
                format!(
                    "interfaces {:?}; AF_INET socket: {}",
                    probe.net_devs, probe.inet_socket
                )
            }
            "uts" => format!("hostname {}", probe.hostname),
            _ => String::new(),
        };
        let detail = format!(
            "{inside} (supervisor {ours}){}",
            if extra.is_empty() {
                String::new()
            } else {
                format!("; {extra}")
            }
        );
        report.set(Layer::new(
            layer,
            if separate {
                LayerStatus::Active
            } else {
                LayerStatus::Unavailable
            },
            detail,
        ));
    }

    // Filesystem: a read-only tmpfs root with nothing writable at /.
    let root = probe.root_mount.first().cloned().unwrap_or_default();
    let root_fs = root
        .iter()
        .skip_while(|f| *f != "-")
        .nth(1)
        .cloned()
        .unwrap_or_default();
    let root_ro = root
        .get(5)
        .map(|o| o.split(',').any(|x| x == "ro"))
        .unwrap_or(false);
    let fs_ok = root_fs == "tmpfs" && root_ro && probe.root_write != "allowed";
    report.set(Layer::new(
        "filesystem",
        if fs_ok {
            LayerStatus::Active
        } else {
            LayerStatus::Unavailable
        },
        format!(
            "root {root_fs} {}; write to / : {}; {} mounts ({})",
            if root_ro { "read-only" } else { "WRITABLE" },
            probe.root_write,
            probe.mount_points.len(),
            probe.mount_points.join(" ")
        ),
    ));

    // Landlock: the canary must be refused, and the worker's own scope applied.
    let init_landlock = sandbox.report().get("landlock").cloned();
    let canary_denied = probe.landlock_canary != "readable";
    let landlock_ok = canary_denied
        && worker.scope.applied
        && init_landlock
            .as_ref()
            .map(|l| l.status == LayerStatus::Active)
            .unwrap_or(false);
    report.set(Layer::new(
        "landlock",
        if landlock_ok {
            LayerStatus::Active
        } else {
            LayerStatus::Unavailable
        },
        format!(
            "{}; canary read: {}; per-worker scope: {}",
            init_landlock.map(|l| l.detail).unwrap_or_default(),
            probe.landlock_canary,
            if worker.scope.applied {
                "applied".to_string()
            } else {
                format!(
                    "not applied ({})",
                    worker.scope.error.clone().unwrap_or_default()
                )
            }
        ),
    ));

    // Capabilities: every set empty.
    let cap_sets = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];
    let caps_text: Vec<String> = cap_sets
        .iter()
        .map(|k| {
            format!(
                "{k} {}",
                probe
                    .status
                    .get(*k)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "?".into())
            )
        })
        .collect();
    let caps_ok = cap_sets.iter().all(|k| {
        probe
            .status
            .get(*k)
            .cloned()
            .flatten()
            .map(|v| v.trim_start_matches('0').is_empty())
            .unwrap_or(false)
    });
    report.set(Layer::new(
        "capabilities",
        if caps_ok {
            LayerStatus::Active
        } else {
            LayerStatus::Unavailable
        },
        caps_text.join(", "),
    ));

    let nnp = probe
        .status
        .get("NoNewPrivs")
        .cloned()
        .flatten()
        .unwrap_or_default();
    report.set(Layer::new(
        "no_new_privs",
        if nnp == "1" {
            LayerStatus::Active
        } else {
            LayerStatus::Unavailable
        },
        format!("NoNewPrivs {nnp}"),
    ));

    let mode = probe
        .status
        .get("Seccomp")
        .cloned()
        .flatten()
        .unwrap_or_default();
    let filters = probe
        .status
        .get("Seccomp_filters")
        .cloned()
        .flatten()
        .unwrap_or_default();
    let seccomp_ok = mode == "2" && probe.inet_socket != "allowed";
    report.set(Layer::new(
        "seccomp",
        if seccomp_ok { LayerStatus::Active } else { LayerStatus::Unavailable },
        format!(
            "Seccomp {mode} (filter mode), {filters} filters; {} allowed system calls; AF_INET socket: {}",
            super::seccomp::allowed_syscall_count(),
            probe.inet_socket
        ),
    ));

    // cgroups, from outside: the worker sits in its own group with our limits.
    let setup = sandbox.report().get("cgroup_limits").cloned();
    let cgroup_line =
        std::fs::read_to_string(format!("/proc/{worker_pid}/cgroup")).unwrap_or_default();
    let in_worker_group = cgroup_line.contains(&format!("/{}/worker-{}", sandbox.id(), worker.id));
    match setup {
        Some(l) if l.status == LayerStatus::Active && in_worker_group => report.set(Layer::active(
            "cgroup_limits",
            format!(
                "{}; worker in csv-agent/{}/worker-{}",
                l.detail,
                sandbox.id(),
                worker.id
            ),
        )),
        Some(l) if l.status == LayerStatus::Active => report.set(Layer::unavailable(
            "cgroup_limits",
            format!("the worker is not in its group: {}", cgroup_line.trim()),
        )),
        Some(l) => report.set(l),
        None => report.set(Layer::unavailable("cgroup_limits", "not set up")),
    }

    let lim = |n: &str| probe.rlimits.get(n).cloned().unwrap_or_default();
    let core = lim("RLIMIT_CORE");
    let fsize = lim("RLIMIT_FSIZE");
    let nproc = lim("RLIMIT_NPROC");
    let limits = sandbox.limits();
    let rl_ok = core == vec![0, 0]
        && fsize.first().copied() == i64::try_from(limits.fsize_bytes).ok()
        && nproc.first().copied() == i64::try_from(limits.nproc).ok();
    report.set(Layer::new(
        "rlimits",
        if rl_ok {
            LayerStatus::Active
        } else {
            LayerStatus::Unavailable
        },
        format!(
            "core {:?}, fsize {:?}, nofile {:?}, nproc {:?}, cpu {:?}, as {:?}",
            core,
            fsize,
            lim("RLIMIT_NOFILE"),
            nproc,
            lim("RLIMIT_CPU"),
            lim("RLIMIT_AS")
        ),
    ));
    report.worker_isolation = measure_worker_isolation(sandbox, &worker).await;
    report.normalize();
    Ok(report)
}

/// The host uid of a process (the real uid of `/proc/<pid>/status`).
fn host_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Confirm the worker-isolation mode from outside: in per-worker uid mode,
/// this worker, a second live one and the zygote run as three different
/// host uids.
async fn measure_worker_isolation(
    sandbox: &Sandbox,
    worker: &super::Worker,
) -> Option<WorkerIsolation> {
    let configured = sandbox.report().worker_isolation.clone()?;
    if configured.mode != WorkerIsolation::PER_WORKER_UID {
        return Some(configured);
    }
    let second = sandbox.acquire().await.ok();
    let zygote = sandbox.zygote_host_pid().and_then(host_uid);
    let first = host_uid(worker.host_pid);
    let other = second.as_ref().and_then(|w| host_uid(w.host_pid));
    let measured = format!(
        "measured: zygote host uid {}, two live workers host uids {} and {}",
        zygote.map(|u| u.to_string()).unwrap_or("?".into()),
        first.map(|u| u.to_string()).unwrap_or("?".into()),
        other.map(|u| u.to_string()).unwrap_or("?".into()),
    );
    let distinct =
        matches!((zygote, first, other), (Some(z), Some(a), Some(b)) if z != a && z != b && a != b);
    Some(if distinct {
        WorkerIsolation::per_worker_uid(format!("{}; {measured}", configured.detail))
    } else {
        WorkerIsolation::single_uid(format!(
            "per-worker uids were configured but not confirmed; {measured}"
        ))
    })
}
