//! Crash-loop back-off: a function whose processes keep dying right after they start is
//! started again later and later (100 ms, 200 ms, … up to 30 s), never hundreds of times
//! a second, and shows as failing.

use std::time::{Duration, Instant};

/// A process that ends within this time of its start counts as a crash.
pub const CRASH_WINDOW: Duration = Duration::from_secs(2);
/// Wait after the first crash; it doubles with each crash in a row.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait between two starts of a crash-looping function.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Crashes in a row after which a function shows as failing.
pub const FAILING_AFTER: u32 = 3;

#[derive(Debug, Default, Clone)]
pub struct Backoff {
    /// Crashes in a row.
    crashes: u32,
    /// No start before this instant.
    until: Option<Instant>,
    /// What the last crash was, for messages.
    pub last_failure: Option<String>,
}

impl Backoff {
    /// A process started at `started` has failed (exited, or could not start) with
    /// `why`. A process that ran longer than [`CRASH_WINDOW`] was not crash-looping.
    pub fn failure(&mut self, started: Instant, now: Instant, why: String) {
        if now.saturating_duration_since(started) >= CRASH_WINDOW {
            self.crashes = 0;
            self.until = None;
        } else {
            self.crashes = self.crashes.saturating_add(1);
            let exp = self.crashes.saturating_sub(1).min(16);
            let wait = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
            self.until = Some(now + wait);
        }
        self.last_failure = Some(why);
    }

    /// A process did its job: the function is healthy again.
    pub fn success(&mut self) {
        self.crashes = 0;
        self.until = None;
    }

    /// `None` if a process may start now, else how long to wait.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|u| *u > now)
            .map(|u| u.saturating_duration_since(now))
    }

    pub fn failing(&self) -> bool {
        self.crashes >= FAILING_AFTER
    }

    pub fn crashes(&self) -> u32 {
        self.crashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.wait(t0), None);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            b.failure(now, now, "exit 1".into());
            let w = b.wait(now).unwrap();
            waits.push(w);
            now += w;
        }
        assert_eq!(waits[0], BACKOFF_BASE);
        assert_eq!(waits[1], BACKOFF_BASE * 2);
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        assert!(b.failing());
        // Starts are at most one per BACKOFF_BASE, then ever rarer: a dozen crashes take
        // minutes, not a second.
        assert!(now - t0 > Duration::from_secs(60));
        b.success();
        assert!(!b.failing());
        assert_eq!(b.wait(now), None);
    }

    #[test]
    fn a_long_run_is_not_a_crash() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.failure(t0, t0, "x".into());
        b.failure(t0, t0 + CRASH_WINDOW, "y".into());
        assert_eq!(b.crashes(), 0);
        assert_eq!(b.wait(t0 + CRASH_WINDOW), None);
    }
}
