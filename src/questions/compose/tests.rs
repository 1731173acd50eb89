use super::*;
use crate::profile::{ColumnKind, ColumnProfile};

fn col(name: &str, kind: ColumnKind, card: u64, min: Option<f64>, missing: u64) -> ColumnProfile {
    ColumnProfile {
        name: name.into(),
        dtype: "float64".into(),
        kind,
        missing,
        missing_share: missing as f64 / 200.0,
        cardinality: card,
        target_ok: kind != ColumnKind::IdLike,
        min,
        max: None,
        min_level_count: Some(5),
        date_format: (kind == ColumnKind::Datetime).then(|| "%d/%m/%Y".to_string()),
        date_format_name: (kind == ColumnKind::Datetime)
            .then(|| "day first, DD/MM/YYYY".to_string()),
        date_parsed_share: None,
    }
}

pub(super) fn profile() -> DataProfile {
    DataProfile {
        rows: 200,
        columns: 7,
        overview: String::new(),
        column_profiles: vec![
            col("Unnamed: 0", ColumnKind::IdLike, 200, Some(0.0), 0),
            col("price", ColumnKind::Numeric, 150, Some(1.0), 10),
            col("size", ColumnKind::Numeric, 120, Some(3.0), 0),
            col("score", ColumnKind::Numeric, 80, Some(-2.0), 0),
            col("region", ColumnKind::Categorical, 4, None, 3),
            col("kind", ColumnKind::Categorical, 3, None, 0),
            col("when", ColumnKind::Datetime, 190, None, 0),
            col("note", ColumnKind::Text, 180, None, 20),
        ],
    }
}

fn op<'a>(ops: &'a [Operator], name: &str) -> &'a Operator {
    ops.iter().find(|o| o.name == name).expect(name)
}

fn step<'a>(ops: &'a [Operator], name: &str, cols: &[(&str, &str)]) -> Step<'a> {
    Step {
        op: op(ops, name),
        columns: cols
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        params: op(ops, name).params.first().cloned().unwrap_or_default(),
    }
}

#[test]
fn the_grammar_has_sixty_operators_over_the_eighteen_categories() {
    let ops = operators().expect("every operators file is valid");
    assert!(ops.len() >= 60, "{} operators", ops.len());
    for c in CATEGORIES {
        assert!(ops.iter().any(|o| o.category == c), "no operator in {c}");
    }
}

#[test]
fn the_type_checker_rejects_ill_typed_chains() {
    let ops = operators().unwrap();
    let p = profile();
    // A mean of a table: series expected.
    let bad = [step(&ops, "mean", &[]), step(&ops, "row_count", &[])];
    assert!(matches!(
        check(&bad, &p),
        Err(types::TypeError::Input { .. })
    ));
    // Ends in a table.
    let bad = [
        step(&ops, "filter_above_median", &[("col", "price")]),
        step(&ops, "first_rows", &[]),
    ];
    assert!(matches!(
        check(&bad, &p),
        Err(types::TypeError::NotAnswer(_))
    ));
    // A categorical column bound where a numeric one is needed, and the
    // id-like column bound at all.
    for column in ["region", "Unnamed: 0"] {
        let bad = [
            step(&ops, "select_column", &[("col", column)]),
            step(&ops, "mean", &[]),
        ];
        assert!(matches!(
            check(&bad, &p),
            Err(types::TypeError::Slot { .. })
        ));
    }
    // Ranking row positions: the series has no labels.
    let bad = [
        step(&ops, "select_column", &[("col", "price")]),
        step(&ops, "label_of_max", &[]),
    ];
    assert!(matches!(
        check(&bad, &p),
        Err(types::TypeError::Needs { .. })
    ));
    // A multi-hop step must bind the column its label came from.
    let bad = [
        step(&ops, "group_by", &[("g", "region")]),
        step(&ops, "group_mean", &[("col", "price")]),
        step(&ops, "label_of_max", &[]),
        step(&ops, "rows_with_label", &[("g", "kind")]),
        step(&ops, "row_count", &[]),
    ];
    assert!(matches!(check(&bad, &p), Err(types::TypeError::Key { .. })));
    let mut good = bad.clone();
    good[3] = step(&ops, "rows_with_label", &[("g", "region")]);
    assert_eq!(check(&good, &p).unwrap().ty, Ty::Scalar);
    // One step is too short, nine too long.
    assert!(matches!(
        check(&good[..1], &p),
        Err(types::TypeError::Length(1))
    ));
}

#[test]
fn sampling_is_deterministic_for_a_seed_and_differs_across_seeds() {
    let ops = operators().unwrap();
    let p = profile();
    let ids = |seed: u64| {
        let mut c = Composer::new(&ops, &p, "demo", "abc", seed);
        c.sample(60)
            .into_iter()
            .map(|c| c.question.id)
            .collect::<Vec<_>>()
    };
    let a = ids(7);
    assert_eq!(a.len(), 60);
    assert_eq!(a, ids(7));
    assert_ne!(a, ids(8));
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert_eq!(distinct.len(), a.len());
}

#[test]
fn sampled_chains_are_well_typed_use_every_length_and_never_bind_ids() {
    let ops = operators().unwrap();
    let p = profile();
    let mut c = Composer::new(&ops, &p, "demo", "abc", 1);
    let qs = c.sample(400);
    let mut lengths = std::collections::BTreeSet::new();
    for cand in &qs {
        let q = &cand.question;
        lengths.insert(q.n_steps);
        assert!((2..=8).contains(&q.n_steps));
        let programs = q.programs.as_ref().unwrap();
        assert_eq!(programs.reference.len() as u32, q.n_steps);
        let last = programs.reference.last().unwrap();
        assert!(last.code.contains("submit("));
        assert_eq!(
            programs
                .reference
                .iter()
                .filter(|s| s.code.contains("submit("))
                .count(),
            1
        );
        assert!(programs.reference.iter().all(|s| s.code.contains("hook(")));
        assert!(
            !q.question_text.contains("Unnamed: 0"),
            "{}",
            q.question_text
        );
        assert!(!q.question_text.contains("${"), "{}", q.question_text);
    }
    assert_eq!(lengths.len(), 7, "{lengths:?}");
    assert!(qs
        .iter()
        .any(|c| c.prefix.is_some() && c.question.category.as_deref() == Some("multi_hop")));
}

#[test]
#[ignore]
fn dump_screening_cell() {
    let ops = operators().unwrap();
    let slug = std::env::var("DUMP_SLUG").unwrap();
    let text = std::fs::read_to_string(format!("/tmp/prof/{slug}.json")).unwrap();
    let p: DataProfile = serde_json::from_str(&text).unwrap();
    let mut c = Composer::new(&ops, &p, &slug, "abc", 1);
    let cands = c.sample(300);
    std::fs::write(format!("/tmp/screen_{slug}.py"), screening_cell(&cands)).unwrap();
}
