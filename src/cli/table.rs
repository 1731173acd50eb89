//! Plain text tables whose columns are as wide as their content (comfy-table,
//! no borders), for the terminal and for logs alike.

use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

use crate::pipeline::RunSummary;

/// A table with these headers: no borders, never wrapped (a long slug or
/// template name widens its column instead of breaking the line).
pub fn new(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Right-align the numeric columns `columns` (0-based).
pub fn align_right(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// The rendered lines, without the padding that ends each one.
pub fn lines(table: &Table) -> Vec<String> {
    table.lines().map(|l| l.trim_end().to_string()).collect()
}

/// The run's table (a row per dataset, widths from the data), each
/// dataset's failures and ineligible counts under its row.
pub fn run_summary(summary: &RunSummary, questions_only: bool) -> Vec<String> {
    let mut table = new(&[
        "dataset",
        "questions",
        "verified",
        "disagreements",
        "failures",
        "time (s)",
    ]);
    align_right(&mut table, &[1, 2, 3, 4, 5]);
    let mut below: Vec<Vec<String>> = Vec::new();
    for d in &summary.datasets {
        let mut notes = Vec::new();
        if d.status == crate::store::DatasetStatus::Failed {
            table.add_row(vec![d.dataset.clone(), "FAILED".to_string()]);
            notes.push(format!(
                "    FAILED: {}",
                d.reason.as_deref().unwrap_or("unknown")
            ));
            below.push(notes);
            continue;
        }
        let (verified, disagreements) = if questions_only {
            ("-".to_string(), "-".to_string())
        } else {
            (d.verified.to_string(), d.disagreements.to_string())
        };
        table.add_row(vec![
            d.dataset.clone(),
            d.questions.to_string(),
            verified,
            disagreements,
            d.failures.len().to_string(),
            format!("{:.1}", d.elapsed),
        ]);
        for f in &d.failures {
            notes.push(format!(
                "    failed {} ({}, {}): {}",
                f.question_id,
                f.template.as_deref().unwrap_or("-"),
                f.stage,
                f.reason
            ));
        }
        for (reason, n) in &d.ineligible {
            notes.push(format!("    ineligible ({n}): {reason}"));
        }
        below.push(notes);
    }
    let rendered = lines(&table);
    let mut rows = rendered.into_iter();
    let mut out: Vec<String> = rows.next().into_iter().collect();
    for (line, notes) in rows.zip(below) {
        out.push(line);
        out.extend(notes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_longest_cell() {
        let mut t = new(&["dataset", "questions"]);
        align_right(&mut t, &[1]);
        t.add_row(vec!["a-very-long-dataset-slug-of-40-characters", "3"]);
        t.add_row(vec!["x", "12"]);
        let lines = lines(&t);
        assert_eq!(lines.len(), 3, "{lines:?}");
        // Every line puts the second column at the same place.
        let ends: Vec<usize> = lines.iter().map(|l| l.len()).collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{lines:#?}");
        assert!(lines[1].starts_with("a-very-long-dataset-slug-of-40-characters  "));
    }

    /// Regression: the run's table broke its columns when a slug was longer
    /// than 20 characters.
    #[test]
    fn the_run_table_fits_a_long_slug() {
        let dataset = |slug: &str, status: &str| {
            serde_json::json!({
                "dataset": slug, "status": status, "reason": if status == "failed" { Some("empty") } else { None },
                "questions": 12, "verified": 11, "disagreements": 1, "failures": [],
                "ineligible": {}, "elapsed": 3.25
            })
        };
        let summary: RunSummary = serde_json::from_value(serde_json::json!({
            "teacher": "program", "datasets": [
                dataset("penguins", "done"),
                dataset("kaggle-owner-some-very-long-dataset-name", "done"),
                dataset("broken", "failed"),
            ],
            "episodes": 24, "verified": 22, "elapsed": 9.0
        }))
        .expect("a summary");
        let lines = run_summary(&summary, false);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        let at = lines[0].find("questions").expect("header") + "questions".len();
        for line in &lines[1..3] {
            assert_eq!(&line[at - 2..at], "12", "{lines:#?}");
        }
        assert!(lines[3].starts_with("broken") && lines[4].contains("FAILED: empty"));
    }
}
