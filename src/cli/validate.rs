//! `csv-agent validate --csv FILE --question TEXT [--hint H]`: one LLM
//! triangulation of one question, printed readably, for debugging a
//! question (or a model, or a prompt) without a run directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::run::{model_setup, teacher_config, usage_line, AgentArgs, LlmArgs};
use crate::pipeline::dataset_hash;
use crate::profile::profile;
use crate::questions::llm::llm_question_id;
use crate::sandbox::SandboxOptions;
use crate::schema::{Difficulty, Question, QuestionSource, Trace};
use crate::serve::source::{TaskSource, Workers};
use crate::teacher::{triangulate, LlmTeacher, Teacher};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DifficultyArg {
    Easy,
    Medium,
    Hard,
    VeryHard,
}

impl From<DifficultyArg> for Difficulty {
    fn from(d: DifficultyArg) -> Difficulty {
        match d {
            DifficultyArg::Easy => Difficulty::Easy,
            DifficultyArg::Medium => Difficulty::Medium,
            DifficultyArg::Hard => Difficulty::Hard,
            DifficultyArg::VeryHard => Difficulty::VeryHard,
        }
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The CSV the question is about.
    #[arg(long)]
    csv: PathBuf,
    /// The question, as a user would ask it.
    #[arg(long)]
    question: String,
    /// A hint for the gold trace (the consistency traces never see it).
    #[arg(long)]
    hint: Option<String>,
    /// Sets how many consistency traces run (unless --n-consistency).
    #[arg(long, value_enum, default_value = "medium")]
    difficulty: DifficultyArg,
    /// Print the traces and the verdict as JSON instead.
    #[arg(long)]
    json: bool,
    /// Run even if an isolation layer is unavailable on this host.
    #[arg(long)]
    allow_degraded: bool,
    /// Run the traces' cells in sessions of a running `csv-agent serve`
    /// (socket path or http://127.0.0.1:PORT); default $CSV_AGENT_SERVE.
    #[arg(long)]
    serve: Option<String>,
    #[command(flatten)]
    llm: LlmArgs,
    #[command(flatten)]
    agent: AgentArgs,
}

pub async fn run(args: ValidateArgs) -> Result<i32> {
    if args.question.trim().is_empty() {
        bail!("--question is empty");
    }
    let hash = dataset_hash(&args.csv)
        .with_context(|| format!("cannot read the CSV {}", args.csv.display()))?;
    let setup = model_setup(&args.llm, "validate").await?;
    let config = teacher_config(&args.agent, &setup.file)?;
    let teacher = LlmTeacher::new(setup.client.clone(), setup.sampling.clone(), config);
    let image = super::image::ensure_image().await?;
    let mut opts = SandboxOptions::new(&args.csv, image)?;
    opts.allow_degraded = args.allow_degraded;
    opts.spare_workers = 2;
    let sandbox =
        Workers::start(opts, super::serve::endpoint(args.serve.as_deref()).as_ref()).await?;
    let outcome = validate(&sandbox, &teacher, &args, &hash).await;
    sandbox.shutdown().await;
    let (question, run) = outcome?;
    let verdict = triangulate(&question, &run.gold, &run.consistency);
    let usage = run.usage();
    if args.json {
        let out = json!({
            "question": question,
            "gold_trace": run.gold,
            "consistency_traces": run.consistency,
            "verified": verdict.verified,
            "triangulation": verdict.triangulation,
            "reason": verdict.reason,
            "diagnosis": verdict.diagnosis.map(|d| d.as_str()),
            "usage": usage,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("question: {}", question.question_text);
        if let Some(h) = &question.hint {
            println!("hint:     {h}");
        }
        println!(
            "model:    {}\n",
            crate::llm::Chat::model(setup.client.as_ref())
        );
        print_trace(&run.gold);
        for t in &run.consistency {
            print_trace(t);
        }
        let tri = &verdict.triangulation;
        if verdict.verified {
            println!(
                "\nVERIFIED: {} of {} consistency traces agree with the gold answer",
                tri.n_consistency_agreeing, tri.n_consistency_runs
            );
        } else {
            println!(
                "\nNOT VERIFIED ({}): {}",
                verdict.diagnosis.map(|d| d.as_str()).unwrap_or("-"),
                verdict.reason.as_deref().unwrap_or("-")
            );
        }
        println!("answer clusters: {:?}", tri.cluster_sizes);
        // The labels the training exports read from the episode.
        let labels: Vec<String> = std::iter::once(&run.gold)
            .chain(&run.consistency)
            .zip(&tri.trace_verdicts)
            .map(|(t, v)| match &v.why_not {
                None => format!("{} agrees", t.label),
                Some(why) => format!("{} does not ({})", t.label, clip(why, 120)),
            })
            .collect();
        println!("trace labels: {}", labels.join("; "));
        println!("model use: {}", usage_line(&usage));
    }
    Ok(if verdict.verified { 0 } else { 1 })
}

async fn validate(
    sandbox: &Workers,
    teacher: &LlmTeacher,
    args: &ValidateArgs,
    hash: &str,
) -> Result<(Question, crate::teacher::TeacherRun)> {
    let ready = sandbox.zygote();
    if ready.rows == 0 || ready.columns < 2 {
        bail!(
            "{} has {} rows and {} columns as read by pandas (separator {:?}); a question needs data",
            args.csv.display(),
            ready.rows,
            ready.columns,
            ready.separator
        );
    }
    let mut task = sandbox.task();
    let data = profile(&mut task).await.context("profiling the CSV")?;
    drop(task);
    let slug = args
        .csv
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let question = Question {
        id: llm_question_id(&args.question, hash),
        question_text: args.question.trim().to_string(),
        hint: args.hint.clone().filter(|h| !h.trim().is_empty()),
        difficulty: args.difficulty.into(),
        n_steps: 0,
        template_name: None,
        template_params: None,
        output_type: None,
        output_schema: None,
        ground_truth: None,
        ground_truth_hash: None,
        ground_truth_hashes: Vec::new(),
        source: QuestionSource::Llm,
        dataset: slug,
        dataset_hash: hash.to_string(),
        programs: None,
        category: None,
        composition: None,
    };
    let teacher: &dyn Teacher = teacher;
    let run = teacher.answer(sandbox, &question, &data).await?;
    Ok((question, run))
}

fn print_trace(t: &Trace) {
    let outcome = match (&t.final_answer, &t.error) {
        (Some(a), _) if t.success => format!("answer {}", clip(&a.to_string(), 100)),
        (_, Some(e)) => format!("FAILED: {}", clip(e, 160)),
        _ => "no answer".to_string(),
    };
    println!(
        "{:<15} {:>2} turns  {:>6.1} s  {}",
        t.label,
        t.turns.len(),
        t.elapsed,
        outcome
    );
    for turn in &t.turns {
        let first = turn
            .code
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        println!(
            "    turn {:<2} {:<8} {}",
            turn.turn_index + 1,
            turn.execution.status,
            clip(first.trim(), 90)
        );
    }
    for c in &t.corrections {
        println!(
            "    turn {} corrects turn {} ({})",
            c.turn_index + 1,
            c.corrects_turn + 1,
            c.error_type
        );
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}
