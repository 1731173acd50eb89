//! `csv-agent run` (the main job: datasets → questions → verified episodes)
//! and `csv-agent questions` (questions files only). Flags are resolved into
//! [`RunSettings`] here, once, before any work starts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tracing_subscriber::prelude::*;

use crate::datasets::Registry;
use crate::logs::DatasetLogs;
use crate::pipeline::{self, DatasetSummary, Reporter, RunSettings, RunSummary, Shard};
use crate::store::LOGS_DIR;
use crate::teacher::{ProgramTeacher, Teacher};

/// Memory a live sandbox is budgeted for when `--jobs` is not given: the
/// zygote (~200–400 MiB with the data stack and the frame) plus its
/// concurrent workers.
const SANDBOX_BUDGET: u64 = 1536 << 20;
const MAX_DEFAULT_JOBS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TeacherKind {
    /// Reference and alternative programs of template questions (no network).
    Program,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The dataset registry (default: $CSV_AGENT_DATASETS, else ./datasets).
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// Only these datasets (comma-separated slugs).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// At most this many questions per dataset (taken across templates).
    #[arg(long)]
    max_questions: Option<usize>,
    /// Live sandboxes at once (default: from available memory, at most 8).
    #[arg(long)]
    jobs: Option<usize>,
    /// Questions in flight per dataset (default: 2 per CPU).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Do part I of N (0-based), split by dataset then question id.
    #[arg(long, value_parser = Shard::parse)]
    shard: Option<Shard>,
    /// Start over: remove this output directory's episodes, questions,
    /// manifest, summary and logs first.
    #[arg(long)]
    fresh: bool,
    /// Run even if an isolation layer is unavailable on this host.
    #[arg(long)]
    allow_degraded: bool,
    /// Your own template files (*.toml, format in docs/templates.md), used
    /// ahead of the built-in catalog.
    #[arg(long)]
    templates: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Who answers the questions.
    #[arg(long, value_enum, default_value = "program")]
    teacher: TeacherKind,
}

#[derive(Debug, Args)]
pub struct QuestionsArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Where questions come from.
    #[arg(long, default_value = "template", value_parser = ["template"])]
    source: String,
}

fn default_jobs(datasets: usize) -> usize {
    use procfs::Current;
    let available = procfs::Meminfo::current()
        .ok()
        .and_then(|m| m.mem_available)
        .unwrap_or(4 << 30);
    let by_memory = (available / SANDBOX_BUDGET).max(1) as usize;
    by_memory.min(MAX_DEFAULT_JOBS).min(datasets.max(1))
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

async fn settings(select: SelectArgs, questions_only: bool) -> Result<RunSettings> {
    let root = super::datasets::registry_dir(select.datasets);
    let registry = Registry::open(&root)?;
    let mut entries = registry.entries()?;
    if !select.only.is_empty() {
        for slug in &select.only {
            if !entries.iter().any(|(s, _)| s == slug) {
                bail!(
                    "no dataset `{slug}` in {} (see `csv-agent datasets list`)",
                    root.display()
                );
            }
        }
        entries.retain(|(s, _)| select.only.contains(s));
    }
    if entries.is_empty() {
        bail!(
            "no datasets in {} (a dataset is a folder with data.csv; add one with `csv-agent datasets add FILE.csv`)",
            root.display()
        );
    }
    let mut datasets = Vec::new();
    let mut unusable = Vec::new();
    for (slug, entry) in entries {
        match entry {
            Ok(d) => datasets.push(d),
            Err(e) => unusable.push((slug, e.to_string())),
        }
    }
    if select.jobs == Some(0) || select.concurrency == Some(0) {
        bail!("--jobs and --concurrency must be at least 1");
    }
    if select.max_questions == Some(0) {
        bail!("--max-questions must be at least 1");
    }
    if let Some(dir) = &select.templates {
        // A broken template is a usage error, found before any jail starts.
        crate::questions::catalog_with(Some(dir))?;
    }
    let image = super::image::ensure_image().await?;
    Ok(RunSettings {
        jobs: select.jobs.unwrap_or_else(|| default_jobs(datasets.len())),
        question_concurrency: select.concurrency.unwrap_or(2 * cpus()),
        datasets,
        unusable,
        out: select.out,
        max_questions: select.max_questions,
        shard: select.shard,
        fresh: select.fresh,
        image,
        allow_degraded: select.allow_degraded,
        questions_only,
        templates: select.templates,
        init_program: None,
    })
}

pub async fn run(args: RunArgs) -> Result<i32> {
    let settings = settings(args.select, false).await?;
    let teacher: Arc<dyn Teacher> = match args.teacher {
        TeacherKind::Program => Arc::new(ProgramTeacher),
    };
    execute(settings, teacher).await
}

pub async fn questions(args: QuestionsArgs) -> Result<i32> {
    let settings = settings(args.select, true).await?;
    execute(settings, Arc::new(ProgramTeacher)).await
}

async fn execute(settings: RunSettings, teacher: Arc<dyn Teacher>) -> Result<i32> {
    let out = settings.out.clone();
    let questions_only = settings.questions_only;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let logs = DatasetLogs::new(out.join(LOGS_DIR))
        .with_context(|| format!("creating {}", out.join(LOGS_DIR).display()))?;
    let _guard = tracing_subscriber::registry().with(logs).set_default();
    eprintln!(
        "csv-agent: {} dataset(s), {} at a time, output in {}",
        settings.datasets.len() + settings.unusable.len(),
        settings.jobs,
        out.display()
    );
    let reporter: Arc<dyn Reporter> = Arc::from(super::progress::reporter());
    let summary = pipeline::run(settings, teacher, reporter).await?;
    print_summary(&summary, questions_only);
    println!(
        "\n{} episodes in {} ({} verified); summary in {}",
        summary.episodes,
        out.join(crate::store::EPISODES_FILE).display(),
        summary.verified,
        out.join(crate::store::SUMMARY_FILE).display()
    );
    Ok(summary.exit_code())
}

pub fn summary_line(d: &DatasetSummary) -> String {
    match (&d.status[..], &d.reason) {
        ("failed", Some(reason)) => format!("FAILED: {reason}"),
        _ => format!(
            "{} questions, {} verified, {} disagreements, {} failures, {:.1} s",
            d.questions,
            d.verified,
            d.disagreements,
            d.failures.len(),
            d.elapsed
        ),
    }
}

pub fn print_summary(summary: &RunSummary, questions_only: bool) {
    println!(
        "{:<20} {:>9} {:>9} {:>13} {:>9} {:>9}",
        "dataset", "questions", "verified", "disagreements", "failures", "time (s)"
    );
    for d in &summary.datasets {
        if d.status == "failed" {
            println!(
                "{:<20} FAILED: {}",
                d.dataset,
                d.reason.as_deref().unwrap_or("unknown")
            );
            continue;
        }
        let (verified, disagreements) = if questions_only {
            ("-".to_string(), "-".to_string())
        } else {
            (d.verified.to_string(), d.disagreements.to_string())
        };
        println!(
            "{:<20} {:>9} {:>9} {:>13} {:>9} {:>9.1}",
            d.dataset,
            d.questions,
            verified,
            disagreements,
            d.failures.len(),
            d.elapsed
        );
        for f in &d.failures {
            println!(
                "    failed {} ({}, {}): {}",
                f.question_id,
                f.template.as_deref().unwrap_or("-"),
                f.stage,
                f.reason
            );
        }
    }
}
