//! The real sandbox image: built (or found) in the real cache, then checked
//! from the outside the way the jail will use it — an empty environment, and
//! an unprivileged uid that cannot read `/root`.
//!
//! The first run builds the image (a minute or two, needs pip to reach the
//! package index or a find-links mirror); later runs find it ready.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use csv_agent::sandbox::image::{self, Image, ImageProgress, ImageSpec};

const IMPORT_CHECK: &str =
    "import pandas, sklearn, statsmodels.api; print(pandas.__version__, sklearn.__version__)";

/// Shows build progress on stderr (visible with `--nocapture`), so a slow
/// first build is not a silent one.
struct StderrProgress;

impl ImageProgress for StderrProgress {
    fn step(&self, message: &str) {
        eprintln!("image: {message}");
    }
    fn line(&self, line: &str) {
        eprintln!("  {line}");
    }
}

fn real_image() -> Image {
    match image::ensure(&ImageSpec::from_env(), &StderrProgress) {
        Ok(image) => image,
        Err(err) => panic!("ensure failed: {err}"),
    }
}

fn run_import_check(mut command: Command, image: &Image) {
    let output = command
        .args(["-I", "-c", IMPORT_CHECK])
        .env_clear()
        .envs(image.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .output()
        .expect("spawn the image interpreter");
    assert!(
        output.status.success(),
        "import check failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn ensure_gives_a_ready_self_contained_world_readable_image() {
    let image = real_image();
    assert!(image.root.join("ready.json").is_file());
    assert!(image.python.is_absolute());
    assert!(image.python.starts_with(&image.root));

    run_import_check(Command::new(&image.python), &image);

    let cfg = fs::read_to_string(image.root.join("venv/pyvenv.cfg")).expect("read pyvenv.cfg");
    let home = cfg
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "home")
        .map(|(_, value)| value.trim().to_string())
        .expect("pyvenv.cfg has a home");
    assert!(
        Path::new(&home).starts_with(&image.root),
        "pyvenv.cfg home {home} is outside the image {}",
        image.root.display()
    );

    let mut not_readable = Vec::new();
    check_world_readable(&image.root, &mut not_readable);
    assert!(
        not_readable.is_empty(),
        "not world-readable: {not_readable:?}"
    );

    // The second call finds the image instead of building it again.
    let again = real_image();
    assert_eq!(again.key, image.key);
    assert_eq!(again.root, image.root);
    assert_eq!(again.env, image.env);
}

fn check_world_readable(path: &Path, bad: &mut Vec<String>) {
    let meta = fs::symlink_metadata(path).expect("stat");
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        if mode & 0o005 != 0o005 {
            bad.push(format!("{} {:o}", path.display(), mode));
        }
        for entry in fs::read_dir(path).expect("read_dir") {
            check_world_readable(&entry.expect("entry").path(), bad);
        }
    } else if mode & 0o004 == 0 {
        bad.push(format!("{} {:o}", path.display(), mode));
    }
}

#[test]
fn image_imports_as_nobody_from_a_world_readable_cache() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: switching to uid 65534 needs root");
        return;
    }
    let built = real_image();

    // A cache that uid 65534 can traverse (the real one is usually under
    // /root). Hard-link the built image into it instead of building twice,
    // then rewrite the venv's absolute paths for the new location.
    let cache = tempfile::Builder::new()
        .prefix("csv-agent-image-test-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let images = cache.path().join("images");
    fs::create_dir(&images).expect("mkdir images");
    fs::set_permissions(&images, fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = images.join(&built.key);
    let linked = Command::new("cp")
        .arg("-al")
        .arg(&built.root)
        .arg(&copy)
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !linked {
        let _ = fs::remove_dir_all(&copy);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&built.root)
            .arg(&copy)
            .status()
            .expect("run cp -a");
        assert!(status.success(), "cp -a failed");
    }
    image::relocate(&copy, &built.root, &copy).expect("relocate the copy");

    // The spec the CLI would get from CSV_AGENT_CACHE_DIR=<cache>; built
    // directly because tests in this binary run in parallel threads and must
    // not change each other's environment.
    let spec = ImageSpec {
        python: ImageSpec::from_env().python,
        cache_dir: cache.path().to_path_buf(),
        prebuilt: None,
    };
    let image = image::locate(&spec)
        .expect("locate")
        .expect("the copied image is ready");
    assert_eq!(image.root, copy);
    assert!(!image.python.starts_with("/root"));

    let mut nobody = Command::new("setpriv");
    nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&image.python);
    run_import_check(nobody, &image);

    // The same copy named directly, as CSV_AGENT_IMAGE would.
    let spec = ImageSpec {
        python: std::path::PathBuf::from("/nonexistent/python"),
        cache_dir: std::path::PathBuf::from("/nonexistent"),
        prebuilt: Some(copy.clone()),
    };
    let prebuilt = image::locate(&spec)
        .expect("locate prebuilt")
        .expect("ready");
    assert_eq!(prebuilt.root, copy);
    assert_eq!(prebuilt.key, built.key);
}

#[test]
fn a_prebuilt_folder_that_is_not_an_image_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ImageSpec {
        python: std::path::PathBuf::from("python3"),
        cache_dir: dir.path().to_path_buf(),
        prebuilt: Some(dir.path().to_path_buf()),
    };
    let err = image::locate(&spec).expect_err("not an image").to_string();
    assert!(err.contains("CSV_AGENT_IMAGE"), "{err}");
    assert!(err.contains("ready.json"), "{err}");
}

#[test]
fn locate_finds_nothing_in_an_empty_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let spec = ImageSpec {
        python: ImageSpec::from_env().python,
        cache_dir: cache.path().to_path_buf(),
        prebuilt: None,
    };
    assert!(image::locate(&spec).expect("locate").is_none());
}
