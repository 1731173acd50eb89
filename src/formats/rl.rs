//! `rl`: prompt-only rows for online RL (TRL's `GRPOTrainer`,
//! `RLOOTrainer`): the prompt the policy sees (system prompt and question,
//! no hint) and what its rollout is scored against: the reference answer
//! (as JSON text: answers differ in type from row to row and a `datasets`
//! column needs one type), its hash, the question's ground-truth hashes, the
//! hashes of the values the reference trace hooked, the CSV to load as `df`,
//! the question id and difficulty.
//!
//! [`reward`] is the score, the same in Rust and in docs/formats.md:
//! `1.0` when the submitted answer matches, plus [`HOOK_WEIGHT`] times the
//! share of expected hook values the rollout also hooked.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use super::{
    played_turns, prompt_messages, system_prompt, to_line, Ctx, FormatError, Judged, Message,
};
use crate::answers::{answer_hash, answers_match};

/// Weight of the hook term: a rollout that hooks every expected value and
/// submits the right answer scores `1.0 + HOOK_WEIGHT`; one that gets the
/// intermediate values right but the answer wrong keeps some credit.
pub const HOOK_WEIGHT: f64 = 0.25;

#[derive(Serialize)]
struct Record<'a> {
    prompt: Vec<Message>,
    /// The reference answer as JSON text.
    answer: String,
    answer_hash: String,
    ground_truth_hashes: &'a [String],
    /// Distinct `value_hash`es of the reference trace's hooks, in order.
    hook_hashes: Vec<&'a str>,
    /// The CSV file (`csv_source`), loaded as `df` for the rollout.
    dataset: &'a str,
    question_id: &'a str,
    difficulty: &'static str,
}

pub(super) fn records(judged: &Judged<'_>, _ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let e = judged.episode;
    // The expected hooks come from one trace (the gold one when it agrees):
    // other programs hook other intermediate values.
    let mut seen = HashSet::new();
    let hook_hashes: Vec<&str> = judged
        .agreeing()
        .next()
        .map(|t| played_turns(t.trace))
        .unwrap_or_default()
        .iter()
        .flat_map(|turn| &turn.execution.hooks)
        // A model's hook whose code line is not in its code says nothing
        // trustworthy about where the value came from.
        .filter(|h| h.grounded != Some(false))
        .map(|h| h.value_hash.as_str())
        .filter(|h| !h.is_empty() && seen.insert(*h))
        .collect();
    let record = Record {
        prompt: prompt_messages(system_prompt(), &e.question, false),
        answer: serde_json::to_string(judged.reference).map_err(FormatError::Serialize)?,
        answer_hash: answer_hash(judged.reference),
        ground_truth_hashes: &e.question.ground_truth_hashes,
        hook_hashes,
        dataset: &e.csv_source,
        question_id: &e.question.id,
        difficulty: e.question.difficulty.as_str(),
    };
    Ok(vec![to_line(&record)?])
}

/// What a rollout is scored against: the fields of an `rl` row (with
/// `answer` parsed from its JSON text).
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub answer: &'a Value,
    pub answer_hash: &'a str,
    pub ground_truth_hashes: &'a [String],
    pub hook_hashes: &'a [String],
}

/// The reward of one rollout: `submitted` is the value it passed to
/// `submit()` (none if it never did), `hook_hashes` the `value_hash` of
/// every hook it recorded.
///
/// `reward = 1.0 × answer_ok + HOOK_WEIGHT × matched / expected`, where
/// `answer_ok` is 1 when the submitted answer's hash is `answer_hash` or one
/// of `ground_truth_hashes`, or it matches `answer` with the tolerant
/// `answers_match`, else 0; `matched` counts the distinct expected hook
/// hashes found among the rollout's; the hook term is 0 when no hook is
/// expected. Hooking extra values neither helps nor costs.
pub fn reward(expected: &Expected<'_>, submitted: Option<&Value>, hook_hashes: &[&str]) -> f64 {
    let answer_ok = submitted.is_some_and(|s| {
        let h = answer_hash(s);
        h == expected.answer_hash
            || expected.ground_truth_hashes.contains(&h)
            || answers_match(s, expected.answer)
    });
    let wanted: HashSet<&str> = expected.hook_hashes.iter().map(String::as_str).collect();
    let hook_share = if wanted.is_empty() {
        0.0
    } else {
        let produced: HashSet<&str> = hook_hashes.iter().copied().collect();
        wanted.intersection(&produced).count() as f64 / wanted.len() as f64
    };
    f64::from(u8::from(answer_ok)) + HOOK_WEIGHT * hook_share
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_right_answer_with_every_hook_scores_the_maximum() {
        let answer = json!({"level": "male", "mean": 204.506});
        let hooks = vec!["h1".to_string(), "h2".to_string()];
        let hash = answer_hash(&answer);
        let e = Expected {
            answer: &answer,
            answer_hash: &hash,
            ground_truth_hashes: &[],
            hook_hashes: &hooks,
        };
        assert!(approx(
            reward(&e, Some(&answer), &["h1", "h2", "extra"]),
            1.0 + HOOK_WEIGHT
        ));
        assert!(approx(reward(&e, Some(&answer), &[]), 1.0));
        // Half the hooks, wrong answer: partial credit only.
        let wrong = json!({"level": "female", "mean": 197.36});
        assert!(approx(
            reward(&e, Some(&wrong), &["h2", "h2"]),
            HOOK_WEIGHT / 2.0
        ));
        assert!(approx(reward(&e, None, &[]), 0.0));
    }

    #[test]
    fn answers_match_within_tolerance_or_by_a_ground_truth_hash() {
        let answer = json!(220.9);
        let gt = vec![answer_hash(&json!(221))];
        let e = Expected {
            answer: &answer,
            answer_hash: "not-this",
            ground_truth_hashes: &gt,
            hook_hashes: &[],
        };
        assert!(approx(reward(&e, Some(&json!(220.95)), &[]), 1.0));
        assert!(approx(reward(&e, Some(&json!(221)), &[]), 1.0));
        assert!(approx(reward(&e, Some(&json!(230)), &["x"]), 0.0));
    }
}
