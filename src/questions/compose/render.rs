//! From a checked chain to what a question needs: the text (every step's
//! sentence, numbered, and how to report the answer), the reference
//! program (one step per operator, each hooking its intermediate result,
//! the last one submitting), the alternative (every operator through its
//! other API) and the screening function the guards run.

use std::collections::BTreeMap;

use serde_json::Value;

use super::types::{Step, Ty};
use crate::questions::template::fill;
use crate::schema::{AlternativeProgram, ProgramStep, Programs};

/// How each answer type is turned into JSON by every program, and what the
/// question says about it.
fn final_expr(ty: Ty, var: &str) -> String {
    match ty {
        Ty::Scalar => format!("round(float({var}), 4)"),
        Ty::Label => format!(
            "(str(int({var})) if isinstance({var}, (float, np.floating)) and float({var}).is_integer() else str({var}))"
        ),
        Ty::List => format!("[str(_v) for _v in {var}]"),
        Ty::Mapping => format!("{{str(_k): round(float(_v), 4) for _k, _v in {var}.items()}}"),
        _ => format!("bool({var})"),
    }
}

fn answer_sentence(ty: Ty) -> &'static str {
    match ty {
        Ty::Scalar => "Report the final number rounded to 4 decimal places.",
        Ty::Label => "Report that value as text (a number with no fractional part is written without decimals).",
        Ty::List => "Report the list, in the order described.",
        Ty::Mapping => {
            "Report a mapping from each label (as text) to its value rounded to 4 decimal places."
        }
        _ => "Report true or false.",
    }
}

fn values_of(step: &Step<'_>, profile: &crate::profile::DataProfile) -> BTreeMap<String, Value> {
    let mut values: BTreeMap<String, Value> = step
        .columns
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    for (slot, column) in &step.columns {
        if let Some(c) = profile.column_profiles.iter().find(|c| &c.name == column) {
            if let (Some(f), Some(n)) = (&c.date_format, &c.date_format_name) {
                values.insert(format!("{slot}_format"), Value::from(f.as_str()));
                values.insert(format!("{slot}_format_name"), Value::from(n.as_str()));
            }
        }
    }
    values.extend(step.params.iter().map(|(k, v)| (k.clone(), v.clone())));
    values
}

/// A step's sentence, filled.
pub fn sentence(step: &Step<'_>, profile: &crate::profile::DataProfile) -> Result<String, String> {
    fill(&step.op.text, &values_of(step, profile), false)
}

fn var(i: usize) -> String {
    format!("r{}", i + 1)
}

/// A step's code with `$IN`/`$OUT` bound to the chain's variables.
fn code_of(
    step: &Step<'_>,
    i: usize,
    alt: bool,
    profile: &crate::profile::DataProfile,
) -> Result<String, String> {
    let body = if alt { &step.op.alt } else { &step.op.code };
    let input = if i == 0 { "df".to_string() } else { var(i - 1) };
    // A filter on the dataset itself copies nothing; `df` is never changed
    // because every operator builds a new object.
    let text = body.replace("$IN", &input).replace("$OUT", &var(i));
    Ok(fill(&text, &values_of(step, profile), true)?
        .trim()
        .to_string())
}

fn hook_expr(step: &Step<'_>, v: &str) -> String {
    if let Some(h) = &step.op.hook {
        return h.replace("$OUT", v);
    }
    match step.op.output {
        Ty::Table => format!("[int({v}.shape[0]), int({v}.shape[1])]"),
        Ty::Series => format!("{v}.head(20)"),
        _ => v.to_string(),
    }
}

/// The question text: the dataset, every step numbered, the answer format.
pub fn question_text(
    steps: &[Step<'_>],
    profile: &crate::profile::DataProfile,
    answer: Ty,
) -> Result<String, String> {
    let mut text = format!(
        "Start from the whole dataset as loaded ({} rows); these are the current rows. Step by step:",
        profile.rows
    );
    for (i, step) in steps.iter().enumerate() {
        let s = sentence(step, profile)?;
        let lead = if i == 0 {
            ""
        } else {
            "from the result of the previous step, "
        };
        text.push_str(&format!(" ({}) {lead}{s}.", i + 1));
    }
    text.push(' ');
    text.push_str(answer_sentence(answer));
    Ok(text)
}

/// Reference steps (one per operator, with a hook on each intermediate)
/// and the alternative program.
pub fn programs(
    steps: &[Step<'_>],
    profile: &crate::profile::DataProfile,
    answer: Ty,
) -> Result<Programs, String> {
    let mut reference = Vec::new();
    let mut alt_code = String::new();
    let last = steps.len() - 1;
    for (i, step) in steps.iter().enumerate() {
        let code = code_of(step, i, false, profile)?;
        let v = var(i);
        let first_line = code.lines().next().unwrap_or("").to_string();
        let depends: Vec<String> = if i == 0 { Vec::new() } else { vec![var(i - 1)] };
        let mut cell = format!(
            "{code}\nhook({}, {}, name={}, description={}, depends_on={})\n",
            hook_expr(step, &v),
            serde_json::to_string(&first_line).map_err(|e| e.to_string())?,
            serde_json::to_string(&v).map_err(|e| e.to_string())?,
            serde_json::to_string(&format!("{}: {}", step.op.name, step.op.output.as_str()))
                .map_err(|e| e.to_string())?,
            serde_json::to_string(&depends).map_err(|e| e.to_string())?,
        );
        if i == last {
            cell.push_str(&format!("submit({})\n", final_expr(answer, &v)));
        }
        reference.push(ProgramStep {
            reasoning: format!("Step {}: {}.", i + 1, sentence(step, profile)?),
            code: cell,
        });
        alt_code.push_str(&code_of(step, i, true, profile)?);
        alt_code.push('\n');
    }
    alt_code.push_str(&format!("submit({})\n", final_expr(answer, &var(last))));
    let names: Vec<&str> = steps.iter().map(|s| s.op.name.as_str()).collect();
    Ok(Programs {
        reference,
        alternatives: vec![AlternativeProgram {
            name: "other_apis".into(),
            reasoning: format!(
                "Compute the same chain ({}) with each step's alternative implementation.",
                names.join(" -> ")
            ),
            code: alt_code,
        }],
    })
}

/// A Python function named `name` that runs the chain (reference code, no
/// hooks) and returns the answer as the programs submit it.
pub fn screening_function(
    name: &str,
    steps: &[Step<'_>],
    profile: &crate::profile::DataProfile,
    answer: Ty,
) -> Result<String, String> {
    let mut body = String::new();
    for (i, step) in steps.iter().enumerate() {
        body.push_str(&code_of(step, i, false, profile)?);
        body.push('\n');
    }
    body.push_str(&format!(
        "return {}\n",
        final_expr(answer, &var(steps.len() - 1))
    ));
    let indented: String = body
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>();
    Ok(format!("def {name}():\n{indented}"))
}
