//! `orm`: outcome labels, one row per trace (`{"prompt", "completion",
//! "label"}`, standard format: strings), for an outcome reward model (a
//! classifier over the whole solution). The prompt is the question without
//! the hint; the completion is every played turn with its output, the last
//! one included (the classifier should see what was submitted, or the
//! error); the label is whether the trace's answer matches the reference
//! answer (`answers_match`). A trace without an answer is false.

use serde::Serialize;

use super::{played_turns, question_text, step_text, to_line, Ctx, FormatError, Judged};

#[derive(Serialize)]
struct Record {
    prompt: String,
    completion: String,
    label: bool,
}

/// Between two steps of a completion.
pub(crate) const STEP_SEPARATOR: &str = "\n\n";

pub(super) fn records(judged: &Judged<'_>, _ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let prompt = question_text(&judged.episode.question, false);
    let mut out = Vec::new();
    for t in &judged.traces {
        let turns = played_turns(t.trace);
        if turns.is_empty() {
            continue;
        }
        let steps: Vec<String> = turns.iter().map(step_text).collect();
        out.push(to_line(&Record {
            prompt: prompt.clone(),
            completion: steps.join(STEP_SEPARATOR),
            label: t.agrees,
        })?);
    }
    Ok(out)
}
