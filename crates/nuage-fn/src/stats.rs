//! Per-function figures of one machine, kept as the node's metrics (`/metrics`) so the
//! numbers `nuage fn ls` shows and the ones Prometheus scrapes are the same.

use nuage_core::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS, Metrics};

/// Why a request or connection failed; the `kind` label of `nuage_fn_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A request line over the limit.
    TooLong,
    /// A request over `--timeout`.
    Timeout,
    /// The instance serving a request exited.
    Exited,
    /// A process could not be started.
    StartFailed,
    /// A spawned process ended with a failure status or a signal.
    ExitStatus,
    /// Refused: `--max-conns` reached.
    MaxConns,
    /// Refused: `--per-source` reached.
    PerSource,
    /// Refused: the function crash-loops and is backed off.
    Failing,
    /// No machine could take the connection.
    NoMachine,
    /// An instance answered with a line over `max_response`.
    BadResponse,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::TooLong,
        ErrorKind::Timeout,
        ErrorKind::Exited,
        ErrorKind::StartFailed,
        ErrorKind::ExitStatus,
        ErrorKind::MaxConns,
        ErrorKind::PerSource,
        ErrorKind::Failing,
        ErrorKind::NoMachine,
        ErrorKind::BadResponse,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::TooLong => "too_long",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Exited => "instance_exited",
            ErrorKind::StartFailed => "start_failed",
            ErrorKind::ExitStatus => "exit_status",
            ErrorKind::MaxConns => "max_conns",
            ErrorKind::PerSource => "per_source",
            ErrorKind::Failing => "failing",
            ErrorKind::NoMachine => "no_machine",
            ErrorKind::BadResponse => "bad_response",
        }
    }
}

pub struct Stats {
    /// Requests answered (pool mode: lines; spawn mode: connections whose process ended
    /// well).
    pub requests: Counter,
    errors: Vec<Counter>,
    /// Processes started to serve a request that found no idle one (spawn mode: every
    /// connection).
    pub cold_starts: Counter,
    /// Every process started.
    pub starts: Counter,
    /// Processes alive now.
    pub instances: Gauge,
    /// Requests being served now (spawn mode: processes serving a connection).
    pub in_flight: Gauge,
    /// Connections open now (accepted here or relayed here).
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Connections this machine placed on another machine.
    pub relayed: Counter,
    /// Seconds per request (spawn mode: per process).
    pub latency: Histogram,
}

impl Stats {
    pub fn new(metrics: &Metrics, function: &str) -> Stats {
        let l = [("function", function)];
        Stats {
            requests: metrics.counter(
                "nuage_fn_requests_total",
                "Requests a function answered on this machine (spawn mode: connections whose process ended well).",
                &l,
            ),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    metrics.counter(
                        "nuage_fn_errors_total",
                        "Failed requests and refused connections, by kind.",
                        &[("function", function), ("kind", k.label())],
                    )
                })
                .collect(),
            cold_starts: metrics.counter(
                "nuage_fn_cold_starts_total",
                "Processes started because a request found no idle instance (every connection in spawn mode).",
                &l,
            ),
            starts: metrics.counter(
                "nuage_fn_process_starts_total",
                "Processes started for a function.",
                &l,
            ),
            instances: metrics.gauge(
                "nuage_fn_instances",
                "Processes of a function alive on this machine.",
                &l,
            ),
            in_flight: metrics.gauge(
                "nuage_fn_in_flight",
                "Requests being served (spawn mode: processes serving a connection).",
                &l,
            ),
            connections: metrics.gauge(
                "nuage_fn_connections",
                "Connections of a function open on this machine.",
                &l,
            ),
            connections_total: metrics.counter(
                "nuage_fn_connections_total",
                "Connections accepted for a function, here or relayed here.",
                &l,
            ),
            relayed: metrics.counter(
                "nuage_fn_relayed_total",
                "Connections this machine placed on another machine.",
                &l,
            ),
            latency: metrics.histogram(
                "nuage_fn_request_duration_seconds",
                "Time to answer a request (spawn mode: life of the process).",
                &l,
                LATENCY_BUCKETS,
            ),
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is in ALL");
        self.errors[i].inc();
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(Counter::get).sum()
    }
}

/// A gauge raised for as long as this lives.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_kind() {
        let m = Metrics::new();
        let s = Stats::new(&m, "f");
        s.error(ErrorKind::Timeout);
        s.error(ErrorKind::Timeout);
        s.error(ErrorKind::TooLong);
        assert_eq!(s.errors_total(), 3);
        {
            let _g = GaugeGuard::new(&s.in_flight);
            assert_eq!(s.in_flight.get(), 1);
        }
        assert_eq!(s.in_flight.get(), 0);
        let text = m.render();
        assert!(
            text.contains("nuage_fn_errors_total{function=\"f\",kind=\"timeout\"} 2"),
            "{text}"
        );
        // The same function again shares its series (a redeploy keeps counting).
        assert_eq!(Stats::new(&m, "f").errors_total(), 3);
    }
}
