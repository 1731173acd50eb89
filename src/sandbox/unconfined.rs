//! A jail without namespaces (`--allow-degraded` on a host without user
//! namespaces): the same zygote on the host filesystem, in a private work
//! directory, under Landlock.

use std::path::{Path, PathBuf};

use super::spec::{zygote_config, WorkerSetup};
use super::{landlock, spawn, Limits, SandboxError, ZYGOTE_PY};

/// The private directory of a jail without namespaces: a fresh directory
/// with a random name (mkdtemp semantics: mode 0700, created exclusively, so
/// nothing planted in the shared temporary directory is ever used), holding
/// the work directory and, outside it, the Landlock canary.
#[derive(Debug)]
pub(crate) struct UnconfinedDir {
    root: PathBuf,
}

impl UnconfinedDir {
    /// The zygote's working directory, HOME and TMPDIR (Landlock read-write).
    pub(super) fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    /// Readable by its mode bits, outside every Landlock rule.
    pub(super) fn canary(&self) -> PathBuf {
        self.root.join("canary")
    }
    pub(super) fn remove(&self) {
        // remove_dir_all never follows symlinks.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(super) fn unconfined_workdir() -> Result<UnconfinedDir, SandboxError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |what: String| move |source| SandboxError::Io { what, source };
    let temp = std::env::temp_dir();
    let root = tempfile::Builder::new()
        .prefix("csv-agent-jail-")
        .rand_bytes(16)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&temp)
        .map_err(io(format!(
            "creating a private directory in {}",
            temp.display()
        )))?
        .keep();
    let dir = UnconfinedDir { root };
    let made = (|| -> Result<(), SandboxError> {
        let work = dir.work();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .map_err(io(format!(
                "creating the work directory {}",
                work.display()
            )))?;
        let canary = dir.canary();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&canary)
            .and_then(|mut f| f.write_all(b"landlock canary\n"))
            .map_err(io(format!("writing {}", canary.display())))
    })();
    if let Err(e) = made {
        dir.remove();
        return Err(e);
    }
    Ok(dir)
}

/// The host-path variant of `spec`: the same zygote, its files in `workdir`,
/// Landlock limiting the host filesystem to what the zygote needs.
pub(super) fn unconfined_spec(
    spec: &spawn::JailSpec,
    workdir: &Path,
    limits: &Limits,
    lib_paths: Vec<PathBuf>,
    setup: &WorkerSetup,
) -> Result<spawn::UnconfinedSpec, SandboxError> {
    // The dataset is read through the descriptor the supervisor checked
    // (inherited at DATASET_FD), never through its host path again: the
    // Landlock rule and the zygote's path both name the descriptor.
    let csv = PathBuf::from(unconfined_csv_path());
    let zygote = workdir.join("zygote.py");
    std::fs::write(&zygote, ZYGOTE_PY).map_err(|source| SandboxError::Io {
        what: format!("writing {}", zygote.display()),
        source,
    })?;
    let image_root = spec.landlock.read_exec.first().cloned().unwrap_or_default();
    let mut read_exec = vec![image_root];
    read_exec.extend(lib_paths);
    let workdir_text = workdir.display().to_string();
    let env = spec
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "HOME" | "TMPDIR" => (k.clone(), workdir_text.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let rules = landlock::LandlockSpec {
        read_exec,
        read: vec![
            csv.clone(),
            PathBuf::from("/proc"),
            PathBuf::from("/dev/urandom"),
            PathBuf::from("/dev/random"),
        ],
        read_write: vec![
            workdir.to_path_buf(),
            PathBuf::from("/dev/null"),
            PathBuf::from("/dev/zero"),
        ],
    };
    let mut argv = spec.argv.clone();
    if let Some(script) = argv.iter_mut().find(|a| a.as_str() == "/sandbox/zygote.py") {
        *script = zygote.display().to_string();
    }
    if let Some(config) = argv.last_mut() {
        // No user namespace, so no ids to hand out: one uid, as the caller.
        let setup = WorkerSetup {
            ids: None,
            ..setup.clone()
        };
        *config =
            zygote_config(&csv.display().to_string(), limits, &rules, workdir, &setup).to_string();
    }
    Ok(spawn::UnconfinedSpec {
        workdir: workdir.to_path_buf(),
        dataset_fd: Some(spawn::DATASET_FD),
        landlock: rules,
        argv,
        env,
    })
}

/// Where a jail without namespaces finds the dataset: the descriptor the
/// supervisor opened and checked, inherited by the zygote and its workers.
pub(super) fn unconfined_csv_path() -> String {
    format!("/proc/self/fd/{}", spawn::DATASET_FD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unconfined_directory_has_an_unpredictable_private_name() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // The old predictable names, planted as symlinks by "another user":
        // never followed, never reused, left alone.
        let temp = std::env::temp_dir();
        let decoy_target = tempfile::tempdir().expect("tempdir");
        let mut decoys = Vec::new();
        for n in 0..4 {
            let id = format!("{}-{n}", std::process::id());
            for name in [
                format!("csv-agent-jail-{id}"),
                format!("csv-agent-jail-{id}.canary"),
            ] {
                let path = temp.join(name);
                if std::os::unix::fs::symlink(decoy_target.path(), &path).is_ok() {
                    decoys.push(path);
                }
            }
        }
        let a = unconfined_workdir().expect("a private directory");
        let b = unconfined_workdir().expect("another one");
        assert_ne!(a.root, b.root);
        for dir in [&a, &b] {
            let name = dir
                .root
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a name");
            let random = name.strip_prefix("csv-agent-jail-").expect("the prefix");
            assert!(random.len() >= 16, "{name}");
            assert!(
                !random.starts_with(&format!("{}-", std::process::id())),
                "{name}"
            );
            let root = std::fs::symlink_metadata(&dir.root).expect("root");
            assert!(root.is_dir() && !root.file_type().is_symlink());
            assert_eq!(root.permissions().mode() & 0o777, 0o700);
            assert_eq!(root.uid(), nix::unistd::geteuid().as_raw());
            let work = std::fs::symlink_metadata(dir.work()).expect("work");
            assert!(work.is_dir());
            assert_eq!(work.permissions().mode() & 0o777, 0o700);
            // The canary: readable by its mode bits, outside the work
            // directory (the Landlock read-write rule), inside the private one.
            let canary = std::fs::symlink_metadata(dir.canary()).expect("canary");
            assert!(canary.is_file());
            assert_eq!(canary.permissions().mode() & 0o777, 0o644);
            assert!(!dir.canary().starts_with(dir.work()));
            assert!(dir.canary().starts_with(&dir.root));
        }
        a.remove();
        b.remove();
        assert!(!a.root.exists() && !b.root.exists());
        assert_eq!(
            std::fs::read_dir(decoy_target.path())
                .expect("decoy")
                .count(),
            0,
            "something was written through a planted symlink"
        );
        for decoy in decoys {
            assert!(std::fs::symlink_metadata(&decoy)
                .expect("the decoy is left alone")
                .file_type()
                .is_symlink());
            let _ = std::fs::remove_file(decoy);
        }
    }
}
