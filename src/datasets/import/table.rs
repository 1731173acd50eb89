//! A decoded table (from a workbook, Parquet, JSON or SQLite) and the typed
//! store it becomes: `data.sqlite`, one table `data` whose declared column
//! types the zygote turns back into pandas dtypes (`load_typed` in
//! sandbox-image/zygote.py):
//!
//! | declared    | pandas dtype                                     |
//! |-------------|--------------------------------------------------|
//! | `INTEGER`   | `int64`, or `Int64` when a value is missing      |
//! | `REAL`      | `float64`                                        |
//! | `BOOLEAN`   | `bool`, or `boolean` when a value is missing     |
//! | `DATE`      | `datetime64` (stored as `YYYY-MM-DD`)            |
//! | `TIMESTAMP` | `datetime64` (stored as ISO 8601 text)           |
//! | `TEXT`      | `str`                                            |
//!
//! A column's type is the narrowest that holds every value it has; a
//! column that mixes kinds (numbers and words) becomes text, as pandas
//! would make it `object`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ImportError;

/// The one table of a typed store.
pub const TABLE: &str = "data";

/// One cell as decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(String),
    /// `YYYY-MM-DD`.
    Date(String),
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]` with an optional `Z`/offset.
    Timestamp(String),
}

/// A column type of the typed store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Integer,
    Real,
    Boolean,
    Date,
    Timestamp,
    Text,
}

impl ColumnType {
    fn declared(self) -> &'static str {
        match self {
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Date => "DATE",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Text => "TEXT",
        }
    }
}

/// A column and the type it was stored with (recorded in meta.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

/// How to read what a source calls text or numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inference {
    /// Text columns whose every value is an ISO 8601 date (or date and
    /// time) become dates: for sources without a date type (JSON, SQLite).
    pub iso_text_dates: bool,
    /// Whole floats count as integers: spreadsheets store every number as
    /// a float, so a column of counts would otherwise turn into floats.
    pub whole_floats_are_ints: bool,
}

/// A table being decoded: names and rows of cells.
#[derive(Debug, Default)]
pub struct Table {
    pub names: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(names: Vec<String>) -> Table {
        Table {
            names: dedupe_names(names),
            rows: Vec::new(),
        }
    }

    /// Append a row, padded or cut to the width of the header.
    pub fn push(&mut self, mut row: Vec<Value>) {
        row.resize(self.names.len(), Value::Null);
        self.rows.push(row);
    }

    /// Write `<path>` as a typed store; the types chosen per column.
    pub fn write_sqlite(
        mut self,
        path: &Path,
        inference: Inference,
    ) -> Result<Vec<StoredColumn>, ImportError> {
        let types: Vec<ColumnType> = (0..self.names.len())
            .map(|c| infer(self.rows.iter().map(|r| &r[c]), inference))
            .collect();
        let io_err = |e: rusqlite::Error| ImportError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut conn = rusqlite::Connection::open(path).map_err(io_err)?;
        let columns: Vec<String> = self
            .names
            .iter()
            .zip(&types)
            .map(|(n, t)| format!("{} {}", quote(n), t.declared()))
            .collect();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; CREATE TABLE {TABLE} ({});",
            columns.join(", ")
        ))
        .map_err(io_err)?;
        let tx = conn.transaction().map_err(io_err)?;
        {
            let marks = vec!["?"; self.names.len()].join(", ");
            let mut insert = tx
                .prepare(&format!("INSERT INTO {TABLE} VALUES ({marks})"))
                .map_err(io_err)?;
            for row in self.rows.drain(..) {
                let cells: Vec<rusqlite::types::Value> = row
                    .into_iter()
                    .zip(&types)
                    .map(|(v, t)| stored(v, *t, inference))
                    .collect();
                insert
                    .execute(rusqlite::params_from_iter(cells))
                    .map_err(io_err)?;
            }
        }
        tx.commit().map_err(io_err)?;
        conn.close().map_err(|(_, e)| io_err(e))?;
        Ok(self
            .names
            .into_iter()
            .zip(types)
            .map(|(name, kind)| StoredColumn { name, kind })
            .collect())
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Empty names become `Unnamed: i` and repeated ones `name.1`, `name.2`, as
/// pandas names them when it reads a CSV; SQLite refuses duplicates anyway.
fn dedupe_names(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let base = if name.trim().is_empty() {
            format!("Unnamed: {i}")
        } else {
            name
        };
        let mut candidate = base.clone();
        let mut n = 1;
        while !seen.insert(candidate.to_lowercase()) {
            candidate = format!("{base}.{n}");
            n += 1;
        }
        out.push(candidate);
    }
    out
}

fn whole(x: f64) -> bool {
    x.is_finite() && x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0
}

fn infer<'a>(values: impl Iterator<Item = &'a Value>, inference: Inference) -> ColumnType {
    let (mut ints, mut reals, mut bools, mut dates, mut stamps, mut texts) =
        (false, false, false, false, false, false);
    let (mut iso_dates, mut other_text, mut zoned, mut naive) = (true, false, false, false);
    let mut any = false;
    for v in values {
        match v {
            Value::Null => continue,
            Value::Int(_) => ints = true,
            Value::Real(x) if inference.whole_floats_are_ints && whole(*x) => ints = true,
            Value::Real(_) => reals = true,
            Value::Bool(_) => bools = true,
            Value::Date(_) => dates = true,
            Value::Timestamp(_) => stamps = true,
            Value::Text(s) => {
                texts = true;
                match iso_kind(s) {
                    Some(Iso::Date) => {}
                    Some(Iso::Timestamp { zone }) => {
                        iso_dates = false;
                        if zone {
                            zoned = true
                        } else {
                            naive = true
                        }
                    }
                    None => other_text = true,
                }
            }
        }
        any = true;
    }
    if !any {
        return ColumnType::Text;
    }
    let kinds = [ints || reals, bools, dates || stamps, texts]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds > 1 {
        return ColumnType::Text;
    }
    if texts {
        // pandas cannot hold naive and zoned times in one column.
        if inference.iso_text_dates && !other_text && !(zoned && naive) {
            return if iso_dates {
                ColumnType::Date
            } else {
                ColumnType::Timestamp
            };
        }
        return ColumnType::Text;
    }
    if bools {
        ColumnType::Boolean
    } else if stamps {
        ColumnType::Timestamp
    } else if dates {
        ColumnType::Date
    } else if reals {
        ColumnType::Real
    } else {
        ColumnType::Integer
    }
}

fn stored(v: Value, t: ColumnType, inference: Inference) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match (v, t) {
        (Value::Null, _) => S::Null,
        (Value::Real(x), _) if x.is_nan() => S::Null,
        (Value::Int(i), ColumnType::Integer) => S::Integer(i),
        (Value::Real(x), ColumnType::Integer) if inference.whole_floats_are_ints => {
            S::Integer(x as i64)
        }
        (Value::Int(i), ColumnType::Real) => S::Real(i as f64),
        (Value::Real(x), ColumnType::Real) => S::Real(x),
        (Value::Bool(b), ColumnType::Boolean) => S::Integer(i64::from(b)),
        (Value::Date(d), ColumnType::Timestamp) => S::Text(format!("{d} 00:00:00")),
        (Value::Date(s) | Value::Timestamp(s) | Value::Text(s), _) => S::Text(s),
        (Value::Int(i), _) => S::Text(i.to_string()),
        (Value::Real(x), _) => S::Text(x.to_string()),
        (Value::Bool(b), _) => S::Text(if b { "True" } else { "False" }.to_string()),
    }
}

enum Iso {
    Date,
    Timestamp { zone: bool },
}

/// `YYYY-MM-DD`, or that followed by `T`/space, `HH:MM[:SS[.f…]]` and an
/// optional `Z` or `±HH:MM` (what pandas' `format="ISO8601"` reads).
fn iso_kind(s: &str) -> Option<Iso> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 10
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
    {
        return None;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if b.len() == 10 {
        return Some(Iso::Date);
    }
    if !matches!(b[10], b'T' | b' ')
        || b.len() < 16
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
    {
        return None;
    }
    let mut i = 16;
    if b.get(i) == Some(&b':') {
        if !digits(i + 1..i + 3) {
            return None;
        }
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
    }
    match &b[i..] {
        [] => Some(Iso::Timestamp { zone: false }),
        [b'Z'] => Some(Iso::Timestamp { zone: true }),
        [b'+' | b'-', h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) =>
        {
            Some(Iso::Timestamp { zone: true })
        }
        _ => None,
    }
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (proleptic Gregorian).
pub fn date_from_days(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` of microseconds since 1970-01-01 00:00.
pub fn timestamp_from_micros(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    let (secs, frac) = (rest / 1_000_000, rest % 1_000_000);
    let time = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        format!("{} {time}", date_from_days(days))
    } else {
        format!("{} {time}.{frac:06}", date_from_days(days))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    #[test]
    fn column_types_are_the_narrowest_that_hold_every_value() {
        let plain = Inference::default();
        let dates = Inference {
            iso_text_dates: true,
            ..plain
        };
        let sheet = Inference {
            whole_floats_are_ints: true,
            ..plain
        };
        let ty = |vs: &[Value], i| infer(vs.iter(), i);
        assert_eq!(
            ty(&[Value::Int(1), Value::Null], plain),
            ColumnType::Integer
        );
        assert_eq!(
            ty(&[Value::Int(1), Value::Real(1.5)], plain),
            ColumnType::Real
        );
        assert_eq!(
            ty(&[Value::Real(1.0), Value::Real(2.0)], plain),
            ColumnType::Real
        );
        assert_eq!(
            ty(&[Value::Real(1.0), Value::Null], sheet),
            ColumnType::Integer
        );
        assert_eq!(ty(&[Value::Int(1), t("x")], plain), ColumnType::Text);
        assert_eq!(ty(&[t("2024-01-02"), Value::Null], dates), ColumnType::Date);
        assert_eq!(ty(&[t("2024-01-02")], plain), ColumnType::Text);
        assert_eq!(
            ty(&[t("2024-01-02"), t("2024-01-02T10:00:00")], dates),
            ColumnType::Timestamp
        );
        assert_eq!(
            ty(&[t("2024-01-02 10:00Z"), t("2024-01-02T10:00:00")], dates),
            ColumnType::Text
        );
        assert_eq!(ty(&[t("2024-13-02")], dates), ColumnType::Text);
        assert_eq!(
            ty(&[Value::Bool(true), Value::Null], plain),
            ColumnType::Boolean
        );
        assert_eq!(ty(&[Value::Null], plain), ColumnType::Text);
    }

    #[test]
    fn names_like_pandas() {
        let names = dedupe_names(vec!["a".into(), "".into(), "a".into(), "A".into()]);
        // SQLite compares column names without case: `A` repeats `a`.
        assert_eq!(names, ["a", "Unnamed: 1", "a.1", "A.2"]);
    }

    #[test]
    fn calendar() {
        assert_eq!(date_from_days(0), "1970-01-01");
        assert_eq!(date_from_days(19_723), "2024-01-01");
        assert_eq!(date_from_days(-1), "1969-12-31");
        assert_eq!(
            timestamp_from_micros(1_500_000),
            "1970-01-01 00:00:01.500000"
        );
        assert_eq!(
            timestamp_from_micros(86_400_000_000 + 3_661_000_000),
            "1970-01-02 01:01:01"
        );
    }
}
