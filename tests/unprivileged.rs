//! Restricted hosts: the jail run by an unprivileged user (uid 65534, through
//! `setpriv`) with unprivileged user namespaces and no delegated cgroup. The
//! tool must say that `cgroup_limits` is unavailable, refuse to run code
//! without `--allow-degraded`, and with it run the core cases with every other
//! layer holding and the rlimit fallback in place.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;
use csv_agent::sandbox::image;

/// A world-readable copy of the image (hard links where possible) and a
/// dataset, in a directory uid 65534 can reach.
struct Setup {
    bin: PathBuf,
    image: PathBuf,
    csv: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let built = image();
        // Everything uid 65534 needs (the binary, the image, the dataset) is
        // copied to a directory it can reach wherever the checkout lives (a
        // clone under /root is not traversable for it). Not under /tmp: the
        // jail has its own /tmp, and the tests look at paths of this folder
        // from inside. Not a TempDir: a static is never dropped; recreated on
        // each run instead.
        let base = if Path::new("/var/tmp").is_dir() {
            PathBuf::from("/var/tmp")
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        };
        let dir = base.join("csv-agent-unprivileged-tests");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the shared dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = dir.join("csv-agent");
        std::fs::copy(BIN, &bin).expect("copy the binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let copy = dir.join("image");
        let linked = Command::new("cp")
            .arg("-al")
            .arg(&built.root)
            .arg(&copy)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !linked {
            let _ = std::fs::remove_dir_all(&copy);
            let ok = Command::new("cp")
                .arg("-a")
                .arg(&built.root)
                .arg(&copy)
                .status()
                .expect("cp -a");
            assert!(ok.success(), "copying the image failed");
        }
        image::relocate(&copy, &built.root, &copy).expect("relocate the image copy");
        let csv = dir.join("penguins.csv");
        std::fs::copy(penguins(), &csv).expect("copy csv");
        std::fs::set_permissions(&csv, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        Setup {
            image: copy,
            csv,
            bin,
        }
    })
}

/// Run the real binary as uid/gid 65534 with an empty environment.
fn as_nobody(args: &[&str]) -> Output {
    let s = setup();
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            "-i",
        ])
        .arg("PATH=/usr/bin:/bin")
        .arg(format!("CSV_AGENT_IMAGE={}", s.image.display()))
        .arg(&s.bin)
        .args(args)
        .output()
        .expect("setpriv runs")
}

fn exec_json(cells: &[&str], extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let s = setup();
    let csv = s.csv.display().to_string();
    let mut args = vec![
        "sandbox",
        "exec",
        "--csv",
        csv.as_str(),
        "--json",
        "--allow-degraded",
    ];
    args.extend_from_slice(extra);
    for c in cells {
        args.push("--code");
        args.push(c);
    }
    let out = as_nobody(&args);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

#[test]
fn doctor_as_nobody_reports_cgroups_unavailable_and_everything_else_active() {
    let out = as_nobody(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for layer in v["layers"].as_array().expect("layers") {
        if layer["name"] == "cgroup_limits" {
            assert_eq!(layer["status"], "unavailable", "{layer}");
            let detail = layer["detail"].as_str().unwrap_or("");
            assert!(detail.contains("fallback"), "{detail}");
            assert!(detail.contains("65534"), "{detail}");
        } else {
            assert_eq!(layer["status"], "active", "{layer}");
        }
    }
    // An unprivileged caller may map only its own uid: the workers share it.
    assert_eq!(v["worker_isolation"]["mode"], "single_uid", "{v}");
    let detail = v["worker_isolation"]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("65534") && detail.contains("seccomp"),
        "{detail}"
    );
}

#[test]
fn without_allow_degraded_nobody_is_refused_with_the_reason() {
    let s = setup();
    let csv = s.csv.display().to_string();
    let out = as_nobody(&["sandbox", "exec", "--csv", &csv, "--code", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cgroup_limits"), "{err}");
    assert!(err.contains("--allow-degraded"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn with_allow_degraded_nobody_runs_pandas_and_is_told_what_is_missing() {
    let (code, cells, err) = exec_json(
        &[
            "df.groupby('species').size().to_dict()",
            "open('/proc/self/uid_map').read().split()",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        cells[0]["result"],
        "{'Adelie': 152, 'Chinstrap': 68, 'Gentoo': 124}"
    );
    assert_eq!(cells[1]["result"], "['0', '65534', '1']");
    assert!(err.contains("cgroup_limits"), "{err}");
}

#[test]
fn nobody_jail_keeps_seccomp_nnp_caps_and_landlock() {
    let (code, cells, err) = exec_json(
        &[r#"
st = dict(l.split(':', 1) for l in open('/proc/self/status'))
print(st['Seccomp'].strip(), st['NoNewPrivs'].strip(), st['CapEff'].strip(), st['CapBnd'].strip())
try:
    open('/landlock-canary').read()
    print('canary readable')
except PermissionError:
    print('canary denied')
"#],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        cells[0]["stdout"],
        "2 1 0000000000000000 0000000000000000\ncanary denied\n"
    );
}

#[test]
fn nobody_cannot_read_host_files() {
    let s = setup();
    let secret = format!("secret-{}", std::process::id());
    let planted = dir_of(&s.csv).join("planted.txt");
    std::fs::write(&planted, &secret).expect("plant");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let code = format!(
        r#"
import os
for p in [{planted:?}, '/etc/shadow', '/root/.bashrc', {manifest:?}]:
    print(p, os.path.exists(p))
"#,
        planted = planted.display().to_string(),
        manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    );
    let (status, cells, err) = exec_json(&[&code], &[]);
    assert_eq!(status, Some(0), "{err}");
    let out = cells[0]["stdout"].as_str().unwrap_or("");
    assert_eq!(out.matches(" False").count(), 4, "{out}");
    assert!(!out.contains(&secret) && !err.contains(&secret));
}

#[test]
fn nobody_cannot_write_outside_tmp() {
    let s = setup();
    let target = dir_of(&s.csv).join("escaped.txt");
    let code = format!(
        r#"
import os
res = []
for p in ['/escaped', '/data/escaped', {target:?}, {image:?} + '/escaped']:
    try:
        open(p, 'w').write('x')
        res.append('written')
    except OSError as e:
        res.append(type(e).__name__)
open('/tmp/ok', 'w').write('fine')
print(res, open('/tmp/ok').read())
"#,
        target = target.display().to_string(),
        image = s.image.display().to_string(),
    );
    let (status, cells, err) = exec_json(&[&code], &[]);
    assert_eq!(status, Some(0), "{err}");
    let out = cells[0]["stdout"].as_str().unwrap_or("");
    assert!(!out.contains("written"), "{out}");
    assert!(out.ends_with("fine\n"), "{out}");
    assert!(!target.exists());
    assert!(!s.image.join("escaped").exists());
}

#[test]
fn nobody_has_no_network() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let code = format!(
        r#"
import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2)
    print('connected')
except OSError as e:
    print('refused', e.errno)
"#
    );
    let (status, cells, err) = exec_json(&[&code], &[]);
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(cells[0]["stdout"], "refused 1\n");
    assert!(
        listener.accept().is_err(),
        "the host listener saw a connection"
    );
}

#[test]
fn nobody_worker_cannot_kill_the_zygote_or_unshare() {
    let (status, cells, err) = exec_json(
        &[
            r#"
import os, ctypes
try:
    os.kill(1, 9)
    print('killed')
except PermissionError:
    print('kill denied')
libc = ctypes.CDLL(None, use_errno=True)
r = libc.unshare(0x10000000)
print(r, ctypes.get_errno())
"#,
            // The zygote's limits, nice value and CPUs: refused by the
            // worker's own seccomp filter (one uid for all here).
            r#"
import os, resource
out = []
for attack in (
    lambda: resource.prlimit(1, resource.RLIMIT_CPU, (1, 1)),
    lambda: resource.prlimit(1, resource.RLIMIT_NOFILE, (3, 3)),
    lambda: os.setpriority(os.PRIO_PROCESS, 1, 17),
    lambda: os.setpriority(os.PRIO_USER, 0, 17),
    lambda: os.sched_setaffinity(1, {0}),
):
    try:
        attack()
        out.append("done")
    except PermissionError:
        out.append("denied")
print(" ".join(out))
"#,
            "import time; time.sleep(1.5); len(df)",
        ],
        &[],
    );
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(cells[0]["stdout"], "kill denied\n-1 1\n");
    assert_eq!(cells[1]["stdout"], "denied denied denied denied denied\n");
    assert_eq!(cells[2]["result"], "344");
}

#[test]
fn nobody_memory_bomb_hits_the_rlimit_fallback_and_the_task_goes_on() {
    let (status, cells, err) = exec_json(
        &["import numpy as np\nblob = np.ones(200_000_000)", "1 + 1"],
        &["--memory", "256M"],
    );
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(cells[0]["status"], "error");
    assert_eq!(cells[0]["error"]["type"], "MemoryError", "{}", cells[0]);
    assert_eq!(cells[1]["result"], "2");
}

#[test]
fn nobody_fork_bomb_is_contained_and_the_sandbox_recovers() {
    let (status, cells, err) = exec_json(
        &[
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            "len(df)",
        ],
        &["--timeout", "5"],
    );
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(cells[0]["status"], "timeout", "{}", cells[0]);
    assert_eq!(cells[1]["result"], "344");
}

/// Run the binary as uid 65534 inside a user namespace whose
/// `user.max_user_namespaces` is 0: a host where the jail cannot create its
/// user namespace (the sysctl is per user namespace, so the host is untouched).
fn as_nobody_without_user_namespaces(args: &[&str]) -> Output {
    let s = setup();
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "--user", "--map-root-user", "sh", "-c"])
        .arg("echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"")
        .args(["sh", "env", "-i", "PATH=/usr/bin:/bin"])
        .arg(format!("CSV_AGENT_IMAGE={}", s.image.display()))
        .arg(&s.bin)
        .args(args)
        .output()
        .expect("setpriv + unshare run")
}

#[test]
fn without_user_namespaces_code_is_refused_unless_degraded_is_allowed() {
    let s = setup();
    let csv = s.csv.display().to_string();
    let out = as_nobody_without_user_namespaces(&["sandbox", "exec", "--csv", &csv, "--code", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("user_namespace"), "{err}");
    assert!(err.contains("max_user_namespaces is 0"), "{err}");
    assert!(err.contains("--allow-degraded"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn without_user_namespaces_degraded_mode_still_confines_with_landlock_and_seccomp() {
    let s = setup();
    let csv = s.csv.display().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    // A host unix socket anyone may connect to: reachable by path here, since
    // there is no mount namespace; seccomp must refuse the connect.
    let sock_path = dir_of(&s.csv).join(format!("host-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock_path);
    let unix = std::os::unix::net::UnixListener::bind(&sock_path).expect("bind unix");
    unix.set_nonblocking(true).expect("nonblocking");
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let code = format!(
        r#"
import os, socket
out = [len(df)]
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect({sock:?})
    out.append('unix connected')
except OSError as e:
    out.append(e.errno)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    out.append('dgram')
except OSError as e:
    out.append(e.errno)
for p in ['/etc/passwd', {manifest:?}, {image_ready:?}]:
    try:
        open(p).read()
        out.append('read')
    except OSError as e:
        out.append(type(e).__name__)
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2)
    out.append('connected')
except OSError as e:
    out.append(e.errno)
try:
    os.kill(1, 0)
    out.append('signalled init')
except OSError as e:
    out.append(type(e).__name__)
open(os.path.join(os.environ['TMPDIR'], 'scratch'), 'w').write('ok')
print(out)
"#,
        manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        image_ready = s.image.join("ready.json").display().to_string(),
        sock = sock_path.display().to_string(),
    );
    let out = as_nobody_without_user_namespaces(&[
        "sandbox",
        "exec",
        "--csv",
        &csv,
        "--json",
        "--allow-degraded",
        "--code",
        &code,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("user_namespace, pid_namespace"), "{err}");
    assert!(err.contains("filesystem unavailable"), "{err}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one json line");
    // Readable by unix permissions, refused by Landlock; the image may be read
    // (it is where Python lives); no network; no signal outside the domain.
    assert_eq!(
        line["stdout"],
        "[344, 1, 1, 'PermissionError', 'PermissionError', 'read', 1, 'PermissionError']\n",
        "{line}"
    );
    assert!(
        listener.accept().is_err(),
        "the host listener saw a connection"
    );
    assert!(
        unix.accept().is_err(),
        "the host unix socket saw a connection"
    );
    let _ = std::fs::remove_file(&sock_path);
}

#[test]
fn without_user_namespaces_doctor_says_which_layers_hold() {
    let out = as_nobody_without_user_namespaces(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let status = |name: &str| {
        v["layers"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == name))
            .map(|x| x["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    for name in [
        "user_namespace",
        "pid_namespace",
        "mount_namespace",
        "network_namespace",
        "filesystem",
        "cgroup_limits",
    ] {
        assert_eq!(status(name), "unavailable", "{name}: {v}");
    }
    for name in [
        "landlock",
        "capabilities",
        "no_new_privs",
        "seccomp",
        "rlimits",
    ] {
        assert_eq!(status(name), "active", "{name}: {v}");
    }
}

/// A user of its own with a subordinate uid and gid range (`/etc/subuid`,
/// `/etc/subgid`), made once on this machine; `newuidmap`/`newgidmap` come
/// from Debian's `uidmap` (installed by `.ci/run`).
fn subordinate_user() -> (u32, u32) {
    const NAME: &str = "csvagent-sub";
    if csv_agent::sandbox::uids::find_helper("newuidmap").is_none() {
        // The test needs Debian's set-uid helpers; install them as root.
        let ok = Command::new("sh")
            .args([
                "-c",
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q uidmap",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "installing Debian's uidmap (newuidmap, newgidmap) failed"
        );
    }
    let lookup = || {
        let id = |flag: &str| {
            Command::new("id")
                .args([flag, NAME])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<u32>()
                        .ok()
                })
        };
        Some((id("-u")?, id("-g")?))
    };
    if lookup().is_none() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .status()
            .expect("useradd runs");
        assert!(
            made.success() || lookup().is_some(),
            "useradd {NAME} failed"
        );
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{NAME}:"))) {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(file)
                .expect("open the subordinate id file");
            use std::io::Write;
            writeln!(f, "{NAME}:1400000000:65536").expect("append a range");
        }
    }
    lookup().expect("the user exists")
}

/// Unprivileged, but with a subordinate range: each worker gets its own uid
/// from the range (through newuidmap/newgidmap), so the kernel separates the
/// workers from the zygote and from each other, as for a root supervisor.
#[test]
fn a_subordinate_range_gives_each_worker_its_own_uid() {
    let (uid, gid) = subordinate_user();
    let s = setup();
    let run = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
            ])
            .arg(format!("CSV_AGENT_IMAGE={}", s.image.display()))
            .arg(&s.bin)
            .args(args)
            .output()
            .expect("setpriv runs")
    };
    let out = run(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["worker_isolation"]["mode"], "per_worker_uid", "{v}");
    let detail = v["worker_isolation"]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("newuidmap") && detail.contains(&format!("host uid {uid}")),
        "{detail}"
    );
    // Two workers and the zygote: three host uids, the workers' in the range.
    let hosts: Vec<u64> = detail
        .rsplit("measured:")
        .next()
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(hosts.len(), 3, "{detail}");
    assert_eq!(hosts[0], u64::from(uid), "{detail}");
    let (start, count) = std::fs::read_to_string("/etc/subuid")
        .expect("/etc/subuid")
        .lines()
        .find_map(|l| {
            let mut f = l.strip_prefix("csvagent-sub:")?.split(':');
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .expect("the range");
    for worker in &hosts[1..] {
        assert!((start..start + count).contains(worker), "{detail}");
    }
    assert_ne!(hosts[1], hosts[2], "{detail}");

    let csv = s.csv.display().to_string();
    let out = run(&[
        "sandbox",
        "exec",
        "--csv",
        &csv,
        "--allow-degraded",
        "--json",
        "--code",
        r#"
import os, resource
out = [os.getuid() != 0]
for attack in (
    lambda: resource.prlimit(1, resource.RLIMIT_CPU, (1, 1)),
    lambda: os.setpriority(os.PRIO_PROCESS, 1, 17),
    lambda: os.kill(1, 9),
    lambda: os.setresuid(0, 0, 0),
):
    try:
        attack()
        out.append("done")
    except PermissionError:
        out.append("denied")
print(out)
"#,
        "--code",
        "import time; time.sleep(1.5); len(df)",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cells: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        cells[0]["stdout"],
        "[True, 'denied', 'denied', 'denied', 'denied']\n"
    );
    assert_eq!(cells[1]["result"], "344");
}
