//! Token pacing: a daemon in the middle of its own stream of messages holds a token
//! that would leave with only a few of them back for a short, bounded time, so that
//! more messages join the next frame.
//!
//! Why: with three daemons on one machine the token goes round in ~100 µs. When the
//! daemons run at realtime priority (as corosync runs itself) they preempt the sending
//! client whenever a message or a token arrives, so each token visit finds only the
//! 3–5 messages the client managed to write since the last one: nearly empty frames,
//! and a token rotation, a frame and a system call per few messages. Holding the
//! token for [`TOKEN_PACE_US`] lets the client write many more first.
//!
//! When: only for a token [`crate::ring::Ring::may_pace`] accepts (this daemon sent in
//! its last visit and nobody else did anything in the rotation since: no other
//! member's frames, no retransmission request, no membership or recovery flag, no
//! message half sent), and only while a stream of this daemon's is under way — at
//! least [`PACE_MIN_STREAM`] messages wait, or the token's last visit took that many —
//! and less than half a frame's worth waits ([`Pacing::fill`]). An isolated message, or
//! one message at a time (request and reply, the benchmark's latency probes), is never
//! held. The token is released as soon as half a frame's worth waits, or after the hold.
//! Half, not a whole frame: large messages fill frames without help (a 64000-byte frame
//! holds seven whole 8000-byte messages, and waiting for eight only slowed the token
//! down, measured 2026-11-23), and the small ones that need pacing rarely reach half a
//! frame (~220 messages of 100 bytes) within the hold anyway.
//!
//! Why it is safe: the ring state machine sees the held token later, exactly as if
//! the network had taken longer to carry it; the protocol tolerates any delay up to
//! its timeouts (and the simulator exercises delay and reordering), and the hold is
//! capped far below them ([`Pacing::new`]). The ring core itself counts time in
//! milliseconds; this sub-millisecond hold lives in the daemon's event loop.

use std::time::Duration;

/// Longest a token is held back, in microseconds (default).
pub const TOKEN_PACE_US: u64 = 300;
/// Environment variable overriding [`TOKEN_PACE_US`] (whole microseconds; `0` turns
/// pacing off), for benchmarks and tuning.
pub const TOKEN_PACE_ENV: &str = "NUAGE_GROUP_TOKEN_PACE_US";
/// Largest hold [`TOKEN_PACE_ENV`] accepts, in microseconds.
pub const MAX_TOKEN_PACE_US: u64 = 10_000;
/// A stream is under way when at least this many messages wait for the token, or the
/// token's last visit here took at least this many: then a token is held. One message
/// at a time (an isolated message, or a request/reply exchange) is never held.
pub const PACE_MIN_STREAM: usize = 2;

/// The pacing policy of one daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Longest hold (zero: pacing off).
    pub hold: Duration,
    /// Bytes of waiting messages enough for a frame worth sending (half a frame's
    /// payload): the token goes at once.
    pub fill: usize,
}

impl Pacing {
    /// `hold_us` capped to a quarter of the hurry timeout (itself below the token
    /// timeout), so a held token never comes near a timeout; `frame_payload` is the
    /// payload of one ring frame (the fill target is half of it).
    pub fn new(hold_us: u64, hurry_timeout_ms: u64, frame_payload: usize) -> Pacing {
        let cap_us = hurry_timeout_ms.saturating_mul(1000) / 4;
        Pacing {
            hold: Duration::from_micros(hold_us.min(cap_us).min(MAX_TOKEN_PACE_US)),
            fill: frame_payload / 2,
        }
    }

    /// The hold from [`TOKEN_PACE_ENV`], else [`TOKEN_PACE_US`]; an unreadable value is
    /// an error naming the variable.
    pub fn hold_us_from_env() -> anyhow::Result<u64> {
        match std::env::var(TOKEN_PACE_ENV) {
            Err(_) => Ok(TOKEN_PACE_US),
            Ok(v) => parse_hold_us(&v),
        }
    }

    /// Whether a token the ring accepts for pacing is held, given the messages waiting
    /// (count, bytes) and how many messages the token's last visit here took.
    pub fn should_hold(&self, (count, bytes): (usize, usize), last_visit: usize) -> bool {
        !self.hold.is_zero()
            && (count >= PACE_MIN_STREAM || last_visit >= PACE_MIN_STREAM)
            && bytes < self.fill
    }

    /// Whether a held token goes now, before its hold is over.
    pub fn should_release(&self, (_, bytes): (usize, usize)) -> bool {
        bytes >= self.fill
    }
}

/// A [`TOKEN_PACE_ENV`] value: whole microseconds up to [`MAX_TOKEN_PACE_US`].
fn parse_hold_us(v: &str) -> anyhow::Result<u64> {
    match v.trim().parse::<u64>() {
        Ok(us) if us <= MAX_TOKEN_PACE_US => Ok(us),
        _ => anyhow::bail!(
            "{TOKEN_PACE_ENV}={v:?}: expected whole microseconds from 0 (off) to {MAX_TOKEN_PACE_US}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_a_partial_stream() {
        let p = Pacing::new(300, 500, 128_000);
        assert_eq!(p.hold, Duration::from_micros(300));
        assert_eq!(p.fill, 64_000);
        assert!(!p.should_hold((0, 0), 0), "nothing waiting");
        assert!(
            !p.should_hold((1, 100), 1),
            "one message at a time: it goes at once"
        );
        assert!(p.should_hold((2, 200), 0));
        assert!(
            p.should_hold((1, 100), 2),
            "the last visit took several: a stream"
        );
        assert!(p.should_hold((0, 0), 5));
        assert!(p.should_hold((400, 63_999), 0));
        assert!(
            !p.should_hold((401, 64_000), 9),
            "a full frame waits: no hold"
        );
        assert!(!p.should_release((400, 63_999)));
        assert!(p.should_release((401, 64_000)));
    }

    #[test]
    fn env_values() {
        assert_eq!(parse_hold_us("250").unwrap(), 250);
        assert_eq!(parse_hold_us("0").unwrap(), 0);
        let e = parse_hold_us("3ms").unwrap_err().to_string();
        assert!(
            e.contains(TOKEN_PACE_ENV) && e.contains("microseconds"),
            "{e}"
        );
        assert!(parse_hold_us("10001").is_err());
    }

    #[test]
    fn zero_turns_pacing_off() {
        let p = Pacing::new(0, 500, 64_000);
        assert!(!p.should_hold((10, 1000), 10));
    }

    #[test]
    fn hold_is_capped_far_below_the_timeouts() {
        // A hurry timeout of 1 ms (the smallest spread.conf allows) allows 250 µs.
        assert_eq!(Pacing::new(300, 1, 64_000).hold, Duration::from_micros(250));
        assert_eq!(
            Pacing::new(u64::MAX, 500, 64_000).hold,
            Duration::from_micros(MAX_TOKEN_PACE_US)
        );
    }
}
