//! The first hour of a new user, outside the repository: an installed
//! binary, an empty working directory, no `--datasets`, no
//! `CSV_AGENT_DATASETS`.
//!
//! "Installed" here is the debug binary cargo already built, copied into
//! `<root>/bin/` of a temporary install root: `cargo install --path .
//! --root <root>` would do the same copy after a release build of several
//! minutes. What matters is checked the same way: no source tree next to
//! the binary, the working directory empty, the bundled datasets found
//! inside the binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::{image, BIN};

fn install(root: &Path) -> std::path::PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let installed = bin.join("csv-agent");
    std::fs::copy(BIN, &installed).expect("install the binary");
    installed
}

#[test]
fn an_installed_binary_in_an_empty_directory_runs_the_bundled_datasets() {
    let _ = image();
    let root = tempfile::tempdir().expect("install root");
    let installed = install(root.path());
    let work = tempfile::tempdir().expect("work dir");
    let run = Command::new(&installed)
        .args(["run", "--max-questions", "3"])
        .current_dir(work.path())
        .env_remove("CSV_AGENT_DATASETS")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Said once, on stderr.
    assert_eq!(
        stderr.matches("using the 4 bundled datasets").count(),
        1,
        "{stderr}"
    );
    // Nothing but the output directory was created where it ran.
    let created: Vec<String> = std::fs::read_dir(work.path())
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(created, ["out"], "{created:?}");
    let episodes =
        std::fs::read_to_string(work.path().join("out/episodes.jsonl")).expect("episodes");
    let mut verified = std::collections::BTreeMap::<String, usize>::new();
    for line in episodes.lines() {
        let e: serde_json::Value = serde_json::from_str(line).expect("episode json");
        if e["verified"] == true {
            *verified
                .entry(e["dataset"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    for slug in ["grunfeld", "penguins", "seattle-weather", "us-airports"] {
        assert!(
            verified.get(slug).copied().unwrap_or(0) > 0,
            "no verified episode for {slug}: {verified:?}\n{stdout}"
        );
    }
    // The bundled bytes are the checkout's: the dataset hashes match.
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/penguins/data.csv");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(checkout).expect("read")))[..16].to_string()
    };
    assert!(
        episodes.contains(&format!("\"dataset_hash\":\"{hash}\"")),
        "the penguins episodes carry another dataset hash than the checkout's"
    );
    // The report is where the run said.
    assert!(stdout.contains("report:"), "{stdout}");
    assert!(work.path().join("out/report.html").is_file());
}
