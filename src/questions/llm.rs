//! LLM question generation: a chat model explores the dataset in one jailed
//! worker (its cells really run; it reads their output), then proposes
//! questions as JSON. This module owns that conversation, the prompts
//! (`prompts/*.txt`, embedded), the validation of each proposal against the
//! profiled columns, stable ids, and picking the final set to a difficulty
//! mix.
//!
//! It must never establish ground truth or trust the model's answers: LLM
//! questions leave here with `ground_truth: None`; the teacher's
//! triangulation decides which ones verify. It speaks to the model only
//! through the [`Chat`] trait and never retries a failed request itself (the
//! client does; a [`GenerationError::Model`] is retried by the caller on a
//! later run).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::{Chat, LlmError, Message};
use crate::profile::DataProfile;
use crate::prompt;
use crate::prompt::Prompt;
use crate::questions::template::short_hash;
use crate::sandbox::SandboxError;
use crate::schema::{Difficulty, Question, Usage};
use crate::serve::source::TaskSource;
use crate::teacher::reply::{clip, observation, parse_reply};

mod proposals;

use proposals::*;
pub use proposals::{parse_proposals, validate_proposals};

// ------------------------------------------------------------------ prompts

const EXPLORE_SYSTEM: Prompt =
    prompt!("explore_system.txt", ["overview", "min_turns", "max_turns"]);
const EXPLORE_START: Prompt = prompt!("explore_start.txt", []);
const EXPLORE_MORE: Prompt = prompt!("explore_more.txt", ["turns_done", "min_turns"]);
const REFORMAT: Prompt = prompt!("reformat.txt", ["problem"]);
const PROPOSE: Prompt = prompt!("propose.txt", ["total", "counts", "columns"]);
const PROPOSE_MORE: Prompt = prompt!("propose_more.txt", ["count", "difficulty", "dropped"]);
const FIX_JSON: Prompt = prompt!("fix_json.txt", ["problem"]);

const PROMPTS: [&Prompt; 7] = [
    &EXPLORE_SYSTEM,
    &EXPLORE_START,
    &EXPLORE_MORE,
    &REFORMAT,
    &PROPOSE,
    &PROPOSE_MORE,
    &FIX_JSON,
];

/// A short hash of every prompt file (name and text): questions generated
/// under other prompts can be told apart.
pub fn prompt_version() -> String {
    crate::prompt::version(&PROMPTS)
}

// ------------------------------------------------------------------ settings and results

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Questions wanted per dataset.
    pub n_questions: usize,
    /// Shares of EASY, MEDIUM, HARD, VERY_HARD (need not sum to 1).
    pub mix: [f64; 4],
    /// Cells the model must run before it may propose.
    pub min_exploration_turns: u32,
    /// After this many cells it is asked to propose.
    pub max_exploration_turns: u32,
    /// Per stream of a cell's observation.
    pub observation_chars: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            n_questions: 12,
            mix: [0.3, 0.3, 0.2, 0.2],
            min_exploration_turns: 3,
            max_exploration_turns: 8,
            observation_chars: 3000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// At most `n_questions`, ordered by difficulty, then as proposed.
    pub questions: Vec<Question>,
    /// Every proposal not kept, with the reason (including valid ones left
    /// over once the mix was filled).
    pub dropped: Vec<Dropped>,
    /// All completions of the conversation, summed.
    pub usage: Usage,
    /// Cells the model ran while exploring.
    pub exploration_turns: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub question_text: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("the model failed: {error}")]
    Model {
        error: LlmError,
        /// What the conversation cost before the failure.
        usage: Usage,
    },
    #[error("the exploration sandbox failed: {0}")]
    Sandbox(#[from] SandboxError),
    /// The model kept replying without exactly one python code block.
    #[error("the model did not follow the exploration format: {0}")]
    Format(String),
    #[error("no usable questions: {0}")]
    NoQuestions(String),
}

/// Replies without exactly one code block that get a correction; the next
/// one ends the exploration with [`GenerationError::Format`].
const MAX_CORRECTIONS: u32 = 3;

/// How many more proposals to ask for than needed, so that validation
/// losses still fill the mix.
const OVERASK: f64 = 1.5;

// ------------------------------------------------------------------ ids

/// Sentence punctuation and quotes trimmed from both ends of a question.
const END_PUNCT: &[char] = &[
    '.', '?', '!', ',', ';', ':', '…', '"', '\'', '`', '“', '”', '‘', '’', '«', '»', '¿', '¡',
];

/// Lowercase, whitespace collapsed, sentence punctuation stripped at both
/// ends: `"What is X?"` and `"what is  x"` are the same question.
pub fn normalize_question(text: &str) -> String {
    let collapsed = text
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    collapsed
        .trim_matches(|c: char| c.is_whitespace() || END_PUNCT.contains(&c))
        .to_string()
}

/// Stable across runs and models: the normalized text and the dataset's
/// content hash.
pub fn llm_question_id(text: &str, dataset_hash: &str) -> String {
    short_hash(&format!(
        "llm\0{}\0{dataset_hash}",
        normalize_question(text)
    ))
}

// ------------------------------------------------------------------ mix

fn index(d: Difficulty) -> usize {
    Difficulty::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

/// Questions per difficulty for `n` by the largest-remainder method (ties
/// go to the easier difficulty). Non-positive or non-finite shares count as
/// 0; an all-zero mix counts as uniform.
fn mix_targets(n: usize, mix: [f64; 4]) -> [usize; 4] {
    let mut weights = mix.map(|m| if m.is_finite() && m > 0.0 { m } else { 0.0 });
    if weights.iter().sum::<f64>() <= 0.0 {
        weights = [1.0; 4];
    }
    let sum: f64 = weights.iter().sum();
    let raw = weights.map(|w| n as f64 * w / sum);
    let mut targets = raw.map(|r| r.floor() as usize);
    let left = n.saturating_sub(targets.iter().sum());
    let mut order = [0usize, 1, 2, 3];
    order.sort_by(|&a, &b| {
        let (fa, fb) = (raw[a] - raw[a].floor(), raw[b] - raw[b].floor());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(left) {
        targets[i] += 1;
    }
    targets
}

/// Pick at most `n` questions to the mix: each difficulty's target by the
/// largest-remainder method, taken in proposal order; a short bucket is
/// filled from the nearest difficulties' surplus (the harder one first on
/// a tie, so the set keeps its difficulty). Ordered by difficulty, then as
/// proposed. Deterministic.
pub fn fill_mix(candidates: Vec<Question>, n: usize, mix: [f64; 4]) -> Vec<Question> {
    let targets = mix_targets(n, mix);
    let mut buckets: [Vec<usize>; 4] = Default::default();
    for (i, q) in candidates.iter().enumerate() {
        buckets[index(q.difficulty)].push(i);
    }
    let mut take: [usize; 4] = std::array::from_fn(|d| targets[d].min(buckets[d].len()));
    for d in 0..4 {
        let mut deficit = targets[d].saturating_sub(take[d]);
        let mut donors: Vec<usize> = (0..4).filter(|&j| j != d).collect();
        donors.sort_by_key(|&j| (j.abs_diff(d), j < d));
        for j in donors {
            let spare = buckets[j].len() - take[j];
            let k = spare.min(deficit);
            take[j] += k;
            deficit -= k;
        }
    }
    let mut chosen: Vec<usize> = (0..4)
        .flat_map(|d| buckets[d][..take[d]].iter().copied())
        .collect();
    chosen.sort_by_key(|&i| (index(candidates[i].difficulty), i));
    let mut slots: Vec<Option<Question>> = candidates.into_iter().map(Some).collect();
    chosen.into_iter().filter_map(|i| slots[i].take()).collect()
}

// ------------------------------------------------------------------ the conversation

struct Conversation<'a> {
    chat: &'a dyn Chat,
    messages: Vec<Message>,
    /// The caller's running total, so a failure still knows the cost.
    usage: &'a mut Usage,
}

/// Characters of a reply cut for length kept in the conversation.
const CUT_REPLY_KEPT_CHARS: usize = 2_000;

impl Conversation<'_> {
    /// Send `user`, return the model's reply (kept in the history).
    async fn ask(&mut self, user: String) -> Result<String, LlmError> {
        self.messages.push(Message::user(user));
        let completion = self.chat.chat(&self.messages).await?;
        self.usage.add(&completion.usage);
        // A reply cut for length (longer than max_tokens could produce)
        // goes back clipped, so it does not weigh on every later request.
        let kept = if completion.truncated {
            clip(&completion.content, CUT_REPLY_KEPT_CHARS)
        } else {
            completion.content.clone()
        };
        self.messages.push(Message::assistant(kept));
        Ok(completion.content)
    }

    /// Ask for proposals; on unreadable JSON, say what was wrong once and
    /// ask again. The inner error is the last problem found.
    async fn proposals(&mut self, prompt: String) -> Result<Result<Vec<Value>, String>, LlmError> {
        let reply = self.ask(prompt).await?;
        let problem = match parse_proposals(&reply) {
            Ok(items) => return Ok(Ok(items)),
            Err(problem) => problem,
        };
        let reply = self.ask(FIX_JSON.render(&[("problem", &problem)])).await?;
        Ok(parse_proposals(&reply).map_err(|e| format!("after one correction: {e}")))
    }
}

/// The exploration: cells run in one task until the model is done (after
/// the minimum), or the maximum is reached. Returns the cells run and,
/// when the maximum ended it, the last observation (not yet sent).
async fn explore(
    conv: &mut Conversation<'_>,
    sandbox: &dyn TaskSource,
    config: &GenerationConfig,
) -> Result<(u32, Option<String>), GenerationError> {
    let min = config.min_exploration_turns;
    let max = config.max_exploration_turns.max(min);
    if max == 0 {
        return Ok((0, None));
    }
    let mut task = sandbox.task();
    let mut turns = 0u32;
    let mut corrections = 0u32;
    let mut next = EXPLORE_START.render(&[]);
    loop {
        let reply = parse_reply(&conv.ask(next).await?);
        let correction = if reply.unclosed {
            REFORMAT.render(&[("problem", "it was cut off inside a code block")])
        } else {
            match reply.code_blocks.len() {
                1 => {
                    let cell = task.run_cell(&reply.code_blocks[0]).await?;
                    turns += 1;
                    let seen = observation(&cell, config.observation_chars);
                    if turns >= max {
                        return Ok((turns, Some(seen)));
                    }
                    next = seen;
                    continue;
                }
                0 if turns >= min => return Ok((turns, None)),
                // Proposing (or saying it is done) too early.
                0 => EXPLORE_MORE.render(&[
                    ("turns_done", &turns.to_string()),
                    ("min_turns", &min.to_string()),
                ]),
                k => REFORMAT.render(&[(
                    "problem",
                    &format!("it has {k} python code blocks, and exactly one is needed"),
                )]),
            }
        };
        corrections += 1;
        if corrections > MAX_CORRECTIONS {
            return Err(GenerationError::Format(format!(
                "{corrections} replies without exactly one python code block (after {turns} cells)"
            )));
        }
        next = correction;
    }
}

fn counts_text(counts: &[usize; 4]) -> String {
    Difficulty::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(d, n)| format!("- {}: {n}", d.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn overask(n: usize) -> usize {
    (n as f64 * OVERASK).ceil() as usize
}

fn dropped_text(dropped: &[Dropped]) -> String {
    if dropped.is_empty() {
        return "(none)".into();
    }
    dropped
        .iter()
        .take(12)
        .map(|d| format!("- {} — {}", clip(&d.question_text, 160), d.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Explore the dataset with the model, then have it propose questions;
/// validate them and pick `config.n_questions` to the difficulty mix.
pub async fn generate(
    chat: &dyn Chat,
    sandbox: &dyn TaskSource,
    data: &DataProfile,
    slug: &str,
    dataset_hash: &str,
    config: &GenerationConfig,
) -> Result<Generated, GenerationError> {
    let mut spent = Usage::default();
    match converse(chat, sandbox, data, slug, dataset_hash, config, &mut spent).await {
        // The model's failure carries what the conversation had cost.
        Err(GenerationError::Model { error, .. }) => {
            spent.add(&error.usage());
            Err(GenerationError::Model {
                error,
                usage: spent,
            })
        }
        other => other,
    }
}

impl From<LlmError> for GenerationError {
    fn from(error: LlmError) -> Self {
        GenerationError::Model {
            error,
            usage: Usage::default(),
        }
    }
}

async fn converse(
    chat: &dyn Chat,
    sandbox: &dyn TaskSource,
    data: &DataProfile,
    slug: &str,
    dataset_hash: &str,
    config: &GenerationConfig,
    spent: &mut Usage,
) -> Result<Generated, GenerationError> {
    let min = config.min_exploration_turns;
    let max = config.max_exploration_turns.max(min);
    let mut conv = Conversation {
        chat,
        messages: vec![Message::system(EXPLORE_SYSTEM.render(&[
            ("overview", data.overview.trim()),
            ("min_turns", &min.to_string()),
            ("max_turns", &max.to_string()),
        ]))],
        usage: spent,
    };
    let (exploration_turns, last_observation) = explore(&mut conv, sandbox, config).await?;

    let targets = mix_targets(config.n_questions, config.mix);
    let asked = targets.map(overask);
    let propose = PROPOSE.render(&[
        ("total", &asked.iter().sum::<usize>().to_string()),
        ("counts", &counts_text(&asked)),
        ("columns", &column_list(data)),
    ]);
    // At the maximum the last observation and the request go in one
    // message: some chat templates refuse two user messages in a row.
    let propose = match last_observation {
        Some(seen) => format!("{seen}\n\n{propose}"),
        None => propose,
    };
    let raw = conv
        .proposals(propose)
        .await?
        .map_err(GenerationError::NoQuestions)?;
    let mut seen = HashSet::new();
    let (mut candidates, mut dropped) =
        validate_proposals(raw, data, slug, dataset_hash, &mut seen);

    for d in Difficulty::ALL {
        let have = candidates.iter().filter(|q| q.difficulty == d).count();
        let short = targets[index(d)].saturating_sub(have);
        if short == 0 {
            continue;
        }
        let prompt = PROPOSE_MORE.render(&[
            ("count", &overask(short).to_string()),
            ("difficulty", d.as_str()),
            ("dropped", &dropped_text(&dropped)),
        ]);
        // A bad extra round is not fatal: the first round's questions
        // stand, and fill_mix borrows from the neighbouring difficulties.
        if let Ok(raw) = conv.proposals(prompt).await? {
            let (more, more_dropped) = validate_proposals(raw, data, slug, dataset_hash, &mut seen);
            candidates.extend(more);
            dropped.extend(more_dropped);
        }
    }

    if candidates.is_empty() {
        let reasons: Vec<String> = dropped.iter().take(5).map(|d| d.reason.clone()).collect();
        return Err(GenerationError::NoQuestions(format!(
            "all {} proposals were dropped ({})",
            dropped.len(),
            reasons.join("; ")
        )));
    }
    let questions = fill_mix(candidates.clone(), config.n_questions, config.mix);
    let kept: HashSet<&str> = questions.iter().map(|q| q.id.as_str()).collect();
    dropped.extend(
        candidates
            .iter()
            .filter(|q| !kept.contains(q.id.as_str()))
            .map(|q| Dropped {
                question_text: q.question_text.clone(),
                reason: format!(
                    "surplus: the difficulty mix was filled without this {} question",
                    q.difficulty.as_str()
                ),
            }),
    );
    Ok(Generated {
        questions,
        dropped,
        usage: *conv.usage,
        exploration_turns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{ColumnKind, ColumnProfile};
    use crate::schema::QuestionSource;
    use serde_json::json;

    #[test]
    fn prompt_placeholders_are_the_declared_ones() {
        for p in PROMPTS {
            if let Err(e) = p.check() {
                panic!("{e}");
            }
        }
        assert_eq!(prompt_version(), prompt_version());
        assert_eq!(prompt_version().len(), 12);
    }

    #[test]
    fn normalized_questions_ignore_case_spacing_and_end_punctuation() {
        assert_eq!(normalize_question("What is X?"), "what is x");
        assert_eq!(normalize_question("  what is  x "), "what is x");
        assert_eq!(normalize_question("What is\tX ?!"), "what is x");
        assert_eq!(normalize_question("\"Mean of `a`.\""), "mean of `a");
        assert_eq!(
            llm_question_id("What is X?", "h1"),
            llm_question_id("what is  x", "h1")
        );
        assert_ne!(
            llm_question_id("What is X?", "h1"),
            llm_question_id("What is X?", "h2")
        );
    }

    #[test]
    fn proposals_parse_fenced_bare_and_wrapped() {
        let fenced = "Here they are:\n```json\n[{\"question_text\": \"a\"}, {\"question_text\": \"b\"}]\n```\nDone.";
        assert_eq!(parse_proposals(fenced).unwrap().len(), 2);
        let bare = "Sure. [{\"question_text\": \"a\"}] hope that helps";
        assert_eq!(parse_proposals(bare).unwrap().len(), 1);
        let wrapped = "```json\n{\"questions\": [{\"question_text\": \"a\"}, {\"question_text\": \"b\"}]}\n```";
        assert_eq!(parse_proposals(wrapped).unwrap().len(), 2);
        let wrapped_bare = "{\"items\": [{\"question_text\": \"a\"}]}";
        assert_eq!(parse_proposals(wrapped_bare).unwrap().len(), 1);
        let thinking = "<think>[1, 2]</think>```\n[{\"question_text\": \"a\"}]\n```";
        assert_eq!(
            parse_proposals(thinking).unwrap(),
            vec![json!({"question_text": "a"})]
        );
    }

    #[test]
    fn garbage_proposals_say_what_is_wrong() {
        let none = parse_proposals("I cannot think of any questions.").unwrap_err();
        assert!(none.contains("no JSON array"), "{none}");
        let broken = parse_proposals("```json\n[{\"question_text\": \"a\",}]\n```").unwrap_err();
        assert!(broken.contains("not valid"), "{broken}");
        let cut = parse_proposals("```json\n[{\"question_text\": \"a\"").unwrap_err();
        assert!(cut.contains("not valid"), "{cut}");
        let empty = parse_proposals("```json\n[]\n```").unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        let scalar = parse_proposals("```json\n42\n```").unwrap_err();
        assert!(scalar.contains("expected a JSON array"), "{scalar}");
    }

    fn column(name: &str, kind: ColumnKind) -> ColumnProfile {
        ColumnProfile {
            name: name.into(),
            dtype: "float64".into(),
            kind,
            missing: 0,
            missing_share: 0.0,
            cardinality: 10,
            target_ok: kind != ColumnKind::IdLike,
            min: None,
            max: None,
            min_level_count: None,
            date_format: None,
            date_format_name: None,
            date_parsed_share: None,
        }
    }

    fn data() -> DataProfile {
        DataProfile {
            rows: 10,
            columns: 5,
            overview: "overview".into(),
            column_profiles: vec![
                column("body_mass_g", ColumnKind::Numeric),
                column("Species", ColumnKind::Categorical),
                column("user_id", ColumnKind::IdLike),
                column("a", ColumnKind::Numeric),
                column("Unnamed: 0", ColumnKind::IdLike),
            ],
        }
    }

    fn proposal(text: &str, difficulty: &str) -> Value {
        json!({"question_text": text, "hint": "use pandas", "difficulty": difficulty,
               "n_steps": 2, "output_type": "number", "output_schema": "a float"})
    }

    fn validate(raw: Vec<Value>) -> (Vec<Question>, Vec<Dropped>) {
        validate_proposals(raw, &data(), "toy", "hash", &mut HashSet::new())
    }

    #[test]
    fn valid_proposals_become_llm_questions() {
        let (kept, dropped) = validate(vec![
            proposal("Mean of `body_mass_g`?", "easy"),
            json!({"question_text": "Which species is heaviest?", "hint": " ",
                   "difficulty": "Very Hard", "n_steps": 3.0, "output_type": "String"}),
            proposal("What is the maximum body mass g?", "MEDIUM"),
            proposal("How many rows have `a` above 1?", "HARD"),
        ]);
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(kept.len(), 4);
        let q = &kept[0];
        assert_eq!(q.id, llm_question_id("mean of `body_mass_g`", "hash"));
        assert_eq!(q.difficulty, Difficulty::Easy);
        assert_eq!(q.source, QuestionSource::Llm);
        assert_eq!(q.hint.as_deref(), Some("use pandas"));
        assert_eq!(q.output_schema, Some(json!("a float")));
        assert_eq!(
            (q.dataset.as_str(), q.dataset_hash.as_str()),
            ("toy", "hash")
        );
        assert!(q.ground_truth.is_none() && q.template_name.is_none());
        assert_eq!(kept[1].difficulty, Difficulty::VeryHard);
        assert_eq!(kept[1].hint, None);
        assert_eq!(kept[1].n_steps, 3);
        assert_eq!(kept[1].output_type.as_deref(), Some("string"));
    }

    #[test]
    fn each_invalid_proposal_is_dropped_with_its_reason() {
        let mut no_steps = proposal("Mean of `body_mass_g` by sex?", "EASY");
        no_steps["n_steps"] = json!("two");
        let mut too_many_steps = proposal("Median of `body_mass_g`?", "EASY");
        too_many_steps["n_steps"] = json!(21);
        let mut bad_type = proposal("Max of `body_mass_g`?", "EASY");
        bad_type["output_type"] = json!("dataframe");
        let cases = vec![
            (json!("just a string"), "not a JSON object"),
            (json!({"hint": "x"}), "missing or empty question_text"),
            (proposal("   ", "EASY"), "missing or empty question_text"),
            (
                proposal("Mean of `body_mass_g`?", "TRIVIAL"),
                "unknown difficulty",
            ),
            (no_steps, "n_steps must be an integer"),
            (too_many_steps, "n_steps must be an integer"),
            (bad_type, "unknown output_type"),
            (
                proposal("What is the average weight of a penguin?", "EASY"),
                "names no column",
            ),
            (
                proposal("How many distinct user_id values are there?", "EASY"),
                "uses only id-like columns",
            ),
            (proposal("Min of `body_mass_g`?", "EASY"), ""),
            (
                proposal("min of  `body_mass_g`", "MEDIUM"),
                "duplicate of an earlier question",
            ),
        ];
        let (raw, expected): (Vec<Value>, Vec<&str>) = cases.into_iter().unzip();
        let (kept, dropped) = validate(raw);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].question_text, "Min of `body_mass_g`?");
        let expected: Vec<&str> = expected.into_iter().filter(|e| !e.is_empty()).collect();
        assert_eq!(dropped.len(), expected.len(), "{dropped:#?}");
        for (d, want) in dropped.iter().zip(expected) {
            assert!(d.reason.contains(want), "{d:?} should say {want}");
        }
        assert_eq!(dropped[0].question_text, "\"just a string\"");
    }

    #[test]
    fn columns_match_as_whole_words_case_insensitively() {
        let cols = data().column_profiles;
        let names = |text: &str| -> Vec<String> {
            named_columns(text, &cols)
                .into_iter()
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(names("the SPECIES with most rows"), vec!["Species"]);
        assert_eq!(names("subspecies count"), Vec::<String>::new());
        assert_eq!(names("the body_mass_gram column"), Vec::<String>::new());
        assert_eq!(
            names("'body_mass_g' and \"species\""),
            vec!["body_mass_g", "Species"]
        );
        // A column named like a common word needs quotes.
        assert_eq!(names("is a penguin heavy"), Vec::<String>::new());
        assert_eq!(names("mean of `a`"), vec!["a"]);
        assert_eq!(names("rows by `Unnamed: 0`"), vec!["Unnamed: 0"]);
    }

    #[test]
    fn duplicates_are_caught_across_rounds() {
        let mut seen = HashSet::new();
        let (kept, _) = validate_proposals(
            vec![proposal("Mean of `a`?", "EASY")],
            &data(),
            "toy",
            "hash",
            &mut seen,
        );
        assert_eq!(kept.len(), 1);
        let (kept, dropped) = validate_proposals(
            vec![proposal("mean of `a`", "HARD")],
            &data(),
            "toy",
            "hash",
            &mut seen,
        );
        assert!(kept.is_empty());
        assert!(dropped[0].reason.contains("duplicate"));
    }

    fn questions(counts: [usize; 4]) -> Vec<Question> {
        let mut raw = Vec::new();
        for (d, n) in Difficulty::ALL.iter().zip(counts) {
            for i in 0..n {
                raw.push(proposal(
                    &format!("{} question {i} on `a`", d.as_str()),
                    d.as_str(),
                ));
            }
        }
        let (kept, dropped) = validate(raw);
        assert!(dropped.is_empty());
        kept
    }

    fn mix_of(qs: &[Question]) -> [usize; 4] {
        let mut m = [0; 4];
        for q in qs {
            m[index(q.difficulty)] += 1;
        }
        m
    }

    const MIX: [f64; 4] = [0.3, 0.3, 0.2, 0.2];

    #[test]
    fn mix_targets_use_largest_remainders() {
        assert_eq!(mix_targets(10, MIX), [3, 3, 2, 2]);
        assert_eq!(mix_targets(12, MIX), [4, 4, 2, 2]);
        assert_eq!(mix_targets(1, MIX), [1, 0, 0, 0]);
        assert_eq!(mix_targets(7, [0.0, 0.0, 0.0, 0.0]), [2, 2, 2, 1]);
        assert_eq!(mix_targets(5, [1.0, f64::NAN, -1.0, 0.0]), [5, 0, 0, 0]);
    }

    #[test]
    fn fill_mix_takes_the_exact_mix() {
        let picked = fill_mix(questions([6, 6, 6, 6]), 10, MIX);
        assert_eq!(mix_of(&picked), [3, 3, 2, 2]);
        // The first proposals of each difficulty, in difficulty order.
        assert!(picked[0].question_text.starts_with("EASY question 0"));
        assert!(picked[9].question_text.starts_with("VERY_HARD question 1"));
    }

    #[test]
    fn short_buckets_are_filled_from_the_nearest_difficulties() {
        // No VERY_HARD: its 2 come from HARD (the nearest).
        let picked = fill_mix(questions([5, 5, 5, 0]), 10, MIX);
        assert_eq!(mix_of(&picked), [3, 3, 4, 0]);
        // MEDIUM short by 2: a tie between EASY and HARD goes to HARD.
        let picked = fill_mix(questions([5, 1, 5, 5]), 10, MIX);
        assert_eq!(mix_of(&picked), [3, 1, 4, 2]);
        // HARD has no spare either: MEDIUM short by 3 takes 1 from HARD, then EASY.
        let picked = fill_mix(questions([6, 0, 3, 2]), 10, MIX);
        assert_eq!(mix_of(&picked), [5, 0, 3, 2]);
        // Too few in all: everything is kept.
        let picked = fill_mix(questions([1, 1, 1, 1]), 10, MIX);
        assert_eq!(picked.len(), 4);
    }

    #[test]
    fn fill_mix_is_deterministic() {
        let a = fill_mix(questions([4, 2, 5, 1]), 10, MIX);
        let b = fill_mix(questions([4, 2, 5, 1]), 10, MIX);
        assert_eq!(
            a.iter().map(|q| &q.id).collect::<Vec<_>>(),
            b.iter().map(|q| &q.id).collect::<Vec<_>>()
        );
    }
}
