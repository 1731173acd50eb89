//! seccomp-BPF: the system-call allow-list of the jail.
//!
//! The policy is data (`seccomp.json`, embedded at build time, one `comment`
//! per group of rules) compiled with seccompiler when the jail init loads it.
//! Denied calls fail with `EPERM`, so Python raises an `OSError` instead of
//! dying. A second, tiny filter answers `clone3` with `ENOSYS`: its flags live
//! in memory that BPF cannot read, and glibc falls back to `clone`, whose flags
//! the main filter does check.
//!
//! This module must stay free of anything the init cannot do after `fork`
//! (no threads, no async).

use std::collections::HashMap;

use seccompiler::{BpfProgram, TargetArch};

/// The policy text, as shipped.
pub const POLICY_JSON: &str = include_str!("seccomp.json");

/// Filters of a jail, in install order: the allow-list, then the clone3
/// answer. The kernel runs every installed filter and keeps the strictest
/// verdict, so the order does not change the outcome; it only keeps the
/// listing predictable.
pub const JAIL_FILTERS: &[&str] = &["jail", "clone3_enosys"];
/// A jail without namespaces (degraded mode) also refuses `connect` and
/// non-stream sockets: there, host unix sockets are reachable by path.
pub const UNCONFINED_FILTERS: &[&str] = &["jail", "clone3_enosys", "unconfined"];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp policy does not compile: {0}")]
    Compile(String),
    #[error("the seccomp policy has no filter named `{0}`")]
    MissingFilter(&'static str),
    #[error("installing the seccomp filter `{name}` failed: {source}")]
    Install {
        name: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("seccomp is only built for x86_64 and aarch64 hosts")]
    UnsupportedArch,
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::UnsupportedArch)
    }
}

/// Compile the embedded policy's named filters into BPF programs, in order.
pub fn compile(names: &[&'static str]) -> Result<Vec<(&'static str, BpfProgram)>, SeccompError> {
    let arch = target_arch()?;
    let mut map: HashMap<String, BpfProgram> =
        seccompiler::compile_from_json(POLICY_JSON.as_bytes(), arch)
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
    names
        .iter()
        .map(|name| {
            map.remove(*name)
                .map(|prog| (*name, prog))
                .ok_or(SeccompError::MissingFilter(name))
        })
        .collect()
}

/// Install every filter on the calling thread. `no_new_privs` must already be
/// set (the jail init sets it just before).
pub fn apply(programs: &[(&'static str, BpfProgram)]) -> Result<(), SeccompError> {
    for (name, prog) in programs {
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install { name, source })?;
    }
    Ok(())
}

/// How many system calls the allow-list names (for the doctor's detail line).
pub fn allowed_syscall_count() -> usize {
    serde_json::from_str::<serde_json::Value>(POLICY_JSON)
        .ok()
        .and_then(|v| v["jail"]["filter"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names the issue says may never be allowed, whatever else changes.
    const NEVER: &[&str] = &[
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "mount",
        "umount2",
        "pivot_root",
        "unshare",
        "setns",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "userfaultfd",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "personality",
        "open_by_handle_at",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsmount",
        "mount_setattr",
        "pidfd_getfd",
        "process_madvise",
        "swapon",
        "chroot",
        "setuid",
        "capset",
    ];

    #[test]
    fn policy_compiles_for_this_arch() {
        let progs = compile(UNCONFINED_FILTERS).expect("policy compiles");
        assert_eq!(progs.len(), 3);
        assert!(progs.iter().all(|(_, p)| !p.is_empty()));
    }

    #[test]
    fn forbidden_syscalls_are_never_in_the_allow_list() {
        let policy: serde_json::Value = serde_json::from_str(POLICY_JSON).expect("json");
        let rules = policy["jail"]["filter"].as_array().expect("rules");
        for rule in rules {
            let name = rule["syscall"].as_str().expect("name");
            assert!(!NEVER.contains(&name), "{name} must not be allowed");
        }
    }

    #[test]
    fn socket_rules_are_limited_to_af_unix() {
        let policy: serde_json::Value = serde_json::from_str(POLICY_JSON).expect("json");
        let rules = policy["jail"]["filter"].as_array().expect("rules");
        for name in ["socket", "socketpair", "clone"] {
            let matching: Vec<_> = rules.iter().filter(|r| r["syscall"] == name).collect();
            assert_eq!(matching.len(), 1, "{name} appears once");
            assert!(
                matching[0]["args"].is_array(),
                "{name} has argument conditions"
            );
        }
    }
}
