//! Running the guards: candidates are screened in batches, one fresh
//! worker and one cell per batch (the reference chain, the alternative and
//! every chain with one removable step left out, each in its own try), the
//! composer judges what comes back, and rounds continue until the cap is
//! reached or the grammar runs dry on this dataset. Ground truth and the
//! teachers run afterwards, on the survivors, exactly as for templates.

use futures::stream::{self, StreamExt};
use serde_json::Value as Json;

use super::{screening_cell, ComposeConfig, ComposeReport, Composer, Operator, Screened};
use crate::profile::DataProfile;
use crate::runner::Infra;
use crate::sandbox::CellStatus;
use crate::schema::Question;
use crate::serve::source::TaskSource;

/// Rounds of sampling and screening at most.
const MAX_ROUNDS: usize = 6;

/// Candidates per screening cell: small tables take many per worker,
/// large ones few (each candidate runs its chain 2 to 9 times).
fn batch_size(rows: u64) -> usize {
    match rows {
        0..=20_000 => 24,
        20_001..=200_000 => 6,
        _ => 2,
    }
}

/// The composed questions of one dataset (no ground truth yet) and the
/// report of what was sampled and refused.
pub async fn compose_questions(
    sandbox: &dyn TaskSource,
    ops: &[Operator],
    profile: &DataProfile,
    slug: &str,
    hash: &str,
    config: ComposeConfig,
    concurrency: usize,
) -> Result<(Vec<Question>, ComposeReport), Infra> {
    let mut composer = Composer::new(ops, profile, slug, hash, config.seed);
    let mut kept: Vec<Question> = Vec::new();
    let mut candidates = 0u64;
    for round in 0..MAX_ROUNDS {
        let need = config.max_questions.saturating_sub(kept.len());
        if need == 0 {
            break;
        }
        // Roughly half survive the guards on the shipped datasets; ask for
        // more in the first round, then for what is missing.
        let ask = if round == 0 {
            need * 2 + 8
        } else {
            need * 3 / 2 + 8
        };
        let batch = composer.sample(ask);
        if batch.is_empty() {
            break;
        }
        candidates += batch.len() as u64;
        let size = batch_size(profile.rows);
        let chunks: Vec<Vec<super::Candidate>> = batch.chunks(size).map(|c| c.to_vec()).collect();
        let screened: Vec<Result<Vec<(super::Candidate, Screened)>, Infra>> = stream::iter(chunks)
            .map(|chunk| async move {
                let rows = screen(sandbox, &chunk).await?;
                Ok(chunk.into_iter().zip(rows).collect())
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut all = Vec::new();
        for s in screened {
            all.extend(s?);
        }
        let judged = composer.judge(all);
        kept.extend(judged.into_iter().take(need));
    }
    let mut report = ComposeReport {
        sampled_chains: composer.sampled,
        candidates,
        kept: kept.len() as u64,
        refused: composer.refusals.clone(),
        ..ComposeReport::default()
    };
    for q in &kept {
        *report
            .difficulty
            .entry(q.difficulty.as_str().to_string())
            .or_default() += 1;
        *report
            .categories
            .entry(q.category.clone().unwrap_or_default())
            .or_default() += 1;
    }
    Ok((kept, report))
}

/// One screening cell in a fresh worker: a row per candidate, or empty
/// rows (refused as "screening cell failed") when the cell itself failed.
async fn screen(
    sandbox: &dyn TaskSource,
    chunk: &[super::Candidate],
) -> Result<Vec<Screened>, Infra> {
    let failed = || vec![Screened::default(); chunk.len()];
    let mut task = sandbox.task();
    if let Err(e) = task.ready().await {
        tracing::warn!("no worker for screening: {e}");
        Infra::classify("screening", e)?;
        return Ok(failed());
    }
    let cell = match task.run_cell(&screening_cell(chunk)).await {
        Ok(cell) => cell,
        Err(e) => {
            tracing::warn!("screening cell: {e}");
            Infra::classify("screening", e)?;
            return Ok(failed());
        }
    };
    if cell.status != CellStatus::Ok {
        tracing::warn!(
            "a screening cell failed ({}): {}",
            cell.status.as_str(),
            crate::runner::error_summary(&cell)
        );
        return Ok(failed());
    }
    // submit() records {"value", "hash", "meta"}.
    let Some(Json::Array(rows)) = cell
        .submitted
        .as_ref()
        .and_then(|s| s.get("value"))
        .cloned()
    else {
        tracing::warn!(
            "a screening cell submitted no list: {:?}",
            cell.submitted
                .as_ref()
                .map(|v| v.to_string().chars().take(300).collect::<String>())
        );
        return Ok(failed());
    };
    if rows.len() != chunk.len() {
        tracing::warn!(
            "a screening cell submitted {} rows for {}",
            rows.len(),
            chunk.len()
        );
        return Ok(failed());
    }
    Ok(rows.iter().map(Screened::from_row).collect())
}
