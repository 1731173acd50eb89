//! The multi-turn agent loop of the LLM teacher: a chat model writes one
//! python cell per reply, the cell runs in one task of the jail, and the
//! observation goes back as the next message, until the model submits an
//! answer or runs out of turns, format errors or workers. Owns the prompts
//! (text files under `prompts/`, embedded and versioned by
//! [`prompt_version`]), the format checks on replies, hook grounding,
//! self-corrections, and trimming the conversation to a context budget.
//!
//! It must never know how a model is reached (only the [`Chat`] trait: no
//! HTTP, no retries — the client owns those), nor what happens to a trace
//! afterwards (the pipeline, triangulation and the output formats live
//! elsewhere). A trace is always returned: every failure becomes its `stop`
//! and `error`, never a panic or an `Err`.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answers::answer_hash;
use crate::llm::{Chat, Message};
use crate::prompt;
use crate::prompt::Prompt;
use crate::runner;
use crate::sandbox::CellStatus;
use crate::schema::{Correction, Execution, Question, StopReason as Stop, Trace, Turn, Usage};
use crate::serve::source::TaskSource;
use crate::teacher::reply::{clip, line_diff, observation, parse_reply, Reply};

// ------------------------------------------------------------------ prompts

const SYSTEM: Prompt = prompt!("system.txt", ["overview"]);
const GOLD: Prompt = prompt!(
    "gold.txt",
    ["question", "hint", "output_type", "output_schema"]
);
const CONSISTENCY: Prompt = prompt!(
    "consistency.txt",
    ["question", "output_type", "output_schema"]
);
const STUDENT: Prompt = prompt!("student.txt", ["question", "output_type", "output_schema"]);
const NO_CODE: Prompt = prompt!("no_code.txt", []);
const SEVERAL_BLOCKS: Prompt = prompt!("several_blocks.txt", ["n_blocks"]);
const CUT_OFF: Prompt = prompt!("cut_off.txt", []);
const UNGROUNDED_HOOKS: Prompt = prompt!("ungrounded_hooks.txt", ["code_lines"]);
const SUBMIT_FAILED: Prompt = prompt!("submit_failed.txt", []);
const FRESH_WORKER: Prompt = prompt!("fresh_worker.txt", []);
const TURNS_LEFT: Prompt = prompt!("turns_left.txt", ["turns_left"]);
const ELIDED_OUTPUT: Prompt = prompt!("elided_output.txt", []);
const ELIDED_REPLY: Prompt = prompt!("elided_reply.txt", []);

/// Every prompt, in a fixed order (the order of [`prompt_version`]).
const PROMPTS: [&Prompt; 13] = [
    &SYSTEM,
    &GOLD,
    &CONSISTENCY,
    &STUDENT,
    &NO_CODE,
    &SEVERAL_BLOCKS,
    &CUT_OFF,
    &UNGROUNDED_HOOKS,
    &SUBMIT_FAILED,
    &FRESH_WORKER,
    &TURNS_LEFT,
    &ELIDED_OUTPUT,
    &ELIDED_REPLY,
];

/// Characters of a reply cut for length that go back to the model (its
/// start and end, `reply::clip`), so it sees what it sent without the
/// reply costing every later request its whole size.
const CUT_REPLY_KEPT_CHARS: usize = 2_000;

/// Warn that turns are running out when this many (or fewer) are left.
const WARN_TURNS_LEFT: u32 = 2;

/// Assistant/user pairs at the end of the conversation that trimming
/// never touches: the model needs its latest code and output verbatim.
const KEEP_LATEST_TURNS: usize = 3;

/// A short sha256 over every prompt text (and its file name): changes
/// whenever a prompt changes, so resume keys see new prompts as new work.
pub fn prompt_version() -> String {
    crate::prompt::version(&PROMPTS)
}

// ------------------------------------------------------------------ config

/// Which run of the teacher this is: only the gold run sees the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// With the question's hint: the trace that becomes the training target.
    Gold,
    /// Without the hint: an independent run that triangulation compares.
    Consistency,
    /// Without the hint, worded as an evaluation (a model under test).
    Student,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gold => "gold",
            Role::Consistency => "consistency",
            Role::Student => "student",
        }
    }

    fn prompt(self) -> &'static Prompt {
        match self {
            Role::Gold => &GOLD,
            Role::Consistency => &CONSISTENCY,
            Role::Student => &STUDENT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Executed cells (replies with exactly one code block) per trace.
    pub max_turns: u32,
    /// Replies without exactly one code block tolerated; one more ends the
    /// trace.
    pub max_format_errors: u32,
    /// Characters of conversation sent per request (see [`trim_context`]).
    pub context_budget_chars: usize,
    /// Characters kept of each stream of an observation.
    pub observation_chars: usize,
    /// Workers a trace may lose (timeout, OOM, crash) before it stops.
    pub max_lost_workers: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_turns: 10,
            max_format_errors: 3,
            context_budget_chars: 48_000,
            observation_chars: 4_000,
            max_lost_workers: 3,
        }
    }
}

// ------------------------------------------------------------------ the loop

fn system_prompt(overview: &str) -> String {
    SYSTEM.render(&[("overview", overview.trim())])
}

fn role_prompt(role: Role, question: &Question) -> String {
    let schema = match &question.output_schema {
        None | Some(Value::Null) => "shaped as the question says".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let output_type = question.output_type.as_deref().unwrap_or("any JSON value");
    let hint = question.hint.as_deref().unwrap_or("none");
    role.prompt().render(&[
        ("question", question.question_text.trim()),
        ("hint", hint.trim()),
        ("output_type", output_type),
        ("output_schema", &schema),
    ])
}

/// The one code block of a reply, or the corrective message saying what is
/// wrong with it.
fn the_code_block(reply: &Reply) -> Result<&str, String> {
    if reply.unclosed {
        return Err(CUT_OFF.text().to_string());
    }
    match reply.code_blocks.as_slice() {
        [code] => Ok(code),
        [] => Err(NO_CODE.text().to_string()),
        blocks => Err(SEVERAL_BLOCKS.render(&[("n_blocks", &blocks.len().to_string())])),
    }
}

/// Whitespace-insensitive form used for grounding: runs of whitespace
/// collapse to one space, surrounding spaces go.
fn normalize_ws(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a hook's code line appears in one of the cells that ran
/// (whitespace-normalized). An occurrence wrapped in quotes does not count:
/// that is the `hook(value, "…")` argument itself, which would otherwise
/// ground any line the model makes up.
fn grounded(code_line: &str, cells: &[String]) -> bool {
    let line = normalize_ws(code_line);
    if line.is_empty() {
        return false;
    }
    let quoted = |cell: &str, start: usize, end: usize| {
        let before = cell[..start].chars().next_back();
        let after = cell[end..].chars().next();
        matches!((before, after), (Some(b), Some(a)) if a == b && (a == '"' || a == '\''))
    };
    cells.iter().any(|cell| {
        cell.match_indices(&line)
            .any(|(i, m)| !quoted(cell, i, i + m.len()))
    })
}

/// What a failed turn's correction is filed under: the exception type for
/// a cell that raised, the status for one that lost its worker.
fn error_type(execution: &Execution) -> String {
    if execution.status == CellStatus::Error.as_str() {
        if let Some(kind) = execution
            .error
            .as_ref()
            .and_then(|e| e.get("type"))
            .and_then(|t| t.as_str())
        {
            return kind.to_string();
        }
    }
    execution.status.clone()
}

/// An infrastructure failure that ended a trace (see [`runner::Infra`]),
/// with what the model had cost by then.
#[derive(Debug)]
pub struct AgentInfra {
    pub error: runner::Infra,
    pub usage: Usage,
}

/// Run one trace: `chat` writes the cells, one task of `sandbox` runs them.
/// An infrastructure failure ends it as a trace stopped with `worker_lost`
/// (see [`try_run_agent`] to tell it apart).
pub async fn run_agent(
    chat: &dyn Chat,
    sandbox: &dyn TaskSource,
    role: Role,
    question: &Question,
    overview: &str,
    config: &AgentConfig,
    label: &str,
) -> Trace {
    let started = Instant::now();
    match try_run_agent(chat, sandbox, role, question, overview, config, label).await {
        Ok(trace) => trace,
        Err(infra) => {
            let trace = Trace {
                label: label.to_string(),
                usage: Some(infra.usage),
                ..Trace::default()
            };
            finish(
                trace,
                started,
                Stop::WorkerLost,
                Some(infra.error.to_string()),
            )
        }
    }
}

/// Run one trace; an infrastructure failure (the sandbox gone, the worker
/// killed from outside) is an `Err`, never part of the trace.
pub async fn try_run_agent(
    chat: &dyn Chat,
    sandbox: &dyn TaskSource,
    role: Role,
    question: &Question,
    overview: &str,
    config: &AgentConfig,
    label: &str,
) -> Result<Trace, AgentInfra> {
    let started = Instant::now();
    let mut trace = Trace {
        label: label.to_string(),
        ..Trace::default()
    };
    let mut task = sandbox.task();
    // As in runner::run_steps: waiting for a worker is measured apart from
    // the cells and the model.
    let ready = task.ready().await;
    trace.worker_wait = started.elapsed().as_secs_f64();
    if let Err(e) = ready {
        let e = runner::Infra::classify(label, e).map_err(|error| AgentInfra {
            error,
            usage: Usage::default(),
        })?;
        return Ok(finish(
            trace,
            started,
            Stop::WorkerLost,
            Some(format!("no worker: the sandbox failed: {e}")),
        ));
    }

    let mut messages = vec![
        Message::system(system_prompt(overview)),
        Message::user(role_prompt(role, question)),
    ];
    let mut usage = Usage::default();
    // Each cell that ran, whitespace-normalized, for hook grounding.
    let mut cells_run: Vec<String> = Vec::new();
    let mut asked_to_ground = false;
    let mut lost_workers = 0u32;
    let mut previous_lost = false;

    let (stop, error) = loop {
        let request = trim_context(&messages, config.context_budget_chars, KEEP_LATEST_TURNS);
        trace.usage = Some(usage);
        let completion = match chat.chat(&request).await {
            Ok(c) => c,
            Err(e) => {
                usage.add(&e.usage());
                trace.usage = Some(usage);
                break (Stop::ModelError, Some(e.to_string()));
            }
        };
        usage.add(&completion.usage);
        trace.usage = Some(usage);
        if completion.truncated {
            // Longer than max_tokens could produce (a broken or hostile
            // server; the client cut it): nothing of it runs, nothing of it
            // is stored, and only its clipped start goes back to the model.
            trace.replies_cut += 1;
            trace.format_errors += 1;
            messages.push(Message::assistant(clip(
                &completion.content,
                CUT_REPLY_KEPT_CHARS,
            )));
            if trace.format_errors > config.max_format_errors {
                break (
                    Stop::FormatErrors,
                    Some(format!(
                        "{} replies without exactly one python code block ({} longer than max_tokens allows)",
                        trace.format_errors, trace.replies_cut
                    )),
                );
            }
            messages.push(Message::user(CUT_OFF.text().to_string()));
            continue;
        }
        let reply = parse_reply(&completion.content);
        messages.push(Message::assistant(completion.content.clone()));

        let code = match the_code_block(&reply) {
            Ok(code) => code.to_string(),
            Err(correction) => {
                trace.format_errors += 1;
                if trace.format_errors > config.max_format_errors {
                    break (
                        Stop::FormatErrors,
                        Some(format!(
                            "{} replies without exactly one python code block",
                            trace.format_errors
                        )),
                    );
                }
                messages.push(Message::user(correction));
                continue;
            }
        };

        let turn_index = trace.turns.len() as u32;
        let restarts_before = task.restarts();
        let cell = match task.run_cell(&code).await {
            Ok(cell) => cell,
            Err(e) => {
                let e = runner::Infra::classify(label, e)
                    .map_err(|error| AgentInfra { error, usage })?;
                break (
                    Stop::WorkerLost,
                    Some(format!("turn {turn_index}: the sandbox failed: {e}")),
                );
            }
        };
        let fresh_worker = task.restarts() > restarts_before;
        cells_run.push(normalize_ws(&code));

        let mut execution = runner::execution(&cell);
        let mut ungrounded = Vec::new();
        for hook in &mut execution.hooks {
            let ok = grounded(&hook.code_line, &cells_run);
            hook.grounded = Some(ok);
            if !ok {
                ungrounded.push(hook.code_line.clone());
            }
        }
        if let Some(previous) = trace.turns.last() {
            if !previous.execution.success && execution.success {
                trace.corrections.push(Correction {
                    turn_index,
                    corrects_turn: previous.turn_index,
                    error_type: error_type(&previous.execution),
                    diff: line_diff(&previous.code, &code),
                });
            }
        }
        let accepted = execution.success && execution.submitted_answer.is_some();
        let submit_failed = !execution.success && execution.submitted_answer.is_some();
        let lost = cell.status.lost_worker();
        if lost {
            lost_workers += 1;
        }

        // The observation, and what the model must be told beyond it.
        let mut text = observation(&cell, config.observation_chars);
        let mut note = |t: String| {
            text.push_str("\n\n");
            text.push_str(&t);
        };
        if fresh_worker && !previous_lost {
            // The worker died between cells: the model has not been told.
            note(FRESH_WORKER.text().to_string());
        }
        if submit_failed {
            note(SUBMIT_FAILED.text().to_string());
        }
        if !ungrounded.is_empty() && !asked_to_ground && !accepted {
            asked_to_ground = true;
            let lines: Vec<String> = ungrounded
                .iter()
                .map(|l| format!("- {}", clip(l, 300)))
                .collect();
            note(UNGROUNDED_HOOKS.render(&[("code_lines", &lines.join("\n"))]));
        }
        previous_lost = lost;

        trace.turns.push(Turn {
            turn_index,
            reasoning: reply.reasoning.clone(),
            code,
            execution,
            fresh_worker,
        });

        if accepted {
            let answer = trace.turns[turn_index as usize]
                .execution
                .submitted_answer
                .clone()
                .unwrap_or(Value::Null);
            trace.final_answer_hash = Some(answer_hash(&answer));
            trace.final_answer = Some(answer);
            break (Stop::Submitted, None);
        }
        if lost_workers >= config.max_lost_workers {
            break (
                Stop::WorkerLost,
                Some(format!(
                    "the worker was lost {lost_workers} time(s) (last: {})",
                    cell.status.as_str()
                )),
            );
        }
        let done = trace.turns.len() as u32;
        if done >= config.max_turns {
            break (
                Stop::MaxTurns,
                Some(format!("no answer submitted within {done} turns")),
            );
        }
        let turns_left = config.max_turns - done;
        if turns_left <= WARN_TURNS_LEFT {
            note(TURNS_LEFT.render(&[("turns_left", &turns_left.to_string())]));
        }
        messages.push(Message::user(text));
    };
    Ok(finish(trace, started, stop, error))
}

fn finish(mut trace: Trace, started: Instant, stop: Stop, error: Option<String>) -> Trace {
    trace.success = stop == Stop::Submitted && error.is_none();
    trace.stop = Some(stop.as_str().to_string());
    trace.error = error;
    trace.elapsed = started.elapsed().as_secs_f64();
    trace
}

// ------------------------------------------------------------------ context

fn chars(messages: &[Message]) -> usize {
    messages.iter().map(|m| m.content.chars().count()).sum()
}

/// An assistant reply reduced to its code blocks (or to a marker when it
/// had none).
fn code_only(reply: &str) -> String {
    let blocks = parse_reply(reply).code_blocks;
    if blocks.is_empty() {
        return ELIDED_REPLY.text().to_string();
    }
    blocks
        .iter()
        .map(|b| format!("```python\n{b}\n```"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The conversation cut down to about `budget_chars` characters. Kept
/// intact: everything up to the first user message (system prompt and
/// question) and the latest `keep_latest_turns` assistant/user pairs.
/// Older user messages (observations) are replaced by a marker first,
/// oldest first, until the budget is met; then older assistant replies
/// keep only their code. No message is ever dropped, so roles keep
/// alternating and the i-th assistant message is still the i-th reply —
/// what the model saw stays aligned with the recorded turns. When even
/// that is over budget the result is returned anyway (the server decides).
pub fn trim_context(
    messages: &[Message],
    budget_chars: usize,
    keep_latest_turns: usize,
) -> Vec<Message> {
    let mut out = messages.to_vec();
    let mut total = chars(&out);
    if total <= budget_chars {
        return out;
    }
    let Some(question) = out.iter().position(|m| m.role == "user") else {
        return out;
    };
    let head = question + 1;
    let assistants: Vec<usize> = (head..out.len())
        .filter(|&i| out[i].role == "assistant")
        .collect();
    let tail = if keep_latest_turns == 0 {
        out.len()
    } else if assistants.len() < keep_latest_turns {
        head
    } else {
        assistants[assistants.len() - keep_latest_turns]
    };

    // First pass: old observations; second pass: old replies.
    for role in ["user", "assistant"] {
        for i in head..tail {
            if total <= budget_chars {
                return out;
            }
            if out[i].role != role {
                continue;
            }
            let shorter = match role {
                "user" => ELIDED_OUTPUT.text().to_string(),
                _ => code_only(&out[i].content),
            };
            let (old, new) = (out[i].content.chars().count(), shorter.chars().count());
            if new < old {
                out[i].content = shorter;
                total = total - old + new;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const KNOWN: [&str; 8] = [
        "overview",
        "question",
        "hint",
        "output_type",
        "output_schema",
        "n_blocks",
        "code_lines",
        "turns_left",
    ];

    #[test]
    fn every_prompt_uses_exactly_the_known_placeholders_it_needs() {
        let mut names = BTreeSet::new();
        for p in PROMPTS {
            assert!(names.insert(p.name), "{} listed twice", p.name);
            assert!(!p.text.trim().is_empty(), "{} is empty", p.name);
            let used: BTreeSet<&str> = crate::prompt::placeholders(p.text)
                .iter()
                .map(|x| x.2)
                .collect();
            for name in &used {
                assert!(
                    KNOWN.contains(name),
                    "{}: unknown placeholder {{{{{name}}}}}",
                    p.name
                );
            }
            if let Err(e) = p.check() {
                panic!("{e}");
            }
        }
        // Every file in prompts/ is listed (so it is versioned).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/teacher/prompts");
        for entry in std::fs::read_dir(dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            assert!(names.contains(file.as_str()), "{file} is not in PROMPTS");
        }
    }

    #[test]
    fn rendering_is_one_pass() {
        let q = question(Some("use {{overview}}"));
        let text = role_prompt(Role::Gold, &q);
        assert!(text.contains("use {{overview}}"), "{text}");
        assert!(text.contains("What is {{hint}}?"), "{text}");
    }

    fn question(hint: Option<&str>) -> Question {
        serde_json::from_value(serde_json::json!({
            "id": "q1", "question_text": "What is {{hint}}?", "hint": hint,
            "difficulty": "EASY", "n_steps": 1, "source": "template",
            "dataset": "d", "dataset_hash": "h",
            "output_type": "dict", "output_schema": {"mean": "number"}
        }))
        .unwrap()
    }

    #[test]
    fn only_gold_sees_the_hint() {
        let q = question(Some("group by island first"));
        assert!(role_prompt(Role::Gold, &q).contains("group by island first"));
        for role in [Role::Consistency, Role::Student] {
            let text = role_prompt(role, &q);
            assert!(!text.contains("group by island"), "{role:?}: {text}");
            assert!(text.contains(r#"{"mean":"number"}"#), "{text}");
        }
    }

    #[test]
    fn the_version_is_short_and_stable() {
        let v = prompt_version();
        assert_eq!(v.len(), 12);
        assert_eq!(v, prompt_version());
    }

    #[test]
    fn format_problems_are_named() {
        assert!(the_code_block(&parse_reply("just text"))
            .unwrap_err()
            .contains("no ```python code block"));
        let two = parse_reply("```python\na=1\n```\n```python\nb=2\n```");
        assert!(the_code_block(&two)
            .unwrap_err()
            .contains("had 2 ```python"));
        let cut = parse_reply("```python\na=1\n```\n```python\nb=(");
        assert!(the_code_block(&cut).unwrap_err().contains("cut off"));
        assert_eq!(
            the_code_block(&parse_reply("ok\n```py\nx=1\n```")),
            Ok("x=1")
        );
    }

    #[test]
    fn grounding_ignores_whitespace_but_not_content() {
        let cells = vec![normalize_ws(
            "m = df['x'].mean()\nhook(m, 'm = df[\"x\"].mean()')",
        )];
        assert!(grounded("  m =  df['x'].mean() ", &cells));
        assert!(!grounded("m = df['y'].mean()", &cells));
        assert!(!grounded("   ", &cells));
        // The hook's own string argument does not ground a made-up line.
        let cells = vec![normalize_ws("hook(m, \"m = made_up()\")")];
        assert!(!grounded("m = made_up()", &cells));
        let cells = vec![normalize_ws("hook(m, '''m = made_up()''')")];
        assert!(!grounded("m = made_up()", &cells));
    }

    fn conversation(turns: usize, output: usize) -> Vec<Message> {
        let mut m = vec![
            Message::system("S".repeat(100)),
            Message::user("Q".repeat(100)),
        ];
        for i in 0..turns {
            m.push(Message::assistant(format!(
                "reasoning {i} {}\n```python\nx{i} = {i}\n```",
                "r".repeat(200)
            )));
            m.push(Message::user(format!("output {i} {}", "o".repeat(output))));
        }
        m
    }

    #[test]
    fn small_conversations_are_untouched() {
        let m = conversation(5, 100);
        assert_eq!(trim_context(&m, 1_000_000, 3), m);
    }

    #[test]
    fn trimming_elides_old_output_first_and_keeps_alignment() {
        let m = conversation(8, 1_000);
        // Room for the latest pairs and short old ones, not old outputs.
        let budget = chars(&m) - 3 * 1_000;
        let t = trim_context(&m, budget, 3);
        assert_eq!(t.len(), m.len());
        assert!(chars(&t) <= budget);
        for (a, b) in t.iter().zip(&m) {
            assert_eq!(a.role, b.role);
        }
        assert_eq!(t[..2], m[..2]);
        // The latest three pairs are intact.
        assert_eq!(t[m.len() - 6..], m[m.len() - 6..]);
        // Oldest outputs went first; all replies are whole.
        assert_eq!(t[3].content, ELIDED_OUTPUT.text());
        assert!(t
            .iter()
            .filter(|x| x.role == "assistant")
            .all(|x| x.content.contains("reasoning")));
        let last_old_output = m.len() - 7;
        assert_eq!(
            t[last_old_output], m[last_old_output],
            "only as much as needed"
        );
    }

    #[test]
    fn then_old_replies_keep_only_their_code() {
        let m = conversation(8, 1_000);
        let t = trim_context(&m, 1, 3);
        assert_eq!(t.len(), m.len());
        for i in (2..m.len() - 6).step_by(2) {
            assert_eq!(
                t[i].content,
                format!("```python\nx{} = {}\n```", (i - 2) / 2, (i - 2) / 2)
            );
            assert_eq!(t[i + 1].content, ELIDED_OUTPUT.text());
        }
        assert_eq!(t[m.len() - 6..], m[m.len() - 6..]);
        assert_eq!(t[..2], m[..2]);
        // A reply without code becomes a marker, not nothing.
        assert_eq!(code_only("no code"), ELIDED_REPLY.text());
    }

    #[test]
    fn too_few_turns_to_trim_returns_everything() {
        let m = conversation(2, 10_000);
        assert_eq!(trim_context(&m, 10, 3), m);
    }
}
