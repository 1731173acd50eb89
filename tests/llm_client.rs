//! `csv_agent::llm::Client` against a real loopback HTTP server playing
//! scripts: replies and token accounting, retries (429 with Retry-After,
//! 5xx, stalls, malformed and cut-off bodies, refused connections),
//! refusals with their hints, the bound on requests in flight, and the API
//! key staying out of every error.

#[path = "support/openai_server.rs"]
mod openai_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use csv_agent::llm::{Chat, Client, LlmError, LlmSettings, Message, Usage};
use openai_server::{approx_tokens, unused_base_url, Request, Response, Server};

const KEY: &str = "sk-test-0123456789abcdef";

/// Fast retries, so that failing paths take milliseconds.
fn settings(base_url: &str) -> LlmSettings {
    let mut settings = LlmSettings::new(base_url, "test-model");
    settings.max_retries = 3;
    settings.initial_backoff = Duration::from_millis(5);
    settings.max_backoff = Duration::from_millis(40);
    settings.request_timeout = Duration::from_secs(5);
    settings
}

fn client(server: &Server) -> Client {
    Client::new(settings(&server.base_url())).unwrap()
}

fn question() -> Vec<Message> {
    vec![
        Message::system("You are a careful data analyst."),
        Message::user("How many rows does the table have?"),
    ]
}

fn exhausted(result: Result<impl std::fmt::Debug, LlmError>) -> (u32, String) {
    match result {
        Err(LlmError::Exhausted { attempts, last, .. }) => (attempts, last),
        other => panic!("expected Exhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn reply_carries_content_and_exact_token_counts() {
    let server = Server::start(|req: &Request| match req.n_assistant() {
        0 => Response::reply("The table has 42 rows."),
        _ => Response::reply("Done.").finish_reason("length"),
    })
    .await;
    let mut settings = settings(&server.base_url());
    settings.temperature = Some(0.7);
    settings.max_tokens = Some(256);
    let client = Client::new(settings).unwrap();

    let mut messages = question();
    let first = client.complete(&messages).await.unwrap();
    assert_eq!(first.content, "The table has 42 rows.");
    assert_eq!(first.finish_reason.as_deref(), Some("stop"));
    let prompt_chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    assert_eq!(first.usage.prompt_tokens, prompt_chars.div_ceil(4) as u64);
    assert_eq!(
        first.usage.completion_tokens,
        approx_tokens("The table has 42 rows.")
    );
    assert_eq!((first.usage.requests, first.usage.retries), (1, 0));
    assert!(first.usage.latency_s > 0.0 && first.usage.latency_s < 1.0);

    messages.push(Message::assistant(first.content.clone()));
    messages.push(Message::user("Thanks."));
    let second = client.complete(&messages).await.unwrap();
    assert_eq!(second.content, "Done.");
    assert_eq!(second.finish_reason.as_deref(), Some("length"));

    let mut expected = Usage::default();
    expected.add(&first.usage);
    expected.add(&second.usage);
    let totals = client.totals();
    assert_eq!(
        (
            totals.prompt_tokens,
            totals.completion_tokens,
            totals.requests,
            totals.retries
        ),
        (expected.prompt_tokens, expected.completion_tokens, 2, 0)
    );
    assert!((totals.latency_s - expected.latency_s).abs() < 1e-9);

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let body = &requests[0].body;
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["temperature"], 0.7);
    assert_eq!(body["max_tokens"], 256);
    assert!(
        body.get("top_p").is_none(),
        "unset settings are not sent: {body}"
    );
    assert_eq!(requests[0].messages().len(), 2);
    assert_eq!(
        requests[0].system(),
        Some("You are a careful data analyst.")
    );
    assert_eq!(requests[1].last_user(), Some("Thanks."));
    assert_eq!(requests[1].n_assistant(), 1);
}

#[tokio::test]
async fn missing_usage_counts_zero_tokens_and_null_content_is_empty() {
    let server = Server::start(|req: &Request| {
        if req.nth_request() == 0 {
            Response::reply("no usage here").without_usage()
        } else {
            Response::json(serde_json::json!({
                "choices": [{"message": {"role": "assistant", "content": null,
                                         "reasoning_content": "thinking…"},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 8}
            }))
        }
    })
    .await;
    let client = client(&server);
    let first = client.complete(&question()).await.unwrap();
    assert_eq!(first.content, "no usage here");
    assert_eq!(
        (first.usage.prompt_tokens, first.usage.completion_tokens),
        (0, 0)
    );
    let second = client.complete(&question()).await.unwrap();
    assert_eq!(second.content, "");
    assert_eq!(
        (second.usage.prompt_tokens, second.usage.completion_tokens),
        (7, 8)
    );
    assert_eq!(client.totals().requests, 2);
}

#[tokio::test]
async fn rate_limit_waits_for_retry_after() {
    let server = Server::start(|req: &Request| {
        if req.nth_request() == 0 {
            Response::status(429, "Rate limit reached").with_header("Retry-After", "1")
        } else {
            Response::reply("ok")
        }
    })
    .await;
    let mut settings = settings(&server.base_url());
    // Retry-After is capped at twice max_backoff: leave room for 1 s.
    settings.max_backoff = Duration::from_secs(2);
    let client = Client::new(settings).unwrap();

    let started = Instant::now();
    let reply = client.complete(&question()).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(reply.content, "ok");
    assert_eq!((reply.usage.requests, reply.usage.retries), (1, 1));
    assert!(reply.usage.latency_s >= 1.0, "backoff is part of latency");
    assert_eq!(server.request_count(), 2);
    assert_eq!(client.totals().retries, 1);
}

#[tokio::test]
async fn retry_after_is_capped_at_twice_max_backoff() {
    let server = Server::start(|req: &Request| {
        if req.nth_request() == 0 {
            Response::status(503, "overloaded").with_header("Retry-After", "3600")
        } else {
            Response::reply("ok")
        }
    })
    .await;
    let started = Instant::now();
    let reply = client(&server).complete(&question()).await.unwrap();
    assert_eq!(reply.usage.retries, 1);
    // max_backoff is 40 ms in these tests.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_a_reply() {
    let server = Server::start(|req: &Request| match req.nth_request() {
        0 => Response::status(500, "boom"),
        1 => Response::raw(502, "<html>Bad Gateway</html>"),
        _ => Response::reply("third time lucky"),
    })
    .await;
    let client = client(&server);
    let reply = client.complete(&question()).await.unwrap();
    assert_eq!(reply.content, "third time lucky");
    assert_eq!(reply.usage.retries, 2);
    assert_eq!(server.request_count(), 3);
    let totals = client.totals();
    assert_eq!((totals.requests, totals.retries), (1, 2));
}

#[tokio::test]
async fn persistent_server_errors_exhaust_retries_naming_the_last() {
    let server = Server::start(|_: &Request| Response::status(503, "model is loading")).await;
    let client = client(&server);
    let error = client.complete(&question()).await.unwrap_err();
    let text = error.to_string();
    let (attempts, last) = exhausted(Err::<(), _>(error));
    assert_eq!(attempts, 4, "the first attempt and 3 retries");
    assert!(
        last.contains("503") && last.contains("model is loading"),
        "{last}"
    );
    assert!(text.contains(&server.base_url()), "{text}");
    assert_eq!(server.request_count(), 4);
    let totals = client.totals();
    assert_eq!((totals.requests, totals.retries), (0, 3));
}

#[tokio::test]
async fn stalled_reply_times_out_and_is_retried() {
    let server = Server::start(|req: &Request| {
        if req.nth_request() == 0 {
            Response::stall(Duration::from_secs(10))
        } else {
            Response::reply("awake")
        }
    })
    .await;
    let mut settings = settings(&server.base_url());
    settings.request_timeout = Duration::from_millis(300);
    let client = Client::new(settings).unwrap();
    let reply = client.complete(&question()).await.unwrap();
    assert_eq!(reply.content, "awake");
    assert_eq!(reply.usage.retries, 1);
    assert!(reply.usage.latency_s >= 0.3, "{}", reply.usage.latency_s);
}

#[tokio::test]
async fn always_stalling_server_exhausts_with_timed_out() {
    let server = Server::start(|_: &Request| Response::stall(Duration::from_secs(10))).await;
    let mut settings = settings(&server.base_url());
    settings.request_timeout = Duration::from_millis(300);
    settings.max_retries = 2;
    let client = Client::new(settings).unwrap();
    let started = Instant::now();
    let (attempts, last) = exhausted(client.complete(&question()).await);
    assert_eq!(attempts, 3);
    assert!(last.contains("timed out after 300 ms"), "{last}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn malformed_json_is_retried_then_exhausted() {
    let server = Server::start(|_: &Request| Response::raw(200, "{\"choices\": [")).await;
    let (attempts, last) = exhausted(client(&server).complete(&question()).await);
    assert_eq!(attempts, 4);
    assert!(last.contains("malformed JSON"), "{last}");
    assert!(last.contains("{\"choices\": ["), "names the body: {last}");
    assert_eq!(server.request_count(), 4);
}

#[tokio::test]
async fn malformed_then_cut_off_replies_are_retried() {
    let server = Server::start(|req: &Request| match req.nth_request() {
        0 => Response::raw(200, "<html>proxy hiccup</html>"),
        1 => Response::cut_off("a long reply that never arrives in full ".repeat(50)),
        _ => Response::reply("whole"),
    })
    .await;
    let reply = client(&server).complete(&question()).await.unwrap();
    assert_eq!(reply.content, "whole");
    assert_eq!(reply.usage.retries, 2);
}

#[tokio::test]
async fn well_formed_reply_without_choices_is_a_bad_reply() {
    let server = Server::start(|_: &Request| {
        Response::json(serde_json::json!({"object": "chat.completion", "choices": []}))
    })
    .await;
    match client(&server).complete(&question()).await {
        Err(LlmError::BadReply(message)) => assert!(message.contains("choices"), "{message}"),
        other => panic!("expected BadReply, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1, "not retried");
}

#[tokio::test]
async fn unauthorized_is_refused_at_once_without_leaking_the_key() {
    // Some servers echo the key they were given.
    let server = Server::start(|req: &Request| {
        let given = req
            .authorization()
            .unwrap_or_default()
            .trim_start_matches("Bearer ");
        Response::status(401, format!("Incorrect API key provided: {given}"))
    })
    .await;
    let mut settings = settings(&server.base_url());
    settings.api_key = Some(KEY.into());
    let client = Client::new(settings).unwrap();
    let error = client.complete(&question()).await.unwrap_err();
    let shown = format!("{error} / {error:?} / {client:?}");
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
    match error {
        LlmError::Refused { status, message } => {
            assert_eq!(status, 401);
            assert!(message.contains("Incorrect API key provided"), "{message}");
            assert!(message.contains("check OPENAI_API_KEY"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn unknown_model_is_refused_with_the_model_hint() {
    let server = Server::start(|req: &Request| {
        Response::status(
            404,
            format!("The model `{}` does not exist", req.model().unwrap_or("?")),
        )
    })
    .await;
    match client(&server).complete(&question()).await {
        Err(LlmError::Refused { status, message }) => {
            assert_eq!(status, 404);
            assert!(
                message.contains("The model `test-model` does not exist"),
                "{message}"
            );
            assert!(
                message.contains("--model") && message.contains("/v1"),
                "{message}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn wrong_base_url_path_is_refused_with_the_url_hint() {
    let server = Server::start(|_: &Request| Response::reply("unreachable")).await;
    // Missing `/v1`: the server's 404 for an unknown path.
    let base_url = server.base_url().trim_end_matches("/v1").to_owned();
    let client = Client::new(settings(&base_url)).unwrap();
    assert_eq!(client.endpoint(), format!("{base_url}/chat/completions"));
    match client.complete(&question()).await {
        Err(LlmError::Refused {
            status: 404,
            message,
        }) => {
            assert!(message.contains("end in /v1"), "{message}")
        }
        other => panic!("expected Refused 404, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_stay_within_the_bound() {
    let server = Server::start_with_latency(Duration::from_millis(200), |req: &Request| {
        Response::reply(format!("reply to {}", req.last_user().unwrap_or_default()))
    })
    .await;
    let mut settings = settings(&server.base_url());
    settings.max_concurrent_requests = 2;
    let client = Client::new(settings).unwrap();

    let started = Instant::now();
    let calls = (0..10).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.complete(&[Message::user(format!("q{i}"))]).await })
    });
    let replies = futures::future::join_all(calls).await;
    let elapsed = started.elapsed();

    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.unwrap().unwrap();
        assert_eq!(reply.content, format!("reply to q{i}"));
        // Queueing for a slot is not latency: each call is one 200 ms round.
        assert!(
            reply.usage.latency_s < 0.6,
            "latency {}",
            reply.usage.latency_s
        );
    }
    assert_eq!(server.max_in_flight(), 2);
    assert!(
        elapsed >= Duration::from_millis(1000),
        "5 rounds of 2: {elapsed:?}"
    );
    assert_eq!(client.totals().requests, 10);
}

#[tokio::test]
async fn authorization_header_only_with_a_key() {
    let server = Server::start(|_: &Request| Response::reply("ok")).await;
    let mut with_key = settings(&server.base_url());
    with_key.api_key = Some(KEY.into());
    Client::new(with_key)
        .unwrap()
        .complete(&question())
        .await
        .unwrap();
    client(&server).complete(&question()).await.unwrap();
    let mut blank_key = settings(&server.base_url());
    blank_key.api_key = Some("  ".into());
    Client::new(blank_key)
        .unwrap()
        .complete(&question())
        .await
        .unwrap();

    let requests = server.requests();
    assert_eq!(
        requests[0].authorization(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(requests[1].authorization(), None);
    assert_eq!(requests[2].authorization(), None, "a blank key is no key");
    assert_eq!(requests[0].header("Content-Type"), Some("application/json"));
}

#[tokio::test]
async fn refused_connection_exhausts_retries_quickly() {
    let mut settings = settings(&unused_base_url());
    settings.api_key = Some(KEY.into());
    let client = Client::new(settings).unwrap();
    let started = Instant::now();
    let error = client.complete(&question()).await.unwrap_err();
    assert!(!format!("{error} {error:?}").contains(KEY));
    let (attempts, last) = exhausted(Err::<(), _>(error));
    assert_eq!(attempts, 4);
    assert!(last.to_lowercase().contains("connect"), "{last}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.totals().retries, 3);
}

#[tokio::test]
async fn check_sends_one_tiny_request_and_is_not_counted() {
    let server = Server::start(|req: &Request| {
        if req.last_user() == Some("Reply with OK.") && req.max_tokens() == Some(8) {
            Response::reply("OK")
        } else {
            Response::status(400, "unexpected check request")
        }
    })
    .await;
    let client = client(&server);
    client.check().await.unwrap();
    assert_eq!(server.request_count(), 1);
    assert_eq!(client.totals(), Usage::default());
}

#[tokio::test]
async fn check_fails_fast_on_a_bad_key() {
    let server = Server::start(|_: &Request| Response::status(401, "invalid key")).await;
    let mut settings = settings(&server.base_url());
    settings.api_key = Some(KEY.into());
    let error = Client::new(settings).unwrap().check().await.unwrap_err();
    assert!(
        matches!(error, LlmError::Refused { status: 401, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("OPENAI_API_KEY"), "{error}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn client_works_as_a_chat_trait_object() {
    let server =
        Server::start(|req: &Request| Response::reply(format!("turn {}", req.n_assistant()))).await;
    let chat: Arc<dyn Chat> = Arc::new(client(&server));
    assert_eq!(chat.model(), "test-model");
    let reply = chat
        .chat(&[
            Message::user("a"),
            Message::assistant("b"),
            Message::user("c"),
        ])
        .await
        .unwrap();
    assert_eq!(reply.content, "turn 1");
}

#[tokio::test]
async fn invalid_settings_are_rejected_before_any_request() {
    let mut settings = settings("localhost:8000/v1");
    settings.api_key = Some(KEY.into());
    match Client::new(settings) {
        Err(LlmError::Settings(message)) => {
            assert!(message.contains("http://"), "{message}");
            assert!(!message.contains(KEY));
        }
        other => panic!("expected a settings error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_script_shows_in_the_error() {
    let server = Server::start(|_: &Request| panic!("script bug")).await;
    let (_, last) = exhausted(client(&server).complete(&question()).await);
    assert!(
        last.contains("test server script panicked: script bug"),
        "{last}"
    );
}
