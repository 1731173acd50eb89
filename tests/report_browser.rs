//! The report of a real run, opened in a real headless browser (Debian's
//! `chromium`, installed here with apt-get when it is missing): no console
//! errors, every chart drawn, the episode browser filters and renders an
//! episode, a hostile episode's text stays text. The screenshot is kept as
//! `target/report-screenshot.png`.
//!
//! The browser is driven by scripts/report-browser-test.py (DevTools
//! protocol, Python standard library only).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{csv_agent, image};

fn chromium_present() -> bool {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|name| {
            Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn ensure_chromium() {
    if chromium_present() {
        return;
    }
    eprintln!("installing chromium with apt-get (once per machine)");
    let update = Command::new("apt-get").arg("update").status();
    assert!(update.is_ok_and(|s| s.success()), "apt-get update failed");
    let install = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        install.is_ok_and(|s| s.success()) && chromium_present(),
        "could not install chromium (apt-get install chromium)"
    );
}

/// An episode whose every text field tries to break out of the page.
fn hostile(line: &str) -> String {
    let mut e: serde_json::Value = serde_json::from_str(line).expect("episode");
    let attack = "</script><script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> \u{2028} <!--";
    e["episode_id"] = "ffffffffffffffff".into();
    e["verified"] = false.into();
    e["reason"] = attack.into();
    e["question"]["question_text"] = format!("hostile question {attack}").into();
    e["question"]["template_name"] = attack.into();
    if let Some(turn) = e["gold_trace"]["turns"].get_mut(0) {
        turn["code"] = attack.into();
        turn["execution"]["stdout"] = attack.into();
    }
    e["gold_trace"]["final_answer"] = attack.into();
    serde_json::to_string(&e).expect("json")
}

#[test]
fn the_report_opens_in_a_headless_browser_with_charts_and_a_working_episode_browser() {
    ensure_chromium();
    let _ = image();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let out_s = out.to_string_lossy().into_owned();
    let datasets = manifest.join("datasets");
    let run = csv_agent(&[
        "run",
        "--datasets",
        &datasets.to_string_lossy(),
        "--only",
        "penguins,seattle-weather",
        "--max-questions",
        "3",
        "--out",
        &out_s,
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("report: "));
    let episodes = out.join("episodes.jsonl");
    let text = std::fs::read_to_string(&episodes).expect("episodes");
    let first = text.lines().next().expect("one episode");
    std::fs::write(&episodes, format!("{text}{}\n", hostile(first))).expect("append");
    std::fs::copy(manifest.join("docs/memory.svg"), out.join("memory.svg")).expect("memory svg");
    let report = csv_agent(&["report", "--out", &out_s]);
    assert_eq!(
        report.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    // A folder that is not a run is refused, saying what to do.
    let not_a_run = csv_agent(&["report", "--out", &dir.path().to_string_lossy()]);
    assert_eq!(not_a_run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_a_run.stderr).contains("csv-agent run --out"));
    let html = std::fs::read_to_string(out.join("report.html")).expect("report");
    // Static: nothing fetched from anywhere.
    for needle in ["http://", "https://", "src=\"//"] {
        let outside: Vec<&str> = html
            .match_indices(needle)
            .map(|(i, _)| &html[i..(i + 60).min(html.len())])
            .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(outside.is_empty(), "the report refers outside: {outside:?}");
    }
    assert!(!html.contains("<script>window.__pwned"));

    let screenshot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("report-screenshot.png");
    let mut driver = Command::new("python3");
    driver
        .arg(manifest.join("scripts/report-browser-test.py"))
        .arg(out.join("report.html"))
        .arg(&screenshot);
    for chart in [
        "template",
        "difficulty",
        "dataset",
        "agreement",
        "stages",
        "timeline",
        "memory",
    ] {
        driver.args(["--expect-chart", chart]);
    }
    let checked = driver.output().expect("python3 runs");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(checked.status.code(), Some(0), "{said}");
    assert!(said.contains("ok    no console errors"), "{said}");
    let png = std::fs::read(&screenshot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{said}");
}
