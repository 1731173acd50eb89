//! The quality guards a screened candidate must pass, each refusal named
//! so the summary counts it: the reference runs and its answer is defined
//! (no NaN, not empty, not too large to state), the alternative agrees,
//! the answer is not a number the profile already shows, it changes with
//! the binding, and every removable step changes it. Degenerate answers use
//! the same rule as templates ([`degenerate_at`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use super::Candidate;
use crate::answers::{answer_hash, answers_match};
use crate::profile::DataProfile;
use crate::questions::degenerate_at;

/// Largest list or mapping a question may ask for: longer answers are
/// tables, not questions.
pub const MAX_ANSWER_ITEMS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    ScreeningFailed,
    ReferenceFails,
    EmptyOrNan,
    TooLarge,
    AlternativeFails,
    AlternativeDisagrees,
    ReadableFromProfile,
    SameForEveryBinding,
    DeadStep,
    DuplicateAnswer,
    BuildsOnRefused,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ScreeningFailed => "screening cell failed",
            Refusal::ReferenceFails => "reference program fails",
            Refusal::EmptyOrNan => "empty or NaN answer",
            Refusal::TooLarge => "answer too large",
            Refusal::AlternativeFails => "alternative fails",
            Refusal::AlternativeDisagrees => "alternative disagrees",
            Refusal::ReadableFromProfile => "answer readable from the profile",
            Refusal::SameForEveryBinding => "same answer for every binding",
            Refusal::DeadStep => "a step does nothing",
            Refusal::DuplicateAnswer => "duplicate answer",
            Refusal::BuildsOnRefused => "builds on a refused question",
        }
    }
}

/// What the screening cell returned for one candidate: one result per
/// function (reference, alternative, ablations), or nothing when the cell
/// itself failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Screened {
    pub results: Option<Vec<Result<Json, String>>>,
}

impl Screened {
    /// Read one candidate's row of the cell's submission.
    pub fn from_row(row: &Json) -> Screened {
        let Some(items) = row.as_array() else {
            return Screened { results: None };
        };
        let results = items
            .iter()
            .map(|r| {
                if r.get("ok").and_then(Json::as_bool) == Some(true) {
                    Ok(r.get("v").cloned().unwrap_or(Json::Null))
                } else {
                    Err(r
                        .get("e")
                        .and_then(Json::as_str)
                        .unwrap_or("error")
                        .to_string())
                }
            })
            .collect();
        Screened {
            results: Some(results),
        }
    }

    pub fn reference(&self) -> Option<&Json> {
        self.results.as_ref()?.first()?.as_ref().ok()
    }

    pub fn answer_hash(&self) -> Option<String> {
        self.reference().map(answer_hash)
    }
}

fn is_empty(v: &Json) -> bool {
    match v {
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
        Json::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn too_large(v: &Json) -> bool {
    match v {
        Json::Array(a) => a.len() > MAX_ANSWER_ITEMS,
        Json::Object(o) => o.len() > MAX_ANSWER_ITEMS,
        Json::String(s) => s.len() > 200,
        _ => false,
    }
}

/// Numbers the profile shows about what the question names: the row
/// count, and each bound column's distinct and missing counts, minimum,
/// maximum and range.
fn readable_from_profile(v: &Json, profile: &DataProfile, bound: &BTreeSet<String>) -> bool {
    let Some(x) = v.as_f64() else {
        return false;
    };
    let mut shown = vec![profile.rows as f64];
    for c in profile
        .column_profiles
        .iter()
        .filter(|c| bound.contains(&c.name))
    {
        shown.push(c.cardinality as f64);
        shown.push(c.missing as f64);
        shown.extend(c.min);
        shown.extend(c.max);
        if let (Some(lo), Some(hi)) = (c.min, c.max) {
            shown.push(hi - lo);
        }
    }
    shown
        .iter()
        .any(|s| (s - x).abs() <= 1e-9 * s.abs().max(1.0))
}

/// One verdict per candidate, in order.
pub fn judge(
    screened: &[(Candidate, Screened)],
    profile: &DataProfile,
) -> Vec<Result<(), Refusal>> {
    let mut verdicts: Vec<Result<(), Refusal>> = screened
        .iter()
        .map(|(c, s)| single(c, s, profile))
        .collect();
    // The same chain over several bindings that all give one answer: the
    // answer does not depend on what the question names.
    let mut by_shape: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (c, _)) in screened.iter().enumerate() {
        if verdicts[i].is_ok() {
            by_shape.entry(c.shape.as_str()).or_default().push(i);
        }
    }
    for members in by_shape.values() {
        if members.len() < 2 {
            continue;
        }
        let hashes: Vec<Option<String>> = members
            .iter()
            .map(|&i| screened[i].1.answer_hash())
            .collect();
        let distinct_bindings = members
            .iter()
            .map(|&i| &screened[i].0.signature)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct_bindings >= 2 && hashes.windows(2).all(|w| w[0] == w[1]) {
            for &i in members {
                verdicts[i] = Err(Refusal::SameForEveryBinding);
            }
        }
    }
    verdicts
}

fn single(c: &Candidate, s: &Screened, profile: &DataProfile) -> Result<(), Refusal> {
    let Some(results) = &s.results else {
        return Err(Refusal::ScreeningFailed);
    };
    let Some(Ok(answer)) = results.first() else {
        return Err(Refusal::ReferenceFails);
    };
    if degenerate_at(answer).is_some() || is_empty(answer) {
        return Err(Refusal::EmptyOrNan);
    }
    if too_large(answer) {
        return Err(Refusal::TooLarge);
    }
    match results.get(1) {
        Some(Ok(alt)) if answers_match(answer, alt) => {}
        Some(Ok(_)) => return Err(Refusal::AlternativeDisagrees),
        _ => return Err(Refusal::AlternativeFails),
    }
    if readable_from_profile(answer, profile, &c.columns) {
        return Err(Refusal::ReadableFromProfile);
    }
    let h = answer_hash(answer);
    // Without the step the chain gives the same answer: the step does
    // nothing. Failing without it means it mattered.
    if results
        .iter()
        .skip(2)
        .flatten()
        .any(|v| answer_hash(v) == h)
    {
        return Err(Refusal::DeadStep);
    }
    Ok(())
}
