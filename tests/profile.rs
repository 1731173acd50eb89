//! Profiling inside a worker: column kinds, missing shares, id-like columns
//! that are never targets.

mod common;

use common::*;
use csv_agent::profile::{profile, ColumnKind, DataProfile};
use csv_agent::sandbox::Sandbox;

async fn profile_of(csv: &std::path::Path) -> DataProfile {
    let sb = Sandbox::start(options(csv)).await.expect("sandbox starts");
    let mut task = sb.task();
    let p = profile(&mut task).await.expect("profile");
    // The profiling cell leaves the namespace as it found it.
    let c = task
        .run_cell("'_csv_agent_profile' in globals()")
        .await
        .expect("cell");
    assert_eq!(c.result.as_deref(), Some("False"));
    drop(task);
    sb.shutdown().await;
    p
}

fn kind(p: &DataProfile, name: &str) -> ColumnKind {
    p.column_profiles
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.kind)
        .unwrap_or_else(|| panic!("no column {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_kinds_missing_shares_and_id_like_columns() {
    let dir = world_readable_dir();
    let mut text = String::from("Unnamed: 0,user_id,uuid,score,group,when,comment,count\n");
    for i in 0..50 {
        let score = if i % 10 == 0 {
            String::new()
        } else {
            format!("{}.{}", i * 7 % 13, i)
        };
        text.push_str(&format!(
            "{i},{},{:08x}-aaaa,{score},{},2024-01-{:02},free text number {i} here,{}\n",
            1000 + i,
            i * 7919,
            ["a", "b", "c"][i % 3],
            i % 28 + 1,
            i % 4
        ));
    }
    let csv = write_csv(dir.path(), "data.csv", &text);
    let p = profile_of(&csv).await;
    assert_eq!((p.rows, p.columns), (50, 8));
    for id in ["Unnamed: 0", "user_id", "uuid"] {
        assert_eq!(kind(&p, id), ColumnKind::IdLike, "{id}");
    }
    assert_eq!(kind(&p, "score"), ColumnKind::Numeric);
    assert_eq!(kind(&p, "group"), ColumnKind::Categorical);
    assert_eq!(kind(&p, "when"), ColumnKind::Datetime);
    assert_eq!(
        kind(&p, "comment"),
        ColumnKind::IdLike,
        "all distinct strings"
    );
    assert_eq!(kind(&p, "count"), ColumnKind::Numeric);
    let score = p
        .column_profiles
        .iter()
        .find(|c| c.name == "score")
        .expect("score");
    assert_eq!(score.missing, 5);
    assert!((score.missing_share - 0.1).abs() < 1e-9);
    assert!(p
        .column_profiles
        .iter()
        .filter(|c| c.kind == ColumnKind::IdLike)
        .all(|c| !c.target_ok));
    assert!(p.overview.contains("Top values of group"), "{}", p.overview);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_datasets_profile_sensibly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
    let airports = profile_of(&root.join("us-airports/data.csv")).await;
    assert_eq!(kind(&airports, "iata"), ColumnKind::IdLike);
    assert_eq!(kind(&airports, "latitude"), ColumnKind::Numeric);
    assert_eq!(kind(&airports, "state"), ColumnKind::Categorical);
    assert!(airports.column_profiles.iter().any(|c| c.missing > 0));
    let weather = profile_of(&root.join("seattle-weather/data.csv")).await;
    assert_eq!(kind(&weather, "date"), ColumnKind::Datetime);
    assert_eq!(kind(&weather, "weather"), ColumnKind::Categorical);
}
