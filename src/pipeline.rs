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
//!
//! The runtime has few threads, so nothing here blocks it: hashing a
//! dataset, every manifest write and every episode append (with its fsync)
//! run on tokio's blocking pool ([`Files`], [`dataset_hash_async`]).
//!
//! Submodules: `questions` (a dataset's questions and their ground truth),
//! `answer` (one question → one episode), `resume` (what is done, repair
//! after a kill), `summary` (what a run reports), `health` (the sandbox
//! kept alive).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn, Instrument};

mod answer;
mod health;
mod questions;
mod resume;
mod summary;

pub use health::{Exhausted, GiveUp, Incidents, Jail, Recovery};
pub use questions::{candidate_questions, questions_path};
pub use resume::episode_row;
pub use summary::{dataset_summary, write_summary, DatasetSummary, Failure, RunSummary};

use crate::datasets::Dataset;
use crate::llm::Chat;
use crate::profile::{profile, DataProfile, ProfileError};
use crate::questions::llm::{GenerationConfig, GenerationError};
use crate::questions::{self as question_catalog, Template};
use crate::sandbox::{Image, LimitChoice, Limits, SandboxError, SandboxOptions};
use crate::schema::{Question, Usage};
use crate::serve::source::TaskSource;
use crate::shards::{RunIdentity, RunRecord};
use crate::store::{
    self, DatasetRow, DatasetStatus, EpisodeLog, Manifest, OutputLock, QuestionRow, QuestionStatus,
    StoreError, EPISODES_FILE, MANIFEST_FILE,
};
use crate::teacher::Teacher;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] question_catalog::TemplateError),
    #[error("nothing to run: {0}")]
    Nothing(String),
    #[error(transparent)]
    Record(#[from] crate::shards::ShardError),
}

/// Why a dataset failed as a whole. Its text is the reason written to the
/// manifest, `summary.json` and the table, one line, so each message
/// includes its cause's; the cause stays reachable, typed, as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox could not be set up or started.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the file has a header but no data rows; add rows or remove the dataset")]
    NoRows,
    #[error("the file has {columns} column (pandas read it with separator {separator:?}); questions need at least two — check the separator or remove the dataset")]
    TooFewColumns { columns: u64, separator: String },
    #[error("profiling failed {attempts} times on infrastructure failures; last: {source}")]
    ProfileRetries {
        attempts: u32,
        #[source]
        source: SandboxError,
    },
    #[error("profiling failed: {0}")]
    Profile(#[source] ProfileError),
    /// The sandbox died more often than the restart budget allows.
    #[error(transparent)]
    Restarts(#[from] Exhausted),
    #[error("question generation failed: {0}")]
    Generation(#[source] GenerationError),
    /// The run's own files could not be written: its work was not kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing {}: {source}", path.display())]
    Task {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
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
    /// Pre-forked workers each sandbox keeps; None: the default policy
    /// ([`crate::capacity::spare_workers`] of `question_concurrency`).
    pub spare_workers: Option<usize>,
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
    /// Run every task in a session of this `csv-agent serve` instead of a
    /// sandbox of our own (`run --serve`).
    pub serve: Option<crate::serve::Endpoint>,
}

/// `--questions template|compose|llm|all`.
#[derive(Debug, Clone)]
pub struct QuestionSources {
    /// The template catalog (questions with reference programs and ground truth).
    pub template: bool,
    /// Composed questions (operator chains, docs/questions.md): seed and cap.
    pub compose: Option<crate::questions::compose::ComposeConfig>,
    /// Questions a model proposes after exploring the dataset.
    pub llm: Option<LlmQuestions>,
}

impl Default for QuestionSources {
    fn default() -> Self {
        QuestionSources {
            template: true,
            compose: None,
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
    fn question_finished(&self, slug: &str, status: QuestionStatus);
    fn dataset_finished(&self, summary: &DatasetSummary);
}

/// A reporter that says nothing (tests, library use).
pub struct Silent;

impl Reporter for Silent {
    fn dataset_started(&self, _: &str, _: usize, _: usize) {}
    fn question_finished(&self, _: &str, _: QuestionStatus) {}
    fn dataset_finished(&self, _: &DatasetSummary) {}
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

/// [`dataset_hash`] on the blocking pool: a large CSV takes seconds to
/// read, which would hold one of the runtime's few threads.
pub async fn dataset_hash_async(csv: &Path) -> Result<String, DatasetError> {
    let path = csv.to_path_buf();
    let owned = path.clone();
    match tokio::task::spawn_blocking(move || dataset_hash(&owned)).await {
        Ok(Ok(hash)) => Ok(hash),
        Ok(Err(source)) => Err(DatasetError::Read { path, source }),
        Err(source) => Err(DatasetError::Task { path, source }),
    }
}

/// The episode (and manifest) key of a question under a teacher's settings.
pub fn fingerprint(question: &Question, teacher: &dyn Teacher) -> String {
    question_catalog::template::short_hash(&format!("{}\n{}", question.id, teacher.settings()))
}

/// The run's two files as the async code uses them: every write (a SQLite
/// statement, an episode append and its fsync) runs on the blocking pool.
/// Reads of the manifest stay inline: indexed lookups of one row.
#[derive(Clone)]
pub(crate) struct Files {
    pub(crate) episodes: Arc<EpisodeLog>,
    pub(crate) manifest: Arc<Manifest>,
}

impl Files {
    /// Run `work` on the blocking pool. A panic inside is the caller's
    /// panic, raised again here; a task cancelled by the runtime shutting
    /// down is a store error (the write may not have happened).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Manifest, &EpisodeLog) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let files = self.clone();
        match tokio::task::spawn_blocking(move || work(&files.manifest, &files.episodes)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Cancelled),
        }
    }

    pub(crate) async fn record_question(&self, row: QuestionRow) -> Result<(), StoreError> {
        self.blocking(move |m, _| m.record_question(&row)).await
    }

    pub(crate) async fn record_dataset(&self, row: DatasetRow) -> Result<(), StoreError> {
        self.blocking(move |m, _| m.record_dataset(&row)).await
    }

    /// Append one episode line and sync it.
    pub(crate) async fn append(&self, episode: crate::schema::Episode) -> Result<(), StoreError> {
        self.blocking(move |_, log| log.append(&episode)).await
    }
}

struct Shared {
    settings: RunSettings,
    catalog: Vec<Template>,
    catalog_hash: String,
    teacher: Arc<dyn Teacher>,
    reporter: Arc<dyn Reporter>,
    files: Files,
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
    let (catalog, catalog_hash) = question_catalog::catalog_with(settings.templates.as_deref())?;
    // run.json: which run this output belongs to (shard sets), `running` until the end.
    let identity = RunIdentity::of(&settings, &catalog_hash, teacher.name(), teacher.settings());
    let record = RunRecord::start(&settings.out, identity, settings.shard)?;
    // Opening reads the whole episodes file (repair, ids, reconcile): on
    // the blocking pool, like every other file access of the run.
    let out = settings.out.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let episodes = EpisodeLog::open(&out.join(EPISODES_FILE))?;
        let manifest = Manifest::open(&out.join(MANIFEST_FILE))?;
        let written = episodes.ids()?;
        resume::reconcile(&out, &manifest, &written)?;
        Ok::<_, StoreError>((episodes, manifest, written))
    })
    .await;
    let (episodes, manifest, written) = match opened {
        Ok(result) => result?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return Err(StoreError::Cancelled.into()),
    };
    let shared = Arc::new(Shared {
        catalog_hash,
        catalog,
        teacher,
        reporter,
        files: Files {
            episodes: Arc::new(episodes),
            manifest: Arc::new(manifest),
        },
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
            status: DatasetStatus::Failed,
            reason: Some(reason.clone()),
            n_questions: 0,
            elapsed: 0.0,
        };
        shared.files.record_dataset(row.clone()).await?;
        let summary = dataset_summary(&shared.files.manifest, &row);
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
        d.compose = questions::read_compose_report(&shared.settings.out, &d.dataset);
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
    let out = shared.settings.out.clone();
    shared
        .files
        .blocking(move |_, _| write_summary(&out, &summary).map(|()| summary))
        .await
        .map_err(PipelineError::from)
        .and_then(|summary| {
            record.finish(&shared.settings.out, summary.exit_code())?;
            Ok(summary)
        })
}

async fn run_dataset(shared: &Shared, dataset: &Dataset) -> DatasetSummary {
    let started = Instant::now();
    let slug = dataset.slug.clone();
    let before = shared.files.manifest.dataset(&slug).ok().flatten();
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
                status: DatasetStatus::Done,
                reason: None,
                n_questions: n as u64,
                elapsed,
            };
            if let Err(e) = shared.files.record_dataset(row.clone()).await {
                warn!("could not record the dataset in the manifest: {e}");
            }
            dataset_summary(&shared.files.manifest, &row)
        }
        Err(error) => {
            let reason = error.to_string();
            warn!("dataset failed: {reason}");
            let row = DatasetRow {
                slug: slug.clone(),
                dataset_hash: before.as_ref().and_then(|r| r.dataset_hash.clone()),
                questions_key: None,
                status: DatasetStatus::Failed,
                reason: Some(reason),
                n_questions: 0,
                elapsed,
            };
            if let Err(e) = shared.files.record_dataset(row.clone()).await {
                warn!("could not record the dataset in the manifest: {e}");
            }
            dataset_summary(&shared.files.manifest, &row)
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

/// Returns (dataset hash, questions key if the questions file is complete,
/// number of questions) or the reason the dataset cannot be used.
async fn prepare_and_answer(
    shared: &Shared,
    dataset: &Dataset,
    started: Instant,
) -> Result<(String, Option<String>, usize), DatasetError> {
    let settings = &shared.settings;
    let slug = &dataset.slug;
    let hash = dataset_hash_async(&dataset.csv).await?;
    info!(
        "dataset {slug} ({}), content hash {hash}",
        dataset.csv.display()
    );
    // A finished dataset needs no sandbox: its questions are on file and
    // every one of them is done.
    if !settings.questions_only {
        if let Some(qs) = questions::reusable_questions(shared, slug, &hash).await {
            let teacher = shared.teacher.as_ref();
            if qs
                .iter()
                .all(|q| resume::is_done(shared, &fingerprint(q, teacher)))
            {
                info!("all {} questions already done", qs.len());
                shared.reporter.dataset_started(slug, qs.len(), qs.len());
                return Ok((
                    hash.clone(),
                    Some(questions::questions_key(shared, &hash)),
                    qs.len(),
                ));
            }
        }
    }
    let mut opts = SandboxOptions::new(&dataset.csv, settings.image.clone())?;
    opts.allow_degraded = settings.allow_degraded;
    opts.spare_workers = settings
        .spare_workers
        .unwrap_or_else(|| crate::capacity::spare_workers(settings.question_concurrency));
    opts.limits = Limits::for_dataset(crate::datasets::csv_bytes(&dataset.csv), settings.limits);
    info!(
        "limits: {} MiB per worker, cell timeout {} s",
        opts.limits.memory_bytes >> 20,
        opts.limits.cell_timeout.as_secs()
    );
    if let Some(init) = &settings.init_program {
        opts.init_program = init.clone();
    }
    let jail = match &settings.serve {
        None => Jail::start(opts, settings.recovery).await?,
        Some(endpoint) => {
            let csv = std::fs::canonicalize(&dataset.csv).map_err(|source| SandboxError::Io {
                what: format!("resolving {}", dataset.csv.display()),
                source,
            })?;
            let source = crate::serve::source::RemoteSource::connect(
                endpoint.clone(),
                csv,
                opts.limits.clone(),
            )
            .await?;
            Jail::remote(source, opts, settings.recovery)
        }
    };
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
async fn profile_dataset(jail: &Jail) -> Result<DataProfile, DatasetError> {
    let mut attempt = 1;
    loop {
        let (generation, sandbox) = jail.current().await;
        let mut task = sandbox.task();
        let outcome = profile(&mut task).await;
        drop(task);
        match outcome {
            Ok(p) => return Ok(p),
            Err(ProfileError::Sandbox(e)) if e.is_infrastructure() => {
                attempt = match jail.after_failure("profile", &e, generation, attempt).await {
                    Ok(next) => next,
                    Err(GiveUp::Retries) => {
                        return Err(DatasetError::ProfileRetries {
                            attempts: attempt,
                            source: e,
                        })
                    }
                    Err(GiveUp::Restarts(x)) => return Err(x.into()),
                };
            }
            Err(e) => return Err(DatasetError::Profile(e)),
        }
    }
}

async fn answer_dataset(
    shared: &Shared,
    dataset: &Dataset,
    jail: &Jail,
    hash: &str,
) -> Result<(Option<String>, usize), DatasetError> {
    let (_, sandbox) = jail.current().await;
    let ready = sandbox.zygote().clone();
    drop(sandbox);
    if ready.rows == 0 {
        return Err(DatasetError::NoRows);
    }
    if ready.columns < 2 {
        return Err(DatasetError::TooFewColumns {
            columns: ready.columns,
            separator: ready.separator,
        });
    }
    let data_profile = profile_dataset(jail).await?;
    let questions::Prepared {
        questions,
        complete,
        mut runs,
    } = questions::load_or_make_questions(shared, dataset, jail, hash, &data_profile).await?;
    let key = complete.then(|| questions::questions_key(shared, hash));
    let n = questions.len();
    if shared.settings.questions_only {
        return Ok((key, n));
    }

    let teacher = shared.teacher.as_ref();
    let mut todo = Vec::new();
    let mut already = 0;
    for q in questions {
        let fp = fingerprint(&q, teacher);
        let recorded = runs.remove(&q.id);
        if resume::is_done(shared, &fp) {
            already += 1;
        } else {
            todo.push((fp, q, recorded));
        }
    }
    drop(runs);
    info!(
        "{n} questions: {already} already done, {} to answer",
        todo.len()
    );
    shared.reporter.dataset_started(&dataset.slug, n, already);
    let concurrency = shared.settings.question_concurrency.max(1);
    let outcomes: Vec<Result<(), StoreError>> = stream::iter(todo)
        .map(|(fp, q, recorded)| {
            answer::answer_question(shared, dataset, jail, &data_profile, fp, q, recorded)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    // A question that could not be written stops nothing else, but a store
    // failure is a failure of the dataset: its work was not kept.
    if let Some(Err(e)) = outcomes.into_iter().find(|o| o.is_err()) {
        return Err(e.into());
    }
    Ok((key, n))
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
