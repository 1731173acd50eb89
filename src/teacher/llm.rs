//! The LLM teacher: per question one gold trace (the model with the hint)
//! and N consistency traces (the model without it), all concurrently, each
//! in its own fresh worker, each a multi-turn [`agent`](super::agent) loop.
//! N depends on the question's difficulty. A trace that ended because the
//! model could not be reached makes the whole question a
//! [`TeacherError::Model`]: it is retried by a later run, never written as
//! a wrong episode.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::agent::{self, AgentConfig, Role};
use super::{BoxFuture, Teacher, TeacherError, TeacherRun};
use crate::llm::Chat;
use crate::profile::DataProfile;
use crate::schema::{Difficulty, Question, StopReason};
use crate::serve::source::TaskSource;

/// Bumped when the way this teacher builds traces changes (beyond the
/// prompts, which carry their own version).
const VERSION: u32 = 1;

/// Consistency traces per difficulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct NConsistency {
    pub easy: u32,
    pub medium: u32,
    pub hard: u32,
    pub very_hard: u32,
}

impl Default for NConsistency {
    fn default() -> Self {
        NConsistency {
            easy: 2,
            medium: 2,
            hard: 4,
            very_hard: 6,
        }
    }
}

impl NConsistency {
    /// The same N for every difficulty (`--n-consistency N`).
    pub fn fixed(n: u32) -> NConsistency {
        NConsistency {
            easy: n,
            medium: n,
            hard: n,
            very_hard: n,
        }
    }

    pub fn for_difficulty(&self, d: Difficulty) -> u32 {
        match d {
            Difficulty::Easy => self.easy,
            Difficulty::Medium => self.medium,
            Difficulty::Hard => self.hard,
            Difficulty::VeryHard => self.very_hard,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LlmTeacherConfig {
    pub agent: AgentConfig,
    pub n_consistency: NConsistency,
}

pub struct LlmTeacher {
    chat: Arc<dyn Chat>,
    /// The sampling settings that can change an answer (temperature, top_p,
    /// max_tokens), as the client was configured.
    sampling: Value,
    config: LlmTeacherConfig,
}

impl LlmTeacher {
    pub fn new(chat: Arc<dyn Chat>, sampling: Value, config: LlmTeacherConfig) -> LlmTeacher {
        LlmTeacher {
            chat,
            sampling,
            config,
        }
    }

    pub fn config(&self) -> &LlmTeacherConfig {
        &self.config
    }
}

impl Teacher for LlmTeacher {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn settings(&self) -> Value {
        json!({
            "teacher": "llm",
            "version": VERSION,
            "model": self.chat.model(),
            "sampling": self.sampling,
            "prompt_version": agent::prompt_version(),
            "max_turns": self.config.agent.max_turns,
            "n_consistency": self.config.n_consistency,
        })
    }

    fn answer<'a>(
        &'a self,
        sandbox: &'a dyn TaskSource,
        question: &'a Question,
        data: &'a DataProfile,
    ) -> BoxFuture<'a, Result<TeacherRun, TeacherError>> {
        Box::pin(async move {
            let chat = self.chat.as_ref();
            let cfg = &self.config.agent;
            let n = self
                .config
                .n_consistency
                .for_difficulty(question.difficulty);
            let labels: Vec<String> = (1..=n).map(|i| format!("consistency_{i}")).collect();
            let gold = agent::try_run_agent(
                chat,
                sandbox,
                Role::Gold,
                question,
                &data.overview,
                cfg,
                "gold",
            );
            let others = futures::future::join_all(labels.iter().map(|label| {
                agent::try_run_agent(
                    chat,
                    sandbox,
                    Role::Consistency,
                    question,
                    &data.overview,
                    cfg,
                    label,
                )
            }));
            let (gold, others) = futures::join!(gold, others);
            // An infrastructure failure in any trace: the question is run
            // again whole (with what every trace cost so far counted).
            let mut usage = crate::schema::Usage::default();
            let mut infra = None;
            let mut traces = Vec::new();
            for outcome in std::iter::once(gold).chain(others) {
                match outcome {
                    Ok(trace) => {
                        if let Some(u) = &trace.usage {
                            usage.add(u);
                        }
                        traces.push(trace);
                    }
                    Err(e) => {
                        usage.add(&e.usage);
                        infra.get_or_insert(e.error);
                    }
                }
            }
            if let Some(error) = infra {
                return Err(TeacherError::Infrastructure {
                    id: question.id.clone(),
                    error,
                    usage,
                });
            }
            let mut traces = traces.into_iter();
            let Some(gold) = traces.next() else {
                return Err(TeacherError::Unsupported {
                    id: question.id.clone(),
                    teacher: "llm",
                    reason: "no gold trace".into(),
                });
            };
            let run = TeacherRun {
                gold,
                consistency: traces.collect(),
            };
            if let Some(failed) = std::iter::once(&run.gold)
                .chain(&run.consistency)
                .find(|t| t.stop_reason() == Some(StopReason::ModelError))
            {
                return Err(TeacherError::Model {
                    id: question.id.clone(),
                    error: failed.error.clone().unwrap_or_default(),
                    usage: run.usage(),
                });
            }
            Ok(run)
        })
    }
}
