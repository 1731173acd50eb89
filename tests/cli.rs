//! The command-line contract, through the real binary: `doctor --json`,
//! `sandbox exec` output shapes and exit codes (0 ok, 1 a cell failed, 2
//! usage or set-up error).

mod common;

use std::process::{Command, Output};

use common::*;

/// One JSON object per line of stdout (the `--json` contract).
fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is json"))
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn doctor_json_lists_every_layer_active_in_contract_order() {
    let out = csv_agent(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let layers = v["layers"].as_array().expect("layers array");
    let names: Vec<&str> = layers
        .iter()
        .map(|l| l["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, csv_agent::sandbox::LAYER_NAMES.to_vec());
    for l in layers {
        assert_eq!(l["status"], "active", "{l}");
        assert!(l["detail"].as_str().is_some_and(|d| !d.is_empty()), "{l}");
    }
}

#[test]
fn exec_json_prints_one_object_per_cell_with_the_contract_keys() {
    let csv = penguins();
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        csv.to_str().unwrap_or_default(),
        "--json",
        "--code",
        "x = len(df)",
        "--code",
        "print('n', x)\nx",
        "--code",
        "submit(x, unit='rows')",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let mut keys: Vec<&String> = l.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "elapsed_ms",
                "error",
                "hooks",
                "result",
                "status",
                "stderr",
                "stdout",
                "submitted"
            ]
        );
        assert_eq!(l["status"], "ok");
    }
    assert_eq!(lines[1]["stdout"], "n 344\n");
    assert_eq!(lines[1]["result"], "344");
    assert_eq!(lines[2]["submitted"]["value"], 344);
    assert_eq!(lines[2]["submitted"]["meta"]["unit"], "rows");
}

#[test]
fn a_failing_cell_exits_1_and_later_cells_still_run() {
    let csv = penguins();
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        csv.to_str().unwrap_or_default(),
        "--json",
        "--code",
        "df['no_such_column']",
        "--code",
        "2 + 2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["status"], "error");
    assert_eq!(lines[0]["error"]["type"], "KeyError");
    assert_eq!(lines[1]["result"], "4");
}

#[test]
fn a_timeout_exits_1_with_status_timeout() {
    let csv = penguins();
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        csv.to_str().unwrap_or_default(),
        "--json",
        "--timeout",
        "2",
        "--code",
        "import time\ntime.sleep(30)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(line["status"], "timeout");
}

#[test]
fn notebook_output_shows_inputs_and_outputs() {
    let csv = penguins();
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        csv.to_str().unwrap_or_default(),
        "--code",
        "df.species.nunique()",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("In [1]:"), "{text}");
    assert!(text.contains("Out[1]:\n3"), "{text}");
}

#[test]
fn a_script_file_runs_as_the_last_cell() {
    let dir = world_readable_dir();
    let script = dir.path().join("s.py");
    std::fs::write(
        &script,
        "total = int(df.body_mass_g.sum())\nprint(total > 0)\n",
    )
    .expect("write");
    let csv = penguins();
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        csv.to_str().unwrap_or_default(),
        "--json",
        "--code",
        "pass",
        "--file",
        script.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out)
        .lines()
        .nth(1)
        .is_some_and(|l| l.contains("True")));
}

#[test]
fn usage_errors_exit_2_with_a_message_that_says_what_to_do() {
    let csv = penguins();
    let csv = csv.to_str().unwrap_or_default();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sandbox", "exec", "--csv", csv], "--code"),
        (
            vec!["sandbox", "exec", "--csv", "/no/such.csv", "--code", "1"],
            "no such file",
        ),
        (
            vec![
                "sandbox", "exec", "--csv", csv, "--code", "1", "--memory", "lots",
            ],
            "512M",
        ),
        (
            vec![
                "sandbox",
                "exec",
                "--csv",
                csv,
                "--code",
                "1",
                "--timeout=0",
            ],
            "--timeout",
        ),
        (
            vec!["sandbox", "exec", "--csv", csv, "--file", "/no/such.py"],
            "/no/such.py",
        ),
        (vec!["sandbox", "exec", "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = csv_agent(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}

#[test]
fn a_file_pandas_cannot_read_is_a_clear_setup_error() {
    let dir = world_readable_dir();
    let empty = write_csv(dir.path(), "empty.csv", "");
    let out = csv_agent(&[
        "sandbox",
        "exec",
        "--csv",
        empty.to_str().unwrap_or_default(),
        "--code",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("could not load the dataset"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn image_path_prints_the_ready_image() {
    let out = csv_agent(&["image", "path"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = std::path::PathBuf::from(stdout(&out).trim());
    assert!(path.join("ready.json").is_file(), "{}", path.display());
    assert_eq!(path, image().root);
}

#[test]
fn an_image_cache_under_the_jails_own_tmp_is_refused_before_building() {
    let out = Command::new(BIN)
        .args(["doctor"])
        .env("CSV_AGENT_CACHE_DIR", "/tmp/csv-agent-cache-under-tmp")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("lies under /tmp"), "{err}");
    assert!(err.contains("CSV_AGENT_CACHE_DIR"), "{err}");
    assert!(!std::path::Path::new("/tmp/csv-agent-cache-under-tmp").exists());
}

#[test]
fn ctrl_c_stops_the_jail_and_removes_its_cgroups() {
    let _ = image();
    let csv = penguins();
    let child = Command::new(BIN)
        .args([
            "sandbox",
            "exec",
            "--csv",
            csv.to_str().unwrap_or_default(),
            "--code",
            "import time\ntime.sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Wait until the sandbox exists (its cgroup appears), then interrupt.
    let group_dir = |pid: u32| {
        std::fs::read_dir("/sys/fs/cgroup/memory/csv-agent")
            .map(|it| {
                it.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{pid}-"))
                })
            })
            .unwrap_or(false)
    };
    let started = std::time::Instant::now();
    while !group_dir(pid) && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(group_dir(pid), "the sandbox never started");
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!group_dir(pid), "cgroups of the interrupted run remain");
}

#[test]
fn datasets_list_show_and_add_through_the_cli() {
    let out = csv_agent(&["datasets", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let slugs: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|d| d["slug"].as_str())
        .collect();
    assert!(slugs.len() >= 3 && slugs.contains(&"penguins"), "{slugs:?}");
    for d in list.as_array().expect("array") {
        assert!(
            d["meta"]["license"].as_str().is_some_and(|l| !l.is_empty()),
            "{d}"
        );
    }

    let out = csv_agent(&["datasets", "show", "penguins"]);
    assert!(stdout(&out).contains("CC0"), "{}", stdout(&out));
    let out = csv_agent(&["datasets", "show", "no-such"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("datasets list"), "{}", stderr(&out));

    let registry = world_readable_dir();
    let reg = registry.path().to_str().unwrap_or_default().to_string();
    let files = world_readable_dir();
    let good = write_csv(
        files.path(),
        "Sales 2024.tsv",
        "region\tamount\nnorth\t1.5\nsouth\t2\n",
    );
    let out = csv_agent(&[
        "datasets",
        "--datasets",
        &reg,
        "add",
        good.to_str().unwrap_or_default(),
        "--description",
        "sales",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.path().join("sales-2024/meta.json")).expect("meta.json"),
    )
    .expect("json");
    assert_eq!(
        (meta["rows"].as_u64(), meta["columns"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(meta["description"], "sales");
    // The same slug again, asked for by --slug, is refused; nothing changes
    // (without --slug the derived slug is made unique: tests/import.rs).
    let out = csv_agent(&[
        "datasets",
        "--datasets",
        &reg,
        "add",
        good.to_str().unwrap_or_default(),
        "--slug",
        "sales-2024",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--slug"), "{}", stderr(&out));

    let header_only = write_csv(files.path(), "empty.csv", "a,b\n");
    let out = csv_agent(&[
        "datasets",
        "--datasets",
        &reg,
        "add",
        header_only.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no data rows"), "{}", stderr(&out));
    let names: Vec<String> = std::fs::read_dir(registry.path())
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["sales-2024".to_string()],
        "left behind: {names:?}"
    );
}

#[test]
fn a_fresh_run_prints_its_capacity_plan_and_keeps_its_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let registry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
    let args = [
        "run",
        "--datasets",
        path(&registry),
        "--only",
        "penguins",
        "--max-questions",
        "2",
        "--fresh",
        "--out",
        path(&out),
    ];
    // Twice: the second --fresh clears the first run's output, logs too.
    for _ in 0..2 {
        let o = csv_agent(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let err = stderr(&o);
        assert!(
            err.contains("1 dataset(s) at a time (every dataset)")
                && err.contains("questions in flight each")
                && err.contains("measured costs")
                && err.contains("of MemAvailable"),
            "the plan is printed at start: {err}"
        );
    }
    let log = std::fs::read_to_string(out.join("logs/penguins.log")).expect("the dataset's log");
    assert!(log.contains("workers forked"), "{log}");
    let o = Command::new(BIN)
        .args(args)
        .env("CSV_AGENT_MEM_AVAILABLE", "1.5 gigabytes")
        .output()
        .expect("the binary runs");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("CSV_AGENT_MEM_AVAILABLE"),
        "{}",
        text(&o)
    );
}
