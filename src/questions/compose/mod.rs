//! Composed questions: chains of 2 to 8 typed operators (the grammar in
//! `operators/*.toml`, format and rules in docs/questions.md) sampled over
//! a dataset profile, type-checked, verbalized without a model, screened
//! by guards in one worker per batch, deduplicated, and handed on as
//! ordinary [`Question`]s (`source: compose`, a reference program with one
//! step per operator, an alternative through other APIs) to the same
//! ground truth and teachers as templates. Nothing here runs code itself:
//! it writes the screening cell and judges what the cell returns.

pub mod guards;
pub mod operator;
pub mod render;
pub mod sampler;
pub mod screen;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

pub use guards::{Refusal, Screened};
pub use operator::{operators, operators_hash, Operator, OperatorError, CATEGORIES};
use sampler::{Rng, Sampler};
use types::{check, Step, Ty};

use crate::profile::DataProfile;
use crate::questions::template::short_hash;
use crate::schema::{Composition, Difficulty, Question, QuestionSource};

/// Composed questions per dataset when `--max-questions` is not given:
/// keeps a default `csv-agent run` (templates + composed) near a minute
/// on a 2-CPU machine.
pub const DEFAULT_MAX_QUESTIONS: usize = 24;

/// How the composer is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComposeConfig {
    pub seed: u64,
    pub max_questions: usize,
}

/// A sampled, type-checked, verbalized chain, not yet screened.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub question: Question,
    /// The operator names with their bindings: equal signatures are the
    /// same program.
    pub signature: String,
    /// The operator chain with its parameters but not its columns: the
    /// same shape over other bindings.
    pub shape: String,
    /// The signature of the easier chain this one extends (multi-hop).
    pub prefix: Option<String>,
    /// The screening cell's functions: [reference, alternative,
    /// reference without step i for each removable step...].
    pub functions: Vec<String>,
    /// Which step each ablation function leaves out (operator name).
    pub ablated: Vec<String>,
    pub answer: Ty,
    /// Every column the chain binds.
    pub columns: BTreeSet<String>,
}

/// The difficulty score of a chain: the operators' weights plus 0.4 per
/// step.
pub fn score(steps: &[Step<'_>]) -> f64 {
    steps.iter().map(|s| s.op.weight).sum::<f64>() + 0.4 * steps.len() as f64
}

pub fn difficulty(score: f64) -> Difficulty {
    if score < 2.6 {
        Difficulty::Easy
    } else if score < 4.2 {
        Difficulty::Medium
    } else if score < 6.2 {
        Difficulty::Hard
    } else {
        Difficulty::VeryHard
    }
}

/// The question's category: multi-hop when a step builds on an earlier
/// answer, else the category of its heaviest operator (the later one on a
/// tie).
pub fn category(steps: &[Step<'_>]) -> String {
    if steps.iter().any(|s| s.op.category == "multi_hop") {
        return "multi_hop".into();
    }
    let mut best: Option<&Step<'_>> = None;
    for s in steps {
        if best.is_none_or(|b| s.op.weight >= b.op.weight) {
            best = Some(s);
        }
    }
    best.map(|s| s.op.category.clone()).unwrap_or_default()
}

fn signature(steps: &[Step<'_>]) -> String {
    steps
        .iter()
        .map(|s| {
            format!(
                "{}{}{}",
                s.op.name,
                serde_json::to_string(&s.columns).unwrap_or_default(),
                Json::Object(s.params.clone())
            )
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn shape(steps: &[Step<'_>]) -> String {
    steps
        .iter()
        .map(|s| format!("{}{}", s.op.name, Json::Object(s.params.clone())))
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Turns one dataset's profile into candidates, round after round, and
/// keeps the tally of what the guards refused.
pub struct Composer<'a> {
    sampler: Sampler<'a>,
    profile: &'a DataProfile,
    slug: String,
    hash: String,
    rng: Rng,
    seen: BTreeSet<String>,
    pub refusals: BTreeMap<String, u64>,
    /// Signature -> id of every question kept so far (what a harder one
    /// may build on).
    kept: BTreeMap<String, String>,
    /// (answer hash, operator multiset) of every question kept so far.
    kept_answers: BTreeSet<(String, String)>,
    pub sampled: u64,
}

impl<'a> Composer<'a> {
    pub fn new(
        ops: &'a [Operator],
        profile: &'a DataProfile,
        slug: &str,
        hash: &str,
        seed: u64,
    ) -> Composer<'a> {
        let mixed = short_hash(&format!("{seed}\n{hash}"));
        let seed = u64::from_str_radix(&mixed, 16).unwrap_or(seed);
        Composer {
            sampler: Sampler::new(ops, profile),
            profile,
            slug: slug.to_string(),
            hash: hash.to_string(),
            rng: Rng::new(seed),
            seen: BTreeSet::new(),
            refusals: BTreeMap::new(),
            kept: BTreeMap::new(),
            kept_answers: BTreeSet::new(),
            sampled: 0,
        }
    }

    pub fn refuse(&mut self, reason: &str) {
        *self.refusals.entry(reason.to_string()).or_default() += 1;
    }

    /// Up to `n` new distinct candidates (fewer when the grammar runs dry
    /// on this profile). A chain that builds on an easier one brings that
    /// one along first.
    pub fn sample(&mut self, n: usize) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        let mut misses = 0;
        while out.len() < n && misses < 200 + 4 * n {
            let Some(steps) = self.sampler.chain(&mut self.rng) else {
                misses += 1;
                continue;
            };
            self.sampled += 1;
            // The easier questions a multi-hop chain stands on, shortest
            // first, then the chain itself.
            let mut cuts: Vec<usize> = steps
                .iter()
                .enumerate()
                .filter(|(i, s)| s.op.key.is_some() && *i >= types::MIN_STEPS)
                .map(|(i, _)| i)
                .collect();
            cuts.push(steps.len());
            let mut new_any = false;
            let mut prefix: Option<String> = None;
            for cut in cuts {
                let part = &steps[..cut];
                let sig = signature(part);
                if self.seen.contains(&sig) {
                    prefix = Some(sig);
                    continue;
                }
                match self.candidate(part, prefix.clone()) {
                    Ok(c) => {
                        self.seen.insert(sig.clone());
                        out.push(c);
                        new_any = true;
                    }
                    Err(reason) => {
                        self.refuse(&reason);
                        break;
                    }
                }
                prefix = Some(sig);
            }
            if !new_any {
                misses += 1;
                self.refuse("duplicate program");
            }
        }
        out
    }

    fn candidate(&self, steps: &[Step<'_>], prefix: Option<String>) -> Result<Candidate, String> {
        let end = check(steps, self.profile).map_err(|e| format!("ill-typed chain: {e}"))?;
        let answer = end.ty;
        let text = render::question_text(steps, self.profile, answer)
            .map_err(|e| format!("verbalization failed: {e}"))?;
        let programs = render::programs(steps, self.profile, answer)
            .map_err(|e| format!("rendering failed: {e}"))?;
        let mut functions = vec![
            render::screening_function("_ref", steps, self.profile, answer)
                .map_err(|e| format!("rendering failed: {e}"))?,
            format!(
                "def _alt():\n{}",
                programs.alternatives[0]
                    .code
                    .replace("submit(", "return (")
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>()
            ),
        ];
        let mut ablated = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            if !s.op.removable() {
                continue;
            }
            let mut fewer = steps.to_vec();
            fewer.remove(i);
            let Ok(end) = check(&fewer, self.profile) else {
                continue;
            };
            if end.ty != answer {
                continue;
            }
            let f = render::screening_function(&format!("_abl{i}"), &fewer, self.profile, answer)
                .map_err(|e| format!("rendering failed: {e}"))?;
            functions.push(f);
            ablated.push(s.op.name.clone());
        }
        let sc = score(steps);
        let chain: Vec<String> = steps.iter().map(|s| s.op.name.clone()).collect();
        let params: Vec<Json> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "operator": s.op.name,
                    "columns": s.columns,
                    "params": s.params,
                })
            })
            .collect();
        let id = short_hash(
            &serde_json::json!({
                "source": "compose",
                "question": text,
                "programs": programs,
                "dataset_hash": self.hash,
            })
            .to_string(),
        );
        let question = Question {
            id,
            question_text: text,
            hint: Some(format!(
                "Follow the steps in order: {}.",
                chain.join(" -> ")
            )),
            difficulty: difficulty(sc),
            n_steps: steps.len() as u32,
            template_name: Some(format!("compose:{}", chain.join("+"))),
            template_params: Some(Json::Array(params)),
            output_type: Some(
                match answer {
                    Ty::Scalar => "scalar",
                    Ty::Label => "string",
                    Ty::List => "list",
                    Ty::Mapping => "dict",
                    _ => "boolean",
                }
                .into(),
            ),
            output_schema: Some(Json::from(answer.as_str())),
            ground_truth: None,
            ground_truth_hash: None,
            ground_truth_hashes: Vec::new(),
            source: QuestionSource::Compose,
            dataset: self.slug.clone(),
            dataset_hash: self.hash.clone(),
            programs: Some(programs),
            category: Some(category(steps)),
            composition: Some(Composition {
                chain,
                categories: steps.iter().map(|s| s.op.category.clone()).collect(),
                builds_on: None,
                score: (sc * 100.0).round() / 100.0,
            }),
        };
        Ok(Candidate {
            question,
            signature: signature(steps),
            shape: shape(steps),
            prefix,
            functions,
            ablated,
            answer,
            columns: steps
                .iter()
                .flat_map(|s| s.columns.values().cloned())
                .collect(),
        })
    }

    /// The guards over one round's screened candidates, in order: what
    /// survives, with `builds_on` set to the kept easier question.
    pub fn judge(&mut self, screened: Vec<(Candidate, Screened)>) -> Vec<Question> {
        let verdicts = guards::judge(&screened, self.profile);
        let mut out = Vec::new();
        for ((candidate, result), verdict) in screened.into_iter().zip(verdicts) {
            if let Err(reason) = verdict {
                self.refuse(reason.as_str());
                continue;
            }
            let builds_on = match &candidate.prefix {
                None => None,
                Some(p) => match self.kept.get(p) {
                    Some(id) => Some(id.clone()),
                    None => {
                        self.refuse(Refusal::BuildsOnRefused.as_str());
                        continue;
                    }
                },
            };
            let multiset = {
                let mut names = candidate
                    .question
                    .composition
                    .as_ref()
                    .map(|c| c.chain.clone())
                    .unwrap_or_default();
                names.sort();
                names.join(",")
            };
            let answer_key = result.answer_hash().unwrap_or_default();
            if !self.kept_answers.insert((answer_key, multiset)) {
                self.refuse(Refusal::DuplicateAnswer.as_str());
                continue;
            }
            let mut q = candidate.question;
            if let Some(c) = q.composition.as_mut() {
                c.builds_on = builds_on;
            }
            self.kept.insert(candidate.signature, q.id.clone());
            out.push(q);
        }
        out
    }
}

/// The screening cell for a batch: runs every function of every candidate,
/// each in its own try, and submits `[[{"ok", "v" | "e"}, ...], ...]`.
pub fn screening_cell(batch: &[Candidate]) -> String {
    let mut code = String::from(
        "import warnings as _warnings\n_warnings.simplefilter(\"ignore\")\n_screen = []\n",
    );
    for (i, c) in batch.iter().enumerate() {
        let mut names = Vec::new();
        for f in &c.functions {
            // Each function keeps its own name inside a per-candidate
            // wrapper so names never collide across candidates.
            let name = f
                .split_once('(')
                .map(|(h, _)| h.trim_start_matches("def ").to_string())
                .unwrap_or_default();
            code.push_str(&f.replacen(&format!("def {name}("), &format!("def _c{i}{name}("), 1));
            names.push(format!("_c{i}{name}"));
        }
        code.push_str(&format!("_screen.append([{}])\n", names.join(", ")));
    }
    code.push_str(
        r#"_results = []
for _fs in _screen:
    _row = []
    for _f in _fs:
        try:
            _row.append({"ok": True, "v": _f()})
        except Exception as _e:
            _row.append({"ok": False, "e": (type(_e).__name__ + ": " + str(_e))[:200]})
    _results.append(_row)
submit(_results)
"#,
    );
    code
}

/// What the composer reports per dataset.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ComposeReport {
    pub sampled_chains: u64,
    pub candidates: u64,
    pub kept: u64,
    /// Refusals by guard.
    pub refused: BTreeMap<String, u64>,
    /// Kept questions by difficulty level and by category.
    #[serde(default)]
    pub difficulty: BTreeMap<String, u64>,
    #[serde(default)]
    pub categories: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests;
