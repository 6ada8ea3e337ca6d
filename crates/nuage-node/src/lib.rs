//! nuage-node: one node of a nuage cloud.
//!
//! [`Node::start`] opens and locks the data dir, records the run in `node.db`, binds the
//! API (first, so a busy port fails fast), starts each service in order, then serves
//! the API with the services' routes. [`Node::stop`] cancels everything, waits for each
//! service to wind down (bounded by [`SERVICE_STOP_TIMEOUT`]) and records a clean stop.

mod api;
mod process_metrics;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use nuage_core::config::Config;
use nuage_core::datadir::DataDir;
use nuage_core::metrics::Metrics;
use nuage_core::net::bind_tcp;
use nuage_core::peers::StaticPeers;
use nuage_core::service::{Endpoint, Service, ServiceContext};
use nuage_core::time::rfc3339;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::{NodeInfo, PeerInfo, ServiceInfo};
pub use state::NodeState;

/// How long one service may take to stop once asked.
pub const SERVICE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running node.
pub struct Node {
    info: NodeInfo,
    api_addr: SocketAddr,
    shutdown: CancellationToken,
    /// Service tasks in start order, the API's last.
    tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    state: NodeState,
    _data: DataDir,
}

impl Node {
    /// Starts a node with `services`. On error, whatever had started is stopped again.
    pub async fn start(config: Config, services: Vec<Box<dyn Service>>) -> anyhow::Result<Node> {
        let config = Arc::new(config);
        let data = DataDir::open(&config.data_dir)?;
        let state = NodeState::open(data.path(), config.name.as_str(), |m| tracing::warn!("{m}"))?;
        let listener = bind_tcp(config.listen.api, "the node API", "--api (or listen.api)").await?;
        let api_addr = listener.local_addr()?;
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let peers = StaticPeers::from_config(&config);

        let mut node = Node {
            info: NodeInfo {
                name: config.name.to_string(),
                id: state.id.clone(),
                version: nuage_core::VERSION.to_owned(),
                started_at: rfc3339(state.started_at),
                uptime_seconds: 0.0,
                address: config.address.clone(),
                data_dir: data.path().display().to_string(),
                runs: state.runs,
                services: vec![ServiceInfo {
                    name: "api".into(),
                    endpoints: vec![Endpoint::new("http", api_addr)],
                }],
                peers: config
                    .peers
                    .iter()
                    .map(|p| PeerInfo {
                        name: p.name.to_string(),
                        address: p.address.authority(),
                    })
                    .collect(),
            },
            api_addr,
            shutdown: shutdown.clone(),
            tasks: Vec::new(),
            state,
            _data: data,
        };

        let mut routes = Vec::new();
        for service in services {
            let name = service.name();
            let ctx = ServiceContext {
                config: config.clone(),
                data_dir: node._data.subdir(name)?,
                metrics: metrics.clone(),
                peers: peers.clone(),
                shutdown: shutdown.child_token(),
            };
            let started = match service.start(ctx).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = node.stop_tasks().await;
                    let _ = node.state.finish(true);
                    return Err(e.context(format!("starting service `{name}`")));
                }
            };
            metrics
                .gauge(
                    "nuage_service_up",
                    "1 for each service this node runs.",
                    &[("service", name)],
                )
                .set(1);
            node.info.services.push(ServiceInfo {
                name: name.to_owned(),
                endpoints: started.endpoints,
            });
            routes.extend(started.routes);
            node.tasks.push((name.to_owned(), started.task));
        }

        register_node_metrics(&metrics, &node.info);
        let api_state = Arc::new(api::ApiState {
            info: node.info.clone(),
            started: Instant::now(),
            metrics,
        });
        let app = api::router(api_state, routes);
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("the node API failed")
        });
        node.tasks.push(("api".to_owned(), task));
        Ok(node)
    }

    /// What the node reports at `GET /v1/node` (uptime aside).
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The address the API actually listens on (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// A service (or the API) whose task has ended although the node was not asked to
    /// stop: the node should then stop and say so.
    pub fn stopped_service(&self) -> Option<&str> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        self.tasks
            .iter()
            .find(|(_, t)| t.is_finished())
            .map(|(n, _)| n.as_str())
    }

    /// Stops every service and the API, then records a clean stop (or an unclean one if a
    /// service failed or overran its stop timeout, which is then the error).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let result = self.stop_tasks().await;
        self.state
            .finish(result.is_ok())
            .context("recording the stop in node.db")?;
        result
    }

    async fn stop_tasks(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut failures = Vec::new();
        // Every task was cancelled at once; awaiting them in reverse start order waits for
        // the API (started last) first, so no request reaches a service that has gone.
        while let Some((name, mut task)) = self.tasks.pop() {
            match tokio::time::timeout(SERVICE_STOP_TIMEOUT, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failures.push(format!("{name}: {e:#}")),
                Ok(Err(join)) => failures.push(format!("{name}: {join}")),
                Err(_) => {
                    task.abort();
                    failures.push(format!(
                        "{name}: did not stop within {SERVICE_STOP_TIMEOUT:?}"
                    ));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("stopping the node: {}", failures.join("; ")))
        }
    }
}

fn register_node_metrics(metrics: &Metrics, info: &NodeInfo) {
    metrics
        .gauge(
            "nuage_build_info",
            "Always 1; labels give the node's name and version.",
            &[("node", &info.name), ("version", &info.version)],
        )
        .set(1);
    metrics
        .gauge(
            "nuage_peers",
            "Peers named in the node's configuration.",
            &[],
        )
        .set(info.peers.len() as i64);
    let started = Instant::now();
    metrics.gauge_fn(
        "nuage_uptime_seconds",
        "Seconds since the node started.",
        &[],
        move || started.elapsed().as_secs_f64(),
    );
    process_metrics::register(metrics);
}
