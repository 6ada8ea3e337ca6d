//! The storage routes of the node API (`/v1/storage/…`): the public ones the CLI uses
//! and the internal ones pool members use between themselves.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use nuage_core::api::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};

use super::Mgmt;
use super::types::*;
use crate::client::spec::VolumeSpec;

use axum::Json;
type Res<T> = Result<Json<T>, ApiError>;

/// Internal: a member probing a new one sends the pool and its volumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub members: Vec<Member>,
    pub volumes: Vec<VolumeDef>,
}

/// Internal: a member joins or leaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerChange {
    pub member: Member,
    pub remove: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckBrick {
    pub path: String,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Name {
    pub name: String,
}

/// `volume set`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetOption {
    pub option: String,
    pub value: String,
}

/// `volume get`: `?option=NAME|all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptionQuery {
    pub option: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Force {
    #[serde(default)]
    pub force: bool,
}

pub fn router(m: Arc<Mgmt>) -> Router {
    Router::new()
        .route("/v1/storage/pool", get(pool))
        .route("/v1/storage/peers", post(probe))
        .route("/v1/storage/peers/detach", post(detach))
        .route("/v1/storage/volumes", get(volumes).post(create))
        .route("/v1/storage/volumes/{name}", get(volume).delete(delete))
        .route("/v1/storage/volumes/{name}/start", post(start))
        .route("/v1/storage/volumes/{name}/stop", post(stop))
        .route("/v1/storage/volumes/{name}/status", get(status))
        .route("/v1/storage/volumes/{name}/spec", get(spec))
        .route(
            "/v1/storage/volumes/{name}/options",
            get(get_options).post(set_option),
        )
        .route("/v1/storage/volumes/{name}/add-brick", post(add_brick))
        .route(
            "/v1/storage/volumes/{name}/remove-brick",
            get(remove_brick_status).post(remove_brick),
        )
        .route(
            "/v1/storage/volumes/{name}/rebalance",
            get(rebalance_status).post(rebalance),
        )
        .route("/v1/storage/internal/rebalance", post(start_rebalance))
        .route(
            "/v1/storage/internal/rebalance/{name}",
            get(local_rebalance),
        )
        .route("/v1/storage/internal/rebalance-stop", post(stop_rebalance))
        .route("/v1/storage/internal/whoami", get(whoami))
        .route("/v1/storage/internal/join", post(join))
        .route("/v1/storage/internal/peer", post(peer_change))
        .route("/v1/storage/internal/leave", post(leave))
        .route("/v1/storage/internal/volume", post(store_volume))
        .route("/v1/storage/internal/volume-delete", post(forget_volume))
        .route("/v1/storage/internal/check-brick", post(check_brick))
        .route("/v1/storage/internal/bricks", get(bricks))
        .with_state(m)
}

async fn pool(State(m): State<Arc<Mgmt>>) -> Res<Vec<MemberStatus>> {
    Ok(Json(m.pool().await))
}

async fn probe(State(m): State<Arc<Mgmt>>, ApiJson(r): ApiJson<PeerRequest>) -> Res<Done> {
    m.probe(&r.host).await.map(Json)
}

async fn detach(State(m): State<Arc<Mgmt>>, ApiJson(r): ApiJson<PeerRequest>) -> Res<Done> {
    m.detach(&r.host, r.force).await.map(Json)
}

async fn volumes(State(m): State<Arc<Mgmt>>) -> Res<Vec<VolumeDef>> {
    Ok(Json(m.volumes()))
}

async fn volume(State(m): State<Arc<Mgmt>>, Path(name): Path<String>) -> Res<VolumeDef> {
    m.volume(&name).map(Json)
}

async fn create(State(m): State<Arc<Mgmt>>, ApiJson(r): ApiJson<CreateVolume>) -> Res<VolumeDef> {
    m.create_volume(r).await.map(Json)
}

async fn delete(State(m): State<Arc<Mgmt>>, Path(name): Path<String>) -> Res<Done> {
    m.delete_volume(&name).await.map(Json)
}

async fn start(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    ApiJson(f): ApiJson<Force>,
) -> Res<VolumeDef> {
    m.set_state(&name, VolumeState::Started, f.force)
        .await
        .map(Json)
}

async fn stop(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    ApiJson(f): ApiJson<Force>,
) -> Res<VolumeDef> {
    m.set_state(&name, VolumeState::Stopped, f.force)
        .await
        .map(Json)
}

async fn status(State(m): State<Arc<Mgmt>>, Path(name): Path<String>) -> Res<Vec<BrickStatus>> {
    m.brick_status(&name).await.map(Json)
}

async fn spec(State(m): State<Arc<Mgmt>>, Path(name): Path<String>) -> Res<VolumeSpec> {
    m.spec(&name).await.map(Json)
}

async fn whoami(State(m): State<Arc<Mgmt>>) -> Res<Member> {
    Ok(Json(m.me().clone()))
}

async fn join(State(m): State<Arc<Mgmt>>, ApiJson(j): ApiJson<Join>) -> Res<Member> {
    let me = m.join(j)?;
    m.reconcile().await;
    Ok(Json(me))
}

async fn peer_change(State(m): State<Arc<Mgmt>>, ApiJson(c): ApiJson<PeerChange>) -> Res<Done> {
    m.peer_change(c).map(Json)
}

async fn leave(State(m): State<Arc<Mgmt>>, ApiJson(_c): ApiJson<PeerChange>) -> Res<Done> {
    m.leave().await.map(Json)
}

async fn store_volume(State(m): State<Arc<Mgmt>>, ApiJson(v): ApiJson<VolumeDef>) -> Res<Done> {
    m.store_volume(v).await?;
    Ok(Json(Done {
        message: "ok".into(),
    }))
}

async fn forget_volume(State(m): State<Arc<Mgmt>>, ApiJson(n): ApiJson<Name>) -> Res<Done> {
    m.forget_volume(&n.name).await?;
    Ok(Json(Done {
        message: "ok".into(),
    }))
}

async fn check_brick(State(m): State<Arc<Mgmt>>, ApiJson(c): ApiJson<CheckBrick>) -> Res<Done> {
    m.check_brick(&c.path, c.force).map(Json)
}

async fn bricks(State(m): State<Arc<Mgmt>>) -> Res<Vec<LocalBrick>> {
    Ok(Json(m.local_bricks().await))
}

async fn set_option(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    ApiJson(o): ApiJson<SetOption>,
) -> Res<Done> {
    m.set_option(&name, &o.option, &o.value).await.map(Json)
}

async fn get_options(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<OptionQuery>,
) -> Res<Vec<(String, String)>> {
    m.get_options(&name, &q.option).map(Json)
}

async fn add_brick(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<AddBrick>,
) -> Res<VolumeDef> {
    m.add_brick(&name, r).await.map(Json)
}

async fn remove_brick(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<RemoveBrick>,
) -> Res<Done> {
    m.remove_brick(&name, r).await.map(Json)
}

async fn rebalance(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<RebalanceRequest>,
) -> Res<Done> {
    m.rebalance(&name, &r.action).await.map(Json)
}

async fn rebalance_status(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
) -> Res<Vec<NodeRebalance>> {
    m.volume(&name)?;
    let mut rows = m.rebalance_rows(&name).await;
    rows.retain(|r| r.kind != RebalanceKind::RemoveBrick);
    Ok(Json(rows))
}

async fn remove_brick_status(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
) -> Res<Vec<NodeRebalance>> {
    m.volume(&name)?;
    let mut rows = m.rebalance_rows(&name).await;
    rows.retain(|r| r.kind == RebalanceKind::RemoveBrick);
    Ok(Json(rows))
}

async fn start_rebalance(
    State(m): State<Arc<Mgmt>>,
    ApiJson(r): ApiJson<StartRebalance>,
) -> Res<Done> {
    m.start_local(&r.name, r.kind).map(Json)
}

async fn local_rebalance(
    State(m): State<Arc<Mgmt>>,
    Path(name): Path<String>,
) -> Res<Option<NodeRebalance>> {
    Ok(Json(m.local_rebalance(&name)))
}

async fn stop_rebalance(State(m): State<Arc<Mgmt>>, ApiJson(n): ApiJson<Name>) -> Res<Done> {
    m.stop_local(&n.name);
    Ok(Json(Done {
        message: "ok".into(),
    }))
}
