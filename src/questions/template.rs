//! Template questions: the catalog of TOML files under
//! `src/questions/templates/` (embedded by `build.rs`, format in
//! docs/templates.md), checked when loaded, and their expansion into
//! questions for one dataset profile. Nothing here runs code: ground truth
//! is established by `ground_truth`.
//!
//! Size: about 950 lines, of which some 240 are the unit tests at the end;
//! loading the catalog and expanding it share `Template` and its private
//! helpers, which a split would have to make public.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::profile::{ColumnKind, ColumnProfile, DataProfile};
use crate::schema::{
    AlternativeProgram, Difficulty, ProgramStep, Programs, Question, QuestionSource,
};

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// Bindings per template and dataset when the template does not say.
pub const DEFAULT_MAX_BINDINGS: usize = 2;
/// Enumerating bindings stops here (wide datasets would explode).
const MAX_ENUMERATED: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("template {file}: {reason}")]
    Invalid { file: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    Numeric,
    Categorical,
    Datetime,
    Text,
}

impl SlotKind {
    fn column_kind(self) -> ColumnKind {
        match self {
            SlotKind::Numeric => ColumnKind::Numeric,
            SlotKind::Categorical => ColumnKind::Categorical,
            SlotKind::Datetime => ColumnKind::Datetime,
            SlotKind::Text => ColumnKind::Text,
        }
    }
}

/// What a column must be to fill a slot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    pub kind: SlotKind,
    #[serde(default)]
    pub min_levels: Option<u64>,
    #[serde(default)]
    pub max_levels: Option<u64>,
    /// Alias of `min_levels`, reads better for numeric columns.
    #[serde(default)]
    pub min_distinct: Option<u64>,
    #[serde(default)]
    pub positive: bool,
    #[serde(default)]
    pub has_missing: bool,
    #[serde(default)]
    pub max_missing_share: Option<f64>,
    /// Every level of a categorical column has at least this many rows.
    #[serde(default)]
    pub min_level_count: Option<u64>,
}

impl SlotSpec {
    pub fn accepts(&self, column: &ColumnProfile) -> bool {
        if !column.target_ok || column.kind != self.kind.column_kind() {
            return false;
        }
        // A date column binds only with the format it parses with, which
        // the question states (`${slot_format}`).
        if self.kind == SlotKind::Datetime && column.date_format.is_none() {
            return false;
        }
        let min_levels = self.min_levels.max(self.min_distinct);
        if min_levels.is_some_and(|m| column.cardinality < m) {
            return false;
        }
        if self.max_levels.is_some_and(|m| column.cardinality > m) {
            return false;
        }
        if self.positive && !column.min.is_some_and(|m| m > 0.0) {
            return false;
        }
        if self.has_missing && column.missing == 0 {
            return false;
        }
        if self
            .max_missing_share
            .is_some_and(|m| column.missing_share > m)
        {
            return false;
        }
        if let Some(m) = self.min_level_count {
            if column.min_level_count.is_none_or(|c| c < m) {
                return false;
            }
        }
        true
    }
}

/// Dataset-wide conditions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applies {
    #[serde(default)]
    pub min_rows: u64,
    #[serde(default)]
    pub min_numeric: usize,
    #[serde(default)]
    pub min_categorical: usize,
    #[serde(default)]
    pub min_datetime: usize,
    #[serde(default)]
    pub needs_missing: bool,
}

/// A named set of columns (`[column_sets]`): every column of the profile
/// that satisfies the filter, in column order, as `${name}` (a list). The
/// question lists them, the programs use exactly them, and the template
/// applies only when at least `min_columns` qualify — so "among the numeric
/// columns" is decided on the same columns the program uses, and id-like
/// columns (never in a set) cannot count.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSetSpec {
    pub kind: SlotKind,
    #[serde(default)]
    pub min_distinct: Option<u64>,
    #[serde(default)]
    pub max_missing_share: Option<f64>,
    #[serde(default)]
    pub positive: bool,
    /// The template applies only when at least this many columns qualify.
    #[serde(default = "one")]
    pub min_columns: usize,
}

fn one() -> usize {
    1
}

impl ColumnSetSpec {
    fn slot(&self) -> SlotSpec {
        SlotSpec {
            kind: self.kind,
            min_levels: None,
            max_levels: None,
            min_distinct: self.min_distinct,
            positive: self.positive,
            has_missing: false,
            max_missing_share: self.max_missing_share,
            min_level_count: None,
        }
    }

    /// The qualifying columns, in column order.
    pub fn columns<'a>(&self, profile: &'a DataProfile) -> Vec<&'a str> {
        let spec = self.slot();
        profile
            .column_profiles
            .iter()
            .filter(|c| spec.accepts(c))
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// What a question's programs cost per row of the dataset (`[cost]`): the
/// template binds only where `rows × bytes_per_row` fits in half a worker's
/// memory limit (the other half is the worker's share of the frame, the
/// interpreter and the program's other intermediates).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    #[serde(default)]
    pub bytes_per_row: u64,
}

impl Cost {
    /// Whether the programs fit a worker with `memory_bytes` on `rows` rows.
    pub fn fits(&self, rows: u64, memory_bytes: u64) -> bool {
        rows.saturating_mul(self.bytes_per_row) <= memory_bytes / 2
    }
}

/// The per-worker memory limit questions are sized for when the caller does
/// not say (the sandbox's default limit).
pub const DEFAULT_WORKER_MEMORY: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    description: String,
    difficulty: Difficulty,
    n_steps: u32,
    question: String,
    hint: String,
    output_type: String,
    output_schema: Value,
    #[serde(default)]
    max_bindings: Option<usize>,
    #[serde(default)]
    applies: Applies,
    #[serde(default)]
    slots: BTreeMap<String, SlotSpec>,
    #[serde(default)]
    column_sets: BTreeMap<String, ColumnSetSpec>,
    #[serde(default)]
    cost: Cost,
    #[serde(default)]
    params: Vec<Map<String, Value>>,
    steps: Vec<ProgramStep>,
    alternatives: Vec<AlternativeProgram>,
}

/// A checked template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub description: String,
    pub difficulty: Difficulty,
    pub n_steps: u32,
    pub question: String,
    pub hint: String,
    pub output_type: String,
    pub output_schema: Value,
    pub max_bindings: usize,
    pub applies: Applies,
    pub slots: BTreeMap<String, SlotSpec>,
    pub column_sets: BTreeMap<String, ColumnSetSpec>,
    pub cost: Cost,
    pub params: Vec<Map<String, Value>>,
    pub steps: Vec<ProgramStep>,
    pub alternatives: Vec<AlternativeProgram>,
}

const OUTPUT_TYPES: [&str; 6] = ["scalar", "string", "boolean", "list", "dict", "records"];

impl Template {
    /// Parse and check one template file (`file` is its stem).
    pub fn parse(file: &str, text: &str) -> Result<Template, TemplateError> {
        let t: TemplateFile = toml::from_str(text).map_err(|source| TemplateError::Parse {
            file: file.to_string(),
            source,
        })?;
        let invalid = |reason: String| TemplateError::Invalid {
            file: file.to_string(),
            reason,
        };
        if t.name != file {
            return Err(invalid(format!(
                "name `{}` differs from the file name",
                t.name
            )));
        }
        if t.steps.is_empty() || t.n_steps as usize != t.steps.len() {
            return Err(invalid(format!(
                "n_steps is {} but there are {} [[steps]]",
                t.n_steps,
                t.steps.len()
            )));
        }
        if t.alternatives.is_empty() {
            return Err(invalid("needs at least one [[alternatives]]".into()));
        }
        if !OUTPUT_TYPES.contains(&t.output_type.as_str()) {
            return Err(invalid(format!(
                "output_type `{}` is not one of {OUTPUT_TYPES:?}",
                t.output_type
            )));
        }
        if t.max_bindings == Some(0) {
            return Err(invalid("max_bindings must be at least 1".into()));
        }
        if let Some(last) = t.steps.last() {
            if !last.code.contains("submit(") {
                return Err(invalid("the last step never calls submit()".into()));
            }
        }
        for alt in &t.alternatives {
            if !alt.code.contains("submit(") {
                return Err(invalid(format!(
                    "alternative `{}` never calls submit()",
                    alt.name
                )));
            }
        }
        // Every parameter set names the same keys, none shadowing a slot,
        // and every value has a Python literal.
        let keys: BTreeSet<&String> = t
            .params
            .first()
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        for set in &t.params {
            if set.keys().collect::<BTreeSet<_>>() != keys {
                return Err(invalid(
                    "every [[params]] set must name the same keys".into(),
                ));
            }
            for (k, v) in set {
                if t.slots.contains_key(k) || t.column_sets.contains_key(k) {
                    return Err(invalid(format!("parameter `{k}` has a slot's name")));
                }
                python_literal(v).map_err(|e| invalid(format!("parameter `{k}`: {e}")))?;
            }
        }
        // Every placeholder resolves.
        let mut known: BTreeMap<String, Value> = keys
            .iter()
            .map(|k| ((*k).clone(), Value::from(0)))
            .collect();
        for (slot, spec) in &t.slots {
            known.insert(slot.clone(), Value::from("column"));
            if spec.kind == SlotKind::Datetime {
                known.insert(format!("{slot}_format"), Value::from("%Y-%m-%d"));
                known.insert(format!("{slot}_format_name"), Value::from("ISO"));
            }
        }
        for (set, spec) in &t.column_sets {
            if t.slots.contains_key(set) {
                return Err(invalid(format!("column set `{set}` has a slot's name")));
            }
            if spec.min_columns == 0 {
                return Err(invalid(format!(
                    "column set `{set}`: min_columns must be at least 1"
                )));
            }
            known.insert(set.clone(), Value::from(vec!["column"]));
        }
        let mut texts: Vec<(&str, bool)> = vec![(&t.question, false), (&t.hint, false)];
        for s in &t.steps {
            texts.push((&s.reasoning, false));
            texts.push((&s.code, true));
        }
        for a in &t.alternatives {
            texts.push((&a.reasoning, false));
            texts.push((&a.code, true));
        }
        for (text, code) in texts {
            fill(text, &known, code).map_err(invalid)?;
        }
        Ok(Template {
            name: t.name,
            description: t.description,
            difficulty: t.difficulty,
            n_steps: t.n_steps,
            question: t.question,
            hint: t.hint,
            output_type: t.output_type,
            output_schema: t.output_schema,
            max_bindings: t.max_bindings.unwrap_or(DEFAULT_MAX_BINDINGS),
            applies: t.applies,
            slots: t.slots,
            column_sets: t.column_sets,
            cost: t.cost,
            params: t.params,
            steps: t.steps,
            alternatives: t.alternatives,
        })
    }

    fn applies_to(&self, profile: &DataProfile) -> bool {
        let a = &self.applies;
        let count = |k: ColumnKind| profile.columns_of(k).count();
        profile.rows >= a.min_rows
            && count(ColumnKind::Numeric) >= a.min_numeric
            && count(ColumnKind::Categorical) >= a.min_categorical
            && count(ColumnKind::Datetime) >= a.min_datetime
            && (!a.needs_missing || profile.column_profiles.iter().any(|c| c.missing > 0))
            && self
                .column_sets
                .values()
                .all(|set| set.columns(profile).len() >= set.min_columns)
    }

    /// Every way to fill the slots with distinct columns, in a deterministic
    /// shuffled order (seeded by the template and the dataset), at most
    /// `max_bindings` of them.
    fn bindings(&self, profile: &DataProfile, dataset_hash: &str) -> Vec<BTreeMap<String, String>> {
        let slots: Vec<(&String, Vec<&str>)> = self
            .slots
            .iter()
            .map(|(name, spec)| {
                let columns = profile
                    .column_profiles
                    .iter()
                    .filter(|c| spec.accepts(c))
                    .map(|c| c.name.as_str())
                    .collect();
                (name, columns)
            })
            .collect();
        let mut all: Vec<Vec<&str>> = vec![Vec::new()];
        for (_, columns) in &slots {
            let mut next = Vec::new();
            for partial in &all {
                for c in columns {
                    if !partial.contains(c) && next.len() < MAX_ENUMERATED {
                        let mut p = partial.clone();
                        p.push(*c);
                        next.push(p);
                    }
                }
            }
            all = next;
        }
        let mut keyed: Vec<(String, BTreeMap<String, String>)> = all
            .into_iter()
            .map(|combo| {
                let binding: BTreeMap<String, String> = slots
                    .iter()
                    .zip(combo)
                    .map(|((name, _), c)| ((*name).clone(), c.to_string()))
                    .collect();
                let key = short_hash(&format!("{}\n{dataset_hash}\n{binding:?}", self.name));
                (key, binding)
            })
            .collect();
        keyed.sort();
        keyed
            .into_iter()
            .take(self.max_bindings)
            .map(|(_, b)| b)
            .collect()
    }

    /// The template's questions on one dataset (no ground truth yet), for
    /// workers with the default memory limit.
    pub fn instantiate(
        &self,
        profile: &DataProfile,
        dataset: &str,
        dataset_hash: &str,
    ) -> Vec<Question> {
        self.instantiate_within(profile, dataset, dataset_hash, DEFAULT_WORKER_MEMORY)
    }

    /// The template's questions on one dataset for workers limited to
    /// `memory_bytes`: none when the template's cost does not fit.
    pub fn instantiate_within(
        &self,
        profile: &DataProfile,
        dataset: &str,
        dataset_hash: &str,
        memory_bytes: u64,
    ) -> Vec<Question> {
        if !self.applies_to(profile) || !self.cost.fits(profile.rows, memory_bytes) {
            return Vec::new();
        }
        let sets: BTreeMap<String, Value> = self
            .column_sets
            .iter()
            .map(|(name, spec)| {
                let columns: Vec<Value> =
                    spec.columns(profile).into_iter().map(Value::from).collect();
                (name.clone(), Value::Array(columns))
            })
            .collect();
        let bindings = self.bindings(profile, dataset_hash);
        let params: Vec<Map<String, Value>> = if self.params.is_empty() {
            vec![Map::new()]
        } else {
            self.params.clone()
        };
        let mut out = Vec::new();
        for binding in &bindings {
            for set in &params {
                let mut values: BTreeMap<String, Value> = binding
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                for (slot, column) in binding {
                    let Some(c) = profile.column_profiles.iter().find(|c| &c.name == column) else {
                        continue;
                    };
                    if let (Some(f), Some(n)) = (&c.date_format, &c.date_format_name) {
                        values.insert(format!("{slot}_format"), Value::from(f.as_str()));
                        values.insert(format!("{slot}_format_name"), Value::from(n.as_str()));
                    }
                }
                values.extend(sets.clone());
                values.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                // Checked at load time; a failure here would be a bug, so
                // the question is skipped rather than the run aborted.
                if let Ok(q) = self.question(&values, dataset, dataset_hash) {
                    out.push(q);
                }
            }
        }
        out
    }

    fn question(
        &self,
        values: &BTreeMap<String, Value>,
        dataset: &str,
        dataset_hash: &str,
    ) -> Result<Question, String> {
        let reference = self
            .steps
            .iter()
            .map(|s| {
                Ok(ProgramStep {
                    reasoning: fill(&s.reasoning, values, false)?,
                    code: fill(&s.code, values, true)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let alternatives = self
            .alternatives
            .iter()
            .map(|a| {
                Ok(AlternativeProgram {
                    name: a.name.clone(),
                    reasoning: fill(&a.reasoning, values, false)?,
                    code: fill(&a.code, values, true)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let programs = Programs {
            reference,
            alternatives,
        };
        let params = Value::Object(values.clone().into_iter().collect());
        let question_text = fill(&self.question, values, false)?;
        let id = short_hash(
            &serde_json::json!({
                "template": self.name,
                "question": question_text,
                "programs": programs,
                "params": params,
                "dataset_hash": dataset_hash,
            })
            .to_string(),
        );
        Ok(Question {
            id,
            question_text,
            hint: Some(fill(&self.hint, values, false)?),
            difficulty: self.difficulty,
            n_steps: self.n_steps,
            template_name: Some(self.name.clone()),
            template_params: Some(params),
            output_type: Some(self.output_type.clone()),
            output_schema: Some(self.output_schema.clone()),
            ground_truth: None,
            ground_truth_hash: None,
            ground_truth_hashes: Vec::new(),
            source: QuestionSource::Template,
            dataset: dataset.to_string(),
            dataset_hash: dataset_hash.to_string(),
            programs: Some(programs),
            category: None,
            composition: None,
        })
    }
}

/// The embedded catalog, checked, in name order.
pub fn catalog() -> Result<Vec<Template>, TemplateError> {
    TEMPLATE_FILES
        .iter()
        .map(|(file, text)| Template::parse(file, text))
        .collect()
}

/// A hash of everything in the embedded catalog: part of the key that says
/// whether a dataset's questions file is still current.
pub fn catalog_hash() -> String {
    files_hash(TEMPLATE_FILES.iter().map(|(f, t)| (*f, *t)))
}

fn files_hash<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (file, text) in files {
        h.update(file.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The user's own templates (`--templates DIR`: every `*.toml` in DIR, in
/// name order) ahead of the embedded catalog, so a small `--max-questions`
/// reaches them first; and the hash of the whole set. A user template may
/// not take a built-in template's name.
pub fn catalog_with(
    dir: Option<&std::path::Path>,
) -> Result<(Vec<Template>, String), TemplateError> {
    let builtin = catalog()?;
    let Some(dir) = dir else {
        return Ok((builtin, catalog_hash()));
    };
    let unreadable = |reason: String| TemplateError::Invalid {
        file: dir.display().to_string(),
        reason,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| unreadable(format!("cannot read the templates directory: {e}")))?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(unreadable("no *.toml template files in it".into()));
    }
    let mut files = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).map_err(|e| TemplateError::Invalid {
            file: path.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((stem, text));
    }
    let mut all = Vec::new();
    for (stem, text) in &files {
        let t = Template::parse(stem, text)?;
        if builtin.iter().any(|b| b.name == t.name) {
            return Err(TemplateError::Invalid {
                file: stem.clone(),
                reason: "a built-in template has this name; rename the file and its `name`".into(),
            });
        }
        all.push(t);
    }
    all.extend(builtin);
    let hash = files_hash(
        files
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .chain(TEMPLATE_FILES.iter().map(|(f, t)| (*f, *t))),
    );
    Ok((all, hash))
}

pub(crate) fn short_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// Replace every `${name}`: verbatim in prose, as a Python literal in code.
pub fn fill(text: &str, values: &BTreeMap<String, Value>, code: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed `${` placeholder".into());
        };
        let name = &after[..end];
        let value = values
            .get(name)
            .ok_or_else(|| format!("unknown placeholder `${{{name}}}`"))?;
        if code {
            out.push_str(&python_literal(value)?);
        } else {
            match value {
                Value::String(s) => out.push_str(s),
                // Lists read as Python lists (`["a", "b"]`), unambiguous
                // whatever the column names hold.
                Value::Array(_) => out.push_str(&python_literal(value)?),
                other => out.push_str(&other.to_string()),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A Python literal for a parameter or column name. JSON strings are valid
/// Python strings (same escapes); booleans and lists need their own spelling.
fn python_literal(value: &Value) -> Result<String, String> {
    match value {
        Value::String(_) | Value::Number(_) => Ok(value.to_string()),
        Value::Bool(b) => Ok(if *b { "True" } else { "False" }.to_string()),
        Value::Array(items) => Ok(format!(
            "[{}]",
            items
                .iter()
                .map(python_literal)
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        )),
        other => Err(format!("{other} has no Python literal here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn placeholders_become_python_literals_in_code_and_text_in_prose() {
        let v = values(&[
            ("col", json!("bill \"len\"")),
            ("q", json!(0.9)),
            ("on", json!(true)),
        ]);
        assert_eq!(
            fill("df[${col}].quantile(${q}) if ${on}", &v, true).unwrap(),
            r#"df["bill \"len\""].quantile(0.9) if True"#
        );
        assert_eq!(
            fill("the ${q} quantile of ${col}", &v, false).unwrap(),
            "the 0.9 quantile of bill \"len\""
        );
        assert!(fill("${nope}", &v, true).is_err());
        assert!(fill("${col", &v, true).is_err());
        assert_eq!(
            fill("f'{x}' and {a: 1}", &v, true).unwrap(),
            "f'{x}' and {a: 1}"
        );
    }

    #[test]
    fn the_catalog_loads_and_covers_every_difficulty() {
        let catalog = catalog().expect("every template file is valid");
        assert!(
            catalog.len() >= 32,
            "{} templates, the issue asks for 32",
            catalog.len()
        );
        for d in Difficulty::ALL {
            assert!(
                catalog.iter().any(|t| t.difficulty == d),
                "no {d:?} template"
            );
        }
        let names: BTreeSet<_> = catalog.iter().map(|t| &t.name).collect();
        assert_eq!(names.len(), catalog.len());
    }

    #[test]
    fn invalid_templates_are_refused_with_the_reason() {
        let base = r#"
name = "t"
description = "d"
difficulty = "EASY"
n_steps = 1
question = "q ${x}"
hint = "h"
output_type = "scalar"
output_schema = "number"
[slots]
x = { kind = "numeric" }
[[steps]]
reasoning = "r"
code = "submit(df[${x}].mean())"
[[alternatives]]
name = "a"
reasoning = "r"
code = "submit(df[${x}].sum() / df[${x}].count())"
"#;
        assert!(Template::parse("t", base).is_ok());
        let err = |text: &str| Template::parse("t", text).unwrap_err().to_string();
        assert!(err(&base.replace("n_steps = 1", "n_steps = 2")).contains("n_steps"));
        assert!(err(&base.replace("q ${x}", "q ${y}")).contains("unknown placeholder"));
        assert!(err(&base.replace("\"EASY\"", "\"TRIVIAL\"")).contains("TRIVIAL"));
        assert!(Template::parse("other", base)
            .unwrap_err()
            .to_string()
            .contains("differs from the file name"));
        assert!(
            err(&base.replace("code = \"submit(df[${x}].mean())\"", "code = \"df.mean()\""))
                .contains("submit")
        );
    }

    fn profile() -> DataProfile {
        let col = |name: &str, kind: ColumnKind, card: u64, min: Option<f64>| ColumnProfile {
            name: name.into(),
            dtype: "float64".into(),
            kind,
            missing: 0,
            missing_share: 0.0,
            cardinality: card,
            target_ok: kind != ColumnKind::IdLike,
            min,
            max: None,
            min_level_count: None,
            date_format: None,
            date_format_name: None,
            date_parsed_share: None,
        };
        DataProfile {
            rows: 100,
            columns: 4,
            overview: String::new(),
            column_profiles: vec![
                col("id", ColumnKind::IdLike, 100, Some(1.0)),
                col("a", ColumnKind::Numeric, 50, Some(-1.0)),
                col("b", ColumnKind::Numeric, 50, Some(2.0)),
                col("g", ColumnKind::Categorical, 3, None),
            ],
        }
    }

    fn named(name: &str) -> Template {
        catalog()
            .expect("catalog")
            .into_iter()
            .find(|t| t.name == name)
            .expect("template")
    }

    #[test]
    fn a_column_set_decides_eligibility_and_is_listed_in_the_text() {
        let t = named("most_skewed_column");
        // No numeric column has 10 distinct values: no question at all
        // (the program would take the argmax of an empty sequence).
        let mut p = profile();
        for c in &mut p.column_profiles {
            c.cardinality = 5;
        }
        assert!(t.instantiate(&p, "demo", "abc").is_empty());
        let qs = t.instantiate(&profile(), "demo", "abc");
        assert_eq!(qs.len(), 1);
        // `id` is id-like: never listed, never in the code.
        assert!(
            qs[0].question_text.contains(r#"["a", "b"]"#),
            "{}",
            qs[0].question_text
        );
        let code = &qs[0].programs.as_ref().unwrap().reference[0].code;
        assert!(code.contains(r#"df[["a", "b"]]"#), "{code}");
    }

    #[test]
    fn the_bootstrap_binds_only_where_its_index_matrix_fits() {
        let t = named("bootstrap_mean_ci");
        assert_eq!(t.cost.bytes_per_row, 16_000);
        let mut p = profile();
        assert_eq!(t.instantiate(&p, "demo", "abc").len(), 2);
        // 4 000 000 rows need 64 GB of index matrix: no question at 1 GiB,
        // nor at 16 GiB.
        p.rows = 4_000_000;
        assert!(t.instantiate(&p, "demo", "abc").is_empty());
        assert!(t.instantiate_within(&p, "demo", "abc", 16 << 30).is_empty());
        // 40 000 rows: too many for 1 GiB (640 MB > 512 MiB), fine at 2 GiB.
        p.rows = 40_000;
        assert!(t.instantiate(&p, "demo", "abc").is_empty());
        assert_eq!(t.instantiate_within(&p, "demo", "abc", 2 << 30).len(), 2);
        assert!(Cost { bytes_per_row: 0 }.fits(u64::MAX, 1));
    }

    #[test]
    fn date_slots_bind_only_columns_with_a_format_and_state_it() {
        let t = named("monthly_peak");
        let mut p = profile();
        p.column_profiles.push(ColumnProfile {
            name: "when".into(),
            dtype: "str".into(),
            kind: ColumnKind::Datetime,
            missing: 0,
            missing_share: 0.0,
            cardinality: 90,
            target_ok: true,
            min: None,
            max: None,
            min_level_count: None,
            date_format: None,
            date_format_name: None,
            date_parsed_share: None,
        });
        assert!(t.instantiate(&p, "demo", "abc").is_empty());
        let when = p.column_profiles.last_mut().unwrap();
        when.date_format = Some("%d-%m-%Y".into());
        when.date_format_name = Some("day first, DD-MM-YYYY".into());
        let qs = t.instantiate(&p, "demo", "abc");
        assert!(!qs.is_empty());
        assert!(qs[0]
            .question_text
            .contains("in the format %d-%m-%Y (day first, DD-MM-YYYY;"));
        let code = &qs[0].programs.as_ref().unwrap().reference[0].code;
        assert!(code.contains(r#""%d-%m-%Y""#), "{code}");
    }

    #[test]
    fn bindings_respect_constraints_and_are_stable() {
        let text = r#"
name = "t"
description = "d"
difficulty = "MEDIUM"
n_steps = 1
question = "${x} by ${g} at ${q}"
hint = "h"
output_type = "scalar"
output_schema = "number"
max_bindings = 5
[slots]
x = { kind = "numeric", positive = true }
g = { kind = "categorical", max_levels = 5 }
[[params]]
q = 0.5
[[params]]
q = 0.9
[[steps]]
reasoning = "r"
code = "submit(df.groupby(${g})[${x}].quantile(${q}).max())"
[[alternatives]]
name = "a"
reasoning = "r"
code = "submit(0)"
"#;
        let t = Template::parse("t", text).unwrap();
        let qs = t.instantiate(&profile(), "demo", "abc");
        // Only b is positive; id is never bound; one binding x two params.
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].question_text, "b by g at 0.5");
        assert!(qs[0].programs.as_ref().unwrap().reference[0]
            .code
            .contains(r#"groupby("g")["b"]"#));
        let again = t.instantiate(&profile(), "demo", "abc");
        assert_eq!(qs, again);
        assert_ne!(qs[0].id, qs[1].id);
        // Another dataset content is another question.
        assert_ne!(t.instantiate(&profile(), "demo", "abd")[0].id, qs[0].id);
    }
}
