//! Timestamps of the protocol (microseconds since the Unix epoch) for people.

use std::time::Duration;

use crate::config::format_duration;

/// `2026-08-10T09:30:54.123Z`, or `-` for 0 (not reached yet).
pub fn timestamp(us: i64) -> String {
    if us <= 0 {
        return "-".to_owned();
    }
    let secs = us.div_euclid(1_000_000);
    let millis = us.rem_euclid(1_000_000) / 1000;
    let base = nuage_core::time::rfc3339(secs as f64);
    format!("{}.{millis:03}Z", base.trim_end_matches('Z'))
}

/// `09:30:54.123` (UTC), for tables.
pub fn clock(us: i64) -> String {
    let full = timestamp(us);
    match full.split_once('T') {
        Some((_, t)) => t.trim_end_matches('Z').to_owned(),
        None => full,
    }
}

/// The time between two timestamps, `-` if either is missing.
pub fn between(from_us: i64, to_us: i64) -> String {
    if from_us <= 0 || to_us <= 0 || to_us < from_us {
        return "-".to_owned();
    }
    format_duration(Duration::from_micros((to_us - from_us) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_500_000), "1970-01-01T00:00:01.500Z");
        assert_eq!(clock(1_500_000), "00:00:01.500");
        assert_eq!(between(1_000_000, 2_500_000), "1.500s");
        assert_eq!(between(0, 5), "-");
    }
}
