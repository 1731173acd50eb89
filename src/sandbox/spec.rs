//! The jail's declarative parts: what of the host it sees, the zygote's
//! configuration, and where images may live.

use std::path::{Path, PathBuf};

use super::{landlock, mounts, protocol, seccomp, spawn, uids, Limits, SandboxError};

/// Open files the zygote may hold (see [`rlimits::RlimitSpec::nofile`](super::rlimits::RlimitSpec::nofile)).
pub(super) const ZYGOTE_NOFILE: u64 = 65_536;

/// Paths the jail mounts or creates itself; nothing of the host may be bound
/// beneath them.
pub(super) const JAIL_OWN_PATHS: &[&str] = &[
    "/tmp", "/scratch", "/dev", "/proc", "/data", "/sandbox", "/etc",
];

pub(super) fn jail_file_name(csv: &Path) -> String {
    let name = csv
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("data.csv")
        .to_string();
    let safe = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if safe {
        name
    } else {
        "data.csv".to_string()
    }
}

/// What the jail gets to see of the host: the image, the shared libraries
/// Python and the wheels link against, and the time-zone database.
pub(super) fn system_binds_and_links() -> (Vec<mounts::Bind>, Vec<(PathBuf, PathBuf)>, Vec<PathBuf>)
{
    let mut binds = Vec::new();
    let mut links = Vec::new();
    let mut lib_paths = Vec::new();
    for dir in [
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib32",
        "/lib",
        "/lib64",
        "/lib32",
    ] {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    links.push((path.to_path_buf(), target));
                }
            }
            Ok(meta) if meta.is_dir() => {
                binds.push(mounts::Bind {
                    source: path.to_path_buf(),
                    target: path.to_path_buf(),
                    writable: false,
                    optional: true,
                    fd: None,
                });
                lib_paths.push(path.to_path_buf());
            }
            _ => {}
        }
    }
    for (source, optional) in [("/usr/share/zoneinfo", true), ("/etc/ld.so.cache", true)] {
        if Path::new(source).exists() {
            binds.push(mounts::Bind {
                source: PathBuf::from(source),
                target: PathBuf::from(source),
                writable: false,
                optional,
                fd: None,
            });
            lib_paths.push(PathBuf::from(source));
        }
    }
    (binds, links, lib_paths)
}

/// An image (or the cache that will hold it) must not lie under a path the
/// jail mounts for itself: it is bound into the jail at its own host path.
pub fn check_image_location(path: &Path) -> Result<(), SandboxError> {
    match JAIL_OWN_PATHS.iter().find(|p| path.starts_with(p)) {
        Some(reserved) => Err(SandboxError::ImageLocation {
            path: path.to_path_buf(),
            reserved,
        }),
        None => Ok(()),
    }
}

/// What the zygote does to each worker before its first cell, beyond its
/// Landlock domain: the uid it switches to and the seccomp filter it adds.
#[derive(Debug, Clone)]
pub(super) struct WorkerSetup {
    pub(super) ids: Option<uids::WorkerIds>,
    /// [`seccomp::WORKER_FILTER`], compiled, as hex.
    pub(super) filter_hex: String,
    /// Paths added to every worker's Landlock domain (tests only).
    pub(super) extra_worker_paths: Vec<String>,
}

/// The zygote's configuration (its only argument). `worker_paths` is what a
/// worker's own Landlock domain keeps: everything the jail's domain allows
/// except the shared scratch root (`scratch`), of which each worker gets only
/// its own `task-<id>` directory.
pub(super) fn zygote_config(
    csv_path: &str,
    limits: &Limits,
    jail_rules: &landlock::LandlockSpec,
    scratch: &Path,
    setup: &WorkerSetup,
) -> serde_json::Value {
    let worker_paths: Vec<String> = jail_rules
        .read_exec
        .iter()
        .chain(&jail_rules.read)
        .chain(&jail_rules.read_write)
        .filter(|p| p.as_path() != scratch)
        .map(|p| p.display().to_string())
        .chain(setup.extra_worker_paths.iter().cloned())
        .collect();
    serde_json::json!({
        "csv": csv_path,
        "control_fd": spawn::CONTROL_FD,
        "max_output": limits.max_output_bytes,
        "max_frame": protocol::worker_frame_limit(limits.max_output_bytes),
        "worker_scope": true,
        "private_tmp": true,
        "worker_paths": worker_paths,
        "threads": 1,
        "worker_ids": setup.ids,
        "worker_filter": {
            "bpf": setup.filter_hex,
            "placeholder": seccomp::WORKER_PID_PLACEHOLDER,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_file_names_are_kept_only_when_plain() {
        assert_eq!(jail_file_name(Path::new("/x/penguins.csv")), "penguins.csv");
        assert_eq!(jail_file_name(Path::new("/x/my data (1).csv")), "data.csv");
        assert_eq!(jail_file_name(Path::new("/x/ünïcode.tsv")), "data.csv");
    }
}
