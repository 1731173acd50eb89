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
    // The grouping column inside its own groups is one value per group.
    let bad = [
        step(&ops, "group_by", &[("g", "region")]),
        step(&ops, "group_distinct", &[("h", "region")]),
        step(&ops, "maximum", &[]),
    ];
    assert!(matches!(
        check(&bad, &p),
        Err(types::TypeError::Slot { .. })
    ));
    // A statistic of ranks is fixed by their number; their labels are not.
    let ranks = |last: &str| {
        vec![
            step(&ops, "pivot_mean", &[("g", "region"), ("col", "price")]),
            step(&ops, "rank_descending", &[]),
            step(&ops, last, &[]),
        ]
    };
    assert!(matches!(
        check(&ranks("median"), &p),
        Err(types::TypeError::Needs { .. })
    ));
    assert_eq!(check(&ranks("label_of_min"), &p).unwrap().ty, Ty::Label);
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

fn screened(values: &[Result<serde_json::Value, &str>]) -> Screened {
    Screened {
        results: Some(
            values
                .iter()
                .map(|v| v.clone().map_err(|e| e.to_string()))
                .collect(),
        ),
    }
}

/// Candidates with at least one removable step, from the test profile.
fn candidates(n: usize) -> Vec<Candidate> {
    let ops: &'static [Operator] = Box::leak(operators().unwrap().into_boxed_slice());
    let p: &'static DataProfile = Box::leak(Box::new(profile()));
    let mut c = Composer::new(ops, p, "demo", "abc", 3);
    c.sample(n)
}

#[test]
fn each_guard_refuses_what_it_names() {
    use serde_json::json;
    let p = profile();
    let cands = candidates(200);
    let plain = cands
        .iter()
        .find(|c| c.prefix.is_none() && c.functions.len() == 2)
        .unwrap()
        .clone();
    let with_step = cands
        .iter()
        .find(|c| c.prefix.is_none() && c.functions.len() >= 3)
        .unwrap()
        .clone();
    let verdict = |c: &Candidate, s: Screened| guards::judge(&[(c.clone(), s)], &p)[0];
    let refused = |r: guards::Refusal| Err::<(), _>(r);
    assert_eq!(
        verdict(&plain, Screened::default()),
        refused(Refusal::ScreeningFailed)
    );
    assert_eq!(
        verdict(&plain, screened(&[Err("KeyError"), Ok(json!(1))])),
        refused(Refusal::ReferenceFails)
    );
    for empty in [
        json!(null),
        json!([]),
        json!({}),
        json!({"a": null}),
        json!(""),
    ] {
        assert_eq!(
            verdict(&plain, screened(&[Ok(empty.clone()), Ok(empty)])),
            refused(Refusal::EmptyOrNan)
        );
    }
    let long: Vec<String> = (0..25).map(|i| format!("v{i}")).collect();
    assert_eq!(
        verdict(&plain, screened(&[Ok(json!(long)), Ok(json!(long))])),
        refused(Refusal::TooLarge)
    );
    assert_eq!(
        verdict(&plain, screened(&[Ok(json!(1.5)), Ok(json!(7.5))])),
        refused(Refusal::AlternativeDisagrees)
    );
    assert_eq!(
        verdict(&plain, screened(&[Ok(json!(1.5)), Err("ValueError")])),
        refused(Refusal::AlternativeFails)
    );
    // 200 is the row count the profile shows.
    assert_eq!(
        verdict(&plain, screened(&[Ok(json!(200)), Ok(json!(200.0))])),
        refused(Refusal::ReadableFromProfile)
    );
    assert_eq!(
        verdict(&plain, screened(&[Ok(json!(12.25)), Ok(json!(12.25))])),
        Ok(())
    );
    // Leaving a step out gives the same answer: that step does nothing.
    let mut rows = vec![Ok(json!(12.25)), Ok(json!(12.25))];
    rows.extend((2..with_step.functions.len()).map(|_| Ok(json!(12.25))));
    assert_eq!(
        verdict(&with_step, screened(&rows)),
        refused(Refusal::DeadStep)
    );
    // ...and a step whose absence breaks the chain or changes it matters.
    let mut rows = vec![Ok(json!(12.25)), Ok(json!(12.25))];
    rows.extend((2..with_step.functions.len()).map(|_| Ok(json!(3.0))));
    assert_eq!(verdict(&with_step, screened(&rows)), Ok(()));
}

#[test]
fn one_answer_for_every_binding_and_duplicates_are_refused() {
    use serde_json::json;
    let p = profile();
    let cands = candidates(400);
    // Two bindings of one shape.
    let (a, b) = cands
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            cands[i + 1..]
                .iter()
                .find(|b| {
                    b.shape == a.shape
                        && b.signature != a.signature
                        && a.prefix.is_none()
                        && b.prefix.is_none()
                })
                .map(|b| (a.clone(), b.clone()))
        })
        .expect("two bindings of one chain");
    let ok = |v: serde_json::Value, c: &Candidate| {
        let mut rows = vec![Ok(v.clone()), Ok(v)];
        rows.extend((2..c.functions.len()).map(|_| Err("gone")));
        screened(&rows)
    };
    let same = guards::judge(
        &[
            (a.clone(), ok(json!(4.5), &a)),
            (b.clone(), ok(json!(4.5), &b)),
        ],
        &p,
    );
    assert_eq!(same, vec![Err(Refusal::SameForEveryBinding); 2]);
    let differ = guards::judge(
        &[
            (a.clone(), ok(json!(4.5), &a)),
            (b.clone(), ok(json!(9.5), &b)),
        ],
        &p,
    );
    assert_eq!(differ, vec![Ok(()), Ok(())]);
    // The same answer from the same operators on one dataset is one
    // question: the composer keeps the first.
    let ops = operators().unwrap();
    let mut composer = Composer::new(&ops, &p, "demo", "abc", 3);
    let kept = composer.judge(vec![
        (a.clone(), ok(json!(4.5), &a)),
        (b.clone(), ok(json!(9.5), &b)),
        (a.clone(), ok(json!(4.5), &a)),
    ]);
    assert_eq!(kept.len(), 2);
    assert_eq!(composer.refusals.get("duplicate answer"), Some(&1));
}

#[test]
fn a_harder_question_records_the_easier_one_it_builds_on_or_is_refused_with_it() {
    use serde_json::json;
    let p = profile();
    let cands = candidates(400);
    let hard_at = cands
        .iter()
        .position(|c| c.prefix.is_some())
        .expect("a multi-hop chain");
    let hard = cands[hard_at].clone();
    let easy = cands
        .iter()
        .find(|c| Some(&c.signature) == hard.prefix.as_ref())
        .expect("its easier question comes along")
        .clone();
    let ok = |v: serde_json::Value, c: &Candidate| {
        let mut rows = vec![Ok(v.clone()), Ok(v)];
        rows.extend((2..c.functions.len()).map(|_| Err("gone")));
        screened(&rows)
    };
    let ops = operators().unwrap();
    let mut composer = Composer::new(&ops, &p, "demo", "abc", 3);
    let kept = composer.judge(vec![
        (easy.clone(), ok(json!("north"), &easy)),
        (hard.clone(), ok(json!(17.5), &hard)),
    ]);
    assert_eq!(kept.len(), 2);
    assert_eq!(
        kept[1].composition.as_ref().unwrap().builds_on.as_deref(),
        Some(kept[0].id.as_str())
    );
    assert_eq!(kept[1].category.as_deref(), Some("multi_hop"));
    let mut composer = Composer::new(&ops, &p, "demo", "abc", 3);
    let kept = composer.judge(vec![
        (easy.clone(), screened(&[Err("boom")])),
        (hard.clone(), ok(json!(17.5), &hard)),
    ]);
    assert!(kept.is_empty());
    assert_eq!(
        composer.refusals.get("builds on a refused question"),
        Some(&1)
    );
}
