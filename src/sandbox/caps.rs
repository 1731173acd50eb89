//! Capabilities and `no_new_privs`: the jail keeps none of the capabilities its
//! user namespace gave it, and can never regain any through `execve`.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("clearing the capability set {set:?} failed: {source}")]
    Clear {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs failed: {0}")]
    NoNewPrivs(#[source] nix::Error),
}

/// Clear every set: bounding first (so `execve` as uid 0 cannot refill the
/// permitted set from it), then ambient, inheritable, effective and permitted.
/// Effective and permitted go last because dropping the bounding set itself
/// needs `CAP_SETPCAP`. A process that never had capabilities (a jail run
/// without a user namespace by an ordinary user) cannot clear its bounding
/// set; with empty permitted sets and `no_new_privs` it is inert, and the
/// returned detail says so.
pub fn drop_all() -> Result<String, CapsError> {
    let empty = CapsHashSet::new();
    let bounding = clear(CapSet::Bounding, &empty);
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        clear(set, &empty)?;
    }
    match bounding {
        Ok(()) => Ok("all sets empty".to_string()),
        Err(e) => {
            let permitted =
                caps::read(None, CapSet::Permitted).map_err(|source| CapsError::Clear {
                    set: CapSet::Permitted,
                    source,
                })?;
            if permitted.is_empty() {
                Ok("effective, permitted, inheritable and ambient empty; the bounding set could not be cleared without CAP_SETPCAP and is inert under no_new_privs".to_string())
            } else {
                Err(e)
            }
        }
    }
}

/// What the zygote keeps when each worker gets its own uid: the switch
/// itself (`CAP_SETUID`, `CAP_SETGID`), dropping the worker's bounding set
/// before it (`CAP_SETPCAP`), and removing finished tasks' scratch trees,
/// which belong to the workers' uids (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`), and
/// killing its workers when it shuts down (`CAP_KILL`).
/// A worker loses all of them (bounding set included) before any code of a
/// task runs; the zygote runs no code but its own.
pub const ZYGOTE_KEEPS: [Capability; 6] = [
    Capability::CAP_KILL,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
];

/// Keep only `keep` in the bounding, permitted and effective sets (ambient
/// and inheritable empty). The process is root of its user namespace, so
/// `execve` gives it back exactly these (no_new_privs keeps the permitted
/// set from growing beyond what it had).
pub fn keep_only(keep: &[Capability]) -> Result<String, CapsError> {
    let wanted: CapsHashSet = keep.iter().copied().collect();
    for cap in caps::all() {
        if !wanted.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapsError::Clear {
                set: CapSet::Bounding,
                source,
            })?;
        }
    }
    let empty = CapsHashSet::new();
    clear(CapSet::Ambient, &empty)?;
    clear(CapSet::Inheritable, &empty)?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &wanted).map_err(|source| CapsError::Clear { set, source })?;
    }
    let mut names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    names.sort();
    Ok(format!(
        "the zygote keeps {} to give each worker its own uid; workers hold none (every set empty, bounding included)",
        names.join(", ")
    ))
}

fn clear(set: CapSet, empty: &CapsHashSet) -> Result<(), CapsError> {
    let result = match set {
        CapSet::Bounding => caps::clear(None, CapSet::Bounding),
        CapSet::Ambient => caps::clear(None, CapSet::Ambient),
        _ => caps::set(None, set, empty),
    };
    result.map_err(|source| CapsError::Clear { set, source })
}

/// `PR_SET_NO_NEW_PRIVS`: needed for seccomp without `CAP_SYS_ADMIN`, and it
/// makes set-uid binaries and file capabilities inert.
pub fn set_no_new_privs() -> Result<(), CapsError> {
    nix::sys::prctl::set_no_new_privs().map_err(CapsError::NoNewPrivs)
}
