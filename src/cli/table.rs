//! Plain text tables whose columns are as wide as their content (comfy-table,
//! no borders), for the terminal and for logs alike.

use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

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
}
