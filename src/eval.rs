//! `csv-agent eval`: a model answers held-out episodes' questions as a
//! student (no hint, the evaluation prompt) and is scored against each
//! episode's verified answer. Owns the plan (which episodes can be scored,
//! on which CSV), the scoring of one student trace (tolerant answer match,
//! cells that ran, hook recall), the aggregate report and its files
//! (`eval_report.json`, `eval_report.md`, `eval_results.jsonl`; in
//! `eval/report.rs`).
//!
//! It never judges an episode again (only verified ones carry a trusted
//! answer; the rest are skipped and counted) and never scores a trace that
//! ended because the model could not be reached: that stops the evaluation,
//! and what was done is reported as such. How a model is reached and how
//! flags resolve is the CLI's business.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answers::{answer_hash, answers_match};
use crate::llm::Chat;
use crate::pipeline::dataset_hash;
use crate::profile::profile;
use crate::sandbox::{Image, SandboxOptions};
use crate::schema::{Difficulty, Episode, Hook, StopReason, Trace, Usage};
use crate::serve::source::{TaskSource, Workers};
use crate::store::StoreError;
use crate::teacher::agent::{run_agent, AgentConfig, Role};

mod report;

pub use report::{
    markdown, reason_counts, report, write_reports, EvalReport, Execution, ReasonCount, ReportMeta,
    Score, SkippedSummary,
};

pub const REPORT_JSON: &str = "eval_report.json";
pub const REPORT_MD: &str = "eval_report.md";
pub const RESULTS_FILE: &str = "eval_results.jsonl";

/// Why an episode is not scored, when it is not about its CSV.
const UNVERIFIED: &str = "unverified: no trusted answer";
const NO_GOLD_ANSWER: &str = "verified but its gold trace has no answer";

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The store's message names the file and carries the cause already.
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: StoreError },
    #[error("serializing the report: {0}")]
    Serialize(#[from] serde_json::Error),
}

// ------------------------------------------------------------------ plan

/// Episodes that share one CSV (same file, same content hash): one sandbox.
#[derive(Debug, Clone)]
pub struct CsvGroup {
    pub csv: PathBuf,
    pub dataset: String,
    pub dataset_hash: String,
    /// With their position in the split file (results keep that order).
    pub episodes: Vec<(usize, Episode)>,
}

/// An episode left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub episode_id: String,
    pub dataset: String,
    pub reason: String,
}

/// What an evaluation will do, decided before any model or jail is used.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub groups: Vec<CsvGroup>,
    pub skipped: Vec<Skipped>,
    /// Episodes in the split file.
    pub episodes: usize,
    /// Scorable episodes after the first `--limit` ones (neither scored nor skipped).
    pub beyond_limit: usize,
}

impl Plan {
    /// Episodes that will be given to the student.
    pub fn scorable(&self) -> usize {
        self.groups.iter().map(|g| g.episodes.len()).sum()
    }
}

/// Which episodes to score, grouped by CSV. Unverified episodes (and
/// verified ones without a gold answer) are skipped; of the others, the
/// first `limit` in file order are kept. The CSV of an episode is its
/// `csv_source`, or `<datasets>/<dataset>/data.csv` when a registry is
/// given; a CSV that is missing or whose content hash is not the
/// episode's `dataset_hash` skips its episodes (the verified answer is
/// about other data).
pub fn plan(episodes: Vec<Episode>, limit: Option<usize>, datasets: Option<&Path>) -> Plan {
    let mut out = Plan {
        episodes: episodes.len(),
        ..Plan::default()
    };
    let mut kept = 0usize;
    let mut index: HashMap<(PathBuf, String), usize> = HashMap::new();
    for (i, e) in episodes.into_iter().enumerate() {
        let reason = if !e.verified {
            Some(UNVERIFIED)
        } else if e.gold_trace.final_answer.is_none() {
            Some(NO_GOLD_ANSWER)
        } else {
            None
        };
        if let Some(reason) = reason {
            out.skipped.push(skipped(&e, reason.to_string()));
            continue;
        }
        if limit.is_some_and(|n| kept >= n) {
            out.beyond_limit += 1;
            continue;
        }
        kept += 1;
        let csv = match datasets {
            Some(root) => crate::datasets::data_file(&root.join(&e.dataset)),
            None => PathBuf::from(&e.csv_source),
        };
        let key = (csv, e.question.dataset_hash.clone());
        let g = *index.entry(key.clone()).or_insert_with(|| {
            out.groups.push(CsvGroup {
                csv: key.0,
                dataset: e.dataset.clone(),
                dataset_hash: key.1,
                episodes: Vec::new(),
            });
            out.groups.len() - 1
        });
        out.groups[g].episodes.push((i, e));
    }
    // Each file is read once, whatever the number of groups naming it.
    let mut hashes: HashMap<PathBuf, Result<String, String>> = HashMap::new();
    let mut usable = Vec::new();
    for group in std::mem::take(&mut out.groups) {
        let found = hashes
            .entry(group.csv.clone())
            .or_insert_with(|| match dataset_hash(&group.csv) {
                Ok(h) => Ok(h),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                    "the CSV {} does not exist (--datasets DIR uses DIR/<dataset>/data.csv instead)",
                    group.csv.display()
                )),
                Err(e) => Err(format!("cannot read the CSV {}: {e}", group.csv.display())),
            })
            .clone();
        let problem = match found {
            Err(reason) => Some(reason),
            Ok(h) if h != group.dataset_hash => Some(format!(
                "the CSV {} has changed since the episodes were made (content hash {h}, episodes made on {})",
                group.csv.display(),
                group.dataset_hash
            )),
            Ok(_) => None,
        };
        match problem {
            Some(reason) => out.skipped.extend(
                group
                    .episodes
                    .iter()
                    .map(|(_, e)| skipped(e, reason.clone())),
            ),
            None => usable.push(group),
        }
    }
    out.groups = usable;
    out
}

fn skipped(e: &Episode, reason: String) -> Skipped {
    Skipped {
        episode_id: e.episode_id.clone(),
        dataset: e.dataset.clone(),
        reason,
    }
}

// ------------------------------------------------------------------ scoring

/// One scored episode: a line of `eval_results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeResult {
    pub episode_id: String,
    pub question_id: String,
    pub dataset: String,
    pub difficulty: Difficulty,
    /// The question's template, or its source (`llm`) when it has none.
    pub template: String,
    /// The student submitted an answer that matches the verified one.
    pub correct: bool,
    /// The student submitted an answer (from a cell that ran).
    pub submitted: bool,
    pub answer: Option<Value>,
    /// The episode's verified answer (its gold trace's final answer).
    pub expected: Value,
    /// Replies of the model: cells run plus replies rejected for not
    /// holding exactly one code block.
    pub turns: usize,
    /// Cells run, and of those the ones that ran without an error.
    pub cells: usize,
    pub cells_ok: usize,
    /// Share of the gold trace's hook values the student also hooked;
    /// none when the gold trace has no hooks.
    pub hook_recall: Option<f64>,
    /// Why the student's trace ended (`submitted`, `max_turns`, …).
    pub stop: Option<String>,
    pub error: Option<String>,
    pub usage: Option<Usage>,
    /// Seconds, wall clock, the student's whole trace.
    pub elapsed: f64,
}

/// The template an episode is counted under.
pub fn template_of(e: &Episode) -> String {
    e.question
        .template_name
        .clone()
        .unwrap_or_else(|| e.question.source.as_str().to_string())
}

/// Score a student's trace against an episode.
pub fn score(episode: &Episode, trace: &Trace) -> EpisodeResult {
    let expected = episode
        .gold_trace
        .final_answer
        .clone()
        .unwrap_or(Value::Null);
    let answer = trace.final_answer.clone();
    let correct = trace.success && answer.as_ref().is_some_and(|a| answers_match(a, &expected));
    let cells = trace.turns.len();
    EpisodeResult {
        episode_id: episode.episode_id.clone(),
        question_id: episode.question.id.clone(),
        dataset: episode.dataset.clone(),
        difficulty: episode.question.difficulty,
        template: template_of(episode),
        correct,
        submitted: answer.is_some(),
        answer,
        expected,
        turns: cells + trace.format_errors as usize,
        cells,
        cells_ok: trace.turns.iter().filter(|t| t.execution.success).count(),
        hook_recall: hook_recall(&episode.gold_trace, trace),
        stop: trace.stop.clone(),
        error: trace.error.clone(),
        usage: trace.usage,
        elapsed: trace.elapsed,
    }
}

fn hook_key(h: &Hook) -> String {
    if h.value_hash.is_empty() {
        answer_hash(&h.value)
    } else {
        h.value_hash.clone()
    }
}

/// Of the gold trace's distinct hook values (hooks whose code line was
/// found not to have run are left out), the share that the student also
/// hooked somewhere: the same value hash, or values that match as answers
/// do. None when the gold trace has no hooks. Every student hook counts,
/// grounded or not: the value came out of the worker either way.
pub fn hook_recall(gold: &Trace, student: &Trace) -> Option<f64> {
    let mut seen = HashSet::new();
    let wanted: Vec<&Hook> = gold
        .turns
        .iter()
        .flat_map(|t| &t.execution.hooks)
        .filter(|h| h.grounded != Some(false))
        .filter(|h| seen.insert(hook_key(h)))
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let produced: Vec<(&Hook, String)> = student
        .turns
        .iter()
        .flat_map(|t| &t.execution.hooks)
        .map(|h| (h, hook_key(h)))
        .collect();
    let found = wanted
        .iter()
        .filter(|g| {
            let key = hook_key(g);
            produced
                .iter()
                .any(|(s, k)| *k == key || answers_match(&s.value, &g.value))
        })
        .count();
    Some(found as f64 / wanted.len() as f64)
}

// ------------------------------------------------------------------ running

/// Everything an evaluation needs, resolved by the caller.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub agent: AgentConfig,
    /// Students in flight at once on one CSV.
    pub concurrency: usize,
    pub image: Image,
    pub allow_degraded: bool,
    /// The binary re-executed as the jail init (default: this executable).
    pub init_program: Option<PathBuf>,
    /// Per-worker memory and cell timeout chosen; the rest is derived from
    /// each CSV's size.
    pub limits: crate::sandbox::LimitChoice,
    /// Run the students' cells in sessions of this `csv-agent serve`.
    pub serve: Option<crate::serve::Endpoint>,
}

/// How an evaluation reports progress (the CLI prints lines; tests say nothing).
pub trait EvalReporter: Send + Sync {
    fn csv_started(&self, dataset: &str, csv: &Path, episodes: usize);
    fn csv_skipped(&self, dataset: &str, episodes: usize, reason: &str);
    fn episode_finished(&self, result: &EpisodeResult);
}

/// A reporter that says nothing.
pub struct Silent;

impl EvalReporter for Silent {
    fn csv_started(&self, _: &str, _: &Path, _: usize) {}
    fn csv_skipped(&self, _: &str, _: usize, _: &str) {}
    fn episode_finished(&self, _: &EpisodeResult) {}
}

/// What an evaluation did.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// In split-file order.
    pub results: Vec<EpisodeResult>,
    pub skipped: Vec<Skipped>,
    pub episodes: usize,
    pub beyond_limit: usize,
    /// Planned episodes left unscored because the evaluation stopped.
    pub not_run: usize,
    /// Why the evaluation stopped early (the model failed).
    pub stopped: Option<String>,
    /// Every request of every student, discarded traces included.
    pub usage: Usage,
    pub elapsed: f64,
}

impl Evaluation {
    /// 1 when the evaluation stopped early, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.stopped.is_some())
    }
}

/// The outcome of one student.
enum Outcome {
    Scored(usize, Box<EpisodeResult>),
    /// The trace ended because the model could not be reached.
    ModelFailed(Option<Usage>),
    /// The sandbox gave no worker: nothing the student did.
    SandboxFailed(usize, String),
    NotRun,
}

/// Give each planned episode's question to the student, one sandbox per
/// CSV (CSVs one after another, `concurrency` students at once on each),
/// and score the traces. The first model failure stops it: students in
/// flight finish, no new one starts, later CSVs are not started.
pub async fn evaluate(
    chat: &dyn Chat,
    plan: Plan,
    settings: &EvalSettings,
    reporter: &dyn EvalReporter,
) -> Evaluation {
    let started = Instant::now();
    let mut eval = Evaluation {
        skipped: plan.skipped,
        episodes: plan.episodes,
        beyond_limit: plan.beyond_limit,
        ..Evaluation::default()
    };
    let stop: OnceLock<String> = OnceLock::new();
    let mut scored: Vec<(usize, EpisodeResult)> = Vec::new();
    for group in plan.groups {
        if stop.get().is_some() {
            eval.not_run += group.episodes.len();
            continue;
        }
        reporter.csv_started(&group.dataset, &group.csv, group.episodes.len());
        let outcomes = match run_group(chat, &group, settings, reporter, &stop).await {
            Ok(o) => o,
            Err(reason) => {
                reporter.csv_skipped(&group.dataset, group.episodes.len(), &reason);
                eval.skipped.extend(
                    group
                        .episodes
                        .iter()
                        .map(|(_, e)| skipped(e, reason.clone())),
                );
                continue;
            }
        };
        let by_index: HashMap<usize, &Episode> =
            group.episodes.iter().map(|(i, e)| (*i, e)).collect();
        for outcome in outcomes {
            match outcome {
                Outcome::Scored(i, r) => {
                    if let Some(u) = &r.usage {
                        eval.usage.add(u);
                    }
                    scored.push((i, *r));
                }
                Outcome::ModelFailed(usage) => {
                    if let Some(u) = &usage {
                        eval.usage.add(u);
                    }
                    eval.not_run += 1;
                }
                Outcome::SandboxFailed(i, reason) => {
                    eval.skipped.push(skipped(by_index[&i], reason))
                }
                Outcome::NotRun => eval.not_run += 1,
            }
        }
    }
    scored.sort_by_key(|(i, _)| *i);
    eval.results = scored.into_iter().map(|(_, r)| r).collect();
    eval.stopped = stop.get().map(|e| format!("the model failed: {e}"));
    eval.elapsed = started.elapsed().as_secs_f64();
    eval
}

/// One CSV: its sandbox, its profile, its students. Err when the CSV
/// could not be used at all (its episodes are skipped with the reason).
async fn run_group(
    chat: &dyn Chat,
    group: &CsvGroup,
    settings: &EvalSettings,
    reporter: &dyn EvalReporter,
    stop: &OnceLock<String>,
) -> Result<Vec<Outcome>, String> {
    let mut opts = SandboxOptions::new(&group.csv, settings.image.clone())
        .map_err(|e| format!("no sandbox for {}: {e}", group.csv.display()))?;
    opts.allow_degraded = settings.allow_degraded;
    opts.spare_workers = settings.concurrency.clamp(1, 8);
    opts.limits = crate::sandbox::Limits::for_dataset(
        crate::datasets::csv_bytes(&group.csv),
        settings.limits,
    );
    if let Some(init) = &settings.init_program {
        opts.init_program = init.clone();
    }
    let sandbox = Workers::start(opts, settings.serve.as_ref())
        .await
        .map_err(|e| format!("the sandbox for {} did not start: {e}", group.csv.display()))?;
    let mut task = sandbox.task();
    let overview = profile(&mut task).await.map(|p| p.overview);
    drop(task);
    let outcomes = match overview {
        Ok(overview) => Ok(stream::iter(&group.episodes)
            .map(|(i, e)| student(chat, &sandbox, &overview, settings, *i, e, stop, reporter))
            .buffer_unordered(settings.concurrency.max(1))
            .collect()
            .await),
        Err(e) => Err(format!("profiling {} failed: {e}", group.csv.display())),
    };
    sandbox.shutdown().await;
    outcomes
}

#[allow(clippy::too_many_arguments)]
async fn student(
    chat: &dyn Chat,
    sandbox: &dyn TaskSource,
    overview: &str,
    settings: &EvalSettings,
    index: usize,
    episode: &Episode,
    stop: &OnceLock<String>,
    reporter: &dyn EvalReporter,
) -> Outcome {
    if stop.get().is_some() {
        return Outcome::NotRun;
    }
    // The student never sees the hint (its prompt has no place for it
    // either; cleared so that no later prompt change can leak it).
    let mut question = episode.question.clone();
    question.hint = None;
    let trace = run_agent(
        chat,
        sandbox,
        Role::Student,
        &question,
        overview,
        &settings.agent,
        "student",
    )
    .await;
    match trace.stop_reason() {
        Some(StopReason::ModelError) => {
            let error = trace
                .error
                .clone()
                .unwrap_or_else(|| "unknown error".into());
            let _ = stop.set(error);
            return Outcome::ModelFailed(trace.usage);
        }
        Some(StopReason::WorkerLost) if trace.turns.is_empty() => {
            let error = trace.error.clone().unwrap_or_else(|| "no worker".into());
            return Outcome::SandboxFailed(index, error);
        }
        _ => {}
    }
    let result = score(episode, &trace);
    reporter.episode_finished(&result);
    Outcome::Scored(index, Box::new(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Execution as Exec, Turn};
    use serde_json::json;

    fn hook(value: Value, grounded: Option<bool>) -> Hook {
        Hook {
            variable_name: None,
            code_line: "x = 1".into(),
            value_hash: answer_hash(&value),
            value,
            depends_on: Vec::new(),
            description: None,
            grounded,
        }
    }

    fn turn(ok: bool, hooks: Vec<Hook>, submitted: Option<Value>) -> Turn {
        Turn {
            turn_index: 0,
            reasoning: String::new(),
            code: "x = 1".into(),
            execution: Exec {
                success: ok,
                stdout: String::new(),
                stderr: String::new(),
                hooks,
                submitted_answer: submitted,
                status: if ok { "ok" } else { "error" }.into(),
                result: None,
                error: None,
                elapsed_ms: 1.0,
            },
            fresh_worker: false,
        }
    }

    fn trace(turns: Vec<Turn>, answer: Option<Value>) -> Trace {
        Trace {
            success: answer.is_some(),
            final_answer_hash: answer.as_ref().map(answer_hash),
            final_answer: answer,
            turns,
            label: String::new(),
            error: None,
            elapsed: 0.0,
            worker_wait: 0.0,
            stop: Some("submitted".into()),
            format_errors: 0,
            replies_cut: 0,
            corrections: Vec::new(),
            usage: None,
        }
    }

    fn episode(verified: bool, answer: Value, gold_hooks: Vec<Hook>) -> Episode {
        let gold = trace(
            vec![turn(true, gold_hooks, Some(answer.clone()))],
            Some(answer),
        );
        serde_json::from_value(json!({
            "episode_id": "e1", "timestamp": "t", "csv_source": "/nowhere/data.csv",
            "source": "template", "dataset": "d", "teacher": "program",
            "question": {"id": "q1", "question_text": "?", "difficulty": "EASY", "n_steps": 1,
                         "template_name": null, "source": "llm", "dataset": "d", "dataset_hash": "h"},
            "gold_trace": gold, "consistency_traces": [], "verified": verified,
            "triangulation": {"n_consistency_runs": 0, "n_consistency_succeeded": 0,
                "majority_answer_hash": null, "majority_count": 0, "gold_matches_majority": true,
                "n_consistency_agreeing": 0, "gold_matches_ground_truth": null, "cluster_sizes": []},
            "timing": {"gold_elapsed": 0.0, "consistency_elapsed": [], "total_elapsed": 0.0, "avg_elapsed": 0.0}
        }))
        .expect("episode")
    }

    #[test]
    fn a_tolerantly_matching_submission_is_correct_and_cells_are_counted() {
        let e = episode(true, json!({"mean": 1.2345}), vec![]);
        let t = trace(
            vec![
                turn(false, vec![], None),
                turn(true, vec![], Some(json!({"mean": 1.2346}))),
            ],
            Some(json!({"mean": 1.2346})),
        );
        let r = score(&e, &t);
        assert!(r.correct && r.submitted);
        assert_eq!((r.turns, r.cells, r.cells_ok), (2, 2, 1));
        assert_eq!(r.template, "llm");
        assert_eq!(r.hook_recall, None);
        let wrong = trace(vec![turn(true, vec![], Some(json!(3)))], Some(json!(3)));
        assert!(!score(&e, &wrong).correct);
    }

    #[test]
    fn hook_recall_counts_distinct_grounded_gold_values() {
        let gold = trace(
            vec![turn(
                true,
                vec![
                    hook(json!(10), None),
                    hook(json!(10), None),
                    hook(json!("a"), Some(true)),
                    hook(json!(99), Some(false)),
                ],
                None,
            )],
            None,
        );
        // 10.0001 matches 10 as an answer would; 99 was never a real gold hook.
        let student = trace(
            vec![turn(
                true,
                vec![hook(json!(10.0001), None), hook(json!(99), None)],
                None,
            )],
            None,
        );
        assert_eq!(hook_recall(&gold, &student), Some(0.5));
        assert_eq!(hook_recall(&trace(vec![], None), &student), None);
    }

    #[test]
    fn plans_skip_unverified_episodes_and_missing_csvs_and_apply_the_limit_after_verification() {
        let eps = vec![
            episode(false, json!(1), vec![]),
            episode(true, json!(1), vec![]),
            episode(true, json!(2), vec![]),
        ];
        let p = plan(eps, Some(1), None);
        assert_eq!(p.episodes, 3);
        assert_eq!(p.beyond_limit, 1);
        assert_eq!(p.scorable(), 0);
        let reasons: Vec<&str> = p.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons[0], UNVERIFIED);
        assert!(
            reasons[1].contains("/nowhere/data.csv does not exist"),
            "{reasons:?}"
        );
    }

    #[test]
    fn the_report_counts_every_difficulty_and_the_markdown_names_the_model() {
        let e = episode(true, json!(1), vec![hook(json!(1), None)]);
        let right = score(
            &e,
            &trace(
                vec![turn(true, vec![hook(json!(1), None)], Some(json!(1)))],
                Some(json!(1)),
            ),
        );
        let wrong = score(&e, &trace(vec![turn(false, vec![], None)], None));
        let eval = Evaluation {
            results: vec![right, wrong],
            episodes: 2,
            ..Evaluation::default()
        };
        let meta = ReportMeta {
            model: "m-1".into(),
            split: "test.jsonl".into(),
            sampling: Value::Null,
            max_turns: 3,
        };
        let r = report(&eval, &meta);
        assert_eq!((r.n, r.correct, r.accuracy), (2, 1, Some(0.5)));
        assert_eq!(r.by_difficulty.len(), 4);
        assert_eq!(r.by_difficulty[&Difficulty::Easy].n, 2);
        assert_eq!(r.execution.success_rate, Some(0.5));
        assert_eq!(r.mean_hook_recall, Some(0.5));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["by_difficulty"]["VERY_HARD"]["n"], 0);
        let md = markdown(&r);
        assert!(md.contains("# Evaluation of `m-1`"), "{md}");
        assert!(md.contains("| EASY | 2 | 1 | 50.0% |"), "{md}");
    }
}
