//! When to try again: exponential backoff with jitter, and the wait a
//! server asks for (`retry-after-ms`, `Retry-After` as seconds or an HTTP
//! date).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wait before retry number `retry + 1` (`retry` counts from 0):
/// `initial × 2^retry`, capped at `max`, with equal jitter — half of it
/// fixed, half scaled by `unit` in `[0, 1)` — so concurrent requests that
/// failed together do not come back together, yet none comes back at once.
pub(super) fn backoff_delay(retry: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let factor = 1u32 << retry.min(31);
    let ceiling = initial.saturating_mul(factor).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` that differs from call to call. Jitter needs no
/// more: a process-random hash of a counter and the clock.
pub(super) fn jitter_unit() -> f64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait a reply asks for: OpenAI's `retry-after-ms`, else `Retry-After`
/// as seconds or as an HTTP date. Uncapped here; the caller caps it.
pub(super) fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    value("retry-after-ms")
        .and_then(|ms| ms.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        // A value past what a Duration holds (say 1e30) is "very long",
        // capped by the caller; never a panic.
        .map(|ms| Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX))
        .or_else(|| value("retry-after").and_then(|v| parse_retry_after(v, now)))
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`
/// (RFC 9110 §10.2.3; the date parsed by the `httpdate` crate, which also
/// takes the two obsolete formats RFC 9110 says to accept). A date in the
/// past means now.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_caps() {
        let initial = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        for retry in 0..40 {
            let ceiling = initial.saturating_mul(1 << retry.min(31)).min(max);
            for unit in [0.0, 0.25, 0.999_999, jitter_unit(), jitter_unit()] {
                let wait = backoff_delay(retry, initial, max, unit);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{retry} {unit} {wait:?}"
                );
            }
        }
        assert_eq!(
            backoff_delay(0, initial, max, 0.0),
            Duration::from_millis(250)
        );
        assert_eq!(backoff_delay(3, initial, max, 0.0), Duration::from_secs(2));
        assert_eq!(
            backoff_delay(10, initial, max, 0.0),
            Duration::from_secs(15)
        );
        assert_eq!(
            backoff_delay(u32::MAX, initial, max, 0.0),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let draws: Vec<f64> = (0..1000).map(|_| jitter_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u < 0.1));
        assert!(draws.iter().any(|u| *u > 0.9));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", now),
            None
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2000 12:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(951_825_600))
        );

        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(
            retry_after(&headers, now),
            Some(Duration::from_millis(1500))
        );
        // Hostile values: huge, not finite, negative, not numbers. None
        // panics; a huge one is "as long as possible" (the caller caps it).
        for (value, expected) in [
            ("1e30", Some(Duration::MAX)),
            ("1e308", Some(Duration::MAX)),
            ("inf", Some(Duration::from_secs(7))),
            ("NaN", Some(Duration::from_secs(7))),
            ("-5", Some(Duration::from_secs(7))),
            ("soon", Some(Duration::from_secs(7))),
        ] {
            headers.insert("retry-after-ms", value.parse().unwrap());
            assert_eq!(retry_after(&headers, now), expected, "{value}");
        }
        headers.remove("retry-after-ms");
        for value in ["18446744073709551615", "1e30", "99999999999999999999999"] {
            headers.insert("retry-after", value.parse().unwrap());
            let _ = retry_after(&headers, now);
        }
    }
}
