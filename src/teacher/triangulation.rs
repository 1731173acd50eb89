//! Triangulation: is the gold answer the one independent runs agree on?
//! `verified` means the gold trace submitted, its answer matches the
//! majority of the consistency traces (tolerant matching, ties to the
//! earliest cluster), at least one consistency trace agrees with it, and,
//! where the question has ground truth, it matches that too.

use serde_json::Value;

use crate::answers::{answers_match, vote};
use crate::schema::{Question, Trace, Triangulation};

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub triangulation: Triangulation,
    pub verified: bool,
    /// Why not verified; None when verified.
    pub reason: Option<String>,
    /// The kind of failure; None when verified.
    pub diagnosis: Option<Diagnosis>,
}

/// Why an episode is not verified, as a category a user can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnosis {
    /// The gold trace, or every consistency trace, gave no answer.
    ExecutionFailure,
    /// The teacher with the hint got the answer (it matches the ground
    /// truth, or the ground truth is unknown) but the runs without the hint
    /// agree on something else.
    HintNecessary,
    /// The consistency traces split into several answers, none holding more
    /// than half of them.
    Ambiguous,
    /// The gold answer misses the ground truth, or nothing agrees.
    TooHard,
}

impl Diagnosis {
    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::ExecutionFailure => "execution_failure",
            Diagnosis::HintNecessary => "hint_necessary",
            Diagnosis::Ambiguous => "ambiguous",
            Diagnosis::TooHard => "too_hard",
        }
    }
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

pub fn triangulate(question: &Question, gold: &Trace, consistency: &[Trace]) -> Verdict {
    let answers: Vec<Option<&Value>> = consistency
        .iter()
        .map(|t| t.final_answer.as_ref().filter(|_| t.success))
        .collect();
    let outcome = vote(&answers);
    let majority = outcome.majority_cluster();
    let majority_answer = majority.and_then(|c| c.members.first().and_then(|&i| answers[i]));
    let gold_answer = gold.final_answer.as_ref().filter(|_| gold.success);
    let gold_matches_majority = match (gold_answer, majority_answer) {
        (Some(g), Some(m)) => answers_match(g, m),
        _ => false,
    };
    let agreeing = match gold_answer {
        Some(g) => answers
            .iter()
            .flatten()
            .filter(|a| answers_match(g, a))
            .count(),
        None => 0,
    };
    let gold_matches_ground_truth = question
        .ground_truth
        .as_ref()
        .map(|truth| gold_answer.is_some_and(|g| answers_match(g, truth)));
    let mut cluster_sizes: Vec<u32> = outcome
        .clusters
        .iter()
        .map(|c| c.members.len() as u32)
        .collect();
    cluster_sizes.sort_by(|a, b| b.cmp(a));
    let succeeded = answers.iter().flatten().count();

    let reason = if let (false, Some(e)) = (gold.success, &gold.error) {
        Some(format!("gold trace failed: {e}"))
    } else if gold_answer.is_none() {
        Some("gold trace gave no answer".to_string())
    } else if succeeded == 0 {
        let why: Vec<String> = consistency
            .iter()
            .map(|t| format!("{}: {}", t.label, t.error.as_deref().unwrap_or("no answer")))
            .collect();
        Some(format!(
            "no consistency trace succeeded ({})",
            why.join("; ")
        ))
    } else if !gold_matches_majority || agreeing == 0 {
        let disagreeing: Vec<String> = consistency
            .iter()
            .zip(&answers)
            .filter_map(|(t, a)| {
                let a = (*a)?;
                (!gold_answer.is_some_and(|g| answers_match(g, a)))
                    .then(|| format!("{} gave {}", t.label, shown(a)))
            })
            .collect();
        Some(format!(
            "programs disagree: gold gave {}; {}",
            gold_answer.map(shown).unwrap_or_default(),
            disagreeing.join("; ")
        ))
    } else if gold_matches_ground_truth == Some(false) {
        Some(format!(
            "gold answer {} differs from the ground truth {}",
            gold_answer.map(shown).unwrap_or_default(),
            question
                .ground_truth
                .as_ref()
                .map(shown)
                .unwrap_or_default()
        ))
    } else {
        None
    };
    let diagnosis = reason.as_ref().map(|_| {
        let largest = cluster_sizes.first().copied().unwrap_or(0) as usize;
        if gold_answer.is_none() || succeeded == 0 {
            Diagnosis::ExecutionFailure
        } else if gold_matches_ground_truth == Some(false) {
            Diagnosis::TooHard
        } else if cluster_sizes.len() > 1 && 2 * largest <= succeeded {
            Diagnosis::Ambiguous
        } else if !gold_matches_majority || agreeing == 0 {
            Diagnosis::HintNecessary
        } else {
            Diagnosis::TooHard
        }
    });
    Verdict {
        diagnosis,
        triangulation: Triangulation {
            n_consistency_runs: consistency.len() as u32,
            n_consistency_succeeded: succeeded as u32,
            majority_answer_hash: majority.map(|c| c.hash.clone()),
            majority_count: majority.map(|c| c.members.len() as u32).unwrap_or(0),
            gold_matches_majority,
            n_consistency_agreeing: agreeing as u32,
            gold_matches_ground_truth,
            cluster_sizes,
        },
        verified: reason.is_none(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Difficulty, QuestionSource};
    use serde_json::json;

    fn trace(label: &str, answer: Option<Value>) -> Trace {
        Trace {
            turns: Vec::new(),
            final_answer_hash: answer.as_ref().map(crate::answers::answer_hash),
            success: answer.is_some(),
            error: answer
                .is_none()
                .then(|| "step 1: ValueError: boom".to_string()),
            final_answer: answer,
            label: label.into(),
            ..Trace::default()
        }
    }

    fn question(truth: Option<Value>) -> Question {
        Question {
            id: "q".into(),
            question_text: "?".into(),
            hint: None,
            difficulty: Difficulty::Easy,
            n_steps: 1,
            template_name: None,
            template_params: None,
            output_type: None,
            output_schema: None,
            ground_truth_hash: None,
            ground_truth_hashes: Vec::new(),
            ground_truth: truth,
            source: QuestionSource::Template,
            dataset: "d".into(),
            dataset_hash: "h".into(),
            programs: None,
        }
    }

    #[test]
    fn agreement_within_tolerance_verifies() {
        let v = triangulate(
            &question(Some(json!(4.2))),
            &trace("reference", Some(json!(4.2))),
            &[trace("a", Some(json!(4.25))), trace("b", Some(json!(4.21)))],
        );
        assert!(v.verified, "{:?}", v.reason);
        assert_eq!(v.triangulation.majority_count, 2);
        assert_eq!(v.triangulation.n_consistency_agreeing, 2);
        assert_eq!(v.triangulation.gold_matches_ground_truth, Some(true));
    }

    #[test]
    fn a_disagreeing_program_is_reported_by_name() {
        let v = triangulate(
            &question(None),
            &trace("reference", Some(json!(1))),
            &[trace("by_hand", Some(json!(2)))],
        );
        assert!(!v.verified);
        let reason = v.reason.unwrap();
        assert!(
            reason.contains("programs disagree") && reason.contains("by_hand gave 2"),
            "{reason}"
        );
    }

    #[test]
    fn falsy_answers_count_and_failures_do_not() {
        let v = triangulate(
            &question(Some(json!(0))),
            &trace("reference", Some(json!(0))),
            &[trace("a", None), trace("b", Some(json!(0)))],
        );
        assert!(v.verified, "{:?}", v.reason);
        assert_eq!(v.triangulation.n_consistency_succeeded, 1);
        let v = triangulate(
            &question(None),
            &trace("reference", Some(json!(0))),
            &[trace("a", None)],
        );
        assert!(!v.verified);
        assert!(v.reason.unwrap().contains("no consistency trace succeeded"));
    }

    #[test]
    fn ground_truth_must_agree_too() {
        let v = triangulate(
            &question(Some(json!("Adelie"))),
            &trace("reference", Some(json!("Gentoo"))),
            &[trace("a", Some(json!("gentoo")))],
        );
        assert!(!v.verified);
        assert_eq!(v.triangulation.gold_matches_ground_truth, Some(false));
    }

    #[test]
    fn a_failed_gold_trace_is_the_reason() {
        let v = triangulate(
            &question(None),
            &trace("reference", None),
            &[trace("a", Some(json!(1)))],
        );
        assert!(v.reason.unwrap().starts_with("gold trace failed"));
    }

    #[test]
    fn each_diagnosis_names_its_case() {
        let d = |truth: Option<Value>, gold: Option<Value>, others: Vec<Option<Value>>| {
            let consistency: Vec<Trace> = others
                .into_iter()
                .enumerate()
                .map(|(i, a)| trace(&format!("c{i}"), a))
                .collect();
            triangulate(&question(truth), &trace("gold", gold), &consistency)
                .diagnosis
                .map(Diagnosis::as_str)
        };
        assert_eq!(d(None, Some(json!(1)), vec![Some(json!(1))]), None);
        assert_eq!(
            d(None, None, vec![Some(json!(1))]),
            Some("execution_failure")
        );
        assert_eq!(
            d(None, Some(json!(1)), vec![None, None]),
            Some("execution_failure")
        );
        assert_eq!(
            d(None, Some(json!(1)), vec![Some(json!(2)), Some(json!(2))]),
            Some("hint_necessary")
        );
        assert_eq!(
            d(
                Some(json!(1)),
                Some(json!(1)),
                vec![Some(json!(2)), Some(json!(2))]
            ),
            Some("hint_necessary")
        );
        assert_eq!(
            d(
                None,
                Some(json!(1)),
                vec![
                    Some(json!(2)),
                    Some(json!(3)),
                    Some(json!(4)),
                    Some(json!(1))
                ]
            ),
            Some("ambiguous")
        );
        assert_eq!(
            d(Some(json!(5)), Some(json!(1)), vec![Some(json!(1))]),
            Some("too_hard")
        );
    }
}
