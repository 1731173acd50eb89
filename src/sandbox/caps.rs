//! Capabilities and `no_new_privs`: the jail keeps none of the capabilities its
//! user namespace gave it, and can never regain any through `execve`.

use caps::{CapSet, CapsHashSet};

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
