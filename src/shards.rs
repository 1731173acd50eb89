//! Shard sets: what makes the outputs of `run --shard I/N` parts of one run.
//!
//! Every run writes `<out>/run.json` (a [`RunRecord`]): the run's identity
//! (everything that decides which questions exist and what their episodes
//! are: csv-agent's version, the template catalog, the teacher and its
//! settings, the question sources, the cap, the worker memory choice, each
//! dataset's content hash), its shard, and its state — `running` when it
//! starts, `finished` with its exit status when it ends. A run killed on the
//! way stays `running`, which is how a shard set knows that a part is
//! incomplete.
//!
//! [`examine`] reads a list of output directories as one shard set: it
//! refuses directories of different runs (naming the odd one and the field
//! that differs), the same shard given twice, and reports which shards are
//! missing, incomplete or finished with failures. `csv-agent merge` and
//! `merge --check` are built on it; [`add_up`] sums the shards' summaries.
//!
//! This module never writes episodes, questions or manifests; it owns
//! `run.json` only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::{Incidents, RunSettings, RunSummary, Shard};
use crate::schema::Usage;
use crate::store::{self, StoreError};

/// The run record of an output directory.
pub const RUN_FILE: &str = "run.json";

/// Version of the `run.json` layout.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is not a run's output directory (no such directory)")]
    NoDirectory(PathBuf),
    #[error("{dir} has no {RUN_FILE}: it is not a run's output, or was written by a csv-agent that did not record runs yet; rerun that shard with the same command")]
    NoRecord { dir: PathBuf },
    #[error("{path} is not a run record: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("{dir} is from another run than {reference}: {differences}")]
    OtherRun {
        dir: PathBuf,
        reference: PathBuf,
        differences: String,
    },
    #[error("shard {index}/{count} is given twice: {first} and {second}")]
    SameShardTwice {
        index: u32,
        count: u32,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no directories given")]
    Empty,
    #[error("{dir}: episode {episode} is not of this run ({reason}); it is left from an earlier run in the same directory: rerun that shard with --fresh")]
    ForeignEpisode {
        dir: PathBuf,
        episode: String,
        reason: String,
    },
}

/// Everything that decides which questions a run has and what their
/// episodes are. Two outputs are parts of the same run when their
/// identities are equal (and their shard counts).
///
/// There is no seed: nothing in a run is drawn at random. Template
/// bindings and bootstrap draws are derived from hashes of the template and
/// the dataset (the catalog hash covers them); a model's sampling lives in
/// the teacher settings and the question sources, which are compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// csv-agent's version: another binary may template or verify differently.
    pub version: String,
    /// `run` or `questions` (questions files only).
    pub command: String,
    /// Hash of the template catalog (built-in plus `--templates DIR`).
    pub catalog: String,
    /// `program` or `llm`.
    pub teacher: String,
    /// The teacher's settings (model, sampling, prompt version, turns, …).
    pub teacher_settings: Value,
    /// Where questions come from (templates, a model and its settings).
    pub questions: Value,
    /// `--max-questions`.
    pub max_questions: Option<usize>,
    /// `--memory` as chosen (it decides which templates bind).
    pub memory: Option<u64>,
    /// Selected datasets: slug → content hash (sha256 of the CSV, 16 hex
    /// digits), `unusable` for a dataset that could not be described, or
    /// `unreadable (…)`.
    pub datasets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started and not (yet) finished: a killed run stays here.
    Running,
    /// Finished; `exit_code` says how.
    Finished,
}

/// `<out>/run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub identity: RunIdentity,
    pub shard: Option<Shard>,
    pub state: RunState,
    /// 0 all good, 1 some dataset or question failed (set when finished).
    pub exit_code: Option<i32>,
    /// For a merged output: how many shard directories it joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_shards: Option<u32>,
}

impl RunIdentity {
    /// The identity of the run `settings` describe. Reads every selected
    /// CSV once for its content hash.
    pub fn of(
        settings: &RunSettings,
        catalog_hash: &str,
        teacher: &str,
        teacher_settings: Value,
    ) -> RunIdentity {
        let mut datasets = BTreeMap::new();
        for d in &settings.datasets {
            // A dataset that cannot be read fails alone in the run (with its
            // reason); here it is only marked.
            let hash = crate::pipeline::dataset_hash(&d.csv)
                .unwrap_or_else(|e| format!("unreadable ({})", e.kind()));
            datasets.insert(d.slug.clone(), hash);
        }
        for (slug, _) in &settings.unusable {
            datasets.insert(slug.clone(), "unusable".into());
        }
        let sources = &settings.sources;
        let llm = sources.llm.as_ref().map(|l| {
            serde_json::json!({
                "model": l.chat.model(),
                "sampling": l.sampling,
                "prompt_version": crate::questions::llm::prompt_version(),
                "n_questions": l.config.n_questions,
                "mix": l.config.mix,
            })
        });
        RunIdentity {
            version: env!("CARGO_PKG_VERSION").to_string(),
            command: if settings.questions_only {
                "questions"
            } else {
                "run"
            }
            .to_string(),
            catalog: catalog_hash.to_string(),
            teacher: teacher.to_string(),
            teacher_settings,
            questions: match &sources.compose {
                None => serde_json::json!({ "template": sources.template, "llm": llm }),
                Some(c) => serde_json::json!({
                    "template": sources.template,
                    "llm": llm,
                    "compose": {
                        "seed": c.seed,
                        "max_questions": c.max_questions,
                        "operators": crate::questions::compose::operators_hash(),
                    },
                }),
            },
            max_questions: settings.max_questions,
            memory: settings.limits.memory_bytes,
            datasets,
        }
    }

    /// What differs from `other`: (field, value here, value there), for a
    /// person to read (empty when the identities are equal).
    pub fn differences(&self, other: &RunIdentity) -> Vec<Difference> {
        let mut out = Vec::new();
        let mut field = |name: &str, here: String, there: String| {
            if here != there {
                out.push(Difference {
                    field: name.to_string(),
                    here,
                    there,
                });
            }
        };
        field(
            "csv-agent version",
            self.version.clone(),
            other.version.clone(),
        );
        field("command", self.command.clone(), other.command.clone());
        field(
            "template catalog",
            self.catalog.clone(),
            other.catalog.clone(),
        );
        field("teacher", self.teacher.clone(), other.teacher.clone());
        field(
            "teacher settings",
            self.teacher_settings.to_string(),
            other.teacher_settings.to_string(),
        );
        field(
            "question sources",
            self.questions.to_string(),
            other.questions.to_string(),
        );
        field(
            "--max-questions",
            optional(self.max_questions),
            optional(other.max_questions),
        );
        field("--memory", optional(self.memory), optional(other.memory));
        let mine: BTreeSet<&String> = self.datasets.keys().collect();
        let theirs: BTreeSet<&String> = other.datasets.keys().collect();
        if mine != theirs {
            field("datasets", list(&mine), list(&theirs));
        } else {
            for (slug, hash) in &self.datasets {
                if let Some(h) = other.datasets.get(slug).filter(|h| *h != hash) {
                    field(&format!("dataset {slug} content"), hash.clone(), h.clone());
                }
            }
        }
        out
    }
}

/// One field in which two runs differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: String,
    pub here: String,
    pub there: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} in it, {} in the others",
            self.field, self.here, self.there
        )
    }
}

fn optional<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "not set".to_string(), |v| v.to_string())
}

fn list(set: &BTreeSet<&String>) -> String {
    let v: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
    format!("[{}]", v.join(", "))
}

impl RunRecord {
    /// Written when a run starts (state `running`).
    pub fn start(
        out: &Path,
        identity: RunIdentity,
        shard: Option<Shard>,
    ) -> Result<RunRecord, ShardError> {
        let record = RunRecord {
            format: FORMAT,
            identity,
            shard,
            state: RunState::Running,
            exit_code: None,
            merged_shards: None,
        };
        record.write(out)?;
        Ok(record)
    }

    /// Written when the run ends, after its summary.
    pub fn finish(mut self, out: &Path, exit_code: i32) -> Result<(), ShardError> {
        self.state = RunState::Finished;
        self.exit_code = Some(exit_code);
        self.write(out)
    }

    pub fn write(&self, out: &Path) -> Result<(), ShardError> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        Ok(store::write_atomic(&out.join(RUN_FILE), &bytes)?)
    }

    /// The record of `dir`, or `None` when it has none.
    pub fn read(dir: &Path) -> Result<Option<RunRecord>, ShardError> {
        let path = dir.join(RUN_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ShardError::BadRecord {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let record: RunRecord =
            serde_json::from_slice(&bytes).map_err(|e| ShardError::BadRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.format != FORMAT {
            return Err(ShardError::BadRecord {
                path,
                reason: format!(
                    "layout version {} (this csv-agent reads {FORMAT})",
                    record.format
                ),
            });
        }
        Ok(Some(record))
    }
}

/// One directory of a shard set and what state it is in.
#[derive(Debug, Clone)]
pub struct Part {
    pub dir: PathBuf,
    pub record: RunRecord,
}

impl Part {
    pub fn shard_label(&self) -> String {
        match self.record.shard {
            Some(s) => format!("shard {}/{}", s.index, s.count),
            None => "whole run".to_string(),
        }
    }

    /// `None` when the part finished cleanly; otherwise what is wrong.
    pub fn problem(&self) -> Option<String> {
        match (self.record.state, self.record.exit_code) {
            (RunState::Running, _) => Some(
                "incomplete: started and never finished (killed?); rerun the same command to repair it"
                    .to_string(),
            ),
            (RunState::Finished, Some(0)) => None,
            (RunState::Finished, code) => Some(format!(
                "finished with failures (exit {}); rerun the same command to retry them",
                optional(code)
            )),
        }
    }
}

impl Part {
    /// Every episode of this directory must be of its run: its dataset
    /// and content hash in the identity, its question among the shard's
    /// questions (`questions`: the ids of the directory's questions files,
    /// which a run rewrites for its own settings), owned by the shard, and
    /// its id what the run's teacher settings give. An episode left by an
    /// earlier run with other settings in the same directory fails here.
    pub fn check_episodes(
        &self,
        episodes: &[crate::schema::Episode],
        questions: &std::collections::HashSet<String>,
    ) -> Result<(), ShardError> {
        let identity = &self.record.identity;
        for e in episodes {
            let q = &e.question;
            let reason = match identity.datasets.get(&e.dataset) {
                None => Some(format!("dataset {} is not in the run", e.dataset)),
                Some(hash) if *hash != q.dataset_hash => Some(format!(
                    "made from {} content {}, the run has {hash}",
                    e.dataset, q.dataset_hash
                )),
                Some(_) if !questions.contains(&q.id) => Some(format!(
                    "question {} is not among the shard's questions",
                    q.id
                )),
                Some(_) => None,
            };
            let owner = match q.source {
                // Model questions belong to a shard whole, by dataset.
                crate::schema::QuestionSource::Llm => "",
                _ => q.id.as_str(),
            };
            let reason = reason.or_else(|| match self.record.shard {
                Some(s) if !s.owns(&e.dataset, owner) => Some(format!(
                    "question {} belongs to another shard than {}/{}",
                    q.id, s.index, s.count
                )),
                _ => None,
            });
            let reason = reason.or_else(|| {
                let id = crate::questions::template::short_hash(&format!(
                    "{}\n{}",
                    q.id, identity.teacher_settings
                ));
                (id != e.episode_id).then(|| "made with other teacher settings".to_string())
            });
            if let Some(reason) = reason {
                return Err(ShardError::ForeignEpisode {
                    dir: self.dir.clone(),
                    episode: e.episode_id.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// A list of directories read as one shard set.
#[derive(Debug, Clone)]
pub struct ShardSet {
    pub identity: RunIdentity,
    /// The directories, each once, in the order given.
    pub parts: Vec<Part>,
    /// The shard count (`None`: the inputs are whole, unsharded runs).
    pub count: Option<u32>,
    /// Shard indices no directory holds.
    pub missing: Vec<u32>,
    /// Directories that do not exist (a task that never started).
    pub absent: Vec<PathBuf>,
}

impl ShardSet {
    /// Parts that are not finished cleanly, with the reason.
    pub fn problems(&self) -> Vec<(&Part, String)> {
        self.parts
            .iter()
            .filter_map(|p| p.problem().map(|why| (p, why)))
            .collect()
    }

    /// Every shard present and no part incomplete (failures allowed).
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.absent.is_empty()
            && self
                .parts
                .iter()
                .all(|p| p.record.state == RunState::Finished)
    }
}

/// Read `dirs` as one shard set. `allow_absent`: a directory that does not
/// exist is listed (a task that never started) instead of refused.
///
/// Refuses (with the odd directory named) directories without a run
/// record, directories of different runs — the reference is the identity
/// most directories share, ties to the first given — and the same shard in
/// two directories. The same directory given twice counts once.
pub fn examine(dirs: &[PathBuf], allow_absent: bool) -> Result<ShardSet, ShardError> {
    let mut parts: Vec<Part> = Vec::new();
    let mut absent = Vec::new();
    let mut seen = BTreeSet::new();
    for dir in dirs {
        if !dir.is_dir() {
            if allow_absent {
                absent.push(dir.clone());
                continue;
            }
            return Err(ShardError::NoDirectory(dir.clone()));
        }
        let key = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if !seen.insert(key) {
            continue;
        }
        let Some(record) = RunRecord::read(dir)? else {
            return Err(ShardError::NoRecord { dir: dir.clone() });
        };
        parts.push(Part {
            dir: dir.clone(),
            record,
        });
    }
    let Some(first) = parts.first() else {
        return match absent.first() {
            Some(dir) => Err(ShardError::NoDirectory(dir.clone())),
            None => Err(ShardError::Empty),
        };
    };
    // The reference identity (and shard count): the one most parts share.
    let key = |p: &Part| {
        (
            serde_json::to_string(&p.record.identity).unwrap_or_default(),
            p.record.shard.map(|s| s.count),
        )
    };
    let mut votes: Vec<((String, Option<u32>), usize, usize)> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let k = key(p);
        match votes.iter_mut().find(|(v, _, _)| *v == k) {
            Some(v) => v.1 += 1,
            None => votes.push((k, 1, i)),
        }
    }
    let best = votes
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|v| v.2)
        .unwrap_or(0);
    let reference = parts.get(best).unwrap_or(first).clone();
    for p in &parts {
        let mut differences = p.record.identity.differences(&reference.record.identity);
        let label = |s: Option<Shard>| match s {
            Some(s) => format!("{} shards", s.count),
            None => "a whole run".to_string(),
        };
        let (here, there) = (p.record.shard, reference.record.shard);
        if here.map(|s| s.count) != there.map(|s| s.count) {
            differences.push(Difference {
                field: "shard count".into(),
                here: label(here),
                there: label(there),
            });
        }
        if !differences.is_empty() {
            return Err(ShardError::OtherRun {
                dir: p.dir.clone(),
                reference: reference.dir.clone(),
                differences: differences
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
    }
    let count = reference.record.shard.map(|s| s.count);
    let mut by_index: BTreeMap<u32, &Part> = BTreeMap::new();
    for p in &parts {
        if let Some(s) = p.record.shard {
            if let Some(other) = by_index.insert(s.index, p) {
                return Err(ShardError::SameShardTwice {
                    index: s.index,
                    count: s.count,
                    first: other.dir.clone(),
                    second: p.dir.clone(),
                });
            }
        }
    }
    let missing = match count {
        Some(n) => (0..n).filter(|i| !by_index.contains_key(i)).collect(),
        None => Vec::new(),
    };
    Ok(ShardSet {
        identity: reference.record.identity.clone(),
        parts,
        count,
        missing,
        absent,
    })
}

/// What the shards did, added up: episodes, verified, seconds, model usage
/// and incidents (per dataset and over the run). `counted` is the summary
/// built from the merged episodes and manifest; time, usage and incidents
/// are facts of the shards' runs and are summed from their summaries.
pub fn add_up(mut counted: RunSummary, shards: &[RunSummary]) -> RunSummary {
    counted.shard = None;
    counted.elapsed = shards.iter().map(|s| s.elapsed).sum();
    let mut usage = Usage::default();
    let mut incidents = Incidents::default();
    let mut any_usage = false;
    let mut stopped = Vec::new();
    for s in shards {
        if let Some(u) = &s.llm_usage {
            usage.add(u);
            any_usage = true;
        }
        incidents.add(&s.incidents);
        if let Some(why) = &s.stopped {
            let label = s
                .shard
                .map(|x| format!("shard {}/{}", x.index, x.count))
                .unwrap_or_else(|| "a run".into());
            stopped.push(format!("{label}: {why}"));
        }
    }
    counted.llm_usage = any_usage.then_some(usage);
    counted.incidents = incidents;
    counted.stopped = (!stopped.is_empty()).then(|| stopped.join("; "));
    for d in counted.datasets.iter_mut() {
        let mut usage = Usage::default();
        let mut any = false;
        let mut incidents = Incidents::default();
        for s in shards {
            if let Some(sd) = s.datasets.iter().find(|x| x.dataset == d.dataset) {
                if let Some(u) = &sd.llm_usage {
                    usage.add(u);
                    any = true;
                }
                incidents.add(&sd.incidents);
            }
        }
        d.llm_usage = any.then_some(usage);
        d.incidents = incidents;
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> RunIdentity {
        RunIdentity {
            version: "1".into(),
            command: "run".into(),
            catalog: "cat".into(),
            teacher: "program".into(),
            teacher_settings: serde_json::json!({"teacher": "program"}),
            questions: serde_json::json!({"template": true, "llm": null}),
            max_questions: Some(6),
            memory: None,
            datasets: [("penguins".to_string(), "aaaa".to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn write(dir: &Path, identity: RunIdentity, shard: Option<Shard>, finished: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let r = RunRecord::start(dir, identity, shard).unwrap();
        if finished {
            r.finish(dir, 0).unwrap();
        }
    }

    #[test]
    fn a_complete_set_has_nothing_missing() {
        let t = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("s{i}"))).collect();
        for (i, d) in dirs.iter().enumerate() {
            write(
                d,
                identity(),
                Some(Shard {
                    index: i as u32,
                    count: 3,
                }),
                true,
            );
        }
        let set = examine(&dirs, false).unwrap();
        assert_eq!(set.count, Some(3));
        assert!(set.missing.is_empty() && set.is_complete());
        assert!(set.problems().is_empty());
    }

    #[test]
    fn missing_and_incomplete_shards_are_listed() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        let never = t.path().join("never");
        write(&a, identity(), Some(Shard { index: 0, count: 4 }), true);
        write(&b, identity(), Some(Shard { index: 2, count: 4 }), false);
        let set = examine(&[a, b.clone(), never.clone()], true).unwrap();
        assert_eq!(set.missing, vec![1, 3]);
        assert_eq!(set.absent, vec![never]);
        let problems = set.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0.dir, b);
        assert!(problems[0].1.contains("incomplete"), "{}", problems[0].1);
        assert!(!set.is_complete());
    }

    #[test]
    fn the_odd_directory_and_field_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("s{i}"))).collect();
        let mut odd = identity();
        odd.datasets.insert("penguins".into(), "bbbb".into());
        // The odd one is given first: the majority is still the reference.
        write(&dirs[0], odd, Some(Shard { index: 0, count: 3 }), true);
        write(
            &dirs[1],
            identity(),
            Some(Shard { index: 1, count: 3 }),
            true,
        );
        write(
            &dirs[2],
            identity(),
            Some(Shard { index: 2, count: 3 }),
            true,
        );
        let err = examine(&dirs, false).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{} is from another run", dirs[0].display())),
            "{err}"
        );
        assert!(
            err.contains("dataset penguins content: bbbb in it, aaaa in the others"),
            "{err}"
        );
    }

    #[test]
    fn another_shard_count_or_teacher_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        write(&a, identity(), Some(Shard { index: 0, count: 2 }), true);
        write(&b, identity(), Some(Shard { index: 1, count: 3 }), true);
        let err = examine(&[a.clone(), b.clone()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard count"), "{err}");
        let mut other = identity();
        other.teacher_settings = serde_json::json!({"teacher": "llm", "temperature": 0.7});
        write(&c, other, Some(Shard { index: 1, count: 2 }), true);
        let err = examine(&[a, c.clone()], false).unwrap_err().to_string();
        assert!(
            err.contains(&c.display().to_string()) && err.contains("teacher settings"),
            "{err}"
        );
    }

    #[test]
    fn the_same_shard_in_two_directories_is_refused_and_one_directory_twice_is_not() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write(&a, identity(), Some(Shard { index: 0, count: 2 }), true);
        write(&b, identity(), Some(Shard { index: 0, count: 2 }), true);
        let err = examine(&[a.clone(), b], false).unwrap_err().to_string();
        assert!(err.contains("shard 0/2 is given twice"), "{err}");
        let set = examine(&[a.clone(), a], false).unwrap();
        assert_eq!(set.parts.len(), 1);
        assert_eq!(set.missing, vec![1]);
    }

    #[test]
    fn the_merged_summary_adds_up_time_model_usage_and_incidents() {
        use crate::pipeline::DatasetSummary;
        let dataset = |usage: Option<Usage>, retries: u64| DatasetSummary {
            dataset: "penguins".into(),
            status: crate::store::DatasetStatus::Done,
            reason: None,
            questions: 0,
            verified: 0,
            disagreements: 0,
            failures: Vec::new(),
            ineligible: Default::default(),
            elapsed: 0.0,
            llm_usage: usage,
            incidents: Incidents {
                retries,
                ..Default::default()
            },
            compose: None,
        };
        let usage = |tokens: u64| Usage {
            prompt_tokens: tokens,
            completion_tokens: 1,
            requests: 2,
            retries: 0,
            latency_s: 1.5,
            failed: 0,
        };
        let shard = |index, elapsed, u: Option<Usage>, retries| RunSummary {
            teacher: "llm".into(),
            shard: Some(Shard { index, count: 2 }),
            datasets: vec![dataset(u, retries)],
            episodes: 0,
            verified: 0,
            elapsed,
            llm_usage: u,
            stopped: None,
            incidents: Incidents {
                retries,
                ..Default::default()
            },
        };
        let shards = [
            shard(0, 10.0, Some(usage(100)), 1),
            shard(1, 5.5, Some(usage(50)), 2),
        ];
        let counted = RunSummary {
            datasets: vec![dataset(None, 0)],
            episodes: 7,
            verified: 6,
            elapsed: 0.0,
            llm_usage: None,
            incidents: Incidents::default(),
            ..shards[0].clone()
        };
        let merged = add_up(counted, &shards);
        assert_eq!(merged.shard, None);
        assert_eq!((merged.episodes, merged.verified), (7, 6));
        assert!((merged.elapsed - 15.5).abs() < 1e-9);
        let u = merged.llm_usage.expect("usage");
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.requests),
            (150, 2, 4)
        );
        assert!((u.latency_s - 3.0).abs() < 1e-9);
        assert_eq!(merged.incidents.retries, 3);
        let d = &merged.datasets[0];
        assert_eq!(d.llm_usage.map(|u| u.prompt_tokens), Some(150));
        assert_eq!(d.incidents.retries, 3);
    }

    #[test]
    fn a_directory_without_a_record_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let err = examine(&[t.path().to_path_buf()], false).unwrap_err();
        assert!(matches!(err, ShardError::NoRecord { .. }), "{err}");
        let err = examine(&[t.path().join("nope")], false).unwrap_err();
        assert!(matches!(err, ShardError::NoDirectory(_)), "{err}");
    }
}
