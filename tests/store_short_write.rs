//! A short write in the middle of an episode append (here: the file-size
//! limit, which makes `write` stop part-way and then fail with EFBIG, as a
//! full disk does) must not leave a fragment that the next append joins
//! onto. Alone in its test binary: it lowers RLIMIT_FSIZE for the process.

use csv_agent::store::EpisodeLog;
use serde_json::json;

#[test]
fn a_failed_append_leaves_no_fragment_for_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("episodes.jsonl");
    let log = EpisodeLog::open(&path).expect("open");
    log.append(&json!({"episode_id": "a", "pad": "x".repeat(100)}))
        .expect("first append");
    let first_len = std::fs::metadata(&path).expect("stat").len();

    // Past the limit, write() stops part-way and the next one fails with
    // EFBIG (SIGXFSZ ignored so the process lives to see it).
    // SAFETY: setting a signal disposition to SIG_IGN and a resource limit
    // of this process; no memory is shared with the handler.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)
        .expect("getrlimit");
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_FSIZE,
        first_len + 50,
        hard,
    )
    .expect("setrlimit");
    let failed = log.append(&json!({"episode_id": "b", "pad": "y".repeat(500)}));
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, soft, hard)
        .expect("restore the limit");
    assert!(failed.is_err(), "the append past the limit must fail");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        first_len,
        "the file is back to its length before the failed append"
    );

    log.append(&json!({"episode_id": "c"}))
        .expect("third append");
    let text = std::fs::read_to_string(&path).expect("read");
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("a corrupt line ({e}): {l}"));
            v["episode_id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(ids, ["a", "c"]);
}
