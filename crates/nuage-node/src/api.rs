//! The node HTTP API: `GET /v1/node`, `GET /metrics`, plus the routes services add.
//! Every error, including unknown routes and wrong methods, has the shape of
//! [`nuage_core::api::ErrorBody`].

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nuage_core::api::{ApiError, MAX_REQUEST_BODY};
use nuage_core::metrics::Metrics;
use nuage_core::service::Endpoint;
use serde::{Deserialize, Serialize};

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    /// Stable across restarts (kept in node.db).
    pub id: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub uptime_seconds: f64,
    /// The host others reach this node at.
    pub address: String,
    pub data_dir: String,
    /// How many times this node has started.
    pub runs: u64,
    pub services: Vec<ServiceInfo>,
    pub peers: Vec<PeerInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: String,
    /// `host:port` of the peer's API.
    pub address: String,
}

pub(crate) struct ApiState {
    /// Everything but the uptime, fixed once the node has started.
    pub info: NodeInfo,
    pub started: Instant,
    pub metrics: Metrics,
}

pub(crate) fn router(state: Arc<ApiState>, service_routes: Vec<Router>) -> Router {
    let mut app = Router::new()
        .route("/v1/node", get(node_info))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    for routes in service_routes {
        app = app.merge(routes);
    }
    app.fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(middleware::from_fn_with_state(state, count_requests))
}

async fn node_info(State(state): State<Arc<ApiState>>) -> axum::Json<NodeInfo> {
    let mut info = state.info.clone();
    info.uptime_seconds = state.started.elapsed().as_secs_f64();
    axum::Json(info)
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {} on this node; the routes are listed in docs/api.md",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}; see docs/api.md", uri.path()),
    )
}

/// Counts requests by method and status (both bounded sets, so the series stay few).
async fn count_requests(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD => req.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let resp = next.run(req).await;
    state
        .metrics
        .counter(
            "nuage_api_requests_total",
            "Requests served by the node API, by method and status code.",
            &[("method", &method), ("code", resp.status().as_str())],
        )
        .inc();
    resp
}
