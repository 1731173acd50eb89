//! The OpenAI-compatible chat client: `POST {base_url}/chat/completions`
//! against vLLM, Ollama, OpenRouter or OpenAI. Owns retries (429, 5xx,
//! timeouts, connection errors; exponential backoff with jitter, honouring
//! `Retry-After`), the bound on concurrent requests, and the token and
//! latency figures of every reply. Knows nothing of questions or the jail.
//!
//! The API key is never logged nor shown: [`LlmSettings`] prints it as
//! `***`.
//!
//! The server is not trusted: a body is read up to a size limit, a reply
//! longer than `max_tokens` could produce is cut and flagged
//! (`Completion::truncated`), and the start-up check is one short attempt.
//!
//! Submodules: `client` (HTTP, retries, totals), `reply` (reading and
//! sorting a reply, the size bounds), `retry` (backoff, `Retry-After`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod client;
mod reply;
mod retry;

pub use client::{Client, CHECK_TIMEOUT};
pub use reply::{reply_bound, BODY_LIMIT, BYTES_PER_TOKEN, REPLY_HARD_CAP};

/// A boxed future, so that [`Chat`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

pub use crate::schema::Usage;

/// One reply of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    /// `stop`, `length`, … as the server said.
    pub finish_reason: Option<String>,
    /// This request alone (requests = 1, its retries, its latency).
    pub usage: Usage,
    /// The reply was longer than the request's `max_tokens` could produce
    /// and was cut to [`reply_bound`]: never to be sent back whole.
    pub truncated: bool,
}

/// Resolved client settings (flags over `csv-agent.toml` over the
/// environment over defaults).
#[derive(Clone, PartialEq)]
pub struct LlmSettings {
    /// Up to and including `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Per attempt.
    pub request_timeout: Duration,
    /// Requests in flight at once, over the whole run.
    pub max_concurrent_requests: usize,
    /// Attempts after the first one, for errors worth retrying.
    pub max_retries: u32,
    /// First backoff; doubles each retry (with jitter), capped at `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("temperature", &self.temperature)
            .field("top_p", &self.top_p)
            .field("max_tokens", &self.max_tokens)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A 4xx that retrying cannot fix (bad key, unknown model, bad request).
    #[error("the model server refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Retries exhausted on errors that are usually passing.
    #[error(
        "the model server at {url} failed {attempts} time{plural}; last error: {last}",
        plural = if *.attempts == 1 { "" } else { "s" }
    )]
    Exhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    /// A 2xx reply that is not a chat completion.
    #[error("the model server's reply is not a chat completion: {0}")]
    BadReply(String),
    #[error("invalid model settings: {0}")]
    Settings(String),
    /// The start-up check got no reply: nothing answered, or not in time.
    #[error(
        "the model server at {url} did not answer the start-up check ({last}); \
         check that it is running and reachable from this machine, and that the base URL \
         (--base-url, OPENAI_BASE_URL or [llm] base_url) is right and ends in /v1"
    )]
    Unreachable { url: String, last: String },
}

impl LlmError {
    /// What a failed call cost: one failed call, and for an exhausted one
    /// its retried attempts (so usage sums match what the server saw).
    pub fn usage(&self) -> Usage {
        let retries = match self {
            LlmError::Exhausted { attempts, .. } => u64::from(attempts.saturating_sub(1)),
            _ => 0,
        };
        Usage {
            retries,
            failed: 1,
            ..Usage::default()
        }
    }
}

/// Something that answers chat messages: the HTTP client, or a scripted
/// stand-in in tests.
pub trait Chat: Send + Sync {
    /// The model's name, as requested.
    fn model(&self) -> &str;
    fn chat<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<Completion, LlmError>>;
}

impl LlmSettings {
    /// Settings for `model` at `base_url`, no API key, the server's own
    /// sampling defaults, and the run-wide defaults of the client.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> LlmSettings {
        LlmSettings {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            temperature: None,
            top_p: None,
            max_tokens: None,
            request_timeout: Duration::from_secs(120),
            max_concurrent_requests: 256,
            max_retries: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Checks what a server cannot: every message says what to change.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |message: String| Err(LlmError::Settings(message));
        let url = self.base_url.trim();
        let lower = url.to_ascii_lowercase();
        match lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
        {
            None => {
                return bad(format!(
                    "the base URL `{url}` must start with http:// or https:// \
                     (e.g. http://127.0.0.1:8000/v1)"
                ))
            }
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                return bad(format!(
                    "the base URL `{url}` has no host (e.g. http://127.0.0.1:8000/v1)"
                ))
            }
            Some(_) => {}
        }
        if self.model.trim().is_empty() {
            return bad("the model name is empty; set it with --model".into());
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return bad(format!(
                    "temperature {t} is out of range; use a value from 0 to 2"
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!(
                    "top_p {p} is out of range; use a value above 0 and at most 1"
                ));
            }
        }
        if self.max_tokens == Some(0) {
            return bad(
                "max_tokens is 0; use at least 1, or leave it unset to let the server decide"
                    .into(),
            );
        }
        if self.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests is 0; use at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return bad("the request timeout is 0; use a positive duration such as 120s".into());
        }
        if let Some(key) = &self.api_key {
            // Never echo the key itself, not even in this message.
            if key.trim().chars().any(|c| !c.is_ascii_graphic()) {
                return bad(
                    "the API key contains spaces, line breaks or non-ASCII characters; \
                     check OPENAI_API_KEY"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LlmSettings {
        LlmSettings::new("http://127.0.0.1:8000/v1", "qwen")
    }

    fn settings_error(change: impl FnOnce(&mut LlmSettings)) -> String {
        let mut s = settings();
        change(&mut s);
        match s.validate() {
            Err(LlmError::Settings(message)) => message,
            other => panic!("expected a settings error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let s = settings();
        s.validate().unwrap();
        assert_eq!(s.request_timeout, Duration::from_secs(120));
        assert_eq!(s.max_concurrent_requests, 256);
        assert_eq!(s.max_retries, 6);
        assert_eq!(s.initial_backoff, Duration::from_millis(500));
        assert_eq!(s.max_backoff, Duration::from_secs(30));
        assert_eq!((s.temperature, s.top_p, s.max_tokens), (None, None, None));
        assert_eq!(s.api_key, None);
    }

    #[test]
    fn validation_says_what_to_change() {
        assert!(settings_error(|s| s.base_url = "127.0.0.1:8000/v1".into())
            .contains("must start with http:// or https://"));
        assert!(settings_error(|s| s.base_url = "ftp://x/v1".into()).contains("http://"));
        assert!(settings_error(|s| s.base_url = "https://".into()).contains("no host"));
        assert!(settings_error(|s| s.model = "  ".into()).contains("--model"));
        assert!(settings_error(|s| s.temperature = Some(2.5)).contains("from 0 to 2"));
        assert!(settings_error(|s| s.temperature = Some(-0.1)).contains("from 0 to 2"));
        assert!(settings_error(|s| s.temperature = Some(f64::NAN)).contains("from 0 to 2"));
        assert!(settings_error(|s| s.top_p = Some(0.0)).contains("above 0 and at most 1"));
        assert!(settings_error(|s| s.top_p = Some(1.01)).contains("above 0 and at most 1"));
        assert!(settings_error(|s| s.max_tokens = Some(0)).contains("at least 1"));
        assert!(settings_error(|s| s.max_concurrent_requests = 0).contains("at least 1"));
        assert!(settings_error(|s| s.request_timeout = Duration::ZERO).contains("positive"));
        let key_error = settings_error(|s| s.api_key = Some("sk-abc def".into()));
        assert!(key_error.contains("OPENAI_API_KEY"));
        assert!(!key_error.contains("sk-abc"));

        let mut edges = settings();
        edges.base_url = "HTTPS://api.openai.com/v1/".into();
        edges.temperature = Some(2.0);
        edges.top_p = Some(1.0);
        edges.api_key = Some(" sk-trailing-newline\n".into());
        edges.validate().unwrap();
    }

    #[test]
    fn debug_output_hides_the_key() {
        let mut s = settings();
        s.api_key = Some("sk-very-secret-key".into());
        let shown = format!("{s:?}");
        assert!(!shown.contains("sk-very-secret-key"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        let client = Client::new(s).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("sk-very-secret-key"), "{shown}");
    }
}
