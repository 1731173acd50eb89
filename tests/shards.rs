//! Shard sets through the real binary: N = 1, 2, 4, 7 shards merged equal a
//! one-process run (episode ids and verdicts); a merge refuses shards of
//! another run, naming the odd directory and what differs; `merge --check`
//! lists missing and unfinished shards and writes nothing; a shard killed
//! on the way is repaired by running the same command again; merging again
//! gives the same files.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use csv_agent::schema::Episode;
use serde_json::Value;

fn registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("json")
}

/// (episode id, verified, gold answer hash) of every episode.
fn verdicts(out: &Path) -> BTreeSet<(String, bool, Option<String>)> {
    let body = std::fs::read_to_string(out.join("episodes.jsonl")).expect("episodes.jsonl");
    body.lines()
        .map(|l| {
            let e: Episode = serde_json::from_str(l).expect("episode parses");
            (e.episode_id, e.verified, e.gold_trace.final_answer_hash)
        })
        .collect()
}

/// Every file of a directory (recursively) with its bytes, the lock file aside.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".lock") {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p.strip_prefix(dir).expect("prefix").to_path_buf(), bytes));
            }
        }
    }
    out.sort();
    out
}

fn run(reg: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--questions",
        "template",
        "--datasets",
        path(reg),
        "--only",
        "penguins",
        "--jobs",
        "1",
        "--out",
        path(out),
    ];
    args.extend_from_slice(extra);
    csv_agent(&args)
}

#[test]
fn n_shards_merged_equal_a_one_process_run_for_1_2_4_7() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = registry();
    let cap = ["--max-questions", "10"];
    let whole = dir.path().join("whole");
    let o = run(&reg, &whole, &cap);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let expected = verdicts(&whole);
    assert_eq!(expected.len(), 10);
    let whole_summary = json(&whole.join("summary.json"));
    for n in [1u32, 2, 4, 7] {
        let mut dirs = Vec::new();
        let mut elapsed = 0.0;
        let mut seen = BTreeSet::new();
        for i in 0..n {
            let d = dir.path().join(format!("n{n}-shard-{i}"));
            let shard = format!("{i}/{n}");
            let mut args = cap.to_vec();
            args.extend_from_slice(&["--shard", &shard]);
            let o = run(&reg, &d, &args);
            assert_eq!(o.status.code(), Some(0), "shard {shard}: {}", text(&o));
            let mine = verdicts(&d);
            assert!(seen.is_disjoint(&mine), "shard {shard} overlaps another");
            seen.extend(mine);
            elapsed += json(&d.join("summary.json"))["elapsed"]
                .as_f64()
                .expect("elapsed");
            let record = json(&d.join("run.json"));
            assert_eq!(record["state"], "finished", "{record}");
            assert_eq!(record["shard"]["count"], n, "{record}");
            dirs.push(d);
        }
        let merged = dir.path().join(format!("merged-{n}"));
        let mut args = vec!["merge"];
        args.extend(dirs.iter().map(|d| path(d)));
        args.extend_from_slice(&["--out", path(&merged)]);
        let o = csv_agent(&args);
        assert_eq!(o.status.code(), Some(0), "merge of {n}: {}", text(&o));
        assert_eq!(verdicts(&merged), expected, "N = {n}: ids and verdicts");
        let s = json(&merged.join("summary.json"));
        for field in ["episodes", "verified"] {
            assert_eq!(s[field], whole_summary[field], "N = {n}: {field}");
        }
        let ds = &s["datasets"][0];
        assert_eq!(ds["questions"], 10, "N = {n}: {s}");
        let sum = s["elapsed"].as_f64().expect("elapsed");
        assert!(
            (sum - elapsed).abs() < 1e-6,
            "N = {n}: merged time {sum} is the shards' {elapsed}"
        );
        // The merged output is the whole run again (not a shard).
        let record = json(&merged.join("run.json"));
        assert_eq!(record["shard"], Value::Null);
        assert_eq!(
            record["identity"],
            json(&whole.join("run.json"))["identity"]
        );
        if n == 4 {
            // Idempotent: merging again into the same place gives the same files.
            let before = files(&merged);
            let o = csv_agent(&args);
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
            assert_eq!(files(&merged), before, "a second merge changed a file");
            // `--check` on a complete set says so, exit 0.
            let mut check = vec!["merge", "--check"];
            check.extend(dirs.iter().map(|d| path(d)));
            let o = csv_agent(&check);
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
            assert!(String::from_utf8_lossy(&o.stdout).contains("complete"));
        }
    }
}

/// A registry with penguins under its own name, optionally with one value
/// changed (another dataset content).
fn own_registry(root: &Path, name: &str, change: bool) -> PathBuf {
    let reg = root.join(name);
    let d = reg.join("penguins");
    std::fs::create_dir_all(&d).expect("mkdir");
    let src = registry().join("penguins");
    let mut csv = std::fs::read_to_string(src.join("data.csv")).expect("csv");
    if change {
        csv = csv.replacen("39.1", "39.2", 1);
    }
    std::fs::write(d.join("data.csv"), csv).expect("write csv");
    std::fs::copy(src.join("meta.json"), d.join("meta.json")).expect("meta");
    use std::os::unix::fs::PermissionsExt;
    for p in [root, reg.as_path(), d.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(d.join("data.csv"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    reg
}

#[test]
fn merge_refuses_other_runs_check_lists_gaps_and_a_killed_shard_is_repaired() {
    let dir = world_readable_dir();
    let reg = own_registry(dir.path(), "reg", false);
    let changed = own_registry(dir.path(), "changed", true);
    let cap = ["--max-questions", "6"];
    let shard_args = |s: &'static str| -> Vec<&'static str> {
        let mut a = cap.to_vec();
        a.extend_from_slice(&["--shard", s]);
        a
    };
    let s0 = dir.path().join("shard-0");
    let s1 = dir.path().join("shard-1");
    let o = run(&reg, &s0, &shard_args("0/2"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Shard 1 is killed on the way (SIGKILL once it has recorded its start).
    let mut args: Vec<String> = [
        "run",
        "--questions",
        "template",
        "--datasets",
        path(&reg),
        "--only",
        "penguins",
        "--jobs",
        "1",
        "--out",
        path(&s1),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(shard_args("1/2").iter().map(|s| s.to_string()));
    let _ = image();
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while !s1.join("run.json").is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run.json never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert_eq!(json(&s1.join("run.json"))["state"], "running");

    // --check: shard 1 incomplete, shard 2 of a bigger set absent; nothing written.
    let before = files(&s1);
    let o = csv_agent(&["merge", "--check", path(&s0), path(&s1)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("shard 1/2") && stdout.contains("incomplete"),
        "{stdout}"
    );
    let o = csv_agent(&["merge", "--check", path(&s0)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("shard 1/2: missing"),
        "{}",
        text(&o)
    );
    assert_eq!(files(&s1), before, "--check wrote something");
    // merge refuses the incomplete set, and writes no output.
    let merged = dir.path().join("merged");
    let o = csv_agent(&["merge", path(&s0), path(&s1), "--out", path(&merged)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("incomplete"),
        "{}",
        text(&o)
    );
    assert!(!merged.join("episodes.jsonl").exists());

    // Repair: the same command again.
    let o = run(&reg, &s1, &shard_args("1/2"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = csv_agent(&["merge", "--check", path(&s0), path(&s1)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = csv_agent(&["merge", path(&s0), path(&s1), "--out", path(&merged)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let whole = dir.path().join("whole");
    let o = run(&reg, &whole, &cap);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(verdicts(&merged), verdicts(&whole));

    // Shards of other runs are refused, the odd directory and field named.
    let cases: [(&str, &Path, Vec<&str>, &str); 3] = [
        (
            "content",
            &changed,
            shard_args("1/2"),
            "dataset penguins content",
        ),
        (
            "cap",
            &reg,
            vec!["--max-questions", "5", "--shard", "1/2"],
            "--max-questions: 5 in it, 6 in the others",
        ),
        (
            "count",
            &reg,
            shard_args("1/3"),
            "shard count: 3 shards in it, 2 shards in the others",
        ),
    ];
    for (name, registry, extra, says) in cases {
        let odd = dir.path().join(format!("odd-{name}"));
        let o = run(registry, &odd, &extra);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        // The odd one given first: the majority (s0, s1 of the good run... and
        // the earlier merge's inputs) still decides which run is the reference.
        let o = csv_agent(&[
            "merge",
            path(&odd),
            path(&s0),
            path(&s1),
            "--out",
            path(&dir.path().join(format!("m-{name}"))),
        ]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains(&format!("{} is from another run", odd.display())),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(says), "{name}: {stderr}");
    }

    // A directory that held another run before (other content) and was
    // then run with the right settings: its run.json matches, its old
    // episodes do not, and the merge says so; --fresh cleans it.
    let mixed = dir.path().join("mixed");
    let o = run(&changed, &mixed, &shard_args("1/2"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&reg, &mixed, &shard_args("1/2"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = dir.path().join("m-mixed");
    let o = csv_agent(&["merge", path(&s0), path(&mixed), "--out", path(&m)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&mixed.display().to_string()) && stderr.contains("is not of this run"),
        "{stderr}"
    );
    assert!(!m.join("episodes.jsonl").exists(), "nothing written");
    let mut fresh = shard_args("1/2");
    fresh.push("--fresh");
    let o = run(&reg, &mixed, &fresh);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = csv_agent(&["merge", path(&s0), path(&mixed), "--out", path(&m)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(verdicts(&m), verdicts(&whole));
}
