//! `csv-agent sandbox exec`: run cells in one task's worker; `sandbox profile`
//! (in sandbox/profile.rs): memory of forked workers against independent sandboxes.

mod profile;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::sandbox::{parse_size, CellResult, CellStatus, Sandbox, SandboxOptions};

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run cells, in order, in one worker of a jailed zygote with the CSV as `df`.
    Exec(ExecArgs),
    /// Measure memory: N workers forked from one zygote against N independent
    /// sandboxes (the cold baseline, measured in the same run).
    Profile(profile::ProfileArgs),
    /// Write the deterministic mixed-column CSV of the memory measurements
    /// (the one `cargo bench --bench jail` uses) into a directory.
    #[command(hide = true)]
    MixedCsv(MixedCsvArgs),
}

#[derive(Debug, Args)]
pub struct MixedCsvArgs {
    /// Rows to generate (same rows, same file, on every machine).
    #[arg(long, default_value_t = crate::sandbox::memory::MIXED_CSV_ROWS)]
    rows: usize,
    /// Directory the file `mixed-<rows>-v<N>.csv` is written to (kept if present).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The dataset, loaded as `df` (also readable at /data/<name> in the jail).
    #[arg(long)]
    csv: PathBuf,
    /// A cell of Python; repeat for several cells (run in order, state kept).
    #[arg(long = "code")]
    code: Vec<String>,
    /// A Python file run as one more cell after the --code cells.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Wall-clock limit per cell, in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Memory limit of the worker, like 512M or 2G.
    #[arg(long, default_value = "1G")]
    memory: String,
    /// One JSON object per cell, one per line.
    #[arg(long)]
    json: bool,
    /// Run even if an isolation layer is unavailable on this host.
    #[arg(long)]
    allow_degraded: bool,
    /// Run the cells in a session of a running `csv-agent serve` (its socket
    /// path, or http://127.0.0.1:PORT with CSV_AGENT_SERVE_TOKEN) instead of
    /// starting a zygote; default $CSV_AGENT_SERVE.
    #[arg(long)]
    serve: Option<String>,
}

pub async fn run(cmd: SandboxCommand) -> Result<i32> {
    match cmd {
        SandboxCommand::Exec(args) => exec(args).await,
        SandboxCommand::Profile(args) => profile::run(args).await,
        SandboxCommand::MixedCsv(args) => mixed_csv(args),
    }
}

fn mixed_csv(args: MixedCsvArgs) -> Result<i32> {
    if args.rows == 0 {
        bail!("--rows 0: give at least one row");
    }
    let path = crate::sandbox::memory::ensure_mixed_csv(&args.dir, args.rows)
        .with_context(|| format!("writing the generated CSV into {}", args.dir.display()))?;
    println!("{}", path.display());
    Ok(0)
}

#[derive(serde::Serialize)]
struct JsonCell<'a> {
    status: &'a str,
    stdout: &'a str,
    stderr: &'a str,
    result: &'a Option<String>,
    error: &'a Option<serde_json::Value>,
    submitted: &'a Option<serde_json::Value>,
    hooks: &'a [serde_json::Value],
    elapsed_ms: f64,
}

async fn exec(args: ExecArgs) -> Result<i32> {
    // Validate everything before building anything.
    let mut cells = args.code.clone();
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the script {}", file.display()))?;
        cells.push(text);
    }
    if cells.is_empty() {
        bail!("nothing to run: give at least one --code CELL or --file SCRIPT.py");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!(
            "--timeout must be a positive number of seconds, got {}",
            args.timeout
        );
    }
    let memory = parse_size(&args.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    if memory < 32 << 20 {
        bail!(
            "--memory {} is too small for Python and pandas (minimum 32M)",
            args.memory
        );
    }
    if !args.csv.is_file() {
        bail!("--csv {}: no such file", args.csv.display());
    }
    let serve = args.serve.clone().or_else(|| {
        std::env::var(crate::config::ENV_SERVE)
            .ok()
            .filter(|s| !s.is_empty())
    });
    if let Some(endpoint) = serve {
        return exec_remote(&args, &cells, memory, &endpoint).await;
    }

    let image = super::image::ensure_image().await?;
    let mut opts = SandboxOptions::new(&args.csv, image)?;
    opts.allow_degraded = args.allow_degraded;
    opts.limits.cell_timeout = Duration::from_secs_f64(args.timeout);
    opts.limits.memory_bytes = memory;
    opts.spare_workers = 0;
    let sandbox = Sandbox::start(opts).await?;
    warn_degraded(sandbox.report());

    let mut task = sandbox.task();
    let outcome = run_cells(args.json, &cells, async |code: &str| {
        task.run_cell(code).await
    })
    .await;
    sandbox.shutdown().await;
    outcome
}

/// Run `cells` in order through `run` and print each result (notebook or
/// JSON lines). Stops at the first error of the machinery, which it returns;
/// otherwise exit 0 when every cell succeeded, 1 when one failed.
async fn run_cells<E>(
    json: bool,
    cells: &[String],
    mut run: impl AsyncFnMut(&str) -> Result<CellResult, E>,
) -> Result<i32>
where
    E: Into<anyhow::Error>,
{
    let mut all_ok = true;
    for (i, code) in cells.iter().enumerate() {
        let cell = run(code).await.map_err(Into::into)?;
        all_ok &= cell.status == CellStatus::Ok;
        if json {
            print_json(&cell)?;
        } else {
            print_notebook(i + 1, code, &cell);
        }
    }
    Ok(if all_ok {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    })
}

/// The same cells in a session of a running server: the same results,
/// printed the same way, without a zygote start.
async fn exec_remote(
    args: &ExecArgs,
    cells: &[String],
    memory: u64,
    endpoint: &str,
) -> Result<i32> {
    use crate::serve::{Endpoint, ServeClient};
    let csv = std::fs::canonicalize(&args.csv)
        .with_context(|| format!("--csv {}", args.csv.display()))?;
    let mut client = ServeClient::new(Endpoint::parse(endpoint));
    let spec = serde_json::json!({
        "csv": csv,
        "limits": { "memory": memory, "timeout": args.timeout },
    });
    let id = client.create_session(&spec).await?;
    let outcome = run_cells(args.json, cells, async |code: &str| {
        client.run_cell(&id, code, Some(args.timeout)).await
    })
    .await;
    let _ = client.delete_session(&id).await;
    outcome
}

/// One warning per distinct reason, naming every layer it covers.
fn warn_degraded(report: &crate::sandbox::IsolationReport) {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for layer in report.degraded() {
        let key = format!("{}: {}", layer.status.as_str(), layer.detail);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, names)) => names.push(&layer.name),
            None => groups.push((key, vec![&layer.name])),
        }
    }
    for (reason, names) in groups {
        eprintln!(
            "csv-agent: warn: running with {} {}",
            names.join(", "),
            reason
        );
    }
}

fn print_json(cell: &CellResult) -> Result<()> {
    let line = serde_json::to_string(&JsonCell {
        status: cell.status.as_str(),
        stdout: &cell.stdout,
        stderr: &cell.stderr,
        result: &cell.result,
        error: &cell.error,
        submitted: &cell.submitted,
        hooks: &cell.hooks,
        elapsed_ms: cell.elapsed_ms,
    })?;
    println!("{line}");
    Ok(())
}

fn print_notebook(n: usize, code: &str, cell: &CellResult) {
    println!("In [{n}]:");
    for line in code.lines() {
        println!("    {line}");
    }
    if !cell.stdout.is_empty() {
        print!("{}", cell.stdout);
        if !cell.stdout.ends_with('\n') {
            println!();
        }
    }
    if !cell.stderr.is_empty() {
        eprint!("{}", cell.stderr);
        if !cell.stderr.ends_with('\n') {
            eprintln!();
        }
    }
    if let Some(result) = &cell.result {
        println!("Out[{n}]:\n{result}");
    }
    if let Some(submitted) = &cell.submitted {
        println!("Submitted: {}", submitted.get("value").unwrap_or(submitted));
    }
    for hook in &cell.hooks {
        println!("Hook: {hook}");
    }
    if cell.status != CellStatus::Ok {
        let error = cell.error.as_ref();
        let tb = error
            .and_then(|e| e.get("traceback"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty());
        match tb {
            Some(tb) => eprintln!("{tb}"),
            None => eprintln!(
                "[{}] {}",
                cell.status.as_str(),
                error
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
            ),
        }
    }
    println!();
}
