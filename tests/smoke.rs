mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_runs_and_state_survives_across_cells() {
    let cells = run_cells(&["x = int(df['x'].sum())", "x * 2"]).await;
    assert_ok(&cells[0]);
    assert_ok(&cells[1]);
    assert_eq!(cells[1].result.as_deref(), Some("42"));
}
