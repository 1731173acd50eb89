//! Generation speed of composed questions, excluding any execution:
//! sampling chains, type-checking, verbalizing and rendering the reference,
//! the alternative and the screening functions. The profiles of the four
//! shipped datasets are computed once, in the jail, by the binary
//! (`csv-agent datasets profile --json`), before the clock starts.
//!
//! `cargo bench --bench compose` (3 runs of 2000 candidates per dataset).

use std::process::Command;
use std::time::Instant;

use csv_agent::profile::DataProfile;
use csv_agent::questions::compose::{operators, Composer};

const DATASETS: [&str; 4] = ["penguins", "grunfeld", "seattle-weather", "us-airports"];
const PER_RUN: usize = 2000;

fn profile(slug: &str) -> DataProfile {
    let out = Command::new(env!("CARGO_BIN_EXE_csv-agent"))
        .args(["datasets", "profile", "--json", slug])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running csv-agent datasets profile");
    assert!(
        out.status.success(),
        "profiling {slug}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a profile")
}

fn main() {
    let ops = operators().expect("operators");
    let profiles: Vec<(&str, DataProfile)> = DATASETS.iter().map(|d| (*d, profile(d))).collect();
    println!(
        "compose generation ({} operators), candidates per second:",
        ops.len()
    );
    let mut all = Vec::new();
    for run in 0..3 {
        for (slug, p) in &profiles {
            let started = Instant::now();
            let mut composer = Composer::new(&ops, p, slug, "bench", run);
            let made = composer.sample(PER_RUN).len();
            let secs = started.elapsed().as_secs_f64();
            let rate = made as f64 / secs;
            all.push(rate);
            println!(
                "  run {run} {slug:<16} {made:>5} candidates ({} chains sampled) in {secs:.3} s: {rate:.0}/s",
                composer.sampled
            );
        }
    }
    all.sort_by(|a, b| a.total_cmp(b));
    println!("median {:.0} candidates/s", all[all.len() / 2]);
}
