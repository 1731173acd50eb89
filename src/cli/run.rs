//! `csv-agent run` (the main job: datasets → questions → verified episodes)
//! and `csv-agent questions` (questions files only). Flags are resolved into
//! [`RunSettings`] here, once, before any work starts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tracing_subscriber::prelude::*;

use crate::capacity;
use crate::datasets::Registry;
use crate::logs::DatasetLogs;
use crate::pipeline::{self, DatasetSummary, Reporter, RunSettings, RunSummary, Shard};
use crate::store::{DatasetStatus, LOGS_DIR};
use crate::teacher::{LlmTeacher, ProgramTeacher, Teacher};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TeacherKind {
    /// Reference and alternative programs of template questions (no network).
    Program,
    /// A chat model (OpenAI-compatible endpoint) writing code turn by turn.
    Llm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// The template catalog (reference programs, ground truth).
    Template,
    /// Chains of typed operators (docs/questions.md), offline.
    Compose,
    /// Questions a model proposes after exploring each dataset.
    Llm,
    /// All three.
    All,
}

/// Which sources a `--questions` / `--source` choice turns on: (template,
/// compose, llm). None is the default of the program teacher: the two
/// offline sources.
fn source_set(kind: Option<SourceKind>) -> (bool, bool, bool) {
    match kind {
        None => (true, true, false),
        Some(SourceKind::Template) => (true, false, false),
        Some(SourceKind::Compose) => (false, true, false),
        Some(SourceKind::Llm) => (false, false, true),
        Some(SourceKind::All) => (true, true, true),
    }
}

/// The model endpoint and sampling (flags over the environment over
/// csv-agent.toml over defaults).
#[derive(Debug, Args, Clone, Default)]
pub struct LlmArgs {
    /// Model name as the server knows it (or [llm] model in csv-agent.toml).
    #[arg(long)]
    pub model: Option<String>,
    /// OpenAI-compatible endpoint up to /v1 (default: $OPENAI_BASE_URL, else
    /// [llm] base_url, else https://api.openai.com/v1). The key is read from
    /// $OPENAI_API_KEY.
    #[arg(long)]
    pub base_url: Option<String>,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Tokens per reply.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Per request attempt, like 120s or 2m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub request_timeout: Option<std::time::Duration>,
    /// Requests in flight at once over the whole run.
    #[arg(long)]
    pub max_requests: Option<usize>,
    /// The configuration file (default: $CSV_AGENT_CONFIG, else ./csv-agent.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// How the LLM teacher works.
#[derive(Debug, Args, Clone, Default)]
pub struct AgentArgs {
    /// Turns (executed cells) per trace before giving up.
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Consistency traces per question, for every difficulty (default
    /// EASY 2, MEDIUM 2, HARD 4, VERY_HARD 6, or [teacher] n_consistency).
    #[arg(long)]
    pub n_consistency: Option<u32>,
}

/// Settings of the model side, resolved once.
pub struct ModelSetup {
    pub client: Arc<crate::llm::Client>,
    pub sampling: serde_json::Value,
    pub file: crate::config::FileConfig,
}

/// Resolve the model settings and check the server answers (a bad key or
/// an unknown model is reported here, before any jail starts).
pub async fn model_setup(args: &LlmArgs, why: &str) -> Result<ModelSetup> {
    use crate::config;
    let path = config::config_path(args.config.as_deref());
    let file = config::load_file(path.as_deref())?;
    let Some(model) = args.model.clone().or_else(|| file.llm.model.clone()) else {
        bail!("{why} needs a model: pass --model NAME (or set [llm] model in csv-agent.toml)");
    };
    let base_url = args
        .base_url
        .clone()
        .or_else(config::openai_base_url)
        .or_else(|| file.llm.base_url.clone())
        .unwrap_or_else(|| "https://api.openai.com/v1".to_string());
    let mut settings = crate::llm::LlmSettings::new(base_url, model);
    settings.api_key = config::openai_api_key();
    settings.temperature = args.temperature.or(file.llm.temperature);
    settings.top_p = args.top_p.or(file.llm.top_p);
    settings.max_tokens = args.max_tokens.or(file.llm.max_tokens);
    if let Some(t) = args.request_timeout {
        settings.request_timeout = t;
    } else if let Some(t) = &file.llm.request_timeout {
        settings.request_timeout = humantime::parse_duration(t).with_context(|| {
            format!("[llm] request_timeout = {t:?} is not a duration (like 120s)")
        })?;
    }
    if let Some(n) = args.max_requests.or(file.llm.max_concurrent_requests) {
        settings.max_concurrent_requests = n;
    }
    if let Some(n) = file.llm.max_retries {
        settings.max_retries = n;
    }
    settings.validate()?;
    let sampling = serde_json::json!({
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_tokens,
    });
    let (url, model) = (settings.base_url.clone(), settings.model.clone());
    let client = crate::llm::Client::new(settings)?;
    client.check().await.with_context(|| {
        format!("the model server at {url} did not answer a test request for model `{model}`")
    })?;
    Ok(ModelSetup {
        client: Arc::new(client),
        sampling,
        file,
    })
}

/// The LLM teacher's loop settings: flags over csv-agent.toml over defaults.
pub fn teacher_config(
    args: &AgentArgs,
    file: &crate::config::FileConfig,
) -> Result<crate::teacher::LlmTeacherConfig> {
    let mut config = crate::teacher::LlmTeacherConfig::default();
    if let Some(n) = args.max_turns.or(file.teacher.max_turns) {
        if n == 0 {
            bail!("--max-turns must be at least 1");
        }
        config.agent.max_turns = n;
    }
    if let Some(budget) = file.teacher.context_budget_chars {
        config.agent.context_budget_chars = budget;
    }
    if let Some(n) = file.teacher.n_consistency {
        config.n_consistency = crate::teacher::NConsistency {
            easy: n.easy,
            medium: n.medium,
            hard: n.hard,
            very_hard: n.very_hard,
        };
    }
    if let Some(n) = args.n_consistency {
        config.n_consistency = crate::teacher::NConsistency::fixed(n);
    }
    let nc = config.n_consistency;
    if [nc.easy, nc.medium, nc.hard, nc.very_hard].contains(&0) {
        bail!("consistency traces must be at least 1 per question: without them nothing can be verified");
    }
    Ok(config)
}

/// LLM question generation settings: flags over csv-agent.toml over defaults.
fn generation_config(
    llm_questions: Option<usize>,
    file: &crate::config::FileConfig,
) -> Result<crate::questions::llm::GenerationConfig> {
    let mut config = crate::questions::llm::GenerationConfig::default();
    if let Some(n) = llm_questions.or(file.questions.llm_questions) {
        if n == 0 {
            bail!("--llm-questions must be at least 1");
        }
        config.n_questions = n;
    }
    if let Some(m) = file.questions.mix {
        let mix = [m.easy, m.medium, m.hard, m.very_hard];
        let sum: f64 = mix.iter().sum();
        if mix.iter().any(|x| !x.is_finite() || *x < 0.0) || sum <= 0.0 {
            bail!("[questions] mix must be four non-negative shares with a positive sum");
        }
        config.mix = mix.map(|x| x / sum);
    }
    Ok(config)
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
    /// At most this many questions per dataset and source (template
    /// questions taken across templates; composed questions default to 24).
    #[arg(long)]
    max_questions: Option<usize>,
    /// Seed of the composed questions (same seed and data, same questions).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Live sandboxes at once (default: from available memory, at most 8).
    #[arg(long)]
    jobs: Option<usize>,
    /// Questions in flight per dataset (default: 2 per CPU; with the LLM
    /// teacher, as many as memory allows at 64 MiB per trace, 2 to 32).
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
    /// Run every task in a session of a running `csv-agent serve` (its
    /// socket path, or http://127.0.0.1:PORT with CSV_AGENT_SERVE_TOKEN)
    /// instead of starting a zygote per dataset; default $CSV_AGENT_SERVE.
    #[arg(long)]
    serve: Option<String>,
    /// Your own template files (*.toml, format in docs/templates.md), used
    /// ahead of the built-in catalog.
    #[arg(long)]
    templates: Option<PathBuf>,
    /// New sandboxes started per dataset when one dies (zygote or monitor
    /// gone), with backoff; past it the dataset's remaining questions fail
    /// and are left to the next run. See docs/reliability.md.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Worker limits (flags over [sandbox] in csv-agent.toml over defaults
/// derived from each dataset's size).
#[derive(Debug, Args, Clone, Default)]
pub struct LimitArgs {
    /// Memory per worker, like 2G or 512M (default: 1 GiB, or 256 MiB + 6 ×
    /// the CSV's size when more; or [sandbox] memory).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Wall-clock limit per cell, like 120s or 5m (default: 60 s plus 30 s
    /// per 100 MB of CSV; or [sandbox] cell_timeout).
    #[arg(long, value_parser = parse_cell_timeout)]
    pub cell_timeout: Option<std::time::Duration>,
}

/// `--memory`: a size of at least 256 MiB.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = crate::sandbox::parse_size(text)?;
    if bytes < crate::sandbox::MIN_WORKER_MEMORY {
        return Err(format!(
            "`{text}` is below the smallest worker memory, 256M (the data stack alone needs about 100 MiB)"
        ));
    }
    Ok(bytes)
}

/// `--cell-timeout`: a duration from 1 s to 24 h.
pub fn parse_cell_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration (like 120s or 5m): {e}"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!("`{text}` must be between 1s and 24h"));
    }
    Ok(d)
}

impl LimitArgs {
    /// The flags over `[sandbox]` of the configuration file.
    pub fn resolve(&self, file: &crate::config::FileConfig) -> Result<crate::sandbox::LimitChoice> {
        let memory = match (self.memory, &file.sandbox.memory) {
            (Some(m), _) => Some(m),
            (None, Some(text)) => Some(
                parse_memory(text)
                    .map_err(|e| anyhow::anyhow!("[sandbox] memory in csv-agent.toml: {e}"))?,
            ),
            (None, None) => None,
        };
        let cell_timeout =
            match (self.cell_timeout, &file.sandbox.cell_timeout) {
                (Some(t), _) => Some(t),
                (None, Some(text)) => Some(parse_cell_timeout(text).map_err(|e| {
                    anyhow::anyhow!("[sandbox] cell_timeout in csv-agent.toml: {e}")
                })?),
                (None, None) => None,
            };
        Ok(crate::sandbox::LimitChoice {
            memory_bytes: memory,
            cell_timeout,
        })
    }
}

/// "memory 1024 MiB per worker, cell timeout 60 s" for each distinct pair
/// the datasets get, with how it was chosen.
pub fn limits_line(choice: crate::sandbox::LimitChoice, csvs: &[&std::path::Path]) -> String {
    let mut seen: Vec<(u64, u64)> = csvs
        .iter()
        .map(|csv| {
            let l = crate::sandbox::Limits::for_dataset(crate::datasets::csv_bytes(csv), choice);
            (l.memory_bytes >> 20, l.cell_timeout.as_secs())
        })
        .collect();
    seen.sort();
    seen.dedup();
    let how = match (choice.memory_bytes, choice.cell_timeout) {
        (Some(_), Some(_)) => "as given",
        (None, None) => "derived from each CSV's size",
        _ => "as given, the rest derived from each CSV's size",
    };
    let pairs: Vec<String> = seen
        .iter()
        .map(|(m, t)| format!("memory {m} MiB per worker, cell timeout {t} s"))
        .collect();
    format!("limits: {} ({how})", pairs.join("; "))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Who answers the questions.
    #[arg(long, value_enum, default_value = "program")]
    teacher: TeacherKind,
    /// Where questions come from (default: template and compose with the
    /// program teacher, all with the LLM teacher).
    #[arg(long, value_enum)]
    questions: Option<SourceKind>,
    /// Model questions per dataset (default 12, or [questions] llm_questions).
    #[arg(long)]
    llm_questions: Option<usize>,
    #[command(flatten)]
    llm: LlmArgs,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct QuestionsArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Where questions come from.
    #[arg(long, value_enum, default_value = "template")]
    source: SourceKind,
    /// Model questions per dataset (default 12, or [questions] llm_questions).
    #[arg(long)]
    llm_questions: Option<usize>,
    #[command(flatten)]
    llm: LlmArgs,
}

/// Workers a question of the program teacher holds at once: its reference
/// and at most two alternatives (templates and composed questions).
const PROGRAM_WORKERS_PER_QUESTION: usize = 3;

/// Datasets at a time and questions in flight: the ones given, the rest
/// derived from MemAvailable and the measured costs ([`capacity`]).
fn capacity_plan(
    datasets: &[crate::datasets::Dataset],
    jobs: Option<usize>,
    concurrency: Option<usize>,
    workers_per_question: usize,
    wanted_concurrency: usize,
) -> Result<capacity::Plan> {
    let largest_csv = datasets
        .iter()
        .map(|d| crate::datasets::csv_bytes(&d.csv))
        .max()
        .unwrap_or(0);
    let given = match std::env::var(capacity::MEMORY_ENV) {
        Ok(text) => Some(
            crate::sandbox::parse_size(&text)
                .map_err(|e| anyhow::anyhow!("{}={text:?}: {e}", capacity::MEMORY_ENV))?,
        ),
        Err(_) => None,
    };
    let (mem_available, memory_source) = capacity::memory_available(given, 4 << 30);
    Ok(capacity::plan(
        &capacity::Inputs {
            mem_available,
            memory_source,
            datasets: datasets.len(),
            largest_csv,
            workers_per_question,
            wanted_concurrency,
            jobs,
            concurrency,
        },
        &capacity::MEASURED,
    ))
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// The run's settings, the capacity plan they took `jobs` and
/// `question_concurrency` from, and `--jobs` as given.
async fn settings(
    select: SelectArgs,
    questions_only: bool,
    config: Option<&std::path::Path>,
) -> Result<(RunSettings, capacity::Plan, Option<usize>)> {
    let file = crate::config::load_file(crate::config::config_path(config).as_deref())?;
    let limits = select.limits.resolve(&file)?;
    let root = super::datasets::registry_dir(select.datasets)?;
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
    // The program teacher's plan; the LLM teacher's is made again in `run`.
    let plan = capacity_plan(
        &datasets,
        select.jobs,
        select.concurrency,
        PROGRAM_WORKERS_PER_QUESTION,
        2 * cpus(),
    )?;
    let settings = RunSettings {
        jobs: plan.jobs,
        question_concurrency: plan.concurrency,
        spare_workers: None,
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
        sources: crate::pipeline::QuestionSources {
            template: true,
            compose: Some(crate::questions::compose::ComposeConfig {
                seed: select.seed,
                max_questions: select
                    .max_questions
                    .unwrap_or(crate::questions::compose::DEFAULT_MAX_QUESTIONS),
            }),
            llm: None,
        },
        limits,
        recovery: crate::pipeline::Recovery {
            max_restarts: select.max_restarts,
            ..Default::default()
        },
        serve: super::serve::endpoint(select.serve.as_deref()),
    };
    Ok((settings, plan, select.jobs))
}

/// At most this many questions in flight per dataset for the LLM teacher
/// when `--concurrency` is not given: each question waits on the model most
/// of the time, so many more than CPUs (each question holds 1 + N workers),
/// fewer when memory says so ([`capacity::plan`]).
const LLM_QUESTION_CONCURRENCY: usize = 32;

/// Workers one question of the LLM teacher holds: its gold trace and, on
/// average over the difficulties, its consistency traces.
fn llm_workers_per_question(n: &crate::teacher::NConsistency) -> usize {
    1 + (n.easy + n.medium + n.hard + n.very_hard).div_ceil(4) as usize
}

pub async fn run(args: RunArgs) -> Result<i32> {
    let (template, compose, llm) = source_set(match args.teacher {
        TeacherKind::Program => args.questions,
        TeacherKind::Llm => Some(args.questions.unwrap_or(SourceKind::All)),
    });
    if args.teacher == TeacherKind::Program && llm {
        bail!("the program teacher answers only questions with reference programs (template and compose); use --teacher llm for model questions");
    }
    let concurrency_given = args.select.concurrency.is_some();
    // The model is checked first: a bad key or a dead server is reported
    // before the image is built or a dataset is read.
    let setup = match args.teacher {
        TeacherKind::Program => None,
        TeacherKind::Llm => Some(model_setup(&args.llm, "--teacher llm").await?),
    };
    let (mut settings, mut plan, jobs_given) =
        settings(args.select, false, args.llm.config.as_deref()).await?;
    settings.sources.template = template;
    if !compose {
        settings.sources.compose = None;
    }
    let teacher: Arc<dyn Teacher> = match setup {
        None => Arc::new(ProgramTeacher),
        Some(setup) => {
            let config = teacher_config(&args.agent, &setup.file)?;
            if llm {
                settings.sources.llm = Some(pipeline::LlmQuestions {
                    chat: setup.client.clone(),
                    config: generation_config(args.llm_questions, &setup.file)?,
                    sampling: setup.sampling.clone(),
                });
            }
            plan = capacity_plan(
                &settings.datasets,
                jobs_given,
                concurrency_given.then_some(settings.question_concurrency),
                llm_workers_per_question(&config.n_consistency),
                LLM_QUESTION_CONCURRENCY,
            )?;
            settings.jobs = plan.jobs;
            settings.question_concurrency = plan.concurrency;
            Arc::new(LlmTeacher::new(setup.client, setup.sampling, config))
        }
    };
    execute(settings, teacher, &plan).await
}

pub async fn questions(args: QuestionsArgs) -> Result<i32> {
    let (template, compose, llm) = source_set(Some(args.source));
    let setup = match llm {
        false => None,
        true => Some(model_setup(&args.llm, "--source llm").await?),
    };
    let (mut settings, plan, _) = settings(args.select, true, args.llm.config.as_deref()).await?;
    if let Some(setup) = setup {
        settings.sources.llm = Some(pipeline::LlmQuestions {
            chat: setup.client.clone(),
            config: generation_config(args.llm_questions, &setup.file)?,
            sampling: setup.sampling,
        });
    }
    settings.sources.template = template;
    if !compose {
        settings.sources.compose = None;
    }
    execute(settings, Arc::new(ProgramTeacher), &plan).await
}

async fn execute(
    settings: RunSettings,
    teacher: Arc<dyn Teacher>,
    plan: &capacity::Plan,
) -> Result<i32> {
    let out = settings.out.clone();
    let questions_only = settings.questions_only;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let logs = DatasetLogs::new(out.join(LOGS_DIR))
        .with_context(|| format!("creating {}", out.join(LOGS_DIR).display()))?;
    let _guard = tracing_subscriber::registry()
        .with(logs)
        .with(crate::logs::StderrLogs::from_env())
        .set_default();
    eprintln!(
        "csv-agent: {} dataset(s), output in {}",
        settings.datasets.len() + settings.unusable.len(),
        out.display()
    );
    eprintln!("csv-agent: {plan}");
    let csvs: Vec<&std::path::Path> = settings.datasets.iter().map(|d| d.csv.as_path()).collect();
    eprintln!("csv-agent: {}", limits_line(settings.limits, &csvs));
    let reporter: Arc<dyn Reporter> = Arc::from(super::progress::reporter());
    let summary = pipeline::run(settings, teacher, reporter).await?;
    print_summary(&summary, questions_only);
    if let Some(u) = &summary.llm_usage {
        println!("\nmodel: {}", usage_line(u));
    }
    if let Some(stopped) = &summary.stopped {
        println!("\nstopped early: {stopped}\nrerun the same command to continue.");
    }
    if !summary.incidents.is_empty() {
        println!("\nincidents: {}", incidents_line(&summary.incidents));
    }
    println!(
        "\n{} episodes in {} ({} verified); summary in {}",
        summary.episodes,
        out.join(crate::store::EPISODES_FILE).display(),
        summary.verified,
        out.join(crate::store::SUMMARY_FILE).display()
    );
    super::report::after_run(&out);
    Ok(summary.exit_code())
}

/// "2 restarts, 9 workers lost, 0 OOM kills, 1 timeout, 9 retries"
pub fn incidents_line(i: &crate::pipeline::Incidents) -> String {
    format!(
        "{} restarts, {} workers lost, {} OOM kills, {} timeouts, {} retries",
        i.restarts, i.workers_lost, i.oom_kills, i.timeouts, i.retries
    )
}

/// "412 requests (3 retried), 1.2M prompt + 88k completion tokens, 1.4 s per request"
pub fn usage_line(u: &crate::schema::Usage) -> String {
    let per = if u.requests > 0 {
        u.latency_s / u.requests as f64
    } else {
        0.0
    };
    let failed = if u.failed > 0 {
        format!(", {} failed", u.failed)
    } else {
        String::new()
    };
    format!(
        "{} requests ({} retried{failed}), {} prompt + {} completion tokens, {:.2} s per request",
        u.requests, u.retries, u.prompt_tokens, u.completion_tokens, per
    )
}

pub fn summary_line(d: &DatasetSummary) -> String {
    match (d.status, &d.reason) {
        (DatasetStatus::Failed, Some(reason)) => format!("FAILED: {reason}"),
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
    for line in super::table::run_summary(summary, questions_only) {
        println!("{line}");
    }
}
