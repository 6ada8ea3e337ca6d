//! What one span costs, with tracing off and on: `bench/jobs/bench.sh` runs it to put
//! the cost of tracing per job in numbers that the noise of a shared machine cannot
//! hide (the jobs/s comparison beside it cannot resolve a few per cent).
//!
//!   cargo run --release -p nuage-jobs --example span_cost
//!
//! Prints `off_ns on_ns`: nanoseconds per span (made under a parent, with a detail
//! string, then ended), median of 5 rounds. Tracing on writes real files (in a temp
//! directory, removed after), ~300 bytes per span: fewer spans are made on.

use std::hint::black_box;
use std::time::Instant;

use nuage_jobs::trace::{self, Span, TraceContext};

const ROUNDS: usize = 5;
/// Spans per round with tracing off, and on.
const SPANS_OFF: u32 = 1_000_000;
const SPANS_ON: u32 = 20_000;

fn round(spans: u32) -> f64 {
    let parent = Some(TraceContext {
        trace_id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        span_id: 0x42,
    });
    let t0 = Instant::now();
    for i in 0..spans {
        let s = Span::child(black_box(parent), "manager.dispatch", "manager", || {
            format!("job {i} to w1")
        });
        black_box(s.context());
        s.end();
    }
    t0.elapsed().as_nanos() as f64 / f64::from(spans)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    assert!(!trace::enabled());
    let off = median((0..ROUNDS).map(|_| round(SPANS_OFF)).collect());
    let dir = std::env::temp_dir().join(format!("nuage-span-cost-{}", std::process::id()));
    trace::install(&dir, "bench")?;
    let on = median((0..ROUNDS).map(|_| round(SPANS_ON)).collect());
    trace::finish();
    std::fs::remove_dir_all(&dir)?;
    println!("{off:.2} {on:.2}");
    Ok(())
}
