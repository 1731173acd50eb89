//! Reading what runs left behind: `csv-agent status` (what is done, what
//! failed and why) and `csv-agent inspect episodes|questions|trace ID` (one
//! episode rendered for a person). `merge` is in merge.rs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::pipeline::{dataset_summary, RunSummary};
use crate::schema::{Episode, Question, Trace};
use crate::store::{
    self, DatasetRow, DatasetStatus, Manifest, EPISODES_FILE, MANIFEST_FILE, QUESTIONS_DIR,
    SUMMARY_FILE,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run's output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The run's output directory.
    #[arg(long, default_value = "out", global = true)]
    out: PathBuf,
    #[command(subcommand)]
    what: InspectWhat,
}

#[derive(Debug, Subcommand)]
enum InspectWhat {
    /// One line per episode: id, dataset, template, difficulty, verified, answer.
    Episodes {
        #[arg(long)]
        dataset: Option<String>,
        /// Only episodes that are not verified.
        #[arg(long)]
        unverified: bool,
    },
    /// One line per question: id, dataset, template, difficulty, text;
    /// composed questions also show their category, operator chain and
    /// the question they build on.
    Questions {
        #[arg(long)]
        dataset: Option<String>,
        /// Only questions from this source: template, compose or llm.
        #[arg(long)]
        source: Option<String>,
    },
    /// One episode in full: question, every turn's code and output, verdict.
    Trace {
        /// An episode id or question id (a unique prefix is enough).
        id: String,
    },
}

fn open_manifest(out: &Path) -> Result<Manifest> {
    let path = out.join(MANIFEST_FILE);
    if !path.is_file() {
        bail!(
            "no run in {} (no {MANIFEST_FILE}); start one with `csv-agent run --out {}`",
            out.display(),
            out.display()
        );
    }
    Ok(Manifest::open(&path)?)
}

pub(super) fn summary_of(manifest: &Manifest, out: &Path) -> Result<RunSummary> {
    let datasets: Vec<_> = manifest
        .datasets()?
        .iter()
        .map(|row| dataset_summary(manifest, row))
        .collect();
    let episodes: Vec<Value> = store::read_jsonl(&out.join(EPISODES_FILE))?;
    let earlier: Option<RunSummary> = std::fs::read(out.join(SUMMARY_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // Incidents are facts of the last run (summary.json).
    let mut datasets = datasets;
    for d in datasets.iter_mut() {
        if let Some(i) = earlier
            .as_ref()
            .and_then(|s| s.datasets.iter().find(|e| e.dataset == d.dataset))
        {
            d.incidents = i.incidents;
        }
    }
    Ok(RunSummary {
        teacher: earlier
            .as_ref()
            .map(|s| s.teacher.clone())
            .unwrap_or_default(),
        shard: earlier.as_ref().and_then(|s| s.shard),
        verified: datasets.iter().map(|d| d.verified).sum(),
        datasets,
        episodes: episodes.len() as u64,
        // Model use and an early stop are facts of the last run.
        llm_usage: earlier.as_ref().and_then(|s| s.llm_usage),
        stopped: earlier.as_ref().and_then(|s| s.stopped.clone()),
        elapsed: earlier.as_ref().map(|s| s.elapsed).unwrap_or(0.0),
        incidents: earlier.map(|s| s.incidents).unwrap_or_default(),
    })
}

pub fn status(args: StatusArgs) -> Result<i32> {
    let manifest = open_manifest(&args.out)?;
    let summary = summary_of(&manifest, &args.out)?;
    let rows = manifest.datasets()?;
    let unfinished: Vec<&DatasetRow> = rows
        .iter()
        .filter(|r| r.status == DatasetStatus::Running)
        .collect();
    super::run::print_summary(&summary, false);
    println!(
        "\n{} episodes ({} verified) in {}",
        summary.episodes,
        summary.verified,
        args.out.join(EPISODES_FILE).display()
    );
    if let Some(u) = &summary.llm_usage {
        println!("model, last run: {}", super::run::usage_line(u));
    }
    if let Some(stopped) = &summary.stopped {
        println!("the last run stopped early: {stopped}");
    }
    println!(
        "incidents, last run: {}",
        super::run::incidents_line(&summary.incidents)
    );
    for d in summary.datasets.iter().filter(|d| !d.incidents.is_empty()) {
        println!(
            "    {}: {}",
            d.dataset,
            super::run::incidents_line(&d.incidents)
        );
    }
    for r in unfinished {
        println!(
            "{}: not finished (rerun the same command to resume)",
            r.slug
        );
    }
    Ok(super::EXIT_OK)
}

fn episodes_of(out: &Path) -> Result<Vec<Episode>> {
    let path = out.join(EPISODES_FILE);
    if !path.is_file() {
        bail!("no episodes in {} yet", out.display());
    }
    Ok(store::read_jsonl(&path)?)
}

fn questions_of(out: &Path) -> Result<Vec<Question>> {
    let dir = out.join(QUESTIONS_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no questions in {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(store::read_jsonl::<Question>(&f)?);
    }
    Ok(out)
}

fn short(v: &Value, n: usize) -> String {
    let s = v.to_string();
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s
    }
}

pub fn inspect(args: InspectArgs) -> Result<i32> {
    use std::fmt::Write as _;
    let mut text = String::new();
    match args.what {
        InspectWhat::Episodes {
            dataset,
            unverified,
        } => {
            let episodes = episodes_of(&args.out)?;
            let mut table = super::table::new(&[
                "episode", "dataset", "template", "level", "verified", "answer",
            ]);
            for e in episodes.iter().filter(|e| {
                dataset.as_ref().is_none_or(|d| &e.dataset == d) && !(unverified && e.verified)
            }) {
                table.add_row(vec![
                    e.episode_id.clone(),
                    e.dataset.clone(),
                    e.question
                        .template_name
                        .as_deref()
                        .unwrap_or("-")
                        .to_string(),
                    e.question.difficulty.as_str().to_string(),
                    if e.verified { "yes" } else { "NO" }.to_string(),
                    e.gold_trace
                        .final_answer
                        .as_ref()
                        .map(|a| short(a, 60))
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            for line in super::table::lines(&table) {
                let _ = writeln!(text, "{line}");
            }
        }
        InspectWhat::Questions { dataset, source } => {
            if let Some(s) = &source {
                if !["template", "compose", "llm"].contains(&s.as_str()) {
                    bail!("--source must be template, compose or llm, not `{s}`");
                }
            }
            let questions = questions_of(&args.out)?;
            let mut table = super::table::new(&["id", "dataset", "template", "level", "question"]);
            for q in questions
                .iter()
                .filter(|q| dataset.as_ref().is_none_or(|d| &q.dataset == d))
                .filter(|q| source.as_ref().is_none_or(|s| q.source.as_str() == s))
            {
                // A composed question's preamble is the same everywhere:
                // show its steps, and its chain on a row of its own.
                let body = match &q.composition {
                    Some(_) => q
                        .question_text
                        .split_once("Step by step: ")
                        .map_or(q.question_text.as_str(), |(_, rest)| rest),
                    None => q.question_text.as_str(),
                };
                let shown: String = body.chars().take(90).collect();
                let template = match &q.composition {
                    Some(_) => "compose",
                    None => q.template_name.as_deref().unwrap_or("-"),
                };
                table.add_row(vec![
                    q.id.clone(),
                    q.dataset.clone(),
                    template.to_string(),
                    q.difficulty.as_str().to_string(),
                    shown,
                ]);
                if let Some(c) = &q.composition {
                    table.add_row(vec![
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        format!(
                            "chain: {}  [{}{}; score {}]",
                            c.chain.join(" -> "),
                            q.category.as_deref().unwrap_or("-"),
                            c.builds_on
                                .as_deref()
                                .map(|b| format!("; builds on {b}"))
                                .unwrap_or_default(),
                            c.score
                        ),
                    ]);
                }
            }
            for line in super::table::lines(&table) {
                let _ = writeln!(text, "{line}");
            }
        }
        InspectWhat::Trace { id } => {
            let episodes = episodes_of(&args.out)?;
            let found: Vec<&Episode> = episodes
                .iter()
                .filter(|e| e.episode_id.starts_with(&id) || e.question.id.starts_with(&id))
                .collect();
            match found.as_slice() {
                [] => bail!(
                    "no episode or question id starting with `{id}` in {}",
                    args.out.display()
                ),
                [e] => text.push_str(&render(e)),
                many => bail!(
                    "`{id}` matches {} episodes ({}…); give more of the id",
                    many.len(),
                    many.iter()
                        .take(3)
                        .map(|e| e.episode_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
    print_all(&text);
    Ok(super::EXIT_OK)
}

/// Print to stdout; a reader that went away (`| head`) is not an error.
fn print_all(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// An episode for a person to read.
pub fn render(e: &Episode) -> String {
    let mut s = String::new();
    let q = &e.question;
    s += &format!(
        "episode {}  ({} teacher, {})\n",
        e.episode_id, e.teacher, e.timestamp
    );
    s += &format!("dataset {}  csv {}\n", e.dataset, e.csv_source);
    s += &format!(
        "question {}  template {}  {}  {} steps\n",
        q.id,
        q.template_name.as_deref().unwrap_or("-"),
        q.difficulty.as_str(),
        q.n_steps
    );
    s += &format!("\n  {}\n", q.question_text);
    if let Some(h) = &q.hint {
        s += &format!("  hint: {h}\n");
    }
    if let Some(gt) = &q.ground_truth {
        s += &format!("  ground truth: {}\n", short(gt, 400));
    }
    s += &render_trace("gold trace", &e.gold_trace);
    for t in &e.consistency_traces {
        s += &render_trace("consistency trace", t);
    }
    let tri = &e.triangulation;
    s += &format!(
        "\nverdict: {}\n  consistency runs {} (succeeded {}, agreeing {}), majority {} of them, gold matches majority: {}, ground truth: {}\n",
        if e.verified { "VERIFIED" } else { "NOT VERIFIED" },
        tri.n_consistency_runs,
        tri.n_consistency_succeeded,
        tri.n_consistency_agreeing,
        tri.majority_count,
        tri.gold_matches_majority,
        match tri.gold_matches_ground_truth {
            Some(true) => "matches",
            Some(false) => "DIFFERS",
            None => "none",
        }
    );
    if let Some(r) = &e.reason {
        s += &format!("  reason: {r}\n");
    }
    s += &format!(
        "  time: gold {:.2} s, total {:.2} s\n",
        e.timing.gold_elapsed, e.timing.total_elapsed
    );
    s
}

fn render_trace(title: &str, t: &Trace) -> String {
    let mut s = format!(
        "\n── {title} `{}`: {} ({:.2} s)\n",
        t.label,
        if t.success { "ok" } else { "FAILED" },
        t.elapsed
    );
    for turn in &t.turns {
        s += &format!("\n  turn {}: {}\n", turn.turn_index, turn.reasoning);
        for line in turn.code.trim_end().lines() {
            s += &format!("    │ {line}\n");
        }
        let x = &turn.execution;
        for line in x.stdout.trim_end().lines().filter(|l| !l.is_empty()) {
            s += &format!("    > {line}\n");
        }
        for line in x
            .stderr
            .trim_end()
            .lines()
            .filter(|l| !l.is_empty())
            .take(20)
        {
            s += &format!("    ! {line}\n");
        }
        if let Some(err) = &x.error {
            let kind = err.get("type").and_then(Value::as_str).unwrap_or("error");
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("");
            s += &format!("    ✗ {kind}: {msg}\n");
        }
        for h in &x.hooks {
            s += &format!(
                "    hook {} = {}\n",
                h.variable_name.as_deref().unwrap_or("?"),
                short(&h.value, 120)
            );
        }
    }
    if let Some(e) = &t.error {
        s += &format!("  error: {e}\n");
    }
    s += &format!(
        "  answer: {}\n",
        t.final_answer
            .as_ref()
            .map(|a| short(a, 400))
            .unwrap_or_else(|| "-".into())
    );
    s
}
