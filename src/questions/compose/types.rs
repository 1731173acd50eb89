//! The types of the grammar and the checker. A chain is well typed when
//! it starts from the dataset (a table), each operator's input is the
//! previous output, every column bound has the kind its slot asks for (read
//! from the profile), what an operator needs of its input holds (labels to
//! rank, a p-value to compare), a multi-hop step binds the column its input
//! came from, and the last output is an answer (scalar, label, list,
//! mapping or boolean). In a linear chain every intermediate is the next
//! step's input, so there is no dead code by construction.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::operator::{IndexRule, KeyRule, Operator};
use crate::profile::DataProfile;

/// Shortest and longest chains.
pub const MIN_STEPS: usize = 2;
pub const MAX_STEPS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ty {
    Table,
    NumericColumn,
    CategoricalColumn,
    DatetimeColumn,
    TextColumn,
    Grouped,
    Series,
    Scalar,
    Label,
    List,
    Mapping,
    Boolean,
}

impl Ty {
    pub fn is_column(self) -> bool {
        matches!(
            self,
            Ty::NumericColumn | Ty::CategoricalColumn | Ty::DatetimeColumn | Ty::TextColumn
        )
    }

    /// A type a question may submit.
    pub fn is_answer(self) -> bool {
        matches!(
            self,
            Ty::Scalar | Ty::Label | Ty::List | Ty::Mapping | Ty::Boolean
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ty::Table => "table",
            Ty::NumericColumn => "numeric column",
            Ty::CategoricalColumn => "categorical column",
            Ty::DatetimeColumn => "datetime column",
            Ty::TextColumn => "text column",
            Ty::Grouped => "grouped table",
            Ty::Series => "series",
            Ty::Scalar => "scalar",
            Ty::Label => "label",
            Ty::List => "list",
            Ty::Mapping => "mapping",
            Ty::Boolean => "boolean",
        }
    }
}

/// A value flowing between steps: its type and what the checker knows of
/// it (the column its labels and its numbers come from).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub ty: Ty,
    /// Labels that name something (group values, years, cells), not row
    /// positions; with the column they come from, if one.
    pub keyed: bool,
    pub index_column: Option<String>,
    pub value_column: Option<String>,
    pub produced: Option<String>,
}

impl Value {
    pub fn dataset() -> Value {
        Value {
            ty: Ty::Table,
            keyed: false,
            index_column: None,
            value_column: None,
            produced: None,
        }
    }
}

/// One step: an operator, its column bindings (slot -> column) and its
/// parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<'a> {
    pub op: &'a Operator,
    pub columns: BTreeMap<String, String>,
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TypeError {
    #[error("a chain has {0} steps; it must have 2 to 8")]
    Length(usize),
    #[error("step {step} ({op}) takes a {expected} but receives a {found}")]
    Input {
        step: usize,
        op: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("step {step} ({op}): slot {slot} is not bound to a column that fits it")]
    Slot {
        step: usize,
        op: String,
        slot: String,
    },
    #[error("step {step} ({op}) needs {needs} input")]
    Needs {
        step: usize,
        op: String,
        needs: String,
    },
    #[error("step {step} ({op}) must bind the column its input came from")]
    Key { step: usize, op: String },
    #[error("the chain ends in a {0}, which is not an answer")]
    NotAnswer(&'static str),
}

/// What `op` needs of its input, including the rule that ranking and
/// reporting labels needs labels that name something.
fn needs_of(op: &Operator) -> Option<&str> {
    if op.input == Ty::Series && matches!(op.output, Ty::Label | Ty::List | Ty::Mapping) {
        return Some("keyed");
    }
    op.needs.as_deref()
}

/// Whether `op` accepts `input` (type and needs), before any binding.
pub fn accepts(op: &Operator, input: &Value) -> bool {
    if op.input != input.ty {
        return false;
    }
    // Ranks say something only through their labels: any statistic of
    // 1..n is fixed by n.
    if input.produced.as_deref() == Some("ranks")
        && !matches!(op.output, Ty::Label | Ty::List | Ty::Mapping)
    {
        return false;
    }
    match needs_of(op) {
        Some("keyed") | Some("small") => input.keyed,
        Some("pvalue") => input.produced.as_deref() == Some("pvalue"),
        Some("signed") => input.produced.as_deref() == Some("signed"),
        Some(_) => false,
        None => match op.key {
            Some(KeyRule::Index) => input.index_column.is_some(),
            Some(KeyRule::Value) => input.value_column.is_some(),
            None => true,
        },
    }
}

/// The value `op` gives from `input` under `columns`.
pub fn output(op: &Operator, input: &Value, columns: &BTreeMap<String, String>) -> Value {
    let (keyed, index_column) = match &op.index {
        IndexRule::Positional => (false, None),
        IndexRule::Made => (true, None),
        IndexRule::Keep => (input.keyed, input.index_column.clone()),
        IndexRule::Slot(s) => (true, columns.get(s).cloned()),
    };
    let value_column = match op.value.as_deref() {
        None => None,
        Some("keep") => input.value_column.clone(),
        Some(slot) => columns.get(slot).cloned(),
    };
    Value {
        ty: op.output,
        keyed,
        index_column,
        value_column,
        produced: op.produces.clone(),
    }
}

/// Check a whole chain against the profile.
pub fn check(steps: &[Step<'_>], profile: &DataProfile) -> Result<Value, TypeError> {
    if !(MIN_STEPS..=MAX_STEPS).contains(&steps.len()) {
        return Err(TypeError::Length(steps.len()));
    }
    let mut current = Value::dataset();
    for (i, step) in steps.iter().enumerate() {
        let op = step.op;
        let n = i + 1;
        if op.input != current.ty {
            return Err(TypeError::Input {
                step: n,
                op: op.name.clone(),
                expected: op.input.as_str(),
                found: current.ty.as_str(),
            });
        }
        if !accepts(op, &current) {
            return Err(match op.key {
                Some(_) if needs_of(op).is_none() => TypeError::Key {
                    step: n,
                    op: op.name.clone(),
                },
                _ => TypeError::Needs {
                    step: n,
                    op: op.name.clone(),
                    needs: needs_of(op).unwrap_or("a keyed").to_string(),
                },
            });
        }
        for (slot, spec) in &op.slots {
            let fits = step.columns.get(slot).and_then(|c| {
                profile
                    .column_profiles
                    .iter()
                    .find(|p| &p.name == c)
                    .filter(|p| spec.accepts(p))
            });
            let own_key = current.ty == Ty::Grouped
                && current.index_column.as_ref() == step.columns.get(slot);
            if fits.is_none() || own_key {
                return Err(TypeError::Slot {
                    step: n,
                    op: op.name.clone(),
                    slot: slot.clone(),
                });
            }
            if let Some(rule) = op.key {
                let from = match rule {
                    KeyRule::Index => &current.index_column,
                    KeyRule::Value => &current.value_column,
                };
                if from.as_ref() != step.columns.get(slot) {
                    return Err(TypeError::Key {
                        step: n,
                        op: op.name.clone(),
                    });
                }
            }
        }
        current = output(op, &current, &step.columns);
    }
    if !current.ty.is_answer() {
        return Err(TypeError::NotAnswer(current.ty.as_str()));
    }
    Ok(current)
}
