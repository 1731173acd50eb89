//! Questions: the template catalog expanded over a dataset profile, and the
//! ground truth of each question established by running its reference
//! program (and its alternatives) in jailed workers.

pub mod template;

use futures::future::join_all;

use crate::answers::{answer_hash, answers_match};
use crate::runner::run_steps;
use crate::sandbox::Sandbox;
use crate::schema::{ProgramStep, Question};

pub use template::{catalog, catalog_hash, Template, TemplateError};

/// Why a question has no ground truth.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct QuestionFailure {
    pub reason: String,
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
) -> Result<Question, QuestionFailure> {
    let Some(programs) = question.programs.clone() else {
        return Err(QuestionFailure {
            reason: "the question has no programs to compute its ground truth".into(),
        });
    };
    let alternatives: Vec<[ProgramStep; 1]> = programs
        .alternatives
        .iter()
        .map(|a| {
            [ProgramStep {
                reasoning: a.reasoning.clone(),
                code: a.code.clone(),
            }]
        })
        .collect();
    let reference = run_steps(sandbox, "reference", &programs.reference);
    let others = join_all(
        programs
            .alternatives
            .iter()
            .zip(&alternatives)
            .map(|(a, steps)| run_steps(sandbox, &a.name, steps)),
    );
    let (reference, others) = futures::join!(reference, others);
    let Some(truth) = reference.final_answer.clone().filter(|_| reference.success) else {
        return Err(QuestionFailure {
            reason: format!(
                "reference program failed: {}",
                reference.error.unwrap_or_else(|| "no answer".into())
            ),
        });
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
