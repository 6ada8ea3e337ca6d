//! The manager's metrics, in the node's registry (`GET /metrics` of `nuage up`, or
//! `nuage jobs manager --metrics ADDR`).
//!
//! Counters and the histogram are updated by [`Core`](super::Core) as jobs move; the
//! gauges (queue length, running jobs, workers) are read from the core at each scrape,
//! so they can never drift from the scheduler's state.

use std::sync::{Arc, Weak};

use nuage_core::metrics::{Counter, Histogram, LATENCY_BUCKETS, Metrics};

use crate::proto::JobState;

use super::Manager;

/// The handles the scheduler updates.
#[derive(Clone)]
pub(crate) struct JobMetrics {
    pub submitted: Counter,
    succeeded: Counter,
    failed: Counter,
    cancelled: Counter,
    /// Attempts taken back from a worker and queued again.
    pub requeued: Counter,
    /// From entering the queue to the worker's report that the task started, as the
    /// manager sees them (its monotonic clock). Jobs found queued at a restart are not
    /// observed (their enqueue instant was in the previous process).
    pub queue_to_start: Histogram,
}

impl JobMetrics {
    pub fn new(m: &Metrics) -> JobMetrics {
        let finished = |state| {
            m.counter(
                "nuage_jobs_finished_total",
                "Jobs that reached a final state since the manager started, by state.",
                &[("state", state)],
            )
        };
        JobMetrics {
            submitted: m.counter(
                "nuage_jobs_submitted_total",
                "Jobs submitted since the manager started.",
                &[],
            ),
            succeeded: finished("succeeded"),
            failed: finished("failed"),
            cancelled: finished("cancelled"),
            requeued: m.counter(
                "nuage_jobs_requeued_total",
                "Attempts taken back from a worker (lost, stopped) and queued again.",
                &[],
            ),
            queue_to_start: m.histogram(
                "nuage_jobs_queue_to_start_seconds",
                "From a job entering the queue to its worker's report that the task started.",
                &[],
                LATENCY_BUCKETS,
            ),
        }
    }

    /// Counts a job that reached the final `state`.
    pub fn finished(&self, state: JobState) {
        match state {
            JobState::Succeeded => self.succeeded.inc(),
            JobState::Failed => self.failed.inc(),
            JobState::Cancelled => self.cancelled.inc(),
            s => debug_assert!(false, "{s:?} is not final"),
        }
    }
}

/// Registers the gauges read from `manager` at each scrape. A weak reference: the
/// registry may outlive the manager (then the gauges read 0).
pub(crate) fn register_gauges(m: &Metrics, manager: &Arc<Manager>) {
    let gauge =
        |name: &str, help: &str, labels: &[(&str, &str)], read: fn(&super::Core) -> usize| {
            let weak: Weak<Manager> = Arc::downgrade(manager);
            m.gauge_fn(name, help, labels, move || {
                weak.upgrade().map_or(0.0, |mgr| read(&mgr.core()) as f64)
            });
        };
    gauge(
        "nuage_jobs_queued",
        "Jobs waiting in the queue.",
        &[],
        |c| c.queue.len(),
    );
    gauge(
        "nuage_jobs_running",
        "Jobs given to a worker and not ended yet.",
        &[],
        |c| c.running.len(),
    );
    gauge(
        "nuage_jobs_workers",
        "Workers with a live session, by state.",
        &[("state", "idle")],
        |c| {
            c.workers
                .values()
                .filter(|w| w.live() && w.job.is_none())
                .count()
        },
    );
    gauge(
        "nuage_jobs_workers",
        "Workers with a live session, by state.",
        &[("state", "busy")],
        |c| {
            c.workers
                .values()
                .filter(|w| w.live() && w.job.is_some())
                .count()
        },
    );
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown`: for
/// `nuage jobs manager --metrics ADDR`, which runs without a node API.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::{StatusCode, header};
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only GET /metrics here\n") });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("the jobs manager's metrics server failed: {e}"))
}
