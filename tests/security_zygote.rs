//! The zygote and the supervisor against what a task leaves behind and
//! against races on the host (security issue 17): one jail per test, each
//! asserted from the INSIDE (what the payload observed) and from the OUTSIDE
//! (the zygote's host pid, the jail's files seen through
//! `/proc/<zygote>/root`, host processes).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::attack::{
    assert_answers, assert_sandbox_healthy, exec, host_pid_alive, jail_processes, observed,
    random_secret, wait_until,
};
use common::*;
use csv_agent::sandbox::{Sandbox, SandboxError};

// ------------------------------------------------------------------ helpers

fn payload(body: &str) -> String {
    common::attack::payload(body, &[])
}

/// The jail's `/scratch`, seen from the host through the zygote's root.
fn scratch_on_host(zygote: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{zygote}/root/scratch"))
}

/// Entries of a host directory (empty when it cannot be read).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// ============================================================ A: clean-up

// Attack: a task builds a directory tree 1,500 levels deep in its scratch
// directory and ends. The zygote's clean-up used to recurse into it
// (shutil.rmtree) and die of RecursionError, taking every later task of the
// sandbox with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_scratch_tree_does_not_take_the_zygote_down() {
    let (sb, _dir) = sandbox().await;
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let mut worker = sb.acquire().await.expect("a worker");
    let obs = observed(
        &exec(
            &mut worker,
            &payload(
                r#"
top = os.getcwd()
fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
depth = 0
for _ in range(1500):
    os.mkdir("d", dir_fd=fd)
    below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = below
    depth += 1
open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w").write("deep")
os.close(fd)
# What the zygote's old clean-up did, tried here: it recursed and failed.
import shutil
rmtree = attempt(shutil.rmtree, top + "/d")
report(top=top, depth=depth, rmtree=rmtree, limit=sys.getrecursionlimit())
"#,
            ),
        )
        .await,
    );
    let top = obs["top"]
        .as_str()
        .expect("the task's directory")
        .to_string();
    assert!(top.starts_with("/scratch/task-"), "{obs}");
    assert_eq!(obs["depth"], 1500, "{obs}");
    assert_eq!(obs["rmtree"]["type"], "RecursionError", "{obs}");
    assert!(
        obs["limit"].as_u64().unwrap_or(0) < 1500,
        "deeper than the recursion limit: {obs}"
    );
    let task_name = top.trim_start_matches("/scratch/").to_string();
    let on_host = scratch_on_host(zygote).join(&task_name);
    assert!(on_host.is_dir(), "{}", on_host.display());

    // The task ends: the zygote reaps the worker and cleans up.
    drop(worker);

    // A fresh worker of the same sandbox answers, from the same zygote.
    let mut fresh = sb.acquire().await.expect("the zygote still forks");
    assert_answers(&mut fresh).await;
    assert_eq!(
        sb.zygote_host_pid(),
        Some(zygote),
        "the zygote was replaced"
    );
    assert!(
        host_pid_alive(zygote),
        "the zygote (host pid {zygote}) died"
    );

    // The tree is gone, from its place at once and from the trash eventually.
    assert!(
        !on_host.exists(),
        "{} is still in place after its task ended",
        on_host.display()
    );
    let trash = scratch_on_host(zygote).join(".trash");
    let emptied = wait_until(Duration::from_secs(30), || entries(&trash).is_empty()).await;
    assert!(emptied, "the trash still holds {:?}", entries(&trash));
    // Inside: the later cell sees no trace of it and no trash it could enter.
    let obs = observed(
        &exec(
            &mut fresh,
            &payload(&format!(
                r#"
report(old=attempt(os.listdir, {top:?}), trash=attempt(os.listdir, "/scratch/.trash"))
"#
            )),
        )
        .await,
    );
    assert_eq!(obs["old"]["ok"], false, "{obs}");
    assert_eq!(obs["trash"]["ok"], false, "{obs}");
    assert_sandbox_healthy(&sb).await;
    assert_eq!(sb.zygote_host_pid(), Some(zygote));
    sb.shutdown().await;
}

// Attack: a task leaves directories and files it took every permission from
// (mode 0000), a directory it can no longer write (0500), and symlinks that
// point out of its tree (/tmp, a file in /tmp, /data, /). Clean-up must
// delete the tree anyway, follow no symlink, and touch nothing outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_directories_and_symlinks_out_are_cleaned_up_without_following() {
    let (sb, _dir) = sandbox().await;
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let mut worker = sb.acquire().await.expect("a worker");
    let obs = observed(
        &exec(
            &mut worker,
            &payload(
                r#"
top = os.getcwd()
os.umask(0o022)  # shared with the next task on purpose (each worker is a uid of its own)
os.makedirs("/tmp/keep-dir/inner", exist_ok=True)
open("/tmp/keep-dir/inner/keep.txt", "w").write("keep me")
open("/tmp/keep.txt", "w").write("keep me too")
os.symlink("/tmp/keep-dir", "link-to-tmp-dir")
os.symlink("/tmp/keep.txt", "link-to-tmp-file")
os.symlink("/data", "link-to-data")
os.symlink("/", "link-to-root")
os.makedirs("a/b/c")
open("a/b/c/file", "w").write("x")
os.symlink("/tmp/keep-dir", "a/b/c/deep-link")
os.chmod("a/b/c/file", 0)
os.chmod("a/b/c", 0)
os.chmod("a/b", 0o500)
os.makedirs("z/locked")
os.chmod("z/locked", 0)
os.chmod("z", 0)
os.chmod(top, 0o500)
report(top=top, listing=sorted(os.listdir(top)), mode=oct(os.stat(top).st_mode & 0o777))
"#,
            ),
        )
        .await,
    );
    let top = obs["top"]
        .as_str()
        .expect("the task's directory")
        .to_string();
    assert_eq!(obs["mode"], "0o500", "{obs}");
    let on_host = scratch_on_host(zygote).join(top.trim_start_matches("/scratch/"));
    assert!(on_host.exists(), "{}", on_host.display());
    let data_before = std::fs::read(format!("/proc/{zygote}/root{}", sb.csv_path_in_jail()))
        .expect("the dataset, from the host");

    drop(worker);

    let mut fresh = sb.acquire().await.expect("the zygote still forks");
    assert_answers(&mut fresh).await;
    let trash = scratch_on_host(zygote).join(".trash");
    let gone = wait_until(Duration::from_secs(30), || {
        !on_host.exists() && entries(&trash).is_empty()
    })
    .await;
    assert!(
        gone,
        "left behind: in place {}, in the trash {:?}",
        on_host.exists(),
        entries(&trash)
    );
    // Inside: every symlink target survived, untouched.
    let obs = observed(
        &exec(
            &mut fresh,
            &payload(
                r#"
report(
    dir=attempt(lambda: open("/tmp/keep-dir/inner/keep.txt").read()),
    file=attempt(lambda: open("/tmp/keep.txt").read()),
    mode=oct(os.stat("/tmp/keep-dir").st_mode & 0o777),
    rows=len(df),
)
"#,
            ),
        )
        .await,
    );
    assert_eq!(obs["dir"]["value"], "keep me", "{obs}");
    assert_eq!(obs["file"]["value"], "keep me too", "{obs}");
    assert_eq!(obs["mode"], "0o755", "{obs}");
    assert_eq!(obs["rows"], 6, "{obs}");
    // Outside: the dataset is unchanged and the zygote is the same.
    let data_after = std::fs::read(format!("/proc/{zygote}/root{}", sb.csv_path_in_jail()))
        .expect("the dataset, from the host");
    assert_eq!(data_before, data_after);
    assert_eq!(sb.zygote_host_pid(), Some(zygote));
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}

// A fork the zygote cannot make (the jail's process limit is used up by a
// task) is reported as a transient fork_failed, retried by the supervisor,
// and reported after the last attempt; the zygote serves on, and once the
// task is gone, forks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_fork_failure_is_retried_and_the_zygote_lives_on() {
    // Single-uid mode: there the zygote and its workers share one process
    // count, which is how a worker can make a fork fail at all (with its own
    // uid it cannot: tests/security_workers.rs).
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let mut opts = options_with(&csv, |l| {
        l.nproc = 12;
        l.pids = 64;
    });
    opts.worker_uids = false;
    let sb = Sandbox::start(opts).await.expect("sandbox starts");
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let mut hog = sb.acquire().await.expect("a worker");
    let obs = observed(
        &exec(
            &mut hog,
            &payload(
                r#"
import subprocess
children, error = [], None
while len(children) < 64:
    try:
        children.append(subprocess.Popen(["/usr/bin/sleep", "300"] if os.path.exists("/usr/bin/sleep") else [sys.executable, "-c", "import time; time.sleep(300)"]))
    except OSError as exc:
        error = exc.errno
        break
report(children=len(children), error=error)
"#,
            ),
        )
        .await,
    );
    assert_eq!(
        obs["error"],
        libc::EAGAIN,
        "the process limit was not reached: {obs}"
    );
    let error = sb
        .acquire()
        .await
        .expect_err("no process is left for a worker");
    let text = error.to_string();
    assert!(
        matches!(
            error,
            SandboxError::Fork {
                transient: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(text.contains("tried 4 times"), "{text}");
    assert!(host_pid_alive(zygote), "the zygote died");
    drop(hog);
    // The hog's processes die with its cgroup; the next fork works.
    let healthy = wait_until(Duration::from_secs(20), || jail_processes(&sb).len() == 1).await;
    assert!(healthy, "left in the jail: {:?}", jail_processes(&sb));
    assert_sandbox_healthy(&sb).await;
    assert_eq!(sb.zygote_host_pid(), Some(zygote));
    sb.shutdown().await;
}

// ============================================================ B: Landlock fails closed

/// A path Landlock refuses in a rule (nsfs): the worker's own domain then
/// fails for real, in landlock_add_rule.
const REFUSED_RULE_PATH: &str = "/proc/self/ns/net";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_its_own_landlock_domain_is_refused() {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let mut opts = options(&csv);
    opts.test_hooks.extra_worker_paths = vec![REFUSED_RULE_PATH.to_string()];
    let sb = Sandbox::start(opts).await.expect("sandbox starts");
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let error = sb.acquire().await.expect_err("the worker must be refused");
    let text = error.to_string();
    assert!(
        matches!(error, SandboxError::WorkerScope { .. }),
        "{error:?}"
    );
    assert!(text.contains("landlock_add_rule"), "{text}");
    assert!(text.contains(REFUSED_RULE_PATH), "{text}");
    assert!(text.contains("--allow-degraded"), "{text}");
    // Outside: the refused worker is killed; only the zygote is left.
    let alone = wait_until(Duration::from_secs(10), || {
        jail_processes(&sb) == vec![zygote]
    })
    .await;
    assert!(alone, "left in the jail: {:?}", jail_processes(&sb));
    assert!(host_pid_alive(zygote));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_degraded_a_worker_without_its_own_domain_runs_with_a_warning() {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let mut opts = options(&csv);
    opts.allow_degraded = true;
    opts.test_hooks.extra_worker_paths = vec![REFUSED_RULE_PATH.to_string()];
    let sb = Sandbox::start(opts).await.expect("sandbox starts");
    let mut worker = sb.acquire().await.expect("accepted with allow_degraded");
    assert!(!worker.scope.applied, "{:?}", worker.scope);
    let reason = worker.scope.error.clone().unwrap_or_default();
    assert!(reason.contains("landlock_add_rule"), "{reason}");
    assert_answers(&mut worker).await;
    sb.shutdown().await;
}

// ============================================================ C: the dataset file

/// Start a sandbox whose dataset path is swapped for a symlink to a secret
/// right after the supervisor opened and checked it. `unlink`: the checked
/// file is deleted (else renamed away and so still on disk).
async fn start_with_swapped_dataset(
    unlink: bool,
) -> (
    Result<Sandbox, SandboxError>,
    String,
    PathBuf,
    [tempfile::TempDir; 2],
) {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let secret_dir = world_readable_dir();
    let secret = random_secret();
    let secret_csv = write_csv(
        secret_dir.path(),
        "secret.csv",
        &format!("secret\n{secret}\n"),
    );
    let mut opts = options(&csv);
    opts.test_hooks.after_dataset_open = Some(Arc::new(move |path: &Path| {
        if unlink {
            std::fs::remove_file(path).expect("remove the checked dataset");
        } else {
            std::fs::rename(path, path.with_extension("moved")).expect("move it away");
        }
        std::os::unix::fs::symlink(&secret_csv, path).expect("plant the symlink");
    }));
    let started = Sandbox::start(opts).await;
    assert!(
        std::fs::symlink_metadata(&csv)
            .expect("the swapped path")
            .file_type()
            .is_symlink(),
        "the path was not swapped"
    );
    (started, secret, csv, [dir, secret_dir])
}

// Race: the dataset's path is swapped for a symlink to a secret after the
// supervisor's check, before the jail exists. The jail mounts the checked
// file (by its descriptor), never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_swapped_for_a_symlink_after_the_check_is_not_followed() {
    let (started, secret, _csv, _dirs) = start_with_swapped_dataset(false).await;
    let sb = started.expect("sandbox starts");
    assert_eq!(sb.zygote().rows, 6, "{:?}", sb.zygote());
    let mut worker = sb.acquire().await.expect("a worker");
    let cell = exec(
        &mut worker,
        &payload(&format!(
            r#"
report(bytes=open({path:?}).read(), columns=list(df.columns), rows=len(df))
"#,
            path = sb.csv_path_in_jail()
        )),
    )
    .await;
    assert!(
        !serde_json::to_string(&cell)
            .expect("json")
            .contains(&secret),
        "THE SECRET LEAKED: {cell:#?}"
    );
    let obs = observed(&cell);
    assert_eq!(obs["bytes"], SMALL_CSV, "{obs}");
    assert_eq!(obs["rows"], 6, "{obs}");
    assert_eq!(obs["columns"][0], "id", "{obs}");
    // Outside: what the jail mounted is the original file.
    let zygote = sb.zygote_host_pid().expect("zygote pid");
    let mounted = std::fs::read_to_string(format!("/proc/{zygote}/root{}", sb.csv_path_in_jail()))
        .expect("the jail's dataset from the host");
    assert_eq!(mounted, SMALL_CSV);
    sb.shutdown().await;
}

// The same race, with the checked file deleted: the kernel will not mount a
// deleted file, so the jail refuses to start — and still never sees the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_deleted_and_replaced_by_a_symlink_is_refused() {
    let (started, secret, csv, _dirs) = start_with_swapped_dataset(true).await;
    let error = started.expect_err("a deleted dataset cannot be mounted");
    let text = format!("{error:?} {error}");
    assert!(!text.contains(&secret), "THE SECRET LEAKED: {text}");
    assert!(text.contains("bind-mounting"), "{text}");
    assert!(text.contains(&csv.display().to_string()), "{text}");
}

// The dataset argument may itself be a symlink: it is resolved once (to the
// file the user meant), then that file is opened without following links.
// Directories on the way do not matter (the jail gets the file by its
// descriptor); the file's own mode bits do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_argument_that_is_a_symlink_is_resolved_once() {
    let links = world_readable_dir();
    let private = tempfile::Builder::new()
        .prefix("csv-agent-private-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let readable = write_csv(private.path(), "data.csv", SMALL_CSV);
    let link = links.path().join("data.csv");
    std::os::unix::fs::symlink(&readable, &link).expect("symlink");
    let sb = Sandbox::start(options(&link))
        .await
        .expect("a symlink to a readable file in a private directory starts");
    let mut worker = sb.acquire().await.expect("a worker");
    let obs = observed(
        &exec(
            &mut worker,
            &payload(&format!(
                "report(bytes=open({:?}).read())",
                sb.csv_path_in_jail()
            )),
        )
        .await,
    );
    assert_eq!(obs["bytes"], SMALL_CSV, "{obs}");
    sb.shutdown().await;

    // A symlink to a file the jail user may not read is refused, naming the
    // resolved file and the reason.
    let unreadable = write_csv(private.path(), "closed.csv", SMALL_CSV);
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let closed_link = links.path().join("closed.csv");
    std::os::unix::fs::symlink(&unreadable, &closed_link).expect("symlink");
    let error = Sandbox::start(options(&closed_link))
        .await
        .expect_err("an unreadable dataset is refused");
    let text = error.to_string();
    assert!(matches!(error, SandboxError::Dataset { .. }), "{error:?}");
    assert!(text.contains("closed.csv"), "{text}");
    assert!(text.contains("cannot read it"), "{text}");
}

// ============================================================ E: kill through pidfds

// A worker's host pid, once it exited and was reaped, may be handed to an
// unrelated process. Killing the (dead) worker must never signal that
// process: the kill goes through the pidfd taken when the worker started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_reaped_worker_never_signals_the_next_owner_of_its_pid() {
    let (sb, _dir) = sandbox().await;
    let mut worker = sb.acquire().await.expect("a worker");
    let host_pid = worker.host_pid;
    assert!(host_pid_alive(host_pid));
    let cell = exec(&mut worker, "import os\nos._exit(3)").await;
    assert_eq!(
        cell.status,
        csv_agent::sandbox::CellStatus::Crashed,
        "{cell:#?}"
    );
    let reaped = wait_until(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{host_pid}")).exists()
    })
    .await;
    assert!(reaped, "the worker (host pid {host_pid}) was not reaped");

    // Hand its pid to an unrelated process (a process-group leader, so a
    // group kill of the old pid would reach it too): set the host's last pid
    // just below it and start one; other processes may win the race, retry.
    let mut impostor = None;
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", host_pid - 1))
            .expect("root may set ns_last_pid");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("sleep starts");
        if child.id() == host_pid {
            impostor = Some(child);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut impostor = impostor.expect("an unrelated process got the worker's old pid");

    assert!(!worker.kill(), "a dead worker's kill must be a no-op");
    drop(worker);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        impostor.try_wait().expect("try_wait").is_none(),
        "the unrelated process that reused pid {host_pid} was killed"
    );
    let _ = impostor.kill();
    let _ = impostor.wait();

    // A live worker is killed through its pidfd.
    let mut live = sb.acquire().await.expect("a worker");
    let live_pid = live.host_pid;
    assert!(live.kill(), "a live worker is signalled");
    let dead = wait_until(Duration::from_secs(10), || !host_pid_alive(live_pid)).await;
    assert!(dead, "the killed worker (host pid {live_pid}) lives on");
    drop(live);
    assert_sandbox_healthy(&sb).await;
    sb.shutdown().await;
}
