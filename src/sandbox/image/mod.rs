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

mod build;
mod cache;
mod command;
mod copy;
mod interpreter;
mod relocate;

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

pub use build::build;
use build::*;
use cache::*;
use command::*;
use copy::*;
use interpreter::*;
pub use relocate::relocate;
use relocate::*;

/// Pinned Python packages of the image; part of the image key.
pub const REQUIREMENTS: &str = include_str!("../../../sandbox-image/requirements.txt");

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
}
