//! Running a memory profile: workers forked from one zygote against
//! independent (cold) sandboxes, measured at checkpoints.

use super::*;

/// Progress of a profile (the CLI prints it; tests stay silent).
pub trait ProfileProgress: Sync {
    fn step(&self, message: &str);
}

/// Progress that shows nothing.
pub struct SilentProgress;

impl ProfileProgress for SilentProgress {
    fn step(&self, _message: &str) {}
}

/// Fork `count` more workers of `sandbox` into `workers` and run `code` in
/// each of them at the same time. Every cell must succeed.
pub async fn add_workers(
    sandbox: &Sandbox,
    workers: &mut Vec<Worker>,
    count: usize,
    code: &str,
) -> Result<(), MemoryError> {
    let mut fresh = Vec::with_capacity(count);
    for _ in 0..count {
        fresh.push(sandbox.acquire().await?);
    }
    let mut runs = tokio::task::JoinSet::new();
    for mut worker in fresh {
        let code = code.to_string();
        runs.spawn(async move {
            let cell = worker.exec(&code).await;
            (worker, cell)
        });
    }
    let mut failure = None;
    while let Some(joined) = runs.join_next().await {
        let (worker, cell) = joined.map_err(|e| MemoryError::Join(e.to_string()))?;
        match cell {
            Ok(cell) if cell.status == CellStatus::Ok => workers.push(worker),
            Ok(cell) => {
                failure.get_or_insert(MemoryError::Task {
                    worker_id: worker.id,
                    status: cell.status.as_str(),
                    detail: cell_error(&cell),
                });
            }
            Err(e) => {
                failure.get_or_insert(e.into());
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(super) fn cell_error(cell: &crate::sandbox::CellResult) -> String {
    let error = cell.error.as_ref();
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    match (field("type"), field("message")) {
        (t, m) if t.is_empty() => m,
        (t, m) => format!("{t}: {m}"),
    }
}

/// One independent sandbox that has run the task in its one worker.
pub struct ColdSandbox {
    pub sandbox: Sandbox,
    pub worker: Worker,
}

impl ColdSandbox {
    /// Start a sandbox of its own (jail, imports, CSV) and run `code` in one worker.
    pub async fn start(opts: SandboxOptions, code: &str) -> Result<ColdSandbox, MemoryError> {
        let sandbox = Sandbox::start(opts).await?;
        let mut workers = Vec::with_capacity(1);
        if let Err(e) = add_workers(&sandbox, &mut workers, 1, code).await {
            sandbox.shutdown().await;
            return Err(e);
        }
        let worker = workers.pop().expect("add_workers returned one worker");
        Ok(ColdSandbox { sandbox, worker })
    }

    pub fn report(&self) -> Result<MemoryReport, MemoryError> {
        MemoryReport::collect(&self.sandbox, [&self.worker])
    }

    pub fn footprint(&self) -> Result<ColdFootprint, MemoryError> {
        ColdFootprint::from_report(self.report()?)
    }

    pub async fn shutdown(self) {
        drop(self.worker);
        self.sandbox.shutdown().await;
    }
}

/// The outcome of [`profile`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub csv: PathBuf,
    pub task: String,
    /// The worker count asked for.
    pub workers: usize,
    pub cold: ColdFootprint,
    /// One per worker count measured, ascending; the last is `workers`.
    pub points: Vec<SharingPoint>,
    pub definition: &'static str,
    /// The layers of the shared sandbox (all active unless degraded mode was asked for).
    pub isolation: crate::sandbox::IsolationReport,
}

impl Profile {
    /// The point at the requested worker count.
    pub fn result(&self) -> Option<&SharingPoint> {
        self.points.last()
    }
}

/// Profile `code` on `opts.csv`: first one cold sandbox alone (its footprint
/// is the baseline), then one sandbox whose workers grow to each of `counts`
/// (ascending), all alive and each having run the task, measured at every count.
pub async fn profile(
    opts: SandboxOptions,
    code: &str,
    counts: &[usize],
    progress: &dyn ProfileProgress,
) -> Result<Profile, MemoryError> {
    let mut opts = opts;
    // Measure only the workers asked for: no spare waiting on the side.
    opts.spare_workers = 0;
    progress.step("starting one independent (cold) sandbox and running the task in it");
    let cold = ColdSandbox::start(opts.clone(), code).await?;
    // Let the zygote and the worker settle (freed pages returned) before reading.
    tokio::time::sleep(SETTLE).await;
    let footprint = cold.footprint();
    cold.shutdown().await;
    let cold = footprint?;

    progress.step("starting the shared sandbox");
    let sandbox = Sandbox::start(opts.clone()).await?;
    let mut workers = Vec::new();
    let mut points = Vec::new();
    let outcome = async {
        for &n in counts {
            let more = n.saturating_sub(workers.len());
            progress.step(&format!(
                "forking {more} more worker(s) and running the task in each ({n} in all)"
            ));
            add_workers(&sandbox, &mut workers, more, code).await?;
            tokio::time::sleep(SETTLE).await;
            let report = MemoryReport::collect(&sandbox, &workers)?;
            points.push(SharingPoint::new(report, cold.footprint)?);
        }
        Ok::<(), MemoryError>(())
    }
    .await;
    drop(workers);
    let isolation = sandbox.report().clone();
    sandbox.shutdown().await;
    outcome?;
    Ok(Profile {
        csv: opts.csv.clone(),
        task: code.to_string(),
        workers: counts.last().copied().unwrap_or(0),
        cold,
        points,
        definition: COLD_BASELINE_DEFINITION,
        isolation,
    })
}

/// A moment for processes to finish returning memory after a cell.
pub(super) const SETTLE: Duration = Duration::from_millis(200);
