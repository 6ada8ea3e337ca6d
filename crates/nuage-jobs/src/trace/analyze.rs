//! Where the time of each request goes: spans of one trace (one request, across every
//! process that took part) are put back into their tree, and each instant of the
//! request is charged to one span, the deepest running then. For a client calling a
//! server this is the classic split: the client's own time is client start → server
//! start plus server end → client end (including the network), and so on down each
//! tier. The time of a request is then summed per component (the `cat` of a span:
//! client, manager, queue, worker, task, app, auth…), per request and aggregated (p50,
//! p99), the component with the largest share is named, and the critical path of the
//! slowest request is shown.
//!
//! Spans may outlive their parent (a job dispatched after its submit call returned) and
//! overlap their siblings (jobs of one array queued together); no instant is charged
//! twice. What a subtree covers (for the critical path) is the union of its spans'
//! intervals, whatever the nesting.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

use super::SpanRecord;
use crate::config::format_duration;

/// Requests shown one by one (the slowest); the aggregate covers them all.
pub const DEFAULT_SHOWN: usize = 20;

/// One request (one trace id).
#[derive(Debug, Clone)]
pub struct Request {
    pub trace_id: u128,
    /// Name and detail of its first root span, e.g. `client.submit job tache45`.
    pub label: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Own time per component, in nanoseconds.
    pub by_component: BTreeMap<String, u64>,
    /// Time covered by no span at all (between root spans of processes that did not
    /// record their part).
    pub untraced_ns: u64,
    /// The critical path: (component, span name, detail, time on the path).
    pub critical_path: Vec<(String, String, String, u64)>,
}

impl Request {
    pub fn total_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// Own time of one component over all requests.
#[derive(Debug, Clone)]
pub struct ComponentStat {
    pub component: String,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub total_ns: u64,
    /// Of the summed time of all requests.
    pub share: f64,
}

#[derive(Debug, Clone)]
pub struct Analysis {
    pub requests: Vec<Request>,
    pub components: Vec<ComponentStat>,
}

impl Analysis {
    /// The component with the largest share of the time.
    pub fn bottleneck(&self) -> Option<&ComponentStat> {
        self.components.first()
    }
}

/// Sorted, merged intervals.
fn union(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Length of `[start, end)` covered by `cover` (sorted, merged).
fn covered(cover: &[(u64, u64)], start: u64, end: u64) -> u64 {
    cover
        .iter()
        .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
        .sum()
}

struct Tree<'a> {
    spans: Vec<&'a SpanRecord>,
    children: Vec<Vec<usize>>,
    /// Union of the intervals of each span's subtree.
    cover: Vec<Vec<(u64, u64)>>,
    roots: Vec<usize>,
}

impl<'a> Tree<'a> {
    fn new(mut spans: Vec<&'a SpanRecord>) -> Tree<'a> {
        spans.sort_by_key(|s| (s.start_ns, s.end_ns));
        let index: HashMap<u64, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id, i))
            .collect();
        let mut children = vec![Vec::new(); spans.len()];
        let mut roots = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            match index.get(&s.parent_id) {
                Some(&p) if s.parent_id != 0 && p != i => children[p].push(i),
                _ => roots.push(i),
            }
        }
        let mut tree = Tree {
            cover: vec![Vec::new(); spans.len()],
            spans,
            children,
            roots,
        };
        // Post-order without recursion (a malformed trace could be deep); a cycle
        // (ids reused) would leave spans unreached, which are then simply not covered.
        let mut order = Vec::with_capacity(tree.spans.len());
        let mut stack: Vec<usize> = tree.roots.clone();
        let mut seen = vec![false; tree.spans.len()];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push(i);
            stack.extend(tree.children[i].iter().copied());
        }
        for &i in order.iter().rev() {
            let mut v = vec![(tree.spans[i].start_ns, tree.spans[i].end_ns)];
            for &c in &tree.children[i] {
                v.extend_from_slice(&tree.cover[c]);
            }
            tree.cover[i] = union(v);
        }
        tree
    }

    /// Each instant of the request charged to exactly one span: the deepest one
    /// running then (the latest started among equals). For nested calls this is a
    /// span's length minus what its children cover; overlapping siblings (many jobs of
    /// one request in the queue at once) are never charged twice, so the own times of
    /// a request add up to its length, less the instants no span covers.
    fn own_times(&self) -> Vec<u64> {
        let n = self.spans.len();
        let mut depth = vec![0usize; n];
        let mut seen = vec![false; n];
        let mut stack: Vec<(usize, usize)> = self.roots.iter().map(|&r| (r, 0)).collect();
        while let Some((i, d)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            depth[i] = d;
            stack.extend(self.children[i].iter().map(|&c| (c, d + 1)));
        }
        // (time, 0 = end / 1 = start, span): ends first at equal times.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, s) in self.spans.iter().enumerate() {
            events.push((s.start_ns, 1, i));
            events.push((s.end_ns, 0, i));
        }
        events.sort_unstable();
        let mut active: std::collections::BTreeSet<(usize, u64, usize)> = Default::default();
        let mut own = vec![0u64; n];
        let mut last = events.first().map_or(0, |e| e.0);
        for (t, kind, i) in events {
            if t > last {
                if let Some(&(_, _, top)) = active.last() {
                    own[top] += t - last;
                }
                last = t;
            }
            let key = (depth[i], self.spans[i].start_ns, i);
            if kind == 1 {
                active.insert(key);
            } else {
                active.remove(&key);
            }
        }
        own
    }

    fn cover_end(&self, i: usize) -> u64 {
        self.cover[i].last().map_or(self.spans[i].end_ns, |c| c.1)
    }
    fn cover_start(&self, i: usize) -> u64 {
        self.cover[i]
            .first()
            .map_or(self.spans[i].start_ns, |c| c.0)
    }

    /// The critical path under span `i`, walking back from the end: the child subtree
    /// that ends last, then the one that ends last before that one started, etc.
    fn critical_path(&self, i: usize, out: &mut Vec<(usize, u64)>) {
        let s = self.spans[i];
        let mut t = self.cover_end(i);
        let mut picked = Vec::new();
        let mut kids: Vec<usize> = self.children[i].clone();
        while let Some(pos) = kids
            .iter()
            .enumerate()
            .filter(|&(_, &c)| self.cover_start(c) < t)
            .max_by_key(|&(_, &c)| self.cover_end(c).min(t))
            .map(|(p, _)| p)
        {
            let c = kids.swap_remove(pos);
            picked.push(c);
            t = self.cover_start(c);
        }
        picked.reverse();
        // The span's own time on the path: its length minus what the picked children cover.
        let path_cover = union(picked.iter().flat_map(|&c| self.cover[c].clone()).collect());
        let own = (s.end_ns - s.start_ns) - covered(&path_cover, s.start_ns, s.end_ns);
        out.push((i, own));
        for c in picked {
            self.critical_path(c, out);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Analyzes every request found in `spans`.
pub fn analyze(spans: &[SpanRecord]) -> Analysis {
    let mut by_trace: HashMap<u128, Vec<&SpanRecord>> = HashMap::new();
    for s in spans {
        by_trace.entry(s.trace_id).or_default().push(s);
    }
    let mut requests: Vec<Request> = by_trace
        .into_iter()
        .map(|(trace_id, spans)| {
            let tree = Tree::new(spans);
            let start_ns = tree.spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
            let end_ns = tree.spans.iter().map(|s| s.end_ns).max().unwrap_or(0);
            let mut by_component: BTreeMap<String, u64> = BTreeMap::new();
            let own = tree.own_times();
            for (i, t) in own.iter().enumerate() {
                *by_component
                    .entry(tree.spans[i].component.clone())
                    .or_default() += t;
            }
            let untraced_ns = (end_ns - start_ns).saturating_sub(own.iter().sum());
            let first = tree.roots[0];
            let mut path = Vec::new();
            tree.critical_path(first, &mut path);
            let label = {
                let s = tree.spans[first];
                if s.detail.is_empty() {
                    s.name.clone()
                } else {
                    format!("{} {}", s.name, s.detail)
                }
            };
            Request {
                trace_id,
                label,
                start_ns,
                end_ns,
                by_component,
                untraced_ns,
                critical_path: path
                    .into_iter()
                    .map(|(i, own)| {
                        let s = tree.spans[i];
                        (s.component.clone(), s.name.clone(), s.detail.clone(), own)
                    })
                    .collect(),
            }
        })
        .collect();
    requests.sort_by_key(|r| (r.start_ns, r.trace_id));

    let total: u64 = requests.iter().map(Request::total_ns).sum();
    let mut per_component: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &requests {
        for c in r.by_component.keys() {
            per_component.entry(c).or_default();
        }
    }
    for r in &requests {
        for (c, v) in per_component.iter_mut() {
            v.push(r.by_component.get(*c).copied().unwrap_or(0));
        }
    }
    let mut components: Vec<ComponentStat> = per_component
        .into_iter()
        .map(|(c, mut v)| {
            v.sort_unstable();
            let sum: u64 = v.iter().sum();
            ComponentStat {
                component: c.to_owned(),
                p50_ns: percentile(&v, 0.50),
                p99_ns: percentile(&v, 0.99),
                total_ns: sum,
                share: if total == 0 {
                    0.0
                } else {
                    sum as f64 / total as f64
                },
            }
        })
        .collect();
    components.sort_by(|a, b| {
        b.total_ns
            .cmp(&a.total_ns)
            .then(a.component.cmp(&b.component))
    });
    Analysis {
        requests,
        components,
    }
}

fn d(ns: u64) -> String {
    format_duration(Duration::from_nanos(ns))
}

/// The report `nuage trace analyze` prints; `shown` requests one by one (the slowest).
pub fn render(a: &Analysis, shown: usize) -> String {
    let mut out = String::new();
    if a.requests.is_empty() {
        out.push_str("no complete request in these traces\n");
        return out;
    }
    let comps: Vec<&str> = a.components.iter().map(|c| c.component.as_str()).collect();
    let mut slowest: Vec<&Request> = a.requests.iter().collect();
    slowest.sort_by_key(|r| std::cmp::Reverse(r.total_ns()));
    let show = &slowest[..shown.min(slowest.len())];
    let _ = writeln!(
        out,
        "{} request(s); own time per component{}:",
        a.requests.len(),
        if show.len() < a.requests.len() {
            format!(" for the {} slowest", show.len())
        } else {
            String::new()
        }
    );
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["TRACE".to_owned(), "REQUEST".to_owned(), "TOTAL".to_owned()];
    header.extend(comps.iter().map(|c| c.to_string()));
    rows.push(header);
    for r in show {
        let mut row = vec![
            format!("{:032x}", r.trace_id)[..12].to_owned(),
            r.label.chars().take(40).collect(),
            d(r.total_ns()),
        ];
        row.extend(
            comps
                .iter()
                .map(|c| d(r.by_component.get(*c).copied().unwrap_or(0))),
        );
        rows.push(row);
    }
    table(&mut out, &rows);
    let _ = writeln!(out, "\nper component over all requests (own time):");
    let mut rows = vec![vec![
        "COMPONENT".to_owned(),
        "P50".to_owned(),
        "P99".to_owned(),
        "TOTAL".to_owned(),
        "SHARE".to_owned(),
    ]];
    for c in &a.components {
        rows.push(vec![
            c.component.clone(),
            d(c.p50_ns),
            d(c.p99_ns),
            d(c.total_ns),
            format!("{:.1}%", c.share * 100.0),
        ]);
    }
    let untraced: u64 = a.requests.iter().map(|r| r.untraced_ns).sum();
    if untraced > 0 {
        let total: u64 = a.requests.iter().map(Request::total_ns).sum();
        rows.push(vec![
            "(untraced)".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            d(untraced),
            format!("{:.1}%", untraced as f64 * 100.0 / total.max(1) as f64),
        ]);
    }
    table(&mut out, &rows);
    if let Some(b) = a.bottleneck() {
        let _ = writeln!(
            out,
            "\nbottleneck: {} ({:.1}% of the time; p50 {} per request)",
            b.component,
            b.share * 100.0,
            d(b.p50_ns)
        );
    }
    let worst = slowest[0];
    let _ = writeln!(
        out,
        "\ncritical path of the slowest request ({}, {}):",
        worst.label,
        d(worst.total_ns())
    );
    let mut rows = vec![vec![
        "  COMPONENT".to_owned(),
        "SPAN".to_owned(),
        "OWN".to_owned(),
        "DETAIL".to_owned(),
    ]];
    for (c, name, detail, own) in &worst.critical_path {
        rows.push(vec![
            format!("  {c}"),
            name.clone(),
            d(*own),
            detail.clone(),
        ]);
    }
    table(&mut out, &rows);
    out
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u64, parent: u64, comp: &str, start: u64, end: u64) -> SpanRecord {
        SpanRecord {
            trace_id: 1,
            span_id: id,
            parent_id: parent,
            name: format!("{comp}.call"),
            component: comp.into(),
            detail: String::new(),
            start_ns: start,
            end_ns: end,
            pid: 1,
            tid: 1,
        }
    }

    #[test]
    fn own_time_per_tier_is_the_classic_split() {
        // client 0..100, app 10..90, auth 30..70.
        let spans = vec![
            span(1, 0, "client", 0, 100),
            span(2, 1, "app", 10, 90),
            span(3, 2, "auth", 30, 70),
        ];
        let a = analyze(&spans);
        let r = &a.requests[0];
        assert_eq!(r.total_ns(), 100);
        assert_eq!(r.by_component["client"], 20);
        assert_eq!(r.by_component["app"], 40);
        assert_eq!(r.by_component["auth"], 40);
        assert_eq!(r.untraced_ns, 0);
        let path: Vec<&str> = r.critical_path.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(path, ["client", "app", "auth"]);
    }

    #[test]
    fn children_outliving_their_parent_are_not_charged_twice() {
        // The client waits 0..100; the manager's submit 5..10 ends, the worker runs
        // 20..90 as a child of the submit.
        let spans = vec![
            span(1, 0, "client", 0, 100),
            span(2, 1, "manager", 5, 10),
            span(3, 2, "worker", 20, 90),
        ];
        let r = &analyze(&spans).requests[0];
        assert_eq!(r.by_component["client"], 100 - 5 - 70);
        assert_eq!(r.by_component["manager"], 5);
        assert_eq!(r.by_component["worker"], 70);
        let sum: u64 = r.by_component.values().sum();
        assert_eq!(sum, r.total_ns());
    }

    #[test]
    fn overlapping_siblings_are_charged_once() {
        let spans = vec![
            span(1, 0, "client", 0, 100),
            span(2, 1, "queue", 10, 60),
            span(3, 1, "queue", 20, 80),
        ];
        let r = &analyze(&spans).requests[0];
        assert_eq!(r.by_component["queue"], 70);
        assert_eq!(r.by_component["client"], 30);
    }

    #[test]
    fn the_slow_component_is_named() {
        let mut spans = Vec::new();
        for t in 0..10u64 {
            let base = t * 1000;
            let mut s = vec![
                span(t * 10 + 1, 0, "client", base, base + 500),
                span(t * 10 + 2, t * 10 + 1, "app", base + 10, base + 490),
                span(t * 10 + 3, t * 10 + 2, "auth", base + 20, base + 470),
            ];
            for x in &mut s {
                x.trace_id = u128::from(t) + 1;
            }
            spans.extend(s);
        }
        let a = analyze(&spans);
        assert_eq!(a.requests.len(), 10);
        let b = a.bottleneck().unwrap();
        assert_eq!(b.component, "auth");
        assert!((b.share - 0.9).abs() < 1e-9, "{}", b.share);
        let text = render(&a, 3);
        assert!(
            text.contains("bottleneck: auth (90.0% of the time"),
            "{text}"
        );
        assert!(text.contains("for the 3 slowest"), "{text}");
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
    }
}
