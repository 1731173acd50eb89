//! Where events go. [`DatasetLogs`]: a `tracing` layer that writes each
//! event to `<dir>/<dataset>.log`, where the dataset is the `dataset` field
//! of the nearest enclosing span (the pipeline opens one per dataset);
//! events outside any dataset go to `<dir>/run.log`. [`StderrLogs`]: the
//! jail's events (`csv_agent::sandbox…`) on stderr at the level
//! `CSV_AGENT_LOG` names, written with the progress bars suspended
//! ([`draw_above`]) so a warning never garbles them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use indicatif::MultiProgress;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub struct DatasetLogs {
    dir: PathBuf,
    files: Mutex<HashMap<String, File>>,
}

impl DatasetLogs {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<DatasetLogs> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DatasetLogs {
            dir,
            files: Mutex::new(HashMap::new()),
        })
    }

    fn write(&self, name: &str, line: &str) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if !files.contains_key(name) {
            // Again here: `run --fresh` clears the output's logs directory
            // after this writer was made.
            let _ = std::fs::create_dir_all(&self.dir);
            let path = self.dir.join(format!("{name}.log"));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    files.insert(name.to_string(), f);
                }
                Err(_) => return, // logging must never stop the run
            }
        }
        if let Some(f) = files.get_mut(name) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The dataset a span belongs to, kept in the span's extensions.
struct DatasetName(String);

/// The dataset of the innermost span around `event` that names one.
fn event_dataset<S>(event: &Event<'_>, ctx: &Context<'_, S>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ctx.event_scope(event).and_then(|scope| {
        scope
            .from_root()
            .filter_map(|span| span.extensions().get::<DatasetName>().map(|d| d.0.clone()))
            .last()
    })
}

#[derive(Default)]
struct Fields {
    dataset: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "dataset" => self.dataset = Some(format!("{value:?}")),
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "dataset" => self.dataset = Some(value.to_string()),
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
}

impl<S> Layer<S> for DatasetLogs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(dataset), Some(span)) = (fields.dataset, ctx.span(id)) {
            span.extensions_mut().insert(DatasetName(dataset));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let dataset = event_dataset(event, &ctx);
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let line = format!(
            "{time} {:<5} {}{}\n",
            event.metadata().level(),
            fields.message,
            fields.rest
        );
        self.write(dataset.as_deref().unwrap_or("run"), &line);
    }
}

/// The target prefix of the jail's events: what [`StderrLogs`] shows.
pub const SANDBOX_TARGET: &str = "csv_agent::sandbox";

/// The progress bars on screen, if any: stderr lines are written above them.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Write stderr log lines above these bars (with them suspended) from now
/// on; `None` when they are gone.
pub fn draw_above(bars: Option<MultiProgress>) {
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = bars;
}

/// Write one whole line to stderr, with the progress bars (if any) suspended
/// while it is written, so it lands above them instead of through them.
pub fn eprint_line(line: &str) {
    let bars = BARS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let write = || {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    };
    match bars {
        Some(bars) => bars.suspend(write),
        None => write(),
    }
}

/// The stderr level for a `CSV_AGENT_LOG` value: `error`, `warn` (the
/// default, and whatever else it says), `info`, `debug` or `trace`.
pub fn stderr_level(name: &str) -> LevelFilter {
    match name.trim().to_ascii_lowercase().as_str() {
        "error" => LevelFilter::ERROR,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::WARN,
    }
}

/// The jail's events on stderr, as `csv-agent: warn: [dataset] message`:
/// only events whose target is under [`SANDBOX_TARGET`], at `level` or
/// more severe. (The pipeline's own events go to the log files only; the
/// CLI reports progress and results itself.)
pub struct StderrLogs {
    level: LevelFilter,
}

impl StderrLogs {
    pub fn new(level: LevelFilter) -> StderrLogs {
        StderrLogs { level }
    }

    /// At the level `CSV_AGENT_LOG` names (warn when unset).
    pub fn from_env() -> StderrLogs {
        StderrLogs::new(stderr_level(
            &std::env::var(crate::config::ENV_LOG).unwrap_or_default(),
        ))
    }

    fn shows(&self, target: &str, level: &Level) -> bool {
        target.starts_with(SANDBOX_TARGET) && self.level >= *level
    }
}

impl<S> Layer<S> for StderrLogs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !self.shows(meta.target(), meta.level()) {
            return;
        }
        let dataset = event_dataset(event, &ctx);
        let mut fields = Fields::default();
        event.record(&mut fields);
        let tag = meta.level().as_str().to_ascii_lowercase();
        let place = dataset.map(|d| format!("[{d}] ")).unwrap_or_default();
        eprint_line(&format!("csv-agent: {tag}: {place}{}\n", fields.message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn events_land_in_their_dataset_file() {
        let dir = tempfile::tempdir().unwrap();
        let layer = DatasetLogs::new(dir.path()).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("dataset", dataset = "penguins");
            span.in_scope(|| {
                let inner = tracing::info_span!("question", id = "q1");
                inner.in_scope(|| tracing::warn!(n = 3, "three of them"));
            });
            tracing::info!("outside");
        });
        let penguins = std::fs::read_to_string(dir.path().join("penguins.log")).unwrap();
        assert!(penguins.contains("WARN  three of them n=3"), "{penguins}");
        let run = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
        assert!(run.contains("outside"));
    }

    #[test]
    fn stderr_shows_the_jail_events_at_the_chosen_level_only() {
        let warn = StderrLogs::new(stderr_level(""));
        assert!(warn.shows("csv_agent::sandbox::worker", &Level::WARN));
        assert!(warn.shows("csv_agent::sandbox::jail", &Level::ERROR));
        assert!(!warn.shows("csv_agent::sandbox::jail", &Level::DEBUG));
        assert!(!warn.shows("csv_agent::pipeline", &Level::WARN));
        let debug = StderrLogs::new(stderr_level(" Debug "));
        assert!(debug.shows("csv_agent::sandbox::jail", &Level::DEBUG));
        assert_eq!(stderr_level("error"), LevelFilter::ERROR);
        assert_eq!(stderr_level("nonsense"), LevelFilter::WARN);
    }
}
