//! A small metrics registry rendered in the Prometheus text exposition format (0.0.4).
//!
//! Services register counters and gauges once, keep the handle, and update it with one
//! atomic operation. Registering the same name and labels twice returns the same series,
//! so a handler may also look a series up lazily.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most series one registry holds; past it, registration panics (a label with unbounded
/// values is a bug, not load).
pub const MAX_SERIES: usize = 10_000;

type Labels = Vec<(String, String)>;
type ValueFn = Arc<dyn Fn() -> f64 + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Clone)]
enum Source {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicI64>),
    Computed(ValueFn),
    Histogram(Histogram),
}

/// Default latency buckets, in seconds: 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A distribution of observed values over fixed buckets (cumulative when rendered).
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, strictly increasing; +Inf is implicit.
    bounds: Vec<f64>,
    /// One count per bound, plus one for +Inf; not cumulative.
    counts: Vec<AtomicU64>,
    /// Sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        assert!(!bounds.is_empty(), "a histogram needs buckets");
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "buckets must increase strictly"
        );
        Histogram(Arc::new(HistogramInner {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .0
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.0.bounds.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .0
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Observes the time elapsed since `start`, in seconds.
    pub fn observe_since(&self, start: std::time::Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

struct Family {
    help: String,
    kind: Kind,
    series: Vec<(Labels, Source)>,
}

/// The registry of one node. Cheap to clone: clones share the same series.
#[derive(Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

/// A monotonically increasing count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created at zero if new.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register(name, help, Kind::Counter, labels, || {
            Source::Counter(Arc::default())
        }) {
            Source::Counter(c) => Counter(c),
            _ => unreachable!("register checks the kind"),
        }
    }

    /// The gauge `name{labels}`, created at zero if new.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(name, help, Kind::Gauge, labels, || {
            Source::Gauge(Arc::default())
        }) {
            Source::Gauge(g) => Gauge(g),
            _ => unreachable!("register checks the kind"),
        }
    }

    /// A gauge whose value is computed at each scrape (uptime, queue lengths owned elsewhere).
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let f: ValueFn = Arc::new(f);
        self.register(name, help, Kind::Gauge, labels, move || Source::Computed(f));
    }

    /// The histogram `name{labels}` over `buckets` (upper bounds), created empty if new.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Histogram {
        match self.register(name, help, Kind::Histogram, labels, || {
            Source::Histogram(Histogram::new(buckets))
        }) {
            Source::Histogram(h) => h,
            _ => unreachable!("register checks the kind"),
        }
    }

    /// A counter whose value is read at each scrape from a source owned elsewhere.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let f: ValueFn = Arc::new(f);
        self.register(name, help, Kind::Counter, labels, move || {
            Source::Computed(f)
        });
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Source,
    ) -> Source {
        assert!(valid_name(name), "invalid metric name {name:?}");
        for (k, _) in labels {
            assert!(
                valid_name(k) && !k.contains(':'),
                "invalid label name {k:?}"
            );
        }
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut families = self.families.lock().expect("metrics lock poisoned");
        let total: usize = families.values().map(|f| f.series.len()).sum();
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: Vec::new(),
        });
        assert_eq!(family.kind, kind, "metric {name} registered as two kinds");
        if let Some((_, source)) = family.series.iter().find(|(l, _)| *l == labels) {
            return source.clone();
        }
        assert!(total < MAX_SERIES, "more than {MAX_SERIES} metric series");
        let source = make();
        family.series.push((labels, source.clone()));
        source
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.families.lock().expect("metrics lock poisoned");
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape(&family.help, false));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, source) in &family.series {
                if let Source::Histogram(h) = source {
                    render_histogram(&mut out, name, labels, h);
                    continue;
                }
                out.push_str(name);
                render_labels(&mut out, labels, None);
                match source {
                    Source::Counter(c) => _ = writeln!(out, " {}", c.load(Ordering::Relaxed)),
                    Source::Gauge(g) => _ = writeln!(out, " {}", g.load(Ordering::Relaxed)),
                    Source::Computed(f) => _ = writeln!(out, " {}", format_float(f())),
                    Source::Histogram(_) => unreachable!("rendered above"),
                }
            }
        }
        out
    }
}

fn render_labels(out: &mut String, labels: &Labels, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let extra = le.map(|v| ("le".to_owned(), v.to_owned()));
    for (k, v) in labels.iter().chain(extra.as_ref()) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
    }
    out.push('}');
}

fn render_histogram(out: &mut String, name: &str, labels: &Labels, h: &Histogram) {
    let mut cumulative = 0;
    for (i, count) in h.0.counts.iter().enumerate() {
        cumulative += count.load(Ordering::Relaxed);
        let le =
            h.0.bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
        let _ = write!(out, "{name}_bucket");
        render_labels(out, labels, Some(&le));
        let _ = writeln!(out, " {cumulative}");
    }
    let _ = write!(out, "{name}_sum");
    render_labels(out, labels, None);
    let _ = writeln!(
        out,
        " {}",
        format_float(f64::from_bits(h.0.sum.load(Ordering::Relaxed)))
    );
    let _ = write!(out, "{name}_count");
    render_labels(out, labels, None);
    let _ = writeln!(out, " {cumulative}");
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new();
        let c = m.counter(
            "nuage_requests_total",
            "Requests served.",
            &[("code", "200")],
        );
        c.inc();
        c.add(2);
        m.counter(
            "nuage_requests_total",
            "Requests served.",
            &[("code", "404")],
        )
        .inc();
        m.gauge("nuage_workers", "Workers.", &[]).set(-3);
        m.gauge_fn("nuage_up", "Up.", &[], || 1.0);
        let text = m.render();
        assert_eq!(
            text,
            "# HELP nuage_requests_total Requests served.\n\
             # TYPE nuage_requests_total counter\n\
             nuage_requests_total{code=\"200\"} 3\n\
             nuage_requests_total{code=\"404\"} 1\n\
             # HELP nuage_up Up.\n\
             # TYPE nuage_up gauge\n\
             nuage_up 1\n\
             # HELP nuage_workers Workers.\n\
             # TYPE nuage_workers gauge\n\
             nuage_workers -3\n"
        );
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new();
        let h = m.histogram("lat_seconds", "Latency.", &[("fn", "toupper")], &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        assert_eq!(h.count(), 4);
        let text = m.render();
        assert!(text.contains("# TYPE lat_seconds histogram\n"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{fn=\"toupper\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{fn=\"toupper\",le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{fn=\"toupper\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_sum{fn=\"toupper\"} 8.05\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_count{fn=\"toupper\"} 4\n"),
            "{text}"
        );
    }

    #[test]
    fn same_series_is_shared() {
        let m = Metrics::new();
        m.counter("a_total", "A.", &[("k", "v")]).inc();
        m.counter("a_total", "A.", &[("k", "v")]).inc();
        assert_eq!(m.counter("a_total", "A.", &[("k", "v")]).get(), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.counter(
            "x_total",
            "Help with \\ and\nnewline.",
            &[("path", "a\"b\\c\nd")],
        )
        .inc();
        let text = m.render();
        assert!(
            text.contains("x_total{path=\"a\\\"b\\\\c\\nd\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# HELP x_total Help with \\\\ and\\nnewline."),
            "{text}"
        );
    }

    #[test]
    #[should_panic(expected = "two kinds")]
    fn kind_clash_is_a_bug() {
        let m = Metrics::new();
        m.counter("k", "K.", &[]);
        m.gauge("k", "K.", &[]);
    }

    #[test]
    #[should_panic(expected = "invalid metric name")]
    fn bad_name_is_a_bug() {
        Metrics::new().counter("1bad", "B.", &[]);
    }
}
