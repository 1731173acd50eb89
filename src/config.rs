//! Environment variables and the directories they resolve to, declared in one
//! place so the CLI, the library and the docs agree on their names.

use std::path::PathBuf;

/// Where images (and later other caches) live; overrides everything else.
pub const ENV_CACHE_DIR: &str = "CSV_AGENT_CACHE_DIR";
/// The interpreter the sandbox image is built from (default: `python3`).
pub const ENV_PYTHON: &str = "CSV_AGENT_PYTHON";
/// A ready image folder to use as is, instead of locating or building one.
pub const ENV_IMAGE: &str = "CSV_AGENT_IMAGE";
/// The dataset registry directory (default `./datasets`, else the bundled datasets).
pub const ENV_DATASETS: &str = "CSV_AGENT_DATASETS";
/// Kaggle's API base URL for `datasets add kaggle:…` (default `https://www.kaggle.com`).
pub const ENV_KAGGLE_URL: &str = "CSV_AGENT_KAGGLE_URL";
/// Kaggle credentials, as the `kaggle` tool reads them (never logged).
pub const ENV_KAGGLE_USERNAME: &str = "KAGGLE_USERNAME";
pub const ENV_KAGGLE_KEY: &str = "KAGGLE_KEY";
/// Where `kaggle.json` lives (default `~/.kaggle`).
pub const ENV_KAGGLE_CONFIG_DIR: &str = "KAGGLE_CONFIG_DIR";
/// Log verbosity of the supervisor (`error`, `warn`, `info`, `debug`).
pub const ENV_LOG: &str = "CSV_AGENT_LOG";
/// The bearer token `csv-agent serve --listen` requires on loopback TCP
/// (and its clients send).
pub const ENV_SERVE_TOKEN: &str = "CSV_AGENT_SERVE_TOKEN";
/// A running `csv-agent serve` (a socket path or `http://127.0.0.1:PORT`)
/// that `sandbox exec` uses instead of starting its own zygote.
pub const ENV_SERVE: &str = "CSV_AGENT_SERVE";

/// The cache directory: `$CSV_AGENT_CACHE_DIR`, else `$XDG_CACHE_HOME/csv-agent`,
/// else `~/.cache/csv-agent`, else `/var/tmp/csv-agent-cache-<uid>` (a user
/// without a home, such as `nobody`, still gets a working cache).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env(ENV_CACHE_DIR) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("csv-agent");
    }
    if let Some(home) = non_empty_env("HOME") {
        let home = PathBuf::from(home);
        if home.is_dir() {
            return home.join(".cache").join("csv-agent");
        }
    }
    // Not /tmp: the jail mounts its own /tmp over that path, so an image kept
    // there could not be bound into it at its own path.
    let uid = nix::unistd::getuid();
    PathBuf::from("/var/tmp").join(format!("csv-agent-cache-{uid}"))
}

/// The interpreter the image is built from: `$CSV_AGENT_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    non_empty_env(ENV_PYTHON)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// `$CSV_AGENT_IMAGE`, when set.
pub fn prebuilt_image() -> Option<PathBuf> {
    non_empty_env(ENV_IMAGE).map(PathBuf::from)
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The OpenAI-compatible endpoint, up to `/v1` (vLLM, Ollama, OpenRouter, OpenAI).
pub const ENV_OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
/// The API key sent as a bearer token. Read from the environment only:
/// never from `csv-agent.toml`, never logged.
pub const ENV_OPENAI_API_KEY: &str = "OPENAI_API_KEY";
/// The configuration file (default: `./csv-agent.toml` when it exists).
pub const ENV_CONFIG: &str = "CSV_AGENT_CONFIG";
/// The file looked for in the working directory.
pub const CONFIG_FILE: &str = "csv-agent.toml";

/// `csv-agent.toml`: defaults for the model and the LLM teacher, under the
/// flags and the environment. Unknown keys are refused, so a typo is an
/// error rather than a silently ignored setting.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub llm: LlmFile,
    #[serde(default)]
    pub teacher: TeacherFile,
    #[serde(default)]
    pub questions: QuestionsFile,
    #[serde(default)]
    pub sandbox: SandboxFile,
}

/// `[sandbox]`: the worker limits of `run`, `questions` and `eval` (the
/// flags `--memory` and `--cell-timeout` win).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    /// Memory per worker, like `2G` or `512M`.
    pub memory: Option<String>,
    /// Wall-clock limit per cell, like `120s` or `5m`.
    pub cell_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmFile {
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Like `120s` or `2m`.
    pub request_timeout: Option<String>,
    pub max_concurrent_requests: Option<usize>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherFile {
    pub max_turns: Option<u32>,
    /// Consistency traces per difficulty: `{ EASY = 2, MEDIUM = 2, HARD = 4, VERY_HARD = 6 }`.
    pub n_consistency: Option<NConsistencyFile>,
    /// Characters of conversation sent to the model before old outputs are elided.
    pub context_budget_chars: Option<usize>,
}

/// `[teacher] n_consistency`: consistency traces per difficulty (the CLI
/// turns it into the teacher's own setting; config imports nothing above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct NConsistencyFile {
    pub easy: u32,
    pub medium: u32,
    pub hard: u32,
    pub very_hard: u32,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionsFile {
    /// LLM questions per dataset.
    pub llm_questions: Option<usize>,
    /// Shares of EASY, MEDIUM, HARD, VERY_HARD among LLM questions.
    pub mix: Option<MixFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct MixFile {
    pub easy: f64,
    pub medium: f64,
    pub hard: f64,
    pub very_hard: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The configuration file to read: `explicit`, else `$CSV_AGENT_CONFIG`,
/// else `./csv-agent.toml` when it exists, else none.
pub fn config_path(explicit: Option<&std::path::Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = non_empty_env(ENV_CONFIG) {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(CONFIG_FILE);
    local.is_file().then_some(local)
}

/// Read and check `path` (none: all defaults).
pub fn load_file(path: Option<&std::path::Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // A key written into the file is refused without quoting the line (the
    // parser's message would print the secret).
    if let Ok(table) = text.parse::<toml::Table>() {
        let has_key = table
            .get("llm")
            .and_then(|l| l.as_table())
            .is_some_and(|l| l.contains_key("api_key"));
        if has_key {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "`api_key` is not read from files; remove it and set {ENV_OPENAI_API_KEY} in the environment"
                ),
            });
        }
    }
    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

/// `$OPENAI_BASE_URL`, when set.
pub fn openai_base_url() -> Option<String> {
    non_empty_env(ENV_OPENAI_BASE_URL)
}

/// `$OPENAI_API_KEY`, when set.
pub fn openai_api_key() -> Option<String> {
    non_empty_env(ENV_OPENAI_API_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csv-agent.toml");
        std::fs::write(
            &path,
            r#"
[llm]
base_url = "http://127.0.0.1:8000/v1"
model = "qwen"
temperature = 0.7
request_timeout = "90s"
max_concurrent_requests = 128

[teacher]
max_turns = 8
n_consistency = { EASY = 1, MEDIUM = 2, HARD = 3, VERY_HARD = 4 }

[questions]
llm_questions = 20
mix = { EASY = 0.25, MEDIUM = 0.25, HARD = 0.25, VERY_HARD = 0.25 }

[sandbox]
memory = "2G"
cell_timeout = "120s"
"#,
        )
        .unwrap();
        let cfg = load_file(Some(&path)).unwrap();
        assert_eq!(cfg.llm.model.as_deref(), Some("qwen"));
        assert_eq!(cfg.teacher.n_consistency.unwrap().very_hard, 4);
        assert_eq!(cfg.questions.llm_questions, Some(20));
        assert_eq!(cfg.sandbox.memory.as_deref(), Some("2G"));

        std::fs::write(&path, "[llm]\nmodle = \"x\"\n").unwrap();
        let err = load_file(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("modle"), "{err}");
        std::fs::write(&path, "[llm]\napi_key = \"sk-secret\"\n").unwrap();
        let err = load_file(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("OPENAI_API_KEY") && !err.contains("sk-secret"),
            "{err}"
        );
    }
}
