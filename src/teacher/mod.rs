//! Teachers answer questions by writing code that runs in the jail. They are
//! interchangeable behind [`Teacher`]: the program teacher (reference and
//! alternative programs, no network) and the LLM teacher (a chat model
//! writing code turn by turn, [`agent`]). Whatever the teacher,
//! [`triangulation`] decides whether the episode is verified.

pub mod agent;
pub mod llm;
pub mod program;
pub mod reply;
pub mod triangulation;

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::profile::DataProfile;
use crate::runner::ProgramRuns;
use crate::schema::{Question, Trace};
use crate::serve::source::TaskSource;

pub use llm::{LlmTeacher, LlmTeacherConfig, NConsistency};
pub use program::ProgramTeacher;
pub use triangulation::{triangulate, Diagnosis, Verdict};

/// A boxed future, so that `Teacher` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The traces a teacher produced for one question.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherRun {
    /// The teacher with the hint (for the program teacher: the reference
    /// program, one turn per step).
    pub gold: Trace,
    /// Independent runs without the hint (for the program teacher: each
    /// alternative program).
    pub consistency: Vec<Trace>,
}

impl TeacherRun {
    /// What the model cost over every trace (zero for the program teacher).
    pub fn usage(&self) -> crate::schema::Usage {
        let mut usage = crate::schema::Usage::default();
        for t in std::iter::once(&self.gold).chain(&self.consistency) {
            if let Some(u) = &t.usage {
                usage.add(u);
            }
        }
        usage
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("question {id} cannot be answered by the {teacher} teacher: {reason}")]
    Unsupported {
        id: String,
        teacher: &'static str,
        reason: String,
    },
    /// The model could not be reached or refused: the question is left to
    /// a later run (nothing about the question itself is wrong).
    #[error("question {id}: the model failed: {error}")]
    Model {
        id: String,
        error: String,
        /// What the question's traces cost before the failure.
        usage: crate::schema::Usage,
    },
    /// The sandbox or a worker was lost for a reason outside the teacher
    /// and its code: the question is run again in a healthy sandbox, never
    /// written as an episode.
    #[error("question {id}: {error}")]
    Infrastructure {
        id: String,
        error: crate::runner::Infra,
        /// What the question's traces cost before the failure.
        usage: crate::schema::Usage,
    },
}

pub trait Teacher: Send + Sync {
    /// `program` or `llm`; written into every episode.
    fn name(&self) -> &'static str;
    /// Everything about the teacher that can change an answer (model,
    /// temperature, prompt version…). Part of each episode's fingerprint, so
    /// a changed setting is new work, not a resumed one.
    fn settings(&self) -> Value;
    /// The gold trace and the consistency traces of one question, each in
    /// its own fresh worker of `sandbox`. `data` is the dataset's profile
    /// (its overview goes into model prompts).
    fn answer<'a>(
        &'a self,
        sandbox: &'a dyn TaskSource,
        question: &'a Question,
        data: &'a DataProfile,
    ) -> BoxFuture<'a, Result<TeacherRun, TeacherError>>;
    /// The teacher's traces when they are the runs already recorded while
    /// the ground truth was established (`runs`: the question's reference
    /// and alternative programs, run once): the program teacher's are, so
    /// the same code is not executed twice. None (the default): the
    /// teacher runs, as a model writing new code must.
    fn recorded(&self, _question: &Question, _runs: ProgramRuns) -> Option<TeacherRun> {
        None
    }
}
