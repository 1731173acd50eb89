//! Shared helpers of the integration tests: the image, fixture datasets, and
//! sandboxes whose jail init is the real `csv-agent` binary built by cargo.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use csv_agent::sandbox::image::{self, Image, ImageProgress, ImageSpec};
pub mod attack;

use csv_agent::sandbox::{CellResult, Limits, Sandbox, SandboxOptions};

/// The real binary: the jail init is this executable re-run in init mode.
pub const BIN: &str = env!("CARGO_BIN_EXE_csv-agent");

struct Progress;
impl ImageProgress for Progress {
    fn step(&self, message: &str) {
        eprintln!("image: {message}");
    }
    fn line(&self, _line: &str) {}
}

/// The sandbox image, built on first use (tests in other processes wait on
/// the image lock and then reuse it).
pub fn image() -> Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            image::ensure(&ImageSpec::from_env(), &Progress).expect("the sandbox image builds")
        })
        .clone()
}

/// Run the real binary. The image is built (once, shared by every test)
/// before the binary needs it, so no test pays for the build inside its
/// own timing.
pub fn csv_agent(args: &[&str]) -> std::process::Output {
    let _ = image();
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// A world-readable directory that lives as long as the returned guard.
pub fn world_readable_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("csv-agent-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Write a CSV readable by the jail user.
pub fn write_csv(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write csv");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

pub const SMALL_CSV: &str = "id,group,x,y,when\n\
1,a,1.0,2.0,2024-01-01\n\
2,a,2.0,4.1,2024-01-02\n\
3,b,3.0,6.2,2024-01-03\n\
4,b,4.0,7.9,2024-01-04\n\
5,c,5.0,10.1,2024-01-05\n\
6,c,6.0,12.2,2024-01-06\n";

/// The bundled penguins dataset.
pub fn penguins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/penguins/data.csv")
}

pub fn options(csv: &Path) -> SandboxOptions {
    let mut opts = SandboxOptions::new(csv, image()).expect("options");
    opts.init_program = PathBuf::from(BIN);
    opts.spare_workers = 0;
    opts
}

pub fn options_with(csv: &Path, f: impl FnOnce(&mut Limits)) -> SandboxOptions {
    let mut opts = options(csv);
    f(&mut opts.limits);
    opts
}

/// A sandbox on a small fixture CSV (the directory guard keeps it alive).
pub async fn sandbox() -> (Sandbox, tempfile::TempDir) {
    sandbox_with(|_| {}).await
}

pub async fn sandbox_with(f: impl FnOnce(&mut Limits)) -> (Sandbox, tempfile::TempDir) {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let sb = Sandbox::start(options_with(&csv, f))
        .await
        .expect("sandbox starts");
    (sb, dir)
}

/// Run cells in one task of a fresh sandbox, then shut it down.
pub async fn run_cells(cells: &[&str]) -> Vec<CellResult> {
    let (sb, _dir) = sandbox().await;
    let mut task = sb.task();
    let mut out = Vec::new();
    for c in cells {
        out.push(task.run_cell(c).await.expect("cell runs"));
    }
    sb.shutdown().await;
    out
}

/// Panic with the whole cell when it is not `ok`.
pub fn assert_ok(cell: &CellResult) {
    assert_eq!(
        cell.status,
        csv_agent::sandbox::CellStatus::Ok,
        "cell failed: {cell:#?}"
    );
}

pub fn short_timeout(limits: &mut Limits) {
    limits.cell_timeout = Duration::from_secs(10);
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A path as the `&str` a command line takes.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Keys of episodes and results that say when or how fast something ran,
/// not what ran.
pub const TIMING_KEYS: [&str; 5] = [
    "timestamp",
    "timing",
    "elapsed",
    "elapsed_ms",
    "worker_wait",
];

/// Remove `keys` from every object in `value`, at every depth.
pub fn strip_keys(value: &mut serde_json::Value, keys: &[&str]) {
    match value {
        serde_json::Value::Object(m) => {
            for k in keys {
                m.remove(*k);
            }
            m.values_mut().for_each(|v| strip_keys(v, keys));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| strip_keys(v, keys)),
        _ => {}
    }
}
