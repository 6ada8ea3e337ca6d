//! The functions part of the node API (see docs/functions.md):
//!
//! ```text
//! GET    /v1/functions                     every function and where it runs
//! POST   /v1/functions                     deploy (DeployRequest) on the cluster
//! GET    /v1/functions/{name}              one function
//! DELETE /v1/functions/{name}              remove it (drains on every machine)
//! POST   /v1/functions/{name}/scale        new --min/--max (pool mode)
//! GET    /v1/functions/{name}/logs?since=  its stderr and lifecycle, every machine
//! POST   /function/{name}                  the HTTP gateway (see gateway.rs)
//! ```
//!
//! and what machines ask each other, under `/v1/functions/_peer/` (a function name never
//! starts with `_`): `state` (the health check), `entries` (the registry), `check` (could
//! this machine run a spec?), `apply` (merge entries and apply them), `logs/{name}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use nuage_core::api::{ApiError, ApiJson};
use serde::Deserialize;

use crate::cluster::{self, HEALTH_TIMEOUT, PEER_APPLY_TIMEOUT, PEER_CALL_TIMEOUT};
use crate::registry::Entry;
use crate::service::Shared;
use crate::spec::{DeployRequest, FunctionSpec, Mode, check_name};
use crate::types::{
    ApplyReply, ApplyRequest, CheckReply, FunctionList, FunctionView, LogPage, LogsReply,
    MachineLogLine, MachineOutcome, MachineStatus, NodeReport, Outcome, ScaleRequest,
    format_cursors, parse_cursors,
};

type Shd = State<Arc<Shared>>;

pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/functions", get(list).post(deploy))
        .route("/v1/functions/{name}", get(show).delete(remove))
        .route("/v1/functions/{name}/scale", post(scale))
        .route("/v1/functions/{name}/logs", get(logs))
        .route("/v1/functions/_peer/state", get(peer_state))
        .route("/v1/functions/_peer/entries", get(peer_entries))
        .route("/v1/functions/_peer/check", post(peer_check))
        .route("/v1/functions/_peer/apply", post(peer_apply))
        .route("/v1/functions/_peer/logs/{name}", get(peer_logs))
        .route("/function/{name}", post(crate::gateway::invoke))
        .with_state(shared)
}

/// The machines that run `spec`, sorted by name.
fn targets(shared: &Shared, spec: &FunctionSpec) -> Vec<String> {
    shared
        .cluster
        .machines()
        .into_iter()
        .filter(|m| spec.placed_on(m))
        .collect()
}

fn view(shared: &Shared, entry: &Entry) -> Option<FunctionView> {
    let spec = entry.spec.clone()?;
    let machines = targets(shared, &spec)
        .into_iter()
        .map(|machine| {
            if machine == shared.me {
                let status = shared
                    .local_statuses()
                    .into_iter()
                    .find(|s| s.name == spec.name);
                return MachineStatus {
                    machine,
                    reachable: true,
                    status,
                };
            }
            let v = shared.cluster.view(&machine);
            let status = v
                .report
                .as_ref()
                .and_then(|r| r.functions.iter().find(|s| s.name == spec.name).cloned());
            MachineStatus {
                machine,
                reachable: v.healthy,
                status: if v.healthy { status } else { None },
            }
        })
        .collect();
    Some(FunctionView {
        spec,
        version: entry.version,
        origin: entry.origin.clone(),
        updated_at: entry.updated_at,
        machines,
    })
}

fn entry_of(shared: &Shared, name: &str) -> Result<Entry, ApiError> {
    check_name(name).map_err(ApiError::bad_request)?;
    match shared.registry().get(name) {
        Some(e) if e.spec.is_some() => Ok(e.clone()),
        _ => Err(ApiError::not_found(format!(
            "no function named `{name}` (see `nuage fn ls`)"
        ))),
    }
}

async fn list(State(s): Shd) -> Json<FunctionList> {
    let entries = s.registry().entries();
    Json(FunctionList {
        functions: entries.iter().filter_map(|e| view(&s, e)).collect(),
    })
}

async fn show(State(s): Shd, Path(name): Path<String>) -> Result<Json<FunctionView>, ApiError> {
    let entry = entry_of(&s, &name)?;
    Ok(Json(
        view(&s, &entry).expect("entry_of returns deployed functions"),
    ))
}

async fn deploy(
    State(s): Shd,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Json<Outcome>, ApiError> {
    let spec = req.to_spec().map_err(ApiError::bad_request)?;
    let machines = s.cluster.machines();
    for m in &spec.on {
        if !machines.contains(m) {
            return Err(ApiError::bad_request(format!(
                "--on: no machine named `{m}` in the cluster (machines: {})",
                machines.join(", ")
            )));
        }
    }
    let targets = targets(&s, &spec);
    // Another function on the same port of a shared machine.
    if let Some(other) = s.registry().specs().find(|o| {
        o.name != spec.name && o.port == spec.port && targets.iter().any(|m| o.placed_on(m))
    }) {
        return Err(ApiError::conflict(format!(
            "port {} is already used by function `{}`; choose another --port",
            spec.port, other.name
        )));
    }
    // Every machine that will run it must be able to: command and port.
    let mut max_version = 0;
    let mut checks = tokio::task::JoinSet::new();
    for machine in &targets {
        if *machine == s.me {
            s.check_local(&spec)
                .map_err(|e| ApiError::bad_request(format!("{}: {e}", s.me)))?;
            continue;
        }
        let Some(peer) = s.cluster.peer(machine) else {
            continue;
        };
        if !s.cluster.view(machine).healthy {
            continue; // it will catch up when it answers
        }
        let spec = spec.clone();
        let machine = machine.clone();
        checks.spawn(async move {
            let client = cluster::client(&peer.address, PEER_CALL_TIMEOUT)?;
            let reply: CheckReply = client.post("/v1/functions/_peer/check", &spec).await?;
            anyhow::Ok((machine, reply))
        });
    }
    while let Some(r) = checks.join_next().await {
        match r {
            Ok(Ok((machine, reply))) => {
                max_version = max_version.max(reply.max_version);
                if let Some(e) = reply.error {
                    return Err(ApiError::bad_request(format!("{machine}: {e}")));
                }
            }
            Ok(Err(e)) => tracing::debug!("deploy check: {e:#}"),
            Err(e) => tracing::warn!("deploy check task: {e}"),
        }
    }
    let name = spec.name.clone();
    publish(&s, &name, Some(spec), max_version).await.map(Json)
}

async fn remove(State(s): Shd, Path(name): Path<String>) -> Result<Json<Outcome>, ApiError> {
    entry_of(&s, &name)?;
    publish(&s, &name, None, 0).await.map(Json)
}

async fn scale(
    State(s): Shd,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ScaleRequest>,
) -> Result<Json<Outcome>, ApiError> {
    let entry = entry_of(&s, &name)?;
    let mut spec = entry.spec.expect("entry_of returns deployed functions");
    if spec.mode != Mode::Pool {
        return Err(ApiError::bad_request(format!(
            "`{name}` runs in spawn mode (a process per connection): there are no warm instances to scale; limit its connections with a redeploy and --max-conns"
        )));
    }
    if req.min.is_none() && req.max.is_none() {
        return Err(ApiError::bad_request("give --min, --max or both"));
    }
    if let Some(min) = req.min {
        spec.limits.min = min;
    }
    if let Some(max) = req.max {
        spec.limits.max = max;
    }
    spec.check().map_err(ApiError::bad_request)?;
    publish(&s, &name, Some(spec), 0).await.map(Json)
}

/// Makes a new version of `name` (a spec, or `None` to remove it), applies it here and
/// pushes it to every other machine; what each machine made of it.
async fn publish(
    s: &Arc<Shared>,
    name: &str,
    spec: Option<FunctionSpec>,
    seen_version: u64,
) -> Result<Outcome, ApiError> {
    let previous = s.registry().spec(name).cloned();
    let version = s
        .registry()
        .max_version()
        .max(s.cluster.max_reported_version())
        .max(seen_version)
        + 1;
    let entry = Entry {
        name: name.to_owned(),
        version,
        origin: s.me.clone(),
        updated_at: nuage_core::time::unix_now(),
        spec: spec.clone(),
    };
    // The machines to report on: where it runs now, or ran before a removal.
    let shown = spec
        .as_ref()
        .or(previous.as_ref())
        .expect("a change of a known function or a deploy");
    let shown = targets(s, shown);
    let reply = s.merge_and_apply(vec![entry.clone()]).await?;
    let mut machines = Vec::new();
    if shown.contains(&s.me) {
        machines.push(outcome_line(&s.me, spec.as_ref(), reply.errors.get(name)));
    }
    let mut pushes = tokio::task::JoinSet::new();
    for peer in s.cluster.peers() {
        let healthy = s.cluster.view(peer.name.as_str()).healthy;
        let timeout = if healthy {
            PEER_APPLY_TIMEOUT
        } else {
            HEALTH_TIMEOUT
        };
        let request = ApplyRequest {
            entries: vec![entry.clone()],
        };
        pushes.spawn(async move {
            let result: anyhow::Result<ApplyReply> = async {
                cluster::client(&peer.address, timeout)?
                    .post("/v1/functions/_peer/apply", &request)
                    .await
            }
            .await;
            (peer.name.to_string(), result)
        });
    }
    while let Some(r) = pushes.join_next().await {
        let Ok((machine, result)) = r else { continue };
        if !shown.contains(&machine) {
            continue;
        }
        machines.push(match result {
            Ok(reply) => outcome_line(&machine, spec.as_ref(), reply.errors.get(name)),
            Err(e) => MachineOutcome {
                machine,
                ok: false,
                message: format!("unreachable ({e:#}); it catches up when it answers again"),
            },
        });
    }
    machines.sort_by(|a, b| a.machine.cmp(&b.machine));
    Ok(Outcome {
        name: name.to_owned(),
        version,
        machines,
    })
}

fn outcome_line(
    machine: &str,
    spec: Option<&FunctionSpec>,
    error: Option<&String>,
) -> MachineOutcome {
    let (ok, message) = match (spec, error) {
        (_, Some(e)) => (false, e.clone()),
        (Some(spec), None) => (
            true,
            format!("listening on port {} ({})", spec.port, spec.mode),
        ),
        (None, None) => (true, "removed (drained)".to_owned()),
    };
    MachineOutcome {
        machine: machine.to_owned(),
        ok,
        message,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    since: Option<String>,
}

async fn logs(
    State(s): Shd,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<LogsReply>, ApiError> {
    let entry = entry_of(&s, &name)?;
    let spec = entry.spec.expect("entry_of returns deployed functions");
    let cursors = parse_cursors(q.since.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let mut reply = LogsReply {
        lines: Vec::new(),
        cursors: BTreeMap::new(),
        unreachable: Vec::new(),
    };
    let mut pages = tokio::task::JoinSet::new();
    for machine in targets(&s, &spec) {
        let after = cursors.get(&machine).copied().unwrap_or(0);
        if machine == s.me {
            let page = local_logs(&s, &name, after);
            pages.spawn(async move { (machine, Ok(page)) });
            continue;
        }
        let Some(peer) = s.cluster.peer(&machine) else {
            continue;
        };
        let name = name.clone();
        pages.spawn(async move {
            let page: anyhow::Result<LogPage> = async {
                cluster::client(&peer.address, PEER_CALL_TIMEOUT)?
                    .get(&format!("/v1/functions/_peer/logs/{name}?after={after}"))
                    .await
            }
            .await;
            (machine, page)
        });
    }
    while let Some(r) = pages.join_next().await {
        let Ok((machine, page)) = r else { continue };
        match page {
            Ok(page) => {
                reply.cursors.insert(machine.clone(), page.last_seq);
                reply
                    .lines
                    .extend(page.lines.into_iter().map(|line| MachineLogLine {
                        machine: machine.clone(),
                        line,
                    }));
            }
            Err(_) => {
                if let Some(c) = cursors.get(&machine) {
                    reply.cursors.insert(machine.clone(), *c);
                }
                reply.unreachable.push(machine);
            }
        }
    }
    reply.lines.sort_by(|a, b| {
        a.line
            .time
            .total_cmp(&b.line.time)
            .then(a.machine.cmp(&b.machine))
    });
    reply.unreachable.sort();
    tracing::trace!("logs cursors {}", format_cursors(&reply.cursors));
    Ok(Json(reply))
}

fn local_logs(s: &Shared, name: &str, after: u64) -> LogPage {
    match s.function(name) {
        Some(f) => {
            let (lines, last_seq) = f.logs.after(after);
            LogPage { lines, last_seq }
        }
        None => LogPage {
            lines: Vec::new(),
            last_seq: after,
        },
    }
}

async fn peer_state(State(s): Shd) -> Json<NodeReport> {
    Json(s.report())
}

async fn peer_entries(State(s): Shd) -> Json<Vec<Entry>> {
    Json(s.registry().entries())
}

async fn peer_check(State(s): Shd, ApiJson(spec): ApiJson<FunctionSpec>) -> Json<CheckReply> {
    let error = spec.check().and_then(|()| s.check_local(&spec)).err();
    Json(CheckReply {
        max_version: s.registry().max_version(),
        error,
    })
}

async fn peer_apply(
    State(s): Shd,
    ApiJson(req): ApiJson<ApplyRequest>,
) -> Result<Json<ApplyReply>, ApiError> {
    for e in &req.entries {
        check_name(&e.name).map_err(ApiError::bad_request)?;
        if let Some(spec) = &e.spec {
            spec.check().map_err(ApiError::bad_request)?;
        }
    }
    Ok(Json(s.merge_and_apply(req.entries).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterQuery {
    after: Option<u64>,
}

async fn peer_logs(
    State(s): Shd,
    Path(name): Path<String>,
    Query(q): Query<AfterQuery>,
) -> Json<LogPage> {
    Json(local_logs(&s, &name, q.after.unwrap_or(0)))
}
