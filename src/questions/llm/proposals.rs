//! The model's proposals: JSON found in a reply (fenced or bare, thinking
//! sections ignored), and each proposal checked against the profiled
//! columns before it becomes a question.

use std::collections::HashSet;

use serde_json::Value;

use super::{llm_question_id, normalize_question, Dropped};
use crate::profile::{ColumnKind, ColumnProfile, DataProfile};
use crate::schema::{Difficulty, Question, QuestionSource};
use crate::teacher::reply::clip;

/// `<think>…</think>` sections are drafts, not the answer.
pub(super) fn without_thinking(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        rest = match rest[start..].find("</think>") {
            Some(end) => &rest[start + end + "</think>".len()..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The bodies of fenced blocks, whatever their tag; an unclosed last block
/// runs to the end (a cut-off reply then fails to parse with a clear error).
pub(super) fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match current.as_mut() {
            None if fence => current = Some(String::new()),
            None => {}
            Some(body) if fence => {
                blocks.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    blocks.extend(current);
    blocks
}

pub(super) fn proposals_from_json(text: &str) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("the JSON is not valid: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(map) => {
            let arrays: Vec<&Vec<Value>> = map.values().filter_map(|v| v.as_array()).collect();
            if let Some(Value::Array(items)) = map.get("questions") {
                items.clone()
            } else if map.contains_key("question_text") {
                vec![Value::Object(map)]
            } else if arrays.len() == 1 {
                arrays[0].clone()
            } else {
                return Err(
                    "found a JSON object, but no \"questions\" array of question objects in it"
                        .into(),
                );
            }
        }
        other => {
            return Err(format!(
                "expected a JSON array of question objects, found {}",
                clip(&other.to_string(), 80)
            ))
        }
    };
    if items.is_empty() {
        return Err("the JSON array is empty".into());
    }
    Ok(items)
}

/// The proposals in a reply: a JSON array in a fenced block (```json or
/// any other tag) or bare in the text, or an object wrapping it
/// (`{"questions": [...]}`). The error says what was wrong, for the model.
pub fn parse_proposals(text: &str) -> Result<Vec<Value>, String> {
    let text = without_thinking(text);
    let mut candidates = fenced_blocks(&text);
    if let (Some(a), Some(b)) = (text.find('['), text.rfind(']')) {
        if a < b {
            candidates.push(text[a..=b].to_string());
        }
    }
    if let (Some(a), Some(b)) = (text.find('{'), text.rfind('}')) {
        if a < b {
            candidates.push(text[a..=b].to_string());
        }
    }
    let mut first_error = None;
    for candidate in candidates {
        match proposals_from_json(&candidate) {
            Ok(items) => return Ok(items),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| "no JSON array of questions found in the reply".into()))
}

pub(super) fn parse_difficulty(text: &str) -> Option<Difficulty> {
    let key = text.trim().to_ascii_uppercase().replace([' ', '-'], "_");
    Difficulty::ALL.into_iter().find(|d| d.as_str() == key)
}

pub(super) const OUTPUT_TYPES: [&str; 5] = ["number", "string", "boolean", "list", "dict"];

/// Column names that are also common words count only when quoted or
/// backticked: a question saying "a" does not use column `a`.
pub(super) const COMMON_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "no", "not",
    "of", "on", "or", "per", "the", "to", "with",
];

pub(super) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `name` (lowercase) appears in `text` (lowercase) as a whole word
/// or phrase; with `quoted`, only between backticks or quotes.
pub(super) fn mentions(text: &str, name: &str, quoted: bool) -> bool {
    let first_word = name.chars().next().is_some_and(is_word_char);
    let last_word = name.chars().last().is_some_and(is_word_char);
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        if quoted {
            let quote =
                |c: Option<char>| matches!(c, Some('`' | '\'' | '"' | '‘' | '’' | '“' | '”'));
            return quote(before) && quote(after);
        }
        (!first_word || !before.is_some_and(is_word_char))
            && (!last_word || !after.is_some_and(is_word_char))
    })
}

/// The columns a question names (case-insensitive, whole words; a name
/// with underscores also matches with spaces for them).
pub(super) fn named_columns<'a>(
    text: &str,
    columns: &'a [ColumnProfile],
) -> Vec<&'a ColumnProfile> {
    let text = text.to_lowercase();
    columns
        .iter()
        .filter(|c| {
            let name = c.name.trim().to_lowercase();
            if name.is_empty() {
                return false;
            }
            let quoted = COMMON_WORDS.contains(&name.as_str());
            mentions(&text, &name, quoted)
                || (name.contains('_') && mentions(&text, &name.replace('_', " "), quoted))
        })
        .collect()
}

pub(super) fn column_list(data: &DataProfile) -> String {
    data.column_profiles
        .iter()
        .map(|c| format!("`{}`", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check one proposal; the question, or why it is dropped.
pub(super) fn validate_one(
    raw: &Value,
    data: &DataProfile,
    slug: &str,
    dataset_hash: &str,
    seen: &HashSet<String>,
) -> Result<Question, String> {
    let Some(obj) = raw.as_object() else {
        return Err("not a JSON object".into());
    };
    let text = obj
        .get("question_text")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("missing or empty question_text")?;
    let difficulty = match obj.get("difficulty") {
        Some(Value::String(s)) => parse_difficulty(s),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "unknown difficulty {} (expected EASY, MEDIUM, HARD or VERY_HARD)",
            obj.get("difficulty").unwrap_or(&Value::Null)
        )
    })?;
    let n_steps = match obj.get("n_steps") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64)),
        _ => None,
    }
    .filter(|n| (1..=20).contains(n))
    .ok_or_else(|| {
        format!(
            "n_steps must be an integer from 1 to 20, got {}",
            obj.get("n_steps").unwrap_or(&Value::Null)
        )
    })? as u32;
    let output_type = match obj.get("output_type") {
        Some(Value::String(s)) => Some(s.trim().to_ascii_lowercase()),
        _ => None,
    }
    .filter(|t| OUTPUT_TYPES.contains(&t.as_str()))
    .ok_or_else(|| {
        format!(
            "unknown output_type {} (expected number, string, boolean, list or dict)",
            obj.get("output_type").unwrap_or(&Value::Null)
        )
    })?;
    let hint = obj
        .get("hint")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    let named = named_columns(
        &format!("{text}\n{}", hint.as_deref().unwrap_or("")),
        &data.column_profiles,
    );
    if named.is_empty() {
        return Err(format!(
            "names no column of df (columns: {})",
            clip(&column_list(data), 300)
        ));
    }
    if named.iter().all(|c| c.kind == ColumnKind::IdLike) {
        let names: Vec<&str> = named.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "uses only id-like columns ({}), which are never targets",
            names.join(", ")
        ));
    }
    if seen.contains(&normalize_question(text)) {
        return Err("duplicate of an earlier question".into());
    }
    let output_schema = match obj.get("output_schema") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(Value::String(s.trim().to_string())),
        Some(other) => Some(other.clone()),
    };
    Ok(Question {
        id: llm_question_id(text, dataset_hash),
        question_text: text.to_string(),
        hint,
        difficulty,
        n_steps,
        template_name: None,
        template_params: None,
        output_type: Some(output_type),
        output_schema,
        ground_truth: None,
        ground_truth_hash: None,
        ground_truth_hashes: Vec::new(),
        source: QuestionSource::Llm,
        dataset: slug.to_string(),
        dataset_hash: dataset_hash.to_string(),
        programs: None,
        category: None,
        composition: None,
    })
}

/// Keep the proposals that pass; drop the others with a reason each.
/// `seen` holds the normalized texts accepted so far (across rounds); a
/// dropped proposal does not enter it, so a corrected resubmission passes.
pub fn validate_proposals(
    raw: Vec<Value>,
    data: &DataProfile,
    slug: &str,
    dataset_hash: &str,
    seen: &mut HashSet<String>,
) -> (Vec<Question>, Vec<Dropped>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for item in raw {
        match validate_one(&item, data, slug, dataset_hash, seen) {
            Ok(q) => {
                seen.insert(normalize_question(&q.question_text));
                kept.push(q);
            }
            Err(reason) => {
                let question_text = match item.get("question_text") {
                    Some(Value::String(s)) => s.trim().to_string(),
                    _ => clip(&item.to_string(), 200),
                };
                dropped.push(Dropped {
                    question_text,
                    reason,
                });
            }
        }
    }
    (kept, dropped)
}
