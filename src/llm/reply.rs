//! Reading a server's reply: its body read within a size limit, sorted into
//! a chat completion, a failure worth retrying or a refusal; a completion
//! longer than the request's `max_tokens` could produce cut to a bound;
//! error texts kept short and on one line.

use std::time::Duration;

use serde_json::Value;

use super::LlmError;

/// How much of a server's reply goes into an error message.
pub(super) const EXCERPT_CHARS: usize = 300;

/// Bytes of reply text one token may stand for. Real tokens are a few
/// bytes (the longest, runs of whitespace in code vocabularies, some
/// dozens), so a reply past `max_tokens × 32` bytes is not one the model
/// produced within its budget: a proxy, a broken server, or a hostile one.
pub const BYTES_PER_TOKEN: usize = 32;

/// The most reply text kept whatever `max_tokens` says, and when it is unset.
pub const REPLY_HARD_CAP: usize = 1 << 20;

/// The most bytes of HTTP body read at all. A body past it is not read
/// further (a 5 GB reply must not fill the memory); under it, a long reply
/// is read, parsed and then cut to its bound.
pub const BODY_LIMIT: usize = 32 << 20;

/// The most bytes of reply text kept for a request with `max_tokens`.
pub fn reply_bound(max_tokens: Option<u32>) -> usize {
    max_tokens
        .map_or(REPLY_HARD_CAP, |t| {
            usize::try_from(t)
                .unwrap_or(usize::MAX)
                .saturating_mul(BYTES_PER_TOKEN)
        })
        .min(REPLY_HARD_CAP)
}

/// Cut `text` to at most `bound` bytes, on a character boundary. Returns
/// whether anything was cut.
pub(super) fn cut_to(text: &mut String, bound: usize) -> bool {
    if text.len() <= bound {
        return false;
    }
    let mut end = bound;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// Why one attempt failed.
pub(super) enum Failure {
    /// Usually passing (429, 5xx, timeout, connection, garbled reply):
    /// worth another attempt. `what` is shown in `Exhausted::last`.
    Passing {
        what: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(LlmError),
}

impl Failure {
    pub(super) fn passing(what: String) -> Failure {
        Failure::Passing {
            what,
            retry_after: None,
        }
    }
}

/// The parts of a chat completion this crate uses.
#[derive(Debug, PartialEq)]
pub(super) struct Reply {
    pub(super) content: String,
    pub(super) finish_reason: Option<String>,
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
}

/// Sorts a complete HTTP reply into a chat completion, a failure worth
/// retrying, or a refusal.
pub(super) fn interpret(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Reply, Failure> {
    let code = status.as_u16();
    if status.is_success() {
        return match serde_json::from_slice::<Value>(body) {
            // A 2xx that is not JSON at all is nearly always a proxy or a
            // load balancer having a bad moment, not the model: retry it.
            Err(e) => Err(Failure::passing(format!(
                "HTTP {code} reply is malformed JSON ({e}): {}",
                excerpt(&String::from_utf8_lossy(body))
            ))),
            Ok(json) => parse_completion(&json).map_err(|m| Failure::Fatal(LlmError::BadReply(m))),
        };
    }
    let said = server_message(body);
    let line = match status.canonical_reason() {
        Some(reason) => format!("HTTP {code} {reason}"),
        None => format!("HTTP {code}"),
    };
    if code == 408 || code == 429 || status.is_server_error() {
        return Err(Failure::Passing {
            what: format!("{line}: {said}"),
            retry_after,
        });
    }
    let hint = match code {
        401 | 403 => Some("check OPENAI_API_KEY"),
        404 => Some("check the model name (`--model`) and the base URL (it should end in /v1)"),
        _ => None,
    };
    let message = match hint {
        Some(hint) => format!("{said}; {hint}"),
        None => said,
    };
    Err(Failure::Fatal(LlmError::Refused {
        status: code,
        message,
    }))
}

/// Reads `choices[0].message.content`, `finish_reason` and `usage` from a
/// chat completion. A null or absent `content` (a reasoning model that spent
/// its whole budget thinking, a tool call) is an empty reply, not an error:
/// the caller treats an empty turn like any other unusable turn. Missing
/// `usage` counts zero tokens.
fn parse_completion(json: &Value) -> Result<Reply, String> {
    let Some(choices) = json.get("choices").and_then(Value::as_array) else {
        return Err(match error_text(json) {
            Some(said) => format!("no `choices`; the server said: {said}"),
            None => format!("no `choices` in {}", excerpt(&json.to_string())),
        });
    };
    let Some(first) = choices.first() else {
        return Err("`choices` is empty".into());
    };
    let Some(message) = first.get("message").filter(|m| m.is_object()) else {
        return Err(format!(
            "`choices[0]` has no `message`: {}",
            excerpt(&first.to_string())
        ));
    };
    let content = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        // Content parts (`[{"type": "text", "text": …}]`), as some servers send.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        Some(other) => {
            return Err(format!(
                "`choices[0].message.content` is not text: {}",
                excerpt(&other.to_string())
            ))
        }
    };
    let usage = json.get("usage");
    let tokens = |field: &str| {
        usage
            .and_then(|u| u.get(field))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Reply {
        content,
        finish_reason: first
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        prompt_tokens: tokens("prompt_tokens"),
        completion_tokens: tokens("completion_tokens"),
    })
}

/// The error text of the JSON error shapes in the wild: OpenAI
/// `{"error": {"message": …}}`, Ollama `{"error": "…"}`, vLLM
/// `{"message": …}`, FastAPI `{"detail": …}`.
fn error_text(json: &Value) -> Option<String> {
    let text = json
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .or_else(|| json.get("message"))
        .or_else(|| json.get("detail"))?;
    Some(match text {
        Value::String(s) => excerpt(s),
        other => excerpt(&other.to_string()),
    })
}

/// What the server said in an error reply: its message if the body is a
/// known JSON error shape, otherwise the start of the body.
fn server_message(body: &[u8]) -> String {
    if let Some(said) = serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(error_text)
    {
        return said;
    }
    let text = excerpt(&String::from_utf8_lossy(body));
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

/// The start of `text`, whitespace collapsed, for an error message.
pub(super) fn excerpt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

/// An error and its sources, `: `-separated (reqwest's own `Display` stops
/// at "error sending request").
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// `120 s`, `300 ms`.
pub(super) fn human_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_sorted_into_completions_retries_and_refusals() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
                      "usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let reply = interpret(reqwest::StatusCode::OK, None, ok).ok().unwrap();
        assert_eq!(
            reply,
            Reply {
                content: "hi".into(),
                finish_reason: Some("stop".into()),
                prompt_tokens: 3,
                completion_tokens: 1
            }
        );

        let null_content =
            br#"{"choices":[{"message":{"content":null,"reasoning_content":"hmm"}}]}"#;
        let reply = interpret(reqwest::StatusCode::OK, None, null_content)
            .ok()
            .unwrap();
        assert_eq!((reply.content.as_str(), reply.prompt_tokens), ("", 0));

        let parts = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#;
        assert_eq!(
            interpret(reqwest::StatusCode::OK, None, parts)
                .ok()
                .unwrap()
                .content,
            "ab"
        );

        match interpret(reqwest::StatusCode::OK, None, br#"{"choices":[]}"#) {
            Err(Failure::Fatal(LlmError::BadReply(m))) => assert!(m.contains("empty"), "{m}"),
            _ => panic!("empty choices is a bad reply"),
        }
        match interpret(
            reqwest::StatusCode::OK,
            None,
            br#"{"error":{"message":"overloaded"}}"#,
        ) {
            Err(Failure::Fatal(LlmError::BadReply(m))) => assert!(m.contains("overloaded"), "{m}"),
            _ => panic!("no choices is a bad reply"),
        }
        match interpret(reqwest::StatusCode::OK, None, b"<html>bad gateway") {
            Err(Failure::Passing { what, .. }) => {
                assert!(what.contains("malformed JSON"), "{what}")
            }
            _ => panic!("malformed JSON is retried"),
        }
        for code in [408, 429, 500, 502, 503, 504, 599] {
            let status = reqwest::StatusCode::from_u16(code).unwrap();
            match interpret(
                status,
                Some(Duration::from_secs(2)),
                b"{\"detail\":\"busy\"}",
            ) {
                Err(Failure::Passing { what, retry_after }) => {
                    assert!(what.starts_with(&format!("HTTP {code}")), "{what}");
                    assert!(what.contains("busy"), "{what}");
                    assert_eq!(retry_after, Some(Duration::from_secs(2)));
                }
                _ => panic!("{code} is retried"),
            }
        }
        let refused = |code: u16, body: &[u8]| match interpret(
            reqwest::StatusCode::from_u16(code).unwrap(),
            None,
            body,
        ) {
            Err(Failure::Fatal(LlmError::Refused { status, message })) => {
                assert_eq!(status, code);
                message
            }
            _ => panic!("{code} is refused"),
        };
        let m = refused(
            401,
            br#"{"error":{"message":"Incorrect API key provided"}}"#,
        );
        assert!(
            m.contains("Incorrect API key provided") && m.contains("OPENAI_API_KEY"),
            "{m}"
        );
        assert!(refused(403, b"forbidden").contains("OPENAI_API_KEY"));
        let m = refused(404, br#"{"error":"model 'x' not found"}"#);
        assert!(
            m.contains("model 'x' not found") && m.contains("--model") && m.contains("/v1"),
            "{m}"
        );
        assert_eq!(
            refused(400, br#"{"message":"context too long"}"#),
            "context too long"
        );
        assert_eq!(refused(422, b""), "(empty body)");
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt("a\n  b\tc"), "a b c");
        let long = "é".repeat(EXCERPT_CHARS + 10);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(human_duration(Duration::from_secs(120)), "120 s");
        assert_eq!(human_duration(Duration::from_millis(300)), "300 ms");
    }

    #[test]
    fn replies_are_cut_to_a_bound_derived_from_max_tokens() {
        assert_eq!(reply_bound(Some(100)), 3200);
        assert_eq!(reply_bound(None), REPLY_HARD_CAP);
        assert_eq!(reply_bound(Some(u32::MAX)), REPLY_HARD_CAP);
        let mut text = "é".repeat(10);
        assert!(cut_to(&mut text, 5));
        assert_eq!(text, "éé");
        assert!(!cut_to(&mut text, 5));
    }
}
