//! `csv-agent report [--out DIR] [--memory-svg FILE]`: writes DIR/report.html
//! (crate::report); `run` calls [`after_run`] so every run ends with one.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::report::{self, ReportOptions};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory (the report is written into it).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// A memory chart from `sandbox profile --svg` (default: DIR/memory.svg
    /// when it exists).
    #[arg(long)]
    memory_svg: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<i32> {
    let path = report::write(
        &args.out,
        &ReportOptions {
            memory_svg: args.memory_svg,
        },
    )?;
    println!("report: {}", path.display());
    Ok(super::EXIT_OK)
}

/// The report of a finished run; a failure to write it is said, never
/// turned into the run's failure.
pub fn after_run(out: &Path) {
    match report::write(out, &ReportOptions::default()) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("csv-agent: no report: {e}"),
    }
}
