//! The security suite: one attack per test, each in its own jail (its own
//! [`Sandbox`]), each checked from the INSIDE (what the payload itself
//! observed, printed as JSON or asserted in Python) and from the OUTSIDE (what
//! the host sees: the secret never shows in any output, host files unchanged,
//! listeners got nothing, the zygote and sibling workers live on).
//!
//! System call numbers are the x86_64 ones.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::attack::*;
use common::*;
use csv_agent::sandbox::{CellResult, CellStatus, Sandbox};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// A Python string literal holding `text`.
fn lit(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Everything a cell sent back, as one string.
fn everything(cell: &CellResult) -> String {
    serde_json::to_string(cell).expect("a cell serializes")
}

fn assert_secret_absent(cell: &CellResult, secret: &str) {
    let all = everything(cell);
    assert!(
        !all.contains(secret),
        "THE SECRET LEAKED into the cell's output: {cell:#?}"
    );
}

/// Denied by a read-only mount, Landlock, DAC, seccomp, or simply absent.
const DENIED: &[i32] = &[libc::EACCES, libc::EPERM, libc::EROFS, libc::ENOENT];

async fn run(task: &mut csv_agent::sandbox::Task, code: &str) -> CellResult {
    task.run_cell(code).await.expect("the cell runs")
}

/// A nonblocking accept/recv on a host socket must find nothing waiting.
fn assert_nothing_arrived<T: std::fmt::Debug>(result: std::io::Result<T>, what: &str) {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("{what}: {other:?}"),
    }
}

/// A field of `/proc/<pid>/status` on the host.
fn host_status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// Size, mode, mtime and bytes of a host file (None when it does not exist).
fn fingerprint(path: &Path) -> Option<(u64, u32, i64, i64, Vec<u8>)> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some((
        meta.len(),
        meta.mode(),
        meta.mtime(),
        meta.mtime_nsec(),
        bytes,
    ))
}

/// A secret in a world-readable file in a fresh host directory.
fn plant_secret(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = random_secret();
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write the secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    (path, secret)
}

/// Removes a planted host path when the test ends, even on failure.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of the libc mapped in a `/proc/<pid>/maps` text.
fn mapped_libc(maps: &str) -> PathBuf {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(PathBuf::from)
        .expect("libc is mapped")
}

fn host_path_absent(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} appeared on the host",
        path.display()
    );
}

// ============================================================ host files

// Attack: read a world-readable secret file the host keeps in a temp dir, by
// its path and through /proc/*/root and `..` tricks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_secret_file_is_unreadable() {
    let host = world_readable_dir();
    let (path, secret) = plant_secret(host.path(), "secret.txt");
    let before = fingerprint(&path);
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
path = @PATH@
report(
    exists=os.path.exists(path),
    parent_exists=os.path.exists(os.path.dirname(path)),
    read=attempt(read, path),
    via_proc_self_root=attempt(read, "/proc/self/root" + path),
    via_proc_1_root=attempt(read, "/proc/1/root" + path),
    via_dotdot=attempt(read, "/data/../../../../.." + path),
    via_cwd=attempt(read, "/proc/self/cwd/../../../.." + path),
    tmp=attempt(os.listdir, "/tmp"),
)
"#,
        &[("PATH", lit(&path.display().to_string()))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(obs["exists"], false, "{obs}");
    assert_eq!(obs["parent_exists"], false, "{obs}");
    for probe in [
        "read",
        "via_proc_self_root",
        "via_proc_1_root",
        "via_dotdot",
        "via_cwd",
    ] {
        assert_refused(&obs[probe], probe);
    }
    assert_eq!(
        obs["tmp"]["value"],
        serde_json::json!([]),
        "the jail's /tmp is its own: {obs}"
    );

    // outside
    assert_secret_absent(&cell, &secret);
    assert_eq!(fingerprint(&path), before, "the host file changed");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: read a secret in a private (0700) directory under the host user's
// home, the kind of place the image cache itself lives in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_private_home_directory_is_unreadable() {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let private = tempfile::Builder::new()
        .prefix(".csv-agent-security-")
        .tempdir_in(&home)
        .expect("a private dir in HOME");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    // World-readable file: only the jail's mounts, not DAC, may protect it.
    let (path, secret) = plant_secret(private.path(), "credentials");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
path = @PATH@
home = os.path.dirname(os.path.dirname(path))
report(
    exists=os.path.exists(path),
    dir_exists=os.path.exists(os.path.dirname(path)),
    read=attempt(read, path),
    list_home=attempt(os.listdir, home),
    via_proc_1_root=attempt(read, "/proc/1/root" + path),
)
"#,
        &[("PATH", lit(&path.display().to_string()))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(obs["exists"], false, "{obs}");
    assert_eq!(obs["dir_exists"], false, "{obs}");
    assert_refused(&obs["read"], "read");
    assert_refused(&obs["via_proc_1_root"], "via /proc/1/root");
    if obs["list_home"]["ok"] == true {
        let name = private
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let listing = obs["list_home"]["value"].to_string();
        assert!(!listing.contains(&name), "the private dir is listed: {obs}");
    }

    // outside
    assert_secret_absent(&cell, &secret);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: the image is bind-mounted from the host cache; read a secret placed
// right beside it (same parent directory), hoping the whole cache is exposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_beside_the_image_are_invisible() {
    let image = image();
    let images_dir = image
        .root
        .parent()
        .expect("the image has a parent")
        .to_path_buf();
    let secret = random_secret();
    let path = images_dir.join(format!("security-test-{}.secret", &secret[7..19]));
    std::fs::write(&path, format!("{secret}\n")).expect("plant beside the image");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let _cleanup = Cleanup(path.clone());
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
path = @PATH@
image = @IMAGE@
report(
    image_exists=os.path.isdir(image),
    exists=os.path.exists(path),
    read=attempt(read, path),
    via_dotdot=attempt(read, image + "/../" + os.path.basename(path)),
    list_parent=attempt(os.listdir, os.path.dirname(image)),
)
"#,
        &[
            ("PATH", lit(&path.display().to_string())),
            ("IMAGE", lit(&image.root.display().to_string())),
        ],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(
        obs["image_exists"], true,
        "the image is mounted where it lives: {obs}"
    );
    assert_eq!(obs["exists"], false, "{obs}");
    assert_refused(&obs["read"], "read");
    assert_refused(&obs["via_dotdot"], "image/..");
    if obs["list_parent"]["ok"] == true {
        assert!(
            !obs["list_parent"].to_string().contains("security-test-"),
            "{obs}"
        );
    }

    // outside
    assert_secret_absent(&cell, &secret);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: the dataset's host directory holds other files; the jail binds the
// CSV alone, so its neighbours must not show up under /data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_next_to_the_dataset_are_invisible() {
    let (sb, dir) = sandbox().await;
    let (path, secret) = plant_secret(dir.path(), "neighbour-secret.txt");
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
report(
    data=attempt(os.listdir, "/data"),
    neighbour=attempt(read, "/data/neighbour-secret.txt"),
    host_path=attempt(read, @PATH@),
    csv=attempt(read, "/data/data.csv"),
)
"#,
        &[("PATH", lit(&path.display().to_string()))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_refused(&obs["neighbour"], "neighbour");
    assert_refused(&obs["host_path"], "host path");
    assert_eq!(
        obs["csv"]["ok"], true,
        "the dataset itself is readable: {obs}"
    );
    if obs["data"]["ok"] == true {
        assert_eq!(
            obs["data"]["value"],
            serde_json::json!(["data.csv"]),
            "{obs}"
        );
    }

    // outside
    assert_secret_absent(&cell, &secret);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: read the host's account databases (/etc/shadow, /etc/passwd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_shadow_and_passwd_are_unreadable() {
    let host_passwd = std::fs::read_to_string("/etc/passwd").expect("host /etc/passwd");
    let host_lines: Vec<&str> = host_passwd
        .lines()
        .filter(|l| !l.starts_with("root:"))
        .collect();
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
report(
    shadow=attempt(read, "/etc/shadow"),
    gshadow=attempt(read, "/etc/gshadow"),
    sudoers=attempt(read, "/etc/sudoers"),
    passwd=attempt(read, "/etc/passwd"),
    etc=attempt(os.listdir, "/etc"),
    host_etc_via_proc=attempt(read, "/proc/1/root/etc/shadow"),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in ["shadow", "gshadow", "sudoers", "host_etc_via_proc"] {
        assert_refused(&obs[probe], probe);
    }
    let passwd = obs["passwd"]["value"]
        .as_str()
        .expect("the jail has a passwd");
    assert_eq!(
        passwd, "root:x:0:0:csv-agent jail:/tmp:/nonexistent\n",
        "{obs}"
    );
    let mut etc: Vec<String> =
        serde_json::from_value(obs["etc"]["value"].clone()).unwrap_or_default();
    etc.sort();
    assert!(
        etc.iter()
            .all(|f| ["group", "hosts", "ld.so.cache", "passwd"].contains(&f.as_str())),
        "unexpected files in the jail's /etc: {etc:?}"
    );

    // outside
    let all = everything(&cell);
    for line in &host_lines {
        assert!(!all.contains(line), "a host passwd line leaked: {line}");
    }
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: read root's dotfiles and credentials on the host (/root/.bashrc, ssh
// keys, cargo and npm tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_home_dotfiles_are_unreadable() {
    let bashrc = std::fs::read_to_string("/root/.bashrc").unwrap_or_default();
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
paths = ["/root/.bashrc", "/root/.profile", "/root/.ssh/id_rsa", "/root/.ssh/authorized_keys",
         "/root/.cargo/credentials.toml", "/root/.npmrc", "/root/.gitconfig", "/root/.bash_history"]
report(
    reads={p: attempt(read, p) for p in paths},
    exists={p: os.path.exists(p) for p in paths},
    list_root=attempt(os.listdir, "/root"),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for (path, probe) in obs["reads"].as_object().expect("reads") {
        assert_refused(probe, path);
        assert_eq!(obs["exists"][path], false, "{path} exists in the jail");
    }
    if obs["list_root"]["ok"] == true {
        assert_eq!(
            obs["list_root"]["value"],
            serde_json::json!([".cache"]),
            "{obs}"
        );
    }

    // outside
    let all = everything(&cell);
    for line in bashrc.lines().filter(|l| l.trim().len() > 12) {
        assert!(
            !all.contains(line.trim()),
            "a line of the host .bashrc leaked: {line}"
        );
    }
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: read the project tree (sources, build output with the test binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_tree_is_invisible() {
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo_toml = std::fs::read_to_string(project.join("Cargo.toml")).expect("Cargo.toml");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
project = @PROJECT@
paths = [project, project + "/Cargo.toml", project + "/src/sandbox/mod.rs", project + "/target", @BIN@]
report(
    exists={p: os.path.exists(p) for p in paths},
    reads={p: attempt(read, p, "rb") for p in paths[1:]},
    parent=attempt(os.listdir, os.path.dirname(project)),
)
"#,
        &[
            ("PROJECT", lit(&project.display().to_string())),
            ("BIN", lit(BIN)),
        ],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for (path, exists) in obs["exists"].as_object().expect("exists") {
        assert_eq!(*exists, false, "{path} is visible in the jail");
    }
    for (path, probe) in obs["reads"].as_object().expect("reads") {
        assert_refused(probe, path);
    }
    // The parent may exist in the jail under the same name (a checkout under
    // /tmp has the jail's own /tmp as "parent"), but it must not hold the project.
    if obs["parent"]["ok"] == true {
        let name = project
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let listing = obs["parent"]["value"].to_string();
        assert!(
            !listing.contains(&format!("\"{name}\"")),
            "the project shows in its parent: {listing}"
        );
    }

    // outside
    let all = everything(&cell);
    for line in cargo_toml.lines().filter(|l| l.contains('=')) {
        assert!(!all.contains(line), "Cargo.toml leaked: {line}");
    }
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: look for the host's /home, /sys (cgroup and device control), /boot,
// /var, /run (sockets of host daemons: docker, dbus, systemd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_sys_and_other_host_trees_do_not_exist() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
paths = ["/home", "/sys", "/sys/fs/cgroup", "/sys/kernel", "/boot", "/var", "/run",
         "/run/docker.sock", "/var/run/docker.sock", "/run/dbus/system_bus_socket", "/mnt", "/media",
         "/opt", "/srv", "/usr/bin", "/usr/sbin", "/bin/sh", "/usr/local", "/work", "/snap"]
report(exists={p: os.path.lexists(p) for p in paths},
       listing={p: attempt(os.listdir, p) for p in ["/home", "/sys", "/var", "/run"]})
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    // The image is bound at its own host path, so its ancestors exist as
    // empty directories (e.g. /var and /var/tmp for an image in /var/tmp):
    // they may exist, and list nothing but the next step towards the image.
    let image_root = image().root;
    let on_image_path = |p: &str| image_root.starts_with(p);
    for (path, exists) in obs["exists"].as_object().expect("exists") {
        if !on_image_path(path) {
            assert_eq!(*exists, false, "{path} exists in the jail: {obs}");
        }
    }
    for (path, probe) in obs["listing"].as_object().expect("listing") {
        if on_image_path(path) {
            let next = image_root
                .strip_prefix(path)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            if probe["ok"] == true {
                assert_eq!(probe["value"], serde_json::json!([next]), "{path}: {obs}");
            } else {
                assert_refused_with(probe, path, &[libc::EACCES]);
            }
        } else {
            assert_refused_with(probe, path, &[libc::ENOENT, libc::EACCES]);
        }
    }

    // outside
    let all = everything(&cell);
    if let Ok(homes) = std::fs::read_dir("/home") {
        for home in homes.flatten() {
            let name = home.file_name().to_string_lossy().to_string();
            assert!(
                !all.contains(&format!("/home/{name}")),
                "host user {name} leaked"
            );
        }
    }
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: reach the host's root through /proc: /proc/1/root, /proc/1/cwd and
// the host pids of the supervisor and the zygote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_root_through_proc_is_unreachable() {
    let host = world_readable_dir();
    let (path, secret) = plant_secret(host.path(), "secret.txt");
    let (sb, _dir) = sandbox().await;
    let zygote_host = sb.zygote_host_pid().expect("zygote pid");
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
path = @PATH@
host_pids = [@SUPERVISOR@, @ZYGOTE@]
report(
    proc1_root=attempt(os.listdir, "/proc/1/root"),
    proc1_root_secret=attempt(read, "/proc/1/root" + path),
    proc1_root_shadow=attempt(read, "/proc/1/root/etc/shadow"),
    proc1_cwd=attempt(os.listdir, "/proc/1/cwd"),
    proc1_exe=attempt(os.readlink, "/proc/1/exe"),
    self_root=attempt(os.readlink, "/proc/self/root"),
    host_pids_visible={str(p): os.path.exists(f"/proc/{p}") for p in host_pids},
    host_pid_roots={str(p): attempt(os.listdir, f"/proc/{p}/root") for p in host_pids},
)
"#,
        &[
            ("PATH", lit(&path.display().to_string())),
            ("SUPERVISOR", std::process::id().to_string()),
            ("ZYGOTE", zygote_host.to_string()),
        ],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "proc1_root",
        "proc1_root_secret",
        "proc1_root_shadow",
        "proc1_cwd",
    ] {
        assert_refused(&obs[probe], probe);
    }
    assert_eq!(obs["self_root"]["value"], "/", "{obs}");
    for (pid, visible) in obs["host_pids_visible"].as_object().expect("pids") {
        assert_eq!(
            *visible, false,
            "host pid {pid} is visible in the jail's /proc"
        );
        assert_refused(&obs["host_pid_roots"][pid], pid);
    }

    // outside
    assert_secret_absent(&cell, &secret);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: symlink tricks: a link in /tmp to /proc/1/root, to /, to a host
// path; follow them hoping the link is resolved outside the jail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_tricks_reveal_nothing_of_the_host() {
    let host = world_readable_dir();
    let (path, secret) = plant_secret(host.path(), "secret.txt");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
path = @PATH@
os.symlink("/proc/1/root", "/tmp/proc1root")
os.symlink("/", "/tmp/slash")
os.symlink(path, "/tmp/host-secret")
os.symlink("/proc/self/root/../../..", "/tmp/up")
report(
    proc1root=attempt(os.listdir, "/tmp/proc1root"),
    proc1root_shadow=attempt(read, "/tmp/proc1root/etc/shadow"),
    proc1root_secret=attempt(read, "/tmp/proc1root" + path),
    slash_secret=attempt(read, "/tmp/slash" + path),
    host_secret=attempt(read, "/tmp/host-secret"),
    up_secret=attempt(read, "/tmp/up" + path),
    up_shadow=attempt(read, "/tmp/up/etc/shadow"),
)
"#,
        &[("PATH", lit(&path.display().to_string()))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "proc1root",
        "proc1root_shadow",
        "proc1root_secret",
        "slash_secret",
        "host_secret",
        "up_secret",
        "up_shadow",
    ] {
        assert_refused(&obs[probe], probe);
    }

    // outside
    assert_secret_absent(&cell, &secret);
    host_path_absent(Path::new("/tmp/proc1root"));
    host_path_absent(Path::new("/tmp/host-secret"));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: a secret in the environment of whoever runs `csv-agent` (an API
// token, say) read from os.environ, /proc/self/environ or /proc/1/environ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_secrets_are_not_inherited() {
    let secret = random_secret();
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let mut child = std::process::Command::new(BIN)
        .args(["sandbox", "exec", "--csv"])
        .arg(&csv)
        .args([
            "--json",
            "--code",
            "import os, json; print(json.dumps(sorted(os.environ)))",
            "--code",
            "print(open('/proc/self/environ', 'rb').read())",
            "--code",
            "try:\n    print(open('/proc/1/environ', 'rb').read())\nexcept OSError as e:\n    print('denied', e.errno)",
            "--code",
            "import time; time.sleep(3); print('done')",
        ])
        .env("SECRET_TOKEN", &secret)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("csv-agent starts");

    // outside, while it runs: no process the CLI started (init, zygote,
    // worker) carries the secret in its environment on the host.
    let mut saw_python = false;
    let mut environ_checked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        for pid in descendants(child.id()) {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            environ_checked += 1;
            assert!(
                !String::from_utf8_lossy(&environ).contains(&secret),
                "host pid {pid} (a descendant of the CLI) has the secret in its environment"
            );
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            saw_python |= String::from_utf8_lossy(&cmdline).contains("zygote.py");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().expect("csv-agent finishes");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "csv-agent failed: {stdout}\n{stderr}");
    assert!(
        saw_python && environ_checked > 0,
        "never saw the jail's processes from the host"
    );

    // inside
    let cells: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(cells.len(), 4, "{stdout}");
    let names: Vec<String> =
        serde_json::from_str(cells[0]["stdout"].as_str().unwrap().trim()).expect("env names");
    assert!(
        !names
            .iter()
            .any(|n| n == "SECRET_TOKEN" || n.starts_with("AWS_")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("CARGO") || n == "USER"),
        "host env leaked: {names:?}"
    );
    assert!(
        cells[2]["stdout"].as_str().unwrap().starts_with("denied"),
        "{}",
        cells[2]
    );

    // outside
    assert!(!stdout.contains(&secret), "THE SECRET LEAKED: {stdout}");
    assert!(!stderr.contains(&secret), "THE SECRET LEAKED: {stderr}");
}

/// Every descendant of `pid` (children of all its threads, recursively).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let file = task.path().join("children");
            for child in std::fs::read_to_string(file)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(c) = child.parse::<u32>() {
                    if !out.contains(&c) {
                        out.push(c);
                        todo.push(c);
                    }
                }
            }
        }
    }
    out
}

// Attack: descriptors leaked by whoever started the supervisor (a file opened
// without O_CLOEXEC, a pipe of the parent shell) reach the jail and let a
// cell read host data without any path. The worker must hold only stdin
// (/dev/null), its memfd capture files and its one protocol socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_holds_no_inherited_descriptors() {
    let host = world_readable_dir();
    let (path, secret) = plant_secret(host.path(), "leaky.txt");
    // Plant the leak: an inheritable descriptor on a host file, open only
    // while the jail starts (the zygote takes its copy at spawn time).
    let leak = std::fs::File::open(&path).expect("open the secret");
    // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns.
    unsafe {
        let flags = libc::fcntl(leak.as_raw_fd(), libc::F_GETFD);
        assert!(flags >= 0);
        assert_eq!(
            libc::fcntl(leak.as_raw_fd(), libc::F_SETFD, flags & !libc::FD_CLOEXEC),
            0
        );
    }
    let started = sandbox().await;
    drop(leak);
    let (sb, _dir) = started;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
fds = {}
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    target = attempt(os.readlink, f"/proc/self/fd/{fd}")
    if not target["ok"]:
        continue  # the descriptor of the listing itself, closed by now
    fds[fd] = target["value"]
unexpected = {}
for fd, target in fds.items():
    if fd == 0 and target == "/dev/null":
        continue
    if target.startswith("/memfd:cell-std"):
        continue
    unexpected[fd] = {"target": target, "read": attempt(os.pread, fd, 200, 0)}
sockets = [fd for fd, t in fds.items() if t.startswith("socket:")]
report(fds=fds, unexpected=unexpected, sockets=sockets)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;

    // outside (first, so a leak is reported as such)
    assert_secret_absent(&cell, &secret);
    let obs = observed(&cell);
    let sockets = obs["sockets"].as_array().expect("sockets");
    assert_eq!(
        sockets.len(),
        1,
        "exactly one socket (the worker's own): {obs}"
    );
    let unexpected: Vec<(String, Value)> = obs["unexpected"]
        .as_object()
        .expect("unexpected")
        .iter()
        .filter(|(_, v)| !v["target"].as_str().unwrap_or("").starts_with("socket:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the worker holds descriptors it should not have (inherited from the supervisor's caller): {unexpected:?}\nall: {}",
        obs["fds"]
    );
    assert!(
        !obs["fds"].to_string().contains("pipe:"),
        "a pipe reached the worker: {obs}"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// ============================================================ writes

// Attack: write to the jail's root (/, /etc, /sandbox/zygote.py): plant files
// for other tasks, replace the zygote program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_filesystem_is_read_only() {
    let marker = format!("pwned-{}", &random_secret()[7..19]);
    let host_passwd = fingerprint(Path::new("/etc/passwd"));
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
m = @MARKER@
report(
    root_file=attempt(write, "/" + m),
    root_dir=attempt(os.mkdir, "/" + m + ".d"),
    etc_passwd=attempt(write, "/etc/passwd", "evil::0:0::/:/bin/sh\n", "a"),
    etc_new=attempt(write, "/etc/" + m),
    etc_hosts=attempt(write, "/etc/hosts", "1.2.3.4 pypi.org\n", "a"),
    zygote=attempt(write, "/sandbox/zygote.py", "import os\n", "a"),
    zygote_unlink=attempt(os.unlink, "/sandbox/zygote.py"),
    zygote_chmod=attempt(os.chmod, "/sandbox/zygote.py", 0o777),
    rename_etc=attempt(os.rename, "/etc/hosts", "/etc/hosts.bak"),
    dev_file=attempt(write, "/dev/" + m),
    passwd_after=read("/etc/passwd"),
)
"#,
        &[("MARKER", lit(&marker))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "root_file",
        "root_dir",
        "etc_passwd",
        "etc_new",
        "etc_hosts",
        "zygote",
        "zygote_unlink",
        "zygote_chmod",
        "rename_etc",
        "dev_file",
    ] {
        assert_refused_with(&obs[probe], probe, DENIED);
    }
    assert_eq!(
        obs["passwd_after"],
        "root:x:0:0:csv-agent jail:/tmp:/nonexistent\n"
    );

    // outside
    host_path_absent(&Path::new("/").join(&marker));
    host_path_absent(&Path::new("/etc").join(&marker));
    assert_eq!(
        fingerprint(Path::new("/etc/passwd")),
        host_passwd,
        "host /etc/passwd changed"
    );
    // A new worker still sees the pristine zygote program and /etc.
    let mut fresh = sb.acquire().await.expect("worker");
    let check = exec(&mut fresh, "open('/etc/hosts').read()").await;
    assert_eq!(
        check.result.as_deref(),
        Some("'127.0.0.1 localhost csv-agent\\n'"),
        "{check:#?}"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: tamper with the dataset (overwrite, truncate, delete, rename,
// chmod, touch) so later tasks see poisoned data, or the host file changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_cannot_be_modified() {
    let (sb, dir) = sandbox().await;
    let csv = dir.path().join("data.csv");
    let before = fingerprint(&csv).expect("the csv");
    let listing_before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
csv = "/data/data.csv"
report(
    overwrite=attempt(write, csv, "id\n666\n"),
    append=attempt(write, csv, "7,z,0,0,2024-01-07\n", "a"),
    rplus=attempt(write, csv, b"X", "r+b"),
    truncate=attempt(os.truncate, csv, 0),
    unlink=attempt(os.unlink, csv),
    rename=attempt(os.rename, csv, "/data/moved.csv"),
    chmod=attempt(os.chmod, csv, 0o666),
    chown=attempt(os.chown, csv, 0, 0),
    utime=attempt(os.utime, csv, (0, 0)),
    new_file=attempt(write, "/data/new.csv"),
    mkdir=attempt(os.mkdir, "/data/sub"),
    df_rows=len(df),
    content=read(csv),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "overwrite",
        "append",
        "rplus",
        "truncate",
        "unlink",
        "rename",
        "chmod",
        "chown",
        "utime",
        "new_file",
        "mkdir",
    ] {
        assert_refused_with(&obs[probe], probe, DENIED);
    }
    assert_eq!(obs["content"], SMALL_CSV, "{obs}");

    // outside
    assert_eq!(fingerprint(&csv), Some(before), "the host CSV changed");
    let listing_after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        listing_before, listing_after,
        "files appeared next to the host CSV"
    );
    let mut fresh = sb.acquire().await.expect("worker");
    let rows = exec(&mut fresh, "len(df), int(df['id'].sum())").await;
    assert_eq!(rows.result.as_deref(), Some("(6, 21)"), "{rows:#?}");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: persist code in the image (a .pth or sitecustomize in
// site-packages, a patched interpreter) so every later jail runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_cannot_be_modified() {
    let image = image();
    let python = image.python.clone();
    let python_before = std::fs::metadata(&python)
        .map(|m| (m.len(), m.mtime(), m.mode()))
        .ok();
    let marker = format!("evil-{}", &random_secret()[7..19]);
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
import pandas
m = @MARKER@
image = @IMAGE@
python = @PYTHON@
site = os.path.dirname(os.path.dirname(pandas.__file__))
report(
    site=site,
    image_file=attempt(write, image + "/" + m),
    pth=attempt(write, site + "/" + m + ".pth", "import os\n"),
    sitecustomize=attempt(write, site + "/sitecustomize.py", "print('owned')\n"),
    pandas_init=attempt(write, pandas.__file__, "\n", "a"),
    python_rplus=attempt(write, python, b"\0", "r+b"),
    python_chmod=attempt(os.chmod, python, 0o4755),
    python_unlink=attempt(os.unlink, python),
    rename_pkg=attempt(os.rename, os.path.dirname(pandas.__file__), site + "/" + m),
    mkdir=attempt(os.mkdir, site + "/" + m + "_pkg"),
)
"#,
        &[
            ("MARKER", lit(&marker)),
            ("IMAGE", lit(&image.root.display().to_string())),
            ("PYTHON", lit(&python.display().to_string())),
        ],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "image_file",
        "pth",
        "sitecustomize",
        "pandas_init",
        "python_rplus",
        "python_chmod",
        "python_unlink",
        "rename_pkg",
        "mkdir",
    ] {
        assert_refused_with(&obs[probe], probe, DENIED);
    }

    // outside
    let site = PathBuf::from(obs["site"].as_str().expect("site-packages"));
    assert!(
        site.starts_with(&image.root),
        "site-packages lives in the image: {}",
        site.display()
    );
    host_path_absent(&image.root.join(&marker));
    host_path_absent(&site.join(format!("{marker}.pth")));
    host_path_absent(&site.join(format!("{marker}_pkg")));
    host_path_absent(&site.join("sitecustomize.py"));
    assert!(site.join("pandas").is_dir(), "pandas is still in place");
    let python_after = std::fs::metadata(&python)
        .map(|m| (m.len(), m.mtime(), m.mode()))
        .ok();
    assert_eq!(
        python_before, python_after,
        "the image's interpreter changed"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: modify host system libraries (/usr/lib, /lib64) the jail binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_libraries_cannot_be_modified() {
    let marker = format!("evil-{}", &random_secret()[7..19]);
    // The host libc is the one the jail binds (same path): the test maps it too.
    let host_libc = mapped_libc(&std::fs::read_to_string("/proc/self/maps").expect("maps"));
    let libc_before = fingerprint(&host_libc);
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
m = @MARKER@
libc_path = None
for line in read("/proc/self/maps").splitlines():
    if "/libc.so" in line or "/libc-" in line:
        libc_path = line.split()[-1]
        break
report(
    libc=libc_path,
    new_usr_lib=attempt(write, "/usr/lib/" + m),
    new_lib64=attempt(write, "/lib64/" + m),
    libc_rplus=attempt(write, libc_path, b"\0", "r+b"),
    libc_unlink=attempt(os.unlink, libc_path),
    libc_chmod=attempt(os.chmod, libc_path, 0o777),
    zoneinfo=attempt(write, "/usr/share/zoneinfo/" + m),
    ld_cache=attempt(write, "/etc/ld.so.cache", b"\0", "r+b"),
)
"#,
        &[("MARKER", lit(&marker))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    let libc_path = PathBuf::from(obs["libc"].as_str().expect("libc is mapped"));
    for probe in [
        "new_usr_lib",
        "new_lib64",
        "libc_rplus",
        "libc_unlink",
        "libc_chmod",
        "zoneinfo",
        "ld_cache",
    ] {
        assert_refused_with(&obs[probe], probe, DENIED);
    }

    // outside
    host_path_absent(&Path::new("/usr/lib").join(&marker));
    host_path_absent(&Path::new("/lib64").join(&marker));
    host_path_absent(&Path::new("/usr/share/zoneinfo").join(&marker));
    assert_eq!(libc_path, host_libc, "the jail maps the host's libc");
    assert!(libc_before.is_some());
    assert_eq!(
        fingerprint(&host_libc),
        libc_before,
        "the host libc changed"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: change kernel or process settings through /proc (hostname, caches,
// sysrq, core_pattern) or make the worker immune to the OOM killer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_and_sysctl_writes_fail() {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let core_pattern =
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core_pattern");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();
    let _ = run(&mut task, "pass").await;
    let host_pid = task.worker().expect("worker").host_pid;
    let oom_before =
        std::fs::read_to_string(format!("/proc/{host_pid}/oom_score_adj")).expect("oom_score_adj");

    // inside
    let code = payload(
        r#"
report(
    hostname=attempt(write, "/proc/sys/kernel/hostname", "pwned"),
    core_pattern=attempt(write, "/proc/sys/kernel/core_pattern", "|/tmp/x"),
    drop_caches=attempt(write, "/proc/sys/vm/drop_caches", "3"),
    sysrq=attempt(write, "/proc/sysrq-trigger", "b"),
    oom_self=attempt(write, "/proc/self/oom_score_adj", "-1000"),
    oom_zygote=attempt(write, "/proc/1/oom_score_adj", "1000"),
    comm_zygote=attempt(write, "/proc/1/comm", "pwned"),
    setgroups=attempt(write, "/proc/self/setgroups", "allow"),
    uid_map=attempt(write, "/proc/self/uid_map", "0 0 1"),
    sethostname=attempt(socket.sethostname, "pwned"),
    hostname_now=socket.gethostname(),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "hostname",
        "core_pattern",
        "drop_caches",
        "sysrq",
        "oom_self",
        "oom_zygote",
        "comm_zygote",
        "setgroups",
        "uid_map",
        "sethostname",
    ] {
        assert_refused_with(&obs[probe], probe, DENIED);
    }
    assert_eq!(obs["hostname_now"], "csv-agent", "{obs}");

    // outside
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    let oom_after =
        std::fs::read_to_string(format!("/proc/{host_pid}/oom_score_adj")).expect("oom_score_adj");
    assert_eq!(oom_before, oom_after, "the worker changed its OOM score");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: hard-link read-only files (the dataset, the image) into the
// writable /tmp to modify them through the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_across_mounts_fail() {
    let (sb, dir) = sandbox().await;
    let csv = dir.path().join("data.csv");
    let nlink_before = std::fs::metadata(&csv).unwrap().nlink();
    let python_nlink = std::fs::metadata(&image().python).unwrap().nlink();
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
python = os.path.realpath(@PYTHON@)
report(
    csv_link=attempt(os.link, "/data/data.csv", "/tmp/data.csv"),
    python_link=attempt(os.link, python, "/tmp/python"),
    shm_link=attempt(os.link, "/data/data.csv", "/dev/shm/data.csv"),
    passwd_link=attempt(os.link, "/etc/passwd", "/tmp/passwd"),
    rename_out=attempt(os.rename, "/data/data.csv", "/tmp/data.csv"),
)
"#,
        &[("PYTHON", lit(&image().python.display().to_string()))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "csv_link",
        "python_link",
        "shm_link",
        "passwd_link",
        "rename_out",
    ] {
        assert_refused_with(
            &obs[probe],
            probe,
            &[libc::EXDEV, libc::EACCES, libc::EPERM, libc::EROFS],
        );
    }

    // outside
    assert_eq!(
        std::fs::metadata(&csv).unwrap().nlink(),
        nlink_before,
        "CSV link count changed"
    );
    assert_eq!(
        std::fs::metadata(&image().python).unwrap().nlink(),
        python_nlink
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: /tmp inside is writable: files written there must stay in the
// jail's tmpfs, never show up in the host's /tmp; and the host's /tmp
// files must not show up inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jail_tmp_is_not_the_host_tmp() {
    let host_tmp = std::env::temp_dir();
    let marker = format!("csv-agent-jail-{}", &random_secret()[7..23]);
    let host = world_readable_dir();
    let (host_file, secret) = plant_secret(host.path(), "host-tmp-secret");
    let _cleanup = Cleanup(host_tmp.join(&marker));
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
m = @MARKER@
write("/tmp/" + m, "written inside\n")
os.mkdir("/tmp/" + m + ".d")
report(
    written=read("/tmp/" + m),
    listing=sorted(os.listdir("/tmp")),
    host_file=attempt(read, @HOST_FILE@),
    statvfs=list(os.statvfs("/tmp"))[:4],
)
"#,
        &[
            ("MARKER", lit(&marker)),
            ("HOST_FILE", lit(&host_file.display().to_string())),
        ],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(obs["written"], "written inside\n");
    assert_eq!(
        obs["listing"],
        serde_json::json!([marker.clone(), format!("{marker}.d")]),
        "{obs}"
    );
    assert_refused(&obs["host_file"], "host tmp file");

    // outside
    host_path_absent(&host_tmp.join(&marker));
    host_path_absent(&host_tmp.join(format!("{marker}.d")));
    host_path_absent(&Path::new("/tmp").join(&marker));
    assert_secret_absent(&cell, &secret);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: /dev/shm is writable; it must be the jail's own tmpfs: host shm
// segments stay invisible, and what is written does not reach the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_shm_works_but_is_not_the_hosts() {
    let marker = format!("csv-agent-shm-{}", &random_secret()[7..23]);
    let secret = random_secret();
    let host_shm = Path::new("/dev/shm");
    let host_secret = host_shm.join(format!("{marker}-host"));
    let planted = std::fs::write(&host_secret, &secret).is_ok();
    if planted {
        std::fs::set_permissions(&host_secret, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let _c1 = Cleanup(host_secret.clone());
    let _c2 = Cleanup(host_shm.join(&marker));
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
m = @MARKER@
write("/dev/shm/" + m, "shm inside\n")
report(
    written=read("/dev/shm/" + m),
    listing=sorted(os.listdir("/dev/shm")),
    host_secret=attempt(read, "/dev/shm/" + m + "-host"),
)
"#,
        &[("MARKER", lit(&marker))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(obs["written"], "shm inside\n");
    assert_eq!(obs["listing"], serde_json::json!([marker.clone()]), "{obs}");
    assert_refused(&obs["host_secret"], "host shm file");

    // outside
    host_path_absent(&host_shm.join(&marker));
    assert_secret_absent(&cell, &secret);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: devices: reach raw disks, kernel memory, the kernel log or a tty;
// create device nodes; write the host's entropy pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_holds_only_the_minimal_devices() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
candidates = ["null", "zero", "random", "urandom", "shm", "fd", "stdin", "stdout", "stderr",
              "tty", "console", "mem", "kmem", "port", "kmsg", "sda", "vda", "nvme0n1", "fuse",
              "kvm", "net/tun", "ptmx", "pts", "full", "loop0", "loop-control", "mapper",
              "mqueue", "hugepages", "cpu", "dri", "snd", "input", "autofs", "btrfs-control",
              "userfaultfd", "vhost-net", "vsock", "watchdog", "rtc0", "hpet", "nvram", "bsg"]
listing = attempt(os.listdir, "/dev")
report(
    present=sorted(c for c in candidates if os.path.lexists("/dev/" + c)),
    listing=listing,
    mknod_mem=attempt(os.mknod, "/tmp/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1)),
    mknod_sda=attempt(os.mknod, "/dev/shm/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0)),
    write_urandom=attempt(write, "/dev/urandom", b"x" * 64, "wb"),
    null_ok=attempt(write, "/dev/null", "fine"),
    zero_ok=attempt(lambda: len(open("/dev/zero", "rb").read(16))),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(
        obs["present"],
        serde_json::json!([
            "fd", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"
        ]),
        "{obs}"
    );
    if obs["listing"]["ok"] == true {
        let mut listing: Vec<String> =
            serde_json::from_value(obs["listing"]["value"].clone()).unwrap();
        listing.sort();
        assert_eq!(
            listing,
            ["fd", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
        );
    }
    assert_refused_with(&obs["mknod_mem"], "mknod /dev/mem", &[libc::EPERM]);
    assert_refused_with(&obs["mknod_sda"], "mknod sda", &[libc::EPERM]);
    assert_refused_with(&obs["write_urandom"], "write /dev/urandom", DENIED);
    assert_eq!(obs["null_ok"]["ok"], true, "{obs}");
    assert_eq!(obs["zero_ok"]["value"], 16, "{obs}");

    // outside
    host_path_absent(Path::new("/dev/shm/sda"));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: setuid binaries or file capabilities regain privileges on exec; or
// exec (which resets some process state) gives back capabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_setuid_binaries_grant_nothing() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
import subprocess
mounts = [line.split() for line in read("/proc/self/mounts").splitlines()]
setuid_files = []
for top in ["/usr/lib", "/lib64"]:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                setuid_files.append(os.path.join(dirpath, name))
child = subprocess.run(
    [sys.executable, "-c", "print(open('/proc/self/status').read())"],
    capture_output=True, text=True, timeout=60,
)
status = dict(line.split(":\t", 1) for line in child.stdout.splitlines() if ":\t" in line)
report(
    without_nosuid=[m[1] for m in mounts if "nosuid" not in m[3].split(",")],
    setuid_files=setuid_files,
    common=[p for p in ["/usr/bin/sudo", "/bin/su", "/usr/bin/su", "/usr/bin/passwd", "/bin/mount", "/usr/bin/newuidmap", "/bin/ping"] if os.path.lexists(p)],
    child_status={k: status.get(k, "").strip() for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid"]},
    child_rc=child.returncode,
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(
        obs["without_nosuid"],
        serde_json::json!([]),
        "every mount is nosuid: {obs}"
    );
    assert_eq!(obs["common"], serde_json::json!([]), "{obs}");
    assert_eq!(obs["child_rc"], 0, "{obs}");
    let st = &obs["child_status"];
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "exec'd child {cap}: {obs}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2");
    // The worker's own uid (not root of the jail), in all four places.
    let uid: Vec<&str> = st["Uid"].as_str().unwrap_or_default().split('\t').collect();
    assert_eq!(uid.len(), 4, "{obs}");
    assert!(uid.iter().all(|u| *u == uid[0] && *u != "0"), "{obs}");

    // outside
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: become another user (setuid, setgid, setgroups, setresuid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_identity_fails() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();
    let _ = run(&mut task, "pass").await;
    let host_pid = task.worker().expect("worker").host_pid;

    // inside
    let code = payload(
        r#"
other = os.getuid() + 1
report(
    setuid=attempt(os.setuid, other),
    setuid0=attempt(os.setuid, 0),
    seteuid=attempt(os.seteuid, 65534),
    setgid=attempt(os.setgid, other),
    setgroups=attempt(os.setgroups, [0, 27]),
    setresuid=attempt(os.setresuid, other, other, other),
    setresuid0=attempt(os.setresuid, 0, 0, 0),
    setresgid0=attempt(os.setresgid, 0, 0, 0),
    ids=[os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "setuid",
        "setuid0",
        "seteuid",
        "setgid",
        "setgroups",
        "setresuid",
        "setresuid0",
        "setresgid0",
    ] {
        assert_refused_with(&obs[probe], probe, &[libc::EPERM]);
    }
    // The worker's own ids, not root of the jail.
    let ids = obs["ids"].as_array().expect("ids");
    assert!(ids.iter().all(|i| *i == ids[0] && *i != 0), "{obs}");

    // outside: one uid of the sandbox's own block, not the zygote's
    let uid = host_status_field(host_pid, "Uid").expect("Uid");
    let zygote_uid = host_status_field(sb.zygote_host_pid().expect("zygote"), "Uid").expect("Uid");
    let first = uid
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        uid.split_whitespace().all(|u| u == first) && uid != zygote_uid,
        "host Uid of the worker: {uid}, of the zygote: {zygote_uid}"
    );
    let first: u32 = first.parse().expect("uid");
    assert!(
        first >= csv_agent::sandbox::uids::FIRST_HOST_ID,
        "host Uid of the worker: {uid}"
    );
    let groups = host_status_field(host_pid, "Groups").unwrap_or_default();
    assert!(
        groups.is_empty(),
        "the worker has supplementary groups on the host: {groups}"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// ============================================================ network

// Attack: open a TCP connection to a service on the host's loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_host_listener_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().unwrap().port();
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
port = @PORT@
report(
    connect=attempt(socket.create_connection, ("127.0.0.1", port), 2),
    socket_inet=attempt(socket.socket, socket.AF_INET, socket.SOCK_STREAM),
    connect_localhost=attempt(socket.create_connection, ("localhost", port), 2),
    proc_net_tcp=attempt(read, "/proc/net/tcp"),
    port_hex=f":{port:04X}",
)
"#,
        &[("PORT", port.to_string())],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_refused(&obs["connect"], "connect");
    assert_refused(&obs["connect_localhost"], "connect localhost");
    assert_refused_with(&obs["socket_inet"], "socket(AF_INET)", &[libc::EPERM]);
    let tcp = obs["proc_net_tcp"]["value"].as_str().unwrap_or("");
    assert!(
        !tcp.contains(obs["port_hex"].as_str().unwrap()),
        "the host's socket table is visible: {tcp}"
    );

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_arrived(
        listener.accept(),
        "the host listener got a connection from the jail",
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: send a UDP datagram to a host service (exfiltration needs no
// handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_to_a_host_listener_is_refused() {
    let secret = random_secret();
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    receiver.set_nonblocking(true).expect("nonblocking");
    let port = receiver.local_addr().unwrap().port();
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
def send():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return s.sendto(@SECRET@.encode(), ("127.0.0.1", @PORT@))
report(send=attempt(send), udp6=attempt(socket.socket, socket.AF_INET6, socket.SOCK_DGRAM))
"#,
        &[("PORT", port.to_string()), ("SECRET", lit(&secret))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_refused_with(&obs["send"], "sendto", &[libc::EPERM]);
    assert_refused_with(&obs["udp6"], "socket(AF_INET6)", &[libc::EPERM]);

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = [0u8; 256];
    assert_nothing_arrived(
        receiver.recv_from(&mut buf),
        "the host UDP socket received something from the jail",
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: resolve names (DNS is the classic exfiltration channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_resolution_fails() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
report(
    example=attempt(socket.getaddrinfo, "example.com", 80),
    pypi=attempt(socket.getaddrinfo, "pypi.org", 443),
    by_name=attempt(socket.gethostbyname, "exfil.example.net"),
    resolv_conf=os.path.exists("/etc/resolv.conf"),
    nsswitch=os.path.exists("/etc/nsswitch.conf"),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in ["example", "pypi", "by_name"] {
        assert_refused(&obs[probe], probe);
        assert_eq!(obs[probe]["type"], "gaierror", "{obs}");
    }
    assert_eq!(obs["resolv_conf"], false);

    // outside
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: connect to an abstract unix socket the host listens on (abstract
// sockets have no path, so the filesystem does not hide them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_abstract_unix_socket_is_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("csv-agent-security-{}", &random_secret()[7..23]);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
def connect(kind):
    s = socket.socket(socket.AF_UNIX, kind)
    s.settimeout(2)
    s.connect("\0" + @NAME@)
    return "connected"
report(
    stream=attempt(connect, socket.SOCK_STREAM),
    seqpacket=attempt(connect, socket.SOCK_SEQPACKET),
    dgram=attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"hi", "\0" + @NAME@)),
    proc_net_unix=attempt(read, "/proc/net/unix"),
)
"#,
        &[("NAME", lit(&name))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in ["stream", "seqpacket", "dgram"] {
        assert_refused_with(
            &obs[probe],
            probe,
            &[libc::ECONNREFUSED, libc::EPERM, libc::ENOENT],
        );
    }
    assert!(
        !obs["proc_net_unix"].to_string().contains(&name),
        "the host's abstract socket is listed: {obs}"
    );

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_arrived(
        listener.accept(),
        "the host abstract socket got a connection from the jail",
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: connect to a host unix socket by path (a daemon's control socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pathname_unix_socket_is_unreachable() {
    let dir = world_readable_dir();
    let path = dir.path().join("daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(path)
    return "connected"
report(
    direct=attempt(connect, @PATH@),
    via_proc=attempt(connect, "/proc/1/root" + @PATH@),
    docker=attempt(connect, "/var/run/docker.sock"),
)
"#,
        &[("PATH", lit(&path.display().to_string()))],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in ["direct", "via_proc", "docker"] {
        assert_refused(&obs[probe], probe);
    }

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_arrived(
        listener.accept(),
        "the host unix socket got a connection from the jail",
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: open sockets of families other than AF_UNIX (netlink to talk to
// the kernel's network stack, packet sockets to sniff, IPv6, vsock to reach a
// hypervisor, raw IP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_unix_socket_families_are_refused() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
families = {
    "AF_INET": (socket.AF_INET, socket.SOCK_STREAM, 0),
    "AF_INET_RAW": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "AF_INET6": (socket.AF_INET6, socket.SOCK_STREAM, 0),
    "AF_NETLINK": (16, socket.SOCK_RAW, 0),
    "AF_NETLINK_AUDIT": (16, socket.SOCK_RAW, 9),
    "AF_PACKET": (17, socket.SOCK_RAW, 0x0300),
    "AF_VSOCK": (40, socket.SOCK_STREAM, 0),
    "AF_BLUETOOTH": (31, socket.SOCK_STREAM, 0),
    "AF_ALG": (38, socket.SOCK_SEQPACKET, 0),
    "AF_XDP": (44, socket.SOCK_RAW, 0),
}
report(
    sockets={name: attempt(socket.socket, *args) for name, args in families.items()},
    socketpair_inet=attempt(socket.socketpair, socket.AF_INET),
    unix_ok=attempt(lambda: socket.socketpair(socket.AF_UNIX)[0].fileno() > 0),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for (name, probe) in obs["sockets"].as_object().expect("sockets") {
        assert_refused_with(probe, name, &[libc::EPERM]);
    }
    assert_refused(&obs["socketpair_inet"], "socketpair(AF_INET)");
    assert_eq!(obs["unix_ok"]["value"], true, "AF_UNIX still works: {obs}");

    // outside
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: look for a network interface to route through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_interface_exists() {
    let host_ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .filter(|n| n != "lo")
        .collect();
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
lines = read("/proc/net/dev").splitlines()[2:]
report(
    interfaces=sorted(line.split(":")[0].strip() for line in lines),
    route=attempt(read, "/proc/net/route"),
    if_nameindex=attempt(socket.if_nameindex),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(obs["interfaces"], serde_json::json!(["lo"]), "{obs}");
    let route = obs["route"]["value"].as_str().unwrap_or("");
    assert!(route.lines().count() <= 1, "the jail has routes: {route}");

    // outside
    let all = everything(&cell);
    for iface in &host_ifaces {
        assert!(
            !all.contains(&format!("\"{iface}\"")),
            "host interface {iface} visible"
        );
    }
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// ============================================================ processes and identity

// Attack: enumerate host processes (the supervisor, cargo, other jails) to
// signal or inspect them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_processes_are_invisible() {
    let test_binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .expect("test binary name");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmdlines = {p: attempt(lambda p=p: read(f"/proc/{p}/cmdline", "rb").replace(b"\0", b" ").decode()) for p in pids}
report(pids=pids, me=os.getpid(), parent=os.getppid(), cmdlines=cmdlines, loadavg_procs=read("/proc/loadavg").split()[3])
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    let pids: Vec<i64> = serde_json::from_value(obs["pids"].clone()).expect("pids");
    assert!(pids.contains(&1), "{obs}");
    assert!(
        pids.iter().all(|p| *p < 100),
        "a large (host) pid is visible: {pids:?}"
    );
    assert!(
        pids.len() <= 3,
        "only the zygote and this worker exist: {pids:?}"
    );
    assert_eq!(obs["parent"], 1, "the zygote is the worker's parent: {obs}");
    let zygote_cmd = obs["cmdlines"]["1"]["value"]
        .as_str()
        .expect("pid 1 cmdline");
    assert!(
        zygote_cmd.contains("python") && zygote_cmd.contains("/sandbox/zygote.py"),
        "pid 1 is the zygote: {zygote_cmd}"
    );
    for (pid, cmd) in obs["cmdlines"].as_object().unwrap() {
        let cmd = cmd["value"].as_str().unwrap_or("");
        for bad in [
            "cargo",
            test_binary.as_str(),
            "__jail-init",
            "rustc",
            "bash",
        ] {
            assert!(
                !cmd.contains(bad),
                "pid {pid} in the jail is a host process ({bad}): {cmd}"
            );
        }
    }

    // outside
    let zygote = sb.zygote_host_pid().expect("zygote");
    let nspid = host_status_field(zygote, "NSpid").expect("NSpid");
    assert!(
        nspid.ends_with("\t1") || nspid.ends_with(" 1"),
        "zygote NSpid {nspid}"
    );
    let worker = task.worker().expect("worker");
    let nspid = host_status_field(worker.host_pid, "NSpid").expect("NSpid");
    assert!(
        nspid.split_whitespace().last() == Some(&worker.ns_pid.to_string()),
        "worker NSpid {nspid}"
    );
    assert_eq!(
        jail_processes(&sb).len(),
        2,
        "zygote + one worker in the jail's pid ns"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: find a privilege left over: capabilities, a missing seccomp filter
// or no_new_privs, a user mapping to a real host user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_has_no_privileges() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = r#"
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
status = {k: v.strip() for k, v in status.items()}
for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]:
    assert status[cap] == "0000000000000000", (cap, status[cap])
assert status["Seccomp"] == "2", status["Seccomp"]
assert status["NoNewPrivs"] == "1", status["NoNewPrivs"]
uid_map = open("/proc/self/uid_map").read().split()
# Root of the jail is the block's first host id; workers the ids from 1000 on.
block = int(uid_map[1])
assert block >= 1600000000 and uid_map == ["0", str(block), "1", "1000", str(block + 1000), "64536"], uid_map
assert open("/proc/self/gid_map").read().split() == uid_map, open("/proc/self/gid_map").read()
assert open("/proc/self/setgroups").read().strip() == "deny"
import json
print(json.dumps({k: status[k] for k in ["Uid", "Gid", "CapEff", "CapBnd", "Seccomp", "NoNewPrivs"]}))
"#;
    let cell = run(&mut task, code).await;
    let obs = observed(&cell);
    assert_eq!(obs["Seccomp"], "2");

    // outside
    let worker = task.worker().expect("worker");
    let zygote = sb.zygote_host_pid().expect("zygote");
    // The zygote is the first id of the sandbox's block; the worker another.
    let block = csv_agent::sandbox::uids::FIRST_HOST_ID;
    for pid in [worker.host_pid, zygote] {
        let uid = host_status_field(pid, "Uid").expect("Uid");
        let gid = host_status_field(pid, "Gid").expect("Gid");
        let ids: Vec<u32> = uid
            .split_whitespace()
            .chain(gid.split_whitespace())
            .map(|u| u.parse().expect("id"))
            .collect();
        assert!(
            ids.iter().all(|i| *i == ids[0] && *i >= block),
            "host Uid/Gid of {pid}: {uid} / {gid}"
        );
        // Inside its user namespace the zygote keeps the capabilities that
        // give workers their uids (none of them counts on the host); a
        // worker holds none.
        let caps = host_status_field(pid, "CapEff").unwrap_or_default();
        if pid == zygote {
            let eff = u64::from_str_radix(&caps, 16).expect("hex");
            // DAC_OVERRIDE, FOWNER, KILL, SETGID, SETUID, SETPCAP
            let allowed: u64 = [1u32, 3, 5, 6, 7, 8].iter().map(|c| 1u64 << c).sum();
            assert_eq!(eff & !allowed, 0, "the zygote holds more: {caps}");
        } else {
            assert_eq!(caps, "0000000000000000");
        }
        assert_eq!(host_status_field(pid, "Seccomp").as_deref(), Some("2"));
        assert_eq!(host_status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    }
    let host_userns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let jail_userns = std::fs::read_link(format!("/proc/{}/ns/user", worker.host_pid)).unwrap();
    assert_ne!(
        host_userns, jail_userns,
        "the worker runs in its own user namespace"
    );
    for ns in ["mnt", "net", "ipc", "uts", "pid", "cgroup"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", worker.host_pid)).unwrap();
        assert_ne!(ours, theirs, "the worker shares the host's {ns} namespace");
    }
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// ============================================================ forbidden system calls

/// Call system call `nr` with `args` (a Python expression list) via ctypes;
/// it must fail with exactly `errno` (EPERM from the seccomp filter; a
/// different errno would mean the call reached the kernel).
async fn assert_syscall_refused(name: &str, nr: i64, args: &str, expected_errno: i32) {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
me = os.getpid()
args = [ctypes.c_long(a) for a in [@ARGS@]]
ctypes.set_errno(0)
ret = libc.syscall(ctypes.c_long(@NR@), *args)
err = ctypes.get_errno()
if os.getpid() != me:
    os._exit(0)  # a clone that got through: the child leaves at once
report(name=@NAME@, ret=ret, errno=err, errname=errno.errorcode.get(err))
"#,
        &[
            ("NR", nr.to_string()),
            ("ARGS", args.to_string()),
            ("NAME", lit(name)),
        ],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    assert_eq!(obs["ret"], -1, "{name} ({nr}) was not refused: {obs}");
    assert_eq!(
        obs["errno"].as_i64(),
        Some(i64::from(expected_errno)),
        "{name} ({nr}) failed with the wrong errno (the call reached the kernel?): {obs}"
    );

    // outside: the attacking worker still works and is still jailed, and the
    // zygote forks a healthy new worker.
    let after = run(
        &mut task,
        "open('/proc/self/status').read().count('Seccomp:\\t2')",
    )
    .await;
    assert_eq!(after.result.as_deref(), Some("1"), "{after:#?}");
    assert_eq!(task.restarts(), 0, "the attacking worker died");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

const CLONE_NEWUSER: i64 = 0x1000_0000;
const CLONE_NEWNET: i64 = 0x4000_0000;
const CLONE_NEWNS: i64 = 0x0002_0000;
const SIGCHLD: i64 = 17;

macro_rules! forbidden_syscalls {
    ($($(#[$doc:meta])* $test:ident => $name:literal, $nr:expr, [$($arg:expr),*], $errno:expr;)*) => {
        $(
            $(#[$doc])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let args: Vec<String> = vec![$(($arg as i64).to_string()),*];
                assert_syscall_refused($name, $nr, &args.join(", "), $errno).await;
            }
        )*
    };
}

forbidden_syscalls! {
    // Attack: PTRACE_TRACEME / attach to read and steer other processes.
    ptrace_is_refused => "ptrace", 101, [0, 0, 0, 0], libc::EPERM;
    // Attack: read another process's memory without ptrace.
    process_vm_readv_is_refused => "process_vm_readv", 310, [1, 0, 0, 0, 0, 0], libc::EPERM;
    // Attack: write another process's memory without ptrace.
    process_vm_writev_is_refused => "process_vm_writev", 311, [1, 0, 0, 0, 0, 0], libc::EPERM;
    // Attack: mount something (a fresh proc, a bind of a hidden path).
    mount_is_refused => "mount", 165, [0, 0, 0, 0, 0], libc::EPERM;
    // Attack: unmount the jail's overlays to uncover what lies beneath.
    umount2_is_refused => "umount2", 166, [0, 0], libc::EPERM;
    // Attack: change the root mount.
    pivot_root_is_refused => "pivot_root", 155, [0, 0], libc::EPERM;
    // Attack: a nested user namespace regains a full capability set.
    unshare_is_refused => "unshare", 272, [CLONE_NEWUSER | CLONE_NEWNS], libc::EPERM;
    // Attack: join another namespace through a descriptor.
    setns_is_refused => "setns", 308, [0, 0], libc::EPERM;
    // Attack: load eBPF programs (a large kernel attack surface).
    bpf_is_refused => "bpf", 321, [0, 0, 0], libc::EPERM;
    // Attack: perf events (side channels, kernel bugs).
    perf_event_open_is_refused => "perf_event_open", 298, [0, 0, -1, -1, 0], libc::EPERM;
    // Attack: the kernel keyring (shared secrets, not namespaced).
    keyctl_is_refused => "keyctl", 250, [0, 0, 0, 0, 0], libc::EPERM;
    // Attack: add keys to the kernel keyring.
    add_key_is_refused => "add_key", 248, [0, 0, 0, 0, 0], libc::EPERM;
    // Attack: ask the kernel for keys (may upcall to host helpers).
    request_key_is_refused => "request_key", 249, [0, 0, 0, 0], libc::EPERM;
    // Attack: io_uring performs I/O that bypasses seccomp.
    io_uring_setup_is_refused => "io_uring_setup", 425, [1, 0], libc::EPERM;
    // Attack: userfaultfd makes kernel races easy to win.
    userfaultfd_is_refused => "userfaultfd", 323, [1], libc::EPERM;
    // Attack: load a kernel module from memory.
    init_module_is_refused => "init_module", 175, [0, 0, 0], libc::EPERM;
    // Attack: load a kernel module from a descriptor.
    finit_module_is_refused => "finit_module", 313, [0, 0, 0], libc::EPERM;
    // Attack: unload a kernel module.
    delete_module_is_refused => "delete_module", 176, [0, 0], libc::EPERM;
    // Attack: boot another kernel.
    kexec_load_is_refused => "kexec_load", 246, [0, 0, 0, 0], libc::EPERM;
    // Attack: boot another kernel from a file.
    kexec_file_load_is_refused => "kexec_file_load", 320, [-1, -1, 0, 0, 0], libc::EPERM;
    // Attack: reboot the host.
    reboot_is_refused => "reboot", 169, [0xfee1_deadu32, 672_274_793, 0x0123_4567, 0], libc::EPERM;
    // Attack: personality flags (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) weaken exploits' targets.
    personality_is_refused => "personality", 135, [0xffff_ffffu32], libc::EPERM;
    // Attack: open files by handle, bypassing the path walk (the "shocker" escape).
    open_by_handle_at_is_refused => "open_by_handle_at", 304, [0, 0, 0], libc::EPERM;
    // Attack: chroot to confuse path resolution.
    chroot_is_refused => "chroot", 161, [0], libc::EPERM;
    // Attack: clone into new user and network namespaces.
    clone_with_namespace_flags_is_refused => "clone", 56, [CLONE_NEWUSER | CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0], libc::EPERM;
    // Attack: clone3 hides its flags in memory the filter cannot read: it must be ENOSYS.
    clone3_is_unavailable => "clone3", 435, [0, 0], libc::ENOSYS;
    // Attack: set a new uid directly (bypassing Python's wrapper).
    setuid_syscall_is_refused => "setuid", 105, [1000], libc::EPERM;
    // Attack: grant ourselves capabilities.
    capset_is_refused => "capset", 126, [0, 0], libc::EPERM;
    // Attack: the new mount API: clone a mount tree.
    open_tree_is_refused => "open_tree", 428, [-100, 0, 0], libc::EPERM;
    // Attack: the new mount API: attach a mount.
    move_mount_is_refused => "move_mount", 429, [-1, 0, -1, 0, 0], libc::EPERM;
    // Attack: the new mount API: create a filesystem context.
    fsopen_is_refused => "fsopen", 430, [0, 0], libc::EPERM;
    // Attack: steal a descriptor from another process.
    pidfd_getfd_is_refused => "pidfd_getfd", 438, [0, 0, 0], libc::EPERM;
    // Attack: submit io_uring work.
    io_uring_enter_is_refused => "io_uring_enter", 426, [-1, 0, 0, 0, 0, 0], libc::EPERM;
    // Attack: enable swap on a file.
    swapon_is_refused => "swapon", 167, [0, 0], libc::EPERM;
    // Attack: read the kernel log.
    syslog_is_refused => "syslog", 103, [3, 0, 0], libc::EPERM;
    // Attack: create a device node.
    mknodat_is_refused => "mknodat", 259, [-100, 0, 0o20600, 0x0101], libc::EPERM;
    // Attack: compare kernel objects of other processes (info leak, KASLR).
    kcmp_is_refused => "kcmp", 312, [1, 1, 0, 0, 0], libc::EPERM;
    // Attack: raise the I/O privilege level (direct port access).
    iopl_is_refused => "iopl", 172, [3], libc::EPERM;
    // Attack: watch the whole filesystem with fanotify.
    fanotify_init_is_refused => "fanotify_init", 300, [0, 0], libc::EPERM;
    // Attack: set the system clock.
    clock_settime_is_refused => "clock_settime", 227, [0, 0], libc::EPERM;
    // Attack: obtain file handles for open_by_handle_at.
    name_to_handle_at_is_refused => "name_to_handle_at", 303, [-100, 0, 0, 0, 0], libc::EPERM;
}

// ============================================================ resources

// Attack: a fork bomb exhausts the host's process table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    let (sb, _dir) = sandbox_with(short_timeout).await;
    let mut sibling = sb.acquire().await.expect("sibling");
    assert_answers(&mut sibling).await;
    let baseline = jail_processes(&sb).len();
    assert_eq!(baseline, 2, "zygote + sibling");
    let mut task = sb.task();

    // inside
    let bomb = "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass";
    let started = Instant::now();
    let cell = run(&mut task, bomb).await;
    assert!(
        matches!(cell.status, CellStatus::Timeout | CellStatus::Error),
        "the fork bomb must end as a timeout or an error: {cell:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the bomb was not stopped in time"
    );

    // outside: the jail's processes go back to the baseline within seconds
    let settled = wait_until(Duration::from_secs(10), || {
        jail_processes(&sb).len() <= baseline
    })
    .await;
    assert!(
        settled,
        "jail processes did not return to {baseline}: {:?}",
        jail_processes(&sb)
    );
    assert_answers(&mut sibling).await;
    assert!(host_pid_alive(sibling.host_pid));
    let next = run(&mut task, "len(df)").await;
    assert_ok(&next);
    assert_eq!(next.result.as_deref(), Some("6"));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: allocate far more memory than allowed to push the host into OOM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_killed_as_oom() {
    let (sb, _dir) = sandbox_with(|l| l.memory_bytes = 256 << 20).await;
    let mut sibling = sb.acquire().await.expect("sibling");
    exec(&mut sibling, "keep = 'sibling state'").await;
    let mut task = sb.task();

    // inside
    let cell = run(
        &mut task,
        "import numpy as np\nblob = np.ones(2 << 30, dtype=np.uint8)\nprint(int(blob.sum()))",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Oom, "{cell:#?}");
    let touched = run(
        &mut task,
        "b = bytearray(2 << 30)\nfor i in range(0, len(b), 4096): b[i] = 1",
    )
    .await;
    assert_eq!(touched.status, CellStatus::Oom, "{touched:#?}");

    // outside
    let kept = exec(&mut sibling, "keep").await;
    assert_eq!(
        kept.result.as_deref(),
        Some("'sibling state'"),
        "the sibling lost its state: {kept:#?}"
    );
    let next = run(&mut task, "len(df)").await;
    assert_eq!(next.result.as_deref(), Some("6"), "{next:#?}");
    assert_eq!(
        sb.faults()
            .iter()
            .filter(|f| f.cause == CellStatus::Oom)
            .count(),
        2
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: spin the CPU forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spin_times_out_and_the_worker_is_replaced() {
    let (sb, _dir) = sandbox_with(|l| l.cell_timeout = Duration::from_secs(3)).await;
    let mut task = sb.task();
    assert_ok(&run(&mut task, "state = 'before'").await);
    let killed = task.worker().expect("worker").host_pid;

    // inside
    let started = Instant::now();
    let cell = run(&mut task, "while True: pass").await;
    assert_eq!(cell.status, CellStatus::Timeout, "{cell:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let next = run(&mut task, "'state' in globals(), len(df)").await;
    assert_ok(&next);
    assert_eq!(
        next.result.as_deref(),
        Some("(False, 6)"),
        "a fresh worker, state gone: {next:#?}"
    );

    // outside
    assert_eq!(task.restarts(), 1);
    assert_ne!(task.worker().expect("worker").host_pid, killed);
    let gone = wait_until(Duration::from_secs(5), || !host_pid_alive(killed)).await;
    assert!(gone, "the killed worker (host pid {killed}) still runs");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: flood stdout from Python to exhaust the supervisor's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_output_flood_is_truncated() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let cell = run(&mut task, "chunk = 'x' * (1 << 20)\nfor _ in range(20):\n    print(chunk)\nimport sys\nfor _ in range(5):\n    sys.stderr.write(chunk)").await;

    // outside
    assert_ok(&cell);
    assert!(
        cell.stdout.len() <= 64 * 1024 + 100,
        "stdout kept {} bytes",
        cell.stdout.len()
    );
    assert!(
        cell.stderr.len() <= 64 * 1024 + 100,
        "stderr kept {} bytes",
        cell.stderr.len()
    );
    assert!(
        cell.stdout.contains("bytes truncated]"),
        "no truncation note"
    );
    assert!(
        cell.stdout_truncated >= (20 << 20) - 64 * 1024,
        "stdout_truncated {}",
        cell.stdout_truncated
    );
    assert!(cell.stderr_truncated > 0);
    let next = run(&mut task, "print('after'); 1").await;
    assert_eq!(next.stdout, "after\n");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: flood stdout at the descriptor level (C code, os.write, children).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_output_flood_is_truncated() {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = r#"
import os, subprocess, sys
chunk = b"y" * (1 << 20)
for _ in range(20):
    os.write(1, chunk)
for _ in range(3):
    os.write(2, chunk)
subprocess.run([sys.executable, "-c", "import os; os.write(1, b'z' * (4 << 20))"], check=True)
"#;
    let cell = run(&mut task, code).await;

    // outside
    assert_ok(&cell);
    assert!(
        cell.stdout.len() <= 64 * 1024 + 100,
        "stdout kept {} bytes",
        cell.stdout.len()
    );
    assert!(
        cell.stderr.len() <= 64 * 1024 + 100,
        "stderr kept {} bytes",
        cell.stderr.len()
    );
    assert!(cell.stdout.contains("bytes truncated]"));
    assert!(
        cell.stdout_truncated >= (24 << 20) - 64 * 1024,
        "stdout_truncated {}",
        cell.stdout_truncated
    );
    assert!(cell.stderr_truncated > 0);
    let next = run(&mut task, "print('after')").await;
    assert_eq!(next.stdout, "after\n", "{next:#?}");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: fill /tmp (host memory, since tmpfs) until the disk is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_fill_stops_at_its_cap() {
    let (sb, _dir) = sandbox_with(|l| l.tmp_bytes = 16 << 20).await;
    let mut task = sb.task();

    // inside
    let code = r#"
import errno, json
written = 0
chunk = b"\0" * (1 << 20)
try:
    with open("/tmp/fill", "wb") as f:
        while written < (1 << 30):
            f.write(chunk)
            f.flush()
            written += len(chunk)
    failure = None
except OSError as exc:
    failure = exc.errno
print(json.dumps({"written": written, "errno": failure}))
"#;
    let cell = run(&mut task, code).await;
    let obs = observed(&cell);
    let errno = obs["errno"].as_i64().expect("the write loop must fail");
    assert!(
        errno == i64::from(libc::ENOSPC) || errno == i64::from(libc::EFBIG),
        "{obs}"
    );
    assert!(obs["written"].as_i64().unwrap() <= 16 << 20, "{obs}");
    let raised = run(&mut task, "open('/tmp/more', 'wb').write(b'x' * (1 << 20))").await;
    assert_eq!(raised.status, CellStatus::Error, "{raised:#?}");
    assert_eq!(
        raised.error.as_ref().unwrap()["type"],
        "OSError",
        "{raised:#?}"
    );

    // outside
    let next = run(
        &mut task,
        "import os; os.unlink('/tmp/fill'); open('/tmp/ok', 'w').write('ok')",
    )
    .await;
    assert_ok(&next);
    assert_eq!(next.result.as_deref(), Some("2"));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// ============================================================ signals and other workers

// Attack: kill or stop the zygote (pid 1), by pid and by pidfd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_zygote_is_refused() {
    let (sb, _dir) = sandbox().await;
    let zygote = sb.zygote_host_pid().expect("zygote");
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
def pidfd_kill():
    fd = os.pidfd_open(1)
    signal.pidfd_send_signal(fd, signal.SIGKILL)
report(
    sigkill=attempt(os.kill, 1, signal.SIGKILL),
    sigterm=attempt(os.kill, 1, signal.SIGTERM),
    sigstop=attempt(os.kill, 1, signal.SIGSTOP),
    sigint=attempt(os.kill, 1, signal.SIGINT),
    sigusr1=attempt(os.kill, 1, signal.SIGUSR1),
    killpg=attempt(os.killpg, 1, signal.SIGKILL),
    pidfd=attempt(pidfd_kill),
)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    for probe in [
        "sigkill", "sigterm", "sigstop", "sigint", "sigusr1", "pidfd",
    ] {
        assert_refused_with(&obs[probe], probe, &[libc::EPERM]);
    }
    assert_refused_with(&obs["killpg"], "killpg", &[libc::EPERM, libc::ESRCH]);

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(host_pid_alive(zygote), "the zygote is dead or stopped");
    assert_eq!(sb.zygote_host_pid(), Some(zygote));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: kill(-1, SIGKILL): every process the worker may signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_spares_the_sibling_and_the_zygote() {
    let (sb, _dir) = sandbox().await;
    let mut sibling = sb.acquire().await.expect("sibling");
    exec(&mut sibling, "keep = 'alive'").await;
    let mut attacker = sb.acquire().await.expect("attacker");

    // inside
    // kill(-1) reports success when every target refused with EPERM (the
    // kernel counts them), so the proof is the state of the others afterwards.
    let code = payload(
        r#"
def state(pid):
    return read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0]
tries = {
    "kill_all_stop": attempt(os.kill, -1, signal.SIGSTOP),
    "kill_all_9": attempt(os.kill, -1, signal.SIGKILL),
    "kill_all_15": attempt(os.kill, -1, signal.SIGTERM),
}
time.sleep(0.3)
report(tries=tries, sibling_state=state(@VICTIM@), zygote_state=state(1), still_here=os.getpid())
"#,
        &[("VICTIM", sibling.ns_pid.to_string())],
    );
    let cell = exec(&mut attacker, &code).await;
    let obs = observed(&cell);
    for who in ["sibling_state", "zygote_state"] {
        let state = obs[who].as_str().unwrap_or("?");
        assert!(
            matches!(state, "S" | "R" | "D"),
            "{who} after kill(-1): {state} ({obs})"
        );
    }

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        host_pid_alive(sibling.host_pid),
        "the sibling is dead or stopped"
    );
    let kept = exec(&mut sibling, "keep").await;
    assert_eq!(kept.result.as_deref(), Some("'alive'"), "{kept:#?}");
    assert_answers(&mut attacker).await;
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: kill or stop a sibling worker (another task) by its pid or group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_sibling_is_refused() {
    let (sb, _dir) = sandbox().await;
    let mut sibling = sb.acquire().await.expect("sibling");
    exec(&mut sibling, "keep = 'alive'").await;
    let mut attacker = sb.acquire().await.expect("attacker");

    // inside
    let code = payload(
        r#"
victim = @VICTIM@
def pidfd_kill():
    fd = os.pidfd_open(victim)
    signal.pidfd_send_signal(fd, signal.SIGKILL)
report(
    visible=os.path.exists(f"/proc/{victim}"),
    sigkill=attempt(os.kill, victim, signal.SIGKILL),
    sigstop=attempt(os.kill, victim, signal.SIGSTOP),
    sigterm=attempt(os.kill, victim, signal.SIGTERM),
    killpg=attempt(os.killpg, victim, signal.SIGKILL),
    pidfd=attempt(pidfd_kill),
)
"#,
        &[("VICTIM", sibling.ns_pid.to_string())],
    );
    let cell = exec(&mut attacker, &code).await;
    let obs = observed(&cell);
    assert_eq!(
        obs["visible"], true,
        "the sibling is in the jail's /proc: {obs}"
    );
    for probe in ["sigkill", "sigstop", "sigterm", "killpg", "pidfd"] {
        assert_refused_with(&obs[probe], probe, &[libc::EPERM]);
    }

    // outside
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        host_pid_alive(sibling.host_pid),
        "the sibling is dead or stopped"
    );
    let kept = exec(&mut sibling, "keep").await;
    assert_eq!(kept.result.as_deref(), Some("'alive'"), "{kept:#?}");
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: read a sibling's or the zygote's memory, environment and
// descriptors through /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_and_zygote_memory_is_unreadable() {
    let secret = random_secret();
    let (sb, _dir) = sandbox().await;
    let mut sibling = sb.acquire().await.expect("sibling");
    exec(
        &mut sibling,
        &format!(
            "secret = {}\nimport os\nos.environ['TOKEN'] = secret",
            lit(&secret)
        ),
    )
    .await;
    let mut attacker = sb.acquire().await.expect("attacker");

    // inside
    let code = payload(
        r#"
victim = @VICTIM@
def mem(pid):
    maps = read(f"/proc/{pid}/maps")
    return maps[:100]
def mem_read(pid):
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(0x400000)
        return f.read(64)
def fd_links(pid):
    return [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
def fd_reopen(pid):
    return [read(f"/proc/{pid}/fd/{n}", "rb")[:100] for n in os.listdir(f"/proc/{pid}/fd") if n != "0"]
probes = {}
for pid in (victim, 1):
    probes[f"{pid}/mem"] = attempt(mem_read, pid)
    probes[f"{pid}/maps"] = attempt(mem, pid)
    probes[f"{pid}/environ"] = attempt(read, f"/proc/{pid}/environ", "rb")
    probes[f"{pid}/fd_links"] = attempt(fd_links, pid)
    probes[f"{pid}/fd_reopen"] = attempt(fd_reopen, pid)
    probes[f"{pid}/cwd"] = attempt(os.listdir, f"/proc/{pid}/cwd")
    probes[f"{pid}/stack"] = attempt(read, f"/proc/{pid}/stack")
    probes[f"{pid}/smaps"] = attempt(read, f"/proc/{pid}/smaps")
report(probes=probes)
"#,
        &[("VICTIM", sibling.ns_pid.to_string())],
    );
    let cell = exec(&mut attacker, &code).await;

    // outside (first: a leak is the headline)
    assert_secret_absent(&cell, &secret);
    let obs = observed(&cell);
    for (what, probe) in obs["probes"].as_object().expect("probes") {
        assert_refused_with(probe, what, &[libc::EACCES, libc::EPERM]);
    }
    assert!(host_pid_alive(sibling.host_pid));
    let kept = exec(&mut sibling, "secret[:7]").await;
    assert_eq!(kept.result.as_deref(), Some("'SECRET-'"));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: a sibling that made itself dumpable again (PR_SET_DUMPABLE 1) is
// still out of reach: the per-worker Landlock domain forbids ptrace-class
// access across workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumpable_sibling_memory_is_still_unreadable() {
    let secret = random_secret();
    let (sb, _dir) = sandbox().await;
    let mut sibling = sb.acquire().await.expect("sibling");
    let setup = payload(
        r#"
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(4, 1, 0, 0, 0) == 0, ctypes.get_errno()  # PR_SET_DUMPABLE
assert libc.prctl(3, 0, 0, 0, 0) == 1  # PR_GET_DUMPABLE
secret = @SECRET@
os.environ["TOKEN"] = secret
"#,
        &[("SECRET", lit(&secret))],
    );
    assert_ok(&exec(&mut sibling, &setup).await);
    let mut attacker = sb.acquire().await.expect("attacker");

    // inside
    let code = payload(
        r#"
victim = @VICTIM@
def scan_mem():
    found = []
    with open(f"/proc/{victim}/maps") as maps, open(f"/proc/{victim}/mem", "rb") as mem:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if "rw" not in line.split()[1]:
                continue
            try:
                mem.seek(lo)
                data = mem.read(min(hi - lo, 1 << 22))
            except OSError:
                continue
            i = data.find(b"SECRET-")
            if i >= 0:
                found.append(data[i:i + 39].decode(errors="replace"))
    return found
report(
    status=attempt(read, f"/proc/{victim}/status"),
    scan=attempt(scan_mem),
    environ=attempt(read, f"/proc/{victim}/environ", "rb"),
    fd_links=attempt(lambda: [os.readlink(f"/proc/{victim}/fd/{n}") for n in os.listdir(f"/proc/{victim}/fd")]),
    fd_reopen=attempt(lambda: [read(f"/proc/{victim}/fd/{n}", "rb")[:100] for n in os.listdir(f"/proc/{victim}/fd") if n != "0"]),
    cwd=attempt(os.listdir, f"/proc/{victim}/cwd"),
)
"#,
        &[("VICTIM", sibling.ns_pid.to_string())],
    );
    let cell = exec(&mut attacker, &code).await;

    // outside (first)
    assert_secret_absent(&cell, &secret);
    let obs = observed(&cell);
    assert_eq!(obs["status"]["ok"], true, "the sibling is visible: {obs}");
    for probe in ["scan", "environ", "fd_links", "fd_reopen", "cwd"] {
        assert_refused_with(&obs[probe], probe, &[libc::EACCES, libc::EPERM]);
    }
    assert!(host_pid_alive(sibling.host_pid));
    assert_answers(&mut sibling).await;
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: leave files in another task's way: its working directory, HOME and
// TMPDIR (/scratch/task-<id>, private per task), or read what another task
// wrote there. (/tmp and /dev/shm are shared by the tasks of one sandbox on
// purpose: code that names /tmp explicitly must work; docs/security.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_tasks_do_not_share_scratch_directories() {
    let secret = random_secret();
    let (sb, _dir) = sandbox().await;
    let mut first = sb.acquire().await.expect("first task");
    let plant = payload(
        r#"
import tempfile
write("answer.txt", @SECRET@)
write(os.path.join(tempfile.gettempdir(), "answer2.txt"), @SECRET@)
report(cwd=os.getcwd(), tmpdir=tempfile.gettempdir(), home=os.environ["HOME"])
"#,
        &[("SECRET", lit(&secret))],
    );
    let planted = exec(&mut first, &plant).await;
    assert_ok(&planted);
    let first_dir = observed(&planted)["cwd"].as_str().unwrap_or("").to_string();
    assert!(first_dir.starts_with("/scratch/task-"), "{first_dir}");
    assert_eq!(observed(&planted)["tmpdir"], observed(&planted)["cwd"]);
    assert_eq!(observed(&planted)["home"], observed(&planted)["cwd"]);
    let mut second = sb.acquire().await.expect("second task");

    // inside
    let code = payload(
        r#"
report(
    own=os.getcwd(),
    list_root=attempt(os.listdir, "/scratch"),
    list_first=attempt(os.listdir, @FIRST@),
    read_first=attempt(read, @FIRST@ + "/answer.txt"),
    read_first_tmp=attempt(read, @FIRST@ + "/answer2.txt"),
    write_first=attempt(write, @FIRST@ + "/poison.txt", "x"),
)
"#,
        &[("FIRST", lit(&first_dir))],
    );
    let cell = exec(&mut second, &code).await;

    // outside
    assert_secret_absent(&cell, &secret);
    let obs = observed(&cell);
    assert_ne!(obs["own"], serde_json::json!(first_dir), "{obs}");
    for probe in [
        "list_root",
        "list_first",
        "read_first",
        "read_first_tmp",
        "write_first",
    ] {
        assert_refused_with(&obs[probe], probe, &[libc::EACCES, libc::EPERM]);
    }
    // The first task still has its files, untouched.
    let check = exec(&mut first, "print(open('answer.txt').read() == open(os.path.join(__import__('tempfile').gettempdir(), 'answer2.txt')).read(), os.path.exists('poison.txt'))").await;
    assert_eq!(check.stdout, "True False\n", "{check:?}");
    // A finished task's scratch directory is removed when it exits (seen
    // from the host through the zygote's root).
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let on_host = format!("/proc/{zygote}/root{first_dir}");
    assert!(std::path::Path::new(&on_host).is_dir(), "{on_host}");
    drop(first);
    let mut removed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !std::path::Path::new(&on_host).exists() {
            removed = true;
            break;
        }
    }
    assert!(removed, "{on_host} outlived its task");
    assert_answers(&mut second).await;
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// Attack: a descriptor of ANOTHER sandbox run by the same supervisor (its
// zygote's control socket) reaches this jail. With it a cell can order the
// other zygote to fork a worker, take that worker's socket from the reply,
// run code in the other jail (another dataset) and shut that zygote down.
//
// The attacker scans its descriptors for sockets it did not create and drives
// them with the zygote protocol. A regression here would let it reach the
// sandboxes of tests running at the same time; the failure would be real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sandboxes_control_sockets_are_out_of_reach() {
    // The victim: another dataset with a secret in it, in its own jail.
    let secret = random_secret();
    let victim_dir = world_readable_dir();
    let victim_csv = write_csv(
        victim_dir.path(),
        "data.csv",
        &format!("id,token\n1,{secret}\n"),
    );
    let victim = Sandbox::start(options(&victim_csv))
        .await
        .expect("the victim starts");
    let victim_zygote = victim.zygote_host_pid().expect("victim zygote");
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();

    // inside
    let code = payload(
        r#"
import gc, struct
own = {o.fileno() for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() >= 0}
foreign = []
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    target = attempt(os.readlink, f"/proc/self/fd/{fd}")
    if target["ok"] and target["value"].startswith("socket:") and fd not in own:
        foreign.append(fd)

def frame(message):
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body

def recv_with_fds(sock):
    data, ancillary, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64))
    fds = []
    for level, kind, blob in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(blob) - len(blob) % 4
            fds += list(struct.unpack(f"{usable // 4}i", blob[:usable]))
    return data, fds

stolen, steps = [], []
for fd in foreign:
    control = socket.socket(fileno=os.dup(fd))
    control.settimeout(2)
    for round_no in range(5):
        try:
            control.sendall(frame({"type": "fork", "worker_id": 900000 + round_no, "limits": None}))
            data, fds = recv_with_fds(control)
            steps.append({"fd": fd, "reply": data[4:200].decode(errors="replace"), "fds": len(fds)})
        except OSError as exc:
            steps.append({"fd": fd, "error": repr(exc)})
            continue
        for worker_fd in fds:
            worker = socket.socket(fileno=worker_fd)
            worker.settimeout(5)
            try:
                worker.recv(1 << 16)  # the hijacked worker's hello
                worker.sendall(frame({"type": "exec", "cell": 1, "code": "open('/data/data.csv').read()"}))
                time.sleep(0.5)
                stolen.append(worker.recv(1 << 20).decode(errors="replace"))
            except OSError as exc:
                steps.append({"worker_error": repr(exc)})
        if stolen:
            break
    try:
        control.sendall(frame({"type": "shutdown"}))
        steps.append({"fd": fd, "sent": "shutdown"})
    except OSError as exc:
        steps.append({"fd": fd, "shutdown_error": repr(exc)})
report(own=sorted(own), foreign=foreign, stolen=stolen, steps=steps)
"#,
        &[],
    );
    let cell = run(&mut task, &code).await;
    let obs = observed(&cell);
    eprintln!("attacker observations: {obs}");

    // outside
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_alive = host_pid_alive(victim_zygote);
    let victim_answers = match victim.acquire().await {
        Ok(mut w) => w.exec("6 * 7").await.ok().and_then(|c| c.result) == Some("42".to_string()),
        Err(_) => false,
    };
    assert!(
        !everything(&cell).contains(&secret),
        "CROSS-SANDBOX DATA THEFT: the attacker read the victim's dataset through a leaked control socket: {obs}"
    );
    assert!(
        victim_alive && victim_answers,
        "CROSS-SANDBOX DENIAL OF SERVICE: the victim's zygote (host pid {victim_zygote}) was shut down through a leaked control socket: {obs}"
    );
    assert_eq!(
        obs["foreign"],
        serde_json::json!([]),
        "another sandbox's sockets reached the jail: {obs}"
    );
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
    victim.shutdown().await;
}
