//! What a run leaves on disk, and how it survives being killed:
//!
//! - `episodes.jsonl`: one episode per line, appended with a single write
//!   and synced before the manifest says it is done. A line cut short by a
//!   crash has no newline; opening the file cuts it off, so no torn line is
//!   ever read.
//! - `manifest.sqlite`: per dataset (content hash, questions key, outcome)
//!   and per question fingerprint (outcome, reason, episode id). Episodes
//!   found in the file but missing from the manifest (killed between the two
//!   writes) are put back into it on open, so each episode exists once.
//! - whole files (questions, summary) are written to a temporary name and
//!   renamed.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const EPISODES_FILE: &str = "episodes.jsonl";
pub const MANIFEST_FILE: &str = "manifest.sqlite";
pub const SUMMARY_FILE: &str = "summary.json";
pub const QUESTIONS_DIR: &str = "questions";
pub const LOGS_DIR: &str = "logs";
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("another csv-agent run is using {path}; wait for it or choose another --out")]
    Busy { path: PathBuf },
    /// A write handed to the blocking pool never ran to its end (the
    /// runtime was shutting down).
    #[error("a write to the run's files was cancelled before it finished")]
    Cancelled,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Holds the output directory for one run: a second process on the same
/// directory would interleave manifests.
pub struct OutputLock {
    _file: File,
}

impl OutputLock {
    pub fn acquire(out: &Path) -> Result<OutputLock, StoreError> {
        fs::create_dir_all(out).map_err(io("creating", out))?;
        let path = out.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        fs2::FileExt::try_lock_exclusive(&file).map_err(|_| StoreError::Busy {
            path: out.to_path_buf(),
        })?;
        Ok(OutputLock { _file: file })
    }
}

/// Remove what a run wrote in `out` (and nothing else).
pub fn clear_outputs(out: &Path) -> Result<(), StoreError> {
    for name in [EPISODES_FILE, MANIFEST_FILE, SUMMARY_FILE] {
        let path = out.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path)(e)),
        }
    }
    for dir in [QUESTIONS_DIR, LOGS_DIR] {
        let path = out.join(dir);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path)(e)),
        }
    }
    Ok(())
}

// ------------------------------------------------------------- JSON Lines

/// Cut a trailing partial line (no newline: the write was interrupted).
/// Returns the bytes removed.
pub fn repair_tail(path: &Path) -> Result<u64, StoreError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("opening", path)(e)),
    };
    let len = file.metadata().map_err(io("reading", path))?.len();
    if len == 0 {
        return Ok(0);
    }
    // Walk back from the end in blocks to the last newline.
    let mut end = len;
    let mut keep = 0;
    let mut block = vec![0u8; 64 * 1024];
    'search: while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))
            .map_err(io("reading", path))?;
        file.read_exact(&mut block[..n])
            .map_err(io("reading", path))?;
        for i in (0..n).rev() {
            if block[i] == b'\n' {
                keep = start + i as u64 + 1;
                break 'search;
            }
        }
        end = start;
    }
    if keep < len {
        file.set_len(keep).map_err(io("truncating", path))?;
        file.sync_all().map_err(io("syncing", path))?;
    }
    Ok(len - keep)
}

/// Every record of a JSON Lines file (missing file: none). A last line
/// without its newline is a torn write and is ignored.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("opening", path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io("reading", path))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| StoreError::Json {
                path: path.to_path_buf(),
                line: number,
                source,
            })?,
        );
    }
    Ok(out)
}

/// Write a whole file under a temporary name, then rename it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let tmp = path.with_extension("partial");
    let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    Ok(())
}

pub fn write_jsonl_atomic<T: Serialize>(path: &Path, records: &[T]) -> Result<(), StoreError> {
    let mut bytes = Vec::new();
    for r in records {
        // Serializing our own types cannot fail (string keys, finite floats).
        if let Ok(line) = serde_json::to_vec(r) {
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
    }
    write_atomic(path, &bytes)
}

/// The append-only episodes file.
pub struct EpisodeLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl EpisodeLog {
    /// Open (creating) the file after cutting any torn last line.
    pub fn open(path: &Path) -> Result<EpisodeLog, StoreError> {
        repair_tail(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("opening", path))?;
        Ok(EpisodeLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The `episode_id` of every whole line.
    pub fn ids(&self) -> Result<HashSet<String>, StoreError> {
        let records: Vec<serde_json::Value> = read_jsonl(&self.path)?;
        Ok(records
            .iter()
            .filter_map(|r| {
                r.get("episode_id")
                    .and_then(|v| v.as_str())
                    .map(String::from)
            })
            .collect())
    }

    /// Append one record as one line and sync it. A failed append leaves the
    /// file as it was (cut back to its length before), never a fragment.
    pub fn append<T: Serialize>(&self, record: &T) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record).map_err(|source| StoreError::Json {
            path: self.path.clone(),
            line: 0,
            source,
        })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // A write may land only in part (a full disk, a file-size limit):
        // the file goes back to where it was before the error is returned,
        // so the next line never joins a fragment of this one.
        let before = file.metadata().map_err(io("measuring", &self.path))?.len();
        let written = file
            .write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(io("writing", &self.path));
        if written.is_err() {
            // If even the cut fails, the torn tail is repaired when the log
            // is next opened (`repair_tail`).
            let _ = file.set_len(before);
        }
        written
    }
}

// ------------------------------------------------------------- statuses

/// A status's text in the manifest, `summary.json` and the logs. The texts
/// are the ones earlier versions wrote: a resumed or merged run reads them.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownText;

            fn from_str(s: &str) -> Result<$name, UnknownText> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownText {
                        kind: stringify!($name),
                        text: s.to_string(),
                    }),
                }
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<$name> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

/// A manifest text that names no known status (a newer csv-agent wrote it,
/// or the file was edited).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{text}`")]
pub struct UnknownText {
    pub kind: &'static str,
    pub text: String,
}

text_enum! {
    /// Outcome of one question.
    QuestionStatus {
        /// An episode was written and it is verified.
        Verified = "verified",
        /// An episode was written, not verified (the reason is kept).
        Unverified = "unverified",
        /// No episode: the next run tries again.
        Failed = "failed",
        /// The reference answer is degenerate (NaN, infinite, undefined):
        /// no episode, not a failure.
        Ineligible = "ineligible",
    }
}

impl QuestionStatus {
    /// The question needs no more work (an episode exists).
    pub fn is_done(self) -> bool {
        matches!(self, QuestionStatus::Verified | QuestionStatus::Unverified)
    }

    pub fn of_episode(verified: bool) -> QuestionStatus {
        if verified {
            QuestionStatus::Verified
        } else {
            QuestionStatus::Unverified
        }
    }
}

text_enum! {
    /// Where a question's outcome was decided.
    Stage {
        /// Establishing the ground truth (reference and alternative programs).
        GroundTruth = "ground_truth",
        /// The teacher answering it (an episode, or a failure of its own).
        Teacher = "teacher",
        /// The model server failed while the teacher answered.
        Model = "model",
        /// The sandbox or a worker was lost for a reason outside the code,
        /// past the retries.
        Infrastructure = "infrastructure",
    }
}

text_enum! {
    /// Outcome of one dataset.
    DatasetStatus {
        /// Questions made (the key recorded), answers under way.
        Running = "running",
        Done = "done",
        /// The whole dataset failed (the reason is kept).
        Failed = "failed",
    }
}

// ------------------------------------------------------------- manifest

/// Outcome of one question for one teacher setting.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionRow {
    pub fingerprint: String,
    pub dataset: String,
    pub question_id: String,
    pub template: Option<String>,
    pub difficulty: String,
    pub status: QuestionStatus,
    pub stage: Stage,
    pub reason: Option<String>,
    pub episode_id: Option<String>,
    pub elapsed: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    pub slug: String,
    pub dataset_hash: Option<String>,
    pub questions_key: Option<String>,
    pub status: DatasetStatus,
    pub reason: Option<String>,
    pub n_questions: u64,
    pub elapsed: f64,
}

pub struct Manifest {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    slug TEXT PRIMARY KEY,
    dataset_hash TEXT,
    questions_key TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    n_questions INTEGER NOT NULL DEFAULT 0,
    elapsed REAL NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS questions (
    fingerprint TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    question_id TEXT NOT NULL,
    template TEXT,
    difficulty TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT,
    episode_id TEXT,
    elapsed REAL NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS questions_by_dataset ON questions(dataset);
";

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Manifest {
    pub fn open(path: &Path) -> Result<Manifest, StoreError> {
        let sql = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        // WAL + NORMAL: each commit survives a killed process (not a power
        // cut, which would only lose the last few marks; the episodes file
        // is the truth and is reconciled on open).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1')",
            [],
        )
        .map_err(sql)?;
        Ok(Manifest {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    pub fn record_question(&self, row: &QuestionRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO questions(fingerprint, dataset, question_id, template, difficulty, status, stage, reason, episode_id, elapsed, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(fingerprint) DO UPDATE SET status = excluded.status, stage = excluded.stage,
                   reason = excluded.reason, episode_id = excluded.episode_id, elapsed = excluded.elapsed,
                   updated_at = excluded.updated_at",
                params![
                    row.fingerprint,
                    row.dataset,
                    row.question_id,
                    row.template,
                    row.difficulty,
                    row.status,
                    row.stage,
                    row.reason,
                    row.episode_id,
                    row.elapsed,
                    now()
                ],
            )
            .map(|_| ())
        })
    }

    pub fn question(&self, fingerprint: &str) -> Result<Option<QuestionRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT fingerprint, dataset, question_id, template, difficulty, status, stage, reason, episode_id, elapsed
                 FROM questions WHERE fingerprint = ?1",
                [fingerprint],
                question_row,
            )
            .optional()
        })
    }

    pub fn questions(&self) -> Result<Vec<QuestionRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT fingerprint, dataset, question_id, template, difficulty, status, stage, reason, episode_id, elapsed
                 FROM questions ORDER BY dataset, question_id",
            )?;
            let rows = stmt.query_map([], question_row)?;
            rows.collect()
        })
    }

    pub fn remove_questions_of(&self, slug: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM questions WHERE dataset = ?1 AND status = ?2 AND stage = ?3",
                params![slug, QuestionStatus::Failed, Stage::GroundTruth],
            )
            .map(|_| ())
        })
    }

    pub fn record_dataset(&self, row: &DatasetRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO datasets(slug, dataset_hash, questions_key, status, reason, n_questions, elapsed, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(slug) DO UPDATE SET dataset_hash = excluded.dataset_hash,
                   questions_key = excluded.questions_key, status = excluded.status, reason = excluded.reason,
                   n_questions = excluded.n_questions, elapsed = excluded.elapsed, updated_at = excluded.updated_at",
                params![
                    row.slug,
                    row.dataset_hash,
                    row.questions_key,
                    row.status,
                    row.reason,
                    row.n_questions as i64,
                    row.elapsed,
                    now()
                ],
            )
            .map(|_| ())
        })
    }

    pub fn dataset(&self, slug: &str) -> Result<Option<DatasetRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT slug, dataset_hash, questions_key, status, reason, n_questions, elapsed FROM datasets WHERE slug = ?1",
                [slug],
                dataset_row,
            )
            .optional()
        })
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT slug, dataset_hash, questions_key, status, reason, n_questions, elapsed FROM datasets ORDER BY slug",
            )?;
            let rows = stmt.query_map([], dataset_row)?;
            rows.collect()
        })
    }
}

fn question_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QuestionRow> {
    Ok(QuestionRow {
        fingerprint: r.get(0)?,
        dataset: r.get(1)?,
        question_id: r.get(2)?,
        template: r.get(3)?,
        difficulty: r.get(4)?,
        status: r.get(5)?,
        stage: r.get(6)?,
        reason: r.get(7)?,
        episode_id: r.get(8)?,
        elapsed: r.get(9)?,
    })
}

fn dataset_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRow> {
    Ok(DatasetRow {
        slug: r.get(0)?,
        dataset_hash: r.get(1)?,
        questions_key: r.get(2)?,
        status: r.get(3)?,
        reason: r.get(4)?,
        n_questions: r.get::<_, i64>(5)? as u64,
        elapsed: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_torn_last_line_is_cut_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        fs::write(
            &path,
            b"{\"episode_id\":\"a\"}\n{\"episode_id\":\"b\"}\n{\"episode_id\":\"c\",\"x\":[1,",
        )
        .unwrap();
        let records: Vec<serde_json::Value> = read_jsonl(&path).unwrap();
        assert_eq!(records.len(), 2);
        let log = EpisodeLog::open(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap().last(), Some(&b'\n'));
        log.append(&json!({"episode_id": "d"})).unwrap();
        let ids = log.ids().unwrap();
        assert_eq!(ids, ["a", "b", "d"].iter().map(|s| s.to_string()).collect());
    }

    #[test]
    fn repair_handles_files_without_any_newline_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        fs::write(&path, vec![b'x'; 200_000]).unwrap();
        assert_eq!(repair_tail(&path).unwrap(), 200_000);
        assert_eq!(fs::read(&path).unwrap().len(), 0);
        let mut long = vec![b'y'; 150_000];
        long.push(b'\n');
        long.extend_from_slice(b"torn");
        fs::write(&path, &long).unwrap();
        assert_eq!(repair_tail(&path).unwrap(), 4);
        assert_eq!(fs::read(&path).unwrap().len(), 150_001);
    }

    #[test]
    fn manifest_rows_round_trip_and_update() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::open(&dir.path().join(MANIFEST_FILE)).unwrap();
        let mut row = QuestionRow {
            fingerprint: "f1".into(),
            dataset: "penguins".into(),
            question_id: "q1".into(),
            template: Some("t".into()),
            difficulty: "EASY".into(),
            status: QuestionStatus::Failed,
            stage: Stage::Teacher,
            reason: Some("boom".into()),
            episode_id: None,
            elapsed: 1.5,
        };
        m.record_question(&row).unwrap();
        row.status = QuestionStatus::Verified;
        row.reason = None;
        row.episode_id = Some("f1".into());
        m.record_question(&row).unwrap();
        assert_eq!(m.question("f1").unwrap(), Some(row));
        assert_eq!(m.questions().unwrap().len(), 1);
        // Reopening keeps everything.
        drop(m);
        let m = Manifest::open(&dir.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(m.questions().unwrap()[0].status, QuestionStatus::Verified);
    }

    #[test]
    fn statuses_keep_the_texts_older_runs_wrote() {
        let texts = |all: Vec<String>| all.join(" ");
        assert_eq!(
            texts(QuestionStatus::ALL.iter().map(|s| s.to_string()).collect()),
            "verified unverified failed ineligible"
        );
        assert_eq!(
            texts(Stage::ALL.iter().map(|s| s.to_string()).collect()),
            "ground_truth teacher model infrastructure"
        );
        assert_eq!(
            texts(DatasetStatus::ALL.iter().map(|s| s.to_string()).collect()),
            "running done failed"
        );
        for s in Stage::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(s.as_str().parse::<Stage>(), Ok(*s));
        }
        assert!("finished".parse::<DatasetStatus>().is_err());
        // A manifest written by an earlier version (plain text columns) reads back typed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let m = Manifest::open(&path).unwrap();
        m.with(|c| {
            c.execute_batch(
                "INSERT INTO questions VALUES ('f', 'd', 'q', NULL, 'EASY', 'ineligible', 'ground_truth', 'NaN', NULL, 0, 'now');
                 INSERT INTO datasets VALUES ('d', NULL, NULL, 'running', NULL, 1, 0, 'now');",
            )
        })
        .unwrap();
        let q = m.question("f").unwrap().unwrap();
        assert_eq!(
            (q.status, q.stage),
            (QuestionStatus::Ineligible, Stage::GroundTruth)
        );
        assert_eq!(
            m.dataset("d").unwrap().unwrap().status,
            DatasetStatus::Running
        );
    }

    #[test]
    fn a_second_run_on_the_same_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = OutputLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            OutputLock::acquire(dir.path()),
            Err(StoreError::Busy { .. })
        ));
    }
}
