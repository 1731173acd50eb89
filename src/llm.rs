//! The OpenAI-compatible chat client: `POST {base_url}/chat/completions`
//! against vLLM, Ollama, OpenRouter or OpenAI. Owns retries (429, 5xx,
//! timeouts, connection errors; exponential backoff with jitter, honouring
//! `Retry-After`), the bound on concurrent requests, and the token and
//! latency figures of every reply. Knows nothing of questions or the jail.
//!
//! The API key is never logged nor shown: [`LlmSettings`] prints it as
//! `***`.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

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

/// Retries of [`Client::check`]: it should fail fast, not sit through the
/// full backoff schedule when the server is down.
const CHECK_MAX_RETRIES: u32 = 2;

/// How much of a server's reply goes into an error message.
const EXCERPT_CHARS: usize = 300;

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

/// The HTTP client of an OpenAI-compatible server. Cheap to clone: clones
/// share the connection pool, the bound on requests in flight and the
/// run-wide totals.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LlmSettings,
    /// `{base_url}/chat/completions`.
    endpoint: String,
    /// Trimmed; `None` when unset or blank.
    api_key: Option<String>,
    http: reqwest::Client,
    /// One permit per request in flight, held across its retries so that
    /// a server that is shedding load sees fewer requests, not more.
    slots: Semaphore,
    totals: Mutex<Usage>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// The JSON body of `POST /chat/completions`.
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

/// Why one attempt failed.
enum Failure {
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
    fn passing(what: String) -> Failure {
        Failure::Passing {
            what,
            retry_after: None,
        }
    }
}

/// The parts of a chat completion this crate uses.
#[derive(Debug, PartialEq)]
struct Reply {
    content: String,
    finish_reason: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Client {
    /// Validates `settings` and builds the connection pool (rustls). Makes no
    /// request: see [`Client::check`].
    pub fn new(settings: LlmSettings) -> Result<Client, LlmError> {
        settings.validate()?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("csv-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                LlmError::Settings(format!(
                    "cannot build the HTTP client: {}",
                    error_chain(&e.without_url())
                ))
            })?;
        let api_key = settings
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned);
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint: chat_endpoint(&settings.base_url),
                api_key,
                http,
                slots: Semaphore::new(settings.max_concurrent_requests),
                totals: Mutex::new(Usage::default()),
                settings,
            }),
        })
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.inner.settings
    }

    /// The URL requests go to: `{base_url}/chat/completions`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Everything spent through this client (and its clones) so far:
    /// tokens, successful requests, retried attempts (of failed calls too)
    /// and the summed latency of successful calls. [`Client::check`] is not
    /// counted, so that the totals equal the sum of the completions' usage.
    pub fn totals(&self) -> Usage {
        *self
            .inner
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One chat completion, retried as the module header says.
    pub async fn complete(&self, messages: &[Message]) -> Result<Completion, LlmError> {
        let settings = &self.inner.settings;
        self.send(messages, settings.max_tokens, settings.max_retries, true)
            .await
    }

    /// One tiny request, so that a bad key, an unknown model or a wrong URL
    /// stops the run before any work starts. Retries at most twice.
    pub async fn check(&self) -> Result<(), LlmError> {
        let retries = self.inner.settings.max_retries.min(CHECK_MAX_RETRIES);
        self.send(&[Message::user("Reply with OK.")], Some(8), retries, false)
            .await
            .map(|_| ())
    }

    async fn send(
        &self,
        messages: &[Message],
        max_tokens: Option<u32>,
        max_retries: u32,
        count: bool,
    ) -> Result<Completion, LlmError> {
        let inner = &*self.inner;
        let settings = &inner.settings;
        let body = serde_json::to_vec(&ChatRequest {
            model: &settings.model,
            messages,
            temperature: settings.temperature,
            top_p: settings.top_p,
            max_tokens,
        })
        .map_err(|e| LlmError::BadReply(format!("cannot encode the request: {e}")))?;

        let _slot = inner
            .slots
            .acquire()
            .await
            .expect("the request semaphore is never closed");
        // Latency starts once a slot is ours: queueing behind our own
        // concurrency bound is not the server's latency.
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            let (what, retry_after) = match self.attempt(&body).await {
                Ok(reply) => {
                    let usage = Usage {
                        prompt_tokens: reply.prompt_tokens,
                        completion_tokens: reply.completion_tokens,
                        requests: 1,
                        retries: u64::from(retries),
                        latency_s: started.elapsed().as_secs_f64(),
                        failed: 0,
                    };
                    if count {
                        self.record(&usage);
                    }
                    return Ok(Completion {
                        content: reply.content,
                        finish_reason: reply.finish_reason,
                        usage,
                    });
                }
                Err(Failure::Fatal(error)) => {
                    self.record_failure(count, retries);
                    return Err(self.scrub_error(error));
                }
                Err(Failure::Passing { what, retry_after }) => (self.scrub(what), retry_after),
            };
            if retries >= max_retries {
                self.record_failure(count, retries);
                return Err(LlmError::Exhausted {
                    url: inner.endpoint.clone(),
                    attempts: retries + 1,
                    last: what,
                });
            }
            let wait = match retry_after {
                Some(asked) => asked.min(settings.max_backoff.saturating_mul(2)),
                None => backoff_delay(
                    retries,
                    settings.initial_backoff,
                    settings.max_backoff,
                    jitter_unit(),
                ),
            };
            let attempt = retries + 1;
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            // Rate limiting is expected under load; everything else is worth
            // a line at the default level.
            if what.starts_with("HTTP 429") {
                tracing::debug!(url = %inner.endpoint, attempt, wait_ms, error = %what, "model server is rate limiting; retrying");
            } else {
                tracing::warn!(url = %inner.endpoint, attempt, wait_ms, error = %what, "model request failed; retrying");
            }
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// One HTTP exchange, bounded by `request_timeout` from sending the
    /// request to the last byte of the reply.
    async fn attempt(&self, body: &[u8]) -> Result<Reply, Failure> {
        let inner = &*self.inner;
        let mut request = inner
            .http
            .post(&inner.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &inner.api_key {
            // bearer_auth marks the header sensitive, so reqwest never prints it.
            request = request.bearer_auth(key);
        }
        let exchange = async {
            let response = request.send().await.map_err(|e| {
                let what = if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                Failure::passing(format!("{what}: {}", error_chain(&e.without_url())))
            })?;
            let status = response.status();
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let bytes = response.bytes().await.map_err(|e| {
                Failure::passing(format!(
                    "HTTP {} reply cut off: {}",
                    status.as_u16(),
                    error_chain(&e.without_url())
                ))
            })?;
            Ok::<_, Failure>((status, retry_after, bytes))
        };
        let timeout = inner.settings.request_timeout;
        let (status, retry_after, bytes) = match tokio::time::timeout(timeout, exchange).await {
            Ok(exchanged) => exchanged?,
            Err(_) => {
                return Err(Failure::passing(format!(
                    "timed out after {}",
                    human_duration(timeout)
                )))
            }
        };
        interpret(status, retry_after, &bytes)
    }

    fn record(&self, usage: &Usage) {
        self.inner
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(usage);
    }

    fn record_failure(&self, count: bool, retries: u32) {
        if count {
            self.record(&Usage {
                retries: u64::from(retries),
                failed: 1,
                ..Usage::default()
            });
        }
    }

    /// Servers sometimes echo the key ("invalid key sk-…"): blank it out of
    /// anything that may reach a log. Very short keys are not secrets worth
    /// mangling every message for.
    fn scrub(&self, text: String) -> String {
        match &self.inner.api_key {
            Some(key) if key.len() >= 4 && text.contains(key.as_str()) => {
                text.replace(key.as_str(), "***")
            }
            _ => text,
        }
    }

    fn scrub_error(&self, error: LlmError) -> LlmError {
        match error {
            LlmError::Refused { status, message } => LlmError::Refused {
                status,
                message: self.scrub(message),
            },
            LlmError::BadReply(message) => LlmError::BadReply(self.scrub(message)),
            other => other,
        }
    }
}

impl Chat for Client {
    fn model(&self) -> &str {
        &self.inner.settings.model
    }

    fn chat<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(self.complete(messages))
    }
}

/// Sorts a complete HTTP reply into a chat completion, a failure worth
/// retrying, or a refusal.
fn interpret(
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
fn excerpt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

/// An error and its sources, `: `-separated (reqwest's own `Display` stops
/// at "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
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
fn human_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// `{base_url}/chat/completions` with one slash between, whether or not the
/// base URL ends in one. A base URL that already names the endpoint is kept.
fn chat_endpoint(base_url: &str) -> String {
    let base = base_url.trim().trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_owned()
    } else {
        format!("{base}/chat/completions")
    }
}

/// The wait before retry number `retry + 1` (`retry` counts from 0):
/// `initial × 2^retry`, capped at `max`, with equal jitter — half of it
/// fixed, half scaled by `unit` in `[0, 1)` — so concurrent requests that
/// failed together do not come back together, yet none comes back at once.
fn backoff_delay(retry: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let factor = 1u32 << retry.min(31);
    let ceiling = initial.saturating_mul(factor).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` that differs from call to call. Jitter needs no
/// more: a process-random hash of a counter and the clock.
fn jitter_unit() -> f64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait a reply asks for: OpenAI's `retry-after-ms`, else `Retry-After`
/// as seconds or as an HTTP date. Uncapped here; the caller caps it.
fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    value("retry-after-ms")
        .and_then(|ms| ms.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        // A value past what a Duration holds (say 1e30) is "very long",
        // capped by the caller; never a panic.
        .map(|ms| Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX))
        .or_else(|| value("retry-after").and_then(|v| parse_retry_after(v, now)))
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`
/// (RFC 9110 §10.2.3). A date in the past means now.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only HTTP date
/// format servers are allowed to send.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut fields = value.split_ascii_whitespace();
    fields.next()?.strip_suffix(',')?;
    let day: i64 = fields.next()?.parse().ok()?;
    let month = match fields.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = fields.next()?.parse().ok()?;
    let mut clock = fields.next()?.split(':').map(|n| n.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if fields.next()? != "GMT" || fields.next().is_some() || clock.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    #[test]
    fn endpoint_joins_with_one_slash() {
        let expected = "http://h:1/v1/chat/completions";
        assert_eq!(chat_endpoint("http://h:1/v1"), expected);
        assert_eq!(chat_endpoint("http://h:1/v1/"), expected);
        assert_eq!(chat_endpoint(" http://h:1/v1// "), expected);
        assert_eq!(chat_endpoint("http://h:1/v1/chat/completions"), expected);
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_caps() {
        let initial = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        for retry in 0..40 {
            let ceiling = initial.saturating_mul(1 << retry.min(31)).min(max);
            for unit in [0.0, 0.25, 0.999_999, jitter_unit(), jitter_unit()] {
                let wait = backoff_delay(retry, initial, max, unit);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{retry} {unit} {wait:?}"
                );
            }
        }
        assert_eq!(
            backoff_delay(0, initial, max, 0.0),
            Duration::from_millis(250)
        );
        assert_eq!(backoff_delay(3, initial, max, 0.0), Duration::from_secs(2));
        assert_eq!(
            backoff_delay(10, initial, max, 0.0),
            Duration::from_secs(15)
        );
        assert_eq!(
            backoff_delay(u32::MAX, initial, max, 0.0),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let draws: Vec<f64> = (0..1000).map(|_| jitter_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u < 0.1));
        assert!(draws.iter().any(|u| *u > 0.9));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", now),
            None
        );
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(10))
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_825_600))
        );

        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(
            retry_after(&headers, now),
            Some(Duration::from_millis(1500))
        );
        // Hostile values: huge, not finite, negative, not numbers. None
        // panics; a huge one is "as long as possible" (the caller caps it).
        for (value, expected) in [
            ("1e30", Some(Duration::MAX)),
            ("1e308", Some(Duration::MAX)),
            ("inf", Some(Duration::from_secs(7))),
            ("NaN", Some(Duration::from_secs(7))),
            ("-5", Some(Duration::from_secs(7))),
            ("soon", Some(Duration::from_secs(7))),
        ] {
            headers.insert("retry-after-ms", value.parse().unwrap());
            assert_eq!(retry_after(&headers, now), expected, "{value}");
        }
        headers.remove("retry-after-ms");
        for value in ["18446744073709551615", "1e30", "99999999999999999999999"] {
            headers.insert("retry-after", value.parse().unwrap());
            let _ = retry_after(&headers, now);
        }
    }

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
}
