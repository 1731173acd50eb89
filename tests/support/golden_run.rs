//! The golden run: the episodes of `csv-agent run` on the shipped datasets
//! (templates and composed questions, the program teacher), recorded as one
//! line per episode in `tests/golden/run.jsonl` — its id, dataset, verdict,
//! reference trace and a digest of each top-level field with every timing
//! removed. A run of today's code must give the same episodes: same ids,
//! same verdicts, same traces (code, output, hooks, answers), apart from
//! when and how fast they ran.
//!
//! The file was written from the episodes of the code before the program
//! teacher stopped running each program a second time (the ground-truth
//! runs are now its traces), so it proves that change kept every episode.
//! To write it again after a deliberate change to templates, operators,
//! datasets or the image: `CSV_AGENT_BLESS=1 cargo test --test pipeline
//! a_full_run`, or from another build's output:
//! `CSV_AGENT_BLESS=path/to/episodes.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Fields that say when or how fast something ran (or where the CSV was),
/// not what ran: removed at every depth before digesting.
fn not_content(key: &str) -> bool {
    crate::common::TIMING_KEYS.contains(&key) || key == "csv_source"
}

pub fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/run.jsonl")
}

fn strip(value: &Value) -> Value {
    let mut value = value.clone();
    crate::common::strip_keys(&mut value, &crate::common::TIMING_KEYS);
    crate::common::strip_keys(&mut value, &["csv_source"]);
    value
}

/// Compact JSON with keys sorted at every depth (whatever order the map
/// keeps), numbers as serde_json writes them.
fn sorted_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                sorted_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                sorted_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn digest(value: &Value) -> String {
    let mut text = String::new();
    sorted_json(&strip(value), &mut text);
    let mut hex = hex::encode(Sha256::digest(text.as_bytes()));
    hex.truncate(16);
    hex
}

/// The golden line of one episode (as parsed from episodes.jsonl).
fn record(episode: &Value) -> Value {
    let fields: BTreeMap<String, String> = episode
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !not_content(k))
                .map(|(k, v)| (k.clone(), digest(v)))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "episode_id": episode["episode_id"],
        "dataset": episode["dataset"],
        "verified": episode["verified"],
        "reference_trace": episode["triangulation"]["reference_trace"],
        "digests": fields,
    })
}

fn records_of(episodes_jsonl: &Path) -> BTreeMap<String, Value> {
    let body = std::fs::read_to_string(episodes_jsonl)
        .unwrap_or_else(|e| panic!("{}: {e}", episodes_jsonl.display()));
    body.lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).expect("episode line is JSON");
            let r = record(&e);
            (r["episode_id"].as_str().unwrap_or("").to_string(), r)
        })
        .collect()
}

fn write_golden(records: &BTreeMap<String, Value>) {
    let mut body = String::new();
    for r in records.values() {
        sorted_json(r, &mut body);
        body.push('\n');
    }
    std::fs::write(golden_path(), body).expect("write tests/golden/run.jsonl");
}

fn golden() -> BTreeMap<String, Value> {
    let body = std::fs::read_to_string(golden_path()).expect("tests/golden/run.jsonl");
    body.lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).expect("golden line is JSON");
            (r["episode_id"].as_str().unwrap_or("").to_string(), r)
        })
        .collect()
}

/// Compare the run whose episodes are in `episodes_jsonl` with the golden
/// file (or write the golden file when `CSV_AGENT_BLESS` asks for it).
pub fn assert_matches_golden(episodes_jsonl: &Path) {
    let got = records_of(episodes_jsonl);
    match std::env::var("CSV_AGENT_BLESS").ok().as_deref() {
        None | Some("") | Some("0") => {}
        Some("1") => return write_golden(&got),
        Some(other) => return write_golden(&records_of(Path::new(other))),
    }
    compare(&golden(), &got, true);
}

/// The episodes of a smaller run (a cap, one dataset) that are also in the
/// golden run must equal them; returns how many were compared.
pub fn assert_subset_matches_golden(episodes_jsonl: &Path) -> usize {
    let got = records_of(episodes_jsonl);
    let want: BTreeMap<String, Value> = golden()
        .into_iter()
        .filter(|(id, _)| got.contains_key(id))
        .collect();
    compare(&want, &got, false);
    want.len()
}

fn compare(want: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>, whole: bool) {
    let mut problems = Vec::new();
    for (id, w) in want {
        match got.get(id) {
            None => problems.push(format!("episode {id} ({}) is missing", w["dataset"])),
            Some(g) if g != w => {
                let mut what = Vec::new();
                for key in ["verified", "reference_trace"] {
                    if g[key] != w[key] {
                        what.push(format!("{key}: {} (golden {})", g[key], w[key]));
                    }
                }
                if let (Some(gd), Some(wd)) = (g["digests"].as_object(), w["digests"].as_object()) {
                    for (field, digest) in wd {
                        if gd.get(field) != Some(digest) {
                            what.push(format!("field {field} differs"));
                        }
                    }
                    for field in gd.keys().filter(|f| !wd.contains_key(*f)) {
                        what.push(format!("new field {field}"));
                    }
                }
                problems.push(format!(
                    "episode {id} ({}): {}",
                    w["dataset"],
                    what.join(", ")
                ));
            }
            Some(_) => {}
        }
    }
    for (id, g) in got.iter().filter(|_| whole) {
        if !want.contains_key(id) {
            problems.push(format!(
                "episode {id} ({}) is not in the golden run",
                g["dataset"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} episodes differ from tests/golden/run.jsonl (see tests/common/golden.rs to rewrite it after a deliberate change):\n{}",
        problems.len(),
        want.len(),
        problems.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_do_not_change_a_digest_and_content_does() {
        let a = json!({"turns": [{"code": "x", "execution": {"elapsed_ms": 1.0, "stdout": "1"}}], "elapsed": 2.0});
        let b = json!({"elapsed": 9.0, "turns": [{"execution": {"stdout": "1", "elapsed_ms": 7.5}, "code": "x"}]});
        let c = json!({"turns": [{"code": "x", "execution": {"elapsed_ms": 1.0, "stdout": "2"}}], "elapsed": 2.0});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }
}
