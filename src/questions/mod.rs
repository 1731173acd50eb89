//! Questions: the template catalog expanded over a dataset profile, and the
//! ground truth of each question established by running its reference
//! program (and its alternatives) in jailed workers.

pub mod llm;
pub mod template;

use crate::answers::{answer_hash, answers_match};
use crate::runner::{run_programs, Infra};
use crate::sandbox::Sandbox;
use crate::schema::Question;

pub use template::{catalog, catalog_hash, catalog_with, Template, TemplateError};

/// Why a question has no ground truth.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct QuestionFailure {
    pub reason: String,
}

/// Why ground truth was not established: a fact about the question, or an
/// infrastructure failure (to be retried, never stored).
#[derive(Debug, thiserror::Error)]
pub enum GroundTruthError {
    #[error(transparent)]
    Failure(#[from] QuestionFailure),
    #[error(transparent)]
    Infrastructure(#[from] Infra),
}

/// Run the question's reference program (every step in one worker) and each
/// alternative (each in a fresh worker), concurrently. The reference answer
/// is the ground truth; every distinct hash of an answer that matches it
/// (an alternative may round differently) goes into `ground_truth_hashes`.
/// An alternative that disagrees is left out here; the teacher's
/// triangulation records the disagreement with its reason.
pub async fn establish_ground_truth(
    sandbox: &Sandbox,
    mut question: Question,
) -> Result<Question, GroundTruthError> {
    let Some(programs) = question.programs.clone() else {
        return Err(QuestionFailure {
            reason: "the question has no programs to compute its ground truth".into(),
        }
        .into());
    };
    let (reference, others) = run_programs(sandbox, &programs).await?;
    let Some(truth) = reference.final_answer.clone().filter(|_| reference.success) else {
        return Err(QuestionFailure {
            reason: format!(
                "reference program failed: {}",
                reference.error.unwrap_or_else(|| "no answer".into())
            ),
        }
        .into());
    };
    let mut hashes = vec![answer_hash(&truth)];
    for trace in &others {
        if let Some(answer) = trace.final_answer.as_ref().filter(|_| trace.success) {
            let h = answer_hash(answer);
            if answers_match(&truth, answer) && !hashes.contains(&h) {
                hashes.push(h);
            }
        }
    }
    question.ground_truth_hash = Some(hashes[0].clone());
    question.ground_truth = Some(truth);
    question.ground_truth_hashes = hashes;
    Ok(question)
}
