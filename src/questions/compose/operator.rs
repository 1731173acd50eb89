//! The operator catalog: every `[[operator]]` of
//! `src/questions/compose/operators/*.toml` (embedded by `build.rs`),
//! parsed and checked when loaded. An operator is data: its pandas code,
//! an alternative through another API, the sentence that says what it
//! does, the columns it binds (with preconditions read from the profile)
//! and its input and output types.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::types::Ty;
use crate::profile::ColumnProfile;
use crate::questions::template::{fill, SlotKind, SlotSpec};

include!(concat!(env!("OUT_DIR"), "/operators.rs"));

/// The 18 task categories every composed question is filed under.
pub const CATEGORIES: [&str; 18] = [
    "filtering",
    "selection",
    "sorting",
    "aggregation",
    "grouped_aggregation",
    "ranking",
    "counting",
    "missing_values",
    "derived_columns",
    "datetime",
    "strings",
    "reshaping",
    "window",
    "correlation",
    "distribution",
    "hypothesis_tests",
    "regression",
    "multi_hop",
];

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("operators file {file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("operator {name} ({file}): {reason}")]
    Invalid {
        file: String,
        name: String,
        reason: String,
    },
}

/// What a column must be to fill an operator's slot: one of several kinds
/// plus the template slot constraints (one truth for "id-like columns never
/// bind", date formats, missing shares: [`SlotSpec::accepts`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSlot {
    pub kinds: Vec<SlotKind>,
    #[serde(default)]
    pub min_levels: Option<u64>,
    #[serde(default)]
    pub max_levels: Option<u64>,
    #[serde(default)]
    pub min_distinct: Option<u64>,
    #[serde(default)]
    pub positive: bool,
    #[serde(default)]
    pub has_missing: bool,
    #[serde(default)]
    pub max_missing_share: Option<f64>,
}

impl ColumnSlot {
    pub fn accepts(&self, column: &ColumnProfile) -> bool {
        self.kinds.iter().any(|&kind| {
            SlotSpec {
                kind,
                min_levels: self.min_levels,
                max_levels: self.max_levels,
                min_distinct: self.min_distinct,
                positive: self.positive,
                has_missing: self.has_missing,
                // A column mostly missing says little; composed questions
                // stay off it unless the operator asks otherwise.
                max_missing_share: self.max_missing_share.or(Some(0.9)),
                min_level_count: None,
            }
            .accepts(column)
        })
    }
}

/// Where the labels of a series (its index) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexRule {
    /// Row positions: not labels a question can name.
    Positional,
    /// The values of the column bound to this slot.
    Slot(String),
    /// Labels made by the operator (years, months, "a | b" cells).
    Made,
    /// As the input's.
    Keep,
}

/// What a multi-hop operator binds from the value it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRule {
    /// The column the input label's values come from.
    Index,
    /// The column the input number was computed from.
    Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorFile {
    operator: Vec<RawOperator>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: String,
    category: String,
    input: Ty,
    output: Ty,
    weight: f64,
    text: String,
    code: String,
    alt: String,
    #[serde(default)]
    slots: BTreeMap<String, ColumnSlot>,
    #[serde(default)]
    params: Vec<Map<String, Value>>,
    #[serde(default)]
    index: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    key: Option<KeyRule>,
    #[serde(default)]
    needs: Option<String>,
    #[serde(default)]
    produces: Option<String>,
    #[serde(default)]
    hook: Option<String>,
}

/// A checked operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub name: String,
    pub category: String,
    pub input: Ty,
    pub output: Ty,
    pub weight: f64,
    pub text: String,
    pub code: String,
    pub alt: String,
    pub slots: BTreeMap<String, ColumnSlot>,
    pub params: Vec<Map<String, Value>>,
    pub index: IndexRule,
    /// The slot whose column the output's values come from (`keep`: the
    /// input's), for a later multi-hop step.
    pub value: Option<String>,
    pub key: Option<KeyRule>,
    /// What the input must be beyond its type: `pvalue`, `signed`
    /// (a number that can be negative), `keyed` (a series with labels).
    pub needs: Option<String>,
    pub produces: Option<String>,
    pub hook: Option<String>,
}

const NEEDS: [&str; 4] = ["pvalue", "signed", "keyed", "small"];

impl Operator {
    /// Whether an operator removed from a chain leaves it well typed (a
    /// table -> table filter, a series -> series transform): the steps the
    /// dead-step guard tries without.
    pub fn removable(&self) -> bool {
        self.input == self.output && self.key.is_none()
    }

    fn check(raw: RawOperator, file: &str) -> Result<Operator, OperatorError> {
        let invalid = |reason: String| OperatorError::Invalid {
            file: file.to_string(),
            name: raw.name.clone(),
            reason,
        };
        if !CATEGORIES.contains(&raw.category.as_str()) {
            return Err(invalid(format!(
                "category `{}` is not one of {CATEGORIES:?}",
                raw.category
            )));
        }
        if raw.input.is_column() || raw.output.is_column() {
            return Err(invalid(
                "columns are bound through slots, never passed between steps".into(),
            ));
        }
        if !(raw.weight > 0.0 && raw.weight <= 5.0) {
            return Err(invalid(format!("weight {} is not in (0, 5]", raw.weight)));
        }
        for code in [&raw.code, &raw.alt] {
            if !code.contains("$OUT") {
                return Err(invalid("code and alt must assign $OUT".into()));
            }
            if raw.input != Ty::Table && !code.contains("$IN") {
                return Err(invalid("code and alt must use $IN".into()));
            }
            if code.contains("submit(") || code.contains("hook(") {
                return Err(invalid(
                    "code never calls submit() or hook(): the chain adds them".into(),
                ));
            }
        }
        if raw.code.trim() == raw.alt.trim() {
            return Err(invalid("alt must compute the result another way".into()));
        }
        if let Some(n) = &raw.needs {
            if !NEEDS.contains(&n.as_str()) {
                return Err(invalid(format!("needs `{n}` is not one of {NEEDS:?}")));
            }
        }
        let slot_or_rule = |v: &Option<String>, what: &str, extra: &[&str]| match v.as_deref() {
            None => Ok(()),
            Some(s) if extra.contains(&s) || raw.slots.contains_key(s) => Ok(()),
            Some(s) => Err(invalid(format!(
                "{what} `{s}` is neither a slot nor {extra:?}"
            ))),
        };
        slot_or_rule(&raw.index, "index", &["keep", "none"])?;
        slot_or_rule(&raw.value, "value", &["keep"])?;
        match raw.key {
            Some(_) if raw.slots.len() != 1 => {
                return Err(invalid(
                    "a multi-hop operator binds exactly one slot, from its input".into(),
                ))
            }
            Some(_) if raw.output != Ty::Table => {
                return Err(invalid("a multi-hop operator gives a table".into()))
            }
            _ => {}
        }
        // Every placeholder resolves, with the same keys in every params set.
        let keys: BTreeSet<&String> = raw
            .params
            .first()
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        if raw
            .params
            .iter()
            .any(|p| p.keys().collect::<BTreeSet<_>>() != keys)
        {
            return Err(invalid("every params set must name the same keys".into()));
        }
        let mut known: BTreeMap<String, Value> = keys
            .iter()
            .map(|k| ((*k).clone(), Value::from(1)))
            .collect();
        for (slot, spec) in &raw.slots {
            known.insert(slot.clone(), Value::from("c"));
            if spec.kinds.contains(&SlotKind::Datetime) {
                known.insert(format!("{slot}_format"), Value::from("%Y"));
                known.insert(format!("{slot}_format_name"), Value::from("y"));
            }
        }
        for (text, code) in [(&raw.text, false), (&raw.code, true), (&raw.alt, true)] {
            fill(text, &known, code).map_err(invalid)?;
        }
        let index = match raw.index.as_deref() {
            None => IndexRule::Positional,
            Some("keep") => IndexRule::Keep,
            Some("none") => IndexRule::Made,
            Some(slot) => IndexRule::Slot(slot.to_string()),
        };
        Ok(Operator {
            index,
            name: raw.name,
            category: raw.category,
            input: raw.input,
            output: raw.output,
            weight: raw.weight,
            text: raw.text,
            code: raw.code,
            alt: raw.alt,
            slots: raw.slots,
            params: raw.params,
            value: raw.value,
            key: raw.key,
            needs: raw.needs,
            produces: raw.produces,
            hook: raw.hook,
        })
    }
}

/// Parse and check operators files (`(stem, text)` pairs).
pub fn parse_files<'a>(
    files: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Operator>, OperatorError> {
    let mut all: Vec<Operator> = Vec::new();
    for (file, text) in files {
        let parsed: OperatorFile = toml::from_str(text).map_err(|source| OperatorError::Parse {
            file: file.to_string(),
            source,
        })?;
        for raw in parsed.operator {
            let op = Operator::check(raw, file)?;
            if all.iter().any(|o| o.name == op.name) {
                return Err(OperatorError::Invalid {
                    file: file.to_string(),
                    name: op.name,
                    reason: "another operator has this name".into(),
                });
            }
            all.push(op);
        }
    }
    Ok(all)
}

/// The embedded operators, checked, in file then declaration order.
pub fn operators() -> Result<Vec<Operator>, OperatorError> {
    parse_files(OPERATOR_FILES.iter().map(|(f, t)| (*f, *t)))
}

/// A hash of every embedded operators file (part of the questions key).
pub fn operators_hash() -> String {
    let mut all = String::new();
    for (f, t) in OPERATOR_FILES {
        all.push_str(f);
        all.push('\0');
        all.push_str(t);
        all.push('\0');
    }
    crate::questions::template::short_hash(&all)
}
