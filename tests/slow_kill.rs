//! A slow cgroup kill stalls no other cell. On cgroup v1 a worker's sweep
//! (`Group::kill_all`, then `remove`) may sleep for up to 1.5 s; it runs on a
//! thread of its own (`sandbox/reaper.rs`), so on a runtime with a single
//! thread another worker's cell timeout still fires on time. The test holds
//! one worker's sweep up for 4 s (a test hook) and times the other's timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use csv_agent::sandbox::{CellStatus, Sandbox};

const SLOW_KILL: Duration = Duration::from_secs(4);
const CELL_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "current_thread")]
async fn a_slow_cgroup_kill_does_not_delay_another_cells_timeout() {
    let dir = world_readable_dir();
    let csv = write_csv(dir.path(), "data.csv", "a,b\n1,2\n3,4\n");
    let mut opts = options_with(&csv, |l| l.cell_timeout = CELL_TIMEOUT);
    // No spares: the first acquire forks worker 1, the second worker 2.
    opts.spare_workers = 0;
    opts.test_hooks.slow_cgroup_kill = Some((1, SLOW_KILL));
    let sb = Sandbox::start(opts).await.expect("sandbox starts");
    let mut slow = sb.acquire().await.expect("worker 1");
    let mut other = sb.acquire().await.expect("worker 2");
    assert_eq!((slow.id, other.id), (1, 2));
    // Warm both up, so the timed cells start at once.
    for w in [&mut slow, &mut other] {
        assert_ok(&w.exec("1").await.expect("a cell"));
    }

    let started = Instant::now();
    let first = async {
        let cell = slow.exec("while True:\n    pass").await.expect("a result");
        (cell, started.elapsed())
    };
    let second = async {
        // Starts while worker 1's cell runs; its timeout falls inside worker
        // 1's 4-second sweep.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let began = Instant::now();
        let cell = other.exec("while True:\n    pass").await.expect("a result");
        (cell, began.elapsed())
    };
    let ((slow_cell, slow_done), (other_cell, other_took)) = tokio::join!(first, second);
    eprintln!(
        "worker 1 (sweep held {SLOW_KILL:?}): its cell returned after {slow_done:?}; \
         worker 2: timed out after {other_took:?} (limit {CELL_TIMEOUT:?})"
    );
    assert_eq!(slow_cell.status, CellStatus::Timeout, "{slow_cell:#?}");
    assert_eq!(other_cell.status, CellStatus::Timeout, "{other_cell:#?}");
    // Worker 1's own result waits for its sweep (the group is empty when
    // exec returns) ...
    assert!(slow_done >= CELL_TIMEOUT + SLOW_KILL, "{slow_done:?}");
    // ... but worker 2's timeout fires on time: the sweep blocked no thread
    // of the runtime (before, it would have come after ~4.7 s).
    assert!(
        other_took < CELL_TIMEOUT + Duration::from_millis(1500),
        "worker 2's timeout fired after {other_took:?}"
    );
    sb.shutdown().await;
}
