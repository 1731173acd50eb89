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
/// Ids per sandbox taken from an unprivileged user's subordinate range
/// (`/etc/subuid`, usually 65536 ids: 16 sandboxes at a time).
pub const SUB_BLOCK: u32 = 4_096;

/// The host uid/gid that root inside the jail maps to, the host ids its
/// workers get (per-worker uid mode), and who writes the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailIds {
    pub uid: u32,
    pub gid: u32,
    pub workers: Option<IdRange>,
    /// `newuidmap`/`newgidmap` write the maps (an unprivileged caller with a
    /// subordinate range); otherwise the supervisor writes them itself.
    pub via_newidmap: bool,
}

/// Inside ids `inside..inside+count` are host uids `host_uid..` and host
/// gids `host_gid..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub host_uid: u32,
    pub host_gid: u32,
    pub count: u32,
}

impl JailIds {
    /// The lines of `uid_map` (`gid == false`) or `gid_map`, as triples.
    pub fn map_lines(&self, gid: bool) -> Vec<[u32; 3]> {
        let root = if gid { self.gid } else { self.uid };
        let mut lines = vec![[0, root, 1]];
        if let Some(w) = self.workers {
            lines.push([w.inside, if gid { w.host_gid } else { w.host_uid }, w.count]);
        }
        lines
    }
}

impl JailIds {
    /// Single-uid mode: host root maps the jail to `nobody`; anyone else maps
    /// it to themselves (the only mapping an unprivileged user may write).
    pub fn single_for_caller() -> JailIds {
        if nix::unistd::geteuid().is_root() {
            JailIds {
                uid: 65534,
                gid: 65534,
                workers: None,
                via_newidmap: false,
            }
        } else {
            JailIds {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                workers: None,
                via_newidmap: false,
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
        match (&self.ids.workers, &self.single_reason) {
            (Some(w), _) => format!(
                "per-worker uids: the zygote is host uid {}, each worker one of host uids {}..{} (its own while it lives){}",
                self.ids.uid,
                w.host_uid,
                w.host_uid + w.count - 1,
                if self.ids.via_newidmap {
                    ", from this user's subordinate range (newuidmap)"
                } else {
                    ""
                }
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
        return match subordinate_lease() {
            Ok(lease) => lease,
            Err(reason) => single(reason),
        };
    }
    if let Err(reason) = range_is_mapped(FIRST_HOST_ID, BLOCKS * BLOCK) {
        return single(reason);
    }
    match lock_block(Path::new(LEASE_DIR), BLOCKS) {
        Ok((index, lock)) => {
            let first = FIRST_HOST_ID + index * BLOCK;
            let count = BLOCK - FIRST_WORKER_ID;
            IdLease {
                ids: JailIds {
                    uid: first,
                    gid: first,
                    workers: Some(IdRange {
                        inside: FIRST_WORKER_ID,
                        host_uid: first + FIRST_WORKER_ID,
                        host_gid: first + FIRST_WORKER_ID,
                        count,
                    }),
                    via_newidmap: false,
                },
                workers: Some(WorkerIds {
                    first: FIRST_WORKER_ID,
                    count,
                }),
                single_reason: None,
                _lock: Some(lock),
            }
        }
        Err(reason) => single(reason),
    }
}

/// An unprivileged caller with a subordinate uid and gid range of its own
/// and the set-uid helpers that may map it (package `uidmap`): root of the
/// jail is the caller's own uid, the workers take a block of the range.
fn subordinate_lease() -> Result<IdLease, String> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let range = |file: &str, id: u32| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        subordinate_range(&text, id, name.as_deref()).ok_or_else(|| {
            format!(
                "an unprivileged caller may map only its own uid unless {file} lends it a range of at least {SUB_BLOCK} ids"
            )
        })
    };
    let (uid_start, uid_count) = range("/etc/subuid", uid)?;
    let (gid_start, gid_count) = range("/etc/subgid", gid)?;
    for helper in ["newuidmap", "newgidmap"] {
        if find_helper(helper).is_none() {
            return Err(format!(
                "/etc/subuid lends a range, but {helper} is not installed (Debian/Ubuntu package uidmap)"
            ));
        }
    }
    let blocks = uid_count.min(gid_count) / SUB_BLOCK;
    let (index, lock) = lock_block(&user_lease_dir(uid), blocks)?;
    Ok(IdLease {
        ids: JailIds {
            uid,
            gid,
            workers: Some(IdRange {
                inside: FIRST_WORKER_ID,
                host_uid: uid_start + index * SUB_BLOCK,
                host_gid: gid_start + index * SUB_BLOCK,
                count: SUB_BLOCK,
            }),
            via_newidmap: true,
        },
        workers: Some(WorkerIds {
            first: FIRST_WORKER_ID,
            count: SUB_BLOCK,
        }),
        single_reason: None,
        _lock: Some(lock),
    })
}

/// The first range of `/etc/subuid` (or subgid) text lent to `id` (by
/// number or by `name`) that holds at least one block.
fn subordinate_range(text: &str, id: u32, name: Option<&str>) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let owner = parts.next()?;
        let start: u32 = parts.next()?.trim().parse().ok()?;
        let count: u32 = parts.next()?.trim().parse().ok()?;
        let mine = owner == id.to_string() || Some(owner) == name;
        (mine && count >= SUB_BLOCK && start.checked_add(count).is_some()).then_some((start, count))
    })
}

/// `newuidmap`/`newgidmap`: on PATH, or where Debian puts them.
pub fn find_helper(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            std::path::PathBuf::from("/usr/bin"),
            std::path::PathBuf::from("/bin"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Where an unprivileged user's leases live: its runtime directory, else a
/// directory of its own under /tmp (created 0700 and refused when anyone
/// else made it).
fn user_lease_dir(uid: u32) -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => {
            Path::new(&dir).join("csv-agent").join("uid-blocks")
        }
        _ => std::env::temp_dir()
            .join(format!("csv-agent-{uid}"))
            .join("uid-blocks"),
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

/// Take a free block of `blocks`, starting at a different place for every
/// sandbox of this process so that concurrent processes rarely contend.
fn lock_block(dir: &Path, blocks: u32) -> Result<(u32, File), String> {
    if blocks == 0 {
        return Err("the id range holds no whole block".to_string());
    }
    ensure_private_dir(dir)?;
    let start = (std::process::id().wrapping_mul(7919)
        + NEXT_START.fetch_add(1, Ordering::Relaxed))
        % blocks;
    for step in 0..blocks {
        let index = (start + step) % blocks;
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
        "all {blocks} uid blocks are leased (lock files in {})",
        dir.display()
    ))
}

/// Create `dir` (and its parent) 0700, and refuse one that is not a real
/// directory owned by us (a planted symlink or a foreign directory).
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
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o022 != 0
        {
            return Err(format!(
                "{} must be a directory of this user, writable only by it",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The range lies inside systemd's documented container range.
    const _: () = assert!(FIRST_HOST_ID as u64 + BLOCKS as u64 * BLOCK as u64 <= 1_879_048_192);
    const _: () = assert!(FIRST_HOST_ID >= 524_288);

    #[test]
    fn blocks_are_leased_exclusively_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = dir.path().join("leases");
        let (a, lock_a) = lock_block(&leases, BLOCKS).expect("a block");
        let (b, _lock_b) = lock_block(&leases, BLOCKS).expect("another block");
        assert_ne!(a, b, "two live leases never share a block");
        drop(lock_a);
        // The freed block can be taken again.
        let mut seen = false;
        let mut held = Vec::new();
        for _ in 0..BLOCKS {
            let (i, l) = lock_block(&leases, BLOCKS).expect("a block");
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
        assert!(lock_block(&link, BLOCKS).is_err());
    }

    #[test]
    fn subordinate_ranges_are_found_by_name_or_number() {
        let text = "alice:100000:65536\n1001:300000:65536\nbob:200000:100\n";
        assert_eq!(
            subordinate_range(text, 1000, Some("alice")),
            Some((100000, 65536))
        );
        assert_eq!(
            subordinate_range(text, 1001, Some("carol")),
            Some((300000, 65536))
        );
        // Too small for one block, or nobody's.
        assert_eq!(subordinate_range(text, 1002, Some("bob")), None);
        assert_eq!(subordinate_range(text, 1003, None), None);
    }

    #[test]
    fn map_lines_keep_root_and_workers_apart() {
        let ids = JailIds {
            uid: 1000,
            gid: 1001,
            workers: Some(IdRange {
                inside: FIRST_WORKER_ID,
                host_uid: 100000,
                host_gid: 200000,
                count: SUB_BLOCK,
            }),
            via_newidmap: true,
        };
        assert_eq!(
            ids.map_lines(false),
            vec![[0, 1000, 1], [1000, 100000, 4096]]
        );
        assert_eq!(
            ids.map_lines(true),
            vec![[0, 1001, 1], [1000, 200000, 4096]]
        );
    }
}
