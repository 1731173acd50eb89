//! The zygote's own Python test suite (`sandbox-image/test_zygote.py`),
//! run outside any jail with the image's interpreter: the protocol, cell
//! semantics, output capture, normalization and hashing, reaping.

mod common;

use std::process::Command;

#[test]
fn zygote_python_suite_passes_with_the_image_interpreter() {
    let image = common::image();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-image/test_zygote.py");
    // The zygote applies the Landlock rights the supervisor computes; its
    // tests get them the same way (null where this host has no Landlock).
    let rights = csv_agent::sandbox::landlock::worker_rights_here().ok();
    let rights = serde_json::to_string(&rights).expect("rights as JSON");
    let out = Command::new(&image.python)
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CSV_AGENT_TEST_WORKER_LANDLOCK", rights)
        .envs(image.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("the image interpreter runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "test_zygote.py failed:\n{stderr}");
    assert!(stderr.contains("\nOK"), "{stderr}");
}
