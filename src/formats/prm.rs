//! `prm`: step-wise supervision for TRL's `PRMTrainer`
//! (`{"prompt", "completions", "labels"}`, standard format: strings). One
//! row per trace of an episode, the prompt being the question without the
//! hint, each step a turn with its output, each label whether that step is
//! sound.
//!
//! The labelling rule (docs/formats.md, "PRM labels"):
//! - a step whose cell failed (an execution error) is false;
//! - in a trace whose answer matches the reference answer every other step
//!   is true;
//! - in any other trace (a wrong answer, or none), steps are true up to the
//!   first step that records a value no agreeing trace recorded (a hook
//!   whose `value_hash` no agreeing trace's hook has, and whose value
//!   matches none of theirs with `answers_match`) or submits a wrong
//!   answer; that step and every later one are false. A trace that ends
//!   without an answer and never diverged visibly has its last step false.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use super::{played_turns, question_text, step_text, to_line, Ctx, FormatError, Judged};
use crate::answers::answers_match;
use crate::schema::{Hook, Turn};

#[derive(Serialize)]
struct Record {
    prompt: String,
    completions: Vec<String>,
    labels: Vec<bool>,
}

pub(super) fn records(judged: &Judged<'_>, _ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let known = KnownValues::of(judged);
    let prompt = question_text(&judged.episode.question, false);
    let mut out = Vec::new();
    for t in &judged.traces {
        let turns = played_turns(t.trace);
        if turns.is_empty() {
            continue;
        }
        out.push(to_line(&Record {
            prompt: prompt.clone(),
            completions: turns.iter().map(step_text).collect(),
            labels: step_labels(turns, t.agrees, &known, judged.reference),
        })?);
    }
    Ok(out)
}

/// The hooked values of the traces that reached the reference answer.
pub(crate) struct KnownValues<'e> {
    hashes: HashSet<&'e str>,
    values: Vec<&'e Value>,
}

impl<'e> KnownValues<'e> {
    pub fn of(judged: &Judged<'e>) -> KnownValues<'e> {
        let hooks = judged
            .agreeing()
            .flat_map(|t| played_turns(t.trace))
            .flat_map(|turn| &turn.execution.hooks);
        let mut known = KnownValues {
            hashes: HashSet::new(),
            values: Vec::new(),
        };
        for h in hooks {
            known.hashes.insert(h.value_hash.as_str());
            known.values.push(&h.value);
        }
        known
    }

    fn contains(&self, hook: &Hook) -> bool {
        self.hashes.contains(hook.value_hash.as_str())
            || self.values.iter().any(|v| answers_match(v, &hook.value))
    }
}

/// One label per turn, by the rule in the module header.
pub(crate) fn step_labels(
    turns: &[Turn],
    agrees: bool,
    known: &KnownValues<'_>,
    reference: &Value,
) -> Vec<bool> {
    let wrong_from = if agrees {
        None
    } else {
        let diverged = turns.iter().position(|turn| {
            let x = &turn.execution;
            x.hooks.iter().any(|h| !known.contains(h))
                || x.submitted_answer
                    .as_ref()
                    .is_some_and(|a| !answers_match(a, reference))
        });
        // Wrong in the end but nothing visible went wrong: the last step is.
        Some(diverged.unwrap_or(turns.len().saturating_sub(1)))
    };
    turns
        .iter()
        .enumerate()
        .map(|(i, turn)| turn.execution.success && wrong_from.is_none_or(|w| i < w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Execution, Hook};
    use serde_json::json;

    fn hook(name: &str, value: Value, hash: &str) -> Hook {
        Hook {
            variable_name: Some(name.into()),
            code_line: String::new(),
            value,
            value_hash: hash.into(),
            depends_on: Vec::new(),
            description: None,
            grounded: None,
        }
    }

    fn turn(ok: bool, hooks: Vec<Hook>, submitted: Option<Value>) -> Turn {
        Turn {
            turn_index: 0,
            reasoning: String::new(),
            code: String::new(),
            execution: Execution {
                success: ok,
                stdout: String::new(),
                stderr: String::new(),
                hooks,
                submitted_answer: submitted,
                status: if ok { "ok" } else { "error" }.into(),
                result: None,
                error: None,
                elapsed_ms: 0.0,
            },
            fresh_worker: false,
        }
    }

    fn known<'a>(hooks: &'a [Hook]) -> KnownValues<'a> {
        KnownValues {
            hashes: hooks.iter().map(|h| h.value_hash.as_str()).collect(),
            values: hooks.iter().map(|h| &h.value).collect(),
        }
    }

    #[test]
    fn an_agreeing_trace_is_true_except_its_failed_steps() {
        let good = [hook("m", json!(4.5), "h1")];
        let k = known(&good);
        let turns = [
            turn(false, vec![], None),
            turn(true, vec![hook("m", json!(4.5), "h1")], None),
            turn(true, vec![], Some(json!(9))),
        ];
        assert_eq!(
            step_labels(&turns, true, &k, &json!(9)),
            [false, true, true]
        );
    }

    #[test]
    fn a_wrong_trace_is_false_from_its_first_unknown_hook() {
        let good = [hook("m", json!(4.5), "h1"), hook("n", json!(120), "h2")];
        let k = known(&good);
        let turns = [
            turn(true, vec![hook("m", json!(4.5), "h1")], None),
            turn(true, vec![hook("n", json!(150), "zz")], None),
            turn(true, vec![], Some(json!(30))),
        ];
        assert_eq!(
            step_labels(&turns, false, &k, &json!(9)),
            [true, false, false]
        );
    }

    #[test]
    fn hooks_match_by_value_when_hashes_differ() {
        // 4.5 and 4.52 hash differently (2-decimal rounding) but match.
        let good = [hook("m", json!(4.5), "h1")];
        let k = known(&good);
        let turns = [
            turn(true, vec![hook("m", json!(4.52), "other")], None),
            turn(true, vec![], Some(json!(30))),
        ];
        assert_eq!(step_labels(&turns, false, &k, &json!(9)), [true, false]);
    }

    #[test]
    fn a_wrong_answer_without_hooks_makes_only_the_submitting_step_false() {
        let k = known(&[]);
        let turns = [
            turn(true, vec![], None),
            turn(true, vec![], Some(json!(30))),
        ];
        assert_eq!(step_labels(&turns, false, &k, &json!(9)), [true, false]);
    }

    #[test]
    fn a_trace_without_an_answer_ends_false() {
        let k = known(&[]);
        let crashed = [turn(true, vec![], None), turn(false, vec![], None)];
        assert_eq!(step_labels(&crashed, false, &k, &json!(9)), [true, false]);
        let gave_up = [turn(true, vec![], None), turn(true, vec![], None)];
        assert_eq!(step_labels(&gave_up, false, &k, &json!(9)), [true, false]);
    }
}
