//! `csv-agent serve`: flags and environment resolved into [`ServeSettings`],
//! then the service runs until SIGTERM (drained) — see src/serve/.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::sandbox::{parse_size, Limits, MIN_WORKER_MEMORY};
use crate::serve::pool::PoolSettings;
use crate::serve::score::Questions;
use crate::serve::{server, ServeSettings, ENV_SERVE_TOKEN, MIN_TOKEN_LEN};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The unix socket (default $XDG_RUNTIME_DIR/csv-agent/serve.sock, else
    /// /tmp/csv-agent-<uid>/serve.sock); only our uid may connect.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also listen on loopback TCP (e.g. 127.0.0.1:8765; port 0 picks one);
    /// requires CSV_AGENT_SERVE_TOKEN (at least 16 characters).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The dataset registry sessions name by slug.
    #[arg(long, default_value = "datasets")]
    datasets: PathBuf,
    /// Start these datasets' sandboxes now (comma-separated slugs).
    #[arg(long, value_delimiter = ',')]
    preload: Vec<String>,
    /// Memory the sandboxes may use together (zygotes + session workers,
    /// as charged to their cgroups); default half of MemAvailable.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Close sessions, and stop sandboxes without a session, idle this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Sessions alive at once (more are refused with 429).
    #[arg(long, default_value_t = 256)]
    max_sessions: usize,
    /// Per-worker memory limit, and the most a session may ask for.
    #[arg(long, default_value = "1G")]
    memory: String,
    /// A cell's default wall-clock limit.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    cell_timeout: Duration,
    /// The longest a request may ask a cell to run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    max_cell_timeout: Duration,
    /// Pre-forked workers kept per sandbox, so a session starts without a fork.
    #[arg(long, default_value_t = 2)]
    spare_workers: usize,
    /// `rl` export rows or questions files whose ids `/v1/score` accepts.
    #[arg(long = "questions")]
    questions: Vec<PathBuf>,
    /// Largest request body.
    #[arg(long, default_value = "1M")]
    max_body: String,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Run even if an isolation layer is unavailable on this host.
    #[arg(long)]
    allow_degraded: bool,
    /// A connection must send a request's headers within this time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    header_timeout: Duration,
    /// A request's body must arrive within this time (else 408).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    body_timeout: Duration,
}

/// The server a client command uses: `--serve`, else `$CSV_AGENT_SERVE`.
pub fn endpoint(flag: Option<&str>) -> Option<crate::serve::Endpoint> {
    flag.map(str::to_string)
        .or_else(|| {
            std::env::var(crate::config::ENV_SERVE)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .map(|s| crate::serve::Endpoint::parse(&s))
}

pub async fn run(args: ServeArgs) -> Result<i32> {
    let memory = parse_size(&args.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    if memory < MIN_WORKER_MEMORY {
        bail!("--memory {} is below the minimum of 256M", args.memory);
    }
    if args.cell_timeout.is_zero() || args.cell_timeout > args.max_cell_timeout {
        bail!("--cell-timeout must be positive and at most --max-cell-timeout");
    }
    let budget = match &args.memory_budget {
        Some(t) => parse_size(t).map_err(|e| anyhow::anyhow!("--memory-budget: {e}"))?,
        None => crate::capacity::mem_available(8 << 30) / 2,
    };
    let max_body = parse_size(&args.max_body).map_err(|e| anyhow::anyhow!("--max-body: {e}"))?;
    if args.max_sessions == 0 {
        bail!("--max-sessions must be at least 1");
    }
    let token = std::env::var(ENV_SERVE_TOKEN)
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(addr) = args.listen {
        if !addr.ip().is_loopback() {
            bail!("--listen {addr}: only loopback addresses are served (use an SSH tunnel or the unix socket)");
        }
        match &token {
            None => bail!(
                "--listen needs {ENV_SERVE_TOKEN} set: TCP is served only with a bearer token"
            ),
            Some(t) if t.len() < MIN_TOKEN_LEN => {
                bail!("{ENV_SERVE_TOKEN} must be at least {MIN_TOKEN_LEN} characters")
            }
            _ => {}
        }
    }
    if !args.datasets.is_dir() && !args.preload.is_empty() {
        bail!("--datasets {}: no such directory", args.datasets.display());
    }
    let questions = Questions::load(&args.questions).context("--questions")?;
    let image = super::image::ensure_image().await?;
    let settings = ServeSettings {
        socket: args.socket.unwrap_or_else(server::default_socket),
        listen: args.listen,
        token,
        datasets: args.datasets,
        pool: PoolSettings {
            image,
            limits: Limits {
                memory_bytes: memory,
                cell_timeout: args.max_cell_timeout,
                ..Limits::default()
            },
            allow_degraded: args.allow_degraded,
            spare_workers: args.spare_workers,
            memory_budget: budget,
            idle_timeout: args.idle_timeout,
        },
        max_sessions: args.max_sessions,
        idle_timeout: args.idle_timeout,
        preload: args.preload,
        questions,
        default_cell_timeout: args.cell_timeout,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        drain_timeout: args.drain_timeout,
        max_connections: 1024,
    };
    let budget_mib = budget >> 20;
    server::serve(settings, |addresses| {
        use std::io::Write;
        eprintln!("csv-agent serve: memory budget {budget_mib} MiB; ready");
        let mut out = std::io::stdout().lock();
        for a in addresses {
            let _ = writeln!(out, "{a}");
        }
        let _ = out.flush();
    })
    .await?;
    Ok(super::EXIT_OK)
}
