//! The Kubernetes deployment (deploy/k8s): the manifests parse and pass a
//! Kubernetes schema validator (kubernetes-validate from PyPI, installed in
//! a venv under target/, strict: unknown fields are errors), and a local
//! simulation runs the pod's entrypoint once per index 0..completions-1
//! with the pod's environment, then the merge Job's command, and compares
//! the merged output with a one-process run.
//!
//! What it cannot show: that a cluster admits the pod's security settings
//! and that the jail starts inside a real pod (no cluster and no container
//! engine here); docs/deploy.md says what was and was not exercised.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// Pinned: the schemas it bundles are part of what the test checks.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes version the manifests are written for (see docs/deploy.md).
const KUBERNETES: &str = "1.33.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s(name: &str) -> PathBuf {
    repo().join("deploy/k8s").join(name)
}

/// A venv with the validator (and PyYAML, its dependency), made once under
/// target/ and reused; serialised between test processes by a lock file.
fn venv() -> PathBuf {
    let target = repo().join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    let dir = target.join("k8s-validate-venv");
    let lock = std::fs::File::create(target.join("k8s-validate-venv.lock")).expect("lock file");
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map(|guard| {
            let ready = dir.join("ready");
            if !ready.is_file() {
                let _ = std::fs::remove_dir_all(&dir);
                let python = std::env::var("CSV_AGENT_PYTHON").unwrap_or_else(|_| "python3".into());
                let o = Command::new(&python)
                    .args(["-m", "venv"])
                    .arg(&dir)
                    .output()
                    .expect("python3 runs");
                assert!(o.status.success(), "venv: {}", text(&o));
                let o = Command::new(dir.join("bin/pip"))
                    .args([
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        VALIDATOR,
                    ])
                    .output()
                    .expect("pip runs");
                assert!(o.status.success(), "pip install {VALIDATOR}: {}", text(&o));
                std::fs::write(&ready, VALIDATOR).expect("ready");
            }
            drop(guard);
        })
        .unwrap_or_else(|(_, e)| panic!("locking the venv: {e}"));
    dir
}

fn validate(venv: &Path, files: &[PathBuf]) -> Output {
    Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(files)
        .output()
        .expect("kubernetes-validate runs")
}

#[test]
fn the_manifests_pass_the_kubernetes_schemas_strictly() {
    let venv = venv();
    let files = [k8s("pvc.yaml"), k8s("job.yaml"), k8s("merge-job.yaml")];
    let o = validate(&venv, &files);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("passed").count(), 3, "{}", text(&o));
    // The validator does reject a broken manifest (a misspelt field).
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("job.yaml");
    let body = std::fs::read_to_string(k8s("job.yaml")).expect("job.yaml");
    assert!(body.contains("completionMode: Indexed"));
    std::fs::write(
        &broken,
        body.replace("completionMode: Indexed", "completionMod: Indexed"),
    )
    .expect("write");
    let o = validate(&venv, &[broken]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
}

/// The container of a Job manifest: its args, env and the out volume's mount.
fn pod(venv: &Path, manifest: &Path) -> Value {
    let script = r#"
import json, sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
spec = job["spec"]
c = spec["template"]["spec"]["containers"][0]
print(json.dumps({
    "completions": spec.get("completions", 1),
    "completionMode": spec.get("completionMode"),
    "args": c.get("args", []),
    "env": {e["name"]: e.get("value", "") for e in c.get("env", [])},
    "mounts": {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])},
}))
"#;
    let o = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(manifest)
        .output()
        .expect("python runs");
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

fn verdicts(out: &Path) -> BTreeSet<(String, bool)> {
    std::fs::read_to_string(out.join("episodes.jsonl"))
        .expect("episodes.jsonl")
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).expect("episode");
            (
                e["episode_id"].as_str().unwrap_or_default().to_string(),
                e["verified"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The pod's run flags with the question cap replaced by a small selection
/// (the manifest's own cap is for a real cluster).
fn small(args: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut words = args.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--max-questions" || w == "--only" {
            words.next();
        } else {
            out.push(w);
        }
    }
    // Template questions only: the composed ones shard the same way
    // (tests/pipeline.rs) and would only lengthen this test.
    out.extend([
        "--only",
        "penguins",
        "--max-questions",
        "8",
        "--questions",
        "template",
    ]);
    out.join(" ")
}

#[test]
fn the_pod_entrypoint_run_once_per_index_and_merged_equals_one_process() {
    let venv = venv();
    let image = image();
    let shard_pod = pod(&venv, &k8s("job.yaml"));
    let merge_pod = pod(&venv, &k8s("merge-job.yaml"));
    assert_eq!(shard_pod["completionMode"], "Indexed");
    let n = shard_pod["completions"].as_u64().expect("completions");
    assert_eq!(
        shard_pod["env"]["CSV_AGENT_SHARDS"],
        n.to_string(),
        "completions and CSV_AGENT_SHARDS must agree"
    );
    assert_eq!(merge_pod["env"]["CSV_AGENT_SHARDS"], n.to_string());
    for p in [&shard_pod, &merge_pod] {
        assert_eq!(
            p["env"]["OUT"], p["mounts"]["out"],
            "OUT is the shared volume"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let volume = dir.path().join("volume");
    std::fs::create_dir_all(&volume).expect("mkdir");
    let flags = small(shard_pod["env"]["CSV_AGENT_ARGS"].as_str().unwrap_or(""));
    // The pod's environment, with the paths that are volumes or parts of
    // the container image pointed at their local counterparts.
    let entrypoint = |p: &Value, index: Option<u64>| -> Output {
        let mut cmd = Command::new(k8s("entrypoint.sh"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default());
        if let Some(env) = p["env"].as_object() {
            for (k, v) in env {
                cmd.env(k, v.as_str().unwrap_or_default());
            }
        }
        cmd.env("OUT", &volume)
            .env("CSV_AGENT_BIN", BIN)
            .env("CSV_AGENT_IMAGE", &image.root)
            .env("CSV_AGENT_DATASETS", repo().join("datasets"))
            .env("CSV_AGENT_ARGS", &flags)
            .env("CSV_AGENT_LOG", "warn");
        if let Some(i) = index {
            cmd.env("JOB_COMPLETION_INDEX", i.to_string());
        }
        let args: Vec<String> = p["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        cmd.args(&args).output().expect("entrypoint runs")
    };
    // The merge refuses before every index has run.
    let o = entrypoint(&shard_pod, Some(0));
    assert_eq!(o.status.code(), Some(0), "index 0: {}", text(&o));
    let o = entrypoint(&merge_pod, None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("missing"),
        "{}",
        text(&o)
    );
    for i in 1..n {
        let o = entrypoint(&shard_pod, Some(i));
        assert_eq!(o.status.code(), Some(0), "index {i}: {}", text(&o));
    }
    // An index outside the Job is refused, named.
    let o = entrypoint(&shard_pod, Some(n));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = entrypoint(&merge_pod, None);
    assert_eq!(o.status.code(), Some(0), "merge: {}", text(&o));

    let whole = dir.path().join("whole");
    let mut args = vec!["run", "--datasets"];
    let reg = repo().join("datasets");
    args.push(reg.to_str().expect("utf-8"));
    args.extend(flags.split_whitespace());
    args.extend(["--out", whole.to_str().expect("utf-8")]);
    let o = csv_agent(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let merged = verdicts(&volume.join("merged"));
    assert_eq!(merged.len(), 8);
    assert_eq!(merged, verdicts(&whole), "ids and verdicts");
}

/// Names the `Localhost` seccomp profile refuses.
fn denied_by_profile() -> BTreeSet<String> {
    let profile: Value = serde_json::from_slice(
        &std::fs::read(k8s("seccomp/csv-agent.json")).expect("seccomp/csv-agent.json"),
    )
    .expect("the profile is JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ERRNO")
        .flat_map(|rule| rule["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(String::from))
        .collect()
}

#[test]
fn the_localhost_seccomp_profile_refuses_nothing_the_tool_or_its_jail_uses() {
    let denied = denied_by_profile();
    for must in [
        "ptrace",
        "bpf",
        "kexec_load",
        "init_module",
        "keyctl",
        "userfaultfd",
        "perf_event_open",
        "io_uring_setup",
    ] {
        assert!(denied.contains(must), "the profile should refuse {must}");
    }
    // Statically: nothing csv-agent's own filters allow inside the jail.
    let policy: Value = serde_json::from_slice(
        &std::fs::read(repo().join("src/sandbox/seccomp.json")).expect("seccomp.json"),
    )
    .expect("json");
    let mut allowed = BTreeSet::new();
    for filter in policy.as_object().expect("filters").values() {
        for rule in filter["filter"].as_array().cloned().unwrap_or_default() {
            if let Some(name) = rule["syscall"].as_str() {
                allowed.insert(name.to_string());
            }
        }
    }
    assert!(
        allowed.len() > 100,
        "read the jail's allow-list: {allowed:?}"
    );
    let both: Vec<&String> = denied.intersection(&allowed).collect();
    assert!(
        both.is_empty(),
        "the pod profile refuses what the jail allows: {both:?}"
    );

    // Dynamically: every call a real run makes (supervisor, jail set-up,
    // zygote, workers), traced.
    if Command::new("strace").arg("-V").output().is_err() {
        let o = Command::new("apt-get")
            .args(["install", "-y", "-qq", "strace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("apt-get runs");
        assert!(o.status.success(), "installing strace: {}", text(&o));
    }
    let _ = image();
    let dir = tempfile::tempdir().expect("tempdir");
    let counts = dir.path().join("syscalls.txt");
    let out = dir.path().join("out");
    let o = Command::new("strace")
        .args(["-f", "-qq", "-c", "-o"])
        .arg(&counts)
        .arg(BIN)
        .args(["run", "--questions", "template", "--datasets"])
        .arg(repo().join("datasets"))
        .args(["--only", "penguins", "--max-questions", "3", "--out"])
        .arg(&out)
        .env("CSV_AGENT_LOG", "warn")
        .output()
        .expect("strace runs");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let table = std::fs::read_to_string(&counts).expect("strace counts");
    let used: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|w| {
            w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|w| *w != "total")
        .map(String::from)
        .collect();
    for jail in [
        "unshare",
        "mount",
        "pivot_root",
        "seccomp",
        "landlock_restrict_self",
    ] {
        assert!(
            used.contains(jail),
            "the trace should see the jail's {jail}: {used:?}"
        );
    }
    let both: Vec<&String> = denied.intersection(&used).collect();
    assert!(
        both.is_empty(),
        "the pod profile refuses calls a run makes: {both:?}"
    );
}
