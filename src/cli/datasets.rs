//! `csv-agent datasets list | show SLUG | add SOURCE [--slug S] [--description D]
//! [--sheet NAME] [--table NAME] [--file NAME] | profile SLUG`.
//!
//! Which registry: `--datasets DIR`, else `$CSV_AGENT_DATASETS`, else
//! `./datasets` when it exists, else the datasets compiled into the binary
//! (said once on stderr). `add` never writes into the bundled copy: without
//! a registry it creates `./datasets`.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::datasets::import::{ImportOptions, ImportRecord};
use crate::datasets::kaggle::{self, Reference};
use crate::datasets::{embedded, DatasetMeta, LoadCheck, Registry};
use crate::sandbox::{CellStatus, Sandbox, SandboxError, SandboxOptions};

#[derive(Debug, Args)]
pub struct DatasetsArgs {
    /// The registry directory (default: $CSV_AGENT_DATASETS, else ./datasets,
    /// else the bundled datasets).
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
    /// A dataset's description, source, license, how it was imported, and
    /// its first lines.
    Show { slug: String },
    /// Profile a dataset in a jailed worker: overview and column kinds.
    Profile {
        slug: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        allow_degraded: bool,
    },
    /// Import a file, a folder or a Kaggle dataset into the registry
    /// (checked with pandas in a jail first): .csv .tsv .txt (also .gz or in
    /// a .zip), .xlsx, .parquet, .jsonl/.json, .sqlite/.db, kaggle:OWNER/DATASET.
    Add {
        /// A file, a folder holding one tabular file, or kaggle:OWNER/DATASET.
        source: String,
        /// The dataset's name in the registry (default: from the file name).
        #[arg(long)]
        slug: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// The worksheet of a workbook (default: the first).
        #[arg(long)]
        sheet: Option<String>,
        /// The table of a SQLite database (default: the only one).
        #[arg(long)]
        table: Option<String>,
        /// The file inside a zip archive, a folder or a Kaggle dataset
        /// (default: the only tabular one).
        #[arg(long)]
        file: Option<String>,
        /// Delimited text: store it with the types read from the text
        /// (integers with gaps stay integers, ISO dates become dates)
        /// instead of as text for pandas to infer.
        #[arg(long)]
        typed: bool,
        /// Run the pandas check even if an isolation layer is unavailable.
        #[arg(long)]
        allow_degraded: bool,
    },
}

/// Where a registry came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrySource {
    Chosen,
    Local,
    Bundled,
}

/// The registry a command reads: the flag, the environment, `./datasets`,
/// or the bundled datasets (written once into the cache, announced once).
pub fn registry_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    resolve(flag).map(|(dir, _)| dir)
}

fn chosen(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os(crate::config::ENV_DATASETS)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

fn resolve(flag: Option<PathBuf>) -> Result<(PathBuf, RegistrySource)> {
    if let Some(dir) = chosen(flag) {
        return Ok((dir, RegistrySource::Chosen));
    }
    let local = PathBuf::from("datasets");
    if local.exists() {
        return Ok((local, RegistrySource::Local));
    }
    let dir = embedded::materialize(&crate::config::cache_dir())
        .context("writing the bundled datasets into the cache")?;
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        eprintln!(
            "csv-agent: no ./datasets here and no --datasets: using the {} bundled datasets ({})",
            embedded::slugs().len(),
            embedded::slugs().join(", ")
        );
    });
    Ok((dir, RegistrySource::Bundled))
}

pub async fn run(args: DatasetsArgs) -> Result<i32> {
    if let DatasetsCommand::Add {
        source,
        slug,
        description,
        sheet,
        table,
        file,
        typed,
        allow_degraded,
    } = args.command
    {
        let root = chosen(args.datasets).unwrap_or_else(|| PathBuf::from("datasets"));
        let options = ImportOptions {
            sheet,
            table,
            file,
            typed,
        };
        let request = AddRequest {
            source,
            slug,
            description,
            options,
            allow_degraded,
        };
        return add(&root, request).await;
    }
    let (root, _) = resolve(args.datasets)?;
    let registry = Registry::open(root)?;
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
                let mut table = super::table::new(&["dataset", "shape", "format", "name"]);
                super::table::align_right(&mut table, &[1]);
                for d in &all {
                    let shape = match (d.meta.rows, d.meta.columns) {
                        (Some(r), Some(c)) => format!("{r}×{c}"),
                        _ => "?".to_string(),
                    };
                    let format = d
                        .meta
                        .import
                        .as_ref()
                        .map(|i| i.format.clone())
                        .unwrap_or_else(|| "csv".to_string());
                    table.add_row(vec![d.slug.clone(), shape, format, d.meta.name.clone()]);
                }
                if all.is_empty() {
                    eprintln!("no datasets in {}", registry.root().display());
                } else {
                    println!("{}", super::table::lines(&table).join("\n"));
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
            if let Some(v) = &d.meta.version {
                println!("version:     {v}");
            }
            match &d.meta.import {
                Some(record) => print_import(record),
                None => println!(
                    "imported:    bundled or placed by hand: data.csv, read like every CSV"
                ),
            }
            if d.csv.extension().is_some_and(|e| e == "csv") {
                let text = std::fs::read(&d.csv)
                    .with_context(|| format!("reading {}", d.csv.display()))?;
                println!("first lines:");
                for line in String::from_utf8_lossy(&text).lines().take(6) {
                    println!("  {line}");
                }
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
        DatasetsCommand::Add { .. } => unreachable!("handled above"),
    }
    Ok(super::EXIT_OK)
}

fn print_import(record: &ImportRecord) {
    let mut from = format!("{} ({})", record.original, record.format);
    for via in &record.via {
        from.push_str(&format!(", via {via}"));
    }
    if let Some(f) = &record.file {
        from.push_str(&format!(", file `{f}`"));
    }
    if let Some(s) = &record.sheet {
        from.push_str(&format!(", sheet `{s}`"));
    }
    if let Some(t) = &record.table {
        from.push_str(&format!(", table `{t}`"));
    }
    println!("imported:    from {from}");
    println!("stored as:   {}", record.stored_as);
    if !record.dtypes.is_empty() {
        let mut table = super::table::new(&["column", "stored as", "pandas dtype"]);
        for (name, dtype) in &record.dtypes {
            let stored = record
                .columns
                .iter()
                .find(|c| &c.name == name)
                .map(|c| format!("{:?}", c.kind).to_lowercase())
                .unwrap_or_else(|| "text".to_string());
            table.add_row(vec![name.clone(), stored, dtype.clone()]);
        }
        println!("columns:");
        for line in super::table::lines(&table) {
            println!("  {line}");
        }
    }
}

struct AddRequest {
    source: String,
    slug: Option<String>,
    description: Option<String>,
    options: ImportOptions,
    allow_degraded: bool,
}

/// A name for the dataset from its file or folder name, without the
/// extensions the importer reads (`sales.csv.gz` → `sales`).
fn base_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    while let Some((stem, _)) = name.rsplit_once('.') {
        if stem.is_empty() || crate::datasets::import::Format::of(Path::new(&name)).is_none() {
            break;
        }
        name = stem.to_string();
    }
    name
}

async fn add(root: &Path, request: AddRequest) -> Result<i32> {
    // Everything that can be refused without touching the disk is refused
    // first; a registry folder this command created is removed again if
    // the import fails, so a failed add leaves nothing behind.
    let kaggle = if request.source.starts_with("kaggle:") {
        let reference = Reference::parse(&request.source)?;
        let credentials = kaggle::Credentials::find()?;
        let base = std::env::var(crate::config::ENV_KAGGLE_URL)
            .ok()
            .filter(|v| !v.is_empty());
        Some((reference, kaggle::Client::new(base, credentials)?))
    } else {
        let path = Path::new(&request.source);
        if !path.exists() {
            anyhow::bail!("{}: no such file or folder", path.display());
        }
        None
    };
    if let Some(slug) = &request.slug {
        Registry::slug_for(Path::new(&request.source), Some(slug))?;
    }
    // The folders this command creates (the registry and any missing
    // parent), removed again when the import fails.
    let created: Vec<PathBuf> = root
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    let registry = Registry::create(root)?;
    let result = add_into(&registry, request, kaggle).await;
    if result.is_err() {
        // Innermost first, and only while empty: never remove what someone
        // else put there.
        for dir in &created {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
    let created = !created.is_empty();
    let (d, dtypes) = result?;
    println!(
        "added {} ({} rows × {} columns, {}) at {}",
        d.slug,
        d.meta.rows.unwrap_or(0),
        d.meta.columns.unwrap_or(0),
        d.meta
            .import
            .as_ref()
            .map(|i| i.format.as_str())
            .unwrap_or("csv"),
        d.dir.display()
    );
    if !dtypes.is_empty() {
        let shown: Vec<String> = dtypes.iter().map(|(c, t)| format!("{c}: {t}")).collect();
        println!("dtypes: {}", shown.join(", "));
    }
    if d.csv.extension().is_some_and(|e| e == "csv") {
        println!(
            "types as pandas infers them from the text; `--typed` keeps integers with gaps (Int64) and ISO dates (datetime64)"
        );
    }
    if created && chosen(None).is_none() && root == Path::new("datasets") {
        eprintln!(
            "csv-agent: created the registry ./datasets; `csv-agent run` here now uses it instead of the bundled datasets"
        );
    }
    Ok(super::EXIT_OK)
}

type Added = (crate::datasets::Dataset, Vec<(String, String)>);

async fn add_into(
    registry: &Registry,
    request: AddRequest,
    kaggle: Option<(Reference, kaggle::Client)>,
) -> Result<Added> {
    let AddRequest {
        source,
        slug,
        description,
        mut options,
        allow_degraded,
    } = request;
    // A Kaggle dataset is downloaded into a folder of the registry that is
    // not a dataset (dot name), imported from there, and removed.
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(registry.root())
        .context("creating a download folder in the registry")?;
    let (path, mut meta) = match &kaggle {
        Some((reference, client)) => {
            let info = client.info(reference).await?;
            eprintln!("downloading kaggle:{reference} …");
            let file = options.file.take();
            let path = client
                .download(reference, file.as_deref(), download.path())
                .await?;
            if path.extension().is_some_and(|e| e == "zip") {
                options.file = file;
            }
            let url = if info.url.is_empty() {
                format!("https://www.kaggle.com/datasets/{reference}")
            } else {
                info.url.clone()
            };
            let meta = DatasetMeta {
                name: if info.title.is_empty() {
                    reference.dataset.clone()
                } else {
                    info.title.clone()
                },
                description: description.clone().unwrap_or_else(|| info.subtitle.clone()),
                source: format!("Kaggle dataset {reference}, {url}"),
                license: if info.license_name.is_empty() {
                    "unknown (see the dataset's page)".to_string()
                } else {
                    info.license_name.clone()
                },
                version: info.current_version_number.as_ref().map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
                ..DatasetMeta::default()
            };
            (path, meta)
        }
        None => {
            let path = PathBuf::from(&source);
            let meta = DatasetMeta {
                name: base_name(&path),
                description: description.clone().unwrap_or_default(),
                source: format!("added from {}", path.display()),
                license: "unknown (added by a user)".to_string(),
                ..DatasetMeta::default()
            };
            (path, meta)
        }
    };
    let slug = match slug {
        Some(s) => Registry::slug_for(&path, Some(&s))?,
        None => registry.unique_slug(&match &kaggle {
            Some((reference, _)) => reference.dataset.clone(),
            None => base_name(&path),
        }),
    };
    let (staged, mut record) = registry.stage_import(&path, &slug, &options)?;
    drop(download);
    if let Some((reference, _)) = &kaggle {
        record.original = format!("kaggle:{reference}");
        record.via.retain(|v| !v.starts_with("zip: "));
        record.via.insert(0, format!("kaggle: {reference}"));
    }
    let checked = match check_with_pandas(&staged, allow_degraded).await {
        Ok(checked) => checked,
        Err(e) => {
            registry.discard(&staged);
            return Err(e);
        }
    };
    let (check, dtypes) = checked;
    record.dtypes = dtypes.clone();
    meta.import = Some(record);
    let d = registry.add(&path, &staged, &slug, meta, check)?;
    Ok((d, dtypes))
}

/// Print each column's dtype as one JSON line.
const DTYPES_CELL: &str =
    "import json as _j; print(_j.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]))";

/// Load the file the way every run will: in a jailed zygote with pandas;
/// then ask a worker for the dtypes it got.
async fn check_with_pandas(
    file: &Path,
    allow_degraded: bool,
) -> Result<(LoadCheck, Vec<(String, String)>)> {
    let image = super::image::ensure_image().await?;
    let mut opts = SandboxOptions::new(file, image)?;
    opts.allow_degraded = allow_degraded;
    opts.spare_workers = 0;
    match Sandbox::start(opts).await {
        Ok(sandbox) => {
            let ready = sandbox.zygote().clone();
            let mut dtypes = Vec::new();
            if ready.rows > 0 {
                let mut task = sandbox.task();
                if let Ok(cell) = task.run_cell(DTYPES_CELL).await {
                    if cell.status == CellStatus::Ok {
                        let line = cell.stdout.lines().last().unwrap_or("");
                        dtypes = serde_json::from_str(line).unwrap_or_default();
                    }
                }
                drop(task);
            }
            sandbox.shutdown().await;
            if ready.rows == 0 {
                return Ok((
                    LoadCheck::Unreadable {
                        reason: "it has a header but no data rows".to_string(),
                    },
                    dtypes,
                ));
            }
            Ok((
                LoadCheck::Readable {
                    rows: ready.rows,
                    columns: ready.columns,
                },
                dtypes,
            ))
        }
        Err(SandboxError::Load(reason)) => Ok((LoadCheck::Unreadable { reason }, Vec::new())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_the_formats_extensions() {
        assert_eq!(base_name(Path::new("/x/sales.csv.gz")), "sales");
        assert_eq!(base_name(Path::new("owner_data-set")), "owner_data-set");
        assert_eq!(base_name(Path::new("v1.2.xlsx")), "v1.2");
        assert_eq!(base_name(Path::new(".hidden.csv")), ".hidden");
    }
}
