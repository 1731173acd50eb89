//! cgroups: one group per zygote and one per worker, with a memory limit and a
//! pids limit (which counts threads, so BLAS threads count too).
//!
//! Works on cgroup v2 and on v1 with the memory and pids controllers, through
//! cgroups-rs. Where the hierarchy is not writable (an unprivileged user
//! without delegation) the caller gets [`CgroupError::Unavailable`] and falls
//! back to rlimits, and says so.
//!
//! Pages a worker shares with the zygote stay charged to the zygote's group
//! (the kernel charges a page to the group that first touched it), so a worker
//! group's usage is what the worker itself allocated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::MaxValue;
use cgroups_rs::fs::{Cgroup, ControllIdentifier, Controller};
use cgroups_rs::CgroupPid;

/// Parent group of every csv-agent group on the host.
const ROOT_GROUP: &str = "csv-agent";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup limits are unavailable: {0}")]
    Unavailable(String),
    #[error("cgroup {path}: {action} failed: {source}")]
    Op {
        path: String,
        action: &'static str,
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// One control group with the memory and pids controllers.
pub struct Group {
    cgroup: Cgroup,
    path: String,
    v2: bool,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("path", &self.path)
            .field("v2", &self.v2)
            .finish()
    }
}

/// Which hierarchy we would use and whether we can write to it, without
/// creating anything lasting (used by the doctor and before a sandbox starts).
pub fn probe() -> Result<String, CgroupError> {
    let name = format!("{ROOT_GROUP}/probe-{}", std::process::id());
    let group = Group::create(
        &name,
        GroupLimits {
            memory_bytes: 64 << 20,
            pids: 16,
        },
    )?;
    let detail = group.describe();
    group.remove();
    Ok(detail)
}

impl Group {
    /// Create (or reuse) the group at `path` (relative to the hierarchy root)
    /// and set its limits.
    pub fn create(path: &str, limits: GroupLimits) -> Result<Group, CgroupError> {
        let hier = cgroups_rs::fs::hierarchies::auto();
        let v2 = hier.v2();
        let controllers = vec!["memory".to_string(), "pids".to_string()];
        let have: Vec<String> = hier
            .subsystems()
            .iter()
            .map(|s| s.controller_name())
            .collect();
        for needed in &controllers {
            if !have.iter().any(|h| h == needed) {
                return Err(CgroupError::Unavailable(format!(
                    "the {} controller is not mounted or enabled (found: {})",
                    needed,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                )));
            }
        }
        let cgroup =
            Cgroup::new_with_specified_controllers(hier, path, Some(controllers)).map_err(|e| {
                // The common case on a restricted runner: the hierarchy belongs
                // to root and nothing was delegated to us.
                CgroupError::Unavailable(format!(
                    "cannot create {path}: {e} (uid {} has no delegated cgroup; run as root or delegate a subtree)",
                    nix::unistd::getuid()
                ))
            })?;
        let group = Group {
            cgroup,
            path: path.to_string(),
            v2,
        };
        group.set_limits(limits)?;
        Ok(group)
    }

    fn op<T>(
        &self,
        action: &'static str,
        r: Result<T, cgroups_rs::fs::error::Error>,
    ) -> Result<T, CgroupError> {
        r.map_err(|source| CgroupError::Op {
            path: self.path.clone(),
            action,
            source,
        })
    }

    pub fn set_limits(&self, limits: GroupLimits) -> Result<(), CgroupError> {
        let mem: &MemController = self.controller()?;
        let bytes = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        self.op("setting the memory limit", mem.set_limit(bytes))?;
        if !self.v2 {
            // v1 would otherwise let the group swap past its limit where swap
            // accounting is on; ignore failure where it is off.
            let _ = mem.set_memswap_limit(bytes);
        }
        let pids: &PidController = self.controller()?;
        let max = i64::try_from(limits.pids).unwrap_or(i64::MAX);
        self.op(
            "setting the pids limit",
            pids.set_pid_max(MaxValue::Value(max)),
        )?;
        Ok(())
    }

    fn controller<'a, T>(&'a self) -> Result<&'a T, CgroupError>
    where
        &'a T: From<&'a cgroups_rs::fs::Subsystem>,
        T: ControllIdentifier + Controller,
    {
        self.cgroup.controller_of::<T>().ok_or_else(|| {
            CgroupError::Unavailable(format!("{}: controller missing after creation", self.path))
        })
    }

    pub fn add(&self, host_pid: u32) -> Result<(), CgroupError> {
        self.op(
            "adding a process",
            self.cgroup
                .add_task_by_tgid(CgroupPid::from(u64::from(host_pid))),
        )
    }

    pub fn procs(&self) -> Vec<u32> {
        self.cgroup
            .procs()
            .into_iter()
            .filter_map(|p| u32::try_from(p.pid).ok())
            .collect()
    }

    /// Directory of the memory controller's group.
    fn memory_dir(&self) -> Option<PathBuf> {
        self.cgroup
            .controller_of::<MemController>()
            .map(|m| m.path().to_path_buf())
    }

    /// Bytes charged to the group now.
    pub fn memory_usage(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_u64(&dir.join(file))
    }

    /// How many processes of this group the OOM killer has killed so far.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.memory_dir() else {
            return 0;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .map(|text| parse_oom_kill(&text))
            .unwrap_or(0)
    }

    /// SIGKILL everything in the group until it is empty (v1 has no
    /// `cgroup.kill`; a fork bomb is bounded by the pids limit, so this ends).
    pub fn kill_all(&self) {
        if self.v2 && self.cgroup.kill().is_ok() {
            return;
        }
        for _ in 0..200 {
            let procs = self.procs();
            if procs.is_empty() {
                return;
            }
            for pid in procs {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kill what is left and remove the group (best effort: a group that
    /// still has a zombie being reaped may refuse once, so retry briefly).
    pub fn remove(&self) {
        self.kill_all();
        for _ in 0..50 {
            if self.cgroup.delete().is_ok() || !self.cgroup.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn describe(&self) -> String {
        format!(
            "cgroup {} ({}) with memory and pids controllers",
            if self.v2 { "v2" } else { "v1" },
            self.memory_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| self.path.clone())
        )
    }
}

/// Remove the groups of sandboxes whose supervisor is gone (`csv-agent/<pid>-<n>`
/// with no process `<pid>`): a supervisor killed by a signal leaves them
/// behind. Best effort; called before a sandbox creates its own groups.
pub fn remove_stale_groups() {
    let hier = cgroups_rs::fs::hierarchies::auto();
    let root =
        Cgroup::load_with_specified_controllers(hier, ROOT_GROUP, vec!["memory".to_string()]);
    let Some(dir) = root
        .controller_of::<MemController>()
        .map(|m| m.path().to_path_buf())
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let leaves: Vec<String> = std::fs::read_dir(entry.path())
            .map(|it| {
                it.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for leaf in leaves {
            let hier = cgroups_rs::fs::hierarchies::auto();
            let v2 = hier.v2();
            let path = sandbox_group_path(&name, &leaf);
            let group = Group {
                cgroup: Cgroup::load_with_specified_controllers(
                    hier,
                    &path,
                    vec!["memory".to_string(), "pids".to_string()],
                ),
                v2,
                path,
            };
            group.remove();
        }
        remove_parent(&sandbox_parent_path(&name));
    }
}

/// Remove an empty parent group left by a sandbox (`csv-agent/<id>`).
pub fn remove_parent(path: &str) {
    let hier = cgroups_rs::fs::hierarchies::auto();
    let cg = Cgroup::load_with_specified_controllers(
        hier,
        path,
        vec!["memory".to_string(), "pids".to_string()],
    );
    let _ = cg.delete();
}

pub fn sandbox_group_path(sandbox_id: &str, leaf: &str) -> String {
    format!("{ROOT_GROUP}/{sandbox_id}/{leaf}")
}

pub fn sandbox_parent_path(sandbox_id: &str) -> String {
    format!("{ROOT_GROUP}/{sandbox_id}")
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The `oom_kill N` line of v1 `memory.oom_control` or v2 `memory.events`.
pub fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.strip_prefix("oom_kill "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oom_kill_from_v1_oom_control() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kill(text), 2);
    }

    #[test]
    fn parses_oom_kill_from_v2_memory_events_without_confusing_oom_group_kill() {
        let text = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(text), 1);
    }

    #[test]
    fn missing_counter_reads_as_zero() {
        assert_eq!(parse_oom_kill("under_oom 0\n"), 0);
    }
}
