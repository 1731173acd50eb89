//! Resume: which questions need no more work, and the repair of a run
//! killed between writing an episode and marking it in the manifest.

use std::collections::HashSet;
use std::path::Path;

use super::Shared;
use crate::schema::Episode;
use crate::store::{self, Manifest, QuestionRow, QuestionStatus, Stage, StoreError, EPISODES_FILE};

/// Episodes in the file whose manifest mark was lost (killed between the two
/// writes) are marked done from the episode itself.
pub(super) fn reconcile(
    out: &Path,
    manifest: &Manifest,
    written: &HashSet<String>,
) -> Result<(), StoreError> {
    let missing: Vec<&String> = written
        .iter()
        .filter(|id| {
            manifest
                .question(id)
                .ok()
                .flatten()
                .is_none_or(|r| !r.status.is_done())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let episodes: Vec<Episode> = store::read_jsonl(&out.join(EPISODES_FILE))?;
    for e in episodes.iter().filter(|e| missing.contains(&&e.episode_id)) {
        manifest.record_question(&episode_row(e))?;
    }
    Ok(())
}

/// The manifest row an episode implies.
pub fn episode_row(e: &Episode) -> QuestionRow {
    QuestionRow {
        fingerprint: e.episode_id.clone(),
        dataset: e.dataset.clone(),
        question_id: e.question.id.clone(),
        template: e.question.template_name.clone(),
        difficulty: e.question.difficulty.as_str().to_string(),
        status: QuestionStatus::of_episode(e.verified),
        stage: Stage::Teacher,
        reason: e.reason.clone(),
        episode_id: Some(e.episode_id.clone()),
        elapsed: e.timing.total_elapsed,
    }
}

pub(super) fn is_done(shared: &Shared, fingerprint: &str) -> bool {
    shared
        .written
        .lock()
        .map(|w| w.contains(fingerprint))
        .unwrap_or(false)
        || shared
            .files
            .manifest
            .question(fingerprint)
            .ok()
            .flatten()
            .is_some_and(|r| r.status.is_done())
}
