//! Questions: the template catalog expanded over a dataset profile, and the
//! ground truth of each question established by running its reference
//! program (and its alternatives) in jailed workers.

pub mod compose;
pub mod llm;
pub mod template;

use crate::answers::{answer_hash, answers_match};
use crate::runner::{run_programs, Infra, ProgramRuns};
use crate::schema::Question;
use crate::serve::source::TaskSource;

pub use template::{catalog, catalog_hash, catalog_with, Template, TemplateError};

/// Why a question has no ground truth.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct QuestionFailure {
    pub reason: String,
    /// Failed (a program broke: a bug to look at) or ineligible (the
    /// programs ran, but the binding has no meaningful answer on this data).
    pub kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The reference program failed: recorded as a failure.
    Failed,
    /// The reference answer is degenerate (NaN, infinite, undefined): the
    /// binding is ineligible, counted by reason, neither an episode nor a
    /// failure.
    Ineligible,
}

impl QuestionFailure {
    fn failed(reason: String) -> QuestionFailure {
        QuestionFailure {
            reason,
            kind: FailureKind::Failed,
        }
    }

    pub fn is_ineligible(&self) -> bool {
        self.kind == FailureKind::Ineligible
    }
}

/// Where an answer is degenerate: the path of its first null (the worker
/// turns NaN and infinities into null, and a program submits None when no
/// data qualifies), or None when every value is defined.
pub fn degenerate_at(answer: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(value: &Value, path: &str) -> Option<String> {
        match value {
            Value::Null => Some(if path.is_empty() {
                "the answer".to_string()
            } else {
                path.to_string()
            }),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, &format!("{path}[{i}]"))),
            Value::Object(map) => map.iter().find_map(|(k, v)| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p)
            }),
            _ => None,
        }
    }
    walk(answer, "")
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
/// triangulation records the disagreement with its reason. A degenerate
/// reference answer ([`degenerate_at`]) makes the question ineligible.
///
/// The runs come back with the question: they are the traces a teacher
/// that runs these same programs would record (the program teacher), so
/// they are kept instead of executed again.
pub async fn establish_ground_truth(
    sandbox: &dyn TaskSource,
    mut question: Question,
) -> Result<(Question, ProgramRuns), GroundTruthError> {
    let Some(programs) = question.programs.clone() else {
        return Err(QuestionFailure::failed(
            "the question has no programs to compute its ground truth".into(),
        )
        .into());
    };
    let runs = run_programs(sandbox, &programs).await?;
    let reference = &runs.reference;
    let Some(truth) = reference.final_answer.clone().filter(|_| reference.success) else {
        return Err(QuestionFailure::failed(format!(
            "reference program failed: {}",
            reference.error.as_deref().unwrap_or("no answer")
        ))
        .into());
    };
    if let Some(at) = degenerate_at(&truth) {
        return Err(QuestionFailure {
            reason: format!("degenerate answer: {at} is NaN, infinite or undefined"),
            kind: FailureKind::Ineligible,
        }
        .into());
    }
    let mut hashes = vec![answer_hash(&truth)];
    for trace in &runs.alternatives {
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
    Ok((question, runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn degenerate_answers_are_found_where_they_are() {
        assert_eq!(degenerate_at(&json!({"f": 1.5, "p": 0.01})), None);
        assert_eq!(degenerate_at(&json!("x")), None);
        assert_eq!(
            degenerate_at(&json!({"f_statistic": -0.0, "p_value": null})),
            Some("p_value".into())
        );
        assert_eq!(
            degenerate_at(&json!({"a": {"b": [1, null]}})),
            Some("a.b[1]".into())
        );
        assert_eq!(degenerate_at(&json!(null)), Some("the answer".into()));
    }
}
