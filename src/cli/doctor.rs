//! `csv-agent doctor`: start a real jail and print each layer as measured there.

use anyhow::Result;
use clap::Args;

use crate::sandbox::measure::measure;
use crate::sandbox::{IsolationReport, Layer, LayerStatus, Sandbox, SandboxOptions};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print `{"layers": [{name, status, detail}, …]}`.
    #[arg(long)]
    json: bool,
}

const PROBE_CSV: &str = "a,b,label\n1,2.5,x\n2,3.5,y\n3,4.5,x\n";

pub async fn run(args: DoctorArgs) -> Result<i32> {
    let image = super::image::ensure_image().await?;
    // A fresh directory with a random name (created exclusively, 0700 until
    // opened up below): nothing predictable in the shared temporary directory.
    let dir = tempfile::Builder::new()
        .prefix("csv-agent-doctor-")
        .tempdir()?;
    set_mode(dir.path(), 0o755)?;
    let csv = dir.path().join("doctor.csv");
    std::fs::write(&csv, PROBE_CSV)?;
    // World-readable: the jail user must read it through the bind mount.
    set_mode(&csv, 0o644)?;

    let mut opts = SandboxOptions::new(&csv, image)?;
    // The doctor measures what works; it never refuses.
    opts.allow_degraded = true;
    opts.spare_workers = 0;
    let report = match Sandbox::start(opts).await {
        Ok(sandbox) => {
            let measured = measure(&sandbox).await;
            sandbox.shutdown().await;
            match measured {
                Ok(r) => r,
                Err(e) => failed_report(&format!("the probe did not run: {e}")),
            }
        }
        Err(e) => failed_report(&format!("the jail did not start: {e}")),
    };
    drop(dir);
    print_report(&report, args.json)?;
    Ok(if report.all_active() {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    })
}

fn failed_report(why: &str) -> IsolationReport {
    let mut report = IsolationReport::default();
    for name in crate::sandbox::LAYER_NAMES {
        report.set(Layer::new(name, LayerStatus::Unavailable, why));
    }
    report
}

pub fn print_report(report: &IsolationReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let width = report
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(10);
    for layer in &report.layers {
        println!(
            "{:width$}  {:11}  {}",
            layer.name,
            layer.status.as_str(),
            layer.detail,
            width = width
        );
    }
    if let Some(w) = &report.worker_isolation {
        println!("\nworker isolation: {}: {}", w.mode, w.detail);
    }
    let missing = report.degraded().len();
    if missing == 0 {
        println!("\nall {} layers active", report.layers.len());
    } else {
        println!("\n{missing} layer(s) not active: code runs only with --allow-degraded");
    }
    Ok(())
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
