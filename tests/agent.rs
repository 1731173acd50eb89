//! The LLM agent loop against a real sandbox on penguins, with a scripted
//! model in place of the HTTP client: each reply is picked by how many
//! assistant messages the conversation already holds, and every request is
//! recorded so the tests can read what the model was shown.
//!
//! The cases share one sandbox (starting one costs more than all the cells
//! together): each runs as its own task, and the test names the ones that
//! failed. The timeout case needs a short cell timeout, so it has its own.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use csv_agent::llm::{BoxFuture, Chat, Completion, LlmError, Message, Usage};
use csv_agent::sandbox::Sandbox;
use csv_agent::schema::{Question, Trace};
use csv_agent::teacher::agent::{run_agent, AgentConfig, Role};
use serde_json::{json, Value};

const OVERVIEW: &str = "OVERVIEW: penguins, 344 rows x 8 columns";
const HINT: &str = "filter species == 'Adelie' before averaging";

/// A model that follows a script: reply `n` answers a conversation holding
/// `n` assistant messages (the last entry repeats). `None` is a failed
/// request.
struct Scripted {
    replies: Vec<Option<String>>,
    sent: Mutex<Vec<Vec<Message>>>,
}

impl Scripted {
    fn new(replies: &[&str]) -> Scripted {
        Scripted {
            replies: replies.iter().map(|r| Some(r.to_string())).collect(),
            sent: Mutex::new(Vec::new()),
        }
    }

    fn failing() -> Scripted {
        Scripted {
            replies: vec![None],
            sent: Mutex::new(Vec::new()),
        }
    }

    fn requests(&self) -> Vec<Vec<Message>> {
        self.sent.lock().unwrap().clone()
    }

    /// The last message of request `i` (what the model just read).
    fn last_of(&self, i: usize) -> String {
        self.requests()[i].last().unwrap().content.clone()
    }
}

/// Usage of the reply to a conversation with `n` assistant messages.
fn usage_of(n: usize) -> Usage {
    Usage {
        prompt_tokens: 100 + n as u64,
        completion_tokens: 10,
        requests: 1,
        retries: 0,
        latency_s: 0.5,
        failed: 0,
    }
}

/// The summed usage of `k` requests.
fn usage_sum(k: usize) -> Usage {
    let mut u = Usage::default();
    for n in 0..k {
        u.add(&usage_of(n));
    }
    u
}

impl Chat for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }

    fn chat<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(async move {
            let n = messages.iter().filter(|m| m.role == "assistant").count();
            self.sent.lock().unwrap().push(messages.to_vec());
            let reply = self.replies.get(n).or(self.replies.last()).unwrap();
            match reply {
                Some(text) => Ok(Completion {
                    content: text.clone(),
                    finish_reason: Some("stop".into()),
                    usage: usage_of(n),
                    truncated: false,
                }),
                None => Err(LlmError::Exhausted {
                    url: "http://model.invalid/v1".into(),
                    attempts: 3,
                    last: "connection refused".into(),
                }),
            }
        })
    }
}

fn question() -> Question {
    serde_json::from_value(json!({
        "id": "q-adelie", "question_text": "What is the mean body mass (g) of Adelie penguins, rounded to 2 decimals?",
        "hint": HINT, "difficulty": "EASY", "n_steps": 2, "source": "template",
        "dataset": "penguins", "dataset_hash": "0", "output_type": "scalar", "output_schema": "number"
    }))
    .unwrap()
}

/// The answer, computed here from the CSV.
fn adelie_mean_mass() -> f64 {
    let text = std::fs::read_to_string(penguins()).unwrap();
    let masses: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[0] == "Adelie")
        .filter_map(|f| f[5].parse().ok())
        .collect();
    let mean = masses.iter().sum::<f64>() / masses.len() as f64;
    (mean * 100.0).round() / 100.0
}

async fn run(chat: &Scripted, sb: &Sandbox, role: Role, config: &AgentConfig) -> Trace {
    run_agent(chat, sb, role, &question(), OVERVIEW, config, "teacher").await
}

fn roles_alternate(request: &[Message]) {
    assert_eq!(request[0].role, "system");
    for (i, m) in request.iter().enumerate().skip(1) {
        let want = if i % 2 == 1 { "user" } else { "assistant" };
        assert_eq!(m.role, want, "message {i} of {request:#?}");
    }
}

// ------------------------------------------------------------------ cases

const SOLUTION: [&str; 3] = [
    "First I look at the species.\n```python\nprint(df['species'].value_counts())\n```",
    "Now the Adelie rows and their mean mass.\n```python\nadelie = df[df['species'] == 'Adelie']\nhook(len(adelie), \"adelie = df[df['species'] == 'Adelie']\", name='adelie')\nmean_mass = adelie['body_mass_g'].mean()\nhook(mean_mass, \"mean_mass = adelie['body_mass_g'].mean()\", name='mean_mass')\n```",
    "Round and submit.\n```python\nanswer = round(float(mean_mass), 2)\nhook(answer,   'answer = round(float(mean_mass),  2)', name='answer')\nsubmit(answer)\n```",
];

async fn a_correct_solution_in_three_turns(sb: Sandbox) {
    let chat = Scripted::new(&SOLUTION);
    let trace = run(&chat, &sb, Role::Gold, &AgentConfig::default()).await;
    assert!(trace.success, "{trace:#?}");
    assert_eq!(trace.stop.as_deref(), Some("submitted"));
    assert_eq!(trace.error, None);
    assert_eq!(trace.label, "teacher");
    assert_eq!(trace.turns.len(), 3);
    for (i, turn) in trace.turns.iter().enumerate() {
        assert_eq!(turn.turn_index, i as u32);
        assert!(turn.execution.success, "{turn:#?}");
        assert!(!turn.fresh_worker);
    }
    assert_eq!(
        trace.turns[1].reasoning,
        "Now the Adelie rows and their mean mass."
    );
    assert!(trace.turns[0].execution.stdout.contains("Adelie"));
    let hooks: Vec<_> = trace
        .turns
        .iter()
        .flat_map(|t| &t.execution.hooks)
        .collect();
    assert_eq!(hooks.len(), 3);
    assert!(hooks.iter().all(|h| h.grounded == Some(true)), "{hooks:#?}");
    let want = adelie_mean_mass();
    assert_eq!(trace.final_answer, Some(json!(want)));
    assert_eq!(
        trace.final_answer_hash,
        Some(csv_agent::answers::answer_hash(&json!(want)))
    );
    assert_eq!(trace.usage, Some(usage_sum(3)));
    assert_eq!(trace.format_errors, 0);
    assert!(trace.corrections.is_empty());
    assert!(trace.worker_wait <= trace.elapsed);
    // What the model read: the system prompt with the overview, the
    // question, then each observation.
    let requests = chat.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[0][0].content.contains(OVERVIEW));
    assert!(requests[0][1].content.contains("Adelie penguins"));
    assert!(chat.last_of(1).contains("Adelie"), "{}", chat.last_of(1));
    assert!(chat.last_of(2).contains("hook mean_mass = "));
    requests.iter().for_each(|r| roles_alternate(r));
}

async fn a_failed_cell_then_its_fix_is_a_correction(sb: Sandbox) {
    let chat = Scripted::new(&[
        "Mean mass.\n```python\nm = df['body_mass'].mean()\nprint(m)\n```",
        "The column is body_mass_g.\n```python\nm = df['body_mass_g'].mean()\nprint(m)\nsubmit(round(float(m), 1))\n```",
    ]);
    let trace = run(&chat, &sb, Role::Consistency, &AgentConfig::default()).await;
    assert!(trace.success, "{trace:#?}");
    assert_eq!(trace.turns.len(), 2);
    assert!(!trace.turns[0].execution.success);
    assert!(chat.last_of(1).contains("KeyError"), "{}", chat.last_of(1));
    assert_eq!(trace.corrections.len(), 1, "{:#?}", trace.corrections);
    let c = &trace.corrections[0];
    assert_eq!((c.turn_index, c.corrects_turn), (1, 0));
    assert_eq!(c.error_type, "KeyError");
    assert!(c.diff.contains("-m = df['body_mass'].mean()"), "{}", c.diff);
    assert!(
        c.diff.contains("+m = df['body_mass_g'].mean()"),
        "{}",
        c.diff
    );
    assert!(c.diff.contains(" print(m)"), "{}", c.diff);
}

async fn a_reply_without_code_is_corrected(sb: Sandbox) {
    let chat = Scripted::new(&[
        "The dataset has 344 rows, so that is the answer.",
        "Submitting.\n```python\nsubmit(len(df))\n```",
    ]);
    let trace = run(&chat, &sb, Role::Consistency, &AgentConfig::default()).await;
    assert!(trace.success, "{trace:#?}");
    assert_eq!(trace.format_errors, 1);
    assert_eq!(trace.turns.len(), 1);
    assert_eq!(trace.turns[0].turn_index, 0);
    assert_eq!(trace.final_answer, Some(json!(344)));
    let corrective = chat.last_of(1);
    assert!(
        corrective.contains("no ```python code block"),
        "{corrective}"
    );
    // The reply without code stays in the conversation, in its place.
    let request = &chat.requests()[1];
    assert_eq!(
        request[2].content,
        "The dataset has 344 rows, so that is the answer."
    );
    roles_alternate(request);
    assert_eq!(trace.usage, Some(usage_sum(2)));
}

async fn replies_without_code_stop_the_trace(sb: Sandbox) {
    let chat = Scripted::new(&["I cannot run code, but the answer is 4200."]);
    let trace = run(&chat, &sb, Role::Consistency, &AgentConfig::default()).await;
    assert!(!trace.success);
    assert_eq!(trace.stop.as_deref(), Some("format_errors"));
    assert_eq!(trace.format_errors, 4, "one more than max_format_errors");
    assert!(trace.turns.is_empty());
    assert!(trace.error.as_deref().unwrap().contains("code block"));
    assert_eq!(chat.requests().len(), 4);
    assert_eq!(trace.usage, Some(usage_sum(4)));
}

async fn several_blocks_and_cut_replies_are_named(sb: Sandbox) {
    let chat = Scripted::new(&[
        "Two steps.\n```python\na = 1\n```\nand\n```python\nb = 2\n```",
        "Long reply\n```python\nx = df.groupby('species')[",
        "```python\nsubmit(1)\n```",
    ]);
    let trace = run(&chat, &sb, Role::Consistency, &AgentConfig::default()).await;
    assert!(trace.success, "{trace:#?}");
    assert_eq!(trace.format_errors, 2);
    assert!(chat.last_of(1).contains("had 2 ```python code blocks"));
    assert!(chat.last_of(2).contains("cut off"));
}

async fn a_model_that_never_submits_stops_at_max_turns(sb: Sandbox) {
    let chat = Scripted::new(&["Let me look.\n```python\nprint(df.shape)\n```"]);
    let config = AgentConfig {
        max_turns: 3,
        ..AgentConfig::default()
    };
    let trace = run(&chat, &sb, Role::Consistency, &config).await;
    assert!(!trace.success);
    assert_eq!(trace.stop.as_deref(), Some("max_turns"));
    assert_eq!(trace.turns.len(), 3);
    assert_eq!(trace.final_answer, None);
    assert!(
        trace.error.as_deref().unwrap().contains("3 turns"),
        "{trace:#?}"
    );
    assert_eq!(chat.requests().len(), 3);
    // The model was warned before it ran out.
    assert!(
        chat.last_of(2).contains("1 turn(s) left"),
        "{}",
        chat.last_of(2)
    );
}

async fn ungrounded_hooks_are_asked_about_once(sb: Sandbox) {
    let chat = Scripted::new(&[
        "Mean bill length.\n```python\nm = df['bill_length_mm'].mean()\nhook(m, \"m = df.bill_length_mm.mean()\", name='m')\n```",
        "Again.\n```python\nhook(m, 'bill = compute_it()', name='m')\n```",
        "Submit.\n```python\nsubmit(round(float(m), 2))\n```",
    ]);
    let trace = run(&chat, &sb, Role::Consistency, &AgentConfig::default()).await;
    assert!(trace.success, "{trace:#?}");
    for turn in &trace.turns[..2] {
        let hooks = &turn.execution.hooks;
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].grounded, Some(false), "{hooks:#?}");
    }
    let asked = "does not appear in any code you ran";
    assert!(chat.last_of(1).contains(asked), "{}", chat.last_of(1));
    assert!(chat.last_of(1).contains("- m = df.bill_length_mm.mean()"));
    assert!(!chat.last_of(2).contains(asked), "asked only once");
}

async fn a_submit_in_a_failing_cell_is_not_accepted(sb: Sandbox) {
    let chat = Scripted::new(&[
        "```python\nsubmit(1)\nraise ValueError('boom')\n```",
        "```python\nsubmit(2)\n```",
    ]);
    let trace = run(&chat, &sb, Role::Consistency, &AgentConfig::default()).await;
    assert!(trace.success, "{trace:#?}");
    assert_eq!(trace.turns.len(), 2);
    assert_eq!(trace.final_answer, Some(json!(2)));
    assert!(
        chat.last_of(1).contains("NOT accepted"),
        "{}",
        chat.last_of(1)
    );
}

async fn a_model_error_stops_the_trace(sb: Sandbox) {
    let chat = Scripted::failing();
    let trace = run(&chat, &sb, Role::Gold, &AgentConfig::default()).await;
    assert!(!trace.success);
    assert_eq!(trace.stop.as_deref(), Some("model_error"));
    let error = trace.error.as_deref().unwrap();
    assert!(error.contains("connection refused"), "{error}");
    assert!(trace.turns.is_empty());
    // The failed call is counted, with its retried attempts.
    let failed = trace.usage.expect("usage of the failed call");
    assert_eq!((failed.requests, failed.failed), (0, 1));
    assert_eq!(failed.retries, 2, "the scripted error had 3 attempts");
}

async fn only_gold_is_given_the_hint(sb: Sandbox) {
    for (role, with_hint) in [
        (Role::Gold, true),
        (Role::Consistency, false),
        (Role::Student, false),
    ] {
        let chat = Scripted::new(&["```python\nsubmit(1)\n```"]);
        let trace = run(&chat, &sb, role, &AgentConfig::default()).await;
        assert!(trace.success, "{role:?}: {trace:#?}");
        let prompt = &chat.requests()[0][1].content;
        assert_eq!(prompt.contains(HINT), with_hint, "{role:?}: {prompt}");
        assert!(prompt.contains("Adelie penguins"), "{role:?}: {prompt}");
        assert!(prompt.contains("scalar (number)"), "{role:?}: {prompt}");
    }
}

async fn trimming_keeps_turns_aligned_in_a_long_conversation(sb: Sandbox) {
    // The system prompt and three whole turns (~3.6k each) fit; eight do not.
    const BUDGET: usize = 15_000;
    let steps = 8;
    let mut replies: Vec<String> = (0..steps)
        .map(|i| {
            format!("Step {i}, with a long explanation {}.\n```python\nv{i} = {i}\nprint('{i}' * 3000)\n```", "z".repeat(500))
        })
        .collect();
    let total: Vec<String> = (0..steps).map(|i| format!("v{i}")).collect();
    replies.push(format!(
        "Sum.\n```python\nsubmit({})\n```",
        total.join(" + ")
    ));
    let refs: Vec<&str> = replies.iter().map(String::as_str).collect();
    let chat = Scripted::new(&refs);
    let config = AgentConfig {
        context_budget_chars: BUDGET,
        ..AgentConfig::default()
    };
    let trace = run(&chat, &sb, Role::Consistency, &config).await;
    assert!(trace.success, "{trace:#?}");
    assert_eq!(
        trace.final_answer,
        Some(json!(28)),
        "state persisted across 9 turns"
    );
    assert_eq!(trace.turns.len(), steps + 1);
    for (i, turn) in trace.turns.iter().take(steps).enumerate() {
        assert!(turn.code.starts_with(&format!("v{i} = {i}\n")));
    }
    let requests = chat.requests();
    assert_eq!(requests.len(), steps + 1);
    for (k, request) in requests.iter().enumerate() {
        assert_eq!(request.len(), 2 + 2 * k, "request {k} dropped messages");
        roles_alternate(request);
        // The j-th assistant message is still the j-th reply (whole or
        // reduced to its code).
        for j in 0..k {
            let reply = &request[2 + 2 * j].content;
            assert!(
                reply.contains(&format!("v{j} = {j}")),
                "request {k}, reply {j}: {reply}"
            );
        }
        // The latest three pairs are intact.
        for j in k.saturating_sub(3)..k {
            assert_eq!(
                request[2 + 2 * j].content,
                replies[j],
                "request {k}, reply {j}"
            );
            let output = &request[3 + 2 * j].content;
            assert!(
                output.contains(&format!("{j}{j}{j}{j}")),
                "request {k}, output {j}"
            );
        }
    }
    let last = requests.last().unwrap();
    assert!(last[3].content.contains("elided"), "{}", last[3].content);
    let size: usize = last.iter().map(|m| m.content.chars().count()).sum();
    assert!(size <= BUDGET, "last request is {size} characters");
    // Eliding old outputs was not enough: the oldest reply kept only its code.
    assert_eq!(last[2].content, "```python\nv0 = 0\nprint('0' * 3000)\n```");
}

// ------------------------------------------------------------------ harness

type Case = (&'static str, Pin<Box<dyn Future<Output = ()> + Send>>);

/// Run every case as its own task; fail naming the ones that panicked
/// (their panic messages are on stderr).
async fn run_cases(cases: Vec<Case>) -> Vec<&'static str> {
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, case)| (name, tokio::spawn(case)))
        .collect();
    let mut failed = Vec::new();
    for (name, handle) in handles {
        if handle.await.is_err() {
            failed.push(name);
        }
    }
    failed
}

async fn penguins_sandbox(
    limits: impl FnOnce(&mut csv_agent::sandbox::Limits),
) -> (Sandbox, tempfile::TempDir) {
    let dir = world_readable_dir();
    let text = std::fs::read_to_string(penguins()).unwrap();
    let csv = write_csv(dir.path(), "penguins.csv", &text);
    let sb = Sandbox::start(options_with(&csv, limits))
        .await
        .expect("sandbox starts");
    (sb, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_loop_on_penguins() {
    let (sb, _dir) = penguins_sandbox(|_| {}).await;
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            vec![$((stringify!($case), Box::pin($case(sb.clone())) as Pin<Box<dyn Future<Output = ()> + Send>>)),*]
        };
    }
    let failed = run_cases(cases![
        a_correct_solution_in_three_turns,
        a_failed_cell_then_its_fix_is_a_correction,
        a_reply_without_code_is_corrected,
        replies_without_code_stop_the_trace,
        several_blocks_and_cut_replies_are_named,
        a_model_that_never_submits_stops_at_max_turns,
        ungrounded_hooks_are_asked_about_once,
        a_submit_in_a_failing_cell_is_not_accepted,
        a_model_error_stops_the_trace,
        only_gold_is_given_the_hint,
        trimming_keeps_turns_aligned_in_a_long_conversation,
    ])
    .await;
    sb.shutdown().await;
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_is_reported_and_the_trace_goes_on_in_a_fresh_one() {
    let (sb, _dir) = penguins_sandbox(|l| l.cell_timeout = Duration::from_secs(2)).await;
    let chat = Scripted::new(&[
        "Keep a value.\n```python\nx = 41\nprint(x)\n```",
        "Something slow.\n```python\nimport time\ntime.sleep(30)\n```",
        "Use the value.\n```python\nprint(x)\n```",
        "Recompute and submit.\n```python\nx = 42\nsubmit(x)\n```",
    ]);
    // A quick fix after a timeout is a correction filed under `timeout`.
    let quick = Scripted::new(&[
        "```python\nimport time\ntime.sleep(30)\n```",
        "Faster.\n```python\nsubmit(1)\n```",
    ]);
    // With one loss allowed, the first loss ends the trace.
    let fragile = Scripted::new(&["```python\nimport time\ntime.sleep(30)\n```"]);
    let one_loss = AgentConfig {
        max_lost_workers: 1,
        ..AgentConfig::default()
    };
    let defaults = AgentConfig::default();
    let (trace, quick_trace, fragile_trace) = tokio::join!(
        run(&chat, &sb, Role::Consistency, &defaults),
        run(&quick, &sb, Role::Consistency, &defaults),
        run(&fragile, &sb, Role::Consistency, &one_loss),
    );
    sb.shutdown().await;

    assert!(quick_trace.success, "{quick_trace:#?}");
    assert_eq!(quick_trace.corrections.len(), 1);
    assert_eq!(quick_trace.corrections[0].error_type, "timeout");
    assert!(quick_trace.turns[1].fresh_worker);

    assert!(!fragile_trace.success);
    assert_eq!(fragile_trace.stop.as_deref(), Some("worker_lost"));
    assert_eq!(fragile_trace.turns.len(), 1);
    assert!(fragile_trace.error.as_deref().unwrap().contains("timeout"));

    assert!(trace.success, "{trace:#?}");
    assert_eq!(trace.turns.len(), 4);
    assert_eq!(trace.turns[1].execution.status, "timeout");
    assert!(
        chat.last_of(2).contains("The worker is gone"),
        "{}",
        chat.last_of(2)
    );
    let after = &trace.turns[2];
    assert!(after.fresh_worker, "{after:#?}");
    assert_eq!(
        after.execution.error.as_ref().and_then(|e| e.get("type")),
        Some(&Value::from("NameError")),
        "earlier variables are gone: {after:#?}"
    );
    assert!(!trace.turns[3].fresh_worker);
    assert!(!trace.turns[1].fresh_worker);
    assert_eq!(trace.final_answer, Some(json!(42)));
    // Turn 2 failed after a failed turn (no correction); turn 3 fixes it.
    assert_eq!(trace.corrections.len(), 1, "{:#?}", trace.corrections);
    assert_eq!(trace.corrections[0].corrects_turn, 2);
    assert_eq!(trace.corrections[0].error_type, "NameError");
}
