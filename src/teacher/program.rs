//! The program teacher: the gold trace is the question's reference program,
//! run as a multi-turn trace (one turn per step: the step's reasoning
//! sentence, its code, its execution with hooks); each alternative program
//! is a consistency trace in its own fresh worker. All traces of a question
//! run concurrently. Needs no network.

use serde_json::{json, Value};

use super::{BoxFuture, Teacher, TeacherError, TeacherRun};
use crate::profile::DataProfile;
use crate::runner::run_programs;
use crate::schema::Question;
use crate::serve::source::TaskSource;

/// Bumped when the way traces are produced changes, so old episodes are not
/// mistaken for current ones on resume.
const VERSION: u32 = 1;

#[derive(Debug, Clone, Default)]
pub struct ProgramTeacher;

impl Teacher for ProgramTeacher {
    fn name(&self) -> &'static str {
        "program"
    }

    fn settings(&self) -> Value {
        json!({ "teacher": "program", "version": VERSION })
    }

    fn answer<'a>(
        &'a self,
        sandbox: &'a dyn TaskSource,
        question: &'a Question,
        _data: &'a DataProfile,
    ) -> BoxFuture<'a, Result<TeacherRun, TeacherError>> {
        Box::pin(async move {
            let Some(programs) = &question.programs else {
                return Err(TeacherError::Unsupported {
                    id: question.id.clone(),
                    teacher: "program",
                    reason: "it has no reference program (only template questions do)".into(),
                });
            };
            let (gold, consistency) = run_programs(sandbox, programs).await.map_err(|error| {
                TeacherError::Infrastructure {
                    id: question.id.clone(),
                    error,
                    usage: Default::default(),
                }
            })?;
            Ok(TeacherRun { gold, consistency })
        })
    }
}
