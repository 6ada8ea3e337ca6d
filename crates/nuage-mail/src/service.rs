//! The mail server as a service of `nuage up`, configured by the `[mail]` table of
//! nuage.toml (off unless `enabled = true`). Its database lives in the node's data dir,
//! under `mail/`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nuage_core::config::Config;
use nuage_core::service::{BoxFuture, Endpoint, Service, ServiceContext, Started};
use serde::Deserialize;

use crate::causal::Order;
use crate::server::{MailServer, ServerConfig, SettingNames};
use crate::servers::Directory;

/// The table name in nuage.toml.
pub const SECTION: &str = "mail";
/// The port of the mail server when `[mail] port` is not given.
pub const DEFAULT_PORT: u16 = 2525;

/// `[mail]` in nuage.toml: the options of `nuage mail serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSection {
    /// Run a mail server in this node (default false).
    pub enabled: bool,
    /// The domain whose mail this node keeps (required when enabled).
    pub domain: Option<String>,
    /// The servers file (required when enabled; relative to the working directory).
    pub servers: Option<PathBuf>,
    pub port: u16,
    pub bind: IpAddr,
    pub order: Order,
    /// Milliseconds of artificial latency per destination domain.
    pub delay_to: BTreeMap<String, u64>,
}

impl Default for MailSection {
    fn default() -> Self {
        MailSection {
            enabled: false,
            domain: None,
            servers: None,
            port: DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            order: Order::Causal,
            delay_to: BTreeMap::new(),
        }
    }
}

/// Whether `nuage up` should include the mail service: when `[mail] enabled = true`, or
/// when the table is malformed (so that starting reports the error).
pub fn wanted(config: &Config) -> bool {
    config
        .section::<MailSection>(SECTION)
        .map_or(true, |s| s.enabled)
}

/// The mail server of a node.
pub struct MailService;

impl Service for MailService {
    fn name(&self) -> &'static str {
        "mail"
    }

    fn start(self: Box<Self>, ctx: ServiceContext) -> BoxFuture<anyhow::Result<Started>> {
        Box::pin(async move {
            let s: MailSection = ctx.config.section(SECTION)?;
            let domain = s
                .domain
                .context("[mail] domain is missing: the domain whose mail this node keeps")?;
            let servers = s
                .servers
                .context("[mail] servers is missing: the servers file (lines host:port:domain)")?;
            let directory = Directory::load(&servers)?;
            let delays = s
                .delay_to
                .into_iter()
                .map(|(d, ms)| (d.to_ascii_lowercase(), Duration::from_millis(ms)))
                .collect();
            let server = MailServer::bind_in_node(ServerConfig {
                listen: SocketAddr::new(s.bind, s.port),
                domain,
                directory,
                data_dir: ctx.data_dir.clone(),
                order: s.order,
                delays,
                names: SettingNames::CONFIG,
            })
            .await?;
            let addr = server.local_addr();
            let shutdown = ctx.shutdown.clone();
            Ok(Started {
                endpoints: vec![Endpoint::new("tcp", addr)],
                routes: None,
                task: tokio::spawn(server.run(shutdown)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuage_core::config::Overrides;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nuage.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, &Overrides::default()).unwrap()
    }

    #[test]
    fn the_table_turns_the_service_on_and_is_strict() {
        assert!(!wanted(&load("name = \"n1\"\n")));
        assert!(!wanted(&load("name = \"n1\"\n[mail]\ndomain = \"a\"\n")));
        let config = load(
            "name = \"n1\"\n[mail]\nenabled = true\ndomain = \"a\"\nservers = \"s\"\norder = \"fifo\"\ndelay_to = { n = 250 }\n",
        );
        assert!(wanted(&config));
        let s: MailSection = config.section(SECTION).unwrap();
        assert_eq!(s.order, Order::Fifo);
        assert_eq!(s.port, DEFAULT_PORT);
        assert_eq!(s.delay_to.get("n"), Some(&250));
        let config = load("name = \"n1\"\n[mail]\norder = \"random\"\n");
        assert!(wanted(&config), "a bad table is reported at start");
        let e = config
            .section::<MailSection>(SECTION)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mail.order"), "{e}");
    }
}
