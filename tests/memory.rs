//! Memory profiling of real sandboxes: the invariants of a report on a
//! sandbox with 4 workers, and `sandbox profile --json` through the binary.
//! Small N only; the big comparisons are `cargo bench`.

mod common;

use std::process::Command;

use csv_agent::sandbox::memory::{self, MemoryReport, Role, SharingPoint};
use csv_agent::sandbox::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_of_four_workers_keeps_the_invariants() {
    let opts = common::options(&common::penguins());
    let sandbox = Sandbox::start(opts.clone()).await.expect("sandbox starts");
    let mut workers = Vec::new();
    memory::add_workers(&sandbox, &mut workers, 4, memory::DEFAULT_TASK)
        .await
        .expect("the default task runs in every worker");
    let report = MemoryReport::collect(&sandbox, &workers).expect("measure");

    let zygote = report.zygote().expect("the zygote is listed");
    assert_eq!(Some(zygote.host_pid), sandbox.zygote_host_pid());
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    let listed: Vec<(u64, u32)> = report
        .workers()
        .map(|w| match w.role {
            Role::Worker { worker_id } => (worker_id, w.host_pid),
            Role::Zygote => unreachable!(),
        })
        .collect();
    let expected: Vec<(u64, u32)> = workers.iter().map(|w| (w.id, w.host_pid)).collect();
    assert_eq!(listed, expected, "every worker listed, in order");

    for p in &report.processes {
        assert!(p.pss <= p.rss, "{} Pss above Rss: {p:?}", p.role);
        assert!(p.uss <= p.pss, "{} Uss above Pss: {p:?}", p.role);
        assert!(p.rss > 0, "{} has no memory: {p:?}", p.role);
        // cgroup v1 memory + pids are on this host's CI; without cgroups the
        // usage is simply absent.
        if let Some(usage) = p.cgroup_usage {
            assert!(usage > 0, "{p:?}");
        }
    }
    let sum_rss: u64 = report.processes.iter().map(|p| p.rss).sum();
    assert_eq!(report.totals.rss, sum_rss);
    assert!(report.totals.pss <= sum_rss);
    assert_eq!(report.totals.processes, 5);
    // Forked workers share most of their pages with the zygote and each other.
    for w in report.workers() {
        assert!(w.pss < w.rss / 2, "worker shares little: {w:?}");
    }
    // A worker's cgroup holds only what it allocated: far less than its Rss.
    for w in report.workers() {
        if let Some(usage) = w.cgroup_usage {
            assert!(usage < w.rss / 2, "worker charged for shared pages: {w:?}");
        }
    }

    // The cold baseline from one independent sandbox, in the same run.
    let cold = memory::ColdSandbox::start(opts, memory::DEFAULT_TASK)
        .await
        .expect("a cold sandbox starts");
    let footprint = cold.footprint().expect("measure the cold sandbox");
    cold.shutdown().await;
    let point = SharingPoint::new(report, footprint.footprint).expect("a point");
    assert_eq!(point.workers, 4);
    assert_eq!(point.cold_baseline, 4 * footprint.footprint);
    assert!(
        point.sharing_ratio > 1.0,
        "4 forked workers cost as much as 4 sandboxes: {point:?}"
    );
    assert!(point.worker_max.pss >= point.worker_avg.pss);

    drop(workers);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_vanished_is_reported_not_a_panic() {
    let (sandbox, _dir) = common::sandbox().await;
    let mut workers = Vec::new();
    memory::add_workers(&sandbox, &mut workers, 2, "x = 1")
        .await
        .expect("cells run");
    let cell = workers[1].exec("import os; os._exit(3)").await.unwrap();
    assert_ne!(cell.status, csv_agent::sandbox::CellStatus::Ok);
    let gone = workers[1].host_pid;
    // Wait for the zygote to reap it, so its pid has no memory map left.
    for _ in 0..50 {
        if !std::path::Path::new(&format!("/proc/{gone}")).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let report = MemoryReport::collect(&sandbox, &workers).expect("measure");
    assert_eq!(report.workers().count(), 1);
    assert_eq!(report.missing.len(), 1, "{report:?}");
    assert_eq!(report.missing[0].host_pid, gone);
    assert!(report.missing[0].reason.contains(&gone.to_string()));
    drop(workers);
    sandbox.shutdown().await;
}

#[test]
fn sandbox_profile_json_through_the_binary() {
    // The image is built (or found) once before the binary needs it.
    let _ = common::image();
    let out = Command::new(common::BIN)
        .args(["sandbox", "profile", "--workers", "2", "--json", "--csv"])
        .arg(common::penguins())
        .output()
        .expect("run csv-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["workers"], 2);
    assert!(v["definition"].as_str().unwrap().contains("cold baseline"));
    let footprint = v["cold"]["footprint"].as_u64().unwrap();
    assert_eq!(
        footprint,
        v["cold"]["zygote_pss"].as_u64().unwrap() + v["cold"]["worker_pss"].as_u64().unwrap()
    );
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "one point without --svg");
    let p = &points[0];
    assert_eq!(p["workers"], 2);
    assert_eq!(p["cold_baseline"].as_u64().unwrap(), 2 * footprint);
    let ratio = p["sharing_ratio"].as_f64().unwrap();
    assert!(ratio > 1.0, "{p}");
    let processes = p["report"]["processes"].as_array().unwrap();
    let roles: Vec<&str> = processes
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["zygote", "worker", "worker"]);
    for key in [
        "host_pid",
        "rss",
        "pss",
        "uss",
        "shared_clean",
        "shared_dirty",
    ] {
        assert!(processes.iter().all(|p| p[key].is_u64()), "{key}");
    }
    assert!(p["report"]["note"]
        .as_str()
        .unwrap()
        .contains("touched it first"));
}

#[test]
fn sandbox_profile_refuses_a_bad_worker_count_before_starting() {
    let out = Command::new(common::BIN)
        .args(["sandbox", "profile", "--workers", "300", "--csv"])
        .arg(common::penguins())
        .output()
        .expect("run csv-agent");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("between 1 and 256"), "{stderr}");
}

/// `scripts/memory-floor.py` (the interpreter's floor, docs/architecture.md):
/// it runs the zygote's own preparation outside the jail and measures bare
/// forks, idle and after the default task.
#[test]
fn the_memory_floor_script_measures_bare_forks_of_the_prepared_zygote() {
    let image = common::image();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/memory-floor.py");
    let run = |csv: &std::path::Path| {
        Command::new(&image.python)
            .arg(script)
            .arg(csv)
            .args(["--forks", "2"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(image.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("the image interpreter runs")
    };
    let out = run(&common::penguins());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let uss = |mode: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{mode}: Uss ")))
            .unwrap_or_else(|| panic!("no {mode} line in:\n{stdout}"));
        line[format!("{mode}: Uss ").len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number in {line:?}"))
    };
    let (idle, task) = (uss("idle"), uss("task"));
    assert!(idle > 0.0, "{stdout}");
    // The task copies pages an idle fork never touches.
    assert!(task > idle + 1.0, "{stdout}");
    assert!(stdout.contains("zygote: Rss "), "{stdout}");

    let missing = std::env::temp_dir().join("csv-agent-no-such-file.csv");
    let out = run(&missing);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read"), "{stderr}");
}
