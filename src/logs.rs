//! Per-dataset log files: a `tracing` layer that writes each event to
//! `<dir>/<dataset>.log`, where the dataset is the `dataset` field of the
//! nearest enclosing span (the pipeline opens one per dataset); events
//! outside any dataset go to `<dir>/run.log`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
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
        let dataset = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .filter_map(|span| span.extensions().get::<DatasetName>().map(|d| d.0.clone()))
                .last()
        });
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
}
