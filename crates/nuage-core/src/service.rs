//! The contract between a service (functions, groups, jobs, …) and the node that runs it.
//!
//! A node starts each service once, in order, inside one tokio runtime. `start` binds
//! the service's sockets (so a bad address fails the node's start-up, not later),
//! spawns its work and returns at once with what it listens on, the HTTP routes it adds
//! to the node API, and the task that ends once `ctx.shutdown` is cancelled and the
//! service has closed its sockets, reaped its children and flushed its state.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peers::PeerSource;

/// A boxed future, for trait methods that must stay object-safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a service gets from its node.
#[derive(Clone)]
pub struct ServiceContext {
    pub config: Arc<Config>,
    /// This service's own directory inside the node's data dir (created before start).
    pub data_dir: PathBuf,
    pub metrics: Metrics,
    /// The other nodes of the cluster (static configuration today).
    pub peers: Arc<dyn PeerSource>,
    /// Cancelled when the node stops; the service's task must then wind down.
    pub shutdown: CancellationToken,
}

/// One address a service listens on, as shown by `nuage up` and `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    /// `http`, `tcp`, `udp`, `unix`, `grpc`…
    pub protocol: String,
    /// `127.0.0.1:7070`, `/tmp/4803`…
    pub address: String,
}

impl Endpoint {
    pub fn new(protocol: &str, address: impl ToString) -> Self {
        Endpoint {
            protocol: protocol.to_owned(),
            address: address.to_string(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.protocol.as_str() {
            "http" | "grpc" => write!(f, "{}://{}", self.protocol, self.address),
            _ => write!(f, "{} {}", self.protocol, self.address),
        }
    }
}

/// A service once started.
pub struct Started {
    pub endpoints: Vec<Endpoint>,
    /// Routes merged into the node API; they should live under `/v1/<service>/`.
    pub routes: Option<axum::Router>,
    /// Ends after shutdown is cancelled; an error here is logged and makes the node's
    /// exit status non-zero.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// A part of a node that `nuage up` runs.
pub trait Service: Send + 'static {
    /// Short lowercase name, used in `nuage up` output, the API and the data dir.
    fn name(&self) -> &'static str;
    fn start(self: Box<Self>, ctx: ServiceContext) -> BoxFuture<anyhow::Result<Started>>;
}
