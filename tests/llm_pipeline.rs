//! The LLM teacher end to end: the real binary (`run --teacher llm`,
//! `questions --source llm`, `validate`) against a loopback
//! OpenAI-compatible server playing a scripted model on penguins.
//!
//! The scripted model knows four questions it proposes itself (so it knows
//! every question and the code it writes for it) and plays each conversation
//! by its kind (preflight, exploration, answering), the question named in
//! the first user message and the role (the gold prompt carries the hint):
//!
//! - A (EASY): solved by every trace; the gold trace first hits a KeyError
//!   and fixes it, a `corrections` record → verified;
//! - B (MEDIUM): only the hint says which island → `hint_necessary`;
//! - C (HARD): code that always raises → `execution_failure`;
//! - D (VERY_HARD, 6 consistency traces): three readings of "heavy", two
//!   traces each → `ambiguous`.
//!
//! Token accounting is checked against what the server recorded, resume
//! against the server's request count, and an outage mid-run against the
//! episodes file.

mod common;
#[path = "support/openai_server.rs"]
mod openai_server;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use csv_agent::schema::{Episode, Question, Trace};
use openai_server::{approx_tokens, Request, Response, Server};
use serde_json::{json, Value};

const MODEL: &str = "scripted-model";
/// Set in every child's environment; must never be printed.
const SECRET_KEY: &str = "sk-test-secret-123";
const PREFLIGHT: &str = "Reply with OK.";

// ------------------------------------------------------------------ the script

/// Code of the scripted replies, as the episode records it.
const A_TYPO: &str = "n = int((df['Species'] == 'Adelie').sum())\nprint(n)";
const A_COUNT: &str = "n = int((df['species'] == 'Adelie').sum())\nhook(n, \"n = int((df['species'] == 'Adelie').sum())\", name=\"n\")\nprint(n)";
const B_DREAM: &str = "n = int((df['island'] == 'Dream').sum())\nhook(n, \"n = int((df['island'] == 'Dream').sum())\", name=\"n\")";
const B_BISCOE: &str = "n = int((df['island'] == 'Biscoe').sum())\nhook(n, \"n = int((df['island'] == 'Biscoe').sum())\", name=\"n\")";
const C_RAISES: &str = "m = df['flipper_length_cm'].mean()\nsubmit(round(float(m), 1))";
const SUBMIT_N: &str = "submit(n)";
const SUBMIT_X: &str = "submit(x)";

/// `x = int((df['body_mass_g'] > T).sum())` with its hook: the gold trace
/// reads "heavy" as the hint says (T = 4000), the consistency traces each
/// take one of three other thresholds.
const D_GOLD_THRESHOLD: u32 = 4000;
const D_THRESHOLDS: [u32; 3] = [3500, 4500, 5000];

fn d_code(threshold: u32) -> String {
    let line = format!("x = int((df['body_mass_g'] > {threshold}).sum())");
    format!("{line}\nhook(x, \"{line}\", name=\"x\")")
}

struct Q {
    text: &'static str,
    hint: &'static str,
    difficulty: &'static str,
    output_type: &'static str,
}

const QA: Q = Q {
    text: "How many rows have `species` equal to Adelie?",
    hint: "Count the rows where species == 'Adelie'.",
    difficulty: "EASY",
    output_type: "number",
};
const QB: Q = Q {
    text: "How many penguins were observed on the main study `island`?",
    hint: "The main study island is Dream: count the rows where island == 'Dream'.",
    difficulty: "MEDIUM",
    output_type: "number",
};
const QC: Q = Q {
    text: "What is the mean `flipper_length_mm` in centimetres? Round to 1 decimal.",
    hint: "Divide the mean of flipper_length_mm by 10 and round.",
    difficulty: "HARD",
    output_type: "number",
};
const QD: Q = Q {
    text: "How many penguins are heavy, judging by `body_mass_g`?",
    hint: "Heavy means a body mass above 4000 g: count rows with body_mass_g > 4000.",
    difficulty: "VERY_HARD",
    output_type: "number",
};
const ALL: [&Q; 4] = [&QA, &QB, &QC, &QD];

const EXPLORATION: [&str; 3] = [
    "print(df.shape)",
    "print(df['species'].value_counts())",
    "print(df.isna().sum())",
];

fn proposals() -> String {
    let qs: Vec<Value> = ALL
        .iter()
        .map(|q| {
            json!({
                "question_text": q.text,
                "hint": q.hint,
                "difficulty": q.difficulty,
                "n_steps": 2,
                "output_type": q.output_type,
                "output_schema": "an integer or a float",
            })
        })
        .collect();
    format!("Here are my questions.\n```json\n{}\n```", Value::Array(qs))
}

fn cell(code: &str) -> String {
    format!("One step at a time.\n```python\n{code}\n```")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    /// Every request of question D after its first turn gets a 500.
    DOutage,
}

/// The scripted model. Stateless per conversation except for one counter:
/// D's consistency conversations are identical, so their threshold is
/// dealt round-robin at their first turn (and read back from the code at
/// later turns). It also records the completion tokens of every reply, by
/// request number, for the usage checks.
struct Model {
    mode: Mode,
    next_d_variant: AtomicUsize,
    completion_tokens: Mutex<BTreeMap<u64, u64>>,
}

impl Model {
    fn new(mode: Mode) -> Arc<Model> {
        Arc::new(Model {
            mode,
            next_d_variant: AtomicUsize::new(0),
            completion_tokens: Mutex::new(BTreeMap::new()),
        })
    }

    fn respond(&self, req: &Request) -> Response {
        match self.reply(req) {
            Ok(text) => {
                self.completion_tokens
                    .lock()
                    .unwrap()
                    .insert(req.seq, approx_tokens(&text));
                Response::reply(text)
            }
            Err(response) => response,
        }
    }

    fn reply(&self, req: &Request) -> Result<String, Response> {
        let turn = req.n_assistant();
        if req.messages().len() == 1 && req.last_user() == Some(PREFLIGHT) {
            return Ok("OK".into());
        }
        let system = req.system().unwrap_or_default();
        if system.starts_with("You are a data analyst exploring a dataset") {
            return Ok(match turn {
                0..=2 => cell(EXPLORATION[turn]),
                3 => "EXPLORATION DONE".into(),
                4 => proposals(),
                _ => panic!("exploration past the script: {:?}", req.last_user()),
            });
        }
        assert!(
            system.starts_with("You are a data analyst answering one question"),
            "unknown conversation: {system}"
        );
        let prompt = req
            .messages()
            .iter()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let q = *ALL
            .iter()
            .find(|q| prompt.contains(q.text))
            .unwrap_or_else(|| panic!("unknown question: {prompt}"));
        let gold = prompt.contains(&format!("Hint: {}", q.hint));
        let code: String = match q.text {
            t if t == QA.text => match (gold, turn) {
                (true, 0) => A_TYPO.into(),
                (true, 1) | (false, 0) => A_COUNT.into(),
                (true, 2) | (false, 1) => SUBMIT_N.into(),
                _ => panic!("A past the script"),
            },
            t if t == QB.text => match (gold, turn) {
                (true, 0) => B_DREAM.into(),
                (false, 0) => B_BISCOE.into(),
                (_, 1) => SUBMIT_N.into(),
                _ => panic!("B past the script"),
            },
            t if t == QC.text => C_RAISES.into(),
            _ => {
                if self.mode == Mode::DOutage && turn >= 1 {
                    return Err(Response::status(500, "scripted outage"));
                }
                match (gold, turn) {
                    (true, 0) => d_code(D_GOLD_THRESHOLD),
                    (false, 0) => {
                        let i = self.next_d_variant.fetch_add(1, Ordering::SeqCst);
                        d_code(D_THRESHOLDS[i % D_THRESHOLDS.len()])
                    }
                    (_, 1) => SUBMIT_X.into(),
                    _ => panic!("D past the script"),
                }
            }
        };
        Ok(cell(&code))
    }
}

/// The loopback server on its own runtime (alive while the binary runs
/// from the test thread).
struct Endpoint {
    server: Server,
    model: Arc<Model>,
    _rt: tokio::runtime::Runtime,
}

impl Endpoint {
    fn start(model: Arc<Model>) -> Endpoint {
        Endpoint::start_with(model.clone(), move |req| model.respond(req))
    }

    fn start_with(
        model: Arc<Model>,
        script: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Endpoint {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = rt.block_on(Server::start(script));
        Endpoint {
            server,
            model,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        self.server.base_url()
    }

    /// Chat requests received from `from` on (by arrival number).
    fn chats_since(&self, from: u64) -> Vec<Request> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.seq >= from && r.path == openai_server::CHAT_PATH)
            .collect()
    }
}

// ------------------------------------------------------------------ running

/// A registry with only penguins, in a world-readable temp dir (the jail
/// reads the CSV as another user).
fn registry(root: &Path) -> PathBuf {
    let reg = root.join("datasets");
    let dir = reg.join("penguins");
    std::fs::create_dir_all(&dir).expect("registry dir");
    for d in [&reg, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/penguins");
    for f in ["data.csv", "meta.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.join(f)).expect("copy penguins");
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
    }
    reg
}

/// The real binary with a clean model environment: the secret key set,
/// no endpoint or config file from the caller, run from `cwd` (so no
/// stray ./csv-agent.toml is read).
fn csv_agent_in(cwd: &Path, args: &[&str]) -> Output {
    let _ = image();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("OPENAI_API_KEY", SECRET_KEY)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CSV_AGENT_CONFIG")
        .output()
        .expect("the binary runs");
    eprintln!(
        "csv-agent {} … took {:.1} s",
        args.first().unwrap_or(&""),
        started.elapsed().as_secs_f64()
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run_args<'a>(reg: &'a Path, out: &'a Path, url: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--teacher",
        "llm",
        "--model",
        MODEL,
        "--base-url",
        url,
        "--questions",
        "llm",
        "--llm-questions",
        "4",
        "--max-turns",
        "3",
        "--request-timeout",
        "20s",
        "--datasets",
        s(reg),
        "--only",
        "penguins",
        "--out",
        s(out),
    ]
}

fn episodes(out: &Path) -> Vec<Episode> {
    let path = out.join("episodes.jsonl");
    if !path.exists() {
        return Vec::new();
    }
    std::fs::read_to_string(path)
        .expect("episodes.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("episode parses ({e}): {l}")))
        .collect()
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
        .expect("summary is JSON")
}

fn episode<'a>(all: &'a [Episode], q: &Q) -> &'a Episode {
    let found: Vec<&Episode> = all
        .iter()
        .filter(|e| e.question.question_text == q.text)
        .collect();
    assert_eq!(found.len(), 1, "exactly one episode for {:?}", q.text);
    found[0]
}

fn codes(t: &Trace) -> Vec<&str> {
    t.turns.iter().map(|turn| turn.code.as_str()).collect()
}

/// `body_mass_g > threshold` counted from the CSV itself.
fn heavier_than(threshold: u32) -> u64 {
    let body = std::fs::read_to_string(penguins()).expect("penguins");
    let mut lines = body.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "body_mass_g").unwrap();
    lines
        .filter_map(|l| l.split(',').nth(col)?.parse::<f64>().ok())
        .filter(|m| *m > f64::from(threshold))
        .count() as u64
}

fn answer(t: &Trace) -> Option<u64> {
    t.final_answer.as_ref().and_then(Value::as_u64)
}

// ------------------------------------------------------------------ checks

/// Every trace as scripted: its code turn by turn, its answer, its stop,
/// and a usage of exactly one request per turn.
fn check_episodes(all: &[Episode]) {
    assert_eq!(all.len(), 4, "{all:#?}");
    for e in all {
        assert_eq!(e.source, csv_agent::schema::QuestionSource::Llm);
        assert_eq!(e.teacher, "llm");
        assert_eq!(e.gold_trace.label, "gold");
        for (i, t) in e.consistency_traces.iter().enumerate() {
            assert_eq!(t.label, format!("consistency_{}", i + 1));
        }
        for t in std::iter::once(&e.gold_trace).chain(&e.consistency_traces) {
            assert_eq!(t.format_errors, 0, "{}", t.label);
            let usage = t.usage.expect("trace usage");
            assert_eq!(usage.requests, t.turns.len() as u64, "{}", t.label);
            assert_eq!(usage.retries, 0);
        }
    }

    // A: verified; the gold trace corrects a KeyError.
    let a = episode(all, &QA);
    assert!(a.verified, "{:?}", a.reason);
    assert_eq!(a.diagnosis, None);
    assert_eq!(codes(&a.gold_trace), [A_TYPO, A_COUNT, SUBMIT_N]);
    assert_eq!(answer(&a.gold_trace), Some(152));
    assert_eq!(a.gold_trace.turns[0].execution.status, "error");
    let c = &a.gold_trace.corrections;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].turn_index, c[0].corrects_turn), (1, 0));
    assert_eq!(c[0].error_type, "KeyError");
    let hook = &a.gold_trace.turns[1].execution.hooks;
    assert_eq!(hook.len(), 1, "{hook:?}");
    assert_eq!(hook[0].variable_name.as_deref(), Some("n"));
    assert_eq!(hook[0].value, json!(152));
    assert_eq!(hook[0].grounded, Some(true));
    assert_eq!(a.consistency_traces.len(), 2, "EASY: 2 consistency traces");
    for t in &a.consistency_traces {
        assert_eq!(codes(t), [A_COUNT, SUBMIT_N]);
        assert_eq!(answer(t), Some(152));
        assert!(t.corrections.is_empty());
    }
    assert_eq!(a.triangulation.majority_count, 2);
    assert_eq!(a.triangulation.n_consistency_agreeing, 2);

    // B: only the hint names the island.
    let b = episode(all, &QB);
    assert!(!b.verified);
    assert_eq!(
        b.diagnosis.as_deref(),
        Some("hint_necessary"),
        "{:?}",
        b.reason
    );
    assert_eq!(codes(&b.gold_trace), [B_DREAM, SUBMIT_N]);
    assert_eq!(answer(&b.gold_trace), Some(124));
    assert_eq!(
        b.consistency_traces.len(),
        2,
        "MEDIUM: 2 consistency traces"
    );
    for t in &b.consistency_traces {
        assert_eq!(codes(t), [B_BISCOE, SUBMIT_N]);
        assert_eq!(answer(t), Some(168));
    }

    // C: every trace raises until it runs out of turns.
    let c = episode(all, &QC);
    assert!(!c.verified);
    assert_eq!(
        c.diagnosis.as_deref(),
        Some("execution_failure"),
        "{:?}",
        c.reason
    );
    assert_eq!(c.consistency_traces.len(), 4, "HARD: 4 consistency traces");
    for t in std::iter::once(&c.gold_trace).chain(&c.consistency_traces) {
        assert_eq!(codes(t), [C_RAISES; 3], "{}", t.label);
        assert!(!t.success && t.final_answer.is_none(), "{}", t.label);
        assert_eq!(t.stop.as_deref(), Some("max_turns"), "{}", t.label);
        for turn in &t.turns {
            assert_eq!(turn.execution.status, "error");
            assert_eq!(turn.execution.error.as_ref().unwrap()["type"], "KeyError");
        }
    }

    // D: three readings of "heavy", two traces each, no majority.
    let d = episode(all, &QD);
    assert!(!d.verified);
    assert_eq!(d.diagnosis.as_deref(), Some("ambiguous"), "{:?}", d.reason);
    let gold_code = d_code(D_GOLD_THRESHOLD);
    assert_eq!(codes(&d.gold_trace), [gold_code.as_str(), SUBMIT_X]);
    assert_eq!(answer(&d.gold_trace), Some(heavier_than(D_GOLD_THRESHOLD)));
    assert_eq!(
        d.consistency_traces.len(),
        6,
        "VERY_HARD: 6 consistency traces"
    );
    let mut per_threshold = BTreeMap::new();
    for t in &d.consistency_traces {
        let threshold = *D_THRESHOLDS
            .iter()
            .find(|th| t.turns[0].code == d_code(**th))
            .unwrap_or_else(|| panic!("unscripted code {:?}", t.turns[0].code));
        assert_eq!(codes(t)[1..], [SUBMIT_X]);
        assert_eq!(answer(t), Some(heavier_than(threshold)));
        *per_threshold.entry(threshold).or_insert(0) += 1;
    }
    assert_eq!(per_threshold.values().collect::<Vec<_>>(), [&2, &2, &2]);
    assert_eq!(d.triangulation.cluster_sizes, [2, 2, 2]);

    for e in [a, b] {
        for t in std::iter::once(&e.gold_trace).chain(&e.consistency_traces) {
            assert!(t.success, "{}: {:?}", t.label, t.error);
            assert_eq!(t.stop.as_deref(), Some("submitted"));
        }
    }
}

/// The summary's usage equals what the server saw: every chat request
/// answered with a completion but the preflight, prompt tokens by the
/// server's formula, completion tokens of the replies it sent; `retries`
/// failed attempts that were tried again.
fn check_usage(endpoint: &Endpoint, summary: &Value, retries: u64) {
    let chats = endpoint.chats_since(0);
    assert_eq!(
        chats[0].last_user(),
        Some(PREFLIGHT),
        "the preflight comes first"
    );
    assert_eq!(
        chats
            .iter()
            .filter(|r| r.last_user() == Some(PREFLIGHT))
            .count(),
        1
    );
    let completions = endpoint.model.completion_tokens.lock().unwrap().clone();
    let answered: Vec<&Request> = chats[1..]
        .iter()
        .filter(|r| completions.contains_key(&r.seq))
        .collect();
    let prompt: u64 = answered.iter().map(|r| r.prompt_tokens()).sum();
    let completion: u64 = answered.iter().map(|r| completions[&r.seq]).sum();
    let usage = &summary["llm_usage"];
    assert_eq!(usage["requests"], json!(answered.len()), "{summary:#}");
    assert_eq!(usage["prompt_tokens"], json!(prompt), "{summary:#}");
    assert_eq!(usage["completion_tokens"], json!(completion), "{summary:#}");
    assert_eq!(usage["retries"], json!(retries), "{summary:#}");
    // Every request the server saw is a reply, a retried attempt or the
    // last attempt of a failed call.
    let seen = chats.len() as u64 - 1;
    assert_eq!(
        usage["failed"],
        json!(seen - answered.len() as u64 - retries),
        "{summary:#}"
    );
    assert!(usage["latency_s"].as_f64().unwrap() > 0.0);
    let datasets = summary["datasets"].as_array().expect("datasets");
    assert_eq!(datasets.len(), 1);
    assert_eq!(
        datasets[0]["llm_usage"], *usage,
        "one dataset: the same usage"
    );
}

/// Runs with D's traces failing at their second turn; returns the server.
fn run_with_outage(dir: &Path, reg: &Path, out: &Path, config: &Path) -> Endpoint {
    let failing = Endpoint::start(Model::new(Mode::DOutage));
    let url = failing.url();
    let mut args = run_args(reg, out, &url);
    args.extend(["--config", s(config)]);
    let o = csv_agent_in(dir, &args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    failing
}

fn retries_config(dir: &Path) -> PathBuf {
    let config = dir.join("retries.toml");
    std::fs::write(&config, "[llm]\nmax_retries = 1\n").unwrap();
    config
}

// ------------------------------------------------------------------ tests

#[test]
fn four_scripted_questions_get_each_diagnosis_and_a_rerun_asks_nothing() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");
    let endpoint = Endpoint::start(Model::new(Mode::Healthy));
    let url = endpoint.url();
    let args = run_args(&reg, &out, &url);

    let o = csv_agent_in(dir.path(), &args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "unverified episodes are not failures\n{}",
        text(&o)
    );
    let all = episodes(&out);
    check_episodes(&all);
    let sum = summary(&out);
    assert!(sum.get("stopped").is_none(), "{sum:#}");
    let ds = &sum["datasets"][0];
    assert_eq!(ds["questions"], 4);
    assert_eq!(ds["verified"], 1);
    assert_eq!(ds["disagreements"], 3);
    assert_eq!(ds["failures"], json!([]));
    check_usage(&endpoint, &sum, 0);

    // The generator's conversation: 3 cells, done, one round of proposals.
    let exploring = endpoint
        .chats_since(0)
        .into_iter()
        .filter(|r| {
            r.system()
                .is_some_and(|s| s.contains("exploring a dataset"))
        })
        .count();
    assert_eq!(exploring, 5);
    let questions: Vec<Question> =
        std::fs::read_to_string(out.join("questions").join("penguins.jsonl"))
            .expect("questions file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("question parses"))
            .collect();
    assert_eq!(questions.len(), 4);

    // Resume: only the preflight reaches the server, nothing is written.
    let before = std::fs::read(out.join("episodes.jsonl")).unwrap();
    let seen = endpoint.server.request_count();
    let o = csv_agent_in(dir.path(), &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let new = endpoint.chats_since(seen);
    assert_eq!(new.len(), 1, "only the preflight: {new:#?}");
    assert_eq!(new[0].last_user(), Some(PREFLIGHT));
    assert_eq!(endpoint.server.request_count(), seen + 1);
    assert_eq!(std::fs::read(out.join("episodes.jsonl")).unwrap(), before);
    let sum = summary(&out);
    assert_eq!(sum["datasets"][0]["verified"], 1, "{sum:#}");
    assert_eq!(sum["datasets"][0]["disagreements"], 3, "{sum:#}");
}

#[test]
fn a_server_outage_mid_run_stops_the_run_keeps_episodes_and_a_rerun_finishes() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");
    let config = retries_config(dir.path());

    // D's traces fail at their second turn (after a cell ran).
    let failing = run_with_outage(dir.path(), &reg, &out, &config);
    let sum = summary(&out);
    let stopped = sum["stopped"].as_str().unwrap_or_else(|| panic!("{sum:#}"));
    assert!(stopped.contains("500"), "{stopped}");
    let failures = sum["datasets"][0]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{sum:#}");
    assert_eq!(failures[0]["stage"], "model");
    // A, B and C were in flight before D failed: written whole; D is not
    // written at all (every line parsed above, no partial trace).
    let kept = episodes(&out);
    let texts: Vec<&str> = kept
        .iter()
        .map(|e| e.question.question_text.as_str())
        .collect();
    assert_eq!(kept.len(), 3, "{texts:?}");
    assert!(!texts.contains(&QD.text), "{texts:?}");
    for q in [&QA, &QB, &QC] {
        episode(&kept, q);
    }
    // With max_retries = 1 each failing D request was sent twice.
    let d_500s = failing
        .chats_since(0)
        .iter()
        .filter(|r| r.contains(QD.text) && r.n_assistant() >= 1)
        .count();
    assert_eq!(d_500s, 2 * 7, "7 traces, each request tried twice");
    drop(failing);

    // A healthy server: the questions file is reused, only D is answered.
    let healthy = Endpoint::start(Model::new(Mode::Healthy));
    let url = healthy.url();
    let mut args = run_args(&reg, &out, &url);
    args.extend(["--config", s(&config)]);
    let o = csv_agent_in(dir.path(), &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let sum = summary(&out);
    assert!(sum.get("stopped").is_none(), "{sum:#}");
    assert_eq!(sum["datasets"][0]["failures"], json!([]), "{sum:#}");
    let chats = healthy.chats_since(0);
    assert!(
        chats
            .iter()
            .skip(1)
            .all(|r| r.contains(QD.text) && !r.contains("exploring a dataset")),
        "the rerun asked only about D"
    );
    check_episodes(&episodes(&out));
}

#[test]
fn a_refused_preflight_stops_before_any_work_with_exit_2() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");

    // A server that echoes the key it was sent, as some do.
    let endpoint = Endpoint::start_with(Model::new(Mode::Healthy), |req| {
        let auth = req.authorization().unwrap_or_default().to_string();
        Response::status(401, format!("Incorrect API key provided: {auth}"))
    });
    let url = endpoint.url();
    let o = csv_agent_in(dir.path(), &run_args(&reg, &out, &url));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
    assert!(
        !text(&o).contains(SECRET_KEY),
        "the key leaked: {}",
        text(&o)
    );
    assert_eq!(endpoint.server.request_count(), 1, "a 401 is not retried");
    assert!(!out.join("episodes.jsonl").exists());
    assert!(!out.join("questions").exists());

    let endpoint = Endpoint::start_with(Model::new(Mode::Healthy), |req| {
        let model = req.model().unwrap_or_default().to_string();
        Response::status(404, format!("The model `{model}` does not exist"))
    });
    let url = endpoint.url();
    let o = csv_agent_in(dir.path(), &run_args(&reg, &out, &url));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr.contains("404"), "{stderr}");
    assert!(
        stderr.contains(MODEL) && stderr.contains("--model"),
        "{stderr}"
    );
    assert!(!out.join("episodes.jsonl").exists());
}

#[test]
fn validate_prints_the_verdict_and_exits_by_it() {
    let dir = world_readable_dir();
    let endpoint = Endpoint::start(Model::new(Mode::Healthy));
    let url = endpoint.url();
    let csv = penguins();
    let base = |q: &'static Q| {
        vec![
            "validate".to_string(),
            "--csv".into(),
            s(&csv).into(),
            "--question".into(),
            q.text.into(),
            "--hint".into(),
            q.hint.into(),
            "--model".into(),
            MODEL.into(),
            "--base-url".into(),
            url.clone(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        csv_agent_in(dir.path(), &args)
    };

    let mut args = base(&QA);
    args.push("--json".into());
    let o = run(args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("validate --json prints JSON");
    assert_eq!(v["verified"], true, "{v:#}");
    assert_eq!(v["diagnosis"], Value::Null);
    let gold: Trace = serde_json::from_value(v["gold_trace"].clone()).unwrap();
    assert_eq!(codes(&gold), [A_TYPO, A_COUNT, SUBMIT_N]);
    assert_eq!(gold.corrections.len(), 1);
    let consistency: Vec<Trace> = serde_json::from_value(v["consistency_traces"].clone()).unwrap();
    assert_eq!(consistency.len(), 2, "--difficulty medium by default");
    for t in &consistency {
        assert_eq!(codes(t), [A_COUNT, SUBMIT_N]);
    }
    assert_eq!(v["usage"]["requests"], 3 + 2 + 2);

    let o = run(base(&QA));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout.contains("VERIFIED: 2 of 2"), "{stdout}");

    let o = run(base(&QB));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stdout.contains("NOT VERIFIED (hint_necessary)"), "{stdout}");
}

#[test]
fn questions_from_the_model_are_written_without_episodes() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");
    let endpoint = Endpoint::start(Model::new(Mode::Healthy));
    let url = endpoint.url();
    let o = csv_agent_in(
        dir.path(),
        &[
            "questions",
            "--source",
            "llm",
            "--llm-questions",
            "4",
            "--model",
            MODEL,
            "--base-url",
            &url,
            "--datasets",
            s(&reg),
            "--only",
            "penguins",
            "--out",
            s(&out),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let questions: Vec<Question> =
        std::fs::read_to_string(out.join("questions").join("penguins.jsonl"))
            .expect("questions file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("question parses"))
            .collect();
    let texts: Vec<&str> = questions.iter().map(|q| q.question_text.as_str()).collect();
    assert_eq!(texts, ALL.map(|q| q.text), "one per difficulty, in order");
    for q in &questions {
        assert_eq!(q.source, csv_agent::schema::QuestionSource::Llm);
        assert_eq!(q.dataset, "penguins");
        assert!(q.ground_truth.is_none());
    }
    assert!(episodes(&out).is_empty());
    // The preflight, then the generator's five requests; no answering.
    let chats = endpoint.chats_since(0);
    assert_eq!(chats.len(), 6, "{chats:#?}");
    assert!(chats[1..].iter().all(|r| r
        .system()
        .is_some_and(|s| s.contains("exploring a dataset"))));
}

/// What the model cost is counted even for a question the model failed:
/// the successful turns of its traces were paid for, and its failed calls
/// were retried (regression: the usage of a question dropped by
/// `TeacherError::Model`, and the retries of a call that failed, were lost).
#[test]
fn usage_counts_the_requests_of_a_question_that_failed_on_the_model() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");
    let config = retries_config(dir.path());
    let failing = run_with_outage(dir.path(), &reg, &out, &config);
    // 7 D traces: each first turn answered, each second call tried twice.
    check_usage(&failing, &summary(&out), 7);
}

/// Template questions answered by the LLM teacher keep their ground truth
/// as a check: a question every trace answers alike but wrongly is not
/// verified (`too_hard`), the others are, with `gold_matches_ground_truth`.
/// The scripted model reads the ground truth from the questions file the
/// run wrote before answering, and submits it — except for one question.
#[test]
fn template_questions_under_the_llm_teacher_are_checked_against_their_ground_truth() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");
    let questions_file = out.join("questions/penguins.jsonl");
    // question text → ground truth, loaded once the file exists.
    let truths: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let wrong_one: Arc<Mutex<Option<String>>> = Arc::default();
    let script = {
        let (truths, wrong_one) = (truths.clone(), wrong_one.clone());
        move |req: &Request| -> Response {
            if req.last_user() == Some(PREFLIGHT) {
                return Response::reply("OK");
            }
            let mut truths = truths.lock().unwrap();
            if truths.is_empty() {
                let text = std::fs::read_to_string(&questions_file).expect("questions file");
                for line in text.lines() {
                    let q: Question = serde_json::from_str(line).expect("question");
                    truths.insert(q.question_text.clone(), q.ground_truth.expect("truth"));
                }
            }
            let first = req
                .messages()
                .iter()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let (text, truth) = truths
                .iter()
                .find(|(t, _)| first.contains(t.as_str()))
                .map(|(t, v)| (t.clone(), v.clone()))
                .expect("the question is one of the file's");
            let mut wrong = wrong_one.lock().unwrap();
            let wrong = wrong.get_or_insert_with(|| text.clone()) == &text;
            let answer = if wrong {
                json!("not the answer")
            } else {
                truth
            };
            // The answer as a Python literal via JSON.
            let literal = serde_json::to_string(&answer.to_string()).unwrap();
            match req.n_assistant() {
                0 => Response::reply(cell(
                    "rows = len(df)\nhook(rows, \"rows = len(df)\", name=\"rows\")",
                )),
                _ => Response::reply(cell(&format!("import json\nsubmit(json.loads({literal}))"))),
            }
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = rt.block_on(Server::start(script));
    let url = server.base_url();
    let o = csv_agent_in(
        dir.path(),
        &[
            "run",
            "--teacher",
            "llm",
            "--model",
            MODEL,
            "--base-url",
            &url,
            "--questions",
            "template",
            "--max-questions",
            "3",
            "--n-consistency",
            "1",
            "--max-turns",
            "3",
            "--datasets",
            s(&reg),
            "--only",
            "penguins",
            "--out",
            s(&out),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let all = episodes(&out);
    assert_eq!(all.len(), 3, "{}", text(&o));
    let wrong = wrong_one
        .lock()
        .unwrap()
        .clone()
        .expect("one question answered wrongly");
    for e in &all {
        assert_eq!(e.teacher, "llm");
        assert_eq!(e.consistency_traces.len(), 1);
        assert!(e.question.ground_truth.is_some());
        if e.question.question_text == wrong {
            assert!(!e.verified, "{e:?}");
            assert_eq!(e.triangulation.gold_matches_ground_truth, Some(false));
            assert!(e.triangulation.gold_matches_majority, "the traces agree");
            assert_eq!(e.diagnosis.as_deref(), Some("too_hard"));
        } else {
            assert!(e.verified, "{:?}", e.reason);
            assert_eq!(e.triangulation.gold_matches_ground_truth, Some(true));
            assert_eq!(e.diagnosis, None);
        }
    }
}
