//! Landlock: the kernel's own path-based access control, applied by the jail
//! init after `pivot_root`, so every path here is a path inside the jail.
//!
//! Read/execute under the interpreter image and the system libraries, read
//! under `/data` (and the few read-only jail files), read-write under `/tmp`
//! and `/dev/shm`. From ABI 6 the domain is also *scoped*: no signal to, and no
//! abstract unix socket of, a process outside it. The zygote adds one more
//! scoped domain per worker after `fork`, which is what keeps a worker from
//! signalling the zygote or its siblings.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

/// The newest ABI this policy was written and tested against. Newer kernels
/// may add access rights Python was never tested without, so we do not ask
/// for more than this.
pub const TESTED_ABI: i32 = 7;
/// Signal and abstract-socket scoping arrived with ABI 6; the per-worker
/// isolation depends on it.
pub const MIN_ABI: i32 = 6;

/// Which paths get which rights (paths as seen inside the jail).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LandlockSpec {
    pub read_exec: Vec<PathBuf>,
    pub read: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock is not available: {0}")]
    Unsupported(String),
    #[error("landlock ABI {found} is older than {needed}, which signal scoping needs")]
    TooOld { found: i32, needed: i32 },
    #[error("building the landlock ruleset failed: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("landlock was only partially enforced ({0:?})")]
    Partial(String),
}

/// The kernel's Landlock ABI version (`landlock_create_ruleset` with the
/// VERSION flag), or why there is none.
pub fn kernel_abi() -> Result<i32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a null attribute pointer with size 0 and the VERSION flag is the
    // documented way to query the ABI; no memory is read or written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if ret < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no landlock support (ENOSYS)".to_string(),
            Some(libc::EOPNOTSUPP) => {
                "landlock is built in but disabled (add `landlock` to the lsm= boot parameter)"
                    .to_string()
            }
            _ => format!("landlock_create_ruleset failed: {err}"),
        });
    }
    i32::try_from(ret).map_err(|_| format!("unexpected landlock ABI value {ret}"))
}

/// Restrict the calling process (and everything it will exec or fork).
/// Returns the ABI in use.
pub fn apply(spec: &LandlockSpec) -> Result<i32, LandlockError> {
    let kernel = kernel_abi().map_err(LandlockError::Unsupported)?;
    if kernel < MIN_ABI {
        return Err(LandlockError::TooOld {
            found: kernel,
            needed: MIN_ABI,
        });
    }
    let used = kernel.min(TESTED_ABI);
    let abi = ABI::from(used);
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    // HardRequirement: a ruleset the kernel can only partly enforce is an
    // error, never a silent downgrade.
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&spec.read_exec, read))?
        .add_rules(path_beneath_rules(&spec.read, read & !AccessFs::Execute))?
        .add_rules(path_beneath_rules(
            &spec.read_write,
            all & !AccessFs::Execute,
        ))?
        .restrict_self()?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::Partial(format!("{:?}", status.ruleset)));
    }
    Ok(used)
}
