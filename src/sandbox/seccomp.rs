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
/// The filter each worker installs on itself right after `fork`, with its
/// own pid in place of [`WORKER_PID_PLACEHOLDER`]: system calls that name
/// another process by pid may only name the worker itself (0 or its pid).
pub const WORKER_FILTER: &str = "worker";
/// The value the worker filter compares against where the worker's own pid
/// belongs; no pid can have it (pids stay below 2^22). The zygote replaces
/// it in the compiled program (`k` of each jump that compares with it).
pub const WORKER_PID_PLACEHOLDER: u32 = 0x7fff_fff7;
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

/// The worker filter as bytes: `struct sock_filter` (u16 code, u8 jt, u8 jf,
/// u32 k, native endian), concatenated and hex-encoded for the zygote's
/// configuration.
pub fn worker_filter_hex() -> Result<String, SeccompError> {
    let programs = compile(&[WORKER_FILTER])?;
    let mut bytes = Vec::new();
    for (_, program) in &programs {
        for ins in program {
            bytes.extend_from_slice(&ins.code.to_ne_bytes());
            bytes.push(ins.jt);
            bytes.push(ins.jf);
            bytes.extend_from_slice(&ins.k.to_ne_bytes());
        }
    }
    Ok(hex::encode(bytes))
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
    use serde_json::Value;

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
        "setreuid",
        "setfsuid",
        "setgid",
        "setregid",
        "setfsgid",
        "setgroups",
        "capset",
        // Calls that act on another process named by pid, pidfd or tid and
        // that no task needs (each is refused from inside a real jail in
        // tests/security_workers.rs).
        "pidfd_open",
        "pidfd_send_signal",
        "kcmp",
        "migrate_pages",
        "move_pages",
        "ioprio_set",
        "ioprio_get",
        "sched_setparam",
        "sched_setscheduler",
        "sched_setattr",
        "sched_getattr",
        "sched_rr_get_interval",
        "process_mrelease",
    ];

    /// Every system call of the x86_64 table that takes the pid, pgid, tid or
    /// pidfd of another process, with how the jail confines it when allowed.
    /// docs/security.md lists the same table with the test of each line.
    const PID_TAKING: &[(&str, Confinement)] = &[
        ("prlimit64", Confinement::WorkerFilter),
        ("setpriority", Confinement::WorkerFilter),
        ("getpriority", Confinement::WorkerFilter),
        ("sched_setaffinity", Confinement::WorkerFilter),
        ("sched_getaffinity", Confinement::WorkerFilter),
        ("sched_getparam", Confinement::WorkerFilter),
        ("sched_getscheduler", Confinement::WorkerFilter),
        ("get_robust_list", Confinement::WorkerFilter),
        ("getpgid", Confinement::WorkerFilter),
        ("getsid", Confinement::WorkerFilter),
        // Landlock's signal scope (and a different uid, per-worker mode).
        ("kill", Confinement::Kernel),
        ("tkill", Confinement::Kernel),
        ("tgkill", Confinement::Kernel),
        ("rt_sigqueueinfo", Confinement::Kernel),
        ("rt_tgsigqueueinfo", Confinement::Kernel),
        // F_SETOWN names a pid for SIGIO: Landlock scopes that signal too.
        ("fcntl", Confinement::Kernel),
        // Children only.
        ("wait4", Confinement::Kernel),
        ("waitid", Confinement::Kernel),
        // Itself or its own children, within its own session.
        ("setpgid", Confinement::Kernel),
        // The header names the pid in memory (BPF cannot read it); reading
        // capabilities changes nothing (and every jail process has none
        // but the zygote's uid-switching set).
        ("capget", Confinement::Kernel),
        ("ptrace", Confinement::Denied),
        ("process_vm_readv", Confinement::Denied),
        ("process_vm_writev", Confinement::Denied),
        ("process_madvise", Confinement::Denied),
        ("process_mrelease", Confinement::Denied),
        ("pidfd_open", Confinement::Denied),
        ("pidfd_send_signal", Confinement::Denied),
        ("pidfd_getfd", Confinement::Denied),
        ("kcmp", Confinement::Denied),
        ("migrate_pages", Confinement::Denied),
        ("move_pages", Confinement::Denied),
        ("ioprio_set", Confinement::Denied),
        ("ioprio_get", Confinement::Denied),
        ("sched_setparam", Confinement::Denied),
        ("sched_setscheduler", Confinement::Denied),
        ("sched_setattr", Confinement::Denied),
        ("sched_getattr", Confinement::Denied),
        ("sched_rr_get_interval", Confinement::Denied),
        ("setns", Confinement::Denied),
    ];

    #[derive(Debug, PartialEq)]
    enum Confinement {
        /// Allowed by the jail; the worker filter refuses any pid but 0 and
        /// the worker's own.
        WorkerFilter,
        /// Allowed; the kernel confines it (the test proves it).
        Kernel,
        /// Not in the allow-list.
        Denied,
    }

    fn rules(filter: &str) -> Vec<Value> {
        let policy: Value = serde_json::from_str(POLICY_JSON).expect("json");
        policy[filter]["filter"].as_array().expect("rules").clone()
    }

    fn names(filter: &str) -> Vec<String> {
        rules(filter)
            .iter()
            .map(|r| r["syscall"].as_str().expect("name").to_string())
            .collect()
    }

    #[test]
    fn every_pid_taking_call_is_denied_filtered_or_kernel_confined() {
        let allowed = names("jail");
        let filtered = names(WORKER_FILTER);
        for (name, how) in PID_TAKING {
            let in_jail = allowed.iter().any(|n| n == name);
            let in_worker = filtered.iter().any(|n| n == name);
            match how {
                Confinement::Denied => assert!(!in_jail, "{name} must not be allowed"),
                Confinement::WorkerFilter => {
                    assert!(in_jail && in_worker, "{name}: allowed and worker-filtered")
                }
                Confinement::Kernel => assert!(in_jail && !in_worker, "{name}"),
            }
        }
        for name in &filtered {
            assert!(
                PID_TAKING
                    .iter()
                    .any(|(n, how)| n == name && *how == Confinement::WorkerFilter),
                "{name} is worker-filtered but not listed as such"
            );
        }
    }

    #[test]
    fn worker_filter_compares_with_the_pid_placeholder() {
        let hex_text = worker_filter_hex().expect("compiles");
        let bytes = hex::decode(hex_text).expect("hex");
        assert_eq!(bytes.len() % 8, 0);
        let ks: Vec<u32> = bytes
            .chunks(8)
            .map(|c| u32::from_ne_bytes([c[4], c[5], c[6], c[7]]))
            .collect();
        // One comparison per self-only rule (10 rules).
        assert_eq!(
            ks.iter().filter(|k| **k == WORKER_PID_PLACEHOLDER).count(),
            10
        );
    }

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
