//! `csv-agent eval` through the real binary: real episodes made by the
//! program teacher on penguins, a scripted student behind the loopback
//! OpenAI-compatible server answering some questions right, some wrong and
//! one never, and the reports checked figure by figure; then bad input
//! (exit 2, named), CSVs that cannot be used (skipped with the reason) and
//! a model that fails midway (exit 1, the report of what was done).

mod common;
#[path = "support/openai_server.rs"]
mod openai_server;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};

use common::*;
use csv_agent::schema::{Difficulty, Episode};
use openai_server::{Request, Response, Server};
use serde_json::Value;

/// The real binary, from a scratch working directory (no csv-agent.toml)
/// and without the caller's model settings.
fn csv_agent_in(dir: &Path, args: &[String]) -> Output {
    let _ = image();
    std::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("CSV_AGENT_CONFIG")
        .output()
        .expect("the binary runs")
}

/// Runs the binary without blocking the runtime that serves the model.
async fn eval_async(dir: &Path, args: Vec<String>) -> Output {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || csv_agent_in(&dir, &args))
        .await
        .expect("the binary's thread")
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Six verified penguins episodes from the program teacher, made once for
/// every test of this file (the directory lives as long as the process).
fn episodes() -> &'static (PathBuf, Vec<Episode>) {
    static EPISODES: OnceLock<(PathBuf, Vec<Episode>)> = OnceLock::new();
    EPISODES.get_or_init(|| {
        let dir = world_readable_dir().keep();
        let out = dir.join("out");
        let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
        let o = csv_agent_in(
            &dir,
            &args(&[
                "run",
                "--questions",
                "template",
                "--datasets",
                path(&registry),
                "--only",
                "penguins",
                "--max-questions",
                "6",
                "--out",
                path(&out),
            ]),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let file = out.join("episodes.jsonl");
        let episodes: Vec<Episode> = std::fs::read_to_string(&file)
            .expect("episodes.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("episode"))
            .collect();
        assert_eq!(episodes.len(), 6);
        assert!(episodes.iter().all(|e| e.verified));
        (file, episodes)
    })
}

fn write_split(path: &Path, episodes: &[Episode]) {
    let mut body = String::new();
    for e in episodes {
        body.push_str(&serde_json::to_string(e).expect("episode serializes"));
        body.push('\n');
    }
    std::fs::write(path, body).expect("write split");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Student {
    /// Hooks len(df) and the gold trace's first hook value, then submits
    /// the verified answer (2 cells, both ok).
    Right,
    /// A cell that raises, then a wrong answer (2 cells, 1 ok).
    Wrong,
    /// Hooks len(df) every turn and never submits (max turns: 3 cells).
    Silent,
    /// The server refuses its requests.
    Refused,
}

/// A Python string literal holding `value` as JSON text.
fn py_json(value: &Value) -> String {
    // A JSON string literal is a Python string literal too.
    serde_json::to_string(&value.to_string()).expect("string literal")
}

fn cell(code: &str) -> Response {
    Response::reply(format!("One step at a time.\n```python\n{code}\n```"))
}

/// The scripted student: the question is found in the conversation's
/// first user message; the turn is the number of assistant messages.
fn script(cases: Vec<(Episode, Student)>) -> impl Fn(&Request) -> Response + Send + Sync {
    let cases = Arc::new(cases);
    move |req: &Request| {
        // The preflight check: one bare user message.
        if req.system().is_none() {
            return Response::reply("OK");
        }
        let asked = req
            .messages()
            .iter()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let Some((episode, student)) = cases
            .iter()
            .filter(|(e, _)| asked.contains(e.question.question_text.trim()))
            .max_by_key(|(e, _)| e.question.question_text.len())
        else {
            return Response::status(400, "unknown question");
        };
        let answer = episode.gold_trace.final_answer.clone().expect("answer");
        let first_hook = episode
            .gold_trace
            .turns
            .iter()
            .flat_map(|t| &t.execution.hooks)
            .next()
            .map(|h| h.value.clone())
            .unwrap_or(Value::Null);
        match (student, req.n_assistant()) {
            (Student::Right, 0) => cell(&format!(
                "import json\nn = len(df)\nhook(n, \"n = len(df)\", name=\"n\")\nS = {}\nv = json.loads(S)\nhook(v, \"v = json.loads(S)\", name=\"v\")\nprint(n, v)",
                py_json(&first_hook)
            )),
            (Student::Right, _) => cell(&format!(
                "import json\nA = {}\nsubmit(json.loads(A))",
                py_json(&answer)
            )),
            (Student::Wrong, 0) => cell("x = df[\"no_such_column\"]"),
            (Student::Wrong, _) => cell("submit(\"no idea\")"),
            (Student::Silent, _) => cell("n = len(df)\nhook(n, \"n = len(df)\", name=\"n\")\nprint(n)"),
            (Student::Refused, _) => Response::status(400, "this model is switched off"),
        }
    }
}

/// Distinct gold hook values (what hook recall counts).
fn gold_hooks(e: &Episode) -> usize {
    e.gold_trace
        .turns
        .iter()
        .flat_map(|t| &t.execution.hooks)
        .filter(|h| h.grounded != Some(false))
        .map(|h| h.value_hash.clone())
        .collect::<HashSet<_>>()
        .len()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .expect("json")
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_student_is_scored_right_wrong_and_silent_and_unusable_episodes_are_skipped() {
    let (_, episodes) = episodes();
    let dir = world_readable_dir();
    let kinds = [
        Student::Right,
        Student::Right,
        Student::Right,
        Student::Wrong,
        Student::Wrong,
        Student::Silent,
    ];
    let cases: Vec<(Episode, Student)> = episodes.iter().cloned().zip(kinds).collect();

    // Three more episodes that must not reach the model.
    let mut split = episodes.clone();
    let mut unverified = episodes[0].clone();
    unverified.episode_id = "unverified000000".into();
    unverified.verified = false;
    let mut missing = episodes[1].clone();
    missing.episode_id = "missing000000000".into();
    missing.csv_source = path(&dir.path().join("nowhere/data.csv")).to_string();
    let changed_csv = dir.path().join("changed.csv");
    let mut bytes = std::fs::read(&episodes[2].csv_source).expect("penguins csv");
    bytes.extend_from_slice(b"Adelie,Dream,40.0,18.0,190,3700,male,2009\n");
    std::fs::write(&changed_csv, bytes).expect("write changed csv");
    let mut changed = episodes[2].clone();
    changed.episode_id = "changed000000000".into();
    changed.csv_source = path(&changed_csv).to_string();
    split.insert(2, unverified);
    split.push(missing);
    split.push(changed);
    let split_file = dir.path().join("test.jsonl");
    write_split(&split_file, &split);

    let server = Server::start(script(cases)).await;
    let out = dir.path().join("eval");
    let o = eval_async(
        dir.path(),
        args(&[
            "eval",
            "--model",
            "scripted",
            "--base-url",
            &server.base_url(),
            "--split",
            path(&split_file),
            "--out",
            path(&out),
            "--max-turns",
            "3",
        ]),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("model: scripted"), "{stdout}");

    let report = read_json(&out.join("eval_report.json"));
    assert_eq!(report["model"], "scripted");
    assert_eq!(report["episodes"], 9);
    assert_eq!(report["n"], 6, "{report:#}");
    assert_eq!(report["correct"], 3);
    assert!(close(&report["accuracy"], 0.5), "{report:#}");

    // Per difficulty: as many as the split holds, correct where Right.
    let mut want: BTreeMap<&str, (u64, u64)> = Difficulty::ALL
        .iter()
        .map(|d| (d.as_str(), (0, 0)))
        .collect();
    for (e, k) in episodes.iter().zip(kinds) {
        let w = want.get_mut(e.question.difficulty.as_str()).unwrap();
        w.0 += 1;
        w.1 += u64::from(k == Student::Right);
    }
    for (d, (n, correct)) in &want {
        let got = &report["by_difficulty"][d];
        assert_eq!(got["n"], *n, "{d}: {got}");
        assert_eq!(got["correct"], *correct, "{d}: {got}");
    }
    let templates = report["by_template"].as_object().expect("by_template");
    assert_eq!(templates.len(), 6, "{templates:?}");

    // Cells: Right 2 + 2 + 2 (all ok), Wrong 2 + 2 (one error each),
    // Silent 3 (max turns).
    assert_eq!(report["execution"]["cells"], 13);
    assert_eq!(report["execution"]["cells_ok"], 11);
    assert!(close(&report["execution"]["success_rate"], 11.0 / 13.0));
    assert_eq!(report["submitted"], 5);
    assert!(close(&report["submit_rate"], 5.0 / 6.0));
    assert!(close(&report["mean_turns"], 13.0 / 6.0), "{report:#}");
    assert_eq!(report["stops"]["submitted"], 5);
    assert_eq!(report["stops"]["max_turns"], 1);
    assert_eq!(report["usage"]["requests"], 13);

    // Hook recall: a Right student hooked one of the gold values.
    let mean: f64 = episodes
        .iter()
        .zip(kinds)
        .map(|(e, k)| {
            if k == Student::Right {
                1.0 / gold_hooks(e) as f64
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / 6.0;
    assert_eq!(report["with_hooks"], 6);
    assert!(close(&report["mean_hook_recall"], mean), "{report:#}");

    // Skipped, each with its reason.
    assert_eq!(report["skipped"]["total"], 3);
    let reasons: Vec<String> = report["skipped"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(has("unverified"), "{reasons:?}");
    assert!(
        has(&format!("{} does not exist", missing_path(&dir))),
        "{reasons:?}"
    );
    assert!(
        has("has changed since the episodes were made"),
        "{reasons:?}"
    );
    assert!(report["stopped"].is_null());

    // One result per scored episode, in split order.
    let results: Vec<Value> = std::fs::read_to_string(out.join("eval_results.jsonl"))
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("result line"))
        .collect();
    assert_eq!(results.len(), 6);
    for ((r, e), k) in results.iter().zip(episodes).zip(kinds) {
        assert_eq!(r["episode_id"], e.episode_id.as_str());
        assert_eq!(r["correct"], k == Student::Right, "{r}");
        assert_eq!(r["submitted"], k != Student::Silent, "{r}");
        assert_eq!(r["expected"], *e.gold_trace.final_answer.as_ref().unwrap());
        if k == Student::Right {
            assert!(close(&r["hook_recall"], 1.0 / gold_hooks(e) as f64), "{r}");
        } else {
            assert!(close(&r["hook_recall"], 0.0), "{r}");
        }
    }

    let md = std::fs::read_to_string(out.join("eval_report.md")).expect("markdown report");
    assert!(md.contains("# Evaluation of `scripted`"), "{md}");
    assert!(md.contains("| **all** | 6 | 3 | 50.0% |"), "{md}");
    assert!(md.contains("does not exist"), "{md}");
}

fn missing_path(dir: &tempfile::TempDir) -> String {
    path(&dir.path().join("nowhere/data.csv")).to_string()
}

#[test]
fn bad_split_files_are_refused_with_exit_2_naming_the_line() {
    let (file, _) = episodes();
    let dir = world_readable_dir();
    let out = dir.path().join("eval");
    let run = |split: &Path| {
        csv_agent_in(
            dir.path(),
            &args(&[
                "eval",
                "--model",
                "m",
                "--base-url",
                &openai_server::unused_base_url(),
                "--split",
                path(split),
                "--out",
                path(&out),
            ]),
        )
    };

    let good = std::fs::read_to_string(file).expect("episodes");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"not\": \"an episode\"}}\n",
            good.lines().next().unwrap()
        ),
    )
    .unwrap();
    let o = run(&bad);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2"), "{err}");

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let o = run(&empty);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no episodes"),
        "{}",
        text(&o)
    );

    let o = run(&dir.path().join("absent.jsonl"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no such file"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "nothing is written for bad input");
}

#[test]
fn episodes_whose_csv_is_missing_are_skipped_and_a_split_with_nothing_left_exits_2() {
    let (file, _) = episodes();
    let dir = world_readable_dir();
    let registry = dir.path().join("registry");
    std::fs::create_dir(&registry).unwrap();
    // Nothing listens at the base URL: the model is never asked.
    let o = csv_agent_in(
        dir.path(),
        &args(&[
            "eval",
            "--model",
            "m",
            "--base-url",
            &openai_server::unused_base_url(),
            "--split",
            path(file),
            "--datasets",
            path(&registry),
        ]),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let csv = registry.join("penguins/data.csv");
    assert!(err.contains("nothing to evaluate"), "{err}");
    assert!(
        err.contains(&format!("6 × the CSV {} does not exist", csv.display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_failure_stops_the_eval_with_exit_1_and_reports_what_was_done() {
    let (file, episodes) = episodes();
    let dir = world_readable_dir();
    let kinds = [
        Student::Right,
        Student::Wrong,
        Student::Refused,
        Student::Right,
        Student::Right,
        Student::Right,
    ];
    let cases: Vec<(Episode, Student)> = episodes.iter().cloned().zip(kinds).collect();
    let server = Server::start(script(cases)).await;
    let out = dir.path().join("eval");
    // One student at a time: the two before the failure are scored, the
    // three after it are not started.
    let o = eval_async(
        dir.path(),
        args(&[
            "eval",
            "--model",
            "scripted",
            "--base-url",
            &server.base_url(),
            "--split",
            path(file),
            "--out",
            path(&out),
            "--concurrency",
            "1",
        ]),
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("stopped early"),
        "{}",
        text(&o)
    );
    let report = read_json(&out.join("eval_report.json"));
    assert_eq!(report["n"], 2, "{report:#}");
    assert_eq!(report["correct"], 1);
    assert_eq!(report["not_run"], 4);
    let stopped = report["stopped"].as_str().expect("stopped");
    assert!(stopped.contains("this model is switched off"), "{stopped}");
    let md = std::fs::read_to_string(out.join("eval_report.md")).unwrap();
    assert!(md.contains("Stopped early"), "{md}");
}

/// Results without what differs from run to run (times, timestamps).
fn results_without_timing(path: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_to_string(path)
        .expect("results")
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json line");
            strip_keys(&mut v, &TIMING_KEYS);
            strip_keys(&mut v, &["latency_ms", "latency_s"]);
            v
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

// `eval --serve`: the students' cells run in sessions of a running
// `csv-agent serve`, and the results are those of a local eval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_with_serve_scores_what_a_local_eval_scores() {
    use std::io::BufRead;
    let (_, episodes) = episodes();
    let dir = world_readable_dir();
    let kinds = [Student::Right, Student::Wrong, Student::Silent];
    let cases: Vec<(Episode, Student)> = episodes.iter().cloned().zip(kinds).collect();
    let split_file = dir.path().join("test.jsonl");
    write_split(&split_file, &episodes[..3]);
    let model = Server::start(script(cases)).await;

    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("sock").join("serve.sock");
    let mut serve = std::process::Command::new(BIN)
        .args(["serve", "--socket", path(&socket)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    std::io::BufReader::new(serve.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("serve is ready");
    assert!(line.starts_with("unix:"), "serve did not start: {line}");

    let run = |out: PathBuf, with_serve: bool| {
        let mut a = args(&[
            "eval",
            "--model",
            "scripted",
            "--base-url",
            &model.base_url(),
            "--split",
            path(&split_file),
            "--out",
            path(&out),
            "--max-turns",
            "3",
        ]);
        if with_serve {
            a.push("--serve".into());
            a.push(path(&socket).to_string());
        }
        eval_async(dir.path(), a)
    };
    let local = run(dir.path().join("local"), false).await;
    assert_eq!(local.status.code(), Some(0), "{}", text(&local));
    let remote = run(dir.path().join("serve"), true).await;
    assert_eq!(remote.status.code(), Some(0), "{}", text(&remote));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(serve.id() as i32, libc::SIGTERM);
    }
    let _ = serve.wait();

    let a = results_without_timing(&dir.path().join("local/eval_results.jsonl"));
    let b = results_without_timing(&dir.path().join("serve/eval_results.jsonl"));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b, "the same results with and without --serve");
    let report = read_json(&dir.path().join("serve/eval_report.json"));
    assert_eq!(report["correct"], 1, "{report:#}");
}
