//! `kto`: unpaired preference for TRL's `KTOTrainer` (`{"prompt",
//! "completion", "label"}`, conversational). One row per trace with at
//! least one turn: the prompt is the system prompt and the question without
//! the hint (the same for every trace of a question), the completion the
//! trace's turns in the `sft` style ending with its last assistant turn, the
//! label whether its answer matches the reference answer. Failed traces of
//! verified episodes are the undesirable examples.

use serde::Serialize;

use super::{
    prompt_messages, system_prompt, text_trajectory, to_line, Ctx, FormatError, Judged, Message,
};

#[derive(Serialize)]
struct Record {
    prompt: Vec<Message>,
    completion: Vec<Message>,
    label: bool,
}

pub(super) fn records(judged: &Judged<'_>, _ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let prompt = prompt_messages(system_prompt(), &judged.episode.question, false);
    let mut out = Vec::new();
    for t in &judged.traces {
        let completion = text_trajectory(t.trace);
        if completion.is_empty() {
            continue;
        }
        out.push(to_line(&Record {
            prompt: prompt.clone(),
            completion,
            label: t.agrees,
        })?);
    }
    Ok(out)
}
