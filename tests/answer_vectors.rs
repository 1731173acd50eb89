//! The answer hash is computed identically by `hook()`/`submit()` inside the
//! jail (zygote.py) and by Rust: every shared vector maps its normalized value
//! to the same canonical JSON and hash.

mod common;

use csv_agent::answers::{answer_hash, canonical_json};

#[test]
fn rust_hashes_every_shared_vector_like_python() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/answer_hash.json"
    ))
    .expect("vectors");
    let vectors: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert!(vectors.len() >= 25);
    let mut failures = Vec::new();
    for v in &vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let normalized = &v["normalized"];
        let canonical = canonical_json(normalized);
        let hash = answer_hash(normalized);
        if Some(canonical.as_str()) != v["canonical"].as_str()
            || Some(hash.as_str()) != v["hash"].as_str()
        {
            failures.push(format!(
                "{name}: canonical {canonical} vs {}, hash {hash} vs {}",
                v["canonical"], v["hash"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same values hashed inside a real jail by `submit()` agree with Rust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_from_a_real_worker_agree_with_rust() {
    let cells = common::run_cells(&[
        "submit({'mean': df['x'].mean(), 'p_value': 0.0123456, 'names': ['a', 'é'], 'big': 1e20, 'tie': 0.125})",
    ])
    .await;
    let submitted = cells[0].submitted.as_ref().expect("submitted");
    assert_eq!(
        submitted["hash"].as_str(),
        Some(answer_hash(&submitted["value"]).as_str()),
        "{submitted}"
    );
}
