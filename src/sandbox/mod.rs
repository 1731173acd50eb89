//! The jail: one [`Sandbox`] per dataset (a jailed, pre-warmed Python zygote
//! with the CSV loaded as `df`) and one [`Worker`] per task, forked from it.
//!
//! This module knows nothing of questions, teachers or LLMs. It owns the
//! processes, the layers around them, and the framed protocol to them.
//!
//! ```text
//! supervisor (tokio) ──spawn──▶ jail init (our binary, re-exec'd) ──fork──▶ pid 1: zygote.py
//!                                                                     └─fork─▶ worker, worker, …
//! ```

pub mod caps;
pub mod cgroup;
pub mod image;
pub mod init;
pub mod landlock;
pub mod layers;
pub mod measure;
pub mod memory;
pub mod mounts;
pub mod protocol;
pub mod rlimits;
pub mod seccomp;
pub mod spawn;
pub mod uids;

mod control;
mod dataset;
mod error;
mod limits;
mod options;
mod pidfd;
mod reaper;
mod result;
mod spec;
mod stats;
mod task;
mod unconfined;
mod worker;
mod zygote;

pub use error::SandboxError;
pub use image::{Image, ImageError, ImageSpec};
pub use layers::{IsolationReport, Layer, LayerStatus, WorkerIsolation, LAYER_NAMES};
pub use limits::{parse_size, LimitChoice, Limits, MIN_WORKER_MEMORY};
pub use options::{DatasetHook, SandboxOptions, TestHooks};
pub use reaper::wait_for_cleanup;
pub use result::{CellResult, CellStatus, ExitInfo, Fault};
pub use spec::check_image_location;
pub use stats::{process_totals, WorkerStats};
pub use task::Task;
pub use uids::{IdLease, JailIds};
pub use worker::Worker;
pub use zygote::Sandbox;

/// The zygote program, embedded so the binary is all a host needs besides the image.
pub const ZYGOTE_PY: &str = include_str!("../../sandbox-image/zygote.py");

/// Path of the dataset directory inside the jail.
pub const DATA_DIR: &str = "/data";
