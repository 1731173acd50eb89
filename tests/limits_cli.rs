//! `--memory` and `--cell-timeout` (and `[sandbox]` in csv-agent.toml) on
//! `run`, `questions` and `eval`: bad values exit 2 with the reason before
//! any work, good ones are reported at start.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")
}

fn run(args: &[&str]) -> (i32, String) {
    let o = csv_agent(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_limits_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let reg = registry();
    let (reg, out) = (reg.to_str().unwrap(), out.to_str().unwrap());
    for (cmd, flag, value, says) in [
        ("run", "--memory", "12X", "unknown size unit"),
        (
            "run",
            "--memory",
            "100M",
            "below the smallest worker memory",
        ),
        ("questions", "--memory", "lots", "not a size"),
        ("run", "--cell-timeout", "0s", "between 1s and 24h"),
        ("questions", "--cell-timeout", "soon", "not a duration"),
        ("eval", "--memory", "1M", "below the smallest worker memory"),
        ("eval", "--cell-timeout", "2d", "between 1s and 24h"),
    ] {
        let mut args = vec![cmd, flag, value, "--out", out];
        if cmd == "eval" {
            args.extend(["--split", "/nonexistent.jsonl"]);
        } else {
            args.extend(["--datasets", reg]);
        }
        let (code, text) = run(&args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
    // The same keys in csv-agent.toml are checked the same way.
    let config = dir.path().join("csv-agent.toml");
    std::fs::write(&config, "[sandbox]\nmemory = \"tiny\"\n").expect("write");
    let (code, text) = run(&[
        "questions",
        "--datasets",
        reg,
        "--out",
        out,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("[sandbox] memory") && text.contains("tiny"),
        "{text}"
    );
    std::fs::write(&config, "[sandbox]\nmemroy = \"2G\"\n").expect("write");
    let (code, text) = run(&[
        "questions",
        "--datasets",
        reg,
        "--out",
        out,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("memroy"), "{text}");
}

#[test]
fn chosen_and_derived_limits_are_reported_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = registry();
    let out = dir.path().join("given");
    let (code, text) = run(&[
        "questions",
        "--datasets",
        reg.to_str().unwrap(),
        "--only",
        "penguins",
        "--max-questions",
        "1",
        "--memory",
        "1536M",
        "--cell-timeout",
        "90s",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("limits: memory 1536 MiB per worker, cell timeout 90 s (as given)"),
        "{text}"
    );
    let log = std::fs::read_to_string(out.join("logs/penguins.log")).expect("log");
    assert!(
        log.contains("limits: 1536 MiB per worker, cell timeout 90 s"),
        "{log}"
    );
    // From csv-agent.toml, the flag winning over the file.
    let config = dir.path().join("csv-agent.toml");
    std::fs::write(
        &config,
        "[sandbox]\nmemory = \"2G\"\ncell_timeout = \"2m\"\n",
    )
    .expect("write");
    let out = dir.path().join("file");
    let (code, text) = run(&[
        "questions",
        "--datasets",
        reg.to_str().unwrap(),
        "--only",
        "penguins",
        "--max-questions",
        "1",
        "--cell-timeout",
        "45s",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("limits: memory 2048 MiB per worker, cell timeout 45 s (as given)"),
        "{text}"
    );
}
