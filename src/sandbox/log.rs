//! The jail's stderr logger.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

pub(super) static LOG_LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();

/// How much the sandbox writes to stderr: `error`, `warn` (the default),
/// `info` or `debug`. The caller passes its setting in once (the CLI reads
/// `CSV_AGENT_LOG`); the sandbox reads no configuration of its own. A
/// second call changes nothing.
pub fn set_log_level(name: &str) {
    let level = match name.trim().to_ascii_lowercase().as_str() {
        "error" => Level::Error,
        "info" => Level::Info,
        "debug" | "trace" => Level::Debug,
        _ => Level::Warn,
    };
    let _ = LOG_LEVEL.set(level);
}

pub(super) fn log_level() -> Level {
    *LOG_LEVEL.get_or_init(|| Level::Warn)
}

pub(super) fn log(level: Level, msg: &str) {
    if level <= log_level() {
        let tag = match level {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        };
        eprintln!("csv-agent: {tag}: {msg}");
    }
}

/// A line the jail wrote to its stderr (init diagnostics, zygote warnings).
pub(crate) fn log_line(source: &str, line: &str) {
    log(Level::Debug, &format!("[{source}] {line}"));
}
