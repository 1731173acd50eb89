//! `csv-agent datasets list | show SLUG | add FILE.csv [--slug S] [--description D]`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::datasets::{DatasetMeta, LoadCheck, Registry};
use crate::sandbox::{Sandbox, SandboxError, SandboxOptions};

#[derive(Debug, Args)]
pub struct DatasetsArgs {
    /// The registry directory (default: $CSV_AGENT_DATASETS, else ./datasets).
    #[arg(long, global = true)]
    datasets: Option<PathBuf>,
    #[command(subcommand)]
    command: DatasetsCommand,
}

#[derive(Debug, Subcommand)]
enum DatasetsCommand {
    /// One line per dataset: slug, shape, name.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A dataset's description, source, license and first lines.
    Show { slug: String },
    /// Profile a dataset in a jailed worker: overview and column kinds.
    Profile {
        slug: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_degraded: bool,
    },
    /// Copy a CSV into the registry (checked with pandas in a jail first).
    Add {
        file: PathBuf,
        #[arg(long)]
        slug: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Run the pandas check even if an isolation layer is unavailable.
        #[arg(long)]
        allow_degraded: bool,
    },
}

pub fn registry_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os(crate::config::ENV_DATASETS)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("datasets"))
}

pub async fn run(args: DatasetsArgs) -> Result<i32> {
    let registry = Registry::open(registry_dir(args.datasets))?;
    match args.command {
        DatasetsCommand::List { json } => {
            let all = registry.list()?;
            if json {
                let rows: Vec<_> = all
                    .iter()
                    .map(|d| serde_json::json!({"slug": d.slug, "path": d.csv, "meta": d.meta}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for d in &all {
                    let shape = match (d.meta.rows, d.meta.columns) {
                        (Some(r), Some(c)) => format!("{r}×{c}"),
                        _ => "?".to_string(),
                    };
                    println!("{:20} {:>10}  {}", d.slug, shape, d.meta.name);
                }
                if all.is_empty() {
                    eprintln!("no datasets in {}", registry.root().display());
                }
            }
        }
        DatasetsCommand::Show { slug } => {
            let d = registry.get(&slug)?;
            println!("{} ({})", d.meta.name, d.slug);
            println!("path:        {}", d.csv.display());
            if let (Some(r), Some(c)) = (d.meta.rows, d.meta.columns) {
                println!("shape:       {r} rows × {c} columns");
            }
            println!("description: {}", d.meta.description);
            println!("source:      {}", d.meta.source);
            println!("license:     {}", d.meta.license);
            let text =
                std::fs::read(&d.csv).with_context(|| format!("reading {}", d.csv.display()))?;
            println!("first lines:");
            for line in String::from_utf8_lossy(&text).lines().take(6) {
                println!("  {line}");
            }
        }
        DatasetsCommand::Profile {
            slug,
            json,
            allow_degraded,
        } => {
            let d = registry.get(&slug)?;
            let image = super::image::ensure_image().await?;
            let mut opts = SandboxOptions::new(&d.csv, image)?;
            opts.allow_degraded = allow_degraded;
            opts.spare_workers = 0;
            let sandbox = Sandbox::start(opts).await?;
            let mut task = sandbox.task();
            let result = crate::profile::profile(&mut task).await;
            drop(task);
            sandbox.shutdown().await;
            let p = result?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("{}", p.overview);
            }
        }
        DatasetsCommand::Add {
            file,
            slug,
            description,
            allow_degraded,
        } => {
            let slug = Registry::slug_for(&file, slug.as_deref())?;
            let staged = registry.stage(&file, &slug)?;
            let check = match check_with_pandas(&staged, allow_degraded).await {
                Ok(check) => check,
                Err(e) => {
                    registry.discard(&staged);
                    return Err(e);
                }
            };
            let meta = DatasetMeta {
                name: file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| slug.clone()),
                description: description.unwrap_or_default(),
                source: format!("added from {}", file.display()),
                license: "unknown (added by a user)".to_string(),
                rows: None,
                columns: None,
            };
            let d = registry.add(&file, &staged, &slug, meta, check)?;
            println!(
                "added {} ({} rows × {} columns) at {}",
                d.slug,
                d.meta.rows.unwrap_or(0),
                d.meta.columns.unwrap_or(0),
                d.dir.display()
            );
        }
    }
    Ok(super::EXIT_OK)
}

/// Load the file the way every run will: in a jailed zygote with pandas.
async fn check_with_pandas(csv: &std::path::Path, allow_degraded: bool) -> Result<LoadCheck> {
    let image = super::image::ensure_image().await?;
    let mut opts = SandboxOptions::new(csv, image)?;
    opts.allow_degraded = allow_degraded;
    opts.spare_workers = 0;
    match Sandbox::start(opts).await {
        Ok(sandbox) => {
            let ready = sandbox.zygote().clone();
            sandbox.shutdown().await;
            if ready.rows == 0 {
                return Ok(LoadCheck::Unreadable {
                    reason: "it has a header but no data rows".to_string(),
                });
            }
            Ok(LoadCheck::Readable {
                rows: ready.rows,
                columns: ready.columns,
            })
        }
        Err(SandboxError::Load(reason)) => Ok(LoadCheck::Unreadable { reason }),
        Err(e) => Err(e.into()),
    }
}
