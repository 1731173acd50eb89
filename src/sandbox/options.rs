//! What a caller asks of a sandbox: [`SandboxOptions`] (the dataset, the
//! image, the limits, degraded mode) and the test-only [`TestHooks`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Image, Limits, SandboxError};

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub csv: PathBuf,
    pub image: Image,
    pub limits: Limits,
    /// Run even when a layer is unavailable (it is still reported).
    pub allow_degraded: bool,
    /// The binary to re-execute as the jail init (default: this executable).
    pub init_program: PathBuf,
    /// Workers kept pre-forked so a task starts without waiting.
    pub spare_workers: usize,
    /// Give each worker its own uid where the host lends a uid range (a root
    /// supervisor); `false` forces single-uid mode (see [`uids`](super::uids)).
    pub worker_uids: bool,
    pub startup_timeout: Duration,
    /// Test-only knobs (see [`TestHooks`]); the default changes nothing.
    #[doc(hidden)]
    pub test_hooks: TestHooks,
}

/// A test hook called with the dataset's canonical path.
#[doc(hidden)]
pub type DatasetHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Test-only knobs of [`SandboxOptions`]: ways to make the races and
/// failures the jail must survive happen on purpose.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// Runs right after `Sandbox::start` opened and checked the dataset,
    /// with its canonical path (a test swaps the path for a symlink here).
    pub after_dataset_open: Option<DatasetHook>,
    /// Extra paths for every worker's own Landlock domain (a path Landlock
    /// refuses makes the worker's scope fail for real).
    pub extra_worker_paths: Vec<String>,
    /// Hold up the cgroup sweep of worker `.0` for `.1` (what a cgroup v1
    /// kill of processes that resist may cost), to show it stalls no other cell.
    pub slow_cgroup_kill: Option<(u64, Duration)>,
}

impl std::fmt::Debug for TestHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHooks")
            .field("after_dataset_open", &self.after_dataset_open.is_some())
            .field("extra_worker_paths", &self.extra_worker_paths)
            .field("slow_cgroup_kill", &self.slow_cgroup_kill)
            .finish()
    }
}

impl SandboxOptions {
    pub fn new(csv: impl Into<PathBuf>, image: Image) -> Result<Self, SandboxError> {
        let init_program = std::env::current_exe().map_err(|source| SandboxError::Io {
            what: "locating our own executable".to_string(),
            source,
        })?;
        Ok(SandboxOptions {
            csv: csv.into(),
            image,
            limits: Limits::default(),
            allow_degraded: false,
            init_program,
            spare_workers: 1,
            worker_uids: true,
            startup_timeout: Duration::from_secs(180),
            test_hooks: TestHooks::default(),
        })
    }
}
