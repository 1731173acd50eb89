//! `report.html`: one self-contained static page about a run directory —
//! per-dataset results, verification rate by template and difficulty,
//! agreement among traces, where the time went, episodes over time, the
//! memory chart of `sandbox profile --svg` when one is there, model usage,
//! incidents, and an episode browser.
//!
//! No server, no network: the charts are inline SVG ([`svg`]), the browser
//! is a small inline script (`browser.js`) over the episodes embedded as
//! JSON, and a Content-Security-Policy forbids every fetch. Episode text is
//! untrusted (model output, data values): the page escapes every string it
//! writes, the embedded JSON cannot close its `<script>` element, and the
//! script renders with `textContent` only.
//!
//! The run's files are read as plain JSON (not the pipeline's types), so a
//! report can be made of any run directory, old or new.

pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use svg::{esc, Bar};

/// The report's file name in the run directory.
pub const REPORT_FILE: &str = "report.html";
/// A memory chart placed in the run directory is shown in the report.
pub const MEMORY_SVG: &str = "memory.svg";
/// Episodes embedded in the browser at most (the newest are kept).
pub const MAX_EMBEDDED: usize = 3000;
/// Characters kept of each text field of an embedded episode.
const MAX_TEXT: usize = 4000;

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("browser.js");

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0} is not a run directory (no episodes.jsonl or summary.json); run `csv-agent run --out DIR` first")]
    NotARun(PathBuf),
    #[error("{path}, line {line}: not an episode: {source}")]
    BadEpisode {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What goes into a report besides the run directory.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// A memory chart (`sandbox profile --svg`); default `<run>/memory.svg`.
    pub memory_svg: Option<PathBuf>,
}

/// Write `<run>/report.html`; returns its path.
pub fn write(run: &Path, options: &ReportOptions) -> Result<PathBuf, ReportError> {
    let html = render(run, options)?;
    let path = run.join(REPORT_FILE);
    let tmp = run.join(format!(".{REPORT_FILE}.tmp"));
    std::fs::write(&tmp, html).map_err(|source| ReportError::Io {
        action: "writing",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| ReportError::Io {
        action: "moving into place",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn read_episodes(run: &Path) -> Result<Vec<Value>, ReportError> {
    let path = run.join(crate::store::EPISODES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::Io {
                action: "reading",
                path,
                source,
            })
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|source| ReportError::BadEpisode {
            path: path.clone(),
            line: i + 1,
            source,
        })?;
        out.push(v);
    }
    Ok(out)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(MAX_TEXT).collect();
        t.push_str(" … [cut in the report]");
        t
    }
}

fn short_json(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => cut(s),
        other => cut(&other.to_string()),
    }
}

/// Zygote start per dataset: the last `sandbox … ready in X s` line of its log.
fn zygote_starts(run: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(run.join(crate::store::LOGS_DIR)) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(slug) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            if let Some(rest) = line.split(" ready in ").nth(1) {
                if let Some(secs) = rest.split(" s").next().and_then(|x| x.parse::<f64>().ok()) {
                    out.insert(slug.clone(), secs);
                }
            }
        }
    }
    out
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (UTC or offset).
fn epoch_seconds(ts: &str) -> Option<f64> {
    let b = ts.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // days_from_civil (Howard Hinnant)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut t = (days * 86_400 + h * 3600 + mi * 60 + sec) as f64;
    let rest = &ts[19..];
    let mut frac_end = 0;
    if let Some(r) = rest.strip_prefix('.') {
        frac_end = r.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(fr) = format!("0.{}", &r[..frac_end]).parse::<f64>() {
            t += fr;
        }
        frac_end += 1;
    }
    let zone = &rest[frac_end..];
    if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) {
        let oh: i64 = zone[1..3].parse().ok()?;
        let om: i64 = zone[4..6].parse().ok()?;
        let off = (oh * 3600 + om * 60) as f64;
        t -= if zone.starts_with('+') { off } else { -off };
    }
    Some(t)
}

struct Rate {
    verified: u64,
    total: u64,
}

fn rate_bars(groups: BTreeMap<String, Rate>) -> Vec<Bar> {
    groups
        .into_iter()
        .map(|(label, r)| Bar {
            value: if r.total > 0 {
                r.verified as f64 / r.total as f64
            } else {
                0.0
            },
            text: format!(
                "{}/{} ({:.0} %)",
                r.verified,
                r.total,
                100.0 * r.verified as f64 / r.total.max(1) as f64
            ),
            label,
        })
        .collect()
}

/// The HTML of the report.
pub fn render(run: &Path, options: &ReportOptions) -> Result<String, ReportError> {
    let summary: Option<Value> = std::fs::read(run.join(crate::store::SUMMARY_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let episodes = read_episodes(run)?;
    if summary.is_none() && episodes.is_empty() && !run.join(crate::store::EPISODES_FILE).is_file()
    {
        return Err(ReportError::NotARun(run.to_path_buf()));
    }
    let summary = summary.unwrap_or(Value::Null);
    let mut body = String::new();

    // Headline.
    let verified = episodes.iter().filter(|e| e["verified"] == true).count();
    let _ = write!(
        body,
        "<header><h1>csv-agent run report</h1><p class=\"muted\">{} · teacher {} · {} episodes, {} verified ({:.0} %) · wall time {:.1} s</p></header>",
        esc(&run.display().to_string()),
        esc(match s(&summary["teacher"]) {
            "" => "?",
            t => t,
        }),
        episodes.len(),
        verified,
        100.0 * verified as f64 / episodes.len().max(1) as f64,
        f(&summary["elapsed"])
    );

    // Per dataset.
    let mut ds_rows = String::new();
    let starts = zygote_starts(run);
    let empty = Vec::new();
    for d in summary["datasets"].as_array().unwrap_or(&empty) {
        let slug = s(&d["dataset"]);
        let failed = s(&d["status"]) == "failed";
        let _ = write!(
            ds_rows,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(slug),
            d["questions"].as_u64().unwrap_or(0),
            d["verified"].as_u64().unwrap_or(0),
            d["disagreements"].as_u64().unwrap_or(0),
            d["failures"].as_array().map(|a| a.len()).unwrap_or(0),
            f(&d["elapsed"]),
            starts
                .get(slug)
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "–".into()),
            if failed {
                format!("<span class=\"bad\">FAILED: {}</span>", esc(s(&d["reason"])))
            } else {
                "done".to_string()
            }
        );
    }
    let _ = write!(
        body,
        "<section id=\"datasets\"><h2>Datasets</h2><table class=\"grid\"><thead><tr><th>dataset</th><th>questions</th><th>verified</th><th>disagreements</th><th>failures</th><th>time (s)</th><th>zygote start (s)</th><th>status</th></tr></thead><tbody>{ds_rows}</tbody></table></section>"
    );

    // Verification rates.
    let mut by_template: BTreeMap<String, Rate> = BTreeMap::new();
    let mut by_difficulty: BTreeMap<String, Rate> = BTreeMap::new();
    let mut by_dataset: BTreeMap<String, Rate> = BTreeMap::new();
    for e in &episodes {
        let ok = e["verified"] == true;
        let template = e["question"]["template_name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("({} question)", s(&e["source"])));
        let difficulty = s(&e["question"]["difficulty"]).to_string();
        for (map, key) in [
            (&mut by_template, template),
            (&mut by_difficulty, difficulty),
            (&mut by_dataset, s(&e["dataset"]).to_string()),
        ] {
            let r = map.entry(key).or_insert(Rate {
                verified: 0,
                total: 0,
            });
            r.total += 1;
            r.verified += u64::from(ok);
        }
    }
    let order = ["EASY", "MEDIUM", "HARD", "VERY_HARD"];
    let mut difficulty_bars = rate_bars(by_difficulty);
    difficulty_bars.sort_by_key(|b| order.iter().position(|o| *o == b.label).unwrap_or(9));
    let _ = write!(
        body,
        "<section id=\"verification\"><h2>Verification rate</h2>\
         <figure><figcaption>by template (verified / episodes)</figcaption>{}</figure>\
         <figure><figcaption>by difficulty</figcaption>{}</figure>\
         <figure><figcaption>by dataset</figcaption>{}</figure>\
         <p class=\"muted\">By category: the episodes of this run carry no question category (composed questions do not exist yet), so there is no chart for it.</p></section>",
        svg::hbars("template", "verification rate by template", &rate_bars(by_template), 1.0),
        svg::hbars("difficulty", "verification rate by difficulty", &difficulty_bars, 1.0),
        svg::hbars("dataset", "verification rate by dataset", &rate_bars(by_dataset), 1.0),
    );

    // Agreement.
    let mut agreement: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for e in &episodes {
        let t = &e["triangulation"];
        let majority = t["majority_count"].as_u64().unwrap_or(0);
        let runs = t["n_consistency_runs"].as_u64().unwrap_or(0);
        *agreement.entry((runs, majority)).or_default() += 1;
    }
    let bins: Vec<(String, u64)> = agreement
        .into_iter()
        .map(|((runs, m), n)| (format!("{m} of {runs}"), n))
        .collect();
    let _ = write!(
        body,
        "<section id=\"agreement\"><h2>Agreement</h2><figure><figcaption>size of the majority cluster among the consistency traces (episodes per value)</figcaption>{}</figure></section>",
        svg::columns("agreement", "majority cluster size", &bins, "majority cluster / consistency traces")
    );

    // Time.
    let (mut wait, mut exec, mut total) = (0.0, 0.0, 0.0);
    let mut stamps: Vec<f64> = Vec::new();
    for e in &episodes {
        let traces = std::iter::once(&e["gold_trace"])
            .chain(e["consistency_traces"].as_array().unwrap_or(&empty).iter());
        for t in traces {
            total += f(&t["elapsed"]);
            wait += f(&t["worker_wait"]);
            for turn in t["turns"].as_array().unwrap_or(&empty) {
                exec += f(&turn["execution"]["elapsed_ms"]) / 1000.0;
            }
        }
        if let Some(t) = epoch_seconds(s(&e["timestamp"])) {
            stamps.push(t);
        }
    }
    let zygote: f64 = starts.values().sum();
    let rest = (total - wait - exec).max(0.0);
    let stage_max = [zygote, wait, exec, rest].into_iter().fold(0.0, f64::max);
    let stage = |label: &str, v: f64| Bar {
        label: label.to_string(),
        value: v,
        text: format!("{v:.1} s"),
    };
    stamps.sort_by(f64::total_cmp);
    let first = stamps.first().copied().unwrap_or(0.0);
    let points: Vec<(f64, f64)> = stamps
        .iter()
        .enumerate()
        .map(|(i, t)| (t - first, (i + 1) as f64))
        .collect();
    let _ = write!(
        body,
        "<section id=\"time\"><h2>Time</h2>\
         <figure><figcaption>per stage, summed over every trace (traces run concurrently, so the sum exceeds the wall time); zygote start summed over datasets from their logs</figcaption>{}</figure>\
         <figure><figcaption>episodes written over time</figcaption>{}</figure></section>",
        svg::hbars(
            "stages",
            "time per stage",
            &[
                stage("zygote start", zygote),
                stage("waiting for a worker", wait),
                stage("cell execution", exec),
                stage("the rest (protocol, CPU wait)", rest),
            ],
            stage_max
        ),
        svg::line("timeline", "episodes over time", &points, "time since the first episode")
    );

    // Memory.
    let memory = options
        .memory_svg
        .clone()
        .unwrap_or_else(|| run.join(MEMORY_SVG));
    match std::fs::read(&memory) {
        Ok(bytes) => {
            // As an image, never inline markup: an SVG file may hold script.
            let _ = write!(
                body,
                "<section id=\"memory\"><h2>Memory</h2><figure data-chart=\"memory\"><figcaption>{}</figcaption><img alt=\"memory against worker count\" src=\"data:image/svg+xml;base64,{}\"></figure></section>",
                esc(&memory.display().to_string()),
                base64(&bytes)
            );
        }
        Err(_) => {
            let _ = write!(
                body,
                "<section id=\"memory\"><h2>Memory</h2><p class=\"muted\">No memory chart: make one with <code>csv-agent sandbox profile --csv FILE --workers N --svg {}</code> and rerun <code>csv-agent report</code>.</p></section>",
                esc(&run.join(MEMORY_SVG).display().to_string())
            );
        }
    }

    // Model usage and incidents.
    let mut usage_rows = String::new();
    for d in summary["datasets"].as_array().unwrap_or(&empty) {
        let u = &d["llm_usage"];
        if u.is_object() {
            let _ = write!(
                usage_rows,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td></tr>",
                esc(s(&d["dataset"])),
                u["requests"].as_u64().unwrap_or(0),
                u["prompt_tokens"].as_u64().unwrap_or(0),
                u["completion_tokens"].as_u64().unwrap_or(0),
                u["retries"].as_u64().unwrap_or(0),
                f(&u["latency_s"])
            );
        }
    }
    if usage_rows.is_empty() {
        body.push_str("<section id=\"usage\"><h2>Model usage</h2><p class=\"muted\">No model was used: the program teacher answered every question.</p></section>");
    } else {
        let _ = write!(
            body,
            "<section id=\"usage\"><h2>Model usage</h2><table class=\"grid\"><thead><tr><th>dataset</th><th>requests</th><th>prompt tokens</th><th>completion tokens</th><th>retries</th><th>latency (s)</th></tr></thead><tbody>{usage_rows}</tbody></table></section>"
        );
    }
    let mut incident_rows = String::new();
    for d in summary["datasets"].as_array().unwrap_or(&empty) {
        if let Some(map) = d["incidents"].as_object() {
            let cells: Vec<String> = [
                "restarts",
                "workers_lost",
                "oom_kills",
                "timeouts",
                "retries",
            ]
            .iter()
            .map(|k| {
                format!(
                    "<td class=\"num\">{}</td>",
                    map.get(*k).and_then(Value::as_u64).unwrap_or(0)
                )
            })
            .collect();
            let _ = write!(
                incident_rows,
                "<tr><td>{}</td>{}</tr>",
                esc(s(&d["dataset"])),
                cells.concat()
            );
        }
    }
    let _ = write!(
        body,
        "<section id=\"incidents\"><h2>Incidents</h2><table class=\"grid\"><thead><tr><th>dataset</th><th>restarts</th><th>workers lost</th><th>OOM kills</th><th>timeouts</th><th>retries</th></tr></thead><tbody>{incident_rows}</tbody></table></section>"
    );

    // Episode browser.
    let embedded: Vec<Value> = episodes
        .iter()
        .rev()
        .take(MAX_EMBEDDED)
        .rev()
        .map(browser_episode)
        .collect();
    let note = if episodes.len() > MAX_EMBEDDED {
        format!(
            "<p class=\"muted\">The newest {MAX_EMBEDDED} of {} episodes are here; all are in episodes.jsonl.</p>",
            episodes.len()
        )
    } else {
        String::new()
    };
    let _ = write!(
        body,
        "<section id=\"browser\"><h2>Episodes</h2>{note}\
         <div class=\"filters\"><label>dataset <select id=\"f-dataset\"><option value=\"\">all</option></select></label>\
         <label>template <select id=\"f-template\"><option value=\"\">all</option></select></label>\
         <label>verdict <select id=\"f-verified\"><option value=\"\">all</option><option value=\"yes\">verified</option><option value=\"no\">unverified</option></select></label>\
         <label>search <input id=\"f-search\" type=\"search\" placeholder=\"question, answer, code…\"></label>\
         <span id=\"episode-count\" class=\"muted\"></span></div>\
         <div class=\"browser\"><div class=\"list\"><table class=\"grid\" id=\"episode-list\"><thead><tr><th>episode</th><th>dataset</th><th>template</th><th>level</th><th>verdict</th><th>question</th></tr></thead><tbody></tbody></table></div>\
         <article id=\"episode-detail\"><p class=\"muted\">Choose an episode.</p></article></div></section>"
    );

    let data = script_json(&Value::Array(embedded));
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>csv-agent report</title><style>{STYLE}</style></head><body>{body}\
         <script type=\"application/json\" id=\"episode-data\">{data}</script>\
         <script>{SCRIPT}</script></body></html>\n"
    ))
}

/// JSON that can sit inside a `<script>` element: no `<`, `>` or `&` (so no
/// `</script>` or `<!--`), no line separators JavaScript would stumble on.
pub fn script_json(v: &Value) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "[]".to_string())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn browser_trace(t: &Value) -> Value {
    let empty = Vec::new();
    let turns: Vec<Value> = t["turns"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|turn| {
            let x = &turn["execution"];
            let hooks: Vec<Value> = x["hooks"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|h| {
                    json!({
                        "name": short_json(&h["variable_name"]),
                        "line": cut(s(&h["code_line"])),
                        "value": short_json(&h["value"]),
                    })
                })
                .collect();
            json!({
                "reasoning": cut(s(&turn["reasoning"])),
                "code": cut(s(&turn["code"])),
                "status": s(&x["status"]),
                "stdout": cut(s(&x["stdout"])),
                "stderr": cut(s(&x["stderr"])),
                "result": short_json(&x["result"]),
                "error": short_json(&x["error"]),
                "submitted": short_json(&x["submitted_answer"]),
                "elapsed_ms": f(&x["elapsed_ms"]),
                "hooks": hooks,
            })
        })
        .collect();
    json!({
        "label": s(&t["label"]),
        "success": t["success"] == true,
        "answer": short_json(&t["final_answer"]),
        "elapsed": f(&t["elapsed"]),
        "error": short_json(&t["error"]),
        "turns": turns,
    })
}

fn browser_episode(e: &Value) -> Value {
    let empty = Vec::new();
    let q = &e["question"];
    let t = &e["triangulation"];
    let mut traces = vec![browser_trace(&e["gold_trace"])];
    traces.extend(
        e["consistency_traces"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(browser_trace),
    );
    json!({
        "id": s(&e["episode_id"]),
        "dataset": s(&e["dataset"]),
        "template": q["template_name"].as_str().unwrap_or("(model question)"),
        "difficulty": s(&q["difficulty"]),
        "verified": e["verified"] == true,
        "reason": short_json(&e["reason"]),
        "diagnosis": short_json(&e["diagnosis"]),
        "question": cut(s(&q["question_text"])),
        "hint": short_json(&q["hint"]),
        "ground_truth": short_json(&q["ground_truth"]),
        "answer": short_json(&e["gold_trace"]["final_answer"]),
        "majority": format!("{} of {}", t["majority_count"].as_u64().unwrap_or(0), t["n_consistency_runs"].as_u64().unwrap_or(0)),
        "gold_matches_majority": t["gold_matches_majority"] == true,
        "gold_matches_ground_truth": t["gold_matches_ground_truth"].clone(),
        "traces": traces,
    })
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_end_its_script_element() {
        let v = json!({"q": "</script><script>alert(1)</script> <!-- & \u{2028}"});
        let text = script_json(&v);
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        let back: Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, v);
    }

    #[test]
    fn timestamps_and_base64() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:10Z"), Some(10.0));
        assert_eq!(epoch_seconds("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(
            epoch_seconds("2024-01-01T00:00:00.5Z"),
            Some(1_704_067_200.5)
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
