//! `csv-agent split`: episodes divided into train / val / test files so
//! that nothing learned in training is tested again. It owns the rules:
//! verified episodes only unless asked; a grouping key (question id,
//! template or dataset) never straddles two splits; groups are spread over
//! the splits per difficulty so every split gets its share of each; the
//! same seed always gives the same split, by a hash-ordered shuffle
//! (sha256 of the seed and the key) rather than a random generator.
//!
//! It copies episode lines as they were (byte for byte) and never changes
//! or re-judges an episode. docs/formats.md ("Splits") is the specification.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::formats::{read_episodes, EpisodeLine, ReadError};
use crate::schema::{Difficulty, Episode};
use crate::store::{self, StoreError};

/// The three splits, in file order.
pub const SPLITS: [Split; 3] = [Split::Train, Split::Val, Split::Test];
pub const REPORT_FILE: &str = "split_report.json";

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("invalid ratios `{input}`: {why}")]
    Ratios { input: String, why: String },
    #[error("unknown grouping `{0}` (expected question, template or dataset)")]
    UnknownGroupBy(String),
    #[error("--out {path} is a file; give a directory")]
    OutNotDir { path: PathBuf },
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store's message names the file and carries the cause already.
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: StoreError },
    #[error("serializing the split report")]
    Serialize(#[source] serde_json::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }

    /// `DIR/train.jsonl`, …
    pub fn file_name(self) -> String {
        format!("{}.jsonl", self.as_str())
    }
}

/// What may never be in two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupBy {
    /// The question id: reruns of one question stay together.
    #[default]
    Question,
    /// The template: a split tests templates never seen in training.
    /// Questions without a template are their own group.
    Template,
    /// The dataset: a split tests datasets never seen in training.
    Dataset,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Question => "question",
            GroupBy::Template => "template",
            GroupBy::Dataset => "dataset",
        }
    }

    /// The grouping key of an episode.
    pub fn key(self, e: &Episode) -> String {
        match self {
            GroupBy::Question => e.question.id.clone(),
            GroupBy::Template => match &e.question.template_name {
                Some(t) => format!("template:{t}"),
                None => format!("question:{}", e.question.id),
            },
            GroupBy::Dataset => e.dataset.clone(),
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupBy {
    type Err = SplitError;

    fn from_str(s: &str) -> Result<GroupBy, SplitError> {
        match s {
            "question" => Ok(GroupBy::Question),
            "template" => Ok(GroupBy::Template),
            "dataset" => Ok(GroupBy::Dataset),
            _ => Err(SplitError::UnknownGroupBy(s.to_string())),
        }
    }
}

/// Shares of train, val and test: non-negative, summing to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios([f64; 3]);

impl Ratios {
    /// How far from 1 the sum may be.
    pub const TOLERANCE: f64 = 1e-6;

    pub fn new(train: f64, val: f64, test: f64) -> Result<Ratios, SplitError> {
        format!("{train},{val},{test}").parse()
    }

    pub fn get(&self, split: Split) -> f64 {
        self.0[split.index()]
    }
}

impl Default for Ratios {
    fn default() -> Ratios {
        Ratios([0.8, 0.1, 0.1])
    }
}

impl FromStr for Ratios {
    type Err = SplitError;

    fn from_str(s: &str) -> Result<Ratios, SplitError> {
        let bad = |why: String| SplitError::Ratios {
            input: s.to_string(),
            why,
        };
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() != 3 {
            return Err(bad(format!(
                "expected three numbers (train,val,test), got {}",
                parts.len()
            )));
        }
        let mut values = [0.0; 3];
        for (slot, part) in values.iter_mut().zip(&parts) {
            let v: f64 = part
                .parse()
                .map_err(|_| bad(format!("`{part}` is not a number")))?;
            if !v.is_finite() || v < 0.0 {
                return Err(bad(format!("`{part}` is not a non-negative number")));
            }
            *slot = v;
        }
        let sum: f64 = values.iter().sum();
        if (sum - 1.0).abs() > Ratios::TOLERANCE {
            return Err(bad(format!("they sum to {sum}, not 1")));
        }
        Ok(Ratios(values))
    }
}

impl fmt::Display for Ratios {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.0[0], self.0[1], self.0[2])
    }
}

/// Resolved settings of one split.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SplitOptions {
    pub ratios: Ratios,
    pub seed: u64,
    pub group_by: GroupBy,
    pub include_unverified: bool,
}

/// Episodes per difficulty, written in difficulty order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DifficultyCounts([usize; 4]);

impl DifficultyCounts {
    fn add(&mut self, d: Difficulty) {
        if let Some(i) = Difficulty::ALL.iter().position(|x| *x == d) {
            self.0[i] += 1;
        }
    }

    pub fn get(&self, d: Difficulty) -> usize {
        Difficulty::ALL
            .iter()
            .position(|x| *x == d)
            .map_or(0, |i| self.0[i])
    }
}

impl Serialize for DifficultyCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(Difficulty::ALL.len()))?;
        for (d, n) in Difficulty::ALL.iter().zip(self.0) {
            map.serialize_entry(d.as_str(), &n)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SplitCounts {
    pub episodes: usize,
    /// Distinct grouping keys.
    pub groups: usize,
    pub by_difficulty: DifficultyCounts,
}

/// What `split` did; written as `split_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitReport {
    pub seed: u64,
    pub group_by: &'static str,
    /// train, val, test.
    pub ratios: [f64; 3],
    /// Episodes in the input file.
    pub episodes: usize,
    /// Unverified episodes left out (no `--include-unverified`).
    pub skipped_unverified: usize,
    pub train: SplitCounts,
    pub val: SplitCounts,
    pub test: SplitCounts,
}

impl SplitReport {
    pub fn counts(&self, split: Split) -> &SplitCounts {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// The place in the shuffle of a group: sha256 of the seed and the key.
fn shuffle_key(seed: u64, key: &str) -> String {
    let digest = Sha256::digest(format!("{seed}:{key}").as_bytes());
    hex::encode(digest.as_slice())
}

/// The split of each episode (same order as `episodes`).
///
/// Episodes are grouped by key; a group's stratum is its most common
/// difficulty (ties to the easier one). Within a stratum the groups are
/// taken in hash order and each goes to the split furthest below its
/// share of what has been placed so far, counting the group itself
/// (ties to train, then val): the split sizes track the ratios at every
/// step, and a split with ratio 0 gets nothing.
pub fn assign(episodes: &[&Episode], options: &SplitOptions) -> Vec<Split> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in episodes.iter().enumerate() {
        groups.entry(options.group_by.key(e)).or_default().push(i);
    }
    // Per stratum: (place in the shuffle, key, members) of each group.
    type Shuffled<'a> = (String, String, &'a Vec<usize>);
    let mut strata: BTreeMap<Difficulty, Vec<Shuffled<'_>>> = BTreeMap::new();
    for (key, members) in &groups {
        let mut counts = DifficultyCounts::default();
        for &i in members {
            counts.add(episodes[i].question.difficulty);
        }
        // max_by_key keeps the last maximum: walk hardest first so ties go easier.
        let stratum = Difficulty::ALL
            .iter()
            .rev()
            .copied()
            .max_by_key(|d| counts.get(*d))
            .unwrap_or(Difficulty::Easy);
        strata.entry(stratum).or_default().push((
            shuffle_key(options.seed, key),
            key.clone(),
            members,
        ));
    }
    let mut out = vec![Split::Train; episodes.len()];
    for groups in strata.values_mut() {
        groups.sort();
        let mut placed = 0usize;
        let mut assigned = [0usize; 3];
        for (_, _, members) in groups.iter() {
            let after = (placed + members.len()) as f64;
            let mut best = Split::Train;
            let mut best_deficit = f64::NEG_INFINITY;
            for split in SPLITS {
                let deficit = options.ratios.get(split) * after - assigned[split.index()] as f64;
                if options.ratios.get(split) > 0.0 && deficit > best_deficit {
                    best = split;
                    best_deficit = deficit;
                }
            }
            for &i in members.iter() {
                out[i] = best;
            }
            assigned[best.index()] += members.len();
            placed += members.len();
        }
    }
    out
}

/// Read `episodes`, split them, write `DIR/{train,val,test}.jsonl` (the
/// lines as they were) and `DIR/split_report.json`; each file whole or not
/// at all.
pub fn split_file(
    episodes: &Path,
    out_dir: &Path,
    options: &SplitOptions,
) -> Result<SplitReport, SplitError> {
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(SplitError::OutNotDir {
            path: out_dir.to_path_buf(),
        });
    }
    let lines = read_episodes(episodes)?;
    let total = lines.len();
    let kept: Vec<&EpisodeLine> = lines
        .iter()
        .filter(|l| options.include_unverified || l.episode.verified)
        .collect();
    let refs: Vec<&Episode> = kept.iter().map(|l| &l.episode).collect();
    let splits = assign(&refs, options);

    let mut files: [Vec<u8>; 3] = Default::default();
    let mut counts: [SplitCounts; 3] = Default::default();
    let mut keys: [std::collections::HashSet<String>; 3] = Default::default();
    for (line, split) in kept.iter().zip(&splits) {
        let i = split.index();
        files[i].extend_from_slice(line.raw.as_bytes());
        files[i].push(b'\n');
        counts[i].episodes += 1;
        counts[i]
            .by_difficulty
            .add(line.episode.question.difficulty);
        keys[i].insert(options.group_by.key(&line.episode));
    }
    for (c, k) in counts.iter_mut().zip(&keys) {
        c.groups = k.len();
    }
    let [train, val, test] = counts;
    let report = SplitReport {
        seed: options.seed,
        group_by: options.group_by.as_str(),
        ratios: options.ratios.0,
        episodes: total,
        skipped_unverified: total - kept.len(),
        train,
        val,
        test,
    };
    let write = |path: PathBuf, bytes: &[u8]| {
        store::write_atomic(&path, bytes).map_err(|error| SplitError::Write { path, error })
    };
    for (split, bytes) in SPLITS.iter().zip(&files) {
        write(out_dir.join(split.file_name()), bytes)?;
    }
    let mut json = serde_json::to_vec_pretty(&report).map_err(SplitError::Serialize)?;
    json.push(b'\n');
    write(out_dir.join(REPORT_FILE), &json)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_must_be_three_non_negative_numbers_summing_to_one() {
        assert_eq!(
            "0.8,0.1,0.1".parse::<Ratios>().ok(),
            Some(Ratios::default())
        );
        assert!("0.7, 0.2, 0.1".parse::<Ratios>().is_ok());
        assert!("1,0,0".parse::<Ratios>().is_ok());
        for bad in [
            "0.8,0.2",
            "0.5,0.5,0.1",
            "1.2,-0.1,-0.1",
            "a,b,c",
            "NaN,0,1",
            "",
        ] {
            assert!(bad.parse::<Ratios>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_shuffle_depends_on_seed_and_key_only() {
        assert_eq!(shuffle_key(42, "q1"), shuffle_key(42, "q1"));
        assert_ne!(shuffle_key(42, "q1"), shuffle_key(43, "q1"));
        assert_ne!(shuffle_key(42, "q1"), shuffle_key(42, "q2"));
    }
}
