//! `POST /v1/score`: the tolerant match and the documented `rl` reward of a
//! submitted answer, so that a trainer needs no Rust.
//!
//! What an answer is scored against comes either from a file the server was
//! given (`--questions FILE`: rows of `export --format rl`, or a run's
//! `questions/<slug>.jsonl`), named by question id, or inline in the request
//! (the `rl` row's columns). The score itself is [`formats::reward`]; the
//! match is that reward with no hook term, so there is one rule for both.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ServeError;
use crate::answers::answer_hash;
use crate::formats::rl::{reward, Expected as RlExpected, HOOK_WEIGHT};

/// What a rollout is scored against (owned; the `rl` row's columns).
#[derive(Debug, Clone, Deserialize)]
pub struct Expected {
    pub answer: Value,
    /// Computed from `answer` when absent.
    #[serde(default)]
    pub answer_hash: Option<String>,
    #[serde(default)]
    pub ground_truth_hashes: Vec<String>,
    #[serde(default)]
    pub hook_hashes: Vec<String>,
}

/// Expected answers by question id.
#[derive(Debug, Default)]
pub struct Questions {
    by_id: HashMap<String, Expected>,
}

/// A hook as a client sends it: the cell's hook object, or its hash.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HookIn {
    Hash(String),
    Object { value_hash: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[serde(default)]
    pub question_id: Option<String>,
    #[serde(default)]
    pub expected: Option<Expected>,
    /// The value passed to `submit()` (a cell's `submitted.value`); absent
    /// or null: the rollout never submitted.
    #[serde(default)]
    pub submitted: Option<Value>,
    #[serde(default)]
    pub hooks: Vec<HookIn>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Score {
    /// The tolerant match (hash, a ground-truth hash, or `answers_match`).
    #[serde(rename = "match")]
    pub matched: bool,
    /// `1.0 × match + HOOK_WEIGHT × hooks_matched / hooks_expected`.
    pub reward: f64,
    pub hooks_expected: usize,
    pub hooks_matched: usize,
    pub hook_weight: f64,
}

/// Why a score request cannot be answered (all 4xx).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoreError {
    #[error("give exactly one of question_id and expected")]
    Ambiguous,
    #[error("unknown question id {0:?} (the server was given {1} questions)")]
    UnknownQuestion(String, usize),
}

impl Questions {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Read `rl` rows (`question_id`, `answer` as JSON text, hashes) or
    /// question lines (`id`, `ground_truth`, `ground_truth_hashes`). A
    /// question without ground truth is skipped; a line that is neither is
    /// an error naming it.
    pub fn load(paths: &[PathBuf]) -> Result<Questions, ServeError> {
        let mut q = Questions::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
                what: "reading the questions file",
                path: path.clone(),
                source,
            })?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |reason: String| ServeError::Questions {
                    path: path.clone(),
                    line: i + 1,
                    reason,
                };
                let row: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                if let Some((id, e)) = parse_row(&row).map_err(bad)? {
                    q.by_id.insert(id, e);
                }
            }
        }
        Ok(q)
    }

    pub fn insert(&mut self, id: String, expected: Expected) {
        self.by_id.insert(id, expected);
    }

    /// Score one request.
    pub fn score(&self, req: &ScoreRequest) -> Result<Score, ScoreError> {
        let expected = match (&req.question_id, &req.expected) {
            (Some(id), None) => self
                .by_id
                .get(id)
                .ok_or_else(|| ScoreError::UnknownQuestion(id.clone(), self.by_id.len()))?,
            (None, Some(e)) => e,
            _ => return Err(ScoreError::Ambiguous),
        };
        let hashes: Vec<&str> = req
            .hooks
            .iter()
            .map(|h| match h {
                HookIn::Hash(s) => s.as_str(),
                HookIn::Object { value_hash } => value_hash.as_str(),
            })
            .collect();
        let submitted = req.submitted.as_ref().filter(|v| !v.is_null());
        Ok(score(expected, submitted, &hashes))
    }
}

fn parse_row(row: &Value) -> Result<Option<(String, Expected)>, String> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(id) = row.get("question_id").and_then(Value::as_str) {
        // An rl row: the answer is JSON text.
        let text = row
            .get("answer")
            .and_then(Value::as_str)
            .ok_or("an rl row without a string `answer`")?;
        let answer: Value =
            serde_json::from_str(text).map_err(|e| format!("`answer` is not JSON text: {e}"))?;
        let e = Expected {
            answer,
            answer_hash: row
                .get("answer_hash")
                .and_then(Value::as_str)
                .map(str::to_string),
            ground_truth_hashes: strings(row.get("ground_truth_hashes")),
            hook_hashes: strings(row.get("hook_hashes")),
        };
        return Ok(Some((id.to_string(), e)));
    }
    if let Some(id) = row.get("id").and_then(Value::as_str) {
        let Some(answer) = row.get("ground_truth").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let e = Expected {
            answer: answer.clone(),
            answer_hash: row
                .get("ground_truth_hash")
                .and_then(Value::as_str)
                .map(str::to_string),
            ground_truth_hashes: strings(row.get("ground_truth_hashes")),
            hook_hashes: Vec::new(),
        };
        return Ok(Some((id.to_string(), e)));
    }
    Err("neither an rl row (question_id) nor a question (id)".to_string())
}

/// The match and the reward through [`formats::rl::reward`].
pub fn score(expected: &Expected, submitted: Option<&Value>, hook_hashes: &[&str]) -> Score {
    let hash = expected
        .answer_hash
        .clone()
        .unwrap_or_else(|| answer_hash(&expected.answer));
    let rl = RlExpected {
        answer: &expected.answer,
        answer_hash: &hash,
        ground_truth_hashes: &expected.ground_truth_hashes,
        hook_hashes: &expected.hook_hashes,
    };
    let without_hooks = RlExpected {
        hook_hashes: &[],
        ..rl
    };
    let matched = reward(&without_hooks, submitted, &[]) >= 1.0;
    let total = reward(&rl, submitted, hook_hashes);
    let hooks_expected = {
        let mut h: Vec<&String> = expected.hook_hashes.iter().collect();
        h.sort();
        h.dedup();
        h.len()
    };
    let share = (total - f64::from(u8::from(matched))) / HOOK_WEIGHT;
    Score {
        matched,
        reward: total,
        hooks_expected,
        hooks_matched: (share * hooks_expected as f64).round() as usize,
        hook_weight: HOOK_WEIGHT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scores_through_the_rl_reward_with_hooks_and_tolerance() {
        let mut q = Questions::default();
        let row = json!({"question_id": "q1", "answer": "204.5", "answer_hash": answer_hash(&json!(204.5)),
                         "ground_truth_hashes": [], "hook_hashes": ["h1", "h2"]});
        let (id, e) = parse_row(&row).unwrap().unwrap();
        q.insert(id, e);
        let req: ScoreRequest = serde_json::from_value(json!({
            "question_id": "q1", "submitted": 204.50001,
            "hooks": [{"value_hash": "h1", "value": 1}, "zz"]
        }))
        .unwrap();
        let s = q.score(&req).unwrap();
        assert!(s.matched);
        assert!((s.reward - (1.0 + HOOK_WEIGHT / 2.0)).abs() < 1e-12);
        assert_eq!((s.hooks_expected, s.hooks_matched), (2, 1));
        let req: ScoreRequest = serde_json::from_value(
            json!({"expected": {"answer": "Adelie"}, "submitted": "adelie "}),
        )
        .unwrap();
        let s = q.score(&req).unwrap();
        assert_eq!(s.reward, if s.matched { 1.0 } else { 0.0 });
        let req: ScoreRequest = serde_json::from_value(json!({"question_id": "nope"})).unwrap();
        assert!(matches!(
            q.score(&req),
            Err(ScoreError::UnknownQuestion(..))
        ));
        let req: ScoreRequest = serde_json::from_value(json!({"submitted": 1})).unwrap();
        assert_eq!(q.score(&req), Err(ScoreError::Ambiguous));
    }
}
