//! The output contract: questions and episodes as they are written to JSON
//! Lines. Field names follow DESIGN.md ("Episodes") and stay compatible with
//! the tool this replaces, so training code written for it reads ours
//! unchanged; fields we add (`dataset`, `teacher`, `reason`, per-execution
//! `status`, …) are extra keys that old readers ignore.
//!
//! A leaf module: plain serde types and the conversion of a worker's raw
//! hook records, nothing that runs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
    VeryHard,
}

impl Difficulty {
    pub const ALL: [Difficulty; 4] = [
        Difficulty::Easy,
        Difficulty::Medium,
        Difficulty::Hard,
        Difficulty::VeryHard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Difficulty::Easy => "EASY",
            Difficulty::Medium => "MEDIUM",
            Difficulty::Hard => "HARD",
            Difficulty::VeryHard => "VERY_HARD",
        }
    }
}

/// Where a question came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuestionSource {
    Template,
    Procedural,
    Llm,
    /// A chain of typed operators (src/questions/compose/).
    Compose,
}

impl QuestionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            QuestionSource::Template => "template",
            QuestionSource::Procedural => "procedural",
            QuestionSource::Llm => "llm",
            QuestionSource::Compose => "compose",
        }
    }
}

/// One step of a program: a short reasoning sentence and the code of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramStep {
    pub reasoning: String,
    pub code: String,
}

/// A program that answers a question another way than the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlternativeProgram {
    pub name: String,
    pub reasoning: String,
    pub code: String,
}

/// The programs of a template question, with slots and parameters filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Programs {
    pub reference: Vec<ProgramStep>,
    pub alternatives: Vec<AlternativeProgram>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Stable: a hash of the template, its code, the parameters and the
    /// dataset's content.
    pub id: String,
    pub question_text: String,
    #[serde(default)]
    pub hint: Option<String>,
    pub difficulty: Difficulty,
    pub n_steps: u32,
    #[serde(default)]
    pub template_name: Option<String>,
    /// Slot bindings and parameter values, by name.
    #[serde(default)]
    pub template_params: Option<Value>,
    #[serde(default)]
    pub output_type: Option<String>,
    #[serde(default)]
    pub output_schema: Option<Value>,
    #[serde(default)]
    pub ground_truth: Option<Value>,
    #[serde(default)]
    pub ground_truth_hash: Option<String>,
    /// Every distinct hash of an answer that agrees with the ground truth
    /// (reference and alternatives may round differently).
    #[serde(default)]
    pub ground_truth_hashes: Vec<String>,
    pub source: QuestionSource,
    /// The dataset's slug and content hash (sha256 of the CSV bytes, 16 hex).
    pub dataset: String,
    pub dataset_hash: String,
    /// Present in questions files; left out of episodes (the traces hold the code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programs: Option<Programs>,
    /// The task category (one of the 18 of docs/questions.md); set on
    /// composed questions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// How a composed question was built: its operator chain and the
    /// easier question it builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composition: Option<Composition>,
}

/// The operator chain of a composed question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    /// Operator names, in order.
    pub chain: Vec<String>,
    /// Each operator's category, in order.
    pub categories: Vec<String>,
    /// The id of the easier composed question whose answer this one
    /// builds on (multi-hop), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builds_on: Option<String>,
    /// The difficulty score the level was derived from.
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    pub variable_name: Option<String>,
    pub code_line: String,
    pub value: Value,
    pub value_hash: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Whether `code_line` appears in the code that ran. Checked for model
    /// code (the LLM teacher); absent where the code is ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grounded: Option<bool>,
}

impl Hook {
    /// A hook record as the worker's `hook()` made it. Code may pass any
    /// value as name or code line; non-strings are kept as their JSON text.
    pub fn from_worker(raw: &Value) -> Hook {
        let text = |key: &str| -> Option<String> {
            match raw.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            }
        };
        let depends_on = match raw.get("depends_on") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Hook {
            variable_name: text("variable_name"),
            code_line: text("code_line").unwrap_or_default(),
            value: raw.get("value").cloned().unwrap_or(Value::Null),
            value_hash: text("value_hash").unwrap_or_default(),
            depends_on,
            description: text("description"),
            grounded: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub hooks: Vec<Hook>,
    pub submitted_answer: Option<Value>,
    /// ok | error | timeout | oom | crashed
    pub status: String,
    /// `repr` of a trailing expression.
    #[serde(default)]
    pub result: Option<String>,
    /// `{type, message, traceback}` when the cell failed.
    #[serde(default)]
    pub error: Option<Value>,
    pub elapsed_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub turn_index: u32,
    pub reasoning: String,
    pub code: String,
    pub execution: Execution,
    /// The cell ran in a fresh worker because the previous one was lost
    /// (timeout, out of memory, crash): earlier variables are gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fresh_worker: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A failed turn followed by a successful one: the model corrected itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// The successful turn.
    pub turn_index: u32,
    /// The failed turn it corrects.
    pub corrects_turn: u32,
    /// The failed turn's error (`KeyError`, `timeout`, …).
    pub error_type: String,
    /// Unified line diff from the failed code to the corrected code.
    pub diff: String,
}

/// Tokens, requests and time spent talking to a model. Summed per trace,
/// per dataset and per run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Successful requests (one per reply).
    pub requests: u64,
    /// Attempts that were retried (429, 5xx, timeouts, connection errors).
    pub retries: u64,
    /// Seconds from sending a request to its reply, retries included,
    /// waiting for a free request slot excluded.
    pub latency_s: f64,
    /// Calls that got no reply: refused, or failed after every retry.
    /// Requests the server saw = requests + retries + failed.
    #[serde(default)]
    pub failed: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.requests += other.requests;
        self.retries += other.retries;
        self.latency_s += other.latency_s;
        self.failed += other.failed;
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.retries == 0 && self.failed == 0
    }
}

/// Why a model-driven trace ended (`Trace::stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Submitted,
    MaxTurns,
    WorkerLost,
    FormatErrors,
    ModelError,
}

impl StopReason {
    pub const ALL: [StopReason; 5] = [
        StopReason::Submitted,
        StopReason::MaxTurns,
        StopReason::WorkerLost,
        StopReason::FormatErrors,
        StopReason::ModelError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Submitted => "submitted",
            StopReason::MaxTurns => "max_turns",
            StopReason::WorkerLost => "worker_lost",
            StopReason::FormatErrors => "format_errors",
            StopReason::ModelError => "model_error",
        }
    }

    pub fn parse(text: &str) -> Option<StopReason> {
        StopReason::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub turns: Vec<Turn>,
    pub final_answer: Option<Value>,
    pub final_answer_hash: Option<String>,
    /// Every cell ran and an answer was submitted.
    pub success: bool,
    /// Which program or role produced the trace (`reference`, an
    /// alternative's name, `teacher`).
    #[serde(default)]
    pub label: String,
    /// Why the trace failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// Seconds, wall clock, the whole trace.
    pub elapsed: f64,
    /// Of which waiting for a fresh worker (a spare, or a fork of the zygote).
    #[serde(default)]
    pub worker_wait: f64,
    /// Why a model-driven trace ended: `submitted`, `max_turns`,
    /// `worker_lost`, `format_errors`, `model_error`.
    /// Kept as text in the episode (the contract), read typed through
    /// [`Trace::stop_reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// Replies without exactly one python code block (each got a corrective
    /// message and is not a turn).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub format_errors: u32,
    /// Replies longer than the request's `max_tokens` could produce, cut
    /// by the client (`llm::reply_bound`) and counted among the format
    /// errors: never run, stored or sent back whole.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replies_cut: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<Correction>,
    /// What the model cost for this trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Trace {
    /// Why the trace ended, when a model drove it (an unknown text, from
    /// a newer version, reads as none).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop.as_deref().and_then(StopReason::parse)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Triangulation {
    pub n_consistency_runs: u32,
    pub n_consistency_succeeded: u32,
    pub majority_answer_hash: Option<String>,
    pub majority_count: u32,
    pub gold_matches_majority: bool,
    /// Consistency traces whose answer matches the gold answer.
    pub n_consistency_agreeing: u32,
    /// None when the question has no ground truth.
    pub gold_matches_ground_truth: Option<bool>,
    /// Size of each answer cluster among the consistency traces, largest first.
    pub cluster_sizes: Vec<u32>,
    /// The trace whose answer every trace is judged against, as an index
    /// into [gold, consistency…] (0 is the gold trace): the gold trace when
    /// it matches the majority, else the first member of the majority
    /// cluster; none when no consistency trace answered. Absent in episodes
    /// written before it existed (readers recompute it with
    /// `teacher::triangulation::triangulate`, the one definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_trace: Option<u32>,
    /// The verdict on each trace, gold first, then the consistency traces
    /// in order. Training labels (agreeing, chosen / rejected, PRM, KTO)
    /// come from here and nowhere else. Empty in older episodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace_verdicts: Vec<TraceVerdict>,
}

/// Whether one trace's answer agrees with the episode's reference answer,
/// and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceVerdict {
    /// The trace succeeded and its answer matches the reference (tolerant
    /// match). A failed trace never agrees, whatever it submitted.
    pub agrees: bool,
    /// Why it does not agree (none when it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub gold_elapsed: f64,
    pub consistency_elapsed: Vec<f64>,
    pub total_elapsed: f64,
    pub avg_elapsed: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Stable: a hash of the question id and the teacher's settings, so a
    /// rerun or a merge recognises the same episode.
    pub episode_id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// The CSV the episode was generated from.
    pub csv_source: String,
    pub source: QuestionSource,
    pub dataset: String,
    pub teacher: String,
    pub question: Question,
    pub gold_trace: Trace,
    pub consistency_traces: Vec<Trace>,
    pub verified: bool,
    pub triangulation: Triangulation,
    pub timing: Timing,
    /// Why the episode is not verified (none when it is).
    #[serde(default)]
    pub reason: Option<String>,
    /// For unverified episodes, the kind of failure: `execution_failure`,
    /// `hint_necessary`, `ambiguous`, `too_hard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn difficulty_names_are_the_schema_names() {
        for d in Difficulty::ALL {
            assert_eq!(serde_json::to_value(d).unwrap(), json!(d.as_str()));
        }
    }

    #[test]
    fn stop_reasons_keep_their_texts() {
        for s in StopReason::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(StopReason::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn hooks_from_workers_tolerate_odd_values() {
        let raw = json!({"variable_name": null, "code_line": 3, "value": [1, 2],
                         "value_hash": "ab", "depends_on": ["x", 1], "description": null});
        let hook = Hook::from_worker(&raw);
        assert_eq!(hook.variable_name, None);
        assert_eq!(hook.code_line, "3");
        assert_eq!(hook.depends_on, vec!["x".to_string(), "1".to_string()]);
        assert_eq!(hook.value, json!([1, 2]));
    }
}
