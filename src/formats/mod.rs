//! Training formats: episodes turned into JSON Lines that Hugging Face
//! `datasets` loads and TRL trainers (or OpenAI fine-tuning) take as they
//! are. One module per format; this one owns what they share: reading an
//! episodes file strictly, the answer an episode's traces are judged
//! against, how a turn and its execution are rendered as messages, and the
//! export entry point that writes the file atomically.
//!
//! It only reads episodes: it never runs code, never changes an episode and
//! never re-decides verification (the teacher's triangulation did that).
//! docs/formats.md is the specification of every record shape.

mod dpo;
mod kto;
mod orm;
mod prm;
pub mod rl;
mod sft;
mod sft_interleaved;
mod sft_tools;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use crate::schema::{Episode, Execution, Question, Trace, Turn};
use crate::store::{self, StoreError};
use crate::teacher::triangulation::trace_labels;

pub use rl::{reward, Expected, HOOK_WEIGHT};

/// The agent's instructions for the ```python-block formats.
const SYSTEM_PROMPT: &str = include_str!("system_prompt.txt");
/// The same agent when it calls a `python` tool instead.
const SYSTEM_PROMPT_TOOLS: &str = include_str!("system_prompt_tools.txt");
/// JSON schema of the `python` tool (TRL's and OpenAI's `tools` entry).
const PYTHON_TOOL: &str = include_str!("python_tool.json");

/// How many traceback lines an observation keeps (the last ones: the
/// exception and the frames nearest to it).
const TRACEBACK_LINES: usize = 30;

/// Errors reading an episodes file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: no such file")]
    Missing { path: PathBuf },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: not UTF-8")]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{path} line {line}: not an episode{note}")]
    NotAnEpisode {
        path: PathBuf,
        line: usize,
        /// Said when the bad line is a last line without its newline.
        note: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format `{0}` (expected one of: sft, sft-tools, sft-interleaved, prm, orm, dpo, kto, rl)")]
    UnknownFormat(String),
    #[error("unknown flavor `{0}` (expected trl or openai)")]
    UnknownFlavor(String),
    #[error(
        "format {format} has no {flavor} flavor (only sft-tools and dpo have an openai flavor)"
    )]
    FlavorNotSupported {
        format: &'static str,
        flavor: &'static str,
    },
    #[error("--out {path} is the episodes file itself; choose another output file")]
    SameFile { path: PathBuf },
    #[error("--out {path} is a directory; give a file name")]
    OutIsDir { path: PathBuf },
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store's message names the file and carries the cause already,
    /// so it is not chained a second time.
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: StoreError },
    #[error("the embedded python tool schema is not valid JSON")]
    ToolSchema(#[source] serde_json::Error),
    #[error("serializing a record")]
    Serialize(#[source] serde_json::Error),
}

/// A training format: one module each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Sft,
    SftTools,
    SftInterleaved,
    Prm,
    Orm,
    Dpo,
    Kto,
    Rl,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Sft,
        Format::SftTools,
        Format::SftInterleaved,
        Format::Prm,
        Format::Orm,
        Format::Dpo,
        Format::Kto,
        Format::Rl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Sft => "sft",
            Format::SftTools => "sft-tools",
            Format::SftInterleaved => "sft-interleaved",
            Format::Prm => "prm",
            Format::Orm => "orm",
            Format::Dpo => "dpo",
            Format::Kto => "kto",
            Format::Rl => "rl",
        }
    }

    /// The flavors this format can be written in (TRL's always first).
    pub fn flavors(self) -> &'static [Flavor] {
        match self {
            Format::SftTools | Format::Dpo => &[Flavor::Trl, Flavor::Openai],
            _ => &[Flavor::Trl],
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Format, FormatError> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| FormatError::UnknownFormat(s.to_string()))
    }
}

/// Whose conventions a record follows where TRL and OpenAI differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Flavor {
    /// Hugging Face TRL: tool-call arguments as objects, no call ids.
    #[default]
    Trl,
    /// OpenAI fine-tuning: arguments as JSON text, call ids, the
    /// preference format's `input` / `preferred_output`.
    Openai,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Trl => "trl",
            Flavor::Openai => "openai",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Flavor {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Flavor, FormatError> {
        match s {
            "trl" => Ok(Flavor::Trl),
            "openai" => Ok(Flavor::Openai),
            _ => Err(FormatError::UnknownFlavor(s.to_string())),
        }
    }
}

/// What to export, checked once: the format supports the flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    format: Format,
    flavor: Flavor,
    include_unverified: bool,
}

impl ExportOptions {
    pub fn new(
        format: Format,
        flavor: Flavor,
        include_unverified: bool,
    ) -> Result<ExportOptions, FormatError> {
        if !format.flavors().contains(&flavor) {
            return Err(FormatError::FlavorNotSupported {
                format: format.as_str(),
                flavor: flavor.as_str(),
            });
        }
        Ok(ExportOptions {
            format,
            flavor,
            include_unverified,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }
}

/// Counts of one export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Episodes in the input file.
    pub episodes: usize,
    /// Lines written.
    pub records: usize,
    /// Unverified episodes left out (no `--include-unverified`).
    pub skipped_unverified: usize,
    /// Episodes whose verdict names no reference answer (no consistency
    /// trace answered).
    pub skipped_no_reference: usize,
    /// Episodes that were used but gave no record (e.g. dpo: nothing to reject).
    pub without_records: usize,
}

// ------------------------------------------------------------ reading

/// One line of an episodes file: where it was, its text, its episode.
#[derive(Debug, Clone)]
pub struct EpisodeLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line as it was in the file, without its newline.
    pub raw: String,
    pub episode: Episode,
}

/// Every episode of a JSON Lines file, strictly: a missing file, a line
/// that is not UTF-8 or not an episode is an error naming the file and the
/// line. Blank lines are skipped. Unlike the run's own reader, a last line
/// without its newline is read too (a hand-made file), and named as
/// possibly cut off when it does not parse.
pub fn read_episodes(path: &Path) -> Result<Vec<EpisodeLine>, ReadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReadError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(ReadError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let ends_with_newline = bytes.last() == Some(&b'\n');
    let pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let line = i + 1;
        let text = std::str::from_utf8(piece).map_err(|_| ReadError::NotUtf8 {
            path: path.to_path_buf(),
            line,
        })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            continue;
        }
        let last_unterminated = i + 1 == pieces.len() && !ends_with_newline;
        let episode =
            serde_json::from_str::<Episode>(text).map_err(|source| ReadError::NotAnEpisode {
                path: path.to_path_buf(),
                line,
                note: if last_unterminated {
                    " (the last line has no newline: cut off?)"
                } else {
                    ""
                },
                source,
            })?;
        out.push(EpisodeLine {
            line,
            raw: text.to_string(),
            episode,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------ export

/// Read `episodes`, write the records of `options` to `out` (whole or not
/// at all: a temporary file renamed into place).
pub fn export_file(
    episodes: &Path,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportReport, FormatError> {
    if out.is_dir() {
        return Err(FormatError::OutIsDir {
            path: out.to_path_buf(),
        });
    }
    if let (Ok(a), Ok(b)) = (episodes.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(FormatError::SameFile {
                path: out.to_path_buf(),
            });
        }
    }
    let lines = read_episodes(episodes)?;
    let episodes: Vec<Episode> = lines.into_iter().map(|l| l.episode).collect();
    let (records, report) = export_records(&episodes, options)?;
    let mut bytes = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for r in &records {
        bytes.extend_from_slice(r.as_bytes());
        bytes.push(b'\n');
    }
    store::write_atomic(out, &bytes).map_err(|error| FormatError::Write {
        path: out.to_path_buf(),
        error,
    })?;
    Ok(report)
}

/// The records (one JSON text per line) of `episodes` in `options`' format.
pub fn export_records(
    episodes: &[Episode],
    options: &ExportOptions,
) -> Result<(Vec<String>, ExportReport), FormatError> {
    let ctx = Ctx::new(options.flavor)?;
    let mut report = ExportReport {
        episodes: episodes.len(),
        ..ExportReport::default()
    };
    let mut records = Vec::new();
    for episode in episodes {
        let judged = match judge(episode, options.include_unverified) {
            Ok(j) => j,
            Err(Skip::Unverified) => {
                report.skipped_unverified += 1;
                continue;
            }
            Err(Skip::NoReference) => {
                report.skipped_no_reference += 1;
                continue;
            }
        };
        let produced = match options.format {
            Format::Sft => sft::records(&judged, &ctx)?,
            Format::SftTools => sft_tools::records(&judged, &ctx)?,
            Format::SftInterleaved => sft_interleaved::records(&judged, &ctx)?,
            Format::Prm => prm::records(&judged, &ctx)?,
            Format::Orm => orm::records(&judged, &ctx)?,
            Format::Dpo => dpo::records(&judged, &ctx)?,
            Format::Kto => kto::records(&judged, &ctx)?,
            Format::Rl => rl::records(&judged, &ctx)?,
        };
        if produced.is_empty() {
            report.without_records += 1;
        }
        records.extend(produced);
    }
    report.records = records.len();
    Ok((records, report))
}

/// What every format module gets besides the episode.
pub(crate) struct Ctx {
    pub flavor: Flavor,
    /// The `tools` list of the tool-calling formats.
    pub tools: Vec<Value>,
}

impl Ctx {
    fn new(flavor: Flavor) -> Result<Ctx, FormatError> {
        let tool: Value = serde_json::from_str(PYTHON_TOOL).map_err(FormatError::ToolSchema)?;
        Ok(Ctx {
            flavor,
            tools: vec![tool],
        })
    }
}

/// One record as a line of JSON.
pub(crate) fn to_line<T: Serialize>(record: &T) -> Result<String, FormatError> {
    serde_json::to_string(record).map_err(FormatError::Serialize)
}

// ------------------------------------------------------------ judging

/// An episode with the answer its traces are judged against.
pub(crate) struct Judged<'e> {
    pub episode: &'e Episode,
    /// The verdict's reference answer (the gold answer of a verified
    /// episode; with `--include-unverified`, the majority's).
    pub reference: &'e Value,
    /// The gold trace first, then the consistency traces in order.
    pub traces: Vec<JudgedTrace<'e>>,
}

pub(crate) struct JudgedTrace<'e> {
    pub trace: &'e Trace,
    /// The gold trace: the one that was given the hint.
    pub is_gold: bool,
    /// The verdict's label: the trace succeeded and its answer matches the
    /// reference.
    pub agrees: bool,
}

impl<'e> Judged<'e> {
    pub fn agreeing(&self) -> impl Iterator<Item = &JudgedTrace<'e>> {
        self.traces.iter().filter(|t| t.agrees)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    Unverified,
    NoReference,
}

/// The reference answer of an episode and the label of each trace, as the
/// triangulation decided them (read from the episode; recomputed by the
/// same function for episodes written before the labels were stored).
/// Nothing here votes or matches answers.
pub(crate) fn judge(episode: &Episode, include_unverified: bool) -> Result<Judged<'_>, Skip> {
    if !episode.verified && !include_unverified {
        return Err(Skip::Unverified);
    }
    let (reference, labels) = trace_labels(episode).ok_or(Skip::NoReference)?;
    let traces = std::iter::once((&episode.gold_trace, true))
        .chain(episode.consistency_traces.iter().map(|t| (t, false)))
        .zip(labels)
        .map(|((trace, is_gold), verdict)| JudgedTrace {
            trace,
            is_gold,
            agrees: verdict.agrees,
        })
        .collect();
    Ok(Judged {
        episode,
        reference,
        traces,
    })
}

// ------------------------------------------------------------ rendering

/// A chat message as TRL and OpenAI read it. Fields left empty are not
/// written; `datasets` fills them with null in the other rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Message {
    pub role: &'static str,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn plain(role: &'static str, content: String) -> Message {
        Message {
            role,
            content,
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn system(content: &str) -> Message {
        Message::plain("system", content.trim_end().to_string())
    }

    pub fn user(content: String) -> Message {
        Message::plain("user", content)
    }

    pub fn assistant(content: String) -> Message {
        Message::plain("assistant", content)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ToolCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FunctionCall {
    pub name: &'static str,
    /// `{"code": ...}`: an object for TRL, its JSON text for OpenAI.
    pub arguments: Value,
}

/// The question as the user asks it; the gold trace's teacher also saw the hint.
pub(crate) fn question_text(q: &Question, with_hint: bool) -> String {
    match (&q.hint, with_hint) {
        (Some(hint), true) if !hint.trim().is_empty() => {
            format!("{}\n\nHint: {}", q.question_text.trim(), hint.trim())
        }
        _ => q.question_text.trim().to_string(),
    }
}

/// System prompt and question: the start of every conversation.
pub(crate) fn prompt_messages(system: &str, q: &Question, with_hint: bool) -> Vec<Message> {
    vec![
        Message::system(system),
        Message::user(question_text(q, with_hint)),
    ]
}

/// The system prompt of the ```python-block formats.
pub(crate) fn system_prompt() -> &'static str {
    SYSTEM_PROMPT
}

/// The system prompt of the tool-calling format.
pub(crate) fn system_prompt_tools() -> &'static str {
    SYSTEM_PROMPT_TOOLS
}

/// The turns that count: up to the last one that submitted (what came
/// after the answer is not part of the answer), or all of them when
/// nothing was submitted.
pub(crate) fn played_turns(trace: &Trace) -> &[Turn] {
    match trace
        .turns
        .iter()
        .rposition(|t| t.execution.submitted_answer.is_some())
    {
        Some(last) => &trace.turns[..=last],
        None => &trace.turns,
    }
}

/// The model's side of a turn: its reasoning, then one ```python block.
pub(crate) fn assistant_text(turn: &Turn) -> String {
    let code = turn.code.trim_end_matches(['\n', '\r', ' ', '\t']);
    let block = format!("```python\n{code}\n```");
    let reasoning = turn.reasoning.trim();
    if reasoning.is_empty() {
        block
    } else {
        format!("{reasoning}\n\n{block}")
    }
}

/// What the REPL showed for a cell: stdout, the trailing expression's
/// value, stderr, the error (with the end of its traceback); a note when
/// the output cap cut a stream; `(no output)` when there was nothing.
pub(crate) fn observation(x: &Execution) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut stream = |name: &str, text: &str, parts: &mut Vec<String>| {
        if text.trim().is_empty() {
            return;
        }
        parts.push(format!("{name}:\n{}", text.trim_end()));
        if let Some(cut) = truncated_bytes(text) {
            notes.push(format!("({name} was truncated: {cut} bytes not shown)"));
        }
    };
    stream("stdout", &x.stdout, &mut parts);
    if let Some(result) = x.result.as_deref().filter(|r| !r.trim().is_empty()) {
        parts.push(format!("result:\n{}", result.trim_end()));
    }
    stream("stderr", &x.stderr, &mut parts);
    if let Some(error) = &x.error {
        parts.push(render_error(error));
    } else if !x.success {
        parts.push(format!("error: the cell ended with status {}", x.status));
    }
    parts.extend(notes);
    if parts.is_empty() {
        "(no output)".to_string()
    } else {
        parts.join("\n")
    }
}

/// `[... N bytes truncated]`, the marker the worker's output cap leaves
/// as the last line of a stream (sandbox-image/zygote.py, `cap_output`).
fn truncated_bytes(text: &str) -> Option<u64> {
    let last = text.trim_end().lines().last()?.trim();
    let n = last
        .strip_prefix("[... ")?
        .strip_suffix(" bytes truncated]")?;
    n.parse().ok()
}

fn render_error(error: &Value) -> String {
    let kind = error.get("type").and_then(Value::as_str).unwrap_or("Error");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let head = if message.is_empty() {
        format!("error: {kind}")
    } else {
        format!("error: {kind}: {message}")
    };
    let Some(traceback) = error
        .get("traceback")
        .and_then(Value::as_str)
        .map(str::trim_end)
        .filter(|t| !t.is_empty())
    else {
        return head;
    };
    let lines: Vec<&str> = traceback.lines().collect();
    let shown = if lines.len() > TRACEBACK_LINES {
        let cut = lines.len() - TRACEBACK_LINES;
        format!(
            "(traceback shortened: its first {cut} lines are not shown)\n{}",
            lines[cut..].join("\n")
        )
    } else {
        lines.join("\n")
    };
    format!("{head}\n{shown}")
}

/// The model's messages and the REPL's replies for a trace, in the
/// ```python style: assistant, user (the output), …, ending with the last
/// played assistant turn (its output is not shown: nothing answers it).
pub(crate) fn text_trajectory(trace: &Trace) -> Vec<Message> {
    let turns = played_turns(trace);
    let mut messages = Vec::with_capacity(turns.len() * 2);
    for (i, turn) in turns.iter().enumerate() {
        messages.push(Message::assistant(assistant_text(turn)));
        if i + 1 < turns.len() {
            messages.push(Message::user(observation(&turn.execution)));
        }
    }
    messages
}

/// One step as plain text for the standard-format reward data (prm, orm):
/// the assistant's turn and what the REPL showed.
pub(crate) fn step_text(turn: &Turn) -> String {
    format!(
        "{}\n\nOutput:\n{}",
        assistant_text(turn),
        observation(&turn.execution)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn execution(stdout: &str) -> Execution {
        Execution {
            success: true,
            stdout: stdout.to_string(),
            stderr: String::new(),
            hooks: Vec::new(),
            submitted_answer: None,
            status: "ok".into(),
            result: None,
            error: None,
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn formats_and_flavors_parse_by_their_names() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>().ok(), Some(f));
        }
        assert!("sft_tools".parse::<Format>().is_err());
        assert!("openai".parse::<Flavor>().is_ok());
        assert!(ExportOptions::new(Format::Sft, Flavor::Openai, false).is_err());
        assert!(ExportOptions::new(Format::Dpo, Flavor::Openai, false).is_ok());
    }

    #[test]
    fn the_embedded_tool_schema_is_json() {
        let ctx = Ctx::new(Flavor::Trl).unwrap();
        assert_eq!(ctx.tools[0]["function"]["name"], json!("python"));
    }

    #[test]
    fn observations_name_each_stream_and_say_when_output_was_cut() {
        let mut x = execution("a\n[... 1200 bytes truncated]\n");
        x.result = Some("42".into());
        x.stderr = "warn\n".into();
        assert_eq!(
            observation(&x),
            "stdout:\na\n[... 1200 bytes truncated]\nresult:\n42\nstderr:\nwarn\n(stdout was truncated: 1200 bytes not shown)"
        );
        assert_eq!(observation(&execution("")), "(no output)");
    }

    #[test]
    fn errors_show_the_end_of_a_long_traceback() {
        let mut x = execution("");
        x.success = false;
        x.status = "error".into();
        let tb: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
        x.error = Some(json!({"type": "KeyError", "message": "'x'", "traceback": tb.join("\n")}));
        let text = observation(&x);
        assert!(text.starts_with("error: KeyError: 'x'\n(traceback shortened: its first 10 lines"));
        assert!(text.ends_with("line 39"));
        x.error = None;
        x.status = "timeout".into();
        assert_eq!(observation(&x), "error: the cell ended with status timeout");
    }
}
