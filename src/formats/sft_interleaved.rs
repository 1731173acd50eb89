//! `sft-interleaved`: the `sft` conversations with state prediction. After
//! each turn whose code records hooks or submits an answer, a user message
//! asks the model to predict those values before it sees the output, the
//! assistant answers with the real values (as one JSON object, keys in the
//! order the code recorded them, `submit` for the answer), and only then
//! comes the real output. Training on it teaches the model to know what its
//! code will compute. The record ends with the prediction for the turn that
//! submitted.
//!
//! Same traces as `sft`; turns without hooks or an answer get no question.

use serde::Serialize;
use serde_json::Value;

use super::{
    assistant_text, observation, played_turns, prompt_messages, system_prompt, to_line, Ctx,
    FormatError, Judged, Message,
};
use crate::schema::Turn;

#[derive(Serialize)]
struct Record {
    messages: Vec<Message>,
}

/// The key of the submitted answer in a prediction.
const SUBMIT_KEY: &str = "submit";

pub(super) fn records(judged: &Judged<'_>, _ctx: &Ctx) -> Result<Vec<String>, FormatError> {
    let mut out = Vec::new();
    for t in judged.agreeing() {
        let mut messages = prompt_messages(system_prompt(), &judged.episode.question, t.is_gold);
        let turns = played_turns(t.trace);
        for (i, turn) in turns.iter().enumerate() {
            messages.push(Message::assistant(assistant_text(turn)));
            if let Some((question, answer)) = prediction(turn)? {
                messages.push(Message::user(question));
                messages.push(Message::assistant(answer));
            }
            if i + 1 < turns.len() {
                messages.push(Message::user(observation(&turn.execution)));
            }
        }
        out.push(to_line(&Record { messages })?);
    }
    Ok(out)
}

/// The question about a turn's recorded values and the true answer, or
/// none when the turn records nothing.
fn prediction(turn: &Turn) -> Result<Option<(String, String)>, FormatError> {
    let x = &turn.execution;
    let mut entries: Vec<(String, &Value)> = Vec::new();
    for (i, hook) in x.hooks.iter().enumerate() {
        let name = hook
            .variable_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .unwrap_or_else(|| format!("hook_{}", i + 1));
        entries.push((name, &hook.value));
    }
    if let Some(answer) = &x.submitted_answer {
        entries.push((SUBMIT_KEY.to_string(), answer));
    }
    if entries.is_empty() {
        return Ok(None);
    }
    dedupe(&mut entries);
    let keys: Vec<String> = entries
        .iter()
        .map(|(k, _)| serde_json::to_string(k).map_err(FormatError::Serialize))
        .collect::<Result<_, _>>()?;
    let mut question = format!(
        "Before you see the output, predict the values this code records. Reply with one JSON object with the {} {}.",
        if keys.len() == 1 { "key" } else { "keys" },
        join_words(&keys)
    );
    if x.submitted_answer.is_some() {
        // The answer is the last entry; its key may carry a `#n`.
        if let Some(key) = keys.last() {
            question.push_str(&format!(" {key} is the answer it submits."));
        }
    }
    // Compact JSON like the values inside it, keys in the order recorded
    // (a serde_json map would sort them).
    let mut answer = String::from("{");
    for (i, (key, (_, value))) in keys.iter().zip(&entries).enumerate() {
        if i > 0 {
            answer.push(',');
        }
        answer.push_str(key);
        answer.push(':');
        answer.push_str(&serde_json::to_string(value).map_err(FormatError::Serialize)?);
    }
    answer.push('}');
    Ok(Some((question, answer)))
}

/// A name recorded twice (a hook in a loop) gets `#2`, `#3`, … so every
/// key of the prediction is distinct.
fn dedupe(entries: &mut [(String, &Value)]) {
    let mut seen: Vec<String> = Vec::new();
    for (key, _) in entries.iter_mut() {
        let mut candidate = key.clone();
        let mut n = 1;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{key}#{n}");
        }
        seen.push(candidate.clone());
        *key = candidate;
    }
}

/// `"a"`, `"a" and "b"`, `"a", "b" and "c"`.
fn join_words(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeated_names_get_numbered_keys() {
        let (a, b, c) = (json!(1), json!(2), json!(3));
        let mut entries = vec![
            ("x".to_string(), &a),
            ("x".to_string(), &b),
            ("submit".to_string(), &c),
        ];
        dedupe(&mut entries);
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["x", "x#2", "submit"]);
        assert_eq!(
            join_words(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
    }
}
