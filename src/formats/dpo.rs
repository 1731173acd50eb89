//! `dpo`: preference pairs for TRL's `DPOTrainer` (`{"prompt", "chosen",
//! "rejected"}`, conversational). The prompt is the system prompt and the
//! question without the hint; `chosen` is a trace whose answer matches the
//! reference answer, `rejected` one with another answer or none (failed), in
//! the `sft` style ending with their last assistant turn. One row per
//! rejected trace, its chosen partner taken in turn from the agreeing
//! traces (gold first). An episode without a rejected trace gives no row;
//! a pair whose two sides read the same is dropped.
//!
//! `--flavor openai` writes OpenAI's preference fine-tuning format, which
//! takes one assistant message per side: `input.messages` holds the prompt
//! and the turns the two traces share, `preferred_output` and
//! `non_preferred_output` the first assistant message where they differ.
//! A pair that first differs in a tool output (same code, other result) or
//! where one trace is a prefix of the other has no such message: no row.

use serde::Serialize;

use super::{
    prompt_messages, system_prompt, text_trajectory, to_line, Ctx, Flavor, FormatError, Judged,
    Message,
};

#[derive(Serialize)]
struct TrlRecord {
    prompt: Vec<Message>,
    chosen: Vec<Message>,
    rejected: Vec<Message>,
}

#[derive(Serialize)]
struct OpenaiRecord {
    input: OpenaiInput,
    preferred_output: Vec<Message>,
    non_preferred_output: Vec<Message>,
}

#[derive(Serialize)]
struct OpenaiInput {
    messages: Vec<Message>,
}

pub(super) fn records(judged: &Judged<'_>, ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let chosen: Vec<Vec<Message>> = judged
        .agreeing()
        .map(|t| text_trajectory(t.trace))
        .filter(|m| !m.is_empty())
        .collect();
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let prompt = prompt_messages(system_prompt(), &judged.episode.question, false);
    let mut out = Vec::new();
    let rejected = judged
        .traces
        .iter()
        .filter(|t| !t.agrees)
        .map(|t| text_trajectory(t.trace))
        .filter(|m| !m.is_empty());
    for (i, rejected) in rejected.enumerate() {
        let chosen = &chosen[i % chosen.len()];
        if *chosen == rejected {
            continue;
        }
        match ctx.flavor {
            Flavor::Trl => out.push(to_line(&TrlRecord {
                prompt: prompt.clone(),
                chosen: chosen.clone(),
                rejected,
            })?),
            Flavor::Openai => {
                let Some(k) = first_different_assistant(chosen, &rejected) else {
                    continue;
                };
                let mut messages = prompt.clone();
                messages.extend_from_slice(&chosen[..k]);
                out.push(to_line(&OpenaiRecord {
                    input: OpenaiInput { messages },
                    preferred_output: vec![chosen[k].clone()],
                    non_preferred_output: vec![rejected[k].clone()],
                })?);
            }
        }
    }
    Ok(out)
}

/// The index of the first message where two trajectories differ, when it
/// is an assistant message present in both.
fn first_different_assistant(a: &[Message], b: &[Message]) -> Option<usize> {
    let k = a.iter().zip(b).position(|(x, y)| x != y)?;
    (a[k].role == "assistant" && b[k].role == "assistant").then_some(k)
}
