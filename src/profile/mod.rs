//! Profiling a dataset inside a worker: the data overview that prompts show
//! (shape, dtypes, head, describe, missing counts, top categories) and each
//! column's kind — numeric, categorical, datetime, text or id-like — with its
//! missing share and cardinality. Id-like columns (`id`, `*_id`, `uuid`,
//! `Unnamed: 0`, or ≥ 98 % distinct integers or strings) are never targets.
//! A date column carries the one explicit format it parses with (day first,
//! month first, ISO; values stripped of surrounding spaces), so questions
//! parse it the same way and say so.
//!
//! The computation is Python (`profile.py`, embedded) run as one cell, so it
//! sees exactly the frame every task sees.

use serde::{Deserialize, Serialize};

use crate::sandbox::{CellStatus, SandboxError};
use crate::serve::source::RunCell;

/// The profiling cell.
pub const PROFILE_PY: &str = include_str!("profile.py");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnKind {
    Numeric,
    Categorical,
    Datetime,
    Text,
    IdLike,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    pub dtype: String,
    pub kind: ColumnKind,
    pub missing: u64,
    pub missing_share: f64,
    pub cardinality: u64,
    /// Whether a question may use the column as its target.
    pub target_ok: bool,
    /// Smallest and largest value of a numeric column (None otherwise).
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Rows of the rarest level of a categorical column (None otherwise).
    #[serde(default)]
    pub min_level_count: Option<u64>,
    /// How a date column's text parses: strftime codes (`%d-%m-%Y`), applied
    /// to the values stripped of surrounding spaces. A text column is a date
    /// column only if one known format parses at least 90 % of its
    /// non-missing values; None for other columns (and for a column pandas
    /// already loaded as datetimes).
    #[serde(default)]
    pub date_format: Option<String>,
    /// The same format in words for question texts ("day first, DD-MM-YYYY").
    #[serde(default)]
    pub date_format_name: Option<String>,
    /// Share of the non-missing values that `date_format` parses.
    #[serde(default)]
    pub date_parsed_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataProfile {
    pub rows: u64,
    pub columns: u64,
    /// Human-readable overview for prompts.
    pub overview: String,
    pub column_profiles: Vec<ColumnProfile>,
}

impl DataProfile {
    pub fn columns_of(&self, kind: ColumnKind) -> impl Iterator<Item = &ColumnProfile> {
        self.column_profiles.iter().filter(move |c| c.kind == kind)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("profiling the dataset failed ({status}): {detail}")]
    Cell {
        status: &'static str,
        detail: String,
    },
    #[error("the profile printed by the worker is not valid: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Profile the dataset of `task`'s sandbox in one cell of the task.
pub async fn profile(task: &mut dyn RunCell) -> Result<DataProfile, ProfileError> {
    let cell = task.run_cell(PROFILE_PY).await?;
    if cell.status != CellStatus::Ok {
        let detail = cell
            .error
            .as_ref()
            .and_then(|e| e.get("traceback").or_else(|| e.get("message")))
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        return Err(ProfileError::Cell {
            status: cell.status.as_str(),
            detail,
        });
    }
    let line = cell.stdout.lines().last().unwrap_or("");
    Ok(serde_json::from_str(line)?)
}
