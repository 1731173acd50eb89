//! The model client against a hostile OpenAI-compatible server (the
//! loopback stub of tests/support): a reply far longer than `max_tokens`
//! could produce is cut and flagged and never goes back whole, and a server
//! that accepts connections and never answers fails the start-up check in
//! seconds, not in three full request timeouts.
//!
//! The measured figures are printed (`--nocapture`) for the record.

mod common;
#[path = "support/openai_server.rs"]
mod openai_server;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use csv_agent::llm::{reply_bound, Client, LlmError, LlmSettings, Message, CHECK_TIMEOUT};
use csv_agent::sandbox::Sandbox;
use csv_agent::schema::Question;
use csv_agent::teacher::agent::{run_agent, AgentConfig, Role};
use openai_server::{Request, Response, Server};
use serde_json::json;

const FIVE_MB: usize = 5 * 1024 * 1024;

/// 5 MB of prose with a python fence opened and never closed: what a
/// runaway or hostile server sends.
fn huge_reply() -> String {
    let mut text = String::from("Let me think about this.\n```python\n");
    while text.len() < FIVE_MB {
        text.push_str("print('this line repeats and repeats') # padding padding\n");
    }
    text
}

const SOLVE: &str = "Count the rows and submit.\n```python\nn = len(df)\nhook(n, \"n = len(df)\", name=\"n\")\nsubmit(n)\n```";

#[tokio::test]
async fn a_five_megabyte_reply_is_cut_to_the_bound_and_flagged() {
    let server = Server::start(|_: &Request| Response::reply(huge_reply())).await;
    let mut settings = LlmSettings::new(server.base_url(), "hostile");
    settings.max_tokens = Some(256);
    settings.max_retries = 0;
    let client = Client::new(settings).unwrap();
    let started = Instant::now();
    let reply = client
        .complete(&[Message::user("How many rows?")])
        .await
        .unwrap();
    let bound = reply_bound(Some(256));
    eprintln!(
        "5 MB reply with max_tokens 256: kept {} of {} bytes (bound {bound}), truncated = {}, in {:.0} ms",
        reply.content.len(),
        huge_reply().len(),
        reply.truncated,
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert!(reply.truncated);
    assert!(reply.content.len() <= bound, "{}", reply.content.len());
    assert!(reply.content.starts_with("Let me think"));
    assert_eq!(reply.usage.requests, 1);

    // Without max_tokens the hard cap applies.
    let mut settings = LlmSettings::new(server.base_url(), "hostile");
    settings.max_retries = 0;
    let reply = Client::new(settings)
        .unwrap()
        .complete(&[Message::user("How many rows?")])
        .await
        .unwrap();
    assert!(reply.truncated);
    assert_eq!(reply.content.len(), reply_bound(None));

    // A reply within the bound is left alone.
    let small = Server::start(|_: &Request| Response::reply("Fine.")).await;
    let mut settings = LlmSettings::new(small.base_url(), "polite");
    settings.max_tokens = Some(256);
    let reply = Client::new(settings)
        .unwrap()
        .complete(&[Message::user("?")])
        .await
        .unwrap();
    assert_eq!((reply.content.as_str(), reply.truncated), ("Fine.", false));
}

fn question() -> Question {
    serde_json::from_value(json!({
        "id": "q-rows", "question_text": "How many rows does the table have?",
        "hint": "len(df)", "difficulty": "EASY", "n_steps": 1, "source": "template",
        "dataset": "penguins", "dataset_hash": "0", "output_type": "scalar", "output_schema": "number"
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_reply_is_never_stored_or_sent_back_whole() {
    // The first reply of every conversation is 5 MB; then the model behaves.
    let server = Server::start(|req: &Request| {
        if req.n_assistant() == 0 {
            Response::reply(huge_reply())
        } else {
            Response::reply(SOLVE)
        }
    })
    .await;
    let mut settings = LlmSettings::new(server.base_url(), "hostile");
    settings.max_tokens = Some(1024);
    let client = Client::new(settings).unwrap();

    let dir = world_readable_dir();
    let text = std::fs::read_to_string(penguins()).unwrap();
    let csv = write_csv(dir.path(), "penguins.csv", &text);
    let sb = Sandbox::start(options(&csv)).await.expect("sandbox starts");
    let trace = run_agent(
        &client,
        &sb,
        Role::Gold,
        &question(),
        "OVERVIEW: penguins",
        &AgentConfig::default(),
        "teacher",
    )
    .await;
    sb.shutdown().await;

    assert!(trace.success, "{trace:#?}");
    assert_eq!((trace.replies_cut, trace.format_errors), (1, 1));
    assert_eq!(trace.turns.len(), 1, "the cut reply is not a turn");
    let stored = serde_json::to_string(&trace).unwrap().len();
    let requests = server.requests();
    let sizes: Vec<u64> = requests.iter().map(Request::prompt_chars).collect();
    eprintln!(
        "agent after a 5 MB reply: request sizes (prompt chars) {sizes:?}; trace JSON {stored} bytes"
    );
    assert_eq!(requests.len(), 2);
    // The second request carries the clipped reply, not 5 MB of it.
    assert!(sizes[1] < 20_000, "{sizes:?}");
    assert!(stored < 20_000, "{stored}");
    let json = serde_json::to_value(&trace).unwrap();
    assert_eq!(json["replies_cut"], 1);
}

#[tokio::test]
async fn the_start_up_check_fails_in_seconds_against_a_silent_server() {
    // Accepts, reads the request, never answers.
    let server = Server::start(|_: &Request| Response::stall(Duration::from_secs(600))).await;
    // The run's defaults: 120 s per request, 6 retries.
    let settings = LlmSettings::new(server.base_url(), "silent");
    assert_eq!(settings.request_timeout, Duration::from_secs(120));
    let client = Client::new(settings).unwrap();
    let started = Instant::now();
    let error = client.check().await.unwrap_err();
    let took = started.elapsed();
    eprintln!(
        "start-up check against a silent server failed in {:.1} s: {error}",
        took.as_secs_f64()
    );
    assert!(
        took >= CHECK_TIMEOUT && took < CHECK_TIMEOUT + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(matches!(error, LlmError::Unreachable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&server.base_url()), "{message}");
    assert!(message.contains("timed out after 10 s"), "{message}");
    assert!(message.contains("--base-url"), "{message}");
    assert_eq!(server.request_count(), 1, "one attempt, no retries");
}

#[tokio::test]
async fn a_refused_connection_fails_the_check_at_once_naming_the_url() {
    let url = openai_server::unused_base_url();
    let client = Client::new(LlmSettings::new(url.clone(), "nobody")).unwrap();
    let started = Instant::now();
    let error = client.check().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(error, LlmError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains(&url), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_2_in_seconds_when_the_model_server_is_silent() {
    let server = Server::start(|_: &Request| Response::stall(Duration::from_secs(600))).await;
    let url = server.base_url();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_csv-agent"))
            .args([
                "validate",
                "--csv",
                penguins().to_str().unwrap(),
                "--question",
                "How many rows?",
                "--model",
                "silent",
                "--base-url",
                &url,
            ])
            .env_remove("OPENAI_BASE_URL")
            .env_remove("CSV_AGENT_CONFIG")
            .env_remove("OPENAI_API_KEY")
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "csv-agent validate against a silent server: exit {:?} after {:.1} s",
        out.status.code(),
        took.as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(stderr.contains(&server.base_url()), "{stderr}");
    assert!(stderr.contains("start-up check"), "{stderr}");
}
