//! Triangulation: is the gold answer the one independent runs agree on?
//! `verified` means the gold trace submitted, its answer matches the
//! majority of the consistency traces (tolerant matching, ties to the
//! earliest cluster), at least one consistency trace agrees with it, and,
//! where the question has ground truth, it matches that too.
//!
//! The verdict also names the reference answer (the gold answer when it
//! matches the majority, else the majority's) and says of every trace
//! whether it agrees with it. This is the only place that decides which
//! trace is right: the training formats read those labels from the episode
//! and never vote again ([`trace_labels`] recomputes them here, with this
//! same function, for episodes written before they were stored).

use std::borrow::Cow;

use serde_json::Value;

use crate::answers::{answers_match, vote};
use crate::schema::{Episode, Question, Trace, TraceVerdict, Triangulation};

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

/// One trace against the reference answer: only a trace that succeeded
/// counts, as in the vote.
fn trace_verdict(trace: &Trace, reference: Option<&Value>) -> TraceVerdict {
    let why_not = match (
        trace.final_answer.as_ref().filter(|_| trace.success),
        reference,
    ) {
        (_, None) => Some("no reference answer: no consistency trace answered".to_string()),
        (None, _) => Some(match (&trace.error, &trace.final_answer) {
            (Some(e), _) => format!("the trace failed: {e}"),
            (None, Some(_)) => "the trace failed after its answer".to_string(),
            (None, None) => "the trace gave no answer".to_string(),
        }),
        (Some(a), Some(r)) if !answers_match(a, r) => {
            Some(format!("gave {}, the reference is {}", shown(a), shown(r)))
        }
        (Some(_), Some(_)) => None,
    };
    TraceVerdict {
        agrees: why_not.is_none(),
        why_not,
    }
}

/// The stored verdict of an episode, or, for an episode written before
/// per-trace verdicts were stored, the one [`triangulate`] gives now.
pub fn episode_triangulation(episode: &Episode) -> Cow<'_, Triangulation> {
    let stored = &episode.triangulation;
    if stored.trace_verdicts.len() == 1 + episode.consistency_traces.len() {
        Cow::Borrowed(stored)
    } else {
        Cow::Owned(
            triangulate(
                &episode.question,
                &episode.gold_trace,
                &episode.consistency_traces,
            )
            .triangulation,
        )
    }
}

/// The reference answer and the per-trace labels ([gold, consistency…])
/// of an episode, from its verdict: `None` when there is no reference.
pub fn trace_labels(episode: &Episode) -> Option<(&Value, Vec<TraceVerdict>)> {
    let tri = episode_triangulation(episode);
    let index = tri.reference_trace? as usize;
    let trace = if index == 0 {
        &episode.gold_trace
    } else {
        episode.consistency_traces.get(index - 1)?
    };
    let reference = trace.final_answer.as_ref()?;
    Some((reference, tri.into_owned().trace_verdicts))
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
    // The reference: the gold answer when it is the majority's, otherwise
    // the majority cluster's first member (ties went to the earliest
    // cluster, as for `verified`).
    let reference: Option<(u32, &Value)> = if gold_matches_majority {
        gold_answer.map(|g| (0, g))
    } else {
        majority.and_then(|c| {
            let first = *c.members.first()?;
            answers[first].map(|a| (first as u32 + 1, a))
        })
    };
    let trace_verdicts: Vec<TraceVerdict> = std::iter::once(gold)
        .chain(consistency.iter())
        .map(|t| trace_verdict(t, reference.map(|(_, r)| r)))
        .collect();
    Verdict {
        diagnosis,
        triangulation: Triangulation {
            reference_trace: reference.map(|(i, _)| i),
            trace_verdicts,
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
            category: None,
            composition: None,
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

    #[test]
    fn every_trace_gets_a_label_and_failed_traces_never_agree() {
        let mut late_failure = trace("b", Some(json!(1)));
        late_failure.success = false;
        late_failure.error = Some("step 2: boom".into());
        let v = triangulate(
            &question(None),
            &trace("reference", Some(json!(1))),
            &[
                trace("a", Some(json!(1))),
                late_failure,
                trace("c", Some(json!(2))),
            ],
        );
        assert!(v.verified, "{:?}", v.reason);
        assert_eq!(v.triangulation.reference_trace, Some(0));
        let agrees: Vec<bool> = v
            .triangulation
            .trace_verdicts
            .iter()
            .map(|t| t.agrees)
            .collect();
        assert_eq!(agrees, [true, true, false, false]);
        let why = |i: usize| v.triangulation.trace_verdicts[i].why_not.clone().unwrap();
        assert!(why(2).contains("step 2: boom"), "{}", why(2));
        assert!(why(3).contains("gave 2"), "{}", why(3));
    }

    #[test]
    fn a_tie_is_judged_against_the_earliest_cluster() {
        let v = triangulate(
            &question(None),
            &trace("reference", Some(json!(1))),
            &[trace("a", Some(json!(2))), trace("b", Some(json!(3)))],
        );
        assert!(!v.verified);
        assert_eq!(v.triangulation.reference_trace, Some(1));
        let agrees: Vec<bool> = v
            .triangulation
            .trace_verdicts
            .iter()
            .map(|t| t.agrees)
            .collect();
        assert_eq!(agrees, [false, true, false]);
        let none = triangulate(
            &question(None),
            &trace("reference", Some(json!(1))),
            &[trace("a", None)],
        );
        assert_eq!(none.triangulation.reference_trace, None);
        assert!(none.triangulation.trace_verdicts.iter().all(|t| !t.agrees));
    }
}
