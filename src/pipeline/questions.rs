//! A dataset's questions: the template catalog bound to its profile,
//! model questions, ground truth for each (retried in a healthy sandbox
//! after an infrastructure failure), and the questions file that a later
//! run reuses while its key (catalog, data, cap, shard, sources, memory)
//! is unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};
use tracing::{info, warn};

use super::{fingerprint, DatasetError, Jail, Shard, Shared};
use crate::datasets::Dataset;
use crate::profile::DataProfile;
use crate::questions::compose;
use crate::questions::llm as llm_questions;
use crate::questions::{self, establish_ground_truth, GroundTruthError, Template};
use crate::runner::ProgramRuns;
use crate::schema::Question;
use crate::store::{
    self, DatasetRow, DatasetStatus, QuestionRow, QuestionStatus, Stage, StoreError, QUESTIONS_DIR,
};

/// A question that got no ground truth: its row in the manifest (never
/// done, so the next run tries it again) and its tick in the progress.
async fn record_without_ground_truth(
    shared: &Shared,
    slug: &str,
    q: &Question,
    status: QuestionStatus,
    stage: Stage,
    reason: String,
) -> Result<(), StoreError> {
    let row = QuestionRow {
        fingerprint: fingerprint(q, shared.teacher.as_ref()),
        dataset: slug.to_string(),
        question_id: q.id.clone(),
        template: q.template_name.clone(),
        difficulty: q.difficulty.as_str().to_string(),
        status,
        stage,
        reason: Some(reason),
        episode_id: None,
        elapsed: 0.0,
    };
    shared.files.record_question(row).await?;
    shared.reporter.question_finished(slug, status);
    Ok(())
}

pub(super) fn questions_key(shared: &Shared, hash: &str) -> String {
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
    // Composed questions depend on the operators, the seed and their cap;
    // absent from the key when not composing, so template-only keys stay.
    let compose = sources
        .compose
        .map(|c| {
            format!(
                "\ncompose {} {} {}",
                c.seed,
                c.max_questions,
                compose::operators_hash()
            )
        })
        .unwrap_or_default();
    // The worker memory decides which templates bind ([cost]): a rerun with
    // another --memory makes the questions again.
    questions::template::short_hash(&format!(
        "{}\n{hash}\n{:?}\n{:?}\n{}\n{}\n{:?}{compose}",
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

/// Where the composer's report of a dataset goes (chains sampled,
/// refusals by guard), next to its questions file.
pub fn compose_report_path(out: &Path, slug: &str) -> PathBuf {
    out.join(QUESTIONS_DIR).join(format!("{slug}.compose.json"))
}

/// The composer's report of a dataset, if this output has one.
pub fn read_compose_report(out: &Path, slug: &str) -> Option<compose::ComposeReport> {
    let text = std::fs::read_to_string(compose_report_path(out, slug)).ok()?;
    serde_json::from_str(&text).ok()
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
pub(super) async fn reusable_questions(
    shared: &Shared,
    slug: &str,
    hash: &str,
) -> Option<Vec<Question>> {
    let key = questions_key(shared, hash);
    let row = shared.files.manifest.dataset(slug).ok().flatten()?;
    if row.questions_key.as_deref() != Some(key.as_str()) {
        return None;
    }
    let path = questions_path(&shared.settings.out, slug);
    // Thousands of questions with their programs: read off the runtime.
    let read = shared
        .files
        .blocking(move |_, _| {
            if !path.is_file() {
                return Ok(None);
            }
            store::read_jsonl::<Question>(&path).map(Some)
        })
        .await;
    match read {
        Ok(qs) => qs,
        Err(e) => {
            warn!("questions file unusable, making it again: {e}");
            None
        }
    }
}

/// A question with its ground truth and the runs that established it.
type GroundTruth = Result<(Question, ProgramRuns), GroundTruthError>;

/// A dataset's questions, ready to be answered.
pub(super) struct Prepared {
    pub questions: Vec<Question>,
    /// No ground truth was cut short by the infrastructure (an incomplete
    /// set is not reused by the next run).
    pub complete: bool,
    /// The programs' runs recorded while this run established the ground
    /// truth, by question id (empty when the questions came from a file):
    /// a teacher whose traces they are takes them instead of running the
    /// same programs again.
    pub runs: HashMap<String, ProgramRuns>,
}

/// The dataset's questions (from the questions file when it is reusable,
/// otherwise made and their ground truth established now).
pub(super) async fn load_or_make_questions(
    shared: &Shared,
    dataset: &Dataset,
    jail: &Jail,
    hash: &str,
    data_profile: &DataProfile,
) -> Result<Prepared, DatasetError> {
    let slug = &dataset.slug;
    let path = questions_path(&shared.settings.out, slug);
    let key = questions_key(shared, hash);
    if let Some(qs) = reusable_questions(shared, slug, hash).await {
        info!("reusing {} questions from {}", qs.len(), path.display());
        return Ok(Prepared {
            questions: qs,
            complete: true,
            runs: HashMap::new(),
        });
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
                    return Err(DatasetError::Generation(e));
                }
            }
        }
    }
    let mut candidates = if shared.settings.sources.template {
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
    info!("{} template questions apply", candidates.len());
    let mut complete = true;
    if let Some(config) = shared.settings.sources.compose {
        match compose_for(shared, jail, data_profile, slug, hash, config).await {
            Some(qs) => candidates.extend(qs),
            None => complete = false,
        }
    }
    info!("{} questions; establishing ground truth", candidates.len());
    // Failures from an older questions file are replaced by this attempt's.
    {
        let slug = slug.clone();
        shared
            .files
            .blocking(move |m, _| m.remove_questions_of(&slug))
            .await?;
    }
    let concurrency = shared.settings.question_concurrency.max(1);
    let results: Vec<(Question, GroundTruth)> = stream::iter(candidates)
        .map(|q| async move {
            let outcome = ground_truth_with_retries(jail, q.clone()).await;
            (q, outcome)
        })
        .buffered(concurrency)
        .collect()
        .await;
    let mut kept = Vec::new();
    let mut runs = HashMap::new();
    for (q, outcome) in results {
        match outcome {
            Ok((q, recorded)) => {
                runs.insert(q.id.clone(), recorded);
                kept.push(q);
            }
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
                    QuestionStatus::Failed,
                    Stage::Infrastructure,
                    format!("ground truth not established: {e}"),
                )
                .await?;
            }
            Err(GroundTruthError::Failure(failure)) => {
                let status = if failure.is_ineligible() {
                    QuestionStatus::Ineligible
                } else {
                    QuestionStatus::Failed
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
                    Stage::GroundTruth,
                    failure.reason,
                )
                .await?;
            }
        }
    }
    kept.extend(generated);
    let kept = shared
        .files
        .blocking(move |_, _| store::write_jsonl_atomic(&path, &kept).map(|()| kept))
        .await?;
    // The key is recorded now, so a killed run reuses these questions
    // (unless some are missing for lack of a sandbox).
    shared
        .files
        .record_dataset(DatasetRow {
            slug: slug.clone(),
            dataset_hash: Some(hash.to_string()),
            questions_key: complete.then_some(key),
            status: DatasetStatus::Running,
            reason: None,
            n_questions: kept.len() as u64,
            elapsed: 0.0,
        })
        .await?;
    Ok(Prepared {
        questions: kept,
        complete,
        runs,
    })
}

/// Ground truth of one question, run again in a healthy sandbox after an
/// infrastructure failure (at most `max_retries` times).
pub(super) async fn ground_truth_with_retries(jail: &Jail, question: Question) -> GroundTruth {
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

/// The dataset's composed questions (screened, deduplicated, sharded), or
/// None when screening was cut short by the infrastructure (the questions
/// file is then not reused).
async fn compose_for(
    shared: &Shared,
    jail: &Jail,
    data_profile: &DataProfile,
    slug: &str,
    hash: &str,
    config: compose::ComposeConfig,
) -> Option<Vec<Question>> {
    let ops = match compose::operators() {
        Ok(ops) => ops,
        Err(e) => {
            warn!("no composed questions: {e}");
            return Some(Vec::new());
        }
    };
    let (_, sandbox) = jail.current().await;
    let concurrency = shared.settings.question_concurrency.max(1);
    let outcome = compose::screen::compose_questions(
        &sandbox,
        &ops,
        data_profile,
        slug,
        hash,
        config,
        concurrency,
    )
    .await;
    let (mut qs, report) = match outcome {
        Ok(r) => r,
        Err(e) => {
            warn!("composed questions cut short by the infrastructure: {e}");
            return None;
        }
    };
    info!(
        "composed {} questions from {} candidates ({} chains sampled); refused: {:?}",
        report.kept, report.candidates, report.sampled_chains, report.refused
    );
    if let Some(shard) = shared.settings.shard {
        qs.retain(|q| shard.owns(slug, &q.id));
    }
    let path = compose_report_path(&shared.settings.out, slug);
    let bytes = serde_json::to_vec_pretty(&report).unwrap_or_default();
    if let Err(e) = store::write_atomic(&path, &bytes) {
        warn!("could not write {}: {e}", path.display());
    }
    Some(qs)
}
