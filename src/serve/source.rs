//! Where a task's worker comes from: the local [`Sandbox`] (a zygote this
//! process started) or a session of a running `csv-agent serve` — so the
//! same runner, teacher and ground-truth code drives cells either way, and
//! `run --serve` gives the episodes a local run gives.
//!
//! [`TaskSource`] is what the runner, the teachers and ground truth take
//! (`&dyn TaskSource`; a `&Sandbox` coerces to it); [`AnyTask`] is the task
//! it hands out, with the three calls they make: `ready`, `run_cell`,
//! `restarts`. [`RunCell`] is the one call the profile needs.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;

use super::client::{ClientError, Endpoint, ServeClient};
use crate::sandbox::protocol::ZygoteReady;
use crate::sandbox::{CellResult, Fault, Limits, Sandbox, SandboxError, SandboxOptions, Task};

/// Hands out tasks: one fresh worker each, state kept across its cells.
pub trait TaskSource: Send + Sync {
    fn task(&self) -> AnyTask;
}

impl TaskSource for Sandbox {
    fn task(&self) -> AnyTask {
        AnyTask::Local(Sandbox::task(self))
    }
}

impl<T: TaskSource + ?Sized> TaskSource for &T {
    fn task(&self) -> AnyTask {
        (**self).task()
    }
}

/// Runs cells (the profile needs nothing else).
pub trait RunCell: Send {
    fn run_cell<'a>(&'a mut self, code: &'a str)
        -> BoxFuture<'a, Result<CellResult, SandboxError>>;
}

impl RunCell for Task {
    fn run_cell<'a>(
        &'a mut self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<CellResult, SandboxError>> {
        Box::pin(Task::run_cell(self, code))
    }
}

impl RunCell for AnyTask {
    fn run_cell<'a>(
        &'a mut self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<CellResult, SandboxError>> {
        Box::pin(AnyTask::run_cell(self, code))
    }
}

/// One task's cells, in a local worker or in a server's session.
// One per trace, moved rarely: boxing the local task would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyTask {
    Local(Task),
    Remote(RemoteTask),
}

impl AnyTask {
    pub async fn run_cell(&mut self, code: &str) -> Result<CellResult, SandboxError> {
        match self {
            AnyTask::Local(t) => t.run_cell(code).await,
            AnyTask::Remote(t) => t.run_cell(code).await,
        }
    }

    /// Take the task's worker now (a local spare or fork; a server session).
    pub async fn ready(&mut self) -> Result<(), SandboxError> {
        match self {
            AnyTask::Local(t) => t.ready().await,
            AnyTask::Remote(t) => t.ready().await.map(|_| ()),
        }
    }

    /// Workers replaced after a lost one.
    pub fn restarts(&self) -> u64 {
        match self {
            AnyTask::Local(t) => t.restarts(),
            AnyTask::Remote(t) => t.restarts,
        }
    }
}

/// A dataset's workers as the pipeline holds them (see `pipeline::health::Jail`).
#[derive(Clone)]
pub enum Workers {
    Local(Sandbox),
    Remote(Arc<RemoteSource>),
}

impl TaskSource for Workers {
    fn task(&self) -> AnyTask {
        match self {
            Workers::Local(s) => AnyTask::Local(s.task()),
            Workers::Remote(r) => AnyTask::Remote(RemoteTask::new(r.clone())),
        }
    }
}

impl Workers {
    /// A local sandbox started with `opts`, or, with `serve`, the dataset
    /// `opts.csv` in sessions of that server (with `opts.limits`' memory and
    /// cell timeout).
    pub async fn start(
        opts: SandboxOptions,
        serve: Option<&Endpoint>,
    ) -> Result<Workers, SandboxError> {
        match serve {
            None => Ok(Workers::Local(Sandbox::start(opts).await?)),
            Some(endpoint) => {
                let csv = std::fs::canonicalize(&opts.csv).map_err(|source| SandboxError::Io {
                    what: format!("resolving {}", opts.csv.display()),
                    source,
                })?;
                let source = RemoteSource::connect(endpoint.clone(), csv, opts.limits).await?;
                Ok(Workers::Remote(Arc::new(source)))
            }
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Workers::Local(s) => s.id(),
            Workers::Remote(r) => &r.id,
        }
    }
    pub fn limits(&self) -> &Limits {
        match self {
            Workers::Local(s) => s.limits(),
            Workers::Remote(r) => &r.limits,
        }
    }
    pub fn zygote(&self) -> &ZygoteReady {
        match self {
            Workers::Local(s) => s.zygote(),
            Workers::Remote(r) => &r.zygote,
        }
    }
    /// A remote server restarts its own sandboxes: always "alive" here.
    pub fn is_alive(&self) -> bool {
        match self {
            Workers::Local(s) => s.is_alive(),
            Workers::Remote(_) => true,
        }
    }
    pub fn gone_reason(&self) -> Option<String> {
        match self {
            Workers::Local(s) => s.gone_reason(),
            Workers::Remote(_) => None,
        }
    }
    /// Faults this process saw (a server's are in its own log).
    pub fn faults(&self) -> Vec<Fault> {
        match self {
            Workers::Local(s) => s.faults(),
            Workers::Remote(_) => Vec::new(),
        }
    }
    pub async fn shutdown(self) {
        if let Workers::Local(s) = self {
            s.shutdown().await;
        }
    }
}

/// A dataset served by a running `csv-agent serve`.
pub struct RemoteSource {
    endpoint: Endpoint,
    csv: PathBuf,
    /// The limits a local sandbox would have had; memory and the cell
    /// timeout are asked of the server for every session.
    limits: Limits,
    memory_bytes: u64,
    cell_timeout: f64,
    id: String,
    zygote: ZygoteReady,
}

impl RemoteSource {
    /// Check the server has the dataset (its sandbox is started if needed)
    /// with one session, and learn what its zygote loaded.
    pub async fn connect(
        endpoint: Endpoint,
        csv: PathBuf,
        limits: Limits,
    ) -> Result<RemoteSource, SandboxError> {
        let memory_bytes = limits.memory_bytes;
        let cell_timeout = limits.cell_timeout.as_secs_f64();
        let mut client = ServeClient::new(endpoint.clone());
        let spec = spec(&csv, memory_bytes, cell_timeout);
        let info = client
            .request(http::Method::POST, "/v1/sessions", Some(&spec))
            .await
            .map_err(remote_error)?;
        let bad = |what: &str| SandboxError::Io {
            what: format!("a session of {endpoint}"),
            source: std::io::Error::other(format!("the reply has no {what}")),
        };
        let id = info
            .get("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("id"))?
            .to_string();
        let zygote: ZygoteReady = info
            .get("zygote")
            .cloned()
            .and_then(|z| serde_json::from_value(z).ok())
            .ok_or_else(|| bad("zygote"))?;
        let hash = info
            .get("dataset_hash")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let _ = client.delete_session(&id).await;
        Ok(RemoteSource {
            id: format!("{endpoint}#{hash}"),
            endpoint,
            csv,
            limits,
            memory_bytes,
            cell_timeout,
            zygote,
        })
    }
}

fn spec(csv: &std::path::Path, memory_bytes: u64, cell_timeout: f64) -> serde_json::Value {
    json!({ "csv": csv, "limits": { "memory": memory_bytes, "timeout": cell_timeout } })
}

/// What a refused or failed request means to the pipeline: the server or
/// the session's worker lost (503, no connection) is infrastructure, retried
/// in a fresh session; any other refusal is not.
fn remote_error(e: ClientError) -> SandboxError {
    match &e {
        ClientError::Status {
            status, message, ..
        } if *status == 503 || *status == 404 || *status == 410 => {
            SandboxError::ZygoteGone(format!("csv-agent serve: {message}"))
        }
        ClientError::Status { .. } | ClientError::Reply { .. } => SandboxError::Worker {
            worker_id: 0,
            detail: e.to_string(),
        },
        ClientError::Connect { .. } | ClientError::Http { .. } => SandboxError::Io {
            what: "talking to csv-agent serve".to_string(),
            source: std::io::Error::other(e.to_string()),
        },
    }
}

/// A task in a server's session: the session is created on first use and
/// deleted when the task is dropped.
pub struct RemoteTask {
    source: Arc<RemoteSource>,
    client: ServeClient,
    session: Option<String>,
    restarts: u64,
    lost_last: bool,
}

impl RemoteTask {
    fn new(source: Arc<RemoteSource>) -> RemoteTask {
        RemoteTask {
            client: ServeClient::new(source.endpoint.clone()),
            source,
            session: None,
            restarts: 0,
            lost_last: false,
        }
    }

    async fn ready(&mut self) -> Result<String, SandboxError> {
        if let Some(id) = &self.session {
            return Ok(id.clone());
        }
        let spec = spec(
            &self.source.csv,
            self.source.memory_bytes,
            self.source.cell_timeout,
        );
        let id = self
            .client
            .create_session(&spec)
            .await
            .map_err(remote_error)?;
        self.session = Some(id.clone());
        Ok(id)
    }

    async fn run_cell(&mut self, code: &str) -> Result<CellResult, SandboxError> {
        let id = self.ready().await?;
        // As a local task: the cell after one that cost the worker its life
        // runs in a fresh worker (the server replaced it).
        if std::mem::take(&mut self.lost_last) {
            self.restarts += 1;
        }
        match self
            .client
            .run_cell(&id, code, Some(self.source.cell_timeout))
            .await
        {
            Ok(cell) => {
                self.lost_last = cell.status.lost_worker();
                Ok(cell)
            }
            Err(e) => {
                if matches!(&e, ClientError::Status { status, .. } if *status == 503 || *status == 404)
                {
                    // The server closed the session.
                    self.session = None;
                }
                Err(remote_error(e))
            }
        }
    }
}

impl Drop for RemoteTask {
    fn drop(&mut self) {
        let Some(id) = self.session.take() else {
            return;
        };
        let endpoint = self.source.endpoint.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = ServeClient::new(endpoint).delete_session(&id).await;
            });
        }
    }
}
