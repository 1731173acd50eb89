//! Which host ids a jail runs as.
//!
//! **Per-worker uids** (a root supervisor whose user namespace maps the
//! range below): each sandbox leases a block of [`BLOCK`] host uids (and the
//! same gids) of its own, held by a lock file for its whole life. Root of the
//! jail (the zygote) is the block's first id; every worker switches to one
//! more of the block right after `fork`, before it runs any code. Then the
//! kernel's own permission checks (signals, ptrace, `prlimit`,
//! `setpriority`, `sched_setaffinity`, `/proc/<pid>` files) separate a worker
//! from the zygote and from its siblings, and every per-user kernel count
//! (processes, pending signals, descriptors in flight on unix sockets,
//! epoll watches) is kept per worker and per sandbox. This is how isolate
//! gives each box its own uid.
//!
//! **Single uid** (an unprivileged caller, or a host that lends no range):
//! root of the jail is one host uid (the caller's own), and the workers share
//! it; the seccomp filters and Landlock scoping confine them instead.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// The first host uid of the first block: inside the range systemd documents
/// for container uid ranges (524288–1879048191), clear of the 16-bit ranges
/// that `/etc/subuid` allocations usually take.
pub const FIRST_HOST_ID: u32 = 1_600_000_000;
/// Ids per sandbox: the zygote's and one per concurrently living worker.
pub const BLOCK: u32 = 65_536;
/// Blocks in the range: 4096 × 65536 ids end below 1879048191.
pub const BLOCKS: u32 = 4_096;
/// The first uid inside the jail that a worker may get (the ones below stay
/// unused, so a worker is never mistaken for a system account).
pub const FIRST_WORKER_ID: u32 = 1_000;
/// Where the leases are recorded (root only).
pub const LEASE_DIR: &str = "/run/csv-agent/uid-blocks";

/// The host uid/gid that root inside the jail maps to, and how many
/// consecutive ids from there are mapped (inside ids 0..count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailIds {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl JailIds {
    /// Single-uid mode: host root maps the jail to `nobody`; anyone else maps
    /// it to themselves (the only mapping an unprivileged user may write).
    pub fn single_for_caller() -> JailIds {
        if nix::unistd::geteuid().is_root() {
            JailIds {
                uid: 65534,
                gid: 65534,
                count: 1,
            }
        } else {
            JailIds {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                count: 1,
            }
        }
    }
}

/// The ids the zygote hands to workers (inside the jail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerIds {
    pub first: u32,
    pub count: u32,
}

/// A sandbox's ids for its whole life; the block is free again when this is
/// dropped.
#[derive(Debug)]
pub struct IdLease {
    pub ids: JailIds,
    /// Per-worker ids, or `None` in single-uid mode.
    pub workers: Option<WorkerIds>,
    /// Why the jail runs in single-uid mode (None in per-worker mode).
    pub single_reason: Option<String>,
    _lock: Option<File>,
}

impl IdLease {
    /// The mode as `doctor` shows it.
    pub fn describe(&self) -> String {
        match (&self.workers, &self.single_reason) {
            (Some(w), _) => format!(
                "per-worker uids: the zygote is host uid {}, each worker one of host uids {}..{} (its own while it lives)",
                self.ids.uid,
                self.ids.uid + w.first,
                self.ids.uid + w.first + w.count - 1
            ),
            (None, reason) => format!(
                "single uid: the zygote and every worker are host uid {}{}; seccomp argument filters and Landlock scoping separate the workers",
                self.ids.uid,
                reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        }
    }
}

static NEXT_START: AtomicU32 = AtomicU32::new(0);

/// Lease ids for one sandbox: a block of its own when `per_worker` is asked
/// for and the host allows it, else single-uid mode with the reason.
pub fn lease(per_worker: bool) -> IdLease {
    let single = |reason: String| IdLease {
        ids: JailIds::single_for_caller(),
        workers: None,
        single_reason: Some(reason),
        _lock: None,
    };
    if !per_worker {
        return single("per-worker uids turned off".to_string());
    }
    if !nix::unistd::geteuid().is_root() {
        return single("an unprivileged caller may map only its own uid into the jail".to_string());
    }
    if let Err(reason) = range_is_mapped(FIRST_HOST_ID, BLOCKS * BLOCK) {
        return single(reason);
    }
    match lock_block(Path::new(LEASE_DIR)) {
        Ok((index, lock)) => {
            let first = FIRST_HOST_ID + index * BLOCK;
            IdLease {
                ids: JailIds {
                    uid: first,
                    gid: first,
                    count: BLOCK,
                },
                workers: Some(WorkerIds {
                    first: FIRST_WORKER_ID,
                    count: BLOCK - FIRST_WORKER_ID,
                }),
                single_reason: None,
                _lock: Some(lock),
            }
        }
        Err(reason) => single(reason),
    }
}

/// Whether our own user namespace maps host ids `first..first+count` (it
/// does on a host; in a container it may not).
fn range_is_mapped(first: u32, count: u32) -> Result<(), String> {
    let map = std::fs::read_to_string("/proc/self/uid_map")
        .map_err(|e| format!("cannot read /proc/self/uid_map: {e}"))?;
    let end = u64::from(first) + u64::from(count);
    let covered = map.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= u64::from(first) && f[0] + f[2] >= end
    });
    if covered {
        Ok(())
    } else {
        Err(format!(
            "this user namespace does not map host uids {first}..{end}"
        ))
    }
}

/// Take the first free block, starting at a different place for every
/// sandbox of this process so that concurrent processes rarely contend.
fn lock_block(dir: &Path) -> Result<(u32, File), String> {
    ensure_private_dir(dir)?;
    let start = (std::process::id().wrapping_mul(7919)
        + NEXT_START.fetch_add(1, Ordering::Relaxed))
        % BLOCKS;
    for step in 0..BLOCKS {
        let index = (start + step) % BLOCKS;
        let path = dir.join(format!("{index}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if fs2::FileExt::try_lock_exclusive(&file).is_ok() {
            return Ok((index, file));
        }
    }
    Err(format!(
        "all {BLOCKS} uid blocks are leased (lock files in {})",
        dir.display()
    ))
}

/// Create `dir` (and its parent) 0700, and refuse one that is not a real
/// directory owned by root (a planted symlink or a foreign directory).
fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let parent = dir.parent().unwrap_or(dir);
    for path in [parent, dir] {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} must be a directory owned by root and writable only by it",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_ends_below_the_documented_container_range_end() {
        assert!(u64::from(FIRST_HOST_ID) + u64::from(BLOCKS) * u64::from(BLOCK) <= 1_879_048_192);
        assert!(FIRST_HOST_ID >= 524_288);
    }

    #[test]
    fn blocks_are_leased_exclusively_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = dir.path().join("leases");
        let (a, lock_a) = lock_block(&leases).expect("a block");
        let (b, _lock_b) = lock_block(&leases).expect("another block");
        assert_ne!(a, b, "two live leases never share a block");
        drop(lock_a);
        // The freed block can be taken again.
        let mut seen = false;
        let mut held = Vec::new();
        for _ in 0..BLOCKS {
            let (i, l) = lock_block(&leases).expect("a block");
            held.push(l);
            if i == a {
                seen = true;
                break;
            }
        }
        assert!(seen, "block {a} was not freed");
    }

    #[test]
    fn a_symlinked_lease_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).expect("mkdir");
        let link = dir.path().join("leases");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(lock_block(&link).is_err());
    }
}
