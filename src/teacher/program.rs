//! The program teacher: the gold trace is the question's reference program,
//! run as a multi-turn trace (one turn per step: the step's reasoning
//! sentence, its code, its execution with hooks); each alternative program
//! is a consistency trace in its own fresh worker. All traces of a question
//! run concurrently. Needs no network.
//!
//! These are exactly the runs that establish a question's ground truth, so
//! when the pipeline has just recorded them it hands them over
//! ([`Teacher::recorded`]) and nothing runs twice; `answer` runs them only
//! for questions whose ground truth came from an earlier run's file.

use serde_json::{json, Value};

use super::{BoxFuture, Teacher, TeacherError, TeacherRun};
use crate::profile::DataProfile;
use crate::runner::{run_programs, ProgramRuns};
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
            let runs = run_programs(sandbox, programs).await.map_err(|error| {
                TeacherError::Infrastructure {
                    id: question.id.clone(),
                    error,
                    usage: Default::default(),
                }
            })?;
            Ok(traces(runs))
        })
    }

    fn recorded(&self, question: &Question, runs: ProgramRuns) -> Option<TeacherRun> {
        // Only runs of this question's programs are its traces.
        question.programs.is_some().then(|| traces(runs))
    }
}

/// The gold trace is the reference program's run; each alternative's run
/// is a consistency trace.
fn traces(runs: ProgramRuns) -> TeacherRun {
    TeacherRun {
        gold: runs.reference,
        consistency: runs.alternatives,
    }
}
