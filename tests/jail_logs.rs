//! The jail logs through `tracing`: its warnings (a worker's fault) and the
//! lines the zygote writes on its stderr land in the dataset's log file
//! (`src/logs.rs`, routed by the `dataset` span), even when they are emitted
//! from tasks the sandbox spawned on other runtime threads.

mod common;

use std::time::Duration;

use csv_agent::logs::DatasetLogs;
use csv_agent::sandbox::CellStatus;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jail_warnings_and_zygote_lines_land_in_the_dataset_log() {
    let out = tempfile::tempdir().expect("tempdir");
    let logs = DatasetLogs::new(out.path().join("logs")).expect("log dir");
    let _guard = tracing_subscriber::registry().with(logs).set_default();
    let span = tracing::info_span!("dataset", dataset = "penguins");
    async {
        let (sb, _dir) = common::sandbox().await;
        let mut task = sb.task();
        let cell = task
            .run_cell("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
            .await
            .expect("a crash is a result");
        assert_eq!(cell.status, CellStatus::Crashed, "{cell:#?}");
        sb.shutdown().await;
    }
    .instrument(span)
    .await;

    let file = out.path().join("logs").join("penguins.log");
    let mut text = String::new();
    // The zygote's last stderr lines are read by a task of their own.
    for _ in 0..50 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("[jail] zygote[") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fault = text
        .lines()
        .find(|l| l.contains("crashed: the worker killed by signal 11"))
        .unwrap_or_else(|| panic!("no fault line in the dataset log:\n{text}"));
    assert!(fault.contains(" WARN "), "{fault}");
    assert!(
        text.contains("[jail] zygote[") && text.contains("shutdown requested"),
        "the zygote's stderr is not in the dataset log:\n{text}"
    );
    assert!(
        !out.path().join("logs").join("run.log").exists(),
        "a jail event lost its dataset span"
    );
}
