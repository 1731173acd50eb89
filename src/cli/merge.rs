//! `csv-agent merge DIR… --out DIR` (the shards of one run joined into one
//! output) and `csv-agent merge --check DIR…` (what a shard set still
//! lacks, nothing written).
//!
//! The directories must be parts of one run (`shards::examine`: same
//! identity and shard count, each shard once); a set with a shard missing
//! or unfinished is refused unless `--partial`. Merging is idempotent: the
//! same inputs into the same `--out` give the same files.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use crate::pipeline::{self, episode_row, RunSummary};
use crate::schema::{Episode, Question};
use crate::shards::{self, RunRecord, RunState, ShardSet};
use crate::store::{
    self, DatasetRow, DatasetStatus, Manifest, OutputLock, QuestionStatus, EPISODES_FILE,
    MANIFEST_FILE, QUESTIONS_DIR, SUMMARY_FILE,
};

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Output directories of the shard runs (every shard of one run).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where the merged output goes (a new directory, or an earlier merge
    /// of the same shards, which is rewritten identically).
    #[arg(long, required_unless_present = "check")]
    out: Option<PathBuf>,
    /// Only list missing, incomplete and failed shards; write nothing
    /// (exit 0 complete, 1 something to repair, 2 not one run).
    #[arg(long, conflicts_with_all = ["out", "partial"])]
    check: bool,
    /// Merge even when shards are missing or unfinished (exit 1).
    #[arg(long)]
    partial: bool,
}

pub fn run(args: MergeArgs) -> Result<i32> {
    match &args.out {
        Some(out) if !args.check => merge(&args.dirs, out, args.partial),
        _ => check(&args.dirs),
    }
}

fn summary_file(dir: &Path) -> Option<RunSummary> {
    std::fs::read(dir.join(SUMMARY_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The lines that say what is missing or unfinished (empty: complete).
fn gaps(set: &ShardSet) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(n) = set.count {
        for i in &set.missing {
            lines.push(format!("shard {i}/{n}: missing (no directory holds it)"));
        }
    }
    for dir in &set.absent {
        lines.push(format!(
            "{}: missing (no such directory: the task never started)",
            dir.display()
        ));
    }
    for p in &set.parts {
        if p.record.state == RunState::Running {
            lines.push(format!(
                "{} ({}): incomplete: started and never finished; rerun the same command",
                p.shard_label(),
                p.dir.display()
            ));
        }
    }
    lines
}

fn check(dirs: &[PathBuf]) -> Result<i32> {
    let set = shards::examine(dirs, true)?;
    let id = &set.identity;
    match set.count {
        Some(n) => println!(
            "one run in {n} shards ({} of them here): teacher {}, catalog {}, {} dataset(s)",
            set.parts.len(),
            id.teacher,
            id.catalog,
            id.datasets.len()
        ),
        None => println!(
            "whole runs (not sharded), {} here: teacher {}, catalog {}",
            set.parts.len(),
            id.teacher,
            id.catalog
        ),
    }
    let mut parts: Vec<_> = set.parts.iter().collect();
    parts.sort_by_key(|p| p.record.shard.map(|s| s.index));
    for p in &parts {
        let state = match p.problem() {
            None => "ok".to_string(),
            Some(why) => why,
        };
        let counts = summary_file(&p.dir)
            .filter(|_| p.record.state == RunState::Finished)
            .map(|s| {
                format!(
                    ", {} episodes ({} verified), {:.1} s",
                    s.episodes, s.verified, s.elapsed
                )
            })
            .unwrap_or_default();
        println!(
            "  {:<12} {}  {state}{counts}",
            p.shard_label(),
            p.dir.display()
        );
    }
    let gaps = gaps(&set);
    for line in &gaps {
        if line.contains("missing") {
            println!("  {line}");
        }
    }
    let failed = set.problems().len();
    if gaps.is_empty() && failed == 0 {
        println!("complete: merge with `csv-agent merge {} --out DIR`", {
            let v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            v.join(" ")
        });
        Ok(super::EXIT_OK)
    } else {
        println!(
            "not complete: {} missing, {} not finished cleanly",
            set.missing.len() + set.absent.len(),
            failed
        );
        Ok(super::EXIT_FAILED)
    }
}

/// The questions files of a run directory: (file name, questions).
fn questions_in(dir: &Path) -> Result<Vec<(String, Vec<Question>)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join(QUESTIONS_DIR)) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "jsonl") {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((name, store::read_jsonl::<Question>(&path)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn merge(dirs: &[PathBuf], out: &Path, partial: bool) -> Result<i32> {
    for d in dirs {
        if d.canonicalize().ok() == out.canonicalize().ok() {
            bail!(
                "--out {} is also an input; merge into a new directory",
                out.display()
            );
        }
    }
    let set = shards::examine(dirs, false)?;
    let gaps = gaps(&set);
    if !gaps.is_empty() && !partial {
        bail!(
            "the shard set is not complete:\n  {}\nrepair it (rerun each named shard with the same command), or pass --partial to merge what is there",
            gaps.join("\n  ")
        );
    }
    let inputs: Vec<&Path> = set.parts.iter().map(|p| p.dir.as_path()).collect();
    // Every shard's episodes are of its run, before anything is written.
    let mut per_shard: Vec<Vec<Episode>> = Vec::new();
    for part in &set.parts {
        let path = part.dir.join(EPISODES_FILE);
        let mine: Vec<Episode> = if path.is_file() {
            store::read_jsonl(&path)?
        } else {
            Vec::new()
        };
        let ids: HashSet<String> = questions_in(&part.dir)?
            .into_iter()
            .flat_map(|(_, qs)| qs.into_iter().map(|q| q.id))
            .collect();
        part.check_episodes(&mine, &ids)?;
        per_shard.push(mine);
    }
    let _lock = OutputLock::acquire(out)?;
    store::clear_outputs(out)?;
    // Episodes: first copy of each id wins.
    let mut seen = HashSet::new();
    let mut episodes: Vec<Episode> = Vec::new();
    let mut duplicates = 0;
    for mine in per_shard {
        for e in mine {
            if seen.insert(e.episode_id.clone()) {
                episodes.push(e);
            } else {
                duplicates += 1;
            }
        }
    }
    episodes.sort_by(|a, b| {
        (&a.dataset, &a.question.id, &a.episode_id).cmp(&(
            &b.dataset,
            &b.question.id,
            &b.episode_id,
        ))
    });
    store::write_jsonl_atomic(&out.join(EPISODES_FILE), &episodes)?;
    // Questions, per dataset file.
    let mut questions: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    for d in &inputs {
        for (name, qs) in questions_in(d)? {
            questions.entry(name).or_default().extend(qs);
        }
    }
    let mut question_counts: BTreeMap<String, u64> = BTreeMap::new();
    for (name, mut qs) in questions {
        let mut ids = HashSet::new();
        qs.retain(|q| ids.insert(q.id.clone()));
        qs.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(q) = qs.first() {
            question_counts.insert(q.dataset.clone(), qs.len() as u64);
        }
        store::write_jsonl_atomic(&out.join(QUESTIONS_DIR).join(name), &qs)?;
    }
    // Manifest: episodes are the truth; failures and dataset rows come from
    // the shards' manifests.
    let manifest = Manifest::open(&out.join(MANIFEST_FILE))?;
    for e in &episodes {
        manifest.record_question(&episode_row(e))?;
    }
    let mut datasets: BTreeMap<String, DatasetRow> = BTreeMap::new();
    for d in &inputs {
        let path = d.join(MANIFEST_FILE);
        if !path.is_file() {
            continue;
        }
        let shard = Manifest::open(&path)?;
        for q in shard.questions()? {
            if q.status == QuestionStatus::Failed && manifest.question(&q.fingerprint)?.is_none() {
                manifest.record_question(&q)?;
            }
        }
        for row in shard.datasets()? {
            let merged = datasets
                .entry(row.slug.clone())
                .or_insert_with(|| DatasetRow {
                    status: DatasetStatus::Done,
                    n_questions: 0,
                    elapsed: 0.0,
                    ..row.clone()
                });
            if row.status != DatasetStatus::Done {
                merged.status = row.status;
                merged.reason = row.reason.clone().or(merged.reason.take());
            }
            merged.elapsed += row.elapsed;
        }
    }
    for (slug, mut row) in datasets {
        row.n_questions = question_counts.get(&slug).copied().unwrap_or(0);
        row.questions_key = None;
        manifest.record_dataset(&row)?;
    }
    drop(manifest);
    let reopened = Manifest::open(&out.join(MANIFEST_FILE))?;
    let counted = super::results::summary_of(&reopened, out)?;
    let shard_summaries: Vec<RunSummary> = inputs.iter().filter_map(|d| summary_file(d)).collect();
    let summary = shards::add_up(counted, &shard_summaries);
    pipeline::write_summary(out, &summary)?;
    let complete = gaps.is_empty();
    let exit = if complete {
        summary.exit_code()
    } else {
        super::EXIT_FAILED
    };
    RunRecord {
        format: shards::FORMAT,
        identity: set.identity.clone(),
        shard: None,
        state: RunState::Finished,
        exit_code: Some(exit),
        merged_shards: Some(set.parts.len() as u32),
    }
    .write(out)?;
    super::run::print_summary(&summary, false);
    for line in &gaps {
        println!("NOT MERGED: {line}");
    }
    println!(
        "\nmerged {} shard directories: {} episodes ({} verified, {} duplicates dropped), {:.1} s of shard time, into {}",
        inputs.len(),
        episodes.len(),
        summary.verified,
        duplicates,
        summary.elapsed,
        out.display()
    );
    Ok(exit)
}
