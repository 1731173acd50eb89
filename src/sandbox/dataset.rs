//! The dataset, opened once and checked: the descriptor the jail gets.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::{JailIds, SandboxError};

/// Can `uid`/`gid` read this file by its mode bits alone? (The jail reaches the
/// file through a bind mount, so no directory on the way matters.)
pub(super) fn readable_by(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if owner == uid {
        mode & 0o400 != 0
    } else if group == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

/// Open the dataset once, as `O_PATH | O_NOFOLLOW` (no open side effects,
/// and a path swapped for a symlink is refused rather than followed), and
/// check what the descriptor refers to: a regular file the jail uid can read
/// by its mode bits. The jail mounts (or, without namespaces, reads) this
/// descriptor, so the checked file is the file the jail gets.
pub(super) fn open_dataset(csv: &Path, ids: JailIds) -> Result<OwnedFd, SandboxError> {
    use nix::fcntl::OFlag;
    let dataset = |reason: String| SandboxError::Dataset {
        path: csv.to_path_buf(),
        reason,
    };
    let fd = nix::fcntl::open(
        csv,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| dataset(format!("cannot open it: {e}")))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| dataset(format!("cannot read it: {e}")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(dataset(if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            "was replaced by a symbolic link after it was resolved".to_string()
        } else {
            "is not a regular file".to_string()
        }));
    }
    if !readable_by(st.st_mode, st.st_uid, st.st_gid, ids.uid, ids.gid) {
        return Err(dataset(format!(
            "the jail runs as host uid {} and cannot read it; make it readable (chmod o+r) or copy it somewhere readable",
            ids.uid
        )));
    }
    Ok(fd)
}
