//! Environment variables and the directories they resolve to, declared in one
//! place so the CLI, the library and the docs agree on their names.

use std::path::PathBuf;

/// Where images (and later other caches) live; overrides everything else.
pub const ENV_CACHE_DIR: &str = "CSV_AGENT_CACHE_DIR";
/// The interpreter the sandbox image is built from (default: `python3`).
pub const ENV_PYTHON: &str = "CSV_AGENT_PYTHON";
/// A ready image folder to use as is, instead of locating or building one.
pub const ENV_IMAGE: &str = "CSV_AGENT_IMAGE";
/// The dataset registry directory (default `./datasets`).
pub const ENV_DATASETS: &str = "CSV_AGENT_DATASETS";
/// Log verbosity of the supervisor (`error`, `warn`, `info`, `debug`).
pub const ENV_LOG: &str = "CSV_AGENT_LOG";

/// The cache directory: `$CSV_AGENT_CACHE_DIR`, else `$XDG_CACHE_HOME/csv-agent`,
/// else `~/.cache/csv-agent`, else `/var/tmp/csv-agent-cache-<uid>` (a user
/// without a home, such as `nobody`, still gets a working cache).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env(ENV_CACHE_DIR) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("csv-agent");
    }
    if let Some(home) = non_empty_env("HOME") {
        let home = PathBuf::from(home);
        if home.is_dir() {
            return home.join(".cache").join("csv-agent");
        }
    }
    // Not /tmp: the jail mounts its own /tmp over that path, so an image kept
    // there could not be bound into it at its own path.
    let uid = nix::unistd::getuid();
    PathBuf::from("/var/tmp").join(format!("csv-agent-cache-{uid}"))
}

/// The interpreter the image is built from: `$CSV_AGENT_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    non_empty_env(ENV_PYTHON)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// `$CSV_AGENT_IMAGE`, when set.
pub fn prebuilt_image() -> Option<PathBuf> {
    non_empty_env(ENV_IMAGE).map(PathBuf::from)
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
