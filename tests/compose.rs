//! Composed questions end to end, through the real binary: a messy
//! Kaggle-style table (row numbers and ids, day-first dates, a date column
//! that mostly fails to parse, free text, heavy missing values) gives
//! verified composed episodes with one gold-trace turn per step, binds no
//! id, parses dates day first and trips the guards; a seed fixes the
//! questions; and every operator of the grammar runs in the jail on a
//! shipped dataset with its alternative agreeing.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use csv_agent::schema::{Episode, Question, QuestionSource};

fn read_jsonl<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a json line"))
        .collect()
}

/// 300 rows of a sales export as people publish them.
fn messy_csv() -> String {
    let mut s: u64 = 42;
    let mut next = move |n: u64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % n
    };
    let regions = ["North", "South", "East", "West", "Central"];
    let segments = ["Consumer", "Corporate", "Home Office"];
    let words = [
        "fast",
        "late",
        "damaged box",
        "great",
        "ok",
        "would buy again",
        "refund asked",
    ];
    let mut out = String::from(
        "Unnamed: 0,customer_id,order_date,ship_date,region,segment,amount,discount,quantity,comment\n",
    );
    for i in 0..300u64 {
        let day = 1 + next(28);
        let month = 1 + next(12);
        let year = 2019 + next(4);
        let ship = if next(10) < 8 {
            ["unknown", "n/a", "pending", "TBD"][next(4) as usize].to_string()
        } else {
            format!("{:02}/{:02}/{}", day, month, year)
        };
        let region = if next(10) == 0 {
            ""
        } else {
            regions[next(5) as usize]
        };
        let amount = if next(10) < 3 {
            String::new()
        } else {
            format!("{:.2}", 5.0 + next(50_000) as f64 / 37.0)
        };
        let discount = format!("{:.2}", next(400) as f64 / 100.0 - 0.5);
        let comment = if next(5) == 0 {
            String::new()
        } else {
            format!(
                "{} {} #{}",
                words[next(7) as usize],
                words[next(7) as usize],
                i
            )
        };
        out.push_str(&format!(
            "{i},C{:05},{:02}/{:02}/{year},{ship},{region},{},{amount},{discount},{},{comment}\n",
            10_000 + i * 7,
            day,
            month,
            segments[next(3) as usize],
            1 + next(9),
        ));
    }
    out
}

fn registry(dir: &Path) -> PathBuf {
    let reg = dir.join("registry");
    std::fs::create_dir_all(reg.join("sales")).expect("mkdir");
    write_csv(&reg.join("sales"), "data.csv", &messy_csv());
    reg
}

#[test]
fn a_messy_table_gives_verified_composed_episodes_without_ids_and_with_day_first_dates() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let out = dir.path().join("out");
    let o = csv_agent(&[
        "run",
        "--questions",
        "compose",
        "--max-questions",
        "40",
        "--datasets",
        path(&reg),
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let episodes: Vec<Episode> = read_jsonl(&out.join("episodes.jsonl"));
    assert_eq!(episodes.len(), 40);
    let unverified: Vec<_> = episodes
        .iter()
        .filter(|e| !e.verified)
        .map(|e| format!("{}: {:?}", e.question.question_text, e.reason))
        .collect();
    assert!(unverified.is_empty(), "{unverified:#?}");
    for e in &episodes {
        let q = &e.question;
        assert_eq!(q.source, QuestionSource::Compose);
        assert!(q.category.is_some());
        let chain = &q.composition.as_ref().expect("a chain").chain;
        assert_eq!(chain.len() as u32, q.n_steps);
        // One gold turn per step, each hooking its intermediate result.
        assert_eq!(e.gold_trace.turns.len(), chain.len());
        assert!(e
            .gold_trace
            .turns
            .iter()
            .all(|t| t.execution.hooks.len() == 1));
        let params = q.template_params.as_ref().expect("bindings").to_string();
        assert!(
            !params.contains("Unnamed: 0") && !params.contains("customer_id"),
            "{params}"
        );
        assert!(
            !q.question_text.contains("parse ship_date"),
            "{}",
            q.question_text
        );
        if q.question_text.contains("parse order_date") {
            assert!(
                q.question_text.contains("%d/%m/%Y (day first"),
                "{}",
                q.question_text
            );
        }
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary"))
            .expect("json");
    let compose = &summary["datasets"][0]["compose"];
    assert_eq!(compose["kept"], 40, "{summary}");
    let refused = compose["refused"].as_object().expect("refusals");
    assert!(!refused.is_empty(), "{summary}");

    let o = csv_agent(&[
        "inspect",
        "--out",
        path(&out),
        "questions",
        "--source",
        "compose",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("chain: "));
}

#[test]
fn the_same_seed_gives_the_same_questions_and_another_seed_others() {
    let dir = world_readable_dir();
    let reg = registry(dir.path());
    let ids = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        let o = csv_agent(&[
            "questions",
            "--source",
            "compose",
            "--max-questions",
            "12",
            "--seed",
            seed,
            "--datasets",
            path(&reg),
            "--out",
            path(&out),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        read_jsonl::<Question>(&out.join("questions/sales.jsonl"))
            .into_iter()
            .map(|q| q.id)
            .collect::<Vec<_>>()
    };
    let a = ids("5", "a");
    assert_eq!(a.len(), 12);
    assert_eq!(a, ids("5", "b"));
    assert_ne!(a, ids("6", "c"));
}

#[test]
fn every_operator_runs_in_the_jail_on_a_shipped_dataset_with_its_alternative_agreeing() {
    let dir = world_readable_dir();
    let out = dir.path().join("out");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
    let o = csv_agent(&[
        "questions",
        "--source",
        "compose",
        "--max-questions",
        "520",
        "--datasets",
        path(&shipped),
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Kept means: the reference ran, the alternative agreed (screening),
    // and the ground truth was established (reference and alternative
    // again, in fresh workers).
    let mut used = BTreeSet::new();
    for slug in ["penguins", "grunfeld", "seattle-weather", "us-airports"] {
        for q in read_jsonl::<Question>(&out.join(format!("questions/{slug}.jsonl"))) {
            assert!(q.ground_truth.is_some());
            if let Some(c) = q.composition {
                used.extend(c.chain);
            }
        }
    }
    let ops = csv_agent::questions::compose::operators().expect("operators");
    let missing: Vec<&str> = ops
        .iter()
        .map(|o| o.name.as_str())
        .filter(|n| !used.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "operators never verified on a shipped dataset: {missing:?}"
    );
}
