//! Answers: the canonical hash of a submitted value (the same algorithm as
//! `answer_hash` in `sandbox-image/zygote.py`, proven by the shared vectors in
//! `tests/vectors/answer_hash.json`), tolerant matching of two answers, and
//! the majority vote over a question's traces.
//!
//! A leaf module: it knows JSON values, nothing of sandboxes or teachers.
//! docs/protocol.md ("Answer hashing") is the specification.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Numbers closer than this match.
pub const NUMBER_TOLERANCE: f64 = 0.1;
/// p-values and significance scores are compared more tightly.
pub const P_VALUE_TOLERANCE: f64 = 0.002;

/// The first 16 hex digits of the SHA-256 of the canonical JSON of `value`.
pub fn answer_hash(value: &Value) -> String {
    let digest = Sha256::digest(canonical_json(value).as_bytes());
    let mut hex = hex::encode(digest.as_slice());
    hex.truncate(16);
    hex
}

/// Compact JSON with sorted keys, every float rounded to 2 decimals (and
/// written as an integer when the rounded value is integral and below 2^53),
/// floats otherwise written the way Python's `repr` writes them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                out.push_str(&canonical_float(f));
            }
        }
        Value::String(s) => out.push_str(&json_string(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's Map (without `preserve_order`) is a BTreeMap: its
            // keys iterate in byte order, which for UTF-8 is code-point order,
            // Python's `sort_keys` order. Sort anyway so a feature flag
            // elsewhere in the build cannot change hashes.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(key));
                out.push(':');
                if let Some(v) = map.get(*key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
    }
}

fn json_string(s: &str) -> String {
    // serde_json escapes exactly what Python's json.dumps(ensure_ascii=False)
    // escapes; serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// Python's `round(x, 2)`: the exact binary value rounded to 2 decimals (ties
/// to even), then the nearest double. Rust's `{:.2}` formats the exact value
/// with the same rule, so format and parse back.
fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

fn canonical_float(x: f64) -> String {
    if !x.is_finite() {
        // Normalization turns NaN and infinities into null before hashing;
        // keep a defined output if one slips through.
        return "null".to_string();
    }
    let r = round2(x);
    const TWO_53: f64 = 9_007_199_254_740_992.0;
    if r.fract() == 0.0 && r.abs() < TWO_53 {
        // -0.0 becomes 0, 3.0 becomes 3.
        return format!("{}", r as i64);
    }
    python_float_repr(r)
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional
/// when the decimal exponent is in (-4, 16], scientific otherwise.
pub fn python_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "2.67e0", "1e20".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let point = exponent + 1; // value = 0.d1d2… × 10^point
    let n = digits.len() as i32;
    if -4 < point && point <= 16 {
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point >= n {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = point - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", e.abs())
    }
}

// ------------------------------------------------------------ matching

/// What a dict key says about how its values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Plain,
    /// p-values and significance scores: tighter tolerance.
    PValue,
    /// correlations and associations: compared in absolute value.
    Correlation,
}

fn key_kind(key: &str) -> KeyKind {
    let k = key.to_ascii_lowercase().replace(['-', ' '], "_");
    let p_value = ["p_value", "pvalue", "p_val", "pval", "significance"];
    let correlation = [
        "corr",
        "pearson",
        "spearman",
        "kendall",
        "association",
        "cramer",
        "phi",
        "r_value",
    ];
    if k == "p" || p_value.iter().any(|w| k.contains(w)) {
        KeyKind::PValue
    } else if k == "r" || k == "rho" || k == "tau" || correlation.iter().any(|w| k.contains(w)) {
        KeyKind::Correlation
    } else {
        KeyKind::Plain
    }
}

/// Do two answers say the same thing? Equal hashes always match; otherwise
/// numbers within [`NUMBER_TOLERANCE`] (p-values within
/// [`P_VALUE_TOLERANCE`], correlations in absolute value), strings trimmed
/// and case-folded when they name a method or a yes/no, "true"/"false"
/// strings equal booleans, a JSON object or array inside a string is parsed
/// first, dicts need the same keys, lists match element-wise (all-string
/// lists also after sorting).
pub fn answers_match(a: &Value, b: &Value) -> bool {
    answer_hash(a) == answer_hash(b) || values_match(a, b, KeyKind::Plain)
}

fn values_match(a: &Value, b: &Value, kind: KeyKind) -> bool {
    if let Some(parsed) = embedded_json(a) {
        return values_match(&parsed, b, kind);
    }
    if let Some(parsed) = embedded_json(b) {
        return values_match(a, &parsed, kind);
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => numbers_match(x, y, kind),
            _ => x == y,
        },
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Bool(x), Value::String(s)) | (Value::String(s), Value::Bool(x)) => {
            bool_word(s) == Some(*x)
        }
        (Value::String(x), Value::String(y)) => strings_match(x, y),
        (Value::Null, Value::Null) => true,
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.get(k)
                        .is_some_and(|w| values_match(v, w, merge_kind(kind, key_kind(k))))
                })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return false;
            }
            if x.iter().zip(y).all(|(v, w)| values_match(v, w, kind)) {
                return true;
            }
            // All-string lists may come in another order (e.g. a set of names).
            match (all_strings(x), all_strings(y)) {
                (Some(mut xs), Some(mut ys)) => {
                    xs.sort();
                    ys.sort();
                    xs.iter().zip(&ys).all(|(s, t)| strings_match(s, t))
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn merge_kind(outer: KeyKind, inner: KeyKind) -> KeyKind {
    if inner == KeyKind::Plain {
        outer
    } else {
        inner
    }
}

fn numbers_match(x: f64, y: f64, kind: KeyKind) -> bool {
    match kind {
        KeyKind::PValue => (x - y).abs() <= P_VALUE_TOLERANCE,
        KeyKind::Correlation => (x.abs() - y.abs()).abs() <= NUMBER_TOLERANCE,
        KeyKind::Plain => (x - y).abs() <= NUMBER_TOLERANCE,
    }
}

fn bool_word(s: &str) -> Option<bool> {
    match s.trim().to_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A short name-like string: a method ("Mann-Whitney U"), a category, yes/no.
fn is_name(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty()
        && s.chars().count() <= 60
        && s.chars().next().is_some_and(char::is_alphabetic)
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '\'' | '.'))
}

fn strings_match(x: &str, y: &str) -> bool {
    let (x, y) = (x.trim(), y.trim());
    x == y || (is_name(x) && is_name(y) && x.to_lowercase() == y.to_lowercase())
}

fn all_strings(items: &[Value]) -> Option<Vec<&str>> {
    items.iter().map(Value::as_str).collect()
}

fn embedded_json(v: &Value) -> Option<Value> {
    let s = v.as_str()?.trim();
    if !(s.starts_with('{') || s.starts_with('[')) {
        return None;
    }
    serde_json::from_str::<Value>(s)
        .ok()
        .filter(|p| p.is_object() || p.is_array())
}

// ------------------------------------------------------------ majority

/// A group of answers that match the group's first member.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Indexes (into the voted slice) of the members, in order.
    pub members: Vec<usize>,
    /// The first member's hash: the cluster's name.
    pub hash: String,
}

/// The outcome of a vote.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// Every cluster, in order of first appearance.
    pub clusters: Vec<Cluster>,
    /// Index into `clusters` of the largest one (ties go to the earliest).
    pub majority: Option<usize>,
}

impl Vote {
    pub fn majority_cluster(&self) -> Option<&Cluster> {
        self.majority.and_then(|i| self.clusters.get(i))
    }
}

/// Cluster the answers with [`answers_match`] against each cluster's first
/// member, in order; `None` (a trace that submitted nothing) takes no part.
/// Falsy answers (0, "", [], {}) are answers like any other.
pub fn vote(answers: &[Option<&Value>]) -> Vote {
    let mut clusters: Vec<(usize, Cluster)> = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let Some(answer) = answer else { continue };
        let home = clusters.iter_mut().find(|(first, _)| {
            answers[*first].is_some_and(|representative| answers_match(representative, answer))
        });
        match home {
            Some((_, cluster)) => cluster.members.push(i),
            None => clusters.push((
                i,
                Cluster {
                    members: vec![i],
                    hash: answer_hash(answer),
                },
            )),
        }
    }
    let mut majority: Option<usize> = None;
    for (i, (_, c)) in clusters.iter().enumerate() {
        let better = match majority {
            None => true,
            Some(m) => c.members.len() > clusters[m].1.members.len(),
        };
        if better {
            majority = Some(i);
        }
    }
    Vote {
        clusters: clusters.into_iter().map(|(_, c)| c).collect(),
        majority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_float_repr_matches_python() {
        for (x, s) in [
            (2.67, "2.67"),
            (0.01, "0.01"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (-1.5e300, "-1.5e+300"),
            (9007199254740994.0, "9007199254740994.0"),
            (4503599627370495.5, "4503599627370495.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123.0, "123.0"),
            (-0.5, "-0.5"),
        ] {
            assert_eq!(python_float_repr(x), s, "{x}");
        }
    }

    #[test]
    fn rounding_follows_python_round_half_even_on_exact_ties() {
        assert_eq!(canonical_json(&json!(0.125)), "0.12");
        assert_eq!(canonical_json(&json!(0.375)), "0.38");
        assert_eq!(canonical_json(&json!(2.675)), "2.67");
        assert_eq!(canonical_json(&json!(-0.005)), "-0.01");
        assert_eq!(canonical_json(&json!(1.005)), "1");
        assert_eq!(canonical_json(&json!(-0.0)), "0");
    }

    #[test]
    fn three_and_three_point_oh_share_a_hash_but_true_and_one_do_not() {
        assert_eq!(answer_hash(&json!(3)), answer_hash(&json!(3.0)));
        assert_eq!(answer_hash(&json!(3)), answer_hash(&json!(3.004)));
        assert_ne!(answer_hash(&json!(true)), answer_hash(&json!(1)));
    }

    #[test]
    fn example_of_the_protocol_doc() {
        let v = json!({"b": 0.125, "a": [2.675, 1e20]});
        assert_eq!(canonical_json(&v), r#"{"a":[2.67,1e+20],"b":0.12}"#);
    }

    #[test]
    fn numbers_match_within_tolerance_and_p_values_tighter() {
        assert!(answers_match(&json!(10.0), &json!(10.09)));
        assert!(!answers_match(&json!(10.0), &json!(10.2)));
        assert!(answers_match(
            &json!({"p_value": 0.0401}),
            &json!({"p_value": 0.0415})
        ));
        assert!(!answers_match(
            &json!({"p_value": 0.040}),
            &json!({"p_value": 0.046})
        ));
        assert!(answers_match(
            &json!({"correlation": -0.8}),
            &json!({"correlation": 0.8})
        ));
        assert!(!answers_match(
            &json!({"slope": -0.8}),
            &json!({"slope": 0.8})
        ));
    }

    #[test]
    fn strings_booleans_and_embedded_json() {
        assert!(answers_match(
            &json!(" Mann-Whitney U "),
            &json!("mann-whitney u")
        ));
        assert!(answers_match(&json!("Yes"), &json!("yes")));
        assert!(!answers_match(&json!("Adelie"), &json!("Gentoo")));
        assert!(answers_match(&json!("true"), &json!(true)));
        assert!(answers_match(&json!("False"), &json!(false)));
        assert!(answers_match(&json!(r#"{"a": 1.0}"#), &json!({"a": 1})));
        // Long free text is not case-folded.
        assert!(!answers_match(
            &json!("The mean is 3; see table 2."),
            &json!("the mean is 3; see table 2.")
        ));
    }

    #[test]
    fn dicts_need_equal_keys_and_lists_match_elementwise_or_sorted() {
        assert!(!answers_match(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(answers_match(&json!([1.0, 2.0]), &json!([1.05, 2.0])));
        assert!(!answers_match(&json!([1, 2]), &json!([2, 1])));
        assert!(answers_match(&json!(["b", "a"]), &json!(["A", "B"])));
        assert!(!answers_match(&json!([1, 2]), &json!([1, 2, 3])));
    }

    #[test]
    fn majority_clusters_in_order_and_ties_go_to_the_earliest() {
        let (a, b, c) = (json!(1.0), json!(5.0), json!(1.02));
        let v = vote(&[Some(&a), Some(&b), Some(&c), None]);
        assert_eq!(v.clusters.len(), 2);
        assert_eq!(
            v.majority_cluster().map(|c| c.members.clone()),
            Some(vec![0, 2])
        );

        let tie = vote(&[Some(&b), Some(&a)]);
        assert_eq!(tie.majority, Some(0));
        assert_eq!(
            tie.majority_cluster().map(|c| c.hash.clone()),
            Some(answer_hash(&b))
        );

        assert_eq!(vote(&[None, None]).majority, None);
    }

    #[test]
    fn falsy_answers_are_real_answers() {
        let (zero, empty, list) = (json!(0), json!(""), json!([]));
        for v in [&zero, &empty, &list] {
            assert_eq!(answer_hash(v).len(), 16);
            let vote = vote(&[Some(v), Some(v)]);
            assert_eq!(vote.majority_cluster().map(|c| c.members.len()), Some(2));
        }
        assert!(!answers_match(&zero, &empty));
    }
}
