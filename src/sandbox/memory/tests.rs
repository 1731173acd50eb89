//! Tests of the memory readings, against captured smaps_rollup files.

use super::*;

// Captured on the development machine (kernel 6.18): `cat
// /proc/<pid>/smaps_rollup` of `sleep`, of the image's Python after
// importing the data stack and reading penguins, and of a jailed zygote
// and one of its workers.
const SLEEP: &str = include_str!("../../../tests/fixtures/smaps_rollup/sleep.txt");
const PYTHON: &str = include_str!("../../../tests/fixtures/smaps_rollup/python.txt");
const ZYGOTE: &str = include_str!("../../../tests/fixtures/smaps_rollup/zygote.txt");
const WORKER: &str = include_str!("../../../tests/fixtures/smaps_rollup/worker.txt");

const KIB: u64 = 1024;

#[test]
fn a_tiny_process_parses_to_bytes() {
    let s = Smaps::parse(SLEEP).unwrap();
    assert_eq!(s.rss, 1680 * KIB);
    assert_eq!(s.pss, 267 * KIB);
    assert_eq!(s.shared_clean, 1572 * KIB);
    assert_eq!(s.shared_dirty, 0);
    assert_eq!(s.uss(), 108 * KIB);
    assert_eq!(s.swap, 0);
}

#[test]
fn a_python_process_parses_to_bytes() {
    let s = Smaps::parse(PYTHON).unwrap();
    assert_eq!(s.rss, 174_980 * KIB);
    assert_eq!(s.pss, 169_430 * KIB);
    assert_eq!(s.private_clean, 46_476 * KIB);
    assert_eq!(s.private_dirty, 121_012 * KIB);
    assert_eq!(s.uss(), (46_476 + 121_012) * KIB);
}

#[test]
fn rss_is_the_sum_of_shared_and_private_pages() {
    for text in [SLEEP, PYTHON, ZYGOTE, WORKER] {
        let s = Smaps::parse(text).unwrap();
        assert_eq!(
            s.rss,
            s.shared_clean + s.shared_dirty + s.private_clean + s.private_dirty
        );
        assert!(s.uss() <= s.pss && s.pss <= s.rss, "{s:?}");
    }
}

#[test]
fn a_forked_worker_shares_most_of_its_pages() {
    let zygote = Smaps::parse(ZYGOTE).unwrap();
    let worker = Smaps::parse(WORKER).unwrap();
    // The only other process is the zygote: Pss counts half of what
    // they share, and the worker's own pages are a small part of it.
    assert!(worker.shared_clean + worker.shared_dirty > 4 * worker.uss());
    let shared = worker.rss - worker.uss();
    assert!(worker.pss.abs_diff(worker.uss() + shared / 2) < worker.rss / 20);
    assert!(zygote.pss < zygote.rss, "{zygote:?}");
}

#[test]
fn a_kernel_without_swap_fields_still_parses() {
    let text: String = SLEEP
        .lines()
        .filter(|l| !l.starts_with("Swap") && !l.starts_with("SwapPss"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(Smaps::parse(&text).unwrap().swap, 0);
}

#[test]
fn malformed_text_is_an_error_not_a_panic() {
    assert!(Smaps::parse("").is_err());
    assert!(Smaps::parse("Rss: 12 kB\n").is_err());
    let without_pss: String = SLEEP
        .lines()
        .filter(|l| !l.starts_with("Pss:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = Smaps::parse(&without_pss).unwrap_err().to_string();
    assert!(err.contains("no Pss field"), "{err}");
}

#[test]
fn a_pid_that_does_not_exist_is_gone() {
    // pid_max is at most 2^22, so this pid never exists.
    let err = Smaps::read(4_194_304 + 7).unwrap_err();
    assert!(err.is_gone(), "{err}");
    assert!(err.to_string().contains("4194311"), "{err}");
}

#[test]
fn our_own_process_is_readable() {
    let s = Smaps::read(std::process::id()).unwrap();
    assert!(s.rss > 0 && s.pss > 0 && s.pss <= s.rss);
}

fn row(role: Role, rss: u64, pss: u64, uss: u64, cg: Option<u64>) -> ProcessMemory {
    ProcessMemory {
        role,
        host_pid: 100,
        rss,
        pss,
        uss,
        shared_clean: rss - uss,
        shared_dirty: 0,
        swap: 0,
        cgroup_usage: cg,
    }
}

#[test]
fn sharing_point_divides_the_cold_baseline_by_the_total_pss() {
    let report = MemoryReport::from_rows(
        vec![
            row(Role::Zygote, 200, 80, 10, Some(150)),
            row(Role::Worker { worker_id: 1 }, 190, 60, 20, Some(20)),
            row(Role::Worker { worker_id: 2 }, 210, 70, 30, Some(30)),
        ],
        vec![],
    );
    assert_eq!(report.totals.pss, 210);
    assert_eq!(report.totals.rss, 600);
    assert_eq!(report.totals.cgroup_usage, Some(200));
    let p = SharingPoint::new(report, 210).unwrap();
    assert_eq!(p.workers, 2);
    assert_eq!(p.zygote_pss, 80);
    assert_eq!(
        p.worker_avg,
        Figures {
            rss: 200,
            pss: 65,
            uss: 25
        }
    );
    assert_eq!(
        p.worker_max,
        Figures {
            rss: 210,
            pss: 70,
            uss: 30
        }
    );
    assert_eq!(p.cold_baseline, 420);
    assert!((p.sharing_ratio - 2.0).abs() < 1e-9);
}

#[test]
fn a_missing_cgroup_leaves_the_total_unknown() {
    let t = Totals::of(&[
        row(Role::Zygote, 10, 5, 1, Some(3)),
        row(Role::Worker { worker_id: 1 }, 10, 5, 1, None),
    ]);
    assert_eq!(t.cgroup_usage, None);
}

#[test]
fn cold_footprint_is_zygote_plus_worker_pss() {
    let report = MemoryReport::from_rows(
        vec![
            row(Role::Zygote, 200, 120, 10, None),
            row(Role::Worker { worker_id: 1 }, 190, 90, 20, None),
        ],
        vec![],
    );
    let cold = ColdFootprint::from_report(report).unwrap();
    assert_eq!(cold.footprint, 210);
    assert_eq!(cold.rss_sum, 390);
    let two = MemoryReport::from_rows(
        vec![
            row(Role::Zygote, 200, 120, 10, None),
            row(Role::Worker { worker_id: 1 }, 190, 90, 20, None),
            row(Role::Worker { worker_id: 2 }, 190, 90, 20, None),
        ],
        vec![],
    );
    assert!(matches!(
        ColdFootprint::from_report(two),
        Err(MemoryError::ColdShape { workers: 2 })
    ));
}

#[test]
fn rows_serialize_with_their_role() {
    let json = serde_json::to_value(row(Role::Worker { worker_id: 3 }, 1, 1, 1, None)).unwrap();
    assert_eq!(json["role"], "worker");
    assert_eq!(json["worker_id"], 3);
    let json = serde_json::to_value(row(Role::Zygote, 1, 1, 1, None)).unwrap();
    assert_eq!(json["role"], "zygote");
    assert!(json.get("worker_id").is_none());
}

#[test]
fn checkpoints_climb_to_the_requested_count() {
    assert_eq!(checkpoints(1), vec![1]);
    assert_eq!(checkpoints(2), vec![1, 2]);
    assert_eq!(checkpoints(4), vec![1, 2, 4]);
    assert_eq!(checkpoints(64), vec![1, 8, 16, 32, 64]);
}
