//! One decoder per typed source, each returning a [`Table`] and how its
//! text and numbers are to be read.

use std::fs;
use std::io::BufRead;
use std::path::Path;

use super::table::{date_from_days, timestamp_from_micros, Inference, Table, Value};
use super::{io, Format, ImportError, ImportOptions, ImportRecord};

pub fn read(
    format: Format,
    path: &Path,
    options: &ImportOptions,
    record: &mut ImportRecord,
) -> Result<(&'static str, Table, Inference), ImportError> {
    match format {
        Format::Xlsx => {
            let (sheet, table) = xlsx(path, options.sheet.as_deref())?;
            record.sheet = Some(sheet);
            let inference = Inference {
                whole_floats_are_ints: true,
                iso_text_dates: false,
            };
            Ok(("xlsx", table, inference))
        }
        Format::Parquet => Ok(("parquet", parquet(path)?, Inference::default())),
        Format::JsonLines | Format::Json => {
            let (name, table) = json(path, format)?;
            let inference = Inference {
                iso_text_dates: true,
                whole_floats_are_ints: false,
            };
            Ok((name, table, inference))
        }
        Format::Sqlite => {
            let (name, table) = sqlite(path, options.table.as_deref())?;
            record.table = Some(name);
            let inference = Inference {
                iso_text_dates: true,
                whole_floats_are_ints: false,
            };
            Ok(("sqlite", table, inference))
        }
        Format::Delimited | Format::Gzip | Format::Zip => {
            unreachable!("read is only called for typed sources")
        }
    }
}

/// pandas' default missing-value markers (`pd.read_csv(na_values=…)`).
const NA: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// One field of delimited text as pandas would read it, and then typed.
fn text_value(field: &str) -> Value {
    if NA.contains(&field) {
        return Value::Null;
    }
    let t = field.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map(Value::Int).unwrap_or_else(|_| {
            t.parse::<f64>()
                .map(Value::Real)
                .unwrap_or(Value::Text(field.to_string()))
        });
    }
    if !t.is_empty()
        && t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        if let Ok(x) = t.parse::<f64>() {
            return Value::Real(x);
        }
    }
    match t {
        "True" | "TRUE" | "true" => Value::Bool(true),
        "False" | "FALSE" | "false" => Value::Bool(false),
        _ => Value::Text(field.to_string()),
    }
}

/// Delimited text decoded with its types (`datasets add --typed`):
/// separator from the header (tab for `.tsv`), UTF-8 else latin-1,
/// pandas' missing-value markers; integers with gaps stay integers and
/// columns of ISO 8601 dates become dates.
pub fn delimited(path: &Path) -> Result<Table, ImportError> {
    let bytes = fs::read(path).map_err(io("reading", path))?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    };
    let header = text.lines().next().unwrap_or("");
    let tsv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv") || e.eq_ignore_ascii_case("tab"));
    let separator = if tsv {
        b'\t'
    } else {
        [b',', b';', b'\t', b'|']
            .into_iter()
            .max_by_key(|c| (header.matches(*c as char).count(), *c == b','))
            .unwrap_or(b',')
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(separator)
        .flexible(true)
        .from_reader(text.as_bytes());
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| corrupt(path, "delimited text", e))?
        .iter()
        .map(str::to_string)
        .collect();
    let width = names.len();
    let mut table = Table::new(names);
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| corrupt(path, "delimited text", e))?;
        if record.len() > width {
            return Err(corrupt(
                path,
                "delimited text",
                format!(
                    "line {} has {} fields, the header {width}",
                    i + 2,
                    record.len()
                ),
            ));
        }
        table.push(record.iter().map(text_value).collect());
    }
    Ok(table)
}

fn corrupt(path: &Path, format: &'static str, reason: impl ToString) -> ImportError {
    ImportError::Corrupt {
        path: path.to_path_buf(),
        format,
        reason: reason.to_string(),
    }
}

/// The first row names the columns; Excel dates become dates (or
/// timestamps when a time of day is set).
fn xlsx(path: &Path, sheet: Option<&str>) -> Result<(String, Table), ImportError> {
    use calamine::{Data, Reader};
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook(path).map_err(|e| corrupt(path, "Excel workbook", e))?;
    let names = book.sheet_names();
    let chosen = match sheet {
        Some(s) => names
            .iter()
            .find(|n| n.as_str() == s)
            .cloned()
            .ok_or_else(|| ImportError::NoSheet {
                path: path.to_path_buf(),
                sheet: s.to_string(),
                available: names.clone(),
            })?,
        None => names
            .first()
            .cloned()
            .ok_or_else(|| corrupt(path, "Excel workbook", "it has no worksheets"))?,
    };
    let range = book
        .worksheet_range(&chosen)
        .map_err(|e| corrupt(path, "Excel workbook", e))?;
    let mut rows = range.rows();
    let empty = || ImportError::EmptySheet {
        path: path.to_path_buf(),
        sheet: chosen.clone(),
        available: names.clone(),
    };
    let header = rows.next().ok_or_else(empty)?;
    if header.iter().all(|c| matches!(c, Data::Empty)) {
        return Err(empty());
    }
    let cell = |c: &Data| -> Value {
        match c {
            Data::Empty | Data::Error(_) => Value::Null,
            Data::Int(i) => Value::Int(*i),
            Data::Float(x) => Value::Real(*x),
            Data::Bool(b) => Value::Bool(*b),
            Data::String(s) if s.trim().is_empty() => Value::Null,
            Data::String(s) => Value::Text(s.clone()),
            Data::DateTime(d) if d.is_duration() => Value::Real(d.as_f64()),
            Data::DateTime(d) => excel_date(d.as_f64()),
            Data::DateTimeIso(s) | Data::DurationIso(s) => Value::Text(s.clone()),
        }
    };
    let names: Vec<String> = header
        .iter()
        .map(|c| match cell(c) {
            Value::Null => String::new(),
            Value::Text(s) | Value::Date(s) | Value::Timestamp(s) => s,
            Value::Int(i) => i.to_string(),
            Value::Real(x) => x.to_string(),
            Value::Bool(b) => b.to_string(),
        })
        .collect();
    let mut table = Table::new(names);
    for row in rows {
        let values: Vec<Value> = row.iter().map(cell).collect();
        // Blank rows under the data (formatting) are not rows.
        if values.iter().all(|v| matches!(v, Value::Null)) {
            continue;
        }
        table.push(values);
    }
    Ok((chosen, table))
}

/// An Excel serial date: days since 1899-12-30, the fraction a time of day.
fn excel_date(serial: f64) -> Value {
    let micros = ((serial - 25_569.0) * 86_400_000_000.0).round();
    if !micros.is_finite() || micros.abs() > 9.0e18 {
        return Value::Real(serial);
    }
    let micros = micros as i64;
    if micros.rem_euclid(86_400_000_000) == 0 {
        Value::Date(date_from_days(micros.div_euclid(86_400_000_000)))
    } else {
        Value::Timestamp(timestamp_from_micros(micros))
    }
}

fn parquet(path: &Path) -> Result<Table, ImportError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = fs::File::open(path).map_err(io("opening", path))?;
    let reader = SerializedFileReader::new(file).map_err(|e| corrupt(path, "Parquet", e))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let fields = schema.root_schema().get_fields();
    // pandas writes its index as a column; it is not data.
    let keep: Vec<bool> = fields
        .iter()
        .map(|f| !f.name().starts_with("__index_level_"))
        .collect();
    let names: Vec<String> = fields
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(f, _)| f.name().to_string())
        .collect();
    let mut table = Table::new(names);
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| corrupt(path, "Parquet", e))?;
    for row in rows {
        let row = row.map_err(|e| corrupt(path, "Parquet", e))?;
        let values = row
            .get_column_iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|((_, field), _)| match field {
                Field::Null => Value::Null,
                Field::Bool(b) => Value::Bool(*b),
                Field::Byte(i) => Value::Int(i64::from(*i)),
                Field::Short(i) => Value::Int(i64::from(*i)),
                Field::Int(i) => Value::Int(i64::from(*i)),
                Field::Long(i) => Value::Int(*i),
                Field::UByte(i) => Value::Int(i64::from(*i)),
                Field::UShort(i) => Value::Int(i64::from(*i)),
                Field::UInt(i) => Value::Int(i64::from(*i)),
                Field::ULong(i) => i64::try_from(*i)
                    .map(Value::Int)
                    .unwrap_or(Value::Real(*i as f64)),
                Field::Float(x) => Value::Real(f64::from(*x)),
                Field::Double(x) => Value::Real(*x),
                Field::Float16(x) => Value::Real(f64::from(*x)),
                Field::Str(s) => Value::Text(s.clone()),
                Field::Date(d) => Value::Date(date_from_days(i64::from(*d))),
                Field::TimestampMillis(ms) => {
                    Value::Timestamp(timestamp_from_micros(ms.saturating_mul(1000)))
                }
                Field::TimestampMicros(us) => Value::Timestamp(timestamp_from_micros(*us)),
                Field::Decimal(_) => field
                    .to_string()
                    .parse::<f64>()
                    .map(Value::Real)
                    .unwrap_or_else(|_| Value::Text(field.to_string())),
                other => Value::Text(other.to_string()),
            })
            .collect();
        table.push(values);
    }
    Ok(table)
}

fn json_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Text(s),
        // Nested values stay readable as their JSON text.
        other => Value::Text(other.to_string()),
    }
}

/// Records: JSON Lines (one object per line) or a JSON array of objects;
/// columns in the order first seen.
fn json(path: &Path, format: Format) -> Result<(&'static str, Table), ImportError> {
    let file = fs::File::open(path).map_err(io("opening", path))?;
    let mut records: Vec<Vec<(String, serde_json::Value)>> = Vec::new();
    let bad = |line: usize, reason: String| ImportError::BadJson {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut name = "jsonl";
    let whole = if format == Format::Json {
        let text = fs::read_to_string(path).map_err(io("reading", path))?;
        match serde_json::from_str::<Vec<Item>>(&text) {
            Ok(items) => {
                name = "json";
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Item::Record(r) => records.push(r.0),
                        Item::Other(other) => {
                            return Err(bad(
                                1,
                                format!("item {i} of the array is {}", kind_of(&other)),
                            ))
                        }
                    }
                }
                true
            }
            Err(_) if text.trim_start().starts_with('{') && text.trim().lines().count() <= 1 => {
                return Err(bad(
                    1,
                    "the file is one object, not a list of records".to_string(),
                ))
            }
            // Not one JSON value: perhaps JSON Lines under a .json name.
            _ => false,
        }
    } else {
        false
    };
    if !whole {
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| bad(i + 1, e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Item>(&line) {
                Ok(Item::Record(r)) => records.push(r.0),
                Ok(Item::Other(other)) => {
                    return Err(bad(i + 1, format!("it is {}", kind_of(&other))))
                }
                Err(e) => return Err(bad(i + 1, e.to_string())),
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in &records {
        for (k, _) in r {
            if !index.contains_key(k) {
                index.insert(k.clone(), names.len());
                names.push(k.clone());
            }
        }
    }
    let mut table = Table::new(names.clone());
    for r in records {
        let mut row = vec![Value::Null; names.len()];
        for (k, v) in r {
            if let Some(&i) = index.get(&k) {
                row[i] = json_value(v);
            }
        }
        table.push(row);
    }
    Ok((name, table))
}

/// A JSON object with its keys in file order (serde_json's own map sorts
/// them, and turning on its `preserve_order` would change every other
/// serialization of the crate).
struct Record(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Record, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Record;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Record, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Record(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Either a record or something else (for the error message).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Item {
    Record(Record),
    Other(serde_json::Value),
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One table of a database, opened read-only; columns declared BOOLEAN keep
/// their 0/1 as booleans.
fn sqlite(path: &Path, wanted: Option<&str>) -> Result<(String, Table), ImportError> {
    use rusqlite::{types::ValueRef, OpenFlags};
    let db_err = |e: rusqlite::Error| corrupt(path, "SQLite", e);
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    // A file that is not a database fails on the first read, not the open.
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .map_err(db_err)?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    drop(stmt);
    let table_name = match wanted {
        Some(t) => tables
            .iter()
            .find(|n| n.as_str() == t)
            .cloned()
            .ok_or_else(|| ImportError::NoTable {
                path: path.to_path_buf(),
                table: t.to_string(),
                available: tables.clone(),
            })?,
        None => match tables.as_slice() {
            [] => {
                return Err(ImportError::NoTables {
                    path: path.to_path_buf(),
                })
            }
            [one] => one.clone(),
            _ => {
                return Err(ImportError::ManyTables {
                    path: path.to_path_buf(),
                    available: tables,
                })
            }
        },
    };
    let quoted = format!("\"{}\"", table_name.replace('"', "\"\""));
    // Declared types, in the order `SELECT *` returns the columns.
    let mut info = conn
        .prepare(&format!("PRAGMA table_info({quoted})"))
        .map_err(db_err)?;
    let declared: Vec<bool> = info
        .query_map([], |r| r.get::<_, Option<String>>(2))
        .map_err(db_err)?
        .map(|t| {
            t.ok()
                .flatten()
                .is_some_and(|t| t.to_ascii_uppercase().contains("BOOL"))
        })
        .collect();
    drop(info);
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {quoted}"))
        .map_err(db_err)?;
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let width = names.len();
    let mut table = Table::new(names);
    let mut rows = stmt.query([]).map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            let is_bool = declared.get(i).copied().unwrap_or(false);
            let v = row.get_ref(i).map_err(db_err)?;
            values.push(match v {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(b) if is_bool && (b == 0 || b == 1) => Value::Bool(b == 1),
                ValueRef::Integer(i) => Value::Int(i),
                ValueRef::Real(x) => Value::Real(x),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Text(hex::encode(b)),
            });
        }
        table.push(values);
    }
    Ok((table_name, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_typed_like_pandas_reads_them() {
        assert_eq!(text_value("12"), Value::Int(12));
        assert_eq!(text_value("-3"), Value::Int(-3));
        assert_eq!(text_value("2.5e3"), Value::Real(2500.0));
        assert_eq!(text_value("NA"), Value::Null);
        assert_eq!(text_value(""), Value::Null);
        assert_eq!(text_value("True"), Value::Bool(true));
        assert_eq!(text_value("inf"), Value::Text("inf".into()));
        assert_eq!(text_value("2024-01-02"), Value::Text("2024-01-02".into()));
        assert_eq!(
            text_value("99999999999999999999"),
            Value::Real(99_999_999_999_999_999_999.0)
        );
    }
}
