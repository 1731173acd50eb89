//! Data-quality guards of the template catalog on fixture tables written
//! here: date formats found by the profile and used (and stated) by
//! `monthly_peak`, id-like columns that never count as numeric, degenerate
//! answers that make a binding ineligible instead of a failure or an episode.
//! Expected answers are computed in Rust from the fixture, not by pandas.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use csv_agent::answers::answers_match;
use csv_agent::profile::{profile, ColumnKind, DataProfile};
use csv_agent::questions::{catalog, establish_ground_truth, Template};
use csv_agent::runner::run_programs;
use csv_agent::sandbox::Sandbox;
use csv_agent::schema::Question;
use serde_json::{json, Value};

fn template(name: &str) -> Template {
    catalog()
        .expect("catalog")
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no template {name}"))
}

async fn start(csv: &Path) -> (Sandbox, DataProfile) {
    let sb = Sandbox::start(options(csv)).await.expect("sandbox starts");
    let mut task = sb.task();
    let p = profile(&mut task).await.expect("profile");
    drop(task);
    (sb, p)
}

/// The question's ground truth, after checking every alternative agrees.
async fn truth(sb: &Sandbox, q: Question) -> Value {
    let programs = q.programs.clone().expect("programs");
    let runs = run_programs(sb, &programs)
        .await
        .expect("no infrastructure fault");
    let (reference, others) = (runs.reference, runs.alternatives);
    let answer = reference.final_answer.clone().unwrap_or_else(|| {
        panic!("reference failed: {:?}", reference.error);
    });
    for o in &others {
        let a = o
            .final_answer
            .as_ref()
            .unwrap_or_else(|| panic!("alternative {} failed: {:?}", o.label, o.error));
        assert!(answers_match(&answer, a), "{}: {a} vs {answer}", o.label);
    }
    let (q, _) = establish_ground_truth(sb, q).await.expect("ground truth");
    let gt = q.ground_truth.expect("ground truth");
    assert_eq!(gt, answer);
    gt
}

/// The month with the highest mean (lowest month on ties) and that mean,
/// from (month, value) pairs.
fn peak(pairs: &[(u32, f64)]) -> (u32, f64) {
    let mut by: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
    for (m, v) in pairs {
        let e = by.entry(*m).or_insert((0.0, 0));
        e.0 += v;
        e.1 += 1;
    }
    let mut best: Option<(u32, f64)> = None;
    for (m, (sum, n)) in by {
        let mean = sum / f64::from(n);
        if best.is_none_or(|(_, b)| mean > b) {
            best = Some((m, mean));
        }
    }
    best.expect("some month")
}

fn value(i: u32) -> f64 {
    f64::from((i * 37) % 101) * 0.5
}

/// Write a table of dates (as `render(day, month, year)`) and values, run
/// monthly_peak on it and compare with the hand computation.
async fn monthly_peak_on(render: fn(u32, u32, u32) -> String, format: &str, words: &str) {
    let dir = world_readable_dir();
    let mut text = String::from("when,amount\n");
    let mut pairs = Vec::new();
    let mut wrong = Vec::new();
    for i in 0..72u32 {
        let (day, month, year) = (i % 28 + 1, (i * 7) % 12 + 1, 2012 + i % 3);
        text.push_str(&format!("{},{}\n", render(day, month, year), value(i)));
        pairs.push((month, value(i)));
        // What a month-first reading keeps (days 1-12 read as months).
        if day <= 12 {
            wrong.push((day, value(i)));
        }
    }
    let csv = write_csv(dir.path(), "data.csv", &text);
    let (sb, p) = start(&csv).await;
    let when = p
        .column_profiles
        .iter()
        .find(|c| c.name == "when")
        .expect("when");
    assert_eq!(when.kind, ColumnKind::Datetime, "{when:?}");
    assert_eq!(when.date_format.as_deref(), Some(format));
    assert_eq!(when.date_parsed_share, Some(1.0));
    let qs = template("monthly_peak").instantiate(&p, "demo", "h");
    assert_eq!(qs.len(), 1);
    let q = qs.into_iter().next().expect("question");
    assert!(
        q.question_text.contains(format) && q.question_text.contains(words),
        "{}",
        q.question_text
    );
    let (month, mean) = peak(&pairs);
    let expected = json!({"month": month, "mean": (mean * 1e4).round() / 1e4});
    let got = truth(&sb, q).await;
    assert!(answers_match(&got, &expected), "{got} vs {expected}");
    assert_eq!(got["month"], json!(month));
    // The fixture is one where the wrong reading gives another answer.
    assert_ne!(
        peak(&wrong).0,
        month,
        "the fixture does not tell formats apart"
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_first_dates_give_the_hand_computed_month() {
    monthly_peak_on(
        |d, m, y| format!("{d:02}-{m:02}-{y}"),
        "%d-%m-%Y",
        "day first",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_first_dates_with_surrounding_spaces_give_the_hand_computed_month() {
    monthly_peak_on(
        |d, m, y| format!("  {m:02}/{d:02}/{y} "),
        "%m/%d/%Y",
        "month first",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mostly_unparseable_dates_are_not_a_date_column() {
    let dir = world_readable_dir();
    let mut text = String::from("when,amount\n");
    for i in 0..60u32 {
        // Two thirds of the values are not dates in any one format.
        let when = match i % 3 {
            0 => format!("2013-{:02}-{:02}", i % 12 + 1, i % 28 + 1),
            1 => format!("{:02}/{:02}/2013", i % 12 + 1, i % 28 + 1),
            _ => format!("soon {i}"),
        };
        text.push_str(&format!("{when},{}\n", value(i)));
    }
    let csv = write_csv(dir.path(), "data.csv", &text);
    let (sb, p) = start(&csv).await;
    let when = p
        .column_profiles
        .iter()
        .find(|c| c.name == "when")
        .expect("when");
    assert_ne!(when.kind, ColumnKind::Datetime, "{when:?}");
    assert!(template("monthly_peak")
        .instantiate(&p, "demo", "h")
        .is_empty());
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_like_and_boolean_columns_never_count_as_numeric() {
    let dir = world_readable_dir();
    let mut text = String::from("Unnamed: 0,id,Rank,flag,height,weight,age\n");
    for i in 0..40u32 {
        // Rank is 1..n and perfectly correlated with `Unnamed: 0` and `id`;
        // the measurements are only loosely related.
        let h = 150.25 + f64::from((i * 13) % 41);
        let w = 50.0 + f64::from((i * 29) % 37) + h / 10.0;
        let a = 20.0 + f64::from((i * 11) % 43).powi(2) / 40.0;
        text.push_str(&format!(
            "{i},{},{},{},{h},{w},{a}\n",
            1000 + i,
            i + 1,
            if i % 3 == 0 { "True" } else { "False" }
        ));
    }
    let csv = write_csv(dir.path(), "data.csv", &text);
    let (sb, p) = start(&csv).await;
    let numeric: Vec<&str> = p
        .columns_of(ColumnKind::Numeric)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(numeric, ["height", "weight", "age"]);
    let listed = r#"["height", "weight", "age"]"#;
    let ids = ["Unnamed: 0", "\"id\"", "Rank", "flag"];
    for name in [
        "strongest_pearson_correlation",
        "strongest_spearman_correlation",
        "weakest_pearson_correlation",
        "coefficient_of_variation",
        "most_skewed_column",
    ] {
        let qs = template(name).instantiate(&p, "demo", "h");
        assert_eq!(qs.len(), 1, "{name}");
        let q = qs.into_iter().next().expect("question");
        assert!(q.question_text.contains(listed), "{}", q.question_text);
        let answer = truth(&sb, q).await;
        let shown = answer.to_string();
        for id in ids {
            assert!(!shown.contains(id), "{name}: {shown}");
        }
    }
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anova_on_constant_groups_is_an_ineligible_binding() {
    let dir = world_readable_dir();
    let mut text = String::from("group,score\n");
    for i in 0..50u32 {
        // Ten levels of five rows, each level constant.
        let g = i % 10;
        text.push_str(&format!("g{g},{}\n", g * 3));
    }
    let csv = write_csv(dir.path(), "data.csv", &text);
    let (sb, p) = start(&csv).await;
    let qs = template("anova_effect_size").instantiate(&p, "demo", "h");
    assert_eq!(qs.len(), 1);
    let q = qs.into_iter().next().expect("question");
    let error = establish_ground_truth(&sb, q)
        .await
        .expect_err("no ground truth on constant groups");
    let csv_agent::questions::GroundTruthError::Failure(failure) = error else {
        panic!("an infrastructure fault, not the data: {error:?}");
    };
    assert!(failure.is_ineligible(), "{failure:?}");
    assert!(failure.reason.contains("degenerate"), "{}", failure.reason);
    sb.shutdown().await;
}

#[test]
fn ineligible_bindings_are_counted_by_reason_not_as_failures() {
    use csv_agent::pipeline::dataset_summary;
    use csv_agent::store::{DatasetRow, Manifest, QuestionRow};
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = Manifest::open(&dir.path().join("manifest.sqlite")).expect("manifest");
    for (i, status) in ["ineligible", "ineligible", "failed"].iter().enumerate() {
        manifest
            .record_question(&QuestionRow {
                fingerprint: format!("f{i}"),
                dataset: "demo".into(),
                question_id: format!("q{i}"),
                template: Some("anova_effect_size".into()),
                difficulty: "HARD".into(),
                status: status.parse().expect("a status"),
                stage: "ground_truth".parse().expect("a stage"),
                reason: Some("degenerate answer: p_value is NaN, infinite or undefined".into()),
                episode_id: None,
                elapsed: 0.0,
            })
            .expect("record");
    }
    let row = DatasetRow {
        slug: "demo".into(),
        dataset_hash: None,
        questions_key: None,
        status: "done".parse().expect("a status"),
        reason: None,
        n_questions: 3,
        elapsed: 0.0,
    };
    let s = dataset_summary(&manifest, &row);
    assert_eq!(s.failures.len(), 1);
    assert_eq!(
        s.ineligible
            .get("anova_effect_size: degenerate answer: p_value is NaN, infinite or undefined"),
        Some(&2)
    );
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["ineligible"].as_object().map(|m| m.len()), Some(1));
}
