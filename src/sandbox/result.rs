//! What a cell comes back as: [`CellResult`] (checked and capped from a
//! worker's reply), [`CellStatus`], how a worker ended ([`ExitInfo`]) and
//! what it cost ([`Fault`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::{CellReply, ReplyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    Ok,
    Error,
    Timeout,
    Oom,
    Crashed,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Ok => "ok",
            CellStatus::Error => "error",
            CellStatus::Timeout => "timeout",
            CellStatus::Oom => "oom",
            CellStatus::Crashed => "crashed",
        }
    }
    /// The worker did not survive this cell.
    pub fn lost_worker(self) -> bool {
        matches!(
            self,
            CellStatus::Timeout | CellStatus::Oom | CellStatus::Crashed
        )
    }
}

/// The outcome of one cell, in the shape `sandbox exec --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub status: CellStatus,
    pub stdout: String,
    pub stderr: String,
    /// `repr` of a trailing expression.
    pub result: Option<String>,
    /// `{type, message, traceback}` for errors; a description for timeout/oom/crashed.
    pub error: Option<serde_json::Value>,
    pub submitted: Option<serde_json::Value>,
    pub hooks: Vec<serde_json::Value>,
    pub elapsed_ms: f64,
    /// Bytes of stdout / stderr cut by the output cap.
    #[serde(default)]
    pub stdout_truncated: u64,
    #[serde(default)]
    pub stderr_truncated: u64,
}

/// Room above the output cap for the truncation line the zygote appends
/// (`\n[... N bytes truncated]\n`, at most 43 bytes), so text it already cut
/// is not cut twice.
pub(super) const TRUNCATION_LINE_ROOM: usize = 64;

/// Longest exception class name kept.
pub(super) const MAX_ERROR_TYPE: usize = 256;

/// Cut `text` to its first `cap` bytes (never inside a UTF-8 character) and
/// add the zygote's truncation line, when it is longer than `cap` plus the
/// room for such a line; returns the bytes cut (0 if none). The same format
/// as `cap_output` in zygote.py.
pub(super) fn cap_text(text: &mut String, cap: usize) -> u64 {
    if text.len() <= cap.saturating_add(TRUNCATION_LINE_ROOM) {
        return 0;
    }
    let mut cut = cap;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let removed = (text.len() - cut) as u64;
    text.truncate(cut);
    text.shrink_to_fit();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("[... {removed} bytes truncated]\n"));
    removed
}

/// At most `max` characters of what a worker sent, for an error message.
pub(super) fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A worker's `error` field: `{type, message, traceback}`, all strings, each
/// capped (`type` at [`MAX_ERROR_TYPE`], the others at `cap`); anything else
/// is a protocol violation.
pub(super) fn checked_error(
    error: serde_json::Value,
    cap: usize,
) -> Result<serde_json::Value, ReplyError> {
    let serde_json::Value::Object(mut fields) = error else {
        return Err(ReplyError::ErrorNotObject);
    };
    let mut take = |field: &'static str, cap: usize| match fields.remove(field) {
        Some(serde_json::Value::String(mut text)) => {
            cap_text(&mut text, cap);
            Ok(text)
        }
        _ => Err(ReplyError::ErrorField { field }),
    };
    let kind = take("type", MAX_ERROR_TYPE)?;
    let message = take("message", cap)?;
    let traceback = take("traceback", cap)?;
    Ok(serde_json::json!({ "type": kind, "message": message, "traceback": traceback }))
}

impl CellResult {
    /// Turn a worker's reply into a result without trusting it: every text
    /// field is cut to the output cap here (whatever the worker claims to
    /// have cut), the counters say what was cut, and a reply that does not
    /// have the documented shape is a protocol violation (a [`ReplyError`]
    /// naming what was wrong; an unknown status included). `submitted` and
    /// `hooks` are bounded by the worker channel's frame limit, not cut (a
    /// cut value would be another answer).
    pub(super) fn from_reply(reply: CellReply, max_output: u64) -> Result<Self, ReplyError> {
        let cap = usize::try_from(max_output).unwrap_or(usize::MAX);
        let status = match reply.status.as_str() {
            "ok" => CellStatus::Ok,
            "error" => CellStatus::Error,
            other => {
                return Err(ReplyError::UnknownStatus {
                    status: excerpt(other, 40),
                })
            }
        };
        if (status == CellStatus::Error) != reply.error.is_some() {
            return Err(ReplyError::StatusMismatch {
                status: status.as_str(),
                with_error: reply.error.is_some(),
            });
        }
        let error = reply.error.map(|e| checked_error(e, cap)).transpose()?;
        let (mut stdout, mut stderr, mut result) = (reply.stdout, reply.stderr, reply.result);
        let stdout_cut = cap_text(&mut stdout, cap);
        let stderr_cut = cap_text(&mut stderr, cap);
        if let Some(text) = &mut result {
            cap_text(text, cap);
        }
        Ok(CellResult {
            status,
            stdout,
            stderr,
            result,
            error,
            submitted: reply.submitted,
            hooks: reply.hooks,
            elapsed_ms: reply.elapsed_ms,
            stdout_truncated: reply.stdout_truncated.saturating_add(stdout_cut),
            stderr_truncated: reply.stderr_truncated.saturating_add(stderr_cut),
        })
    }

    pub(super) fn lost(status: CellStatus, kind: &str, message: String, elapsed: Duration) -> Self {
        CellResult {
            status,
            stdout: String::new(),
            stderr: String::new(),
            result: None,
            error: Some(serde_json::json!({ "type": kind, "message": message, "traceback": null })),
            submitted: None,
            hooks: Vec::new(),
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            stdout_truncated: 0,
            stderr_truncated: 0,
        }
    }
}

/// How a worker process ended, as the zygote (its parent) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// A fault: something a worker did that cost it its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    pub worker_id: u64,
    pub host_pid: u32,
    pub cell: u64,
    pub cause: CellStatus,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: &str, stdout: String) -> CellReply {
        CellReply {
            cell: 1,
            status: status.to_string(),
            stdout,
            stderr: String::new(),
            stdout_truncated: 0,
            stderr_truncated: 0,
            result: None,
            error: None,
            submitted: None,
            hooks: Vec::new(),
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn a_forged_reply_is_cut_to_the_cap_and_the_cut_is_counted() {
        // 3-byte characters, so the cap falls inside one.
        let mut forged = reply("ok", "€".repeat(1 << 20));
        forged.result = Some("r".repeat(5 << 20));
        forged.stderr = "e".repeat(100_000);
        forged.error = None;
        let cell = CellResult::from_reply(forged, 1000).expect("well-formed");
        assert!(cell.stdout.starts_with(&"€".repeat(333)));
        assert!(
            cell.stdout.ends_with("\n[... 3144729 bytes truncated]\n"),
            "{}",
            &cell.stdout[990..]
        );
        assert_eq!(cell.stdout_truncated, 3 * (1 << 20) - 999);
        assert_eq!(cell.stderr_truncated, 100_000 - 1000);
        for text in [
            &cell.stdout,
            &cell.stderr,
            cell.result.as_ref().expect("result"),
        ] {
            assert!(text.len() <= 1000 + TRUNCATION_LINE_ROOM, "{}", text.len());
        }
    }

    #[test]
    fn text_the_zygote_already_cut_is_passed_on_unchanged() {
        let kept = format!("{}\n[... 123456789 bytes truncated]\n", "a".repeat(1000));
        let mut honest = reply("ok", kept.clone());
        honest.stdout_truncated = 123_456_789;
        let cell = CellResult::from_reply(honest, 1000).expect("well-formed");
        assert_eq!(cell.stdout, kept);
        assert_eq!(cell.stdout_truncated, 123_456_789);
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_a_violation() {
        let unknown = CellResult::from_reply(reply("fine", String::new()), 1000);
        assert_eq!(
            unknown,
            Err(ReplyError::UnknownStatus {
                status: "fine".to_string()
            })
        );
        let long = CellResult::from_reply(reply(&"x".repeat(1000), String::new()), 1000);
        assert!(
            matches!(&long, Err(ReplyError::UnknownStatus { status }) if status.chars().count() <= 41)
        );
        assert!(CellResult::from_reply(reply("error", String::new()), 1000).is_err());
        let mut error = reply("error", String::new());
        error.error = Some(serde_json::json!({"type": "X", "message": 3, "traceback": ""}));
        assert!(CellResult::from_reply(error, 1000).is_err());
        let mut error = reply("error", String::new());
        error.error = Some(serde_json::json!({
            "type": "ValueError",
            "message": "m".repeat(5000),
            "traceback": "t".repeat(5000),
            "extra": "x".repeat(5000),
        }));
        let cell = CellResult::from_reply(error, 1000).expect("well-formed");
        let error = cell.error.expect("error");
        assert_eq!(error["type"], "ValueError");
        assert!(error.get("extra").is_none());
        for key in ["message", "traceback"] {
            let text = error[key].as_str().expect("string");
            assert!(
                text.ends_with("[... 4000 bytes truncated]\n"),
                "{key}: {text}"
            );
        }
    }

    #[test]
    fn a_status_the_worker_may_not_send_is_a_typed_protocol_violation() {
        // `timeout`, `oom` and `crashed` are CellStatus values, but only the
        // supervisor may say them: from a worker they are unknown.
        for status in ["timeout", "oom", "crashed", "OK", ""] {
            let err = CellResult::from_reply(reply(status, String::new()), 1000)
                .map_err(|source| crate::sandbox::protocol::ProtocolError::Reply {
                    channel: "worker",
                    cell: 1,
                    source,
                })
                .expect_err(status);
            assert!(err.is_violation(), "{err}");
            assert!(
                matches!(
                    &err,
                    crate::sandbox::protocol::ProtocolError::Reply {
                        source: ReplyError::UnknownStatus { .. },
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("unknown status"), "{err}");
        }
    }
}
