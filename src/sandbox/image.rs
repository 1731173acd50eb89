//! The sandbox image: everything the jail needs to run Python, built once per
//! (requirements, interpreter) pair and cached under `<cache>/images/<key>/`.
//!
//! The image is bind-mounted read-only into the jail at the same absolute path
//! it has on the host and is read there by an unprivileged uid, so it must be
//! self-contained apart from the system's shared libraries (`/usr/lib`, `/lib`,
//! `/lib64`) and world-readable. It therefore holds a *copy* of the base
//! interpreter (`python/`: executable, libpython, standard library) and a
//! virtual environment created by that copy (`venv/`), never references into
//! the host's interpreter prefix (which may live under `/root`).
//!
//! This module owns finding, building and verifying images. It never starts a
//! jail and never deletes a finished image except to replace it on request.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Pinned Python packages of the image; part of the image key.
pub const REQUIREMENTS: &str = include_str!("../../sandbox-image/requirements.txt");

/// Written last into a finished image; its absence means "incomplete".
const READY_FILE: &str = "ready.json";
/// How many trailing lines of a failed command's output go into the error.
const TAIL_LINES: usize = 40;
/// The modules a zygote imports; the image is not ready unless they import.
const VERIFY_IMPORTS: &str = "pandas, numpy, scipy, scipy.stats, sklearn, statsmodels.api";
/// Where the jail finds shared libraries (it binds exactly these); anything an
/// image binary loads from elsewhere would be missing inside the jail.
/// `/usr/lib64` is where `/lib64` points on merged-/usr systems.
const SYSTEM_LIBRARY_DIRS: &[&str] = &["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"];

/// What to build an image from; resolved from the environment by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The base interpreter (a name looked up in `PATH`, or a path).
    pub python: PathBuf,
    /// The cache directory; images live in `<cache_dir>/images/`.
    pub cache_dir: PathBuf,
    /// A ready image folder to use as is (`CSV_AGENT_IMAGE`): no interpreter
    /// is asked and nothing is built. For hosts that receive a pre-built
    /// image (restricted CI runners, read-only caches, other users).
    pub prebuilt: Option<PathBuf>,
}

impl ImageSpec {
    fn images_dir(&self) -> PathBuf {
        self.cache_dir.join("images")
    }
}

/// A finished, verified image.
#[derive(Debug, Clone)]
pub struct Image {
    /// First 16 hex digits of the image key hash.
    pub key: String,
    /// `<cache>/images/<key>`: bind-mount this, at the same path, in the jail.
    pub root: PathBuf,
    /// Absolute path of the interpreter to exec inside the jail (`venv/bin/python`).
    pub python: PathBuf,
    /// Environment the interpreter needs inside the jail (e.g. `LD_LIBRARY_PATH`
    /// when the interpreter links a libpython that lives in the image).
    pub env: Vec<(String, String)>,
    /// `3.11.7` style version of the interpreter.
    pub python_version: String,
}

/// Progress of an image build; the CLI shows it, tests stay silent.
pub trait ImageProgress {
    /// A build step is starting, e.g. "creating virtual environment".
    fn step(&self, message: &str);
    /// One line of output of a build command (pip, venv).
    fn line(&self, line: &str);
}

/// Progress that shows nothing.
pub struct SilentProgress;

impl ImageProgress for SilentProgress {
    fn step(&self, _message: &str) {}
    fn line(&self, _line: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("CSV_AGENT_IMAGE={}: {reason}", path.display())]
    Prebuilt { path: PathBuf, reason: String },
    #[error("interpreter `{}` not found: install python3 or set CSV_AGENT_PYTHON", python.display())]
    InterpreterNotFound { python: PathBuf },

    #[error(
        "interpreter `{}` could not describe itself ({status}): {stderr}; set CSV_AGENT_PYTHON to a working CPython 3 interpreter",
        python.display()
    )]
    InterpreterFailed {
        python: PathBuf,
        status: String,
        stderr: String,
    },

    #[error("interpreter `{}` printed an unexpected description: {output}", python.display())]
    InterpreterOutput {
        python: PathBuf,
        output: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("interpreter `{}` cannot be copied into an image: {reason}; set CSV_AGENT_PYTHON to another CPython 3 interpreter", python.display())]
    UnsupportedInterpreter { python: PathBuf, reason: String },

    #[error("could not {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not lock `{}` (another build may hold it): check the cache directory's permissions", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "{step} failed ({status}): see output above; the image at `{}` was not created\ncommand: {command}\nlast lines of output:\n{tail}",
        root.display()
    )]
    CommandFailed {
        step: &'static str,
        command: String,
        status: String,
        tail: String,
        root: PathBuf,
    },

    #[error(
        "the image at `{}` failed verification: {reason}; it was removed, run again to rebuild",
        root.display()
    )]
    Verification { root: PathBuf, reason: String },
}

impl ImageError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}

/// The image key: first 16 hex digits of sha256 over the requirements, a
/// newline and the interpreter's full version string (which should include
/// its platform and machine, see [`locate`]). Any change to either is a new
/// image, so a host never runs packages built for another interpreter.
pub fn image_key(requirements: &str, interpreter_version: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(requirements.as_bytes());
    hasher.update(b"\n");
    hasher.update(interpreter_version.as_bytes());
    let digest = hasher.finalize();
    let mut key = hex::encode(digest.as_slice());
    key.truncate(16);
    key
}

/// The finished image for `spec`, if one exists. Asks the interpreter for its
/// version (cached per process) to compute the key; `None` means it still has
/// to be built (no image, or one whose build never reached `ready.json`).
pub fn locate(spec: &ImageSpec) -> Result<Option<Image>, ImageError> {
    if let Some(dir) = &spec.prebuilt {
        return read_prebuilt(dir).map(Some);
    }
    let interpreter = describe_interpreter(&spec.python)?;
    let key = image_key(REQUIREMENTS, &interpreter.key_material());
    Ok(read_ready(&spec.images_dir().join(&key), &key))
}

/// The image for `spec`: the existing one, or a fresh build. Safe to call from
/// many processes at once: builds are serialised by a lock and the losers of
/// the race find the winner's image.
pub fn ensure(spec: &ImageSpec, progress: &dyn ImageProgress) -> Result<Image, ImageError> {
    // Fast path without the lock: a ready image never changes under a reader
    // (it is replaced only by `build(force)`).
    if let Some(image) = locate(spec)? {
        return Ok(image);
    }
    build(spec, progress, false)
}

/// Build the image for `spec` (unless it exists and `force` is false), holding
/// the key's lock for the whole build.
pub fn build(
    spec: &ImageSpec,
    progress: &dyn ImageProgress,
    force: bool,
) -> Result<Image, ImageError> {
    if let Some(dir) = &spec.prebuilt {
        return Err(ImageError::Prebuilt {
            path: dir.clone(),
            reason: "it is used as is and never built; unset CSV_AGENT_IMAGE to build an image"
                .to_string(),
        });
    }
    let interpreter = describe_interpreter(&spec.python)?;
    let key = image_key(REQUIREMENTS, &interpreter.key_material());
    let images = spec.images_dir();
    fs::create_dir_all(&images).map_err(ImageError::io("create", &images))?;
    let root = images.join(&key);

    let lock_path = images.join(format!("{key}.lock"));
    let lock = lock_file(&lock_path)?;
    if !force {
        if let Some(image) = read_ready(&root, &key) {
            // Another process built it while we waited for the lock.
            return Ok(image);
        }
    }
    remove_stale_partials(&images, &key);
    progress.step(&format!(
        "building sandbox image {key} from {} (Python {})",
        interpreter.executable.display(),
        interpreter.python_version
    ));

    let partial = images.join(format!("{key}.partial-{}", std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(ImageError::io("remove", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(ImageError::io("create", &partial))?;
    let built = build_into(&interpreter, &partial, &root, progress);
    if let Err(err) = built {
        // A failed build leaves nothing that could be mistaken for an image.
        let _ = fs::remove_dir_all(&partial);
        return Err(err);
    }

    if root.exists() {
        // Forced rebuild, or the remains of a build killed after its rename.
        // Move it aside first so the swap below is a single rename.
        let old = images.join(format!("{key}.partial-{}-old", std::process::id()));
        fs::rename(&root, &old).map_err(ImageError::io("move aside", &root))?;
        let _ = fs::remove_dir_all(&old);
    }
    fs::rename(&partial, &root).map_err(ImageError::io("rename into place", &partial))?;

    let image = Image {
        key: key.clone(),
        root: root.clone(),
        python: root.join("venv").join("bin").join("python"),
        env: interpreter.image_env(&root),
        python_version: interpreter.python_version.clone(),
    };
    // Verify at the final path: that is the path the jail uses.
    if let Err(err) = verify(&image, progress) {
        let _ = fs::remove_dir_all(&root);
        return Err(err);
    }
    write_ready(&image, &interpreter)?;
    progress.step(&format!("sandbox image ready at {}", root.display()));
    drop(lock);
    Ok(image)
}

/// Rewrite the absolute paths a virtual environment records about itself
/// (`pyvenv.cfg`, the symlinks and scripts in `venv/bin`) from `from` to `to`,
/// for an image whose files currently sit in `dir`. Builds use it to move an
/// image from its partial directory to its final one; it also makes a copy of
/// an image usable at another path. Files are replaced, not edited in place,
/// so a hard-linked copy never changes the image it was linked from.
pub fn relocate(dir: &Path, from: &Path, to: &Path) -> Result<(), ImageError> {
    let from_s = from.to_string_lossy().into_owned();
    let to_s = to.to_string_lossy().into_owned();
    let venv = dir.join("venv");
    let mut files = vec![venv.join("pyvenv.cfg")];
    let bin = venv.join("bin");
    for entry in fs::read_dir(&bin).map_err(ImageError::io("read", &bin))? {
        let entry = entry.map_err(ImageError::io("read", &bin))?;
        files.push(entry.path());
    }
    for path in files {
        let meta = fs::symlink_metadata(&path).map_err(ImageError::io("inspect", &path))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(ImageError::io("read link", &path))?;
            let target_s = target.to_string_lossy();
            if target_s.contains(from_s.as_str()) {
                let new_target = target_s.replace(from_s.as_str(), &to_s);
                fs::remove_file(&path).map_err(ImageError::io("replace link", &path))?;
                symlink(&new_target, &path).map_err(ImageError::io("create link", &path))?;
            }
        } else if meta.is_file() && meta.len() < (1 << 20) {
            let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
            // Only text files can hold a path we know how to rewrite.
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if !text.contains(from_s.as_str()) {
                continue;
            }
            let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
            tmp_name.push(".relocate-tmp");
            let tmp = path.with_file_name(tmp_name);
            fs::write(&tmp, text.replace(from_s.as_str(), &to_s))
                .map_err(ImageError::io("write", &tmp))?;
            fs::set_permissions(&tmp, meta.permissions()).map_err(ImageError::io("chmod", &tmp))?;
            fs::rename(&tmp, &path).map_err(ImageError::io("replace", &path))?;
        }
    }
    Ok(())
}

/// The steps of a build, into `partial`, of the image that will live at `root`.
fn build_into(
    interpreter: &Interpreter,
    partial: &Path,
    root: &Path,
    progress: &dyn ImageProgress,
) -> Result<(), ImageError> {
    progress.step("copying the interpreter");
    copy_interpreter(interpreter, &partial.join("python"))?;
    let env = build_env(&interpreter.image_env(partial));
    let python = partial
        .join("python")
        .join("bin")
        .join(interpreter.binary_name());

    // Precompile what the base did not ship compiled: inside the jail the image
    // is read-only, so a missing .pyc would be recompiled by every zygote.
    // Best effort (a stray unparsable file in the stdlib must not fail the build).
    progress.step("compiling the standard library");
    let stdlib = interpreter.stdlib_dest(&partial.join("python"));
    let mut compile = Command::new(&python);
    compile
        // `-W ignore`: the stdlib's own test data warns about odd syntax.
        .args(["-I", "-W", "ignore", "-m", "compileall", "-qq", "-j0"])
        .arg(&stdlib);
    let _ = run_streaming(&mut compile, &env, progress);

    progress.step("creating virtual environment");
    let venv = partial.join("venv");
    let mut create = Command::new(&python);
    create.args(["-I", "-m", "venv"]).arg(&venv);
    run_checked(
        "creating the virtual environment",
        &mut create,
        &env,
        root,
        progress,
    )?;

    let requirements = partial.join("requirements.txt");
    fs::write(&requirements, REQUIREMENTS).map_err(ImageError::io("write", &requirements))?;
    progress.step("installing packages");
    let venv_python = venv.join("bin").join("python");
    let mut install = Command::new(&venv_python);
    install
        .args(["-I", "-m", "pip", "install"])
        // Wheels only: an image build never compiles, so it cannot half-work
        // depending on which compilers and headers a host has. `--no-deps`
        // makes requirements.txt the whole truth: nothing unpinned slips in.
        .args([
            "--only-binary=:all:",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "-r",
        ])
        .arg(&requirements);
    run_checked("pip install", &mut install, &env, root, progress)?;

    progress.step("checking package dependencies");
    let mut check = Command::new(&venv_python);
    check.args(["-I", "-m", "pip", "check", "--disable-pip-version-check"]);
    run_checked(
        "pip check (is a dependency missing from sandbox-image/requirements.txt?)",
        &mut check,
        &env,
        root,
        progress,
    )?;

    progress.step("relocating the virtual environment");
    relocate(partial, partial, root)?;
    progress.step("making the image world-readable");
    make_world_readable(partial)?;
    Ok(())
}

/// Copy the interpreter executable, its libpython (when dynamically linked)
/// and its standard library into `dest`, laid out so CPython's getpath finds
/// the standard library by location (`<dest>/<platlibdir>/pythonX.Y/os.py`).
fn copy_interpreter(interpreter: &Interpreter, dest: &Path) -> Result<(), ImageError> {
    let bin = dest.join("bin");
    fs::create_dir_all(&bin).map_err(ImageError::io("create", &bin))?;
    copy_file(
        &interpreter.executable,
        &bin.join(interpreter.binary_name()),
    )?;

    if let Some(libpython) = &interpreter.libpython {
        let lib = dest.join("lib");
        fs::create_dir_all(&lib).map_err(ImageError::io("create", &lib))?;
        copy_file(libpython, &lib.join(interpreter.libpython_name(libpython)))?;
    }

    let stdlib = interpreter.stdlib_dest(dest);
    copy_tree(&interpreter.stdlib, &stdlib, true)?;
    let dynload = stdlib.join("lib-dynload");
    if !dynload.exists() {
        if let Some(source) = &interpreter.dynload {
            copy_tree(source, &dynload, false)?;
        }
    }
    if !stdlib.join("os.py").is_file() {
        return Err(ImageError::UnsupportedInterpreter {
            python: interpreter.requested.clone(),
            reason: format!(
                "its standard library {} has no os.py",
                interpreter.stdlib.display()
            ),
        });
    }
    Ok(())
}

/// Recursive copy that follows symlinks (the image must not point back into
/// the host) and skips dangling ones. At the top of a standard library it
/// leaves out installed packages, the test suite and the static build files.
fn copy_tree(from: &Path, to: &Path, stdlib_top: bool) -> Result<(), ImageError> {
    fs::create_dir_all(to).map_err(ImageError::io("create", to))?;
    for entry in fs::read_dir(from).map_err(ImageError::io("read", from))? {
        let entry = entry.map_err(ImageError::io("read", from))?;
        let name = entry.file_name();
        if stdlib_top && skip_in_stdlib(&name) {
            continue;
        }
        let source = entry.path();
        let Ok(meta) = fs::metadata(&source) else {
            continue; // dangling symlink, e.g. Debian's sitecustomize.py into /etc
        };
        let target = to.join(&name);
        if meta.is_dir() {
            copy_tree(&source, &target, false)?;
        } else if meta.is_file() {
            copy_file(&source, &target)?;
        }
    }
    Ok(())
}

fn skip_in_stdlib(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    // site-packages/dist-packages: the base's own packages do not belong in the
    // jail; test: 100+ MB never imported; config-X.Y-*: libpython.a and the
    // Makefile, only needed to compile extensions, which an image never does.
    matches!(name.as_ref(), "site-packages" | "dist-packages" | "test")
        || name.starts_with("config-")
}

/// Copy a file's contents and keep its mtime: a copied `.pyc` stays valid only
/// while its source has the mtime recorded in it.
fn copy_file(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::copy(from, to).map_err(ImageError::io("copy", from))?;
    let modified = fs::metadata(from)
        .and_then(|meta| meta.modified())
        .map_err(ImageError::io("inspect", from))?;
    File::options()
        .write(true)
        .open(to)
        .and_then(|file| file.set_modified(modified))
        .map_err(ImageError::io("set mtime of", to))?;
    Ok(())
}

/// Directories 0755, executables 0755, other files 0644: the jail reads the
/// image as uid 65534. Symlinks have no mode of their own.
fn make_world_readable(dir: &Path) -> Result<(), ImageError> {
    let meta = fs::symlink_metadata(dir).map_err(ImageError::io("inspect", dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        set_mode(dir, 0o755)?;
        for entry in fs::read_dir(dir).map_err(ImageError::io("read", dir))? {
            let entry = entry.map_err(ImageError::io("read", dir))?;
            make_world_readable(&entry.path())?;
        }
    } else {
        let executable = meta.permissions().mode() & 0o111 != 0;
        set_mode(dir, if executable { 0o755 } else { 0o644 })?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("chmod", path))
}

/// Check the image at its final path: the data stack imports with an empty
/// environment, nothing on `sys.path` or among the loaded libraries lies
/// outside the image and the system library directories, and the venv's
/// `home` is the image's own interpreter.
fn verify(image: &Image, progress: &dyn ImageProgress) -> Result<(), ImageError> {
    progress.step("verifying the image");
    let fail = |reason: String| ImageError::Verification {
        root: image.root.clone(),
        reason,
    };

    let home = venv_home(&image.root).map_err(&fail)?;
    let own_bin = image.root.join("python").join("bin");
    if home != own_bin {
        return Err(fail(format!(
            "pyvenv.cfg home is {} instead of {}",
            home.display(),
            own_bin.display()
        )));
    }

    let script = format!(
        "import json, sys\nimport {VERIFY_IMPORTS}\n\
         print(json.dumps({{'versions': {{m.__name__: m.__version__ for m in (pandas, numpy, scipy, sklearn, statsmodels)}},\
         'prefix': sys.prefix, 'base_prefix': sys.base_prefix, 'path': sys.path}}))"
    );
    let output = Command::new(&image.python)
        .args(["-I", "-c", &script])
        .env_clear()
        .envs(image.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&image.root)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            command: format!("{} -I -c <verify>", image.python.display()),
            source,
        })?;
    if !output.status.success() {
        return Err(fail(format!(
            "`import {VERIFY_IMPORTS}` failed ({}): {}",
            describe_status(output.status),
            last_lines(&String::from_utf8_lossy(&output.stderr), TAIL_LINES)
        )));
    }
    let report: VerifyReport = serde_json::from_slice(&output.stdout).map_err(|err| {
        fail(format!(
            "unexpected output of the import check ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        ))
    })?;
    let mut versions: Vec<_> = report.versions.iter().collect();
    versions.sort();
    for (name, version) in versions {
        progress.line(&format!("{name} {version}"));
    }
    for entry in std::iter::once(&report.prefix)
        .chain(std::iter::once(&report.base_prefix))
        .chain(report.path.iter())
    {
        if !Path::new(entry).starts_with(&image.root) {
            return Err(fail(format!(
                "the interpreter reads `{entry}`, which is outside the image"
            )));
        }
    }

    let mut binaries = vec![image
        .root
        .join("python")
        .join("bin")
        .join(python_binary(&image.python_version))];
    let dynload = stdlib_dir_in(&image.root.join("python")).map(|dir| dir.join("lib-dynload"));
    if let Some(dynload) = dynload.filter(|dir| dir.is_dir()) {
        let entries = fs::read_dir(&dynload).map_err(ImageError::io("read", &dynload))?;
        for entry in entries.flatten() {
            if entry.path().extension() == Some(OsStr::new("so")) {
                binaries.push(entry.path());
            }
        }
    }
    for binary in binaries {
        let output = match Command::new("ldd")
            .arg(&binary)
            .env_clear()
            .envs(image.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) => output,
            // No ldd on this host: the import check above is the only check.
            Err(err) if err.kind() == io::ErrorKind::NotFound => break,
            Err(source) => {
                return Err(ImageError::Spawn {
                    command: format!("ldd {}", binary.display()),
                    source,
                })
            }
        };
        let listing = String::from_utf8_lossy(&output.stdout);
        if let Some(library) = foreign_libraries(&listing, &image.root).first() {
            return Err(fail(format!(
                "{} loads {library}, which the jail does not provide",
                binary.display()
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct VerifyReport {
    versions: HashMap<String, String>,
    prefix: String,
    base_prefix: String,
    path: Vec<String>,
}

/// Libraries in `ldd` output that resolve neither into the image nor into the
/// system library directories, or do not resolve at all.
fn foreign_libraries(ldd_output: &str, root: &Path) -> Vec<String> {
    let mut foreign = Vec::new();
    for line in ldd_output.lines() {
        let line = line.trim();
        let resolved = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            // `/lib64/ld-linux-x86-64.so.2 (0x…)` or the vdso, which has no file.
            None => line,
        };
        if resolved.starts_with("not found") {
            foreign.push(line.to_string());
            continue;
        }
        let path = resolved.split_whitespace().next().unwrap_or("");
        if !path.starts_with('/') {
            continue; // linux-vdso.so.1, "statically linked"
        }
        let inside = Path::new(path).starts_with(root)
            || SYSTEM_LIBRARY_DIRS.iter().any(|dir| path.starts_with(dir));
        if !inside {
            foreign.push(path.to_string());
        }
    }
    foreign
}

/// `home` from the image's `venv/pyvenv.cfg`.
fn venv_home(root: &Path) -> Result<PathBuf, String> {
    let cfg_path = root.join("venv").join("pyvenv.cfg");
    let cfg = fs::read_to_string(&cfg_path)
        .map_err(|err| format!("cannot read {}: {err}", cfg_path.display()))?;
    cfg.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "home")
        .map(|(_, value)| PathBuf::from(value.trim()))
        .ok_or_else(|| format!("{} has no home", cfg_path.display()))
}

/// `<python>/<platlibdir>/pythonX.Y`, whichever platlibdir the copy used.
fn stdlib_dir_in(python_dir: &Path) -> Option<PathBuf> {
    for libdir in ["lib", "lib64"] {
        let Ok(entries) = fs::read_dir(python_dir.join(libdir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().join("os.py").is_file() {
                return Some(entry.path());
            }
        }
    }
    None
}

/// `python3.11` for `3.11.7`.
fn python_binary(python_version: &str) -> String {
    let xy: Vec<&str> = python_version.split('.').take(2).collect();
    format!("python{}", xy.join("."))
}

#[derive(Serialize, Deserialize)]
struct Ready {
    key: String,
    python_version: String,
    created_at: u64,
    requirements_sha256: String,
    interpreter: String,
    /// Whether the interpreter needs `LD_LIBRARY_PATH=<root>/python/lib`.
    /// Kept as a flag, not a path, so a relocated copy stays correct.
    #[serde(default)]
    library_path: bool,
}

fn write_ready(image: &Image, interpreter: &Interpreter) -> Result<(), ImageError> {
    let ready = Ready {
        key: image.key.clone(),
        python_version: image.python_version.clone(),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        requirements_sha256: hex::encode(Sha256::digest(REQUIREMENTS.as_bytes()).as_slice()),
        interpreter: interpreter.executable.display().to_string(),
        library_path: !image.env.is_empty(),
    };
    let path = image.root.join(READY_FILE);
    let tmp = image.root.join(format!("{READY_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(&ready).map_err(|err| ImageError::Io {
        action: "serialise",
        path: path.clone(),
        source: io::Error::other(err),
    })?;
    fs::write(&tmp, json).map_err(ImageError::io("write", &tmp))?;
    set_mode(&tmp, 0o644)?;
    // Rename so a reader never sees a half-written ready.json.
    fs::rename(&tmp, &path).map_err(ImageError::io("write", &path))
}

/// The image at `root` if its `ready.json` is there and names `key`. An
/// unreadable or foreign `ready.json` counts as "not ready": the next build
/// replaces the directory.
/// A pre-built image named by `CSV_AGENT_IMAGE`: it must be ready and built
/// from the requirements this binary embeds.
fn read_prebuilt(dir: &Path) -> Result<Image, ImageError> {
    let fail = |reason: String| ImageError::Prebuilt {
        path: dir.to_path_buf(),
        reason,
    };
    let bytes = fs::read(dir.join(READY_FILE))
        .map_err(|e| fail(format!("no readable {READY_FILE} ({e}): point it at a folder that `csv-agent image path` printed")))?;
    let ready: Ready = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("{READY_FILE} is not valid: {e}")))?;
    let wanted = hex::encode(Sha256::digest(REQUIREMENTS.as_bytes()).as_slice());
    if ready.requirements_sha256 != wanted {
        return Err(fail(
            "it was built from other requirements than this csv-agent embeds; rebuild it with this version".to_string(),
        ));
    }
    read_ready(dir, &ready.key).ok_or_else(|| fail("its interpreter is missing".to_string()))
}

fn read_ready(root: &Path, key: &str) -> Option<Image> {
    let bytes = fs::read(root.join(READY_FILE)).ok()?;
    let ready: Ready = serde_json::from_slice(&bytes).ok()?;
    let python = root.join("venv").join("bin").join("python");
    if ready.key != key || !python.exists() {
        return None;
    }
    Some(Image {
        key: ready.key,
        root: root.to_path_buf(),
        python,
        env: image_env(root, ready.library_path),
        python_version: ready.python_version,
    })
}

fn lock_file(path: &Path) -> Result<File, ImageError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| ImageError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
    fs2::FileExt::lock_exclusive(&file).map_err(|source| ImageError::Lock {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file)
}

/// Remove partial directories left by killed builds: those of our own key
/// (we hold its lock, so no live build owns them) and those of other keys
/// whose lock is free. Best effort: a leftover only costs disk space.
fn remove_stale_partials(images: &Path, own_key: &str) {
    let Ok(entries) = fs::read_dir(images) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((key, _)) = name.split_once(".partial-") else {
            continue;
        };
        if key == own_key {
            let _ = fs::remove_dir_all(entry.path());
            continue;
        }
        let Ok(lock) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(images.join(format!("{key}.lock")))
        else {
            continue;
        };
        if fs2::FileExt::try_lock_exclusive(&lock).is_ok() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The environment of every build subprocess: nothing of the caller's Python
/// set-up leaks in (`PYTHONPATH`, `VIRTUAL_ENV`, …), but pip keeps its
/// configuration (`PIP_*`, config files found through `HOME`/`XDG_CONFIG_HOME`,
/// certificates, proxies) so offline mirrors and find-links still work.
fn build_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    const KEEP: &[&str] = &[
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        // Only so a pyenv shim given as the interpreter resolves as in the
        // caller's shell; Python itself ignores them.
        "PYENV_ROOT",
        "PYENV_VERSION",
    ];
    // These would redirect the install out of the venv.
    const DROP_PIP: &[&str] = &["PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT"];
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| {
            KEEP.contains(&name.as_str())
                || (name.starts_with("PIP_") && !DROP_PIP.contains(&name.as_str()))
        })
        .collect();
    env.extend(extra.iter().cloned());
    env
}

/// What the base interpreter says about itself.
#[derive(Debug, Clone)]
struct Interpreter {
    /// What the caller asked for (`python3`, a shim, a venv's python…).
    requested: PathBuf,
    /// The real executable, symlinks and shims resolved.
    executable: PathBuf,
    /// `sys.version`: includes the build, so two builds of 3.11.7 differ.
    version: String,
    /// `3.11.7`
    python_version: String,
    /// `3.11`
    xy: String,
    platform: String,
    machine: String,
    /// `lib` or `lib64` (`sys.platlibdir`), the directory getpath searches.
    platlibdir: String,
    stdlib: PathBuf,
    dynload: Option<PathBuf>,
    /// The libpython the running interpreter mapped, if it is dynamically linked.
    libpython: Option<PathBuf>,
    /// `INSTSONAME`: the name the executable's DT_NEEDED asks for.
    instsoname: Option<String>,
}

#[derive(Deserialize)]
struct InterpreterReport {
    implementation: String,
    executable: String,
    version: String,
    python_version: String,
    xy: String,
    platform: String,
    machine: String,
    platlibdir: String,
    stdlib: String,
    dynload: Option<String>,
    libpython: Option<String>,
    instsoname: Option<String>,
}

/// Asks the interpreter rather than guessing from paths: `python3` may be a
/// pyenv shim (a shell script), a symlink chain, or a venv's python.
/// libpython is read from /proc/self/maps because sysconfig's
/// `Py_ENABLE_SHARED` is 1 on Debian even though its python3.11 is static.
const DESCRIBE_SCRIPT: &str = r#"
import json, os, platform, sys, sysconfig
libpython = None
try:
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith("libpython"):
                libpython = parts[5].strip()
                break
except OSError:
    pass
dynload = [p for p in sys.path if os.path.basename(p) == "lib-dynload"]
print(json.dumps({
    "implementation": sys.implementation.name,
    "executable": os.path.realpath(sys.executable),
    "version": sys.version,
    "python_version": platform.python_version(),
    "xy": "%d.%d" % sys.version_info[:2],
    "platform": sys.platform,
    "machine": platform.machine(),
    "platlibdir": getattr(sys, "platlibdir", "lib"),
    "stdlib": sysconfig.get_path("stdlib"),
    "dynload": dynload[0] if dynload else sysconfig.get_config_var("DESTSHARED"),
    "libpython": libpython,
    "instsoname": sysconfig.get_config_var("INSTSONAME"),
}))
"#;

fn describe_interpreter(python: &Path) -> Result<Interpreter, ImageError> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Interpreter>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(found) = cache.lock().ok().and_then(|map| map.get(python).cloned()) {
        return Ok(found);
    }
    let described = query_interpreter(python)?;
    if let Ok(mut map) = cache.lock() {
        map.insert(python.to_path_buf(), described.clone());
    }
    Ok(described)
}

fn query_interpreter(python: &Path) -> Result<Interpreter, ImageError> {
    let output = Command::new(python)
        .args(["-I", "-c", DESCRIBE_SCRIPT])
        .env_clear()
        .envs(build_env(&[]))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ImageError::InterpreterNotFound {
                    python: python.to_path_buf(),
                }
            } else {
                ImageError::Spawn {
                    command: python.display().to_string(),
                    source,
                }
            }
        })?;
    if !output.status.success() {
        return Err(ImageError::InterpreterFailed {
            python: python.to_path_buf(),
            status: describe_status(output.status),
            stderr: match last_lines(&String::from_utf8_lossy(&output.stderr), 10) {
                text if text.trim().is_empty() => "no error output".to_string(),
                text => text,
            },
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let report: InterpreterReport =
        serde_json::from_str(text.trim()).map_err(|source| ImageError::InterpreterOutput {
            python: python.to_path_buf(),
            output: text.trim().to_string(),
            source,
        })?;
    let unsupported = |reason: String| ImageError::UnsupportedInterpreter {
        python: python.to_path_buf(),
        reason,
    };
    if report.implementation != "cpython" {
        return Err(unsupported(format!(
            "it is {}, and the image layout follows CPython's",
            report.implementation
        )));
    }
    if report.platform != "linux" {
        return Err(unsupported(format!(
            "it runs on {}, not linux",
            report.platform
        )));
    }
    let stdlib = PathBuf::from(&report.stdlib);
    if !stdlib.join("os.py").is_file() {
        return Err(unsupported(format!(
            "its standard library {} has no os.py",
            stdlib.display()
        )));
    }
    Ok(Interpreter {
        requested: python.to_path_buf(),
        executable: PathBuf::from(report.executable),
        version: report.version,
        python_version: report.python_version,
        xy: report.xy,
        platform: report.platform,
        machine: report.machine,
        platlibdir: report.platlibdir,
        stdlib,
        dynload: report.dynload.map(PathBuf::from),
        libpython: report.libpython.map(PathBuf::from),
        instsoname: report.instsoname.filter(|name| !name.is_empty()),
    })
}

impl Interpreter {
    /// The interpreter half of the image key.
    fn key_material(&self) -> String {
        format!("{} {}/{}", self.version, self.platform, self.machine)
    }

    fn binary_name(&self) -> String {
        format!("python{}", self.xy)
    }

    fn stdlib_dest(&self, python_dir: &Path) -> PathBuf {
        python_dir
            .join(&self.platlibdir)
            .join(format!("python{}", self.xy))
    }

    /// The file name the copied libpython must have: the SONAME the executable
    /// asks for, not whatever the symlink chain resolved to.
    fn libpython_name(&self, mapped: &Path) -> String {
        match &self.instsoname {
            Some(name) if name.starts_with("libpython") => name.clone(),
            _ => mapped
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("libpython{}.so.1.0", self.xy)),
        }
    }

    /// The environment the image's interpreter needs at `root`. A dynamically
    /// linked interpreter's RUNPATH points at the host prefix (pyenv:
    /// `/root/.pyenv/versions/X/lib`), unreadable in the jail, and
    /// LD_LIBRARY_PATH is searched before RUNPATH.
    fn image_env(&self, root: &Path) -> Vec<(String, String)> {
        image_env(root, self.libpython.is_some())
    }
}

fn image_env(root: &Path, library_path: bool) -> Vec<(String, String)> {
    if !library_path {
        return Vec::new();
    }
    vec![(
        "LD_LIBRARY_PATH".to_string(),
        root.join("python").join("lib").display().to_string(),
    )]
}

/// Run a build command, streaming its output; fail with the output's tail.
fn run_checked(
    step: &'static str,
    command: &mut Command,
    env: &[(String, String)],
    root: &Path,
    progress: &dyn ImageProgress,
) -> Result<(), ImageError> {
    let shown = show_command(command);
    let (status, tail) = run_streaming(command, env, progress)?;
    if status.success() {
        return Ok(());
    }
    Err(ImageError::CommandFailed {
        step,
        command: shown,
        status: describe_status(status),
        tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        root: root.to_path_buf(),
    })
}

/// Run `command` with exactly `env`, passing each line of stdout and stderr to
/// `progress.line` as it arrives; returns the exit status and the last lines.
fn run_streaming(
    command: &mut Command,
    env: &[(String, String)],
    progress: &dyn ImageProgress,
) -> Result<(ExitStatus, VecDeque<String>), ImageError> {
    let shown = show_command(command);
    let mut child = command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            command: shown.clone(),
            source,
        })?;

    // One reader thread per pipe (either could fill and block the child);
    // lines come back to this thread, since `progress` need not be Send.
    let (sender, receiver) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(spawn_line_reader(stdout, sender.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(spawn_line_reader(stderr, sender.clone()));
    }
    drop(sender);

    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in receiver {
        progress.line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|source| ImageError::Spawn {
        command: shown,
        source,
    })?;
    Ok((status, tail))
}

fn spawn_line_reader<R: Read + Send + 'static>(
    pipe: R,
    sender: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if sender.send(line.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn show_command(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0] linux/x86_64";

    #[test]
    fn image_key_is_stable() {
        // Changing the key scheme orphans every cached image: do it on purpose.
        assert_eq!(
            image_key("pandas==3.1.1\n", VERSION),
            image_key("pandas==3.1.1\n", VERSION)
        );
        assert_eq!(image_key("pandas==3.1.1\n", VERSION), "ca99b63f97ccb880");
    }

    #[test]
    fn image_key_is_16_lowercase_hex() {
        let key = image_key(REQUIREMENTS, VERSION);
        assert_eq!(key.len(), 16);
        assert!(key.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }

    #[test]
    fn image_key_changes_with_requirements_and_interpreter() {
        let base = image_key("pandas==3.1.1\n", VERSION);
        assert_ne!(base, image_key("pandas==3.1.0\n", VERSION));
        assert_ne!(
            base,
            image_key(
                "pandas==3.1.1\n",
                "3.11.7 (main, Jan  1 2026) [GCC 12.2.0] linux/x86_64"
            )
        );
        assert_ne!(
            base,
            image_key(
                "pandas==3.1.1\n",
                "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0] linux/aarch64"
            )
        );
    }

    #[test]
    fn requirements_pin_every_line_exactly() {
        for line in REQUIREMENTS.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, version) = line.split_once("==").unwrap_or(("", ""));
            assert!(
                !name.is_empty() && !version.is_empty(),
                "not pinned: {line}"
            );
        }
        for main in ["pandas", "numpy", "scipy", "scikit-learn", "statsmodels"] {
            assert!(
                REQUIREMENTS
                    .lines()
                    .any(|l| l.starts_with(&format!("{main}=="))),
                "{main} missing"
            );
        }
    }

    #[test]
    fn ldd_libraries_outside_the_jail_are_foreign() {
        let root = Path::new("/cache/images/abc");
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibpython3.11.so.1.0 => /cache/images/abc/python/lib/libpython3.11.so.1.0 (0x1)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x2)\n\
            \tlibssl.so.3 => /root/.pyenv/versions/3.11.7/lib/libssl.so.3 (0x3)\n\
            \tlibffi.so.8 => not found\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x4)\n";
        assert_eq!(
            foreign_libraries(ldd, root),
            vec![
                "/root/.pyenv/versions/3.11.7/lib/libssl.so.3".to_string(),
                "libffi.so.8 => not found".to_string()
            ]
        );
        assert!(foreign_libraries("\tstatically linked\n", root).is_empty());
    }

    #[test]
    fn relocate_rewrites_venv_paths_without_touching_hard_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("k.partial-1");
        let bin = image.join("venv").join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        let from = image.clone();
        let to = dir.path().join("k");
        let cfg = image.join("venv").join("pyvenv.cfg");
        fs::write(&cfg, format!("home = {}/python/bin\n", from.display())).expect("write");
        let script = bin.join("pip");
        fs::write(&script, format!("#!{}/venv/bin/python\n", from.display())).expect("write");
        let linked = dir.path().join("linked-pip");
        fs::hard_link(&script, &linked).expect("hard link");
        symlink(from.join("python/bin/python3.11"), bin.join("python3.11")).expect("symlink");
        fs::write(bin.join("blob"), [0xff, 0xfe, 0x00]).expect("write");

        relocate(&image, &from, &to).expect("relocate");

        let home = fs::read_to_string(&cfg).expect("read");
        assert_eq!(home, format!("home = {}/python/bin\n", to.display()));
        let pip = fs::read_to_string(&script).expect("read");
        assert!(pip.starts_with(&format!("#!{}/venv/bin/python", to.display())));
        let original = fs::read_to_string(&linked).expect("read");
        assert!(
            original.contains(&from.display().to_string()),
            "hard link was edited"
        );
        assert_eq!(
            fs::read_link(bin.join("python3.11")).expect("readlink"),
            to.join("python/bin/python3.11")
        );
        assert_eq!(
            fs::read(bin.join("blob")).expect("read"),
            vec![0xff, 0xfe, 0x00]
        );
    }

    #[test]
    fn stdlib_copy_leaves_out_packages_and_tests() {
        for skipped in [
            "site-packages",
            "dist-packages",
            "test",
            "config-3.11-x86_64-linux-gnu",
        ] {
            assert!(skip_in_stdlib(OsStr::new(skipped)), "{skipped}");
        }
        for kept in ["os.py", "lib-dynload", "ensurepip", "encodings", "unittest"] {
            assert!(!skip_in_stdlib(OsStr::new(kept)), "{kept}");
        }
    }

    #[test]
    fn python_binary_names_major_minor() {
        assert_eq!(python_binary("3.11.7"), "python3.11");
        assert_eq!(python_binary("3.12.0rc1"), "python3.12");
    }
}
