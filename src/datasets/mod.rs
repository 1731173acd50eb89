//! The dataset registry: a directory with one folder per dataset,
//! `<slug>/data.csv` (or `<slug>/data.sqlite`, the typed store of an
//! imported workbook, Parquet, JSON or SQLite file: see [`import`]) plus
//! `<slug>/meta.json` (name, description, source, license, the shape once
//! known, and how it was imported).
//!
//! This module reads and writes the registry; whether pandas can read a file
//! is decided by the caller (it takes a jail), which hands the verdict to
//! [`Registry::add`]. [`embedded`] is the registry compiled into the binary;
//! [`kaggle`] fetches datasets from Kaggle.

pub mod embedded;
pub mod import;
pub mod kaggle;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The CSV of a dataset inside its folder.
pub const DATA_FILE: &str = "data.csv";
/// The data files a dataset folder may hold, in the order they are looked for.
pub const DATA_FILES: &[&str] = &[DATA_FILE, import::TYPED_FILE];

/// The data file of a dataset folder: `data.csv`, else `data.sqlite`, else
/// (for the error message) `data.csv`.
pub fn data_file(dir: &Path) -> PathBuf {
    DATA_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join(DATA_FILE))
}
/// Its description.
pub const META_FILE: &str = "meta.json";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "dataset registry {path} does not exist or is not a directory (point --datasets at one)"
    )]
    NoRegistry { path: PathBuf },
    #[error("no dataset `{slug}` in {registry} (see `csv-agent datasets list`)")]
    Unknown { slug: String, registry: PathBuf },
    #[error("dataset `{slug}` already exists in {registry}; choose another --slug")]
    Exists { slug: String, registry: PathBuf },
    #[error("`{slug}` is not a valid slug: use lowercase letters, digits and '-' (at most 64), e.g. --slug {}", slugify(slug))]
    BadSlug { slug: String },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: invalid meta.json: {source}")]
    BadMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Import(#[from] import::ImportError),
    #[error(transparent)]
    Kaggle(#[from] kaggle::KaggleError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError {
    let path = path.to_path_buf();
    move |source| DatasetError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub license: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<u64>,
    /// The version of the source (a Kaggle dataset's version number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What `datasets add` read and how it stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<import::ImportRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub slug: String,
    pub dir: PathBuf,
    /// The data file: `data.csv`, or `data.sqlite` for a typed import.
    pub csv: PathBuf,
    pub meta: DatasetMeta,
}

/// What the caller learned by loading a candidate file with pandas.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadCheck {
    Readable { rows: u64, columns: u64 },
    Unreadable { reason: String },
}

/// A folder of the registry: its slug and the dataset, or why it is unusable.
pub type RegistryEntry = (String, Result<Dataset, DatasetError>);

#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A slug from a file or folder name: lowercase ASCII letters and digits,
/// every run of anything else (`_`, spaces, dots) one '-', trimmed, at most
/// 64 characters (`owner_dataset-name` → `owner-dataset-name`).
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-').to_string();
    let slug: String = slug.chars().take(64).collect();
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "dataset".to_string()
    } else {
        slug
    }
}

fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 64
        && !slug.starts_with('-')
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Registry {
    pub fn open(root: impl Into<PathBuf>) -> Result<Registry, DatasetError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(DatasetError::NoRegistry { path: root });
        }
        Ok(Registry { root })
    }

    /// The registry at `root`, created (with its parents) when missing.
    pub fn create(root: impl Into<PathBuf>) -> Result<Registry, DatasetError> {
        let root = root.into();
        if !root.is_dir() {
            fs::create_dir_all(&root).map_err(io("creating the registry", &root))?;
        }
        Registry::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every dataset (a folder with a `data.csv`), sorted by slug.
    pub fn list(&self) -> Result<Vec<Dataset>, DatasetError> {
        self.entries()?.into_iter().map(|(_, d)| d).collect()
    }

    /// Like [`Registry::list`], but a folder whose description cannot be
    /// read is returned with its error instead of failing the whole listing
    /// (a run fails that dataset alone).
    pub fn entries(&self) -> Result<Vec<RegistryEntry>, DatasetError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io("reading", &self.root))? {
            let entry = entry.map_err(io("reading", &self.root))?;
            let slug = entry.file_name().to_string_lossy().into_owned();
            if !valid_slug(&slug) || !data_file(&entry.path()).is_file() {
                continue;
            }
            let dataset = self.load(&slug);
            out.push((slug, dataset));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn get(&self, slug: &str) -> Result<Dataset, DatasetError> {
        if !valid_slug(slug) || !data_file(&self.root.join(slug)).is_file() {
            return Err(DatasetError::Unknown {
                slug: slug.to_string(),
                registry: self.root.clone(),
            });
        }
        self.load(slug)
    }

    fn load(&self, slug: &str) -> Result<Dataset, DatasetError> {
        let dir = self.root.join(slug);
        let meta_path = dir.join(META_FILE);
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| DatasetError::BadMeta {
                    path: meta_path.clone(),
                    source,
                })?
            }
            // A folder with only a CSV is still a dataset; its slug names it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DatasetMeta {
                name: slug.to_string(),
                ..DatasetMeta::default()
            },
            Err(e) => return Err(io("reading", &meta_path)(e)),
        };
        Ok(Dataset {
            slug: slug.to_string(),
            csv: data_file(&dir),
            dir,
            meta,
        })
    }

    /// The slug `add` would use for `file` (and `--slug`).
    pub fn slug_for(file: &Path, slug: Option<&str>) -> Result<String, DatasetError> {
        let slug = match slug {
            Some(s) => s.to_string(),
            None => slugify(
                &file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        };
        if valid_slug(&slug) {
            Ok(slug)
        } else {
            Err(DatasetError::BadSlug { slug })
        }
    }

    /// A slug for `name` that no folder of the registry has yet: the
    /// slugified name, else with `-2`, `-3`, … appended.
    pub fn unique_slug(&self, name: &str) -> String {
        let base = slugify(name);
        if !self.root.join(&base).exists() {
            return base;
        }
        (2..)
            .map(|n| {
                let suffix = format!("-{n}");
                let stem: String = base.chars().take(64 - suffix.len()).collect();
                format!("{}{suffix}", stem.trim_end_matches('-'))
            })
            .find(|s| !self.root.join(s).exists())
            .unwrap_or(base)
    }

    /// An empty staging folder for `slug` (not a dataset: its name starts
    /// with a dot), for an importer to write the data file into.
    pub fn staging_dir(&self, slug: &str) -> Result<PathBuf, DatasetError> {
        self.check_new_slug(slug)?;
        self.new_staging(slug)
    }

    /// `slug` is a valid name that no dataset of the registry has.
    fn check_new_slug(&self, slug: &str) -> Result<(), DatasetError> {
        if !valid_slug(slug) {
            return Err(DatasetError::BadSlug {
                slug: slug.to_string(),
            });
        }
        if self.root.join(slug).exists() {
            return Err(DatasetError::Exists {
                slug: slug.to_string(),
                registry: self.root.clone(),
            });
        }
        Ok(())
    }

    /// A fresh staging folder for `slug`, readable by the jail user (jail
    /// root is uid 65534 when the supervisor is root).
    fn new_staging(&self, slug: &str) -> Result<PathBuf, DatasetError> {
        let staging = self
            .root
            .join(format!(".adding-{slug}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
        set_mode(&staging, 0o755)?;
        Ok(staging)
    }

    /// Import `source` (any format [`import`] reads) into a staging folder,
    /// for the caller to check with pandas before [`Registry::add`]
    /// publishes it. Nothing is left behind when it fails.
    pub fn stage_import(
        &self,
        source: &Path,
        slug: &str,
        options: &import::ImportOptions,
    ) -> Result<(PathBuf, import::ImportRecord), DatasetError> {
        let staging = self.staging_dir(slug)?;
        match import::import(source, options, &staging) {
            Ok((file, record)) => {
                // The jail user must be able to read it.
                set_mode(&file, 0o644)?;
                Ok((file, record))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e.into())
            }
        }
    }

    /// Copy `file` into a staging folder of the registry, for the caller to
    /// check with pandas before [`Registry::add`] publishes it.
    pub fn stage(&self, file: &Path, slug: &str) -> Result<PathBuf, DatasetError> {
        self.check_new_slug(slug)?;
        let meta = fs::metadata(file).map_err(|e| DatasetError::BadFile {
            path: file.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        })?;
        if !meta.is_file() {
            return Err(DatasetError::BadFile {
                path: file.to_path_buf(),
                reason: "is not a regular file".to_string(),
            });
        }
        if meta.len() == 0 {
            return Err(DatasetError::BadFile {
                path: file.to_path_buf(),
                reason: "is empty".to_string(),
            });
        }
        let mut head = vec![0u8; 8192];
        let n = fs::File::open(file)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .map_err(io("reading", file))?;
        if head[..n].contains(&0) {
            return Err(DatasetError::BadFile {
                path: file.to_path_buf(),
                reason: "contains NUL bytes: a binary file, not a CSV".to_string(),
            });
        }
        let staging = self.new_staging(slug)?;
        let csv = staging.join(DATA_FILE);
        fs::copy(file, &csv).map_err(io("copying into", &csv))?;
        // The jail user must be able to read it.
        set_mode(&csv, 0o644)?;
        Ok(csv)
    }

    /// Publish a staged file after the pandas check: write meta.json and move
    /// the folder into place; an unreadable file is removed with the reason.
    pub fn add(
        &self,
        origin: &Path,
        staged_csv: &Path,
        slug: &str,
        meta: DatasetMeta,
        check: LoadCheck,
    ) -> Result<Dataset, DatasetError> {
        let staging = staged_csv
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let meta = match check {
            LoadCheck::Readable { rows, columns } => DatasetMeta {
                rows: Some(rows),
                columns: Some(columns),
                ..meta
            },
            LoadCheck::Unreadable { reason } => {
                let _ = fs::remove_dir_all(&staging);
                return Err(DatasetError::BadFile {
                    path: origin.to_path_buf(),
                    reason: format!("pandas cannot read it: {reason}"),
                });
            }
        };
        let text = serde_json::to_string_pretty(&meta).map_err(|source| DatasetError::BadMeta {
            path: staging.join(META_FILE),
            source,
        })?;
        let meta_path = staging.join(META_FILE);
        fs::write(&meta_path, format!("{text}\n")).map_err(io("writing", &meta_path))?;
        let target = self.root.join(slug);
        if target.exists() {
            let _ = fs::remove_dir_all(&staging);
            return Err(DatasetError::Exists {
                slug: slug.to_string(),
                registry: self.root.clone(),
            });
        }
        fs::rename(&staging, &target).map_err(io("moving into place", &target))?;
        self.get(slug)
    }

    /// Drop a staging folder (the check could not run).
    pub fn discard(&self, staged_csv: &Path) {
        if let Some(dir) = staged_csv.parent() {
            if dir.starts_with(&self.root) && dir != self.root {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), DatasetError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// The size of a CSV in bytes (0 when unreadable: the sandbox reports why),
/// from which the worker limits are derived (`Limits::for_dataset`).
pub fn csv_bytes(csv: &std::path::Path) -> u64 {
    std::fs::metadata(csv).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_with_dashes() {
        assert_eq!(slugify("Sales Data (2024).csv"), "sales-data-2024-csv");
        assert_eq!(slugify("__x__"), "x");
        assert_eq!(slugify("ü é"), "dataset");
        assert_eq!(slugify("owner_dataset-name"), "owner-dataset-name");
        assert_eq!(slugify("  My Sales_2024.xlsx "), "my-sales-2024-xlsx");
        assert!(valid_slug("penguins"));
        assert!(!valid_slug("Penguins"));
        assert!(!valid_slug("../etc"));
        assert!(!valid_slug(".adding-x"));
    }

    #[test]
    fn list_get_stage_and_add() {
        let root = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(root.path()).expect("open");
        assert!(reg.list().expect("list").is_empty());
        let src = root.path().join("My File.csv");
        fs::write(&src, "a,b\n1,2\n").expect("write");
        let slug = Registry::slug_for(&src, None).expect("slug");
        assert_eq!(slug, "my-file");
        let staged = reg.stage(&src, &slug).expect("stage");
        // Staging folders are not datasets.
        assert!(reg.list().expect("list").is_empty());
        let meta = DatasetMeta {
            name: "My file".into(),
            ..Default::default()
        };
        let ds = reg
            .add(
                &src,
                &staged,
                &slug,
                meta,
                LoadCheck::Readable {
                    rows: 1,
                    columns: 2,
                },
            )
            .expect("add");
        assert_eq!(ds.meta.rows, Some(1));
        assert_eq!(reg.list().expect("list").len(), 1);
        assert!(matches!(
            reg.stage(&src, &slug),
            Err(DatasetError::Exists { .. })
        ));
        assert!(matches!(reg.get("nope"), Err(DatasetError::Unknown { .. })));
        assert_eq!(reg.unique_slug("My File"), "my-file-2");
        assert_eq!(reg.unique_slug("other"), "other");
    }

    #[test]
    fn an_unreadable_file_is_rejected_and_nothing_is_left() {
        let root = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(root.path()).expect("open");
        let src = root.path().join("bad.csv");
        fs::write(&src, "\"unclosed").expect("write");
        let staged = reg.stage(&src, "bad").expect("stage");
        let err = reg
            .add(
                &src,
                &staged,
                "bad",
                DatasetMeta::default(),
                LoadCheck::Unreadable {
                    reason: "no columns to parse".into(),
                },
            )
            .expect_err("rejected");
        assert!(err.to_string().contains("no columns to parse"));
        assert!(!root.path().join("bad").exists());
        let leftovers: Vec<_> = fs::read_dir(root.path())
            .expect("read")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".adding"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
