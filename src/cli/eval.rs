//! `csv-agent eval --model M --split FILE`: a model answers held-out
//! episodes as a student; the scores go to `--out DIR`. Input is checked
//! (the split file, line by line, and which CSVs can be used) before the
//! model server is asked anything; the work is in `crate::eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::run::{model_setup, teacher_config, usage_line, AgentArgs, LlmArgs};
use super::{EXIT_FAILED, EXIT_OK};
use crate::eval::{self, EpisodeResult, EvalReport, EvalReporter, EvalSettings, ReportMeta};
use crate::formats::read_episodes;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The episodes to evaluate on (JSON Lines, e.g. a split's test.jsonl).
    /// Only verified episodes are scored.
    #[arg(long)]
    split: PathBuf,
    /// Directory for eval_report.json, eval_report.md and eval_results.jsonl.
    #[arg(long, default_value = "eval")]
    out: PathBuf,
    /// Score only the first N verified episodes of the file.
    #[arg(long)]
    limit: Option<usize>,
    /// Students in flight at once on one CSV.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// A dataset registry: use DIR/<dataset>/data.csv instead of each
    /// episode's csv_source (its content must still be the same).
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// Run even if an isolation layer is unavailable on this host.
    #[arg(long)]
    allow_degraded: bool,
    /// Run the students' cells in sessions of a running `csv-agent serve`
    /// (socket path or http://127.0.0.1:PORT); default $CSV_AGENT_SERVE.
    #[arg(long)]
    serve: Option<String>,
    #[command(flatten)]
    llm: LlmArgs,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    limits: super::run::LimitArgs,
}

/// One plain line per CSV and per scored episode, on stderr.
struct Lines {
    total: usize,
    done: AtomicUsize,
}

impl EvalReporter for Lines {
    fn csv_started(&self, dataset: &str, csv: &Path, episodes: usize) {
        eprintln!(
            "csv-agent: {dataset} ({}): {episodes} episodes",
            csv.display()
        );
    }

    fn csv_skipped(&self, dataset: &str, episodes: usize, reason: &str) {
        eprintln!("csv-agent: {dataset}: {episodes} episodes skipped: {reason}");
    }

    fn episode_finished(&self, r: &EpisodeResult) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let verdict = match (r.correct, r.submitted) {
            (true, _) => "correct",
            (false, true) => "wrong",
            (false, false) => "no answer",
        };
        eprintln!(
            "csv-agent: [{done}/{}] {verdict:<9} {} ({}, {} turns)",
            self.total,
            r.template,
            r.difficulty.as_str(),
            r.turns
        );
    }
}

pub async fn run(args: EvalArgs) -> Result<i32> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    if args.agent.n_consistency.is_some() {
        bail!("--n-consistency does not apply to eval (each question gets one student trace)");
    }
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {} is a file; give a directory", args.out.display());
    }
    let lines = read_episodes(&args.split).context("reading the split")?;
    if lines.is_empty() {
        bail!("{} has no episodes", args.split.display());
    }
    let episodes = lines.into_iter().map(|l| l.episode).collect();
    let plan = eval::plan(episodes, args.limit, args.datasets.as_deref());
    if plan.scorable() == 0 {
        let reasons: Vec<String> = eval::reason_counts(&plan.skipped)
            .iter()
            .map(|r| format!("{} × {}", r.count, r.reason))
            .collect();
        bail!(
            "nothing to evaluate in {}: {} episodes, none can be scored ({})",
            args.split.display(),
            plan.episodes,
            reasons.join("; ")
        );
    }

    let setup = model_setup(&args.llm, "eval").await?;
    let config = teacher_config(&args.agent, &setup.file)?;
    let limits = args.limits.resolve(&setup.file)?;
    let image = super::image::ensure_image().await?;
    let model = crate::llm::Chat::model(setup.client.as_ref()).to_string();
    let settings = EvalSettings {
        agent: config.agent,
        concurrency: args.concurrency,
        image,
        allow_degraded: args.allow_degraded,
        init_program: None,
        limits,
        serve: super::serve::endpoint(args.serve.as_deref()),
    };
    let meta = ReportMeta {
        model: model.clone(),
        split: args.split.clone(),
        sampling: setup.sampling.clone(),
        max_turns: config.agent.max_turns,
    };
    eprintln!(
        "csv-agent: evaluating {model} on {} of {} episodes ({} skipped), {} at a time",
        plan.scorable(),
        plan.episodes,
        plan.skipped.len(),
        args.concurrency
    );
    let csvs: Vec<&std::path::Path> = plan.groups.iter().map(|g| g.csv.as_path()).collect();
    eprintln!("csv-agent: {}", super::run::limits_line(limits, &csvs));
    let reporter = Lines {
        total: plan.scorable(),
        done: AtomicUsize::new(0),
    };
    let evaluation = eval::evaluate(setup.client.as_ref(), plan, &settings, &reporter).await;
    let report = eval::report(&evaluation, &meta);
    eval::write_reports(&args.out, &evaluation, &report)?;
    print_summary(&report);
    if let Some(stopped) = &report.stopped {
        println!("\nstopped early: {stopped}\nthe report covers what was done.");
    }
    println!(
        "\nreports in {}: {}, {}, {}",
        args.out.display(),
        eval::REPORT_MD,
        eval::REPORT_JSON,
        eval::RESULTS_FILE
    );
    Ok(if evaluation.exit_code() == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn percent(x: Option<f64>) -> String {
    x.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "-".into())
}

fn print_summary(r: &EvalReport) {
    println!("model: {}", r.model);
    println!("{:<10} {:>6} {:>8} {:>9}", "", "n", "correct", "accuracy");
    println!(
        "{:<10} {:>6} {:>8} {:>9}",
        "all",
        r.n,
        r.correct,
        percent(r.accuracy)
    );
    for (d, s) in &r.by_difficulty {
        if s.n > 0 {
            println!(
                "{:<10} {:>6} {:>8} {:>9}",
                d.as_str(),
                s.n,
                s.correct,
                percent(s.accuracy)
            );
        }
    }
    println!(
        "\ncells ok {} of {} ({}), submitted {} of {} ({}), mean turns {}, mean hook recall {}",
        r.execution.cells_ok,
        r.execution.cells,
        percent(r.execution.success_rate),
        r.submitted,
        r.n,
        percent(r.submit_rate),
        r.mean_turns
            .map(|t| format!("{t:.2}"))
            .unwrap_or_else(|| "-".into()),
        r.mean_hook_recall
            .map(|t| format!("{t:.3}"))
            .unwrap_or_else(|| "-".into()),
    );
    if r.skipped.total > 0 {
        println!("skipped {}:", r.skipped.total);
        for rc in &r.skipped.reasons {
            println!("    {} × {}", rc.count, rc.reason);
        }
    }
    if r.beyond_limit > 0 {
        println!("beyond --limit: {}", r.beyond_limit);
    }
    println!("model use: {}", usage_line(&r.usage));
}
