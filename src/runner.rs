//! Runs a sequence of cells in one fresh worker and records it as a
//! [`Trace`]: one turn per cell, with its execution, hooks and submitted
//! answer. Shared by ground truth (questions) and the teachers; knows
//! nothing of what the cells mean.

use std::time::Instant;

use crate::answers::answer_hash;
use crate::sandbox::{CellResult, CellStatus, SandboxError};
use crate::schema::{Execution, Hook, ProgramStep, Programs, Trace, Turn};
use crate::serve::source::TaskSource;

/// An infrastructure failure met while running a trace (see
/// [`SandboxError::is_infrastructure`]): the sandbox or the worker was lost
/// for a reason outside the program. Never part of a trace: the trace is
/// run again in a healthy sandbox.
#[derive(Debug, thiserror::Error)]
#[error("infrastructure failure in {label}: {source}")]
pub struct Infra {
    /// The trace it happened in.
    pub label: String,
    #[source]
    pub source: Box<SandboxError>,
}

impl Infra {
    /// `Ok(e)` back when `e` is not an infrastructure failure (a fact about
    /// the setup that belongs in the trace).
    pub fn classify(label: &str, e: SandboxError) -> Result<SandboxError, Infra> {
        if e.is_infrastructure() {
            Err(Infra {
                label: label.to_string(),
                source: Box::new(e),
            })
        } else {
            Ok(e)
        }
    }
}

/// The execution record of one cell.
pub fn execution(cell: &CellResult) -> Execution {
    Execution {
        success: cell.status == CellStatus::Ok,
        stdout: cell.stdout.clone(),
        stderr: cell.stderr.clone(),
        hooks: cell.hooks.iter().map(Hook::from_worker).collect(),
        submitted_answer: cell
            .submitted
            .as_ref()
            .and_then(|s| s.get("value"))
            .cloned(),
        status: cell.status.as_str().to_string(),
        result: cell.result.clone(),
        error: cell.error.clone(),
        elapsed_ms: cell.elapsed_ms,
    }
}

/// "ValueError: could not convert" from a cell's error record.
pub fn error_summary(cell: &CellResult) -> String {
    let Some(error) = &cell.error else {
        return cell.status.as_str().to_string();
    };
    let kind = error
        .get("type")
        .and_then(|v| v.as_str())
        .unwrap_or("error");
    let message = error.get("message").and_then(|v| v.as_str()).unwrap_or("");
    let message: String = message.chars().take(300).collect();
    format!("{kind}: {message}")
}

/// Run `steps` in order in one fresh worker; stop at the first cell that
/// fails. The last answer submitted is the trace's answer. An
/// infrastructure failure is an `Err`, never a failed trace.
pub async fn run_steps(
    sandbox: &dyn TaskSource,
    label: &str,
    steps: &[ProgramStep],
) -> Result<Trace, Infra> {
    let started = Instant::now();
    let mut task = sandbox.task();
    let mut turns = Vec::new();
    let mut error = None;
    let mut final_answer = None;
    // Waiting for a worker is measured apart from the cells (the pipeline
    // bench reports it); a failure here is the first cell's failure.
    let ready = task.ready().await;
    let worker_wait = started.elapsed().as_secs_f64();
    let steps: &[ProgramStep] = match ready {
        Ok(()) => steps,
        Err(e) => {
            let e = Infra::classify(label, e)?;
            error = Some(format!("no worker: the sandbox failed: {e}"));
            &[]
        }
    };
    for (i, step) in steps.iter().enumerate() {
        let cell = match task.run_cell(&step.code).await {
            Ok(cell) => cell,
            Err(e) => {
                let e = Infra::classify(label, e)?;
                error = Some(format!("step {}: the sandbox failed: {e}", i + 1));
                break;
            }
        };
        let execution = execution(&cell);
        if let Some(answer) = &execution.submitted_answer {
            final_answer = Some(answer.clone());
        }
        let ok = execution.success;
        turns.push(Turn {
            turn_index: i as u32,
            reasoning: step.reasoning.clone(),
            code: step.code.clone(),
            execution,
            fresh_worker: false,
        });
        if !ok {
            error = Some(format!("step {}: {}", i + 1, error_summary(&cell)));
            break;
        }
    }
    if error.is_none() && final_answer.is_none() {
        error = Some("the program never called submit()".to_string());
    }
    let final_answer_hash = final_answer.as_ref().map(answer_hash);
    Ok(Trace {
        turns,
        success: error.is_none(),
        final_answer_hash,
        final_answer,
        label: label.to_string(),
        error,
        elapsed: started.elapsed().as_secs_f64(),
        worker_wait,
        ..Trace::default()
    })
}

/// The traces of one run of a question's programs: recorded once, when the
/// ground truth is established, and the program teacher's traces too (its
/// traces are these very runs, not a second execution of the same code).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramRuns {
    /// The reference program, one turn per step.
    pub reference: Trace,
    /// Each alternative, one turn, in the question's order.
    pub alternatives: Vec<Trace>,
}

/// The reference program (one turn per step) and each alternative (one
/// turn), every one in its own fresh worker, all concurrently. An
/// infrastructure failure in any of them is the `Err` of the whole.
pub async fn run_programs(
    sandbox: &dyn TaskSource,
    programs: &Programs,
) -> Result<ProgramRuns, Infra> {
    let alternatives: Vec<[ProgramStep; 1]> = programs
        .alternatives
        .iter()
        .map(|a| {
            [ProgramStep {
                reasoning: a.reasoning.clone(),
                code: a.code.clone(),
            }]
        })
        .collect();
    let reference = run_steps(sandbox, "reference", &programs.reference);
    let others = futures::future::join_all(
        programs
            .alternatives
            .iter()
            .zip(&alternatives)
            .map(|(a, steps)| run_steps(sandbox, &a.name, steps)),
    );
    let (reference, others) = futures::join!(reference, others);
    Ok(ProgramRuns {
        reference: reference?,
        alternatives: others.into_iter().collect::<Result<Vec<_>, _>>()?,
    })
}
