//! `csv-agent export` and `csv-agent split` through the real binary.
//!
//! Golden files: `tests/golden/episodes.jsonl` holds four hand-checked
//! episodes (a verified one from a real run; an unverified one whose gold
//! trace disagrees with both alternatives; a verified multi-turn one whose
//! first cell fails with a KeyError and whose second fixes it; a verified
//! one with a consistency trace that goes wrong at its second hook and one
//! that fails). `tests/golden/<format>[.openai].jsonl` is the exact export of
//! each format. After a deliberate change, rewrite them with
//! `UPDATE_GOLDEN=1 cargo test --test formats` and read the diff by eye.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_csv-agent");

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn episodes_fixture() -> PathBuf {
    golden_dir().join("episodes.jsonl")
}

/// Every format and flavor with a golden file.
const CASES: [(&str, &str); 10] = [
    ("sft", "trl"),
    ("sft-tools", "trl"),
    ("sft-tools", "openai"),
    ("sft-interleaved", "trl"),
    ("prm", "trl"),
    ("orm", "trl"),
    ("dpo", "trl"),
    ("dpo", "openai"),
    ("kto", "trl"),
    ("rl", "trl"),
];

fn golden_name(format: &str, flavor: &str) -> String {
    if flavor == "trl" {
        format!("{format}.jsonl")
    } else {
        format!("{format}.{flavor}.jsonl")
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the csv-agent binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Export `episodes` in a format and return the written bytes.
fn export(dir: &Path, episodes: &Path, format: &str, flavor: &str, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(golden_name(format, flavor));
    let mut args = vec![
        "export",
        "--format",
        format,
        "--flavor",
        flavor,
        "--episodes",
        episodes.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(
        o.status.success(),
        "export {format} ({flavor}) failed: {}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains("records"),
        "no count printed: {}",
        text(&o.stdout)
    );
    std::fs::read(&out).unwrap()
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    text(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn first_difference(got: &str, want: &str) -> String {
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        if g != w {
            let at = g
                .char_indices()
                .zip(w.chars())
                .find(|((_, a), b)| a != b)
                .map_or(g.len().min(w.len()), |((i, _), _)| i);
            let start = at.saturating_sub(80);
            let show = |s: &str| {
                s.get(start..(at + 120).min(s.len()))
                    .unwrap_or("")
                    .to_string()
            };
            return format!(
                "line {} differs at byte {at}:\n  got:  …{}\n  want: …{}",
                i + 1,
                show(g),
                show(w)
            );
        }
    }
    format!(
        "got {} lines, want {}",
        got.lines().count(),
        want.lines().count()
    )
}

#[test]
fn every_format_matches_its_golden_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (format, flavor) in CASES {
        let got = export(dir.path(), &episodes_fixture(), format, flavor, &[]);
        let path = golden_dir().join(golden_name(format, flavor));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read(&path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}: {}",
                path.display(),
                first_difference(&text(&got), &text(&want))
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "exports differ from the golden files (if the change is meant, rerun with UPDATE_GOLDEN=1 and check the diff by eye):\n{}",
        failures.join("\n")
    );
}

// ------------------------------------------------------------ shapes

fn assert_message(m: &Value, ctx: &str) {
    let role = m["role"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: no role in {m}"));
    assert!(
        ["system", "user", "assistant", "tool"].contains(&role),
        "{ctx}: role {role}"
    );
    assert!(m["content"].is_string(), "{ctx}: content of {m}");
}

fn assert_conversation(messages: &Value, ctx: &str) -> Vec<Value> {
    let list = messages
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: not a list"));
    assert!(!list.is_empty(), "{ctx}: empty");
    for m in list {
        assert_message(m, ctx);
    }
    list.clone()
}

/// The fields each trainer reads, with their types.
fn assert_trainer_fields(format: &str, flavor: &str, r: &Value) {
    let ctx = format!("{format} ({flavor})");
    match (format, flavor) {
        ("sft" | "sft-interleaved", _) => {
            let m = assert_conversation(&r["messages"], &ctx);
            assert_eq!(m[0]["role"], "system", "{ctx}");
            assert_eq!(m[1]["role"], "user", "{ctx}");
            assert_eq!(
                m.last().unwrap()["role"],
                "assistant",
                "{ctx}: ends with the assistant"
            );
            // Roles alternate after the system prompt.
            for pair in m[1..].windows(2) {
                assert_ne!(pair[0]["role"], pair[1]["role"], "{ctx}: two in a row");
            }
        }
        ("sft-tools", _) => {
            let m = assert_conversation(&r["messages"], &ctx);
            assert_eq!(m.last().unwrap()["role"], "assistant", "{ctx}");
            assert_eq!(r["tools"][0]["function"]["name"], "python", "{ctx}");
            let mut ids = Vec::new();
            for msg in &m {
                if msg["role"] == "assistant" {
                    let call = &msg["tool_calls"][0];
                    assert_eq!(call["type"], "function");
                    assert_eq!(call["function"]["name"], "python");
                    let args = &call["function"]["arguments"];
                    if flavor == "openai" {
                        let parsed: Value = serde_json::from_str(args.as_str().unwrap()).unwrap();
                        assert!(parsed["code"].is_string());
                        ids.push(call["id"].as_str().unwrap().to_string());
                    } else {
                        assert!(args["code"].is_string(), "{ctx}: arguments {args}");
                        assert!(call.get("id").is_none());
                    }
                }
                if msg["role"] == "tool" && flavor == "openai" {
                    assert_eq!(
                        msg["tool_call_id"].as_str(),
                        ids.last().map(String::as_str),
                        "{ctx}: a reply answers the call before it"
                    );
                }
            }
        }
        ("prm", _) => {
            assert!(r["prompt"].is_string(), "{ctx}");
            let steps = r["completions"].as_array().unwrap();
            let labels = r["labels"].as_array().unwrap();
            assert!(!steps.is_empty() && steps.len() == labels.len(), "{ctx}");
            assert!(steps.iter().all(Value::is_string) && labels.iter().all(Value::is_boolean));
        }
        ("orm", _) => {
            assert!(
                r["prompt"].is_string() && r["completion"].is_string(),
                "{ctx}"
            );
            assert!(r["label"].is_boolean(), "{ctx}");
        }
        ("kto", _) => {
            assert_conversation(&r["prompt"], &ctx);
            let c = assert_conversation(&r["completion"], &ctx);
            assert_eq!(c.last().unwrap()["role"], "assistant", "{ctx}");
            assert!(r["label"].is_boolean(), "{ctx}");
        }
        ("dpo", "trl") => {
            let p = assert_conversation(&r["prompt"], &ctx);
            assert_eq!(p.last().unwrap()["role"], "user", "{ctx}");
            for side in ["chosen", "rejected"] {
                let c = assert_conversation(&r[side], &ctx);
                assert_eq!(c[0]["role"], "assistant", "{ctx}");
                assert_eq!(c.last().unwrap()["role"], "assistant", "{ctx}");
            }
        }
        ("dpo", "openai") => {
            let m = assert_conversation(&r["input"]["messages"], &ctx);
            assert_eq!(m.last().unwrap()["role"], "user", "{ctx}");
            for side in ["preferred_output", "non_preferred_output"] {
                let c = assert_conversation(&r[side], &ctx);
                assert_eq!(c.len(), 1, "{ctx}: one message per side");
                assert_eq!(c[0]["role"], "assistant", "{ctx}");
            }
        }
        ("rl", _) => {
            let p = assert_conversation(&r["prompt"], &ctx);
            assert_eq!(p.len(), 2, "{ctx}: system and question");
            let answer: Value = serde_json::from_str(r["answer"].as_str().unwrap()).unwrap();
            assert!(!answer.is_null());
            assert!(r["answer_hash"].is_string() && r["dataset"].is_string());
            assert!(r["question_id"].is_string() && r["difficulty"].is_string());
            assert!(r["ground_truth_hashes"].is_array() && r["hook_hashes"].is_array());
        }
        _ => panic!("no check for {ctx}"),
    }
}

#[test]
fn every_exported_line_is_json_with_the_trainers_fields() {
    let dir = tempfile::tempdir().unwrap();
    for (format, flavor) in CASES {
        for extra in [&[][..], &["--include-unverified"][..]] {
            let records = lines(&export(
                dir.path(),
                &episodes_fixture(),
                format,
                flavor,
                extra,
            ));
            assert!(!records.is_empty(), "{format} ({flavor}) wrote nothing");
            for r in &records {
                assert_trainer_fields(format, flavor, r);
            }
        }
    }
}

#[test]
fn the_gold_trace_alone_sees_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let sft = lines(&export(dir.path(), &episodes_fixture(), "sft", "trl", &[]));
    let with_hint = sft
        .iter()
        .filter(|r| {
            r["messages"][1]["content"]
                .as_str()
                .unwrap()
                .contains("\n\nHint: ")
        })
        .count();
    // Three verified episodes, one gold trace each; 7 agreeing traces in all.
    assert_eq!((with_hint, sft.len()), (3, 7));
    let rl = lines(&export(dir.path(), &episodes_fixture(), "rl", "trl", &[]));
    assert!(rl.iter().all(|r| !r["prompt"][1]["content"]
        .as_str()
        .unwrap()
        .contains("Hint:")));
}

#[test]
fn a_failed_cell_and_its_fix_both_stay_in_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let sft = lines(&export(dir.path(), &episodes_fixture(), "sft", "trl", &[]));
    let fixed = sft
        .iter()
        .find(|r| {
            r["messages"][1]["content"]
                .as_str()
                .unwrap()
                .contains("Gentoo")
        })
        .unwrap();
    let m = fixed["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
    assert!(m[3]["content"]
        .as_str()
        .unwrap()
        .starts_with("error: KeyError: 'body_mass'"));
    assert!(m[4]["content"].as_str().unwrap().contains("submit("));
}

#[test]
fn unverified_episodes_are_judged_by_their_majority_when_included() {
    let dir = tempfile::tempdir().unwrap();
    let kto = lines(&export(
        dir.path(),
        &episodes_fixture(),
        "kto",
        "trl",
        &["--include-unverified"],
    ));
    let std_rows: Vec<&Value> = kto
        .iter()
        .filter(|r| {
            r["prompt"][1]["content"]
                .as_str()
                .unwrap()
                .contains("standard deviation")
        })
        .collect();
    // Gold (sample std) loses to the two alternatives (population std).
    let labels: Vec<bool> = std_rows
        .iter()
        .map(|r| r["label"].as_bool().unwrap())
        .collect();
    assert_eq!(labels, [false, true, true]);
    let rl = lines(&export(
        dir.path(),
        &episodes_fixture(),
        "rl",
        "trl",
        &["--include-unverified"],
    ));
    let row = rl
        .iter()
        .find(|r| r["question_id"] == "5d1c0e2a9b7f3e10")
        .unwrap();
    assert_eq!(row["answer"], "800.78");
}

/// Two episodes on which the export used to hold a second opinion: a
/// verified one whose second consistency trace submitted the right answer
/// and then failed (the old export called it agreeing: it looked at the
/// answer whatever the trace's success; triangulation did not count it),
/// and an unverified one whose three answers tie (the old export found no
/// majority and skipped it; triangulation takes the earliest cluster).
/// Each is written twice: with the verdict stored (as a run writes it now)
/// and without it (an episode from before): both export the verdict's labels.
fn disputed_episodes(dir: &Path) -> (PathBuf, Vec<Vec<bool>>) {
    use csv_agent::schema::Episode;
    use csv_agent::teacher::triangulate;
    let text = std::fs::read_to_string(episodes_fixture()).unwrap();
    let golden: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A failed trace with the right answer.
    let mut failed = golden[0].clone();
    failed["episode_id"] = json!("failed-with-answer");
    failed["consistency_traces"][1]["success"] = json!(false);
    failed["consistency_traces"][1]["error"] = json!("step 2: ValueError: after the submit");
    // A tie: gold 801.95, the alternatives 800.78 and 700.0.
    let mut tie = golden[1].clone();
    tie["episode_id"] = json!("tie");
    tie["consistency_traces"][1]["final_answer"] = json!(700.0);
    tie["consistency_traces"][1]["turns"][0]["execution"]["submitted_answer"] = json!(700.0);
    let mut out = String::new();
    let mut want = Vec::new();
    for raw in [failed, tie] {
        let mut episode: Episode = serde_json::from_value(raw.clone()).unwrap();
        let verdict = triangulate(
            &episode.question,
            &episode.gold_trace,
            &episode.consistency_traces,
        );
        episode.verified = verdict.verified;
        episode.triangulation = verdict.triangulation.clone();
        let labels: Vec<bool> = verdict
            .triangulation
            .trace_verdicts
            .iter()
            .map(|v| v.agrees)
            .collect();
        // Stored, as a run writes it now.
        out.push_str(&serde_json::to_string(&episode).unwrap());
        out.push('\n');
        // As an older run wrote it: no reference, no per-trace verdicts.
        let mut old = serde_json::to_value(&episode).unwrap();
        let tri = old["triangulation"].as_object_mut().unwrap();
        tri.remove("reference_trace");
        tri.remove("trace_verdicts");
        out.push_str(&serde_json::to_string(&old).unwrap());
        out.push('\n');
        want.push(labels.clone());
        want.push(labels);
    }
    let path = dir.join("disputed.jsonl");
    std::fs::write(&path, out).unwrap();
    (path, want)
}

#[test]
fn exports_label_traces_by_the_verdict_not_a_second_vote() {
    let dir = tempfile::tempdir().unwrap();
    let (episodes, want) = disputed_episodes(dir.path());
    assert_eq!(
        want,
        [
            vec![true, true, false],
            vec![true, true, false],
            vec![false, true, false],
            vec![false, true, false]
        ],
        "the verdicts: the failed trace does not agree; the tie goes to the earliest cluster"
    );
    let flat: Vec<bool> = want.concat();
    let kto = lines(&export(
        dir.path(),
        &episodes,
        "kto",
        "trl",
        &["--include-unverified"],
    ));
    let got: Vec<bool> = kto.iter().map(|r| r["label"].as_bool().unwrap()).collect();
    assert_eq!(got, flat, "kto labels");
    let prm = lines(&export(
        dir.path(),
        &episodes,
        "prm",
        "trl",
        &["--include-unverified"],
    ));
    let last: Vec<bool> = prm
        .iter()
        .map(|r| *r["labels"].as_array().unwrap().last().unwrap() == json!(true))
        .collect();
    assert_eq!(last, flat, "prm: a trace that does not agree ends false");
    let dpo = lines(&export(
        dir.path(),
        &episodes,
        "dpo",
        "trl",
        &["--include-unverified"],
    ));
    assert_eq!(
        dpo.len(),
        flat.iter().filter(|a| !**a).count(),
        "dpo: one pair per trace that does not agree"
    );
    // The failed trace is rejected, never chosen.
    let failed_code = "np.nanpercentile";
    assert!(dpo
        .iter()
        .all(|r| !r["chosen"].to_string().contains(failed_code)));
    assert_eq!(
        dpo.iter()
            .filter(|r| r["rejected"].to_string().contains(failed_code))
            .count(),
        2
    );
}

#[test]
fn prm_labels_follow_the_first_divergent_hook() {
    let dir = tempfile::tempdir().unwrap();
    let prm = lines(&export(dir.path(), &episodes_fixture(), "prm", "trl", &[]));
    let labels: Vec<Vec<bool>> = prm
        .iter()
        .filter(|r| r["prompt"].as_str().unwrap().contains("above the mean"))
        .map(|r| {
            r["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect()
        })
        .collect();
    // gold, sum_over_len, median_cut (same mean hook, other count), wrong_column.
    assert_eq!(
        labels,
        [vec![true, true], vec![true], vec![true, false], vec![false]]
    );
}

#[test]
fn rl_expects_only_hooks_grounded_in_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let all = lines(&export(dir.path(), &episodes_fixture(), "rl", "trl", &[]));
    // The same episodes with the gold trace's first hook marked as a model
    // hook whose code line was not in its code.
    let mut episodes: Vec<Value> = lines(&std::fs::read(episodes_fixture()).unwrap());
    let mut marked = None;
    for e in episodes.iter_mut() {
        let id = e["question"]["id"].clone();
        let hooks = e["gold_trace"]["turns"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .flat_map(|t| t["execution"]["hooks"].as_array_mut().unwrap().iter_mut());
        if let Some(h) = hooks.into_iter().next() {
            h["grounded"] = json!(false);
            marked = Some((id, h["value_hash"].clone()));
            break;
        }
    }
    let (question, hash) = marked.expect("a gold trace with a hook");
    let file = dir.path().join("marked.jsonl");
    let text: Vec<String> = episodes.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, text.join("\n") + "\n").unwrap();
    let sub = dir.path().join("marked");
    std::fs::create_dir_all(&sub).unwrap();
    let marked = lines(&export(&sub, &file, "rl", "trl", &[]));
    let hooks_of = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["question_id"] == question)
            .map(|r| r["hook_hashes"].clone())
            .unwrap()
    };
    assert!(hooks_of(&all).as_array().unwrap().contains(&hash));
    assert!(!hooks_of(&marked).as_array().unwrap().contains(&hash));
}

// ------------------------------------------------------------ bad input

#[test]
fn a_missing_file_is_an_error_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sft.jsonl");
    let missing = dir.path().join("nope.jsonl");
    let o = run(&[
        "export",
        "--format",
        "sft",
        "--episodes",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("nope.jsonl"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists());
}

#[test]
fn a_line_that_is_not_an_episode_is_named_and_the_old_output_survives() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(episodes_fixture()).unwrap();
    let first = good.lines().next().unwrap();
    std::fs::write(&bad, format!("{first}\n{{\"episode_id\": \"x\"}}\n")).unwrap();
    let out = dir.path().join("sft.jsonl");
    std::fs::write(&out, "previous\n").unwrap();
    let o = run(&[
        "export",
        "--format",
        "sft",
        "--episodes",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("bad.jsonl line 2"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary file left"
    );
}

#[test]
fn a_flavor_the_format_does_not_have_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    let o = run(&[
        "export",
        "--format",
        "prm",
        "--flavor",
        "openai",
        "--episodes",
        episodes_fixture().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("no openai flavor"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists());
    let o = run(&["export", "--format", "xml", "--episodes", "e", "--out", "o"]);
    assert_eq!(o.status.code(), Some(2));
}

// ------------------------------------------------------------ split

/// `n` synthetic episodes cloned from the first golden one: 10 questions per
/// template, 6 datasets, difficulty by template, every 10th unverified.
fn synthetic(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(episodes_fixture()).unwrap();
    let base: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let difficulties = ["EASY", "MEDIUM", "HARD", "VERY_HARD"];
    let mut out = String::new();
    for i in 0..n {
        let mut e = base.clone();
        let template = i / 10;
        e["episode_id"] = json!(format!("ep{i:05}"));
        e["question"]["id"] = json!(format!("q{i:05}"));
        e["question"]["template_name"] = json!(format!("template_{template}"));
        e["question"]["difficulty"] = json!(difficulties[(template * 7 + 3) % 4]);
        e["dataset"] = json!(format!("data_{}", i % 6));
        e["verified"] = json!(i % 10 != 9);
        out.push_str(&serde_json::to_string(&e).unwrap());
        out.push('\n');
    }
    let path = dir.join("episodes.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

fn split(episodes: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "split",
        "--episodes",
        episodes.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// episode_id → split name, and the episodes of each split.
fn read_split(
    out: &Path,
) -> (
    HashMap<String, &'static str>,
    HashMap<&'static str, Vec<Value>>,
) {
    let mut of = HashMap::new();
    let mut by = HashMap::new();
    for name in ["train", "val", "test"] {
        let records = lines(&std::fs::read(out.join(format!("{name}.jsonl"))).unwrap());
        for r in &records {
            let id = r["episode_id"].as_str().unwrap().to_string();
            assert!(of.insert(id, name).is_none(), "an episode in two splits");
        }
        by.insert(name, records);
    }
    (of, by)
}

#[test]
fn no_grouping_key_is_in_two_splits() {
    let dir = tempfile::tempdir().unwrap();
    let episodes = synthetic(dir.path(), 300);
    for (group_by, field) in [
        ("question", "/question/id"),
        ("template", "/question/template_name"),
        ("dataset", "/dataset"),
    ] {
        let out = dir.path().join(group_by);
        let o = split(&episodes, &out, &["--group-by", group_by]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let (_, by) = read_split(&out);
        let mut home: HashMap<String, &str> = HashMap::new();
        for (name, records) in &by {
            for r in records {
                let key = r.pointer(field).unwrap().as_str().unwrap().to_string();
                let first = *home.entry(key.clone()).or_insert(name);
                assert_eq!(
                    first, *name,
                    "{group_by} {key} straddles {first} and {name}"
                );
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_split_and_another_seed_another() {
    let dir = tempfile::tempdir().unwrap();
    let episodes = synthetic(dir.path(), 300);
    let read_all = |out: &Path| -> Vec<Vec<u8>> {
        [
            "train.jsonl",
            "val.jsonl",
            "test.jsonl",
            "split_report.json",
        ]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect()
    };
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    assert!(split(&episodes, &a, &["--seed", "7"]).status.success());
    assert!(split(&episodes, &b, &["--seed", "7"]).status.success());
    assert!(split(&episodes, &c, &["--seed", "8"]).status.success());
    assert_eq!(read_all(&a), read_all(&b));
    assert_ne!(read_split(&a).0, read_split(&c).0);
}

#[test]
fn ratios_are_respected_within_each_difficulty_and_unverified_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let episodes = synthetic(dir.path(), 300);
    let out = dir.path().join("s");
    let o = split(&episodes, &out, &["--ratios", "0.7,0.2,0.1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("train"), "prints the counts");
    let (of, by) = read_split(&out);
    assert_eq!(of.len(), 270, "the 30 unverified episodes are left out");
    assert!(by.values().flatten().all(|e| e["verified"] == true));
    for (name, ratio) in [("train", 0.7), ("val", 0.2), ("test", 0.1)] {
        let share = by[name].len() as f64 / 270.0;
        assert!((share - ratio).abs() < 0.02, "{name}: {share} for {ratio}");
        for d in ["EASY", "MEDIUM", "HARD", "VERY_HARD"] {
            let total = by
                .values()
                .flatten()
                .filter(|e| e["question"]["difficulty"] == d)
                .count() as f64;
            let here = by[name]
                .iter()
                .filter(|e| e["question"]["difficulty"] == d)
                .count() as f64;
            assert!(
                (here / total - ratio).abs() < 0.05,
                "{name} {d}: {here} of {total} for {ratio}"
            );
        }
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("split_report.json")).unwrap()).unwrap();
    assert_eq!(report["episodes"], 300);
    assert_eq!(report["skipped_unverified"], 30);
    assert_eq!(report["train"]["episodes"], by["train"].len());
    let with = dir.path().join("all");
    assert!(split(&episodes, &with, &["--include-unverified"])
        .status
        .success());
    assert_eq!(read_split(&with).0.len(), 300);
}

#[test]
fn split_files_hold_the_episode_lines_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let o = split(
        &episodes_fixture(),
        &out,
        &["--include-unverified", "--ratios", "1,0,0"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read(out.join("train.jsonl")).unwrap(),
        std::fs::read(episodes_fixture()).unwrap()
    );
    assert!(std::fs::read(out.join("val.jsonl")).unwrap().is_empty());
}

#[test]
fn bad_ratios_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let mut seen = HashSet::new();
    for bad in ["0.5,0.5,0.5", "0.8,0.2", "1.1,-0.1,0", "x,y,z"] {
        let o = split(&episodes_fixture(), &out, &["--ratios", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = text(&o.stderr);
        assert!(err.contains("ratios"), "{bad}: {err}");
        seen.insert(err);
    }
    assert_eq!(seen.len(), 4, "each message says what is wrong");
    assert!(!out.exists());
}
