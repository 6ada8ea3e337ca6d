//! The three-tier demo of `nuage jobs demo-auth` (`proto/demo_auth.proto`): a client
//! logs in through an application server, which checks the password with an
//! authentication server. Each tier records its span (`client.login`, `app.login`,
//! `auth.check`) and passes the trace on in the `traceparent` metadata, so one login
//! is one trace across three processes. A slow spot can be switched on in any tier
//! (`--slow 30ms`); `nuage trace analyze` then has to find it — the classic exercise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::demo_proto::{
    self, CheckReply, CheckRequest, LoginReply, LoginRequest, app_client::AppClient,
    auth_client::AuthClient,
};
use crate::trace::{self, Span};

/// The users the authentication server knows (user, password).
pub const USERS: &[(&str, &str)] = &[("alice", "wonderland"), ("bob", "builder")];
/// Logins one client run makes at most.
pub const MAX_REQUESTS: u32 = 1_000_000;
/// How long a call between tiers may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A slow spot: the tier spends this long in its span (as a slow password hash or a
/// slow database would).
async fn slow_spot(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("`{url}` is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

struct Auth {
    slow: Duration,
}

#[tonic::async_trait]
impl demo_proto::auth_server::Auth for Auth {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let parent = trace::from_metadata(req.metadata());
        let r = req.into_inner();
        let span = Span::child(parent, "auth.check", "auth", || r.user.clone());
        slow_spot(self.slow).await;
        let ok = USERS.iter().any(|(u, p)| *u == r.user && *p == r.password);
        span.end();
        Ok(Response::new(CheckReply { ok }))
    }
}

struct App {
    auth: AuthClient<Channel>,
    slow: Duration,
}

#[tonic::async_trait]
impl demo_proto::app_server::App for App {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let parent = trace::from_metadata(req.metadata());
        let r = req.into_inner();
        let span = Span::child(parent, "app.login", "app", || r.user.clone());
        slow_spot(self.slow).await;
        let mut call = Request::new(CheckRequest {
            user: r.user.clone(),
            password: r.password,
        });
        call.set_timeout(CALL_TIMEOUT);
        trace::inject(&mut call, span.context());
        let ok = self
            .auth
            .clone()
            .check(call)
            .await
            .map_err(|s| {
                Status::unavailable(format!("the authentication server: {}", s.message()))
            })?
            .into_inner()
            .ok;
        let message = if ok {
            format!("welcome, {}", r.user)
        } else {
            "wrong user or password".to_owned()
        };
        span.end();
        Ok(Response::new(LoginReply { ok, message }))
    }
}

/// Serves the authentication server on `listener` until `shutdown`.
pub async fn serve_auth(
    listener: tokio::net::TcpListener,
    slow: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Server::builder()
        .add_service(demo_proto::auth_server::AuthServer::new(Auth { slow }))
        .serve_with_incoming_shutdown(
            crate::incoming_nodelay(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .context("the authentication server failed")
}

/// Serves the application server on `listener` until `shutdown`, calling the
/// authentication server at `auth_url`.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    auth_url: &str,
    slow: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = App {
        auth: AuthClient::new(channel(auth_url)?),
        slow,
    };
    Server::builder()
        .add_service(demo_proto::app_server::AppServer::new(app))
        .serve_with_incoming_shutdown(
            crate::incoming_nodelay(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .context("the application server failed")
}

/// What a client run measured.
#[derive(Debug, Clone)]
pub struct ClientStats {
    pub requests: u32,
    pub accepted: u32,
    pub p50: Duration,
    pub p99: Duration,
}

/// Logs in `requests` times, one after the other; each login is a new trace.
pub async fn run_client(
    app_url: &str,
    user: &str,
    password: &str,
    requests: u32,
    slow: Duration,
) -> anyhow::Result<ClientStats> {
    anyhow::ensure!(
        (1..=MAX_REQUESTS).contains(&requests),
        "--requests must be 1 to {MAX_REQUESTS}"
    );
    let client = AppClient::new(channel(app_url)?);
    let mut times = Vec::with_capacity(requests as usize);
    let mut accepted = 0;
    for _ in 0..requests {
        let begin = Instant::now();
        let span = Span::root("client.login", "client", user.to_owned());
        slow_spot(slow).await;
        let mut call = Request::new(LoginRequest {
            user: user.to_owned(),
            password: password.to_owned(),
        });
        call.set_timeout(CALL_TIMEOUT);
        trace::inject(&mut call, span.context());
        let reply = client
            .clone()
            .login(call)
            .await
            .map_err(|s| anyhow::anyhow!("login through {app_url} failed: {}", s.message()))?
            .into_inner();
        span.end();
        times.push(begin.elapsed());
        accepted += u32::from(reply.ok);
    }
    times.sort_unstable();
    let pick = |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(ClientStats {
        requests,
        accepted,
        p50: pick(0.5),
        p99: pick(0.99),
    })
}

/// Binds a demo server's address with an actionable error.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    nuage_core::net::bind_tcp(addr, what, "--listen").await
}
