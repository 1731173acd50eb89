//! Runs a sequence of cells in one fresh worker and records it as a
//! [`Trace`]: one turn per cell, with its execution, hooks and submitted
//! answer. Shared by ground truth (questions) and the teachers; knows
//! nothing of what the cells mean.

use std::time::Instant;

use crate::answers::answer_hash;
use crate::sandbox::{CellResult, CellStatus, Sandbox};
use crate::schema::{Execution, Hook, ProgramStep, Programs, Trace, Turn};

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
/// fails. The last answer submitted is the trace's answer.
pub async fn run_steps(sandbox: &Sandbox, label: &str, steps: &[ProgramStep]) -> Trace {
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
            error = Some(format!("no worker: the sandbox failed: {e}"));
            &[]
        }
    };
    for (i, step) in steps.iter().enumerate() {
        let cell = match task.run_cell(&step.code).await {
            Ok(cell) => cell,
            Err(e) => {
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
    Trace {
        turns,
        success: error.is_none(),
        final_answer_hash,
        final_answer,
        label: label.to_string(),
        error,
        elapsed: started.elapsed().as_secs_f64(),
        worker_wait,
        ..Trace::default()
    }
}

/// The reference program (one turn per step) and each alternative (one
/// turn), every one in its own fresh worker, all concurrently.
pub async fn run_programs(sandbox: &Sandbox, programs: &Programs) -> (Trace, Vec<Trace>) {
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
    futures::join!(reference, others)
}
