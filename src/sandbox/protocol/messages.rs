//! The messages of each channel: jail init, zygote control, worker.

use super::*;

/// Supervisor → jail init (sync channel).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToInit {
    /// The jail description; the first message.
    Spec {
        spec: Box<crate::sandbox::spawn::JailSpec>,
    },
    /// uid/gid maps are written: go on.
    Mapped,
    /// The maps could not be written: give up.
    Abort { error: String },
}

/// Jail init → supervisor (sync channel).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromInit {
    /// New namespaces exist; write the id maps of this pid.
    Unshared { pid: i32 },
    /// No user namespace could be made; running without namespaces (only
    /// when the spec allows it). No id maps to write.
    Unconfined { reason: String },
    /// Every layer as the init applied it, sent just before `execve`.
    Applied {
        layers: Vec<crate::sandbox::layers::Layer>,
    },
    /// Setting up the jail failed at `step`.
    Failed { step: String, error: String },
}

/// Per-worker limits the zygote applies after `fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerLimits {
    pub cpu_seconds: Option<u64>,
    /// Address-space allowance above what the worker inherited: the memory
    /// fallback where there are no cgroups.
    pub address_space_extra: Option<u64>,
    pub nofile: Option<u64>,
}

/// Supervisor → zygote.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToZygote {
    Fork {
        worker_id: u64,
        limits: WorkerLimits,
    },
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZygoteReady {
    pub version: u32,
    pub pid: i32,
    #[serde(default)]
    pub python: String,
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub columns: u64,
    #[serde(default)]
    pub separator: String,
    #[serde(default)]
    pub encoding: String,
    #[serde(default)]
    pub import_ms: f64,
    #[serde(default)]
    pub load_ms: f64,
}

/// Zygote → supervisor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromZygote {
    Ready(ZygoteReady),
    LoadError {
        error: String,
    },
    Forked {
        worker_id: u64,
        pid: i32,
    },
    ForkFailed {
        worker_id: u64,
        error: String,
        /// A shortage that may be gone in a moment (fork's EAGAIN, a failed
        /// hand-over of the worker's socket): worth a retry.
        #[serde(default)]
        transient: bool,
    },
    Exited {
        worker_id: u64,
        pid: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    Error {
        error: String,
    },
}

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    Exec { cell: u64, code: String },
    Exit,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScopeStatus {
    pub applied: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// A worker's reply to `exec`, as the zygote sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellReply {
    pub cell: u64,
    pub status: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: u64,
    #[serde(default)]
    pub stderr_truncated: u64,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    #[serde(default)]
    pub submitted: Option<serde_json::Value>,
    #[serde(default)]
    pub hooks: Vec<serde_json::Value>,
    #[serde(default)]
    pub elapsed_ms: f64,
}

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    Hello {
        version: u32,
        worker_id: u64,
        pid: i32,
        #[serde(default)]
        scope: ScopeStatus,
        /// The worker's own seccomp filter (pids of other processes refused).
        #[serde(default)]
        filter: ScopeStatus,
        /// The worker's uid inside the jail (its own in per-worker uid mode).
        #[serde(default)]
        uid: Option<u32>,
    },
    Result(CellReply),
}

/// What is wrong with a worker's [`CellReply`]: it decoded, but does not
/// have the documented shape. A worker runs the cell's code, which can forge
/// its reply, so each of these is a protocol violation (see
/// [`ProtocolError::Reply`]), never an ordinary cell error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A status other than `ok` and `error` (the only two a worker sends;
    /// timeouts, OOM kills and crashes are the supervisor's to say).
    #[error("unknown status {status:?} (expected \"ok\" or \"error\")")]
    UnknownStatus { status: String },
    #[error("status {status:?} with {} error", if *.with_error { "an" } else { "no" })]
    StatusMismatch {
        status: &'static str,
        with_error: bool,
    },
    #[error("an error that is not an object")]
    ErrorNotObject,
    #[error("an error without a string {field:?}")]
    ErrorField { field: &'static str },
}

impl FromWorker {
    /// A short description for error messages (never the worker's content,
    /// which may be megabytes).
    pub fn kind(&self) -> String {
        match self {
            FromWorker::Hello { worker_id, .. } => format!("a hello of worker {worker_id}"),
            FromWorker::Result(reply) => format!("a result for cell {}", reply.cell),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zygote_messages_parse_in_the_documented_shape() {
        let forked: FromZygote =
            serde_json::from_str(r#"{"type":"forked","worker_id":3,"pid":12}"#).expect("forked");
        assert!(matches!(
            forked,
            FromZygote::Forked {
                worker_id: 3,
                pid: 12
            }
        ));
        let exited: FromZygote = serde_json::from_str(
            r#"{"type":"exited","worker_id":3,"pid":12,"exit_code":null,"signal":9}"#,
        )
        .expect("exited");
        assert!(matches!(
            exited,
            FromZygote::Exited {
                signal: Some(9),
                ..
            }
        ));
    }
}
