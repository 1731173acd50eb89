//! `datasets add`: turns the files people have into a registry folder.
//!
//! Two ways in, chosen so that the rest of the pipeline (hashing, profile,
//! templates, the zygote) sees one of two files it knows:
//!
//! - **Delimited text** (`.csv`, `.tsv`, `.txt`, gzip- or zip-compressed)
//!   is stored as `data.csv`, byte for byte as given (decompressed), and read
//!   by the zygote exactly like the bundled datasets: separator sniffed,
//!   UTF-8 then latin-1, types as `pd.read_csv` infers them.
//! - **Typed sources** (`.xlsx`, `.parquet`, `.jsonl`/`.json`,
//!   `.sqlite`/`.db`) are decoded here, in Rust, and stored as `data.sqlite`:
//!   one table whose declared column types say which pandas dtype each
//!   column gets back in the zygote (see [`table`]). Dates stay dates,
//!   integers with missing values become `Int64`.
//!
//! Why decode outside the jail: the jail sees only the dataset's one file
//! and cannot write to the host, so it cannot convert; and keeping the
//! readers in Rust (calamine, parquet, serde_json, SQLite) keeps the Python
//! image as it is. The decoders are memory-safe; a panic on a malformed
//! file is caught and reported as that file being unreadable. Every result
//! is still loaded by pandas in a jail before it is published.
//!
//! What was imported and how is recorded in `meta.json` (`import`).

pub mod readers;
pub mod table;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use table::{ColumnType, StoredColumn};

/// The typed store's file name in a dataset folder.
pub const TYPED_FILE: &str = "data.sqlite";

/// The most a compressed member may expand to (a guard against zip bombs).
pub const MAX_EXPANDED_BYTES: u64 = 8 << 30;

/// What the user said about the source, beyond its path.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The worksheet of a workbook (default: the first).
    pub sheet: Option<String>,
    /// The table of a SQLite database (default: the only one).
    pub table: Option<String>,
    /// The file inside a zip archive or folder (default: the only tabular one).
    pub file: Option<String>,
    /// Decode delimited text with its types into the typed store (integers
    /// with gaps stay integers, ISO dates become dates) instead of keeping
    /// the text for pandas to infer.
    pub typed: bool,
}

/// What `meta.json` records about an import.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// The reader used: `csv`, `xlsx`, `parquet`, `jsonl`, `json`, `sqlite`.
    pub format: String,
    /// The path given to `datasets add` (or the Kaggle reference).
    pub original: String,
    /// Wrappers opened on the way, outermost first (`zip: archive.zip`,
    /// `gzip`, `folder: dir`, `kaggle: owner/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// The file chosen inside a zip archive or folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// How it is stored in the dataset folder.
    pub stored_as: String,
    /// The typed store's columns and declared types (typed sources only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<StoredColumn>,
    /// The dtypes pandas gave each column when the jail loaded the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dtypes: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: `{kind}` is not a format csv-agent reads; give a .csv, .tsv, .txt, .csv.gz, .zip, .xlsx, .parquet, .jsonl, .json, .sqlite or .db file (export other formats to CSV first)")]
    Unsupported { path: PathBuf, kind: String },
    #[error("{path} is empty; give a file with a header row and data")]
    Empty { path: PathBuf },
    #[error("{path} contains NUL bytes: a binary file, not delimited text; if it is a workbook, Parquet or SQLite file, give it its usual extension (.xlsx, .parquet, .sqlite)")]
    Binary { path: PathBuf },
    #[error("{path}: not a readable {format} file ({reason}); open it in the program that made it, save it again and retry")]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error(
        "{path}: no sheet `{sheet}`; the workbook has {}: choose one with --sheet NAME",
        list(available)
    )]
    NoSheet {
        path: PathBuf,
        sheet: String,
        available: Vec<String>,
    },
    #[error("{path}: sheet `{sheet}` is empty; put the data there or choose another sheet with --sheet NAME (sheets: {})", list(available))]
    EmptySheet {
        path: PathBuf,
        sheet: String,
        available: Vec<String>,
    },
    #[error("{path}: the table has a header but no data rows; give a file with data")]
    NoRows { path: PathBuf },
    #[error("{path}: the SQLite database has no tables; give a database that holds the data in a table (views and empty files do not count)")]
    NoTables { path: PathBuf },
    #[error("{path}: the database holds {} tables ({}): choose one with --table NAME", available.len(), list(available))]
    ManyTables {
        path: PathBuf,
        available: Vec<String>,
    },
    #[error(
        "{path}: no table `{table}`; the database has {}: choose one with --table NAME",
        list(available)
    )]
    NoTable {
        path: PathBuf,
        table: String,
        available: Vec<String>,
    },
    #[error("{path} holds no tabular file (found: {}); csv-agent reads .csv, .tsv, .txt, .xlsx, .parquet, .jsonl, .json, .sqlite and .db", list(found))]
    NoTabular { path: PathBuf, found: Vec<String> },
    #[error("{path} holds {} tabular files ({}): choose one with --file NAME", found.len(), list(found))]
    ManyTabular { path: PathBuf, found: Vec<String> },
    #[error(
        "{path}: no file `{file}` in it; tabular files there: {}: choose one with --file NAME",
        list(found)
    )]
    NoMember {
        path: PathBuf,
        file: String,
        found: Vec<String>,
    },
    #[error("{path}, line {line}: not a JSON object ({reason}); give JSON Lines (one object per line) or a JSON array of objects")]
    BadJson {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} expands to more than {} GiB; import a smaller file", MAX_EXPANDED_BYTES >> 30)]
    TooLarge { path: PathBuf },
    #[error("{option} applies to {applies} only, and {path} is {format}; leave it out")]
    OptionNotApplicable {
        option: &'static str,
        applies: &'static str,
        path: PathBuf,
        format: String,
    },
    #[error("writing the typed copy {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "nothing".to_string();
    }
    let shown: Vec<String> = items.iter().take(8).map(|s| format!("`{s}`")).collect();
    if items.len() > 8 {
        format!("{}, … ({} in all)", shown.join(", "), items.len())
    } else {
        shown.join(", ")
    }
}

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io {
        action,
        path,
        source,
    }
}

/// The kinds of input, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Delimited,
    Gzip,
    Zip,
    Xlsx,
    Parquet,
    JsonLines,
    Json,
    Sqlite,
}

impl Format {
    /// From the file name (case-insensitive extension).
    pub fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        let ext = name.rsplit_once('.').map(|(_, e)| e)?;
        Some(match ext {
            "csv" | "tsv" | "txt" | "tab" => Format::Delimited,
            "gz" => Format::Gzip,
            "zip" => Format::Zip,
            "xlsx" | "xlsm" => Format::Xlsx,
            "parquet" | "pq" => Format::Parquet,
            "jsonl" | "ndjson" => Format::JsonLines,
            "json" => Format::Json,
            "sqlite" | "sqlite3" | "db" => Format::Sqlite,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Format::Delimited => "delimited text",
            Format::Gzip => "a gzip file",
            Format::Zip => "a zip archive",
            Format::Xlsx => "an Excel workbook",
            Format::Parquet => "a Parquet file",
            Format::JsonLines => "JSON Lines",
            Format::Json => "JSON",
            Format::Sqlite => "a SQLite database",
        }
    }
}

/// Import `source` (a file or a folder) into `staging`, which must exist and
/// be empty; returns the data file written there and what was done. On an
/// error the caller removes `staging`.
pub fn import(
    source: &Path,
    options: &ImportOptions,
    staging: &Path,
) -> Result<(PathBuf, ImportRecord), ImportError> {
    let scratch = staging.join(".source");
    let mut record = ImportRecord {
        original: source.display().to_string(),
        ..ImportRecord::default()
    };
    let result = import_into(source, options, staging, &scratch, &mut record, true);
    let _ = fs::remove_dir_all(&scratch);
    let file = result?;
    Ok((file, record))
}

fn import_into(
    source: &Path,
    options: &ImportOptions,
    staging: &Path,
    scratch: &Path,
    record: &mut ImportRecord,
    outermost: bool,
) -> Result<PathBuf, ImportError> {
    let meta = fs::metadata(source).map_err(io("reading", source))?;
    if meta.is_dir() {
        record.via.push(format!("folder: {}", source.display()));
        let member = choose_in_folder(source, options.file.as_deref())?;
        record.file = Some(member.0);
        return import_into(&member.1, options, staging, scratch, record, false);
    }
    let format = Format::of(source).ok_or_else(|| ImportError::Unsupported {
        path: source.to_path_buf(),
        kind: source
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_else(|| "a file without an extension".to_string()),
    })?;
    if meta.len() == 0 {
        return Err(ImportError::Empty {
            path: source.to_path_buf(),
        });
    }
    check_options(source, format, options, outermost)?;
    match format {
        Format::Gzip => {
            record.via.push("gzip".to_string());
            let inner = source
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let inner = if Format::of(Path::new(&inner)).is_some() {
                inner
            } else {
                // `data.gz`: assume the usual content.
                format!("{inner}.csv")
            };
            fs::create_dir_all(scratch).map_err(io("creating", scratch))?;
            let target = scratch.join(safe_name(&inner));
            let file = fs::File::open(source).map_err(io("opening", source))?;
            copy_capped(flate2::read::GzDecoder::new(file), &target, source, "gzip")?;
            import_into(&target, options, staging, scratch, record, false)
        }
        Format::Zip => {
            record.via.push(format!("zip: {}", source.display()));
            let (name, target) = extract_from_zip(source, options.file.as_deref(), scratch)?;
            record.file = Some(name);
            import_into(&target, options, staging, scratch, record, false)
        }
        Format::Delimited if options.typed => {
            check_text(source)?;
            let target = staging.join(TYPED_FILE);
            let table = guard(source, format, || readers::delimited(source))?;
            if table.rows.is_empty() {
                return Err(ImportError::NoRows {
                    path: source.to_path_buf(),
                });
            }
            let inference = table::Inference {
                iso_text_dates: true,
                whole_floats_are_ints: false,
            };
            record.columns = table.write_sqlite(&target, inference)?;
            record.format = "csv".to_string();
            record.stored_as = format!(
                "data.sqlite (--typed), one table `{}` with the types read from the text, loaded by the zygote with those types",
                table::TABLE
            );
            Ok(target)
        }
        Format::Delimited => {
            check_text(source)?;
            let target = staging.join(super::DATA_FILE);
            fs::copy(source, &target).map_err(io("copying into", &target))?;
            record.format = "csv".to_string();
            record.stored_as =
                "data.csv, the text as given; read by pandas like every CSV (separator sniffed, UTF-8 then latin-1)".to_string();
            Ok(target)
        }
        typed => {
            let target = staging.join(TYPED_FILE);
            let (format_name, columns) = guard(source, typed, || {
                readers::read(typed, source, options, record)
            })
            .and_then(|(name, table, inference)| {
                if table.rows.is_empty() {
                    return Err(ImportError::NoRows {
                        path: source.to_path_buf(),
                    });
                }
                Ok((name, table.write_sqlite(&target, inference)?))
            })?;
            record.format = format_name.to_string();
            record.stored_as = format!(
                "data.sqlite, one table `{}` with declared column types, loaded by the zygote with those types",
                table::TABLE
            );
            record.columns = columns;
            Ok(target)
        }
    }
}

/// A decoder that panics on a malformed file must not take the process
/// down: the file is unreadable, and that is what the user is told.
fn guard<T>(
    path: &Path,
    format: Format,
    f: impl FnOnce() -> Result<T, ImportError>,
) -> Result<T, ImportError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the decoder gave up".to_string());
            Err(ImportError::Corrupt {
                path: path.to_path_buf(),
                format: format.name(),
                reason,
            })
        }
    }
}

fn check_options(
    path: &Path,
    format: Format,
    options: &ImportOptions,
    outermost: bool,
) -> Result<(), ImportError> {
    let wrapper = matches!(format, Format::Zip | Format::Gzip);
    let not = |option, applies| ImportError::OptionNotApplicable {
        option,
        applies,
        path: path.to_path_buf(),
        format: format.name().to_string(),
    };
    if options.sheet.is_some() && !wrapper && format != Format::Xlsx {
        return Err(not("--sheet", "Excel workbooks (.xlsx)"));
    }
    if options.table.is_some() && !wrapper && format != Format::Sqlite {
        return Err(not("--table", "SQLite databases (.sqlite, .db)"));
    }
    if options.typed && !wrapper && format != Format::Delimited {
        return Err(not(
            "--typed",
            "delimited text (typed sources keep their types anyway)",
        ));
    }
    if options.file.is_some() && outermost && format != Format::Zip {
        return Err(not("--file", "zip archives, folders and Kaggle datasets"));
    }
    Ok(())
}

/// Delimited text must not be empty or binary (UTF-16/32 with a byte-order
/// mark is text: the zygote reads it).
fn check_text(path: &Path) -> Result<(), ImportError> {
    let mut head = vec![0u8; 8192];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io("reading", path))?;
    let head = &head[..n];
    if head.iter().all(u8::is_ascii_whitespace) {
        return Err(ImportError::Empty {
            path: path.to_path_buf(),
        });
    }
    let bom = head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]);
    if head.contains(&0) && !bom {
        return Err(ImportError::Binary {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn safe_name(name: &str) -> String {
    let base = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.trim_matches('.').is_empty() {
        "member.csv".to_string()
    } else {
        cleaned
    }
}

fn copy_capped(
    reader: impl Read,
    target: &Path,
    source: &Path,
    format: &'static str,
) -> Result<(), ImportError> {
    let mut out = fs::File::create(target).map_err(io("creating", target))?;
    let mut limited = reader.take(MAX_EXPANDED_BYTES + 1);
    let n = std::io::copy(&mut limited, &mut out).map_err(|e| ImportError::Corrupt {
        path: source.to_path_buf(),
        format,
        reason: e.to_string(),
    })?;
    out.flush().map_err(io("writing", target))?;
    if n > MAX_EXPANDED_BYTES {
        return Err(ImportError::TooLarge {
            path: source.to_path_buf(),
        });
    }
    Ok(())
}

/// Files a user would not mean: macOS resource forks, hidden files.
fn ignorable(name: &str) -> bool {
    name.split('/')
        .any(|part| part == "__MACOSX" || part.starts_with('.'))
}

/// Pick the member named by `--file` (full path or base name), else the one
/// tabular member.
fn choose<'a>(
    container: &Path,
    wanted: Option<&str>,
    names: impl Iterator<Item = &'a str>,
) -> Result<String, ImportError> {
    let mut all = Vec::new();
    let mut tabular = Vec::new();
    for name in names {
        if ignorable(name) {
            continue;
        }
        all.push(name.to_string());
        if Format::of(Path::new(name)).is_some_and(|f| f != Format::Zip) {
            tabular.push(name.to_string());
        }
    }
    if let Some(wanted) = wanted {
        let base = |n: &str| n.rsplit('/').next().unwrap_or(n).to_string();
        let hits: Vec<&String> = all
            .iter()
            .filter(|n| n.as_str() == wanted || base(n) == wanted)
            .collect();
        return match hits.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(ImportError::NoMember {
                path: container.to_path_buf(),
                file: wanted.to_string(),
                found: tabular,
            }),
        };
    }
    match tabular.len() {
        1 => Ok(tabular.remove(0)),
        0 => Err(ImportError::NoTabular {
            path: container.to_path_buf(),
            found: all,
        }),
        _ => Err(ImportError::ManyTabular {
            path: container.to_path_buf(),
            found: tabular,
        }),
    }
}

fn extract_from_zip(
    path: &Path,
    wanted: Option<&str>,
    scratch: &Path,
) -> Result<(String, PathBuf), ImportError> {
    let corrupt = |reason: String| ImportError::Corrupt {
        path: path.to_path_buf(),
        format: "zip",
        reason,
    };
    let file = fs::File::open(path).map_err(io("opening", path))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| corrupt(e.to_string()))?;
    let names: Vec<String> = (0..archive.len())
        .filter_map(|i| {
            let entry = archive.by_index_raw(i).ok()?;
            (!entry.is_dir()).then(|| entry.name().to_string())
        })
        .collect();
    let name = choose(path, wanted, names.iter().map(String::as_str))?;
    let entry = archive.by_name(&name).map_err(|e| corrupt(e.to_string()))?;
    fs::create_dir_all(scratch).map_err(io("creating", scratch))?;
    let target = scratch.join(safe_name(&name));
    copy_capped(entry, &target, path, "zip")?;
    Ok((name, target))
}

/// The tabular file of a folder (a Kaggle download, an unpacked archive):
/// its files, four levels deep at most, as paths relative to it.
fn choose_in_folder(dir: &Path, wanted: Option<&str>) -> Result<(String, PathBuf), ImportError> {
    let mut names = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io("reading", &d))? {
            let entry = entry.map_err(io("reading", &d))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(io("reading", &path))?;
            if ty.is_dir() && depth < 4 {
                stack.push((path, depth + 1));
            } else if ty.is_file() {
                if let Ok(rel) = path.strip_prefix(dir) {
                    names.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    names.sort();
    let name = choose(dir, wanted, names.iter().map(String::as_str))?;
    let path = dir.join(&name);
    Ok((name, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        assert_eq!(Format::of(Path::new("a.CSV")), Some(Format::Delimited));
        assert_eq!(Format::of(Path::new("a.csv.gz")), Some(Format::Gzip));
        assert_eq!(Format::of(Path::new("x/y.xlsx")), Some(Format::Xlsx));
        assert_eq!(Format::of(Path::new("a.db")), Some(Format::Sqlite));
        assert_eq!(Format::of(Path::new("a.xls")), None);
        assert_eq!(Format::of(Path::new("README")), None);
    }

    #[test]
    fn one_tabular_member_or_a_choice() {
        let p = Path::new("a.zip");
        let names = ["README.md", "data/x.csv", "__MACOSX/data/._x.csv"];
        assert_eq!(
            choose(p, None, names.into_iter()).expect("one"),
            "data/x.csv"
        );
        let two = ["x.csv", "y.csv"];
        let err = choose(p, None, two.into_iter()).expect_err("two");
        assert!(err.to_string().contains("--file NAME"), "{err}");
        assert_eq!(
            choose(p, Some("y.csv"), two.into_iter()).expect("named"),
            "y.csv"
        );
        assert!(matches!(
            choose(p, None, ["README.md"].into_iter()),
            Err(ImportError::NoTabular { .. })
        ));
    }
}
