//! The OpenAI-compatible chat client: `POST {base_url}/chat/completions`
//! against vLLM, Ollama, OpenRouter or OpenAI. Owns retries (429, 5xx,
//! timeouts, connection errors; exponential backoff with jitter, honouring
//! `Retry-After`), the bound on concurrent requests, and the token and
//! latency figures of every reply. Knows nothing of questions or the jail.
//!
//! The API key is never logged nor shown: [`LlmSettings`] prints it as
//! `***`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A 4xx that retrying cannot fix (bad key, unknown model, bad request).
    #[error("the model server refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Retries exhausted on errors that are usually passing.
    #[error("the model server at {url} failed {attempts} times; last error: {last}")]
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
}

/// Something that answers chat messages: the HTTP client, or a scripted
/// stand-in in tests.
pub trait Chat: Send + Sync {
    /// The model's name, as requested.
    fn model(&self) -> &str;
    fn chat<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<Completion, LlmError>>;
}
