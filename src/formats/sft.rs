//! `sft`: one conversation per trace that reached the episode's answer, for
//! TRL's `SFTTrainer` (conversational language modeling, `{"messages"}`).
//! System prompt, the question (with the hint for the gold trace, which was
//! written with it), then each turn as an assistant message with one
//! ```python block and its output as the next user message; the record ends
//! with the assistant turn that submitted.
//!
//! Traces that agree with the verified answer are all used: the gold trace
//! and each agreeing consistency trace, one record each (different programs
//! for the same question are the variety SFT wants). Turns that failed and
//! were fixed later stay in: recovering from an error is part of the skill.

use serde::Serialize;

use super::{
    prompt_messages, system_prompt, text_trajectory, to_line, Ctx, FormatError, Judged, Message,
};

#[derive(Serialize)]
struct Record {
    messages: Vec<Message>,
}

pub(super) fn records(judged: &Judged<'_>, _ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let mut out = Vec::new();
    for t in judged.agreeing() {
        let mut messages = prompt_messages(system_prompt(), &judged.episode.question, t.is_gold);
        messages.extend(text_trajectory(t.trace));
        out.push(to_line(&Record { messages })?);
    }
    Ok(out)
}
