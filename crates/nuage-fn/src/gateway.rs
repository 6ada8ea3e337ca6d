//! The HTTP gateway: `POST /function/NAME` on the node API. The body's lines are the
//! requests; the response body is the answer lines, in order.
//!
//! | status | when |
//! |---|---|
//! | 200 | every line answered |
//! | 404 | no function of that name |
//! | 413 | a line longer than `max_line` (nothing is run) |
//! | 429 | the function is at `--max-conns` on this machine |
//! | 502 | the instance or process failed (exited, could not start, bad answer) |
//! | 503 | the function is stopping, or runs on no machine that answers |
//! | 504 | a request took longer than `--timeout` |
//!
//! In pool mode each line is one request to a warm instance. In spawn mode one process
//! gets the whole body on its stdin (as a connection would) and its whole output is the
//! answer. A machine that does not run the function passes the request to one that does
//! (`?relayed=1`, never passed on again).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::Method;
use nuage_core::api::ApiError;
use serde::Deserialize;

use crate::balancer::Target;
use crate::cluster::{self, PEER_CALL_TIMEOUT};
use crate::function::{Engine, Function};
use crate::pool::PoolError;
use crate::service::Shared;
use crate::spawn::RunError;
use crate::spec::check_name;
use crate::stats::ErrorKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeQuery {
    relayed: Option<u8>,
}

pub async fn invoke(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name(&name).map_err(ApiError::bad_request)?;
    let Some(spec) = s.registry().spec(&name).cloned() else {
        return Err(ApiError::not_found(format!("no function named `{name}`")));
    };
    let max_line = s.config.max_line();
    let lines = split_lines(&body);
    if let Some(long) = lines.iter().find(|l| l.len() + 1 > max_line) {
        if let Some(f) = s.function(&name) {
            f.stats.error(ErrorKind::TooLong);
        }
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_long",
            format!(
                "request too long (max {max_line} bytes): a line of {} bytes",
                long.len() + 1
            ),
        ));
    }
    match s.function(&name).filter(|f| !f.is_draining()) {
        Some(f) => run_here(&f, &lines).await,
        None if q.relayed.is_some() => Err(ApiError::unavailable(format!(
            "function `{name}` does not run on {}",
            s.me
        ))),
        None => pass_on(&s, &spec, &body).await,
    }
}

/// The lines of a body: split at newlines; a last line without newline counts.
fn split_lines(body: &[u8]) -> Vec<&[u8]> {
    if body.is_empty() {
        return Vec::new();
    }
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    body.split(|&b| b == b'\n').collect()
}

fn text(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn run_here(f: &Arc<Function>, lines: &[&[u8]]) -> Result<Response, ApiError> {
    let permit = f
        .admit(None)
        .map_err(|r| ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many", r.message))?;
    let _permit = permit;
    match &f.engine {
        Engine::Pool(pool) => {
            let mut out = Vec::new();
            for line in lines {
                let answer = f.tracked(pool.call(line)).await.map_err(pool_error)?;
                out.extend_from_slice(&answer);
                out.push(b'\n');
            }
            Ok(text(out))
        }
        Engine::Spawn(spawner) => {
            let mut input = Vec::new();
            for line in lines {
                input.extend_from_slice(line);
                input.push(b'\n');
            }
            let limits = f.limits();
            let max_output = f.max_response() * lines.len().max(1);
            let out = f
                .tracked(spawner.run_once(&input, &limits, max_output))
                .await
                .map_err(run_error)?;
            Ok(text(out))
        }
    }
}

fn pool_error(e: PoolError) -> ApiError {
    let status = match e {
        PoolError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        PoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        PoolError::Exited(_)
        | PoolError::StartFailed(_)
        | PoolError::Failing { .. }
        | PoolError::BadResponse(_) => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, error_code(status), e.message())
}

fn run_error(e: RunError) -> ApiError {
    let status = match e {
        RunError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, error_code(status), e.message())
}

fn error_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "function_failed",
    }
}

/// The function does not run here: hand the request to a machine that runs it.
async fn pass_on(
    s: &Arc<Shared>,
    spec: &crate::spec::FunctionSpec,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let order = s.candidates(spec);
    if order.is_empty() {
        return Err(ApiError::unavailable(format!(
            "function `{}` runs on no machine that answers now (see `nuage fn show {}`)",
            spec.name, spec.name
        )));
    }
    let order = s.balancer.order(&spec.name, spec.balance, order);
    let mut failures = Vec::new();
    for candidate in order {
        let Target::Peer { .. } = candidate.target else {
            continue;
        };
        let Some(peer) = s.cluster.peer(&candidate.machine) else {
            continue;
        };
        let result = async {
            let client = cluster::client(
                &peer.address,
                PEER_CALL_TIMEOUT.max(spec.limits.timeout() * 2),
            )?;
            let resp = client
                .send(
                    Method::POST,
                    &format!("/function/{}?relayed=1", spec.name),
                    Some(body.to_vec()),
                )
                .await?;
            let status = resp.status();
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, content_type, bytes))
        }
        .await;
        match result {
            Ok((status, content_type, bytes)) => {
                let mut resp = (status, bytes).into_response();
                if let Some(ct) = content_type {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                return Ok(resp);
            }
            Err(e) => failures.push(format!("{}: {e:#}", candidate.machine)),
        }
    }
    Err(ApiError::unavailable(format!(
        "no machine could take the request ({})",
        failures.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_lines() {
        assert!(split_lines(b"").is_empty());
        assert_eq!(split_lines(b"a\nb\n"), vec![&b"a"[..], b"b"]);
        assert_eq!(split_lines(b"a\nb"), vec![&b"a"[..], b"b"]);
        assert_eq!(split_lines(b"\n"), vec![&b""[..]]);
        assert_eq!(split_lines(b"a\0\n\n"), vec![&b"a\0"[..], b""]);
    }
}
