//! Cgroup kills and removals, off the async runtime. On cgroup v1 there is no
//! `cgroup.kill`: [`Group::kill_all`](super::cgroup::Group::kill_all) signals
//! and polls until the group is empty (up to 1 s) and
//! [`Group::remove`](super::cgroup::Group::remove) retries `rmdir` while the
//! zygote reaps (up to 0.5 s more). Run on a runtime thread, that sleep would
//! stall every timer and socket of that thread: with two runtime threads, one
//! slow kill would delay another cell's timeout. So every such job runs on a
//! thread of its own; async callers await its end without blocking.
//!
//! A thread per job rather than tokio's blocking pool: a job queued there is
//! cancelled when its runtime shuts down, and a removal must not be.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Jobs started and not yet finished, process-wide: a process that exits
/// must first let them end ([`wait_for_cleanup`]), or a dropped sandbox's
/// cgroups outlive it.
static PENDING: Mutex<usize> = Mutex::new(0);
static FINISHED: Condvar = Condvar::new();

/// Wait (blocking) until every clean-up job has run, at most `limit`. For
/// the end of a process, after its runtime is gone: dropping a sandbox
/// hands its cgroup removal to a thread, and exiting before that thread ends
/// would leave the groups behind. True when nothing is left.
pub fn wait_for_cleanup(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    while *pending > 0 {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        pending = FINISHED
            .wait_timeout(pending, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    true
}

fn add_pending(delta: isize) {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    *pending = pending.saturating_add_signed(delta);
    if *pending == 0 {
        FINISHED.notify_all();
    }
}

/// The end of a job: resolves when it has run (or could not be started).
pub(super) struct Done(oneshot::Receiver<()>);

impl Done {
    /// Wait for the job without blocking a runtime thread.
    pub(super) async fn wait(self) {
        let _ = self.0.await;
    }
}

/// Run `job` on a thread of its own. Should no thread be available, it runs
/// here: better a stall than a group left behind with processes in it.
pub(super) fn spawn(what: &'static str, job: impl FnOnce() + Send + 'static) -> Done {
    let (tx, rx) = oneshot::channel();
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = slot.clone();
    add_pending(1);
    let started = std::thread::Builder::new()
        .name("csv-agent-reaper".to_string())
        .spawn(move || {
            if let Some(job) = take(&theirs) {
                job();
            }
            add_pending(-1);
            let _ = tx.send(());
        });
    if let Err(e) = started {
        add_pending(-1);
        tracing::warn!("no thread for {what} ({e}); running it on the caller's thread");
        if let Some(job) = take(&slot) {
            job();
        }
    }
    Done(rx)
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_job_does_not_stall_the_runtime_it_was_started_from() {
        let started = Instant::now();
        let slow = spawn("a test job", || {
            std::thread::sleep(Duration::from_millis(800))
        });
        // A timer on the same (only) runtime thread fires on time.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_millis(400));
        slow.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(800));
    }

    #[test]
    fn the_end_of_a_process_waits_for_its_clean_up_jobs() {
        let started = Instant::now();
        let _ = spawn("a test job", || {
            std::thread::sleep(Duration::from_millis(300))
        });
        assert!(wait_for_cleanup(Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
