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

/// What a worker's own Landlock domain handles, as numbers for
/// `landlock_create_ruleset(2)` and `landlock_add_rule(2)`: computed here,
/// once, from the landlock crate's access-right sets for the ABI in force,
/// and handed to the zygote in its configuration. zygote.py applies these
/// through ctypes after each fork and keeps no table of rights of its own,
/// so the two sides cannot drift apart when the kernel's ABI moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRights {
    /// The ABI the numbers are for: the kernel's, capped at [`TESTED_ABI`]
    /// like the jail's own domain.
    pub abi: i32,
    /// Every filesystem right of that ABI (`handled_access_fs`); a rule on a
    /// directory allows all of them beneath it.
    pub handled_fs: u64,
    /// The rights that apply to a file (a rule on a file allows only these).
    pub file_rights: u64,
    /// Scopes (`scoped`): signals and abstract unix sockets stay inside.
    pub scoped: u64,
}

/// The rights of a worker's domain under Landlock ABI `abi` (as the kernel
/// reports it); an ABI without scopes is refused, as for the jail.
pub fn worker_rights(abi: i32) -> Result<WorkerRights, LandlockError> {
    if abi < MIN_ABI {
        return Err(LandlockError::TooOld {
            found: abi,
            needed: MIN_ABI,
        });
    }
    let used = abi.min(TESTED_ABI);
    let set = ABI::from(used);
    Ok(WorkerRights {
        abi: used,
        handled_fs: AccessFs::from_all(set).bits(),
        file_rights: AccessFs::from_file(set).bits(),
        scoped: Scope::from_all(set).bits(),
    })
}

/// [`worker_rights`] for this kernel's ABI.
pub fn worker_rights_here() -> Result<WorkerRights, LandlockError> {
    worker_rights(kernel_abi().map_err(LandlockError::Unsupported)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_rights_are_the_crates_sets_for_the_abi_in_force() {
        for abi in MIN_ABI..=TESTED_ABI + 3 {
            let rights = worker_rights(abi).expect("an ABI with scopes");
            let set = ABI::from(abi.min(TESTED_ABI));
            assert_eq!(rights.abi, abi.min(TESTED_ABI));
            assert_eq!(rights.handled_fs, AccessFs::from_all(set).bits());
            assert_eq!(rights.file_rights, AccessFs::from_file(set).bits());
            assert_eq!(rights.scoped, Scope::from_all(set).bits());
            assert_eq!(rights.file_rights & !rights.handled_fs, 0);
        }
        for abi in [-1, 0, 1, 5] {
            assert!(matches!(
                worker_rights(abi),
                Err(LandlockError::TooOld { .. })
            ));
        }
    }

    #[test]
    fn worker_rights_match_what_the_zygote_used_to_compute_for_abi_6_and_7() {
        // zygote.py's own table before the numbers came from Rust: ABI 1's
        // EXECUTE..MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV; files: EXECUTE,
        // WRITE_FILE, READ_FILE, TRUNCATE, IOCTL_DEV; both scopes.
        for abi in [6, 7] {
            let rights = worker_rights(abi).expect("rights");
            assert_eq!(rights.handled_fs, (1 << 16) - 1);
            assert_eq!(
                rights.file_rights,
                (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
            );
            assert_eq!(rights.scoped, 1 | 2);
        }
    }
}
