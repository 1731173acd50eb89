//! The evaluation's report: accuracy overall, by difficulty and by
//! template, execution figures, hook recall, what was skipped and why, as
//! `eval_report.json`, `eval_report.md` and `eval_results.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EvalError, Evaluation, Skipped, REPORT_JSON, REPORT_MD, RESULTS_FILE};
use crate::schema::{Difficulty, Usage};
use crate::store;
use crate::teacher::agent::prompt_version;

/// Correct answers among scored episodes of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub n: usize,
    pub correct: usize,
    /// correct / n; none when n is 0.
    pub accuracy: Option<f64>,
}

impl Score {
    fn add(&mut self, correct: bool) {
        self.n += 1;
        self.correct += usize::from(correct);
        self.accuracy = ratio(self.correct, self.n);
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub cells: usize,
    pub cells_ok: usize,
    /// cells_ok / cells; none when no cell ran.
    pub success_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub count: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkippedSummary {
    pub total: usize,
    /// Most frequent first.
    pub reasons: Vec<ReasonCount>,
}

/// `eval_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub model: String,
    pub split: String,
    /// RFC 3339, UTC, when the report was made.
    pub timestamp: String,
    pub prompt_version: String,
    pub max_turns: u32,
    pub sampling: Value,
    /// Episodes in the split file.
    pub episodes: usize,
    /// Scored episodes, and how many of them were answered correctly.
    pub n: usize,
    pub correct: usize,
    pub accuracy: Option<f64>,
    /// Every difficulty, in order (n 0 when the split has none).
    pub by_difficulty: BTreeMap<Difficulty, Score>,
    pub by_template: BTreeMap<String, Score>,
    pub execution: Execution,
    pub submitted: usize,
    pub submit_rate: Option<f64>,
    /// Model replies per scored episode.
    pub mean_turns: Option<f64>,
    /// Over the scored episodes whose gold trace has hooks.
    pub mean_hook_recall: Option<f64>,
    pub with_hooks: usize,
    /// Why the students' traces ended, by count.
    pub stops: BTreeMap<String, usize>,
    pub skipped: SkippedSummary,
    pub beyond_limit: usize,
    pub not_run: usize,
    /// Set when the evaluation stopped early: the figures cover only what
    /// was done.
    pub stopped: Option<String>,
    pub usage: Usage,
    pub elapsed: f64,
}

/// How many episodes were skipped for each reason, most frequent first.
pub fn reason_counts(skipped: &[Skipped]) -> Vec<ReasonCount> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in skipped {
        *counts.entry(&s.reason).or_default() += 1;
    }
    let mut reasons: Vec<ReasonCount> = counts
        .into_iter()
        .map(|(reason, count)| ReasonCount {
            reason: reason.to_string(),
            count,
        })
        .collect();
    reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    reasons
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// What the report says about how the evaluation was set up.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    /// The model's name.
    pub model: String,
    /// The split file.
    pub split: PathBuf,
    /// Sampling settings as the client was configured.
    pub sampling: Value,
    pub max_turns: u32,
}

/// The figures of an evaluation.
pub fn report(eval: &Evaluation, meta: &ReportMeta) -> EvalReport {
    let results = &eval.results;
    let mut overall = Score::default();
    let mut by_difficulty: BTreeMap<Difficulty, Score> = Difficulty::ALL
        .iter()
        .map(|d| (*d, Score::default()))
        .collect();
    let mut by_template: BTreeMap<String, Score> = BTreeMap::new();
    let mut stops: BTreeMap<String, usize> = BTreeMap::new();
    let mut execution = Execution::default();
    let (mut submitted, mut turns) = (0, 0);
    let recalls: Vec<f64> = results.iter().filter_map(|r| r.hook_recall).collect();
    for r in results {
        overall.add(r.correct);
        by_difficulty
            .entry(r.difficulty)
            .or_default()
            .add(r.correct);
        by_template
            .entry(r.template.clone())
            .or_default()
            .add(r.correct);
        *stops
            .entry(r.stop.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        execution.cells += r.cells;
        execution.cells_ok += r.cells_ok;
        submitted += usize::from(r.submitted);
        turns += r.turns;
    }
    execution.success_rate = ratio(execution.cells_ok, execution.cells);
    let n = results.len();
    EvalReport {
        model: meta.model.clone(),
        split: meta.split.display().to_string(),
        timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        prompt_version: prompt_version(),
        max_turns: meta.max_turns,
        sampling: meta.sampling.clone(),
        episodes: eval.episodes,
        n,
        correct: overall.correct,
        accuracy: overall.accuracy,
        by_difficulty,
        by_template,
        execution,
        submitted,
        submit_rate: ratio(submitted, n),
        mean_turns: (n > 0).then(|| turns as f64 / n as f64),
        mean_hook_recall: (!recalls.is_empty())
            .then(|| recalls.iter().sum::<f64>() / recalls.len() as f64),
        with_hooks: recalls.len(),
        stops,
        skipped: SkippedSummary {
            total: eval.skipped.len(),
            reasons: reason_counts(&eval.skipped),
        },
        beyond_limit: eval.beyond_limit,
        not_run: eval.not_run,
        stopped: eval.stopped.clone(),
        usage: eval.usage,
        elapsed: eval.elapsed,
    }
}

fn percent(x: Option<f64>) -> String {
    x.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "-".into())
}

/// Text for a Markdown table cell (`<dataset>` would be read as an HTML tag).
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', " ")
}

/// `eval_report.md`: the report as Markdown tables.
pub fn markdown(r: &EvalReport) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation of `{}`\n", r.model);
    let _ = writeln!(
        md,
        "Split `{}`, {} episodes read, {} scored; {}; max {} turns; prompt version {}.\n",
        r.split, r.episodes, r.n, r.timestamp, r.max_turns, r.prompt_version
    );
    if let Some(stopped) = &r.stopped {
        let _ = writeln!(
            md,
            "> **Stopped early** ({}); the figures cover the {} episodes scored before, {} were not run.\n",
            cell(stopped),
            r.n,
            r.not_run
        );
    }
    let _ = writeln!(md, "## Accuracy\n");
    let _ = writeln!(md, "| | n | correct | accuracy |\n|---|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| **all** | {} | {} | {} |",
        r.n,
        r.correct,
        percent(r.accuracy)
    );
    for (d, s) in &r.by_difficulty {
        if s.n > 0 {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                d.as_str(),
                s.n,
                s.correct,
                percent(s.accuracy)
            );
        }
    }
    let _ = writeln!(md, "\n## By template\n");
    let _ = writeln!(
        md,
        "| template | n | correct | accuracy |\n|---|---:|---:|---:|"
    );
    for (t, s) in &r.by_template {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            cell(t),
            s.n,
            s.correct,
            percent(s.accuracy)
        );
    }
    let _ = writeln!(md, "\n## Behaviour\n");
    let _ = writeln!(md, "| measure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| cells that ran without an error | {} of {} ({}) |",
        r.execution.cells_ok,
        r.execution.cells,
        percent(r.execution.success_rate)
    );
    let _ = writeln!(
        md,
        "| answers submitted | {} of {} ({}) |",
        r.submitted,
        r.n,
        percent(r.submit_rate)
    );
    let _ = writeln!(
        md,
        "| mean turns | {} |",
        r.mean_turns
            .map(|t| format!("{t:.2}"))
            .unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        md,
        "| mean hook recall | {} (over {} episodes with gold hooks) |",
        r.mean_hook_recall
            .map(|t| format!("{t:.3}"))
            .unwrap_or_else(|| "-".into()),
        r.with_hooks
    );
    let stops: Vec<String> = r.stops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(md, "| how traces ended | {} |", cell(&stops.join(", ")));
    let u = &r.usage;
    let _ = writeln!(
        md,
        "| model use | {} requests ({} retried), {} prompt + {} completion tokens, {:.1} s waiting for replies |",
        u.requests, u.retries, u.prompt_tokens, u.completion_tokens, u.latency_s
    );
    let _ = writeln!(md, "| time | {:.1} s |", r.elapsed);
    if r.skipped.total > 0 || r.beyond_limit > 0 || r.not_run > 0 {
        let _ = writeln!(md, "\n## Not scored\n");
        let _ = writeln!(md, "| reason | episodes |\n|---|---:|");
        for rc in &r.skipped.reasons {
            let _ = writeln!(md, "| {} | {} |", cell(&rc.reason), rc.count);
        }
        if r.beyond_limit > 0 {
            let _ = writeln!(md, "| beyond --limit | {} |", r.beyond_limit);
        }
        if r.not_run > 0 {
            let _ = writeln!(md, "| not run: the evaluation stopped | {} |", r.not_run);
        }
    }
    md
}

/// Write `eval_results.jsonl`, `eval_report.md` and `eval_report.json`
/// into `out` (each whole or not at all; the JSON report last).
pub fn write_reports(out: &Path, eval: &Evaluation, report: &EvalReport) -> Result<(), EvalError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        store::write_atomic(&path, bytes).map_err(|error| EvalError::Write { path, error })
    };
    let mut lines = Vec::new();
    for r in &eval.results {
        lines.extend_from_slice(&serde_json::to_vec(r)?);
        lines.push(b'\n');
    }
    write(RESULTS_FILE, &lines)?;
    write(REPORT_MD, markdown(report).as_bytes())?;
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    write(REPORT_JSON, &json)
}
