//! Health: a worker lost to a timeout, the OOM killer or a crash is reported
//! as such, the fault is recorded, and the task goes on in a fresh worker.

mod common;

use std::time::Duration;

use common::*;
use csv_agent::sandbox::{CellResult, CellStatus};

fn error_message(cell: &CellResult) -> &str {
    cell.error
        .as_ref()
        .and_then(|e| e["message"].as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_workers_are_reported_and_replaced() {
    let (sb, _dir) = sandbox_with(|l| {
        l.cell_timeout = Duration::from_secs(3);
        l.memory_bytes = 256 << 20;
    })
    .await;
    let mut task = sb.task();

    let c = task.run_cell("state = 41").await.expect("cell");
    assert_ok(&c);

    let c = task.run_cell("while True: pass").await.expect("cell");
    assert_eq!(c.status, CellStatus::Timeout, "{c:#?}");

    // A fresh worker: the old namespace is gone, df is there again.
    let c = task
        .run_cell("('state' in globals(), len(df))")
        .await
        .expect("cell");
    assert_ok(&c);
    assert_eq!(c.result.as_deref(), Some("(False, 6)"));

    let c = task
        .run_cell("import numpy as np\nblob = np.ones(100_000_000)\nblob.sum()")
        .await
        .expect("cell");
    assert_eq!(c.status, CellStatus::Oom, "{c:#?}");

    let c = task.run_cell("import os\nos._exit(7)").await.expect("cell");
    assert_eq!(c.status, CellStatus::Crashed, "{c:#?}");
    let message = error_message(&c);
    assert!(message.contains("status 7"), "{message}");

    let c = task
        .run_cell("import ctypes\nctypes.string_at(0)")
        .await
        .expect("cell");
    assert_eq!(c.status, CellStatus::Crashed, "{c:#?}");
    let message = error_message(&c);
    assert!(message.contains("SIGSEGV"), "{message}");

    let c = task.run_cell("1 + 1").await.expect("cell");
    assert_eq!(c.result.as_deref(), Some("2"));
    assert_eq!(task.restarts(), 4);

    let faults = sb.faults();
    let causes: Vec<_> = faults.iter().map(|f| f.cause).collect();
    assert_eq!(
        causes,
        vec![
            CellStatus::Timeout,
            CellStatus::Oom,
            CellStatus::Crashed,
            CellStatus::Crashed
        ]
    );
    assert!(faults.iter().all(|f| f.host_pid > 0 && f.worker_id > 0));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_errors_are_cell_errors_and_the_worker_lives_on() {
    let cells = run_cells(&["x = 1", "1 / 0", "raise SystemExit(3)", "x + 1", "def f(:"]).await;
    assert_ok(&cells[0]);
    assert_eq!(cells[1].status, CellStatus::Error);
    assert_eq!(
        cells[1].error.as_ref().map(|e| e["type"].clone()),
        Some("ZeroDivisionError".into())
    );
    assert_eq!(cells[2].status, CellStatus::Error);
    assert_eq!(cells[3].result.as_deref(), Some("2"));
    // A cell that does not parse shows the caret, not the parser's frames.
    let tb = cells[4]
        .error
        .as_ref()
        .and_then(|e| e["traceback"].as_str())
        .unwrap_or("");
    assert!(
        tb.contains("SyntaxError") && tb.contains("<cell-5>") && !tb.contains("ast.py"),
        "{tb}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_worker_is_preforked_and_used() {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", SMALL_CSV);
    let mut opts = options(&csv);
    opts.spare_workers = 1;
    let sb = csv_agent::sandbox::Sandbox::start(opts)
        .await
        .expect("starts");
    // Give the refill a moment, then two tasks in a row both get workers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a = sb.acquire().await.expect("first");
    let mut b = sb.acquire().await.expect("second");
    assert_ne!(a.host_pid, b.host_pid);
    assert_eq!(a.exec("1").await.expect("a").result.as_deref(), Some("1"));
    assert_eq!(b.exec("2").await.expect("b").result.as_deref(), Some("2"));
    sb.shutdown().await;
}
