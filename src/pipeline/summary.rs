//! What a run reports: per dataset and for the whole run, as printed in
//! the table and written to `summary.json`, always derived from the
//! manifest (so a resumed or merged run reports what is on disk).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Incidents, Shard};
use crate::schema::Usage;
use crate::store::{
    self, DatasetRow, DatasetStatus, Manifest, QuestionRow, QuestionStatus, Stage, StoreError,
    SUMMARY_FILE,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub question_id: String,
    pub template: Option<String>,
    pub stage: Stage,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub dataset: String,
    pub status: DatasetStatus,
    /// Why the whole dataset failed.
    pub reason: Option<String>,
    pub questions: u64,
    pub verified: u64,
    /// Episodes whose programs disagreed (written, not verified).
    pub disagreements: u64,
    pub failures: Vec<Failure>,
    /// Bindings whose reference answer was degenerate (NaN, infinite,
    /// undefined), by "template: reason": neither episodes nor failures.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ineligible: std::collections::BTreeMap<String, u64>,
    /// Seconds spent on this dataset by the runs that produced it.
    pub elapsed: f64,
    /// What the model cost for this dataset in this run (LLM work only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usage: Option<Usage>,
    /// Restarts, workers lost, OOM kills, timeouts and retries in this run.
    #[serde(default)]
    pub incidents: Incidents,
    /// Composed questions: chains sampled, candidates, kept, refusals by
    /// guard (when the run composed questions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<crate::questions::compose::ComposeReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub teacher: String,
    pub shard: Option<Shard>,
    pub datasets: Vec<DatasetSummary>,
    pub episodes: u64,
    pub verified: u64,
    pub elapsed: f64,
    /// What the model cost in this run, all datasets together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usage: Option<Usage>,
    /// Set when the run stopped taking questions because the model server
    /// failed; the questions not done are left for the next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The datasets' incidents of this run, summed.
    #[serde(default)]
    pub incidents: Incidents,
}

impl RunSummary {
    /// 0 all good, 1 some dataset or question failed, or the run stopped early.
    pub fn exit_code(&self) -> i32 {
        let failed = self
            .datasets
            .iter()
            .any(|d| d.status != DatasetStatus::Done || !d.failures.is_empty());
        i32::from(failed || self.stopped.is_some())
    }
}

pub fn write_summary(out: &Path, summary: &RunSummary) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(summary).unwrap_or_default();
    store::write_atomic(&out.join(SUMMARY_FILE), &bytes)
}

/// The summary of one dataset as the manifest has it.
pub fn dataset_summary(manifest: &Manifest, row: &DatasetRow) -> DatasetSummary {
    let rows: Vec<QuestionRow> = manifest
        .questions()
        .unwrap_or_default()
        .into_iter()
        .filter(|q| q.dataset == row.slug)
        .collect();
    let count = |s: QuestionStatus| rows.iter().filter(|q| q.status == s).count() as u64;
    DatasetSummary {
        dataset: row.slug.clone(),
        status: row.status,
        reason: row.reason.clone(),
        questions: row.n_questions.max(rows.len() as u64),
        verified: count(QuestionStatus::Verified),
        disagreements: count(QuestionStatus::Unverified),
        failures: rows
            .iter()
            .filter(|q| q.status == QuestionStatus::Failed)
            .map(|q| Failure {
                question_id: q.question_id.clone(),
                template: q.template.clone(),
                stage: q.stage,
                reason: q.reason.clone().unwrap_or_default(),
            })
            .collect(),
        ineligible: rows
            .iter()
            .filter(|q| q.status == QuestionStatus::Ineligible)
            .fold(Default::default(), |mut by, q| {
                let key = format!(
                    "{}: {}",
                    q.template.as_deref().unwrap_or("-"),
                    q.reason.as_deref().unwrap_or("")
                );
                *by.entry(key).or_insert(0) += 1;
                by
            }),
        elapsed: row.elapsed,
        llm_usage: None,
        incidents: Incidents::default(),
        compose: None,
    }
}
