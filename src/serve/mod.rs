//! `csv-agent serve`: warm jails as a service.
//!
//! A long-lived process keeps one [`Sandbox`](crate::sandbox::Sandbox) (one
//! zygote with the CSV loaded) per dataset content hash and hands out
//! *sessions*: one fresh worker forked for each, whose Python namespace
//! lives across the session's cells. Clients talk JSON over HTTP/1.1 on a
//! unix socket (only the owner uid may connect) or on loopback TCP with a
//! bearer token. The API is described in docs/serve.md.
//!
//! - [`server`]: listeners, routing, bounds on bodies and time, the drain
//! - [`pool`]: the warm sandboxes: start on first use, restart when dead,
//!   evict when idle or when the memory budget needs room (LRU)
//! - [`sessions`]: session ids, ownership, idle expiry, one cell at a time
//! - [`auth`]: who is calling (peer credentials, bearer token), the socket's
//!   directory and mode
//! - [`score`]: the tolerant match and the `rl` reward of a submitted answer,
//!   through [`crate::formats::reward`] (never re-implemented here)
//! - [`client`]: a Rust client over the same API (used by `--serve` and the
//!   bench)
//!
//! This module never forks: every jail comes from `Sandbox::start`, which
//! re-executes our binary.

pub mod auth;
pub mod client;
pub mod linger;
pub mod pool;
pub mod score;
pub mod server;
pub mod sessions;
pub mod source;

pub use client::{ClientError, Endpoint, ServeClient};
pub use server::{serve, ServeSettings};

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a pooled sandbox or a session was last used: what idle eviction and
/// the status listings read.
#[derive(Debug)]
pub(crate) struct LastUsed(Mutex<Instant>);

impl LastUsed {
    pub(crate) fn now() -> LastUsed {
        LastUsed(Mutex::new(Instant::now()))
    }
    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }
    pub(crate) fn idle_for(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// What can go wrong while setting up or running the service (not a
/// request's error: those are [`server::ApiError`]s with an HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket directory {path}: {reason}")]
    SocketDir { path: PathBuf, reason: String },
    #[error("socket {path}: another server is already listening there")]
    SocketInUse { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--listen {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("questions file {path}, line {line}: {reason}")]
    Questions {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("preloading {slug}: {reason}")]
    Preload { slug: String, reason: String },
}

pub use crate::config::{ENV_SERVE, ENV_SERVE_TOKEN};
/// The shortest bearer token accepted (bytes): a guessable token on a
/// loopback port is a shell for any local user.
pub const MIN_TOKEN_LEN: usize = 16;
