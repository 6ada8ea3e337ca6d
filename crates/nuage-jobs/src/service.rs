//! Jobs as a service of `nuage up`: the manager on the node that `[jobs] manager`
//! names, and a worker on every node with `[jobs] worker = true`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, anyhow};
use nuage_core::config::Config;
use nuage_core::service::{BoxFuture, Endpoint, Service, ServiceContext, Started};

use crate::config::{DEFAULT_TASK_DURATION, JobsSection};
use crate::manager::Manager;
use crate::worker::{self, WorkerOptions};

/// The name of the `[jobs]` table and of the service.
pub const SECTION: &str = "jobs";

/// The service for this node, if it has a part in jobs. A broken `[jobs]` table still
/// yields the service, whose start then reports the error with its line.
pub fn for_node(config: &Config) -> Option<Box<dyn Service>> {
    match config.section::<JobsSection>(SECTION) {
        Ok(s) if s.manager.as_deref() != Some(config.name.as_str()) && !s.worker => None,
        _ => Some(Box::new(JobsService)),
    }
}

pub struct JobsService;

/// Where this node's worker finds the manager: itself, or the peer named manager (on
/// this node's manager port).
fn manager_url(
    config: &Config,
    section: &JobsSection,
    listen: SocketAddr,
) -> anyhow::Result<String> {
    let manager = section.manager.as_deref().ok_or_else(|| {
        anyhow!("[jobs] worker = true needs `manager`, the node that runs the manager")
    })?;
    if manager == config.name.as_str() {
        let ip = if listen.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            listen.ip()
        };
        return Ok(format!("http://{}", SocketAddr::new(ip, listen.port())));
    }
    let peer = config
        .peers
        .iter()
        .find(|p| p.name.as_str() == manager)
        .ok_or_else(|| {
            anyhow!("[jobs] manager = \"{manager}\" is neither this node nor one of its peers")
        })?;
    let host = &peer.address.host;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    Ok(format!("http://{host}:{}", listen.port()))
}

impl Service for JobsService {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn start(self: Box<Self>, ctx: ServiceContext) -> BoxFuture<anyhow::Result<Started>> {
        Box::pin(async move {
            let section: JobsSection = ctx.config.section(SECTION)?;
            let opts = section.manager_options()?;
            let is_manager = section.manager.as_deref() == Some(ctx.config.name.as_str());
            let role = match (is_manager, section.worker) {
                (true, true) => "node",
                (true, false) => "manager",
                _ => "worker",
            };
            if let Some(dir) = &section.trace_dir {
                crate::trace::install(dir, role)?;
            }
            let mut endpoints = Vec::new();
            let mut tasks = Vec::new();
            // Where this node's worker finds a manager of its own node: where it really
            // listens (the configured port may be 0).
            let mut listen = opts.listen;
            if is_manager {
                let listener = Manager::bind(opts.listen, "[jobs] listen").await?;
                let addr = listener.local_addr()?;
                listen = addr;
                endpoints.push(Endpoint::new("grpc", addr));
                let manager = Manager::open(&ctx.data_dir, opts.clone(), &ctx.metrics)
                    .with_context(|| format!("jobs manager in {}", ctx.data_dir.display()))?;
                let shutdown = ctx.shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    manager.serve(listener, shutdown).await
                }));
            }
            if section.worker {
                let wopts = WorkerOptions {
                    manager: manager_url(&ctx.config, &section, listen)?,
                    name: ctx.config.name.to_string(),
                    workdir: None,
                    program: std::env::current_exe().context("finding the nuage binary")?,
                    default_task_duration: section
                        .default_task_duration
                        .map_or(DEFAULT_TASK_DURATION, |d| d.0),
                };
                let shutdown = ctx.shutdown.clone();
                tasks.push(tokio::spawn(worker::run(wopts, shutdown)));
            }
            let task = tokio::spawn(async move {
                let mut result = Ok(());
                for t in tasks {
                    match t.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => result = Err(e),
                        Err(e) => result = Err(anyhow!("jobs task panicked: {e}")),
                    }
                }
                crate::trace::finish();
                result
            });
            Ok(Started {
                endpoints,
                routes: None,
                task,
            })
        })
    }
}
