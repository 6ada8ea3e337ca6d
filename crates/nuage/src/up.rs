//! `nuage up`: start this machine's node with all its services.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nuage_core::config::{Config, Overrides};
use nuage_core::service::Service;
use nuage_node::Node;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Data directory (default ./nuage-data, or `data_dir` from the config)
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Configuration file (nuage.toml; see docs/config.md). Without it: a single-node cloud
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name (default: the hostname, or `name` from the config)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Address of the node HTTP API (default 127.0.0.1:7070, or `listen.api`)
    #[arg(long, value_name = "IP:PORT")]
    pub api: Option<std::net::SocketAddr>,
}

/// The services of a node, in start order. A subsystem joins `nuage up` by adding its
/// service here.
fn services(config: &Config) -> Vec<Box<dyn Service>> {
    let mut services: Vec<Box<dyn Service>> = vec![Box::new(nuage_fn::FunctionsService)];
    // The jobs manager on the node `[jobs] manager` names; a worker where `worker = true`.
    services.extend(nuage_jobs::service::for_node(config));
    if nuage_group::service::wanted(config) {
        services.push(Box::new(nuage_group::service::GroupService));
    }
    services.push(Box::new(nuage_fs::service::StorageService));
    if nuage_mail::service::wanted(config) {
        services.push(Box::new(nuage_mail::service::MailService));
    }
    services
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Listen for signals before anything starts, so a SIGTERM during start-up is held
    // and then stops the node cleanly instead of killing it.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let overrides = Overrides {
        name: args.name,
        data_dir: args.data,
        api: args.api,
    };
    let config = match &args.config {
        Some(path) => Config::load(path, &overrides)?,
        None => Config::single_node(&overrides)?,
    };
    let services = services(&config);
    let node = Node::start(config, services).await?;
    let info = node.info();
    println!(
        "nuage {} node `{}` ({} peers), data {}",
        info.version,
        info.name,
        info.peers.len(),
        info.data_dir
    );
    for service in &info.services {
        let endpoints: Vec<String> = service.endpoints.iter().map(ToString::to_string).collect();
        println!("{:<10} {}", service.name, endpoints.join(", "));
    }
    tracing::info!("node `{}` is up; stop it with Ctrl-C or SIGTERM", info.name);

    let mut check = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM".to_owned(),
            _ = int.recv() => break "SIGINT".to_owned(),
            _ = check.tick() => {
                if let Some(name) = node.stopped_service() {
                    break format!("service `{name}` stopped on its own");
                }
            }
        }
    };
    tracing::info!("stopping ({reason})");
    // A second signal while stopping means: do not wait.
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("nuage: second signal, exiting without a clean stop");
        std::process::exit(130);
    });
    let failed_service = node.stopped_service().map(str::to_owned);
    node.stop().await?;
    if let Some(name) = failed_service {
        anyhow::bail!("service `{name}` stopped on its own; see the log above");
    }
    tracing::info!("stopped cleanly");
    Ok(())
}
