//! `sft-tools`: the `sft` conversations as tool calls, in TRL's
//! conversational tool-calling format: each turn is an assistant message
//! (its reasoning as content) with one call to the `python` tool, the output
//! comes back as a `tool` message, and every record carries the `tools`
//! JSON-schema list. `--flavor openai` writes OpenAI's fine-tuning JSONL
//! instead: arguments as a JSON string, an `id` on each call and the
//! matching `tool_call_id` on each reply.
//!
//! The same traces as `sft` (gold with hint, agreeing consistency traces);
//! the record ends with the assistant's call that submitted.

use serde::Serialize;
use serde_json::{json, Value};

use super::{
    observation, played_turns, prompt_messages, system_prompt_tools, to_line, Ctx, Flavor,
    FormatError, FunctionCall, Judged, Message, ToolCall,
};

#[derive(Serialize)]
struct Record<'a> {
    messages: Vec<Message>,
    tools: &'a [Value],
}

const TOOL: &str = "python";

pub(super) fn records(judged: &Judged<'_>, ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let mut out = Vec::new();
    for t in judged.agreeing() {
        let mut messages =
            prompt_messages(system_prompt_tools(), &judged.episode.question, t.is_gold);
        let turns = played_turns(t.trace);
        for (i, turn) in turns.iter().enumerate() {
            let code = turn.code.trim_end_matches(['\n', '\r', ' ', '\t']);
            let (id, arguments) = match ctx.flavor {
                Flavor::Trl => (None, json!({ "code": code })),
                Flavor::Openai => (
                    Some(format!("call_{i}")),
                    Value::String(json!({ "code": code }).to_string()),
                ),
            };
            let mut call = Message::assistant(turn.reasoning.trim().to_string());
            call.tool_calls = vec![ToolCall {
                id: id.clone(),
                kind: "function",
                function: FunctionCall {
                    name: TOOL,
                    arguments,
                },
            }];
            messages.push(call);
            if i + 1 < turns.len() {
                let mut reply = Message::plain("tool", observation(&turn.execution));
                match ctx.flavor {
                    Flavor::Trl => reply.name = Some(TOOL),
                    Flavor::Openai => reply.tool_call_id = id,
                }
                messages.push(reply);
            }
        }
        out.push(to_line(&Record {
            messages,
            tools: &ctx.tools,
        })?);
    }
    Ok(out)
}
