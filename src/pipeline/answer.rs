//! One question answered: the teacher's traces (run again in a healthy
//! sandbox after an infrastructure failure), the verdict, the episode line
//! and then its mark in the manifest.

use std::time::Instant;

use tracing::{info, warn};

use super::resume::episode_row;
use super::{GiveUp, Jail, Shared};
use crate::datasets::Dataset;
use crate::profile::DataProfile;
use crate::runner::ProgramRuns;
use crate::schema::{Episode, Question, Timing};
use crate::store::{QuestionRow, QuestionStatus, Stage, StoreError};
use crate::teacher::{triangulate, TeacherError};

/// `recorded`: the question's programs as they ran for its ground truth in
/// this run, which the teacher takes as its traces when they are its own
/// (the program teacher), instead of running the same code again.
pub(super) async fn answer_question(
    shared: &Shared,
    dataset: &Dataset,
    jail: &Jail,
    data_profile: &DataProfile,
    fingerprint: String,
    question: Question,
    recorded: Option<ProgramRuns>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let slug = &dataset.slug;
    let teacher = shared.teacher.as_ref();
    let mut attempt = 1;
    // The runs recorded for the ground truth, when they are this teacher's
    // traces: nothing to run.
    let reused = recorded.and_then(|runs| teacher.recorded(&question, runs));
    let outcome = match reused {
        Some(run) => Ok(run),
        None => loop {
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
                            format!(
                                "{attempt} attempts failed on the infrastructure; last: {error}"
                            )
                        }
                        Err(GiveUp::Restarts(x)) => format!("{x} (while answering: {error})"),
                    };
                    break Err((Stage::Infrastructure, format!("question {id}: {reason}")));
                }
                Ok(run) => break Ok(run),
                Err(e) => {
                    let stage = match &e {
                        TeacherError::Model { error, usage, .. } => {
                            shared.add_usage(slug, usage);
                            shared.record_model_failure(error);
                            Stage::Model
                        }
                        _ => Stage::Teacher,
                    };
                    break Err((stage, e.to_string()));
                }
            }
        },
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
                status: QuestionStatus::Failed,
                stage,
                reason: Some(e.clone()),
                episode_id: None,
                elapsed: started.elapsed().as_secs_f64(),
            };
            warn!("question {}: {e}", question.id);
            shared.files.record_question(row).await?;
            shared
                .reporter
                .question_finished(slug, QuestionStatus::Failed);
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
    let row = episode_row(&episode);
    let id = episode.episode_id.clone();
    shared.files.append(episode).await?;
    if let Ok(mut w) = shared.written.lock() {
        w.insert(id);
    }
    let status = row.status;
    shared.files.record_question(row).await?;
    shared.reporter.question_finished(slug, status);
    Ok(())
}
