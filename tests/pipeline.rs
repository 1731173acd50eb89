//! The main job end to end, through the real binary: every template on every
//! shipped dataset, resume after SIGKILL (each episode exactly once), bad
//! datasets failing alone, shards merged equal to one run, and the commands
//! that read a run's output.

mod common;
#[path = "support/golden_run.rs"]
mod golden_run;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use csv_agent::schema::{Episode, Question};
use serde_json::Value;

fn registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")
}

fn episodes(out: &Path) -> Vec<Episode> {
    let body = std::fs::read_to_string(out.join("episodes.jsonl")).expect("episodes.jsonl");
    body.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("episode line parses ({e}): {l}"))
        })
        .collect()
}

fn questions(out: &Path, slug: &str) -> Vec<Question> {
    let body = std::fs::read_to_string(out.join("questions").join(format!("{slug}.jsonl")))
        .expect("questions file");
    body.lines()
        .map(|l| serde_json::from_str(l).expect("question parses"))
        .collect()
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
        .expect("summary is json")
}

fn dataset_summary<'a>(summary: &'a Value, slug: &str) -> &'a Value {
    summary["datasets"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["dataset"] == slug))
        .unwrap_or_else(|| panic!("{slug} in summary: {summary}"))
}

#[test]
fn a_full_run_verifies_every_template_on_every_shipped_dataset_and_resumes_as_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let reg = registry();
    let o = csv_agent(&["run", "--datasets", path(&reg), "--out", path(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The same episodes as the golden run, apart from timings.
    golden_run::assert_matches_golden(&out.join("episodes.jsonl"));
    let all = episodes(&out);
    let catalog = csv_agent::questions::catalog().expect("catalog");
    assert!(catalog.len() >= 32);
    // A template whose programs disagree on a shipped dataset is a bug.
    let unverified: Vec<String> = all
        .iter()
        .filter(|e| !e.verified)
        .map(|e| {
            format!(
                "{} on {}: {:?}",
                e.question.template_name.as_deref().unwrap_or("-"),
                e.dataset,
                e.reason
            )
        })
        .collect();
    assert!(
        unverified.is_empty(),
        "unverified episodes:\n{}",
        unverified.join("\n")
    );
    // Every template applies somewhere and ran there.
    let used: BTreeSet<&str> = all
        .iter()
        .filter_map(|e| e.question.template_name.as_deref())
        .collect();
    let missing: Vec<&str> = catalog
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !used.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "templates with no episode on any shipped dataset: {missing:?}"
    );
    let datasets: BTreeSet<&str> = all.iter().map(|e| e.dataset.as_str()).collect();
    assert_eq!(datasets.len(), 4, "{datasets:?}");

    let composed = all
        .iter()
        .filter(|e| e.source == csv_agent::schema::QuestionSource::Compose)
        .count();
    assert_eq!(
        composed,
        4 * csv_agent::questions::compose::DEFAULT_MAX_QUESTIONS,
        "the default run composes questions on every dataset"
    );
    let mut ids = HashSet::new();
    for e in &all {
        assert!(
            ids.insert(e.episode_id.clone()),
            "duplicate episode {}",
            e.episode_id
        );
        let q = &e.question;
        // The default run: templates and composed questions.
        assert!(matches!(
            e.source,
            csv_agent::schema::QuestionSource::Template
                | csv_agent::schema::QuestionSource::Compose
        ));
        assert!(q.programs.is_none(), "episodes do not repeat the programs");
        assert_eq!(
            e.gold_trace.turns.len() as u32,
            q.n_steps,
            "one gold turn per step"
        );
        assert!(!e.consistency_traces.is_empty());
        assert!(
            e.triangulation.gold_matches_majority && e.triangulation.n_consistency_agreeing >= 1
        );
        assert_eq!(e.triangulation.gold_matches_ground_truth, Some(true));
        let gt_hash = q.ground_truth_hash.as_ref().expect("ground truth hash");
        assert!(q.ground_truth_hashes.contains(gt_hash));
        assert_eq!(
            e.gold_trace.final_answer_hash.as_ref(),
            Some(gt_hash),
            "gold reproduces the ground truth"
        );
        let hooks: usize = e
            .gold_trace
            .turns
            .iter()
            .map(|t| t.execution.hooks.len())
            .sum();
        assert!(hooks > 0, "{} has no hooks", e.episode_id);
        for turn in &e.gold_trace.turns {
            assert!(!turn.reasoning.is_empty());
            for h in &turn.execution.hooks {
                assert!(
                    turn.code.contains(&h.code_line),
                    "hook line {:?} is not in the code",
                    h.code_line
                );
            }
        }
        let last = e.gold_trace.turns.last().expect("turns");
        assert_eq!(
            last.execution.submitted_answer.as_ref(),
            e.gold_trace.final_answer.as_ref()
        );
    }
    // The raw lines carry the DESIGN.md field names.
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(out.join("episodes.jsonl"))
            .expect("read")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    for key in [
        "episode_id",
        "timestamp",
        "csv_source",
        "source",
        "question",
        "gold_trace",
        "consistency_traces",
        "verified",
        "triangulation",
        "timing",
    ] {
        assert!(first.get(key).is_some(), "episode lacks {key}");
    }
    for key in [
        "n_consistency_runs",
        "n_consistency_succeeded",
        "majority_answer_hash",
        "majority_count",
        "gold_matches_majority",
    ] {
        assert!(
            first["triangulation"].get(key).is_some(),
            "triangulation lacks {key}"
        );
    }
    for key in [
        "gold_elapsed",
        "consistency_elapsed",
        "total_elapsed",
        "avg_elapsed",
    ] {
        assert!(first["timing"].get(key).is_some(), "timing lacks {key}");
    }

    let s = summary(&out);
    assert_eq!(s["episodes"], all.len() as u64);
    assert_eq!(s["verified"], all.len() as u64);
    for slug in &datasets {
        let qs = questions(&out, slug);
        assert!(qs
            .iter()
            .all(|q| q.ground_truth.is_some() && q.programs.is_some()));
        assert_eq!(dataset_summary(&s, slug)["questions"], qs.len() as u64);
        assert!(out.join("logs").join(format!("{slug}.log")).is_file());
    }

    // Rerun: nothing left to do, no sandbox needed, nothing duplicated.
    let o = csv_agent(&["run", "--datasets", path(&reg), "--out", path(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(episodes(&out).len(), all.len());
    let log = std::fs::read_to_string(out.join("logs/penguins.log")).expect("log");
    assert!(log.contains("already done"), "{log}");

    // status and inspect read the same output.
    let o = csv_agent(&["status", "--out", path(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains("penguins") && shown.contains(&format!("{} episodes", all.len())),
        "{shown}"
    );
    let o = csv_agent(&[
        "inspect",
        "--out",
        path(&out),
        "trace",
        &all[0].episode_id[..10],
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains("gold trace")
            && shown.contains("VERIFIED")
            && shown.contains(&all[0].question.question_text),
        "{shown}"
    );
    let o = csv_agent(&["inspect", "--out", path(&out), "trace", "zzzz"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = csv_agent(&[
        "inspect",
        "--out",
        path(&out),
        "questions",
        "--dataset",
        "grunfeld",
    ]);
    assert_eq!(o.status.code(), Some(0));
    // A composed question shows its chain on a second line.
    let qs = questions(&out, "grunfeld");
    let composed = qs.iter().filter(|q| q.composition.is_some()).count();
    assert!(composed > 0);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1 + qs.len() + composed
    );
}

#[test]
fn killing_a_run_and_rerunning_yields_every_episode_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let reg = registry();
    let args = [
        "run",
        "--questions",
        "template",
        "--datasets",
        path(&reg),
        "--only",
        "penguins",
        "--max-questions",
        "16",
        "--concurrency",
        "2",
        "--out",
        path(&out),
    ];
    // The questions first, so that the run reuses their file and its
    // program teacher runs every program again, question by question (when
    // the run establishes the ground truth itself, its traces are those
    // runs and the episodes are written in one burst, too fast to kill in
    // the middle of).
    let mut questions_args = args.to_vec();
    questions_args[0] = "questions";
    questions_args[1] = "--source";
    let o = csv_agent(&questions_args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let lines = std::fs::read_to_string(out.join("episodes.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no episodes after 300 s");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let before = episodes(&out).len();
    assert!(before < 16, "the run finished before the kill ({before})");
    // A write cut off mid-line by a crash.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("episodes.jsonl"))
        .expect("open");
    std::io::Write::write_all(&mut f, b"{\"episode_id\":\"torn").expect("write");
    drop(f);

    let o = csv_agent(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let all = episodes(&out);
    let qs = questions(&out, "penguins");
    assert_eq!(qs.len(), 16);
    let mut per_question: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &all {
        *per_question.entry(e.question.id.as_str()).or_default() += 1;
    }
    for q in &qs {
        assert_eq!(
            per_question.get(q.id.as_str()),
            Some(&1),
            "question {} has {:?} episodes",
            q.id,
            per_question.get(q.id.as_str())
        );
    }
    assert_eq!(all.len(), 16);
    assert!(all.iter().all(|e| e.verified));
    // Traces the program teacher ran itself (the questions came from a
    // file) are the ones a run that established the ground truth recorded.
    let compared = golden_run::assert_subset_matches_golden(&out.join("episodes.jsonl"));
    assert!(
        compared >= 8,
        "only {compared} episodes are in the golden run"
    );
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn bad_datasets_fail_alone_with_a_clear_reason() {
    let dir = world_readable_dir();
    let reg = dir.path().join("registry");
    let penguins = std::fs::read_to_string(penguins()).expect("penguins");
    let head: String = penguins
        .lines()
        .take(80)
        .map(|l| format!("{l}\n"))
        .collect();
    write_file(&reg.join("good/data.csv"), head.as_bytes(), 0o644);
    write_file(&reg.join("empty/data.csv"), b"", 0o644);
    write_file(&reg.join("header-only/data.csv"), b"a,b,c\n", 0o644);
    let binary: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    write_file(&reg.join("binary/data.csv"), &binary, 0o644);
    write_file(&reg.join("one-column/data.csv"), b"x\n1\n2\n3\n4\n", 0o644);
    let utf16: Vec<u8> = "a,b\n1,2\n3,4\n"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    write_file(&reg.join("wrong-encoding/data.csv"), &utf16, 0o644);
    write_file(&reg.join("unreadable/data.csv"), head.as_bytes(), 0o600);
    write_file(&reg.join("bad-meta/data.csv"), head.as_bytes(), 0o644);
    write_file(&reg.join("bad-meta/meta.json"), b"{not json", 0o644);
    let out = dir.path().join("out");

    let o = csv_agent(&[
        "run",
        "--questions",
        "template",
        "--datasets",
        path(&reg),
        "--max-questions",
        "4",
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(1), "partial: {}", text(&o));
    let s = summary(&out);
    let good = dataset_summary(&s, "good");
    assert_eq!(good["status"], "done");
    assert_eq!(good["verified"], 4);
    let expected = [
        ("empty", "is empty"),
        ("header-only", "no data rows"),
        ("binary", "binary file, not CSV"),
        ("one-column", "questions need at least two"),
        ("wrong-encoding", "UTF-16 text without a byte-order mark"),
        ("bad-meta", "invalid meta.json"),
    ];
    for (slug, reason) in expected {
        let d = dataset_summary(&s, slug);
        assert_eq!(d["status"], "failed", "{slug}: {d}");
        let got = d["reason"].as_str().unwrap_or("");
        assert!(
            got.contains(reason),
            "{slug}: reason {got:?} should say {reason:?}"
        );
    }
    // As root, a file the jail user cannot read is refused with the fix.
    if nix::unistd::geteuid().is_root() {
        let d = dataset_summary(&s, "unreadable");
        assert!(d["reason"].as_str().unwrap_or("").contains("chmod"), "{d}");
    }
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("FAILED"),
        "{}",
        text(&o)
    );
    assert_eq!(episodes(&out).len(), 4);
}

#[test]
fn shard_outputs_merged_equal_the_unsharded_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = registry();
    let common = [
        "--datasets",
        path(&reg),
        "--only",
        "grunfeld,seattle-weather",
        "--max-questions",
        "6",
    ];
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(&common);
        args.extend_from_slice(&["--out", path(out)]);
        args.extend_from_slice(extra);
        let o = csv_agent(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    };
    let whole = dir.path().join("whole");
    let s0 = dir.path().join("s0");
    let s1 = dir.path().join("s1");
    run(&whole, &[]);
    run(&s0, &["--shard", "0/2"]);
    run(&s1, &["--shard", "1/2"]);
    let merged = dir.path().join("merged");
    // s0 twice: duplicates are dropped.
    let o = csv_agent(&[
        "merge",
        path(&s0),
        path(&s1),
        path(&s0),
        "--out",
        path(&merged),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let key = |es: Vec<Episode>| -> BTreeSet<(String, bool, Option<String>)> {
        es.into_iter()
            .map(|e| (e.episode_id, e.verified, e.gold_trace.final_answer_hash))
            .collect()
    };
    let whole_eps = episodes(&whole);
    let merged_eps = episodes(&merged);
    assert_eq!(
        merged_eps.len(),
        whole_eps.len(),
        "no duplicates after merging"
    );
    // 6 template and 6 composed questions on each of the two datasets.
    assert_eq!(whole_eps.len(), 24);
    let (a, b) = (key(episodes(&s0)), key(episodes(&s1)));
    assert!(a.is_disjoint(&b), "shards overlap");
    assert!(!a.is_empty() && !b.is_empty(), "both shards have work");
    assert_eq!(key(merged_eps), key(whole_eps));
    let (sw, sm) = (summary(&whole), summary(&merged));
    for slug in ["grunfeld", "seattle-weather"] {
        for field in ["questions", "verified", "disagreements"] {
            assert_eq!(
                dataset_summary(&sm, slug)[field],
                dataset_summary(&sw, slug)[field],
                "{slug} {field}"
            );
        }
    }
    // The merged directory is a run output like any other.
    let o = csv_agent(&["status", "--out", path(&merged)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn the_questions_command_writes_ground_truth_and_no_episodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let reg = registry();
    let make = |out: &Path| {
        let o = csv_agent(&[
            "questions",
            "--datasets",
            path(&reg),
            "--only",
            "seattle-weather",
            "--max-questions",
            "5",
            "--out",
            path(out),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    };
    make(&out);
    let qs = questions(&out, "seattle-weather");
    assert_eq!(qs.len(), 5);
    let templates: HashSet<_> = qs.iter().map(|q| q.template_name.clone()).collect();
    assert_eq!(
        templates.len(),
        5,
        "a small cap still spreads over templates"
    );
    for q in &qs {
        assert!(q.ground_truth.is_some() && !q.ground_truth_hashes.is_empty());
        assert_eq!(q.dataset, "seattle-weather");
        assert_eq!(q.id.len(), 16);
    }
    assert_eq!(
        std::fs::read_to_string(out.join("episodes.jsonl")).unwrap_or_default(),
        ""
    );
    // Same inputs, same question ids.
    let again = dir.path().join("again");
    make(&again);
    let ids = |qs: Vec<Question>| qs.into_iter().map(|q| q.id).collect::<Vec<_>>();
    assert_eq!(ids(questions(&again, "seattle-weather")), ids(qs));
}

#[test]
fn bad_flags_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let reg = registry();
    for (args, says) in [
        (
            vec!["run", "--questions", "template", "--shard", "2/2"],
            "index counts from 0",
        ),
        (
            vec![
                "run",
                "--questions",
                "template",
                "--datasets",
                path(&reg),
                "--only",
                "nope",
                "--out",
                path(&out),
            ],
            "no dataset `nope`",
        ),
        (
            vec![
                "run",
                "--questions",
                "template",
                "--datasets",
                "/nonexistent",
                "--out",
                path(&out),
            ],
            "does not exist",
        ),
        (
            vec![
                "run",
                "--questions",
                "template",
                "--datasets",
                path(&reg),
                "--jobs",
                "0",
                "--out",
                path(&out),
            ],
            "at least 1",
        ),
        (vec!["status", "--out", "/nonexistent/out"], "no run in"),
    ] {
        let o = csv_agent(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert!(!out.join("episodes.jsonl").exists(), "nothing ran");
}

const WRONG_TEMPLATE: &str = r#"
name = "wrong_mean"
description = "A deliberately wrong template"
difficulty = "EASY"
n_steps = 1
question = "What is the mean of ${x}, ignoring missing values?"
hint = "Series.mean()"
output_type = "scalar"
output_schema = "number"
max_bindings = 1
[slots]
# Not `year`, whose mean equals its median.
x = { kind = "numeric", min_distinct = 100 }
[[steps]]
reasoning = "Take the mean."
code = """
col = ${x}
m = df[col].mean()
hook(m, "m = df[col].mean()", name="mean")
submit(round(float(m), 4))
"""
[[alternatives]]
name = "median_by_mistake"
reasoning = "Take the median (wrong on purpose)."
code = """
submit(round(float(df[${x}].median()), 4))
"""
"#;

/// A template whose alternative computes something else (the median, not
/// the mean): the run records the episode unverified with a reason naming
/// the disagreeing program; it is not a failure of the run.
#[test]
fn a_wrong_template_is_caught_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(templates.join("wrong_mean.toml"), WRONG_TEMPLATE).expect("write template");
    let out = dir.path().join("out");
    let reg = registry();
    let o = csv_agent(&[
        "run",
        "--questions",
        "template",
        "--datasets",
        path(&reg),
        "--only",
        "grunfeld",
        "--templates",
        path(&templates),
        "--max-questions",
        "1",
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let all = episodes(&out);
    assert_eq!(all.len(), 1);
    let e = &all[0];
    assert_eq!(e.question.template_name.as_deref(), Some("wrong_mean"));
    assert!(!e.verified);
    assert!(!e.triangulation.gold_matches_majority);
    let reason = e.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("programs disagree") && reason.contains("median_by_mistake"),
        "{reason}"
    );
    assert_eq!(
        dataset_summary(&summary(&out), "grunfeld")["disagreements"],
        1
    );
    // Only answers that agree with the reference are ground truth.
    assert_eq!(e.question.ground_truth_hashes.len(), 1);

    // A broken template is refused before anything runs.
    std::fs::write(templates.join("broken.toml"), "name = \"broken\"\n").expect("write");
    let o = csv_agent(&[
        "run",
        "--questions",
        "template",
        "--datasets",
        path(&reg),
        "--templates",
        path(&templates),
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("broken"),
        "{}",
        text(&o)
    );
}

const CRIPPLE_ZYGOTE_TEMPLATE: &str = r#"
name = "cripple_zygote"
description = "A hostile reference program: it tries to set the zygote's CPU limit to 1 s"
difficulty = "EASY"
n_steps = 1
question = "How many rows does the table have?"
hint = "len(df)"
output_type = "scalar"
output_schema = "integer"
max_bindings = 1
[[steps]]
reasoning = "Limit pid 1, then count."
code = """
import resource
resource.prlimit(1, resource.RLIMIT_CPU, (1, 1))
submit(len(df))
"""
[[alternatives]]
name = "shape"
reasoning = "Count the rows."
code = """
submit(int(df.shape[0]))
"""
"#;

/// The reproduction of a hole: a template whose reference program lowered
/// the zygote's CPU limit (`prlimit(1, RLIMIT_CPU, (1, 1))`) succeeded, and
/// every later question of the dataset failed ("the zygote is gone"). Now
/// the call is refused inside the worker: that one question fails with the
/// PermissionError, and every other question of the dataset is answered.
#[test]
fn a_template_that_attacks_the_zygote_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(
        templates.join("cripple_zygote.toml"),
        CRIPPLE_ZYGOTE_TEMPLATE,
    )
    .expect("write template");
    let out = dir.path().join("out");
    let o = csv_agent(&[
        "run",
        "--questions",
        "template",
        "--datasets",
        path(&registry()),
        "--only",
        "penguins",
        "--templates",
        path(&templates),
        "--max-questions",
        "12",
        "--out",
        path(&out),
    ]);
    let all_text = text(&o);
    assert!(!all_text.contains("zygote is gone"), "{all_text}");
    // One question failed at its ground truth, named with the refusal.
    assert_eq!(o.status.code(), Some(1), "{all_text}");
    assert!(
        all_text.contains("cripple_zygote") && all_text.contains("PermissionError"),
        "{all_text}"
    );
    let log = std::fs::read_to_string(out.join("logs/penguins.log")).unwrap_or_default();
    assert!(!log.contains("zygote is gone"), "{log}");
    assert_eq!(questions(&out, "penguins").len(), 11, "{all_text}");
    // Every other question got its episode, verified.
    let all = episodes(&out);
    let others: Vec<_> = all
        .iter()
        .filter(|e| e.question.template_name.as_deref() != Some("cripple_zygote"))
        .collect();
    assert_eq!(others.len(), 11, "{all_text}");
    assert!(others.iter().all(|e| e.verified), "{all_text}");
    let s = summary(&out);
    assert_eq!(dataset_summary(&s, "penguins")["verified"], 11, "{s}");
    let failures = dataset_summary(&s, "penguins")["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(failures.len(), 1, "{s}");
    assert_eq!(failures[0]["template"], "cripple_zygote", "{s}");
}
