//! LLM question generation against a real sandbox on penguins, with a
//! scripted model: the exploration cells really run, the proposals are
//! validated against the profiled columns, and the mix is filled.

mod common;

use std::sync::Mutex;

use common::*;
use csv_agent::llm::{BoxFuture, Chat, Completion, LlmError, Message};
use csv_agent::profile::{profile, DataProfile};
use csv_agent::questions::llm::{
    generate, llm_question_id, Generated, GenerationConfig, GenerationError,
};
use csv_agent::sandbox::Sandbox;
use csv_agent::schema::{Difficulty, QuestionSource, Usage};

const HASH: &str = "0123456789abcdef";

/// Replies by the number of assistant messages so far; records every
/// request. Past the script, or at `fail_at`, it fails like a dead server.
struct Scripted {
    replies: Vec<String>,
    fail_at: Option<usize>,
    requests: Mutex<Vec<Vec<Message>>>,
}

impl Scripted {
    fn new(replies: Vec<String>) -> Self {
        Scripted {
            replies,
            fail_at: None,
            requests: Mutex::new(Vec::new()),
        }
    }
    fn last_request(&self) -> Vec<Message> {
        self.requests.lock().unwrap().last().cloned().unwrap()
    }
    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn usage_of_one() -> Usage {
    Usage {
        prompt_tokens: 100,
        completion_tokens: 10,
        requests: 1,
        retries: 0,
        latency_s: 0.5,
        failed: 0,
    }
}

impl Chat for Scripted {
    fn model(&self) -> &str {
        "scripted"
    }
    fn chat<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(messages.to_vec());
            let n = messages.iter().filter(|m| m.role == "assistant").count();
            match self.replies.get(n).filter(|_| self.fail_at != Some(n)) {
                Some(reply) => Ok(Completion {
                    content: reply.clone(),
                    finish_reason: Some("stop".into()),
                    usage: usage_of_one(),
                    truncated: false,
                }),
                None => Err(LlmError::Exhausted {
                    url: "http://127.0.0.1:9/v1/chat/completions".into(),
                    attempts: 3,
                    last: "connection refused".into(),
                }),
            }
        })
    }
}

fn q(text: &str, difficulty: &str, output_type: &str) -> serde_json::Value {
    serde_json::json!({
        "question_text": text,
        "hint": "Use pandas on df.",
        "difficulty": difficulty,
        "n_steps": 2,
        "output_type": output_type,
        "output_schema": "see the question",
    })
}

fn script() -> Vec<String> {
    let first_round = serde_json::json!([
        q("What is the mean of `body_mass_g`, ignoring missing values? Round to 2 decimals.", "EASY", "number"),
        q("what is the mean of `body_mass_g`, ignoring missing values?  Round to 2 decimals", "EASY", "number"),
        q("How many rows have a missing value in `sex`?", "EASY", "number"),
        q("What is the largest value of `year`?", "EASY", "number"),
        q("Which `island` has the most penguins? If tied, the alphabetically first.", "MEDIUM", "string"),
        q("What is the mean `flipper_length_mm` of Gentoo penguins (`species`)? Round to 1 decimal.", "MEDIUM", "number"),
        q("What is the average weight of a penguin?", "MEDIUM", "number"),
        q("Which `species` has the largest median ratio of `bill_length_mm` to `bill_depth_mm`?", "HARD", "string"),
        q("For each `island`, what share of rows is male? Round to 3 decimals.", "INSANE", "dict"),
    ]);
    let more = serde_json::json!({"questions": [
        q("Is the Pearson correlation between `flipper_length_mm` and `body_mass_g`, over rows where both are present, above 0.8?", "VERY_HARD", "boolean"),
    ]});
    vec![
        "First the shape of the frame.\n```python\nprint(df.shape)\n```".into(),
        format!("I have seen enough.\n```json\n{first_round}\n```"),
        "How many of each species?\n```python\nprint(df['species'].value_counts())\n```".into(),
        "Where are values missing?\n```python\nprint(df.isna().sum())\n```".into(),
        "EXPLORATION DONE".into(),
        format!("Here are my questions.\n```json\n{first_round}\n```"),
        format!("```json\n{more}\n```"),
    ]
}

async fn penguins_sandbox() -> (Sandbox, DataProfile) {
    let sb = Sandbox::start(options(&penguins()))
        .await
        .expect("sandbox starts");
    let mut task = sb.task();
    let data = profile(&mut task).await.expect("profile");
    drop(task);
    (sb, data)
}

fn config() -> GenerationConfig {
    GenerationConfig {
        n_questions: 6,
        ..GenerationConfig::default()
    }
}

async fn run(chat: &Scripted, sb: &Sandbox, data: &DataProfile) -> Generated {
    generate(chat, sb, data, "penguins", HASH, &config())
        .await
        .expect("questions are generated")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_model_explores_proposes_and_fills_the_mix() {
    let (sb, data) = penguins_sandbox().await;
    let chat = Scripted::new(script());
    let out = run(&chat, &sb, &data).await;

    // The conversation: every request alternates user / assistant after
    // the system prompt.
    let msgs = chat.last_request();
    assert_eq!(chat.calls(), 7);
    assert_eq!(msgs.len(), 14);
    assert_eq!(msgs[0].role, "system");
    assert!(
        msgs[0].content.contains("3 turns and at most 8"),
        "{}",
        msgs[0].content
    );
    for (i, m) in msgs.iter().enumerate().skip(1) {
        let want = if i % 2 == 1 { "user" } else { "assistant" };
        assert_eq!(m.role, want, "message {i}");
    }
    // The first cell really ran on penguins.
    assert!(msgs[3].content.contains("(344, 8)"), "{}", msgs[3].content);
    // Proposing after one turn is refused.
    assert!(
        msgs[5].content.starts_with("Not yet"),
        "{}",
        msgs[5].content
    );
    assert!(msgs[7].content.contains("Adelie"), "{}", msgs[7].content);
    assert!(msgs[9].content.contains("sex"), "{}", msgs[9].content);
    // 1.5× the targets 2/2/1/1 are asked for, with the real column names.
    let propose = &msgs[11].content;
    for want in [
        "- EASY: 3",
        "- MEDIUM: 3",
        "- HARD: 2",
        "- VERY_HARD: 2",
        "`body_mass_g`",
    ] {
        assert!(propose.contains(want), "{want} in {propose}");
    }
    // VERY_HARD came out short: asked once more, told what was dropped.
    let more = &msgs[13].content;
    assert!(more.contains("2 more VERY_HARD"), "{more}");
    assert!(more.contains("names no column"), "{more}");

    assert_eq!(out.exploration_turns, 3);
    let mut mix = [0usize; 4];
    for q in &out.questions {
        mix[Difficulty::ALL
            .iter()
            .position(|d| *d == q.difficulty)
            .unwrap()] += 1;
        assert_eq!(q.id, llm_question_id(&q.question_text, HASH));
        assert_eq!(q.source, QuestionSource::Llm);
        assert_eq!(q.dataset, "penguins");
        assert!(q.ground_truth.is_none());
    }
    assert_eq!(mix, [2, 2, 1, 1], "{:#?}", out.questions);
    assert_eq!(
        out.questions[5].output_type.as_deref(),
        Some("boolean"),
        "the VERY_HARD question of the second round"
    );

    let reasons: Vec<(&str, &str)> = out
        .dropped
        .iter()
        .map(|d| (d.question_text.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(reasons[0].1.contains("duplicate"), "{reasons:#?}");
    assert!(reasons[1].0.contains("average weight") && reasons[1].1.contains("names no column"));
    assert!(
        reasons[2].1.contains("unknown difficulty \"INSANE\""),
        "{reasons:#?}"
    );
    assert!(reasons[3].0.contains("`year`") && reasons[3].1.starts_with("surplus"));

    let one = usage_of_one();
    assert_eq!(out.usage.requests, 7);
    assert_eq!(out.usage.prompt_tokens, 7 * one.prompt_tokens);
    assert_eq!(out.usage.completion_tokens, 7 * one.completion_tokens);
    assert!((out.usage.latency_s - 3.5).abs() < 1e-9);

    // Ids are stable: the same conversation again gives the same questions.
    let again = run(&Scripted::new(script()), &sb, &data).await;
    let ids = |g: &Generated| g.questions.iter().map(|q| q.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&out), ids(&again));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_or_one_ignoring_the_format_ends_generation() {
    let (sb, data) = penguins_sandbox().await;

    // The server dies after the first cell ran.
    let mut chat = Scripted::new(script());
    chat.fail_at = Some(1);
    let err = generate(&chat, &sb, &data, "penguins", HASH, &config())
        .await
        .expect_err("the model failed");
    assert!(matches!(err, GenerationError::Model { .. }), "{err:?}");
    assert_eq!(chat.calls(), 2);

    // Prose without code, again and again: three corrections, then give up.
    let chat = Scripted::new(vec!["The data looks interesting.".into(); 10]);
    let err = generate(&chat, &sb, &data, "penguins", HASH, &config())
        .await
        .expect_err("no code");
    assert!(matches!(err, GenerationError::Format(_)), "{err:?}");
    assert_eq!(chat.calls(), 4);

    // Proposals that never parse: one correction, then NoQuestions.
    let mut replies: Vec<String> = script()[..5].to_vec();
    replies.extend(["[not json]".to_string(), "still {not json}".to_string()]);
    let chat = Scripted::new(replies);
    let err = generate(&chat, &sb, &data, "penguins", HASH, &config())
        .await
        .expect_err("bad json");
    match err {
        GenerationError::NoQuestions(reason) => {
            assert!(reason.contains("not valid"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    sb.shutdown().await;
}
