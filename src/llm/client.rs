//! The HTTP side: the connection pool, the bound on requests in flight, one
//! call with its retries, one attempt with its timeout, the run-wide
//! totals, and the key kept out of every message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::reply::{
    cut_to, error_chain, human_duration, interpret, reply_bound, Failure, Reply, BODY_LIMIT,
};
use super::retry::{backoff_delay, jitter_unit, retry_after};
use super::{BoxFuture, Chat, Completion, LlmError, LlmSettings, Message, Usage};

/// The longest the start-up check waits for its one attempt.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// One chat completion, retried as the module header says. A reply
    /// longer than `max_tokens` could produce is cut to
    /// [`reply_bound`](super::reply_bound) and marked `truncated`.
    pub async fn complete(&self, messages: &[Message]) -> Result<Completion, LlmError> {
        let settings = &self.inner.settings;
        self.send(
            messages,
            settings.max_tokens,
            settings.max_retries,
            settings.request_timeout,
            true,
        )
        .await
    }

    /// One tiny request, so that a bad key, an unknown model or a wrong URL
    /// stops the run before any work starts. It must fail fast: one
    /// attempt, within [`CHECK_TIMEOUT`] (or the request timeout, if
    /// shorter), no retries; a server that is down, unreachable or silent
    /// is [`LlmError::Unreachable`], naming the URL and what to check. The
    /// run's own requests keep their timeout and retries.
    pub async fn check(&self) -> Result<(), LlmError> {
        let timeout = self.inner.settings.request_timeout.min(CHECK_TIMEOUT);
        match self
            .send(
                &[Message::user("Reply with OK.")],
                Some(8),
                0,
                timeout,
                false,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(LlmError::Exhausted { url, last, .. }) => Err(LlmError::Unreachable { url, last }),
            Err(other) => Err(other),
        }
    }

    async fn send(
        &self,
        messages: &[Message],
        max_tokens: Option<u32>,
        max_retries: u32,
        timeout: Duration,
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
            let (what, retry_after) = match self.attempt(&body, timeout).await {
                Ok(mut reply) => {
                    let truncated = cut_to(&mut reply.content, reply_bound(max_tokens));
                    if truncated {
                        tracing::warn!(
                            url = %inner.endpoint,
                            bound = reply_bound(max_tokens),
                            "the model's reply is longer than max_tokens allows; cut"
                        );
                    }
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
                        truncated,
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

    /// One HTTP exchange, bounded by `timeout` from sending the request to
    /// the last byte of the reply, and by [`BODY_LIMIT`] in size.
    async fn attempt(&self, body: &[u8], timeout: Duration) -> Result<Reply, Failure> {
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
            // Read chunk by chunk: a body past the limit is never held whole.
            let mut response = response;
            let mut bytes = Vec::new();
            loop {
                let chunk = response.chunk().await.map_err(|e| {
                    Failure::passing(format!(
                        "HTTP {} reply cut off: {}",
                        status.as_u16(),
                        error_chain(&e.without_url())
                    ))
                })?;
                let Some(chunk) = chunk else { break };
                if bytes.len() + chunk.len() > BODY_LIMIT {
                    return Err(Failure::Fatal(LlmError::BadReply(format!(
                        "the HTTP {} reply is larger than {} MiB; an OpenAI-compatible server does not send that",
                        status.as_u16(),
                        BODY_LIMIT >> 20
                    ))));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, Failure>((status, retry_after, bytes))
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_joins_with_one_slash() {
        let expected = "http://h:1/v1/chat/completions";
        assert_eq!(chat_endpoint("http://h:1/v1"), expected);
        assert_eq!(chat_endpoint("http://h:1/v1/"), expected);
        assert_eq!(chat_endpoint(" http://h:1/v1// "), expected);
        assert_eq!(chat_endpoint("http://h:1/v1/chat/completions"), expected);
    }
}
