//! Datasets → questions → episodes, the main job.
//!
//! Datasets run in parallel (at most `jobs` live sandboxes), questions of one
//! dataset in parallel (each question's traces concurrently, on forked
//! workers). Every finished question is written before the next is counted:
//! the episode line first, then its mark in the manifest, so a run killed at
//! any moment and started again does each question exactly once. A dataset
//! that cannot be used (unreadable, empty, binary, one column) fails alone
//! with its reason; the others finish.
//!
//! Progress goes through [`Reporter`]; log lines through `tracing`, inside a
//! `dataset` span that the CLI routes to `<out>/logs/<slug>.log`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn, Instrument};

mod health;

pub use health::{Exhausted, GiveUp, Incidents, Jail, Recovery};

use crate::datasets::Dataset;
use crate::llm::Chat;
use crate::profile::{profile, DataProfile};
use crate::questions::llm::{self as llm_questions, GenerationConfig};
use crate::questions::{self, establish_ground_truth, GroundTruthError, Template};
use crate::sandbox::{Image, LimitChoice, Limits, SandboxOptions};
use crate::schema::Usage;
use crate::schema::{Episode, Question, Timing};
use crate::shards::{RunIdentity, RunRecord};
use crate::store::{
    self, DatasetRow, EpisodeLog, Manifest, OutputLock, QuestionRow, StoreError, EPISODES_FILE,
    MANIFEST_FILE, QUESTIONS_DIR, SUMMARY_FILE,
};
use crate::teacher::TeacherError;
use crate::teacher::{triangulate, Teacher};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] questions::TemplateError),
    #[error("nothing to run: {0}")]
    Nothing(String),
    #[error(transparent)]
    Record(#[from] crate::shards::ShardError),
}

/// `--shard I/N`: this process does the questions whose key falls in part I
/// of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not I/N (like 0/4)"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("`{i}` is not a shard index"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index}/{count}: the index counts from 0 and must be below the count"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Deterministic: by dataset, then question id.
    pub fn owns(&self, dataset: &str, question_id: &str) -> bool {
        let digest = Sha256::digest(format!("{dataset}\n{question_id}").as_bytes());
        let n = u64::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
        ]);
        n % u64::from(self.count) == u64::from(self.index)
    }
}

/// Resolved settings of one run (validated by the CLI before any work).
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub datasets: Vec<Dataset>,
    /// Datasets of the registry that cannot even be described (slug, reason):
    /// reported as failed, the others run.
    pub unusable: Vec<(String, String)>,
    pub out: PathBuf,
    /// Per dataset, applied before sharding so shards add up to the whole.
    pub max_questions: Option<usize>,
    /// Live sandboxes at once.
    pub jobs: usize,
    /// Questions in flight per dataset.
    pub question_concurrency: usize,
    pub shard: Option<Shard>,
    pub fresh: bool,
    pub image: Image,
    pub allow_degraded: bool,
    /// More templates (`--templates DIR`), ahead of the built-in catalog.
    pub templates: Option<PathBuf>,
    /// Stop after writing the questions files (`csv-agent questions`).
    pub questions_only: bool,
    /// The executable re-run as the jail init (default: this process's own;
    /// a library user such as a benchmark points it at `csv-agent`).
    pub init_program: Option<PathBuf>,
    /// Where questions come from.
    pub sources: QuestionSources,
    /// Per-worker memory and cell timeout the user chose; the rest is
    /// derived from each dataset's size (`Limits::for_dataset`).
    pub limits: LimitChoice,
    /// Sandbox restarts and retries after infrastructure failures.
    pub recovery: Recovery,
}

/// `--questions template|llm|all`.
#[derive(Debug, Clone)]
pub struct QuestionSources {
    /// The template catalog (questions with reference programs and ground truth).
    pub template: bool,
    /// Questions a model proposes after exploring the dataset.
    pub llm: Option<LlmQuestions>,
}

impl Default for QuestionSources {
    fn default() -> Self {
        QuestionSources {
            template: true,
            llm: None,
        }
    }
}

#[derive(Clone)]
pub struct LlmQuestions {
    pub chat: Arc<dyn Chat>,
    pub config: GenerationConfig,
    /// Sampling settings of the client (part of the questions key).
    pub sampling: serde_json::Value,
}

impl std::fmt::Debug for LlmQuestions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmQuestions")
            .field("model", &self.chat.model())
            .field("config", &self.config)
            .finish()
    }
}

/// How the pipeline reports progress (the CLI draws bars or prints lines).
pub trait Reporter: Send + Sync {
    fn dataset_started(&self, slug: &str, questions: usize, already_done: usize);
    fn question_finished(&self, slug: &str, status: &str);
    fn dataset_finished(&self, summary: &DatasetSummary);
}

/// A reporter that says nothing (tests, library use).
pub struct Silent;

impl Reporter for Silent {
    fn dataset_started(&self, _: &str, _: usize, _: usize) {}
    fn question_finished(&self, _: &str, _: &str) {}
    fn dataset_finished(&self, _: &DatasetSummary) {}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub question_id: String,
    pub template: Option<String>,
    pub stage: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub dataset: String,
    /// done | failed
    pub status: String,
    /// Why the whole dataset failed.
    pub reason: Option<String>,
    pub questions: u64,
    pub verified: u64,
    /// Episodes whose programs disagreed (written, not verified).
    pub disagreements: u64,
    pub failures: Vec<Failure>,
    /// Bindings whose reference answer was degenerate (NaN, infinite,
    /// undefined), by "template: reason": neither episodes nor failures.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ineligible: std::collections::BTreeMap<String, u64>,
    /// Seconds spent on this dataset by the runs that produced it.
    pub elapsed: f64,
    /// What the model cost for this dataset in this run (LLM work only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usage: Option<Usage>,
    /// Restarts, workers lost, OOM kills, timeouts and retries in this run.
    #[serde(default)]
    pub incidents: Incidents,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub teacher: String,
    pub shard: Option<Shard>,
    pub datasets: Vec<DatasetSummary>,
    pub episodes: u64,
    pub verified: u64,
    pub elapsed: f64,
    /// What the model cost in this run, all datasets together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usage: Option<Usage>,
    /// Set when the run stopped taking questions because the model server
    /// failed; the questions not done are left for the next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The datasets' incidents of this run, summed.
    #[serde(default)]
    pub incidents: Incidents,
}

impl RunSummary {
    /// 0 all good, 1 some dataset or question failed, or the run stopped early.
    pub fn exit_code(&self) -> i32 {
        let failed = self
            .datasets
            .iter()
            .any(|d| d.status != "done" || !d.failures.is_empty());
        i32::from(failed || self.stopped.is_some())
    }
}

/// The sha256 of the dataset's bytes, first 16 hex digits.
pub fn dataset_hash(csv: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(csv)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// The episode (and manifest) key of a question under a teacher's settings.
pub fn fingerprint(question: &Question, teacher: &dyn Teacher) -> String {
    questions::template::short_hash(&format!("{}\n{}", question.id, teacher.settings()))
}

struct Shared {
    settings: RunSettings,
    catalog: Vec<Template>,
    catalog_hash: String,
    teacher: Arc<dyn Teacher>,
    reporter: Arc<dyn Reporter>,
    episodes: EpisodeLog,
    manifest: Manifest,
    /// Episode ids already in the episodes file.
    written: std::sync::Mutex<HashSet<String>>,
    /// Model usage of this run, per dataset slug.
    usage: std::sync::Mutex<std::collections::BTreeMap<String, Usage>>,
    /// Incidents of this run, per dataset slug.
    incidents: std::sync::Mutex<std::collections::BTreeMap<String, Incidents>>,
    /// The first model failure (unreachable after retries, or refused):
    /// from then on no new question starts; they are left for a rerun.
    model_failure: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn add_usage(&self, slug: &str, usage: &Usage) {
        if let Ok(mut map) = self.usage.lock() {
            map.entry(slug.to_string()).or_default().add(usage);
        }
    }

    fn model_failed(&self) -> Option<String> {
        self.model_failure.lock().ok().and_then(|f| f.clone())
    }

    fn record_model_failure(&self, error: &str) {
        if let Ok(mut f) = self.model_failure.lock() {
            if f.is_none() {
                warn!("the model failed; no new questions start in this run: {error}");
                *f = Some(error.to_string());
            }
        }
    }
}

/// Run the pipeline over `settings.datasets`; returns the summary (also
/// written to `<out>/summary.json`).
pub async fn run(
    settings: RunSettings,
    teacher: Arc<dyn Teacher>,
    reporter: Arc<dyn Reporter>,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    if settings.datasets.is_empty() && settings.unusable.is_empty() {
        return Err(PipelineError::Nothing("no datasets selected".into()));
    }
    let _lock = OutputLock::acquire(&settings.out)?;
    if settings.fresh {
        store::clear_outputs(&settings.out)?;
    }
    let (catalog, catalog_hash) = questions::catalog_with(settings.templates.as_deref())?;
    // run.json: which run this output belongs to (shard sets), `running` until the end.
    let identity = RunIdentity::of(&settings, &catalog_hash, teacher.name(), teacher.settings());
    let record = RunRecord::start(&settings.out, identity, settings.shard)?;
    let episodes = EpisodeLog::open(&settings.out.join(EPISODES_FILE))?;
    let manifest = Manifest::open(&settings.out.join(MANIFEST_FILE))?;
    let written = episodes.ids()?;
    reconcile(&settings.out, &manifest, &written)?;
    let shared = Arc::new(Shared {
        catalog_hash,
        catalog,
        teacher,
        reporter,
        episodes,
        manifest,
        written: std::sync::Mutex::new(written),
        usage: Default::default(),
        incidents: Default::default(),
        model_failure: Default::default(),
        settings,
    });
    let jobs = shared.settings.jobs.max(1);
    let datasets = shared.settings.datasets.clone();
    let summaries: Vec<DatasetSummary> = stream::iter(datasets)
        .map(|d| {
            let shared = shared.clone();
            let span = tracing::info_span!("dataset", dataset = %d.slug);
            async move { run_dataset(&shared, &d).await }.instrument(span)
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut summaries = summaries;
    for (slug, reason) in &shared.settings.unusable {
        let row = DatasetRow {
            slug: slug.clone(),
            dataset_hash: None,
            questions_key: None,
            status: "failed".into(),
            reason: Some(reason.clone()),
            n_questions: 0,
            elapsed: 0.0,
        };
        shared.manifest.record_dataset(&row)?;
        let summary = dataset_summary(&shared.manifest, &row);
        shared.reporter.dataset_finished(&summary);
        summaries.push(summary);
    }
    summaries.sort_by(|a, b| a.dataset.cmp(&b.dataset));
    let usage = shared.usage.lock().map(|m| m.clone()).unwrap_or_default();
    let incidents = shared
        .incidents
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let mut total = Usage::default();
    let mut total_incidents = Incidents::default();
    for d in summaries.iter_mut() {
        if let Some(u) = usage.get(&d.dataset) {
            total.add(u);
            d.llm_usage = Some(*u);
        }
        if let Some(i) = incidents.get(&d.dataset) {
            total_incidents.add(i);
            d.incidents = *i;
        }
    }
    let summary = RunSummary {
        llm_usage: (!usage.is_empty()).then_some(total),
        stopped: shared.model_failed().map(|e| {
            format!(
                "the model failed, so the questions not yet done were left for the next run: {e}"
            )
        }),
        teacher: shared.teacher.name().to_string(),
        shard: shared.settings.shard,
        // The set read at open and extended by every append: no second
        // pass over the episodes file.
        episodes: shared.written.lock().map(|w| w.len()).unwrap_or(0) as u64,
        verified: summaries.iter().map(|d| d.verified).sum(),
        datasets: summaries,
        elapsed: started.elapsed().as_secs_f64(),
        incidents: total_incidents,
    };
    write_summary(&shared.settings.out, &summary)?;
    record.finish(&shared.settings.out, summary.exit_code())?;
    Ok(summary)
}

pub fn write_summary(out: &Path, summary: &RunSummary) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(summary).unwrap_or_default();
    store::write_atomic(&out.join(SUMMARY_FILE), &bytes)
}

/// Episodes in the file whose manifest mark was lost (killed between the two
/// writes) are marked done from the episode itself.
fn reconcile(out: &Path, manifest: &Manifest, written: &HashSet<String>) -> Result<(), StoreError> {
    let missing: Vec<&String> = written
        .iter()
        .filter(|id| {
            manifest
                .question(id)
                .ok()
                .flatten()
                .is_none_or(|r| !store::DONE.contains(&r.status.as_str()))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let episodes: Vec<Episode> = store::read_jsonl(&out.join(EPISODES_FILE))?;
    for e in episodes.iter().filter(|e| missing.contains(&&e.episode_id)) {
        manifest.record_question(&episode_row(e))?;
    }
    Ok(())
}

/// The manifest row an episode implies.
pub fn episode_row(e: &Episode) -> QuestionRow {
    QuestionRow {
        fingerprint: e.episode_id.clone(),
        dataset: e.dataset.clone(),
        question_id: e.question.id.clone(),
        template: e.question.template_name.clone(),
        difficulty: e.question.difficulty.as_str().to_string(),
        status: if e.verified { "verified" } else { "unverified" }.to_string(),
        stage: "teacher".to_string(),
        reason: e.reason.clone(),
        episode_id: Some(e.episode_id.clone()),
        elapsed: e.timing.total_elapsed,
    }
}

async fn run_dataset(shared: &Shared, dataset: &Dataset) -> DatasetSummary {
    let started = Instant::now();
    let slug = dataset.slug.clone();
    let before = shared.manifest.dataset(&slug).ok().flatten();
    let earlier = before.as_ref().map(|r| r.elapsed).unwrap_or(0.0);
    let outcome = prepare_and_answer(shared, dataset, started).await;
    let elapsed = earlier + started.elapsed().as_secs_f64();
    let summary = match outcome {
        Ok((hash, key, n)) => {
            let row = DatasetRow {
                slug: slug.clone(),
                dataset_hash: Some(hash),
                // None when some ground truth was cut short by the
                // infrastructure: the next run makes the questions again.
                questions_key: key,
                status: "done".into(),
                reason: None,
                n_questions: n as u64,
                elapsed,
            };
            if let Err(e) = shared.manifest.record_dataset(&row) {
                warn!("could not record the dataset in the manifest: {e}");
            }
            dataset_summary(&shared.manifest, &row)
        }
        Err(reason) => {
            warn!("dataset failed: {reason}");
            let row = DatasetRow {
                slug: slug.clone(),
                dataset_hash: before.as_ref().and_then(|r| r.dataset_hash.clone()),
                questions_key: None,
                status: "failed".into(),
                reason: Some(reason),
                n_questions: 0,
                elapsed,
            };
            if let Err(e) = shared.manifest.record_dataset(&row) {
                warn!("could not record the dataset in the manifest: {e}");
            }
            dataset_summary(&shared.manifest, &row)
        }
    };
    info!(
        "finished: {} questions, {} verified, {} disagreements, {} failures in {:.1} s",
        summary.questions,
        summary.verified,
        summary.disagreements,
        summary.failures.len(),
        elapsed
    );
    shared.reporter.dataset_finished(&summary);
    summary
}

/// The summary of one dataset as the manifest has it.
pub fn dataset_summary(manifest: &Manifest, row: &DatasetRow) -> DatasetSummary {
    let rows: Vec<QuestionRow> = manifest
        .questions()
        .unwrap_or_default()
        .into_iter()
        .filter(|q| q.dataset == row.slug)
        .collect();
    let count = |s: &str| rows.iter().filter(|q| q.status == s).count() as u64;
    DatasetSummary {
        dataset: row.slug.clone(),
        status: row.status.clone(),
        reason: row.reason.clone(),
        questions: row.n_questions.max(rows.len() as u64),
        verified: count("verified"),
        disagreements: count("unverified"),
        failures: rows
            .iter()
            .filter(|q| q.status == "failed")
            .map(|q| Failure {
                question_id: q.question_id.clone(),
                template: q.template.clone(),
                stage: q.stage.clone(),
                reason: q.reason.clone().unwrap_or_default(),
            })
            .collect(),
        ineligible: rows.iter().filter(|q| q.status == "ineligible").fold(
            Default::default(),
            |mut by, q| {
                let key = format!(
                    "{}: {}",
                    q.template.as_deref().unwrap_or("-"),
                    q.reason.as_deref().unwrap_or("")
                );
                *by.entry(key).or_insert(0) += 1;
                by
            },
        ),
        elapsed: row.elapsed,
        llm_usage: None,
        incidents: Incidents::default(),
    }
}

/// Returns (dataset hash, questions key if the questions file is complete,
/// number of questions) or the reason the dataset cannot be used.
async fn prepare_and_answer(
    shared: &Shared,
    dataset: &Dataset,
    started: Instant,
) -> Result<(String, Option<String>, usize), String> {
    let settings = &shared.settings;
    let slug = &dataset.slug;
    let hash = dataset_hash(&dataset.csv)
        .map_err(|e| format!("cannot read {}: {e}", dataset.csv.display()))?;
    info!(
        "dataset {slug} ({}), content hash {hash}",
        dataset.csv.display()
    );
    // A finished dataset needs no sandbox: its questions are on file and
    // every one of them is done.
    if !settings.questions_only {
        if let Some(qs) = reusable_questions(shared, slug, &hash) {
            let teacher = shared.teacher.as_ref();
            if qs.iter().all(|q| is_done(shared, &fingerprint(q, teacher))) {
                info!("all {} questions already done", qs.len());
                shared.reporter.dataset_started(slug, qs.len(), qs.len());
                return Ok((hash.clone(), Some(questions_key(shared, &hash)), qs.len()));
            }
        }
    }
    let mut opts =
        SandboxOptions::new(&dataset.csv, settings.image.clone()).map_err(|e| e.to_string())?;
    opts.allow_degraded = settings.allow_degraded;
    opts.spare_workers = settings.question_concurrency.clamp(1, 8);
    opts.limits = Limits::for_dataset(crate::datasets::csv_bytes(&dataset.csv), settings.limits);
    info!(
        "limits: {} MiB per worker, cell timeout {} s",
        opts.limits.memory_bytes >> 20,
        opts.limits.cell_timeout.as_secs()
    );
    if let Some(init) = &settings.init_program {
        opts.init_program = init.clone();
    }
    let jail = Jail::start(opts, settings.recovery)
        .await
        .map_err(|e| e.to_string())?;
    let (_, sandbox) = jail.current().await;
    info!(
        "sandbox {} ready in {:.1} s: {} rows x {} columns",
        sandbox.id(),
        started.elapsed().as_secs_f64(),
        sandbox.zygote().rows,
        sandbox.zygote().columns
    );
    drop(sandbox);
    let result = answer_dataset(shared, dataset, &jail, &hash).await;
    jail.harvest_faults().await;
    if let Ok(mut map) = shared.incidents.lock() {
        map.insert(dataset.slug.clone(), jail.incidents());
    }
    jail.shutdown().await;
    result.map(|(key, n)| (hash, key, n))
}

/// Profile the dataset, retrying in a new sandbox after an infrastructure
/// failure.
async fn profile_dataset(jail: &Jail) -> Result<DataProfile, String> {
    let mut attempt = 1;
    loop {
        let (generation, sandbox) = jail.current().await;
        let mut task = sandbox.task();
        let outcome = profile(&mut task).await;
        drop(task);
        match outcome {
            Ok(p) => return Ok(p),
            Err(crate::profile::ProfileError::Sandbox(e)) if e.is_infrastructure() => {
                attempt = match jail.after_failure("profile", &e, generation, attempt).await {
                    Ok(next) => next,
                    Err(GiveUp::Retries) => {
                        return Err(format!(
                            "profiling failed {attempt} times on infrastructure failures; last: {e}"
                        ))
                    }
                    Err(GiveUp::Restarts(x)) => return Err(x.to_string()),
                };
            }
            Err(e) => return Err(format!("profiling failed: {e}")),
        }
    }
}

async fn answer_dataset(
    shared: &Shared,
    dataset: &Dataset,
    jail: &Jail,
    hash: &str,
) -> Result<(Option<String>, usize), String> {
    let (_, sandbox) = jail.current().await;
    let ready = sandbox.zygote().clone();
    drop(sandbox);
    if ready.rows == 0 {
        return Err(
            "the file has a header but no data rows; add rows or remove the dataset".into(),
        );
    }
    if ready.columns < 2 {
        return Err(format!(
            "the file has {} column (pandas read it with separator {:?}); questions need at least two — check the separator or remove the dataset",
            ready.columns, ready.separator
        ));
    }
    let data_profile = profile_dataset(jail).await?;
    let (questions, complete) =
        load_or_make_questions(shared, dataset, jail, hash, &data_profile).await?;
    let key = complete.then(|| questions_key(shared, hash));
    let n = questions.len();
    if shared.settings.questions_only {
        return Ok((key, n));
    }

    let teacher = shared.teacher.as_ref();
    let mut todo = Vec::new();
    let mut already = 0;
    for q in questions {
        let fp = fingerprint(&q, teacher);
        if is_done(shared, &fp) {
            already += 1;
        } else {
            todo.push((fp, q));
        }
    }
    info!(
        "{n} questions: {already} already done, {} to answer",
        todo.len()
    );
    shared.reporter.dataset_started(&dataset.slug, n, already);
    let concurrency = shared.settings.question_concurrency.max(1);
    let outcomes: Vec<Result<(), String>> = stream::iter(todo)
        .map(|(fp, q)| answer_question(shared, dataset, jail, &data_profile, fp, q))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    // A question that could not be written stops nothing else, but a store
    // failure is a failure of the dataset: its work was not kept.
    if let Some(Err(e)) = outcomes.into_iter().find(|o| o.is_err()) {
        return Err(e);
    }
    Ok((key, n))
}

/// A question that got no ground truth: its row in the manifest (never
/// done, so the next run tries it again) and its tick in the progress.
fn record_without_ground_truth(
    shared: &Shared,
    slug: &str,
    q: &Question,
    status: &str,
    stage: &str,
    reason: String,
) -> Result<(), String> {
    let row = QuestionRow {
        fingerprint: fingerprint(q, shared.teacher.as_ref()),
        dataset: slug.to_string(),
        question_id: q.id.clone(),
        template: q.template_name.clone(),
        difficulty: q.difficulty.as_str().to_string(),
        status: status.into(),
        stage: stage.into(),
        reason: Some(reason),
        episode_id: None,
        elapsed: 0.0,
    };
    shared
        .manifest
        .record_question(&row)
        .map_err(|e| e.to_string())?;
    shared.reporter.question_finished(slug, status);
    Ok(())
}

fn questions_key(shared: &Shared, hash: &str) -> String {
    let sources = &shared.settings.sources;
    let llm = sources.llm.as_ref().map(|l| {
        serde_json::json!({
            "model": l.chat.model(),
            "sampling": l.sampling,
            "prompt_version": llm_questions::prompt_version(),
            "n_questions": l.config.n_questions,
            "mix": l.config.mix,
        })
    });
    // The worker memory decides which templates bind ([cost]): a rerun with
    // another --memory makes the questions again.
    questions::template::short_hash(&format!(
        "{}\n{hash}\n{:?}\n{:?}\n{}\n{}\n{:?}",
        shared.catalog_hash,
        shared.settings.max_questions,
        shared.settings.shard,
        sources.template,
        llm.map(|v| v.to_string()).unwrap_or_default(),
        shared.settings.limits.memory_bytes,
    ))
}

pub fn questions_path(out: &Path, slug: &str) -> PathBuf {
    out.join(QUESTIONS_DIR).join(format!("{slug}.jsonl"))
}

/// Every template question of the dataset, capped and sharded, in catalog
/// order (the cap keeps the first questions of each template round-robin,
/// so a small cap still covers many templates).
pub fn candidate_questions(
    catalog: &[Template],
    data_profile: &DataProfile,
    slug: &str,
    hash: &str,
    max_questions: Option<usize>,
    shard: Option<Shard>,
    worker_memory: u64,
) -> Vec<Question> {
    let per_template: Vec<Vec<Question>> = catalog
        .iter()
        .map(|t| t.instantiate_within(data_profile, slug, hash, worker_memory))
        .collect();
    let mut ordered = Vec::new();
    let depth = per_template.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..depth {
        for qs in &per_template {
            if let Some(q) = qs.get(round) {
                ordered.push(q.clone());
            }
        }
    }
    if let Some(cap) = max_questions {
        ordered.truncate(cap);
    }
    if let Some(shard) = shard {
        ordered.retain(|q| shard.owns(slug, &q.id));
    }
    ordered
}

/// The dataset's questions file, if it was made for this catalog, dataset
/// content, cap and shard.
fn reusable_questions(shared: &Shared, slug: &str, hash: &str) -> Option<Vec<Question>> {
    let key = questions_key(shared, hash);
    let row = shared.manifest.dataset(slug).ok().flatten()?;
    if row.questions_key.as_deref() != Some(key.as_str()) {
        return None;
    }
    let path = questions_path(&shared.settings.out, slug);
    match store::read_jsonl::<Question>(&path) {
        Ok(qs) if path.is_file() => Some(qs),
        Ok(_) => None,
        Err(e) => {
            warn!("questions file unusable, making it again: {e}");
            None
        }
    }
}

fn is_done(shared: &Shared, fingerprint: &str) -> bool {
    shared
        .written
        .lock()
        .map(|w| w.contains(fingerprint))
        .unwrap_or(false)
        || shared
            .manifest
            .question(fingerprint)
            .ok()
            .flatten()
            .is_some_and(|r| store::DONE.contains(&r.status.as_str()))
}

/// The dataset's questions, and whether the set is complete (no ground
/// truth was cut short by the infrastructure; an incomplete set is not
/// reused by the next run).
async fn load_or_make_questions(
    shared: &Shared,
    dataset: &Dataset,
    jail: &Jail,
    hash: &str,
    data_profile: &DataProfile,
) -> Result<(Vec<Question>, bool), String> {
    let slug = &dataset.slug;
    let path = questions_path(&shared.settings.out, slug);
    let key = questions_key(shared, hash);
    if let Some(qs) = reusable_questions(shared, slug, hash) {
        info!("reusing {} questions from {}", qs.len(), path.display());
        return Ok((qs, true));
    }
    // Model questions first: if the model fails, little work is lost.
    let mut generated = Vec::new();
    if let Some(llm) = &shared.settings.sources.llm {
        // Model questions are not reproducible, so a dataset's model
        // questions belong to one shard whole (by dataset), never split.
        let owned = shared.settings.shard.is_none_or(|s| s.owns(slug, ""));
        if owned {
            info!(
                "asking {} for {} questions",
                llm.chat.model(),
                llm.config.n_questions
            );
            let (_, sandbox) = jail.current().await;
            match llm_questions::generate(
                llm.chat.as_ref(),
                &sandbox,
                data_profile,
                slug,
                hash,
                &llm.config,
            )
            .await
            {
                Ok(g) => {
                    shared.add_usage(slug, &g.usage);
                    for d in &g.dropped {
                        info!("model question dropped ({}): {}", d.reason, d.question_text);
                    }
                    info!(
                        "{} model questions after {} exploration turns ({} dropped)",
                        g.questions.len(),
                        g.exploration_turns,
                        g.dropped.len()
                    );
                    generated = g.questions;
                }
                Err(e) => {
                    if let llm_questions::GenerationError::Model { error, usage } = &e {
                        shared.add_usage(slug, usage);
                        shared.record_model_failure(&error.to_string());
                    }
                    return Err(format!("question generation failed: {e}"));
                }
            }
        }
    }
    let candidates = if shared.settings.sources.template {
        candidate_questions(
            &shared.catalog,
            data_profile,
            slug,
            hash,
            shared.settings.max_questions,
            shared.settings.shard,
            jail.current().await.1.limits().memory_bytes,
        )
    } else {
        Vec::new()
    };
    info!(
        "{} template questions apply; establishing ground truth",
        candidates.len()
    );
    // Failures from an older questions file are replaced by this attempt's.
    shared
        .manifest
        .remove_questions_of(slug)
        .map_err(|e| e.to_string())?;
    let concurrency = shared.settings.question_concurrency.max(1);
    let results: Vec<(Question, Result<Question, GroundTruthError>)> = stream::iter(candidates)
        .map(|q| async move {
            let outcome = ground_truth_with_retries(jail, q.clone()).await;
            (q, outcome)
        })
        .buffered(concurrency)
        .collect()
        .await;
    let mut kept = Vec::new();
    let mut complete = true;
    for (q, outcome) in results {
        match outcome {
            Ok(q) => kept.push(q),
            Err(GroundTruthError::Infrastructure(e)) => {
                // Not a fact about the question: recorded as failed for this
                // run (with the reason), never stored as its ground truth;
                // the questions file is not reused, so the next run
                // computes it again.
                complete = false;
                warn!(
                    "question {} ({}): ground truth cut short by the infrastructure: {e}",
                    q.id,
                    q.template_name.as_deref().unwrap_or("-"),
                );
                record_without_ground_truth(
                    shared,
                    slug,
                    &q,
                    "failed",
                    "infrastructure",
                    format!("ground truth not established: {e}"),
                )?;
            }
            Err(GroundTruthError::Failure(failure)) => {
                let status = if failure.is_ineligible() {
                    "ineligible"
                } else {
                    "failed"
                };
                warn!(
                    "question {} ({}): no ground truth ({status}): {}",
                    q.id,
                    q.template_name.as_deref().unwrap_or("-"),
                    failure.reason
                );
                record_without_ground_truth(
                    shared,
                    slug,
                    &q,
                    status,
                    "ground_truth",
                    failure.reason,
                )?;
            }
        }
    }
    kept.extend(generated);
    store::write_jsonl_atomic(&path, &kept).map_err(|e| e.to_string())?;
    // The key is recorded now, so a killed run reuses these questions
    // (unless some are missing for lack of a sandbox).
    shared
        .manifest
        .record_dataset(&DatasetRow {
            slug: slug.clone(),
            dataset_hash: Some(hash.to_string()),
            questions_key: complete.then_some(key),
            status: "running".into(),
            reason: None,
            n_questions: kept.len() as u64,
            elapsed: 0.0,
        })
        .map_err(|e| e.to_string())?;
    Ok((kept, complete))
}

/// Ground truth of one question, run again in a healthy sandbox after an
/// infrastructure failure (at most `max_retries` times).
async fn ground_truth_with_retries(
    jail: &Jail,
    question: Question,
) -> Result<Question, GroundTruthError> {
    let mut attempt = 1;
    loop {
        let (generation, sandbox) = jail.current().await;
        match establish_ground_truth(&sandbox, question.clone()).await {
            Err(GroundTruthError::Infrastructure(e)) => {
                let what = format!("ground truth of {}", question.id);
                match jail.after_failure(&what, &e, generation, attempt).await {
                    Ok(next) => attempt = next,
                    Err(_) => return Err(GroundTruthError::Infrastructure(e)),
                }
            }
            other => return other,
        }
    }
}

async fn answer_question(
    shared: &Shared,
    dataset: &Dataset,
    jail: &Jail,
    data_profile: &DataProfile,
    fingerprint: String,
    question: Question,
) -> Result<(), String> {
    let started = Instant::now();
    let slug = &dataset.slug;
    let teacher = shared.teacher.as_ref();
    let mut attempt = 1;
    let outcome = loop {
        if shared.model_failed().is_some() {
            // Left undone (no mark at all): the next run takes it up.
            return Ok(());
        }
        let (generation, sandbox) = jail.current().await;
        let outcome = teacher.answer(&sandbox, &question, data_profile).await;
        drop(sandbox);
        jail.harvest_faults().await;
        match outcome {
            Err(TeacherError::Infrastructure { error, usage, id }) => {
                // Never an episode: run the question again in a healthy
                // sandbox, within the retry and restart budgets.
                shared.add_usage(slug, &usage);
                let reason = match jail.after_failure(&id, &error, generation, attempt).await {
                    Ok(next) => {
                        attempt = next;
                        continue;
                    }
                    Err(GiveUp::Retries) => {
                        format!("{attempt} attempts failed on the infrastructure; last: {error}")
                    }
                    Err(GiveUp::Restarts(x)) => format!("{x} (while answering: {error})"),
                };
                break Err(("infrastructure", format!("question {id}: {reason}")));
            }
            Ok(run) => break Ok(run),
            Err(e) => {
                let stage = match &e {
                    TeacherError::Model { error, usage, .. } => {
                        shared.add_usage(slug, usage);
                        shared.record_model_failure(error);
                        "model"
                    }
                    _ => "teacher",
                };
                break Err((stage, e.to_string()));
            }
        }
    };
    let run = match outcome {
        Ok(run) => run,
        Err((stage, e)) => {
            let row = QuestionRow {
                fingerprint,
                dataset: slug.clone(),
                question_id: question.id.clone(),
                template: question.template_name.clone(),
                difficulty: question.difficulty.as_str().to_string(),
                status: "failed".into(),
                stage: stage.into(),
                reason: Some(e.to_string()),
                episode_id: None,
                elapsed: started.elapsed().as_secs_f64(),
            };
            warn!("question {}: {e}", question.id);
            shared
                .manifest
                .record_question(&row)
                .map_err(|e| e.to_string())?;
            shared.reporter.question_finished(slug, "failed");
            return Ok(());
        }
    };
    let usage = run.usage();
    if !usage.is_empty() {
        shared.add_usage(slug, &usage);
    }
    let verdict = triangulate(&question, &run.gold, &run.consistency);
    let consistency_elapsed: Vec<f64> = run.consistency.iter().map(|t| t.elapsed).collect();
    let all: Vec<f64> = std::iter::once(run.gold.elapsed)
        .chain(consistency_elapsed.iter().copied())
        .collect();
    let total_elapsed = started.elapsed().as_secs_f64();
    let mut question = question;
    question.programs = None;
    let episode = Episode {
        episode_id: fingerprint,
        timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        csv_source: dataset.csv.display().to_string(),
        source: question.source,
        dataset: slug.clone(),
        teacher: teacher.name().to_string(),
        question,
        gold_trace: run.gold,
        consistency_traces: run.consistency,
        verified: verdict.verified,
        triangulation: verdict.triangulation,
        timing: Timing {
            gold_elapsed: all[0],
            consistency_elapsed,
            total_elapsed,
            avg_elapsed: all.iter().sum::<f64>() / all.len() as f64,
        },
        reason: verdict.reason,
        diagnosis: verdict.diagnosis.map(|d| d.as_str().to_string()),
    };
    match &episode.reason {
        None => info!(
            "question {} ({}): verified",
            episode.question.id,
            episode.question.template_name.as_deref().unwrap_or("-")
        ),
        Some(reason) => warn!(
            "question {} ({}): not verified: {reason}",
            episode.question.id,
            episode.question.template_name.as_deref().unwrap_or("-")
        ),
    }
    // The episode line first, then the mark: a kill in between is repaired
    // on the next open (reconcile), never duplicated.
    shared
        .episodes
        .append(&episode)
        .map_err(|e| e.to_string())?;
    if let Ok(mut w) = shared.written.lock() {
        w.insert(episode.episode_id.clone());
    }
    let row = episode_row(&episode);
    shared
        .manifest
        .record_question(&row)
        .map_err(|e| e.to_string())?;
    shared.reporter.question_finished(slug, &row.status);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_exactly() {
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for q in 0..200 {
            let id = format!("q{q}");
            let owners = shards.iter().filter(|s| s.owns("penguins", &id)).count();
            assert_eq!(owners, 1, "{id} must belong to exactly one shard");
        }
    }
}
