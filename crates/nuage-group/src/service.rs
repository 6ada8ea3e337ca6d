//! The group daemon as a service of `nuage up`, configured by the `[group]` table of
//! nuage.toml. The daemons are this node and its peers (sorted by name, so every node
//! numbers them alike), all on the same port.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::Context;
use nuage_core::api::ApiError;
use nuage_core::config::Config;
use nuage_core::service::{BoxFuture, Service, ServiceContext, Started};
use serde::Deserialize;

use crate::conf::{DEFAULT_MAX_SESSION_MESSAGES, DaemonEntry, SpreadConf};
use crate::daemon::{Daemon, DaemonConfig, default_runtime_dir};
use crate::wire::{self, DEFAULT_PORT};

/// The table name in nuage.toml.
pub const SECTION: &str = "group";

/// `[group]` in nuage.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    /// Run a group daemon in this node (default false: a daemon on a fixed port is opt-in).
    pub enabled: bool,
    /// Port of every daemon (clients on TCP and the Unix socket, the ring on UDP).
    pub port: u16,
    /// Directory of the Unix socket `<port>` (default `$NUAGE_GROUP_RUNTIME_DIR` or /tmp).
    pub runtime_dir: Option<PathBuf>,
    /// Messages queued for one client before it is disconnected.
    pub max_session_messages: usize,
    /// A spread.conf to use instead of the daemon list derived from the peers.
    pub spread_conf: Option<PathBuf>,
}

impl Default for GroupSection {
    fn default() -> Self {
        GroupSection {
            enabled: false,
            port: DEFAULT_PORT,
            runtime_dir: None,
            max_session_messages: DEFAULT_MAX_SESSION_MESSAGES,
            spread_conf: None,
        }
    }
}

/// Whether `nuage up` should include the group service: when `[group] enabled = true`,
/// or when the table is malformed (so that starting reports the error).
pub fn wanted(config: &Config) -> bool {
    config
        .section::<GroupSection>(SECTION)
        .map_or(true, |s| s.enabled)
}

/// The spread configuration of a node: itself and its peers, sorted by name.
pub fn derive_conf(config: &Config, s: &GroupSection) -> anyhow::Result<SpreadConf> {
    if let Some(path) = &s.spread_conf {
        let mut c = SpreadConf::load(path)?;
        c.max_session_messages = s.max_session_messages;
        return Ok(c);
    }
    let resolve = |name: &str, host: &str| -> anyhow::Result<IpAddr> {
        if let Ok(ip) = host.parse() {
            return Ok(ip);
        }
        (host, s.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving `{host}`, the address of {name}"))?
            .map(|a| a.ip())
            .find(IpAddr::is_ipv4)
            .with_context(|| format!("`{host}` (the address of {name}) has no IPv4 address"))
    };
    let mut daemons = vec![(
        config.name.as_str().to_owned(),
        resolve(config.name.as_str(), &config.address)?,
    )];
    for p in &config.peers {
        daemons.push((
            p.name.as_str().to_owned(),
            resolve(p.name.as_str(), &p.address.host)?,
        ));
    }
    daemons.sort();
    let mut conf = SpreadConf {
        max_session_messages: s.max_session_messages,
        ..SpreadConf::default()
    };
    for (name, addr) in daemons {
        wire::check_daemon_name(&name).map_err(|e| {
            anyhow::anyhow!("[group]: node name `{name}` cannot name a group daemon: {e}; use names of at most 19 characters, or set [group] spread_conf")
        })?;
        conf.daemons.push(DaemonEntry {
            name,
            addr,
            port: s.port,
        });
    }
    Ok(conf)
}

/// The group daemon service.
pub struct GroupService;

impl Service for GroupService {
    fn name(&self) -> &'static str {
        "group"
    }

    fn start(self: Box<Self>, ctx: ServiceContext) -> BoxFuture<anyhow::Result<Started>> {
        Box::pin(async move {
            let s: GroupSection = ctx.config.section(SECTION)?;
            if s.max_session_messages == 0 {
                anyhow::bail!("[group] max_session_messages must be at least 1");
            }
            let conf = derive_conf(&ctx.config, &s)?;
            let me = ctx.config.name.as_str().to_owned();
            let cfg = DaemonConfig::new(
                conf,
                Some(&me),
                Some(s.runtime_dir.clone().unwrap_or_else(default_runtime_dir)),
            )?;
            let daemon = Daemon::bind(cfg).await?;
            let endpoints = daemon.endpoints();
            let handle = daemon.status_handle();
            let routes = axum::Router::new().route(
                "/v1/group/status",
                axum::routing::get(move || {
                    let handle = handle.clone();
                    async move {
                        match handle.status().await {
                            Some(v) => Ok(axum::Json(v)),
                            None => Err(ApiError::unavailable("the group daemon has stopped")),
                        }
                    }
                }),
            );
            let task = tokio::spawn(daemon.run(ctx.shutdown.clone()));
            Ok(Started {
                endpoints,
                routes: Some(routes),
                task,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuage_core::config::Overrides;

    #[test]
    fn the_daemon_list_comes_from_the_peers_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nuage.toml");
        std::fs::write(
            &path,
            "name = \"n2\"\naddress = \"10.0.0.2\"\n[peers]\nn3 = \"10.0.0.3\"\nn1 = \"10.0.0.1:7070\"\n[group]\nenabled = true\nport = 5000\n",
        )
        .unwrap();
        let config = Config::load(&path, &Overrides::default()).unwrap();
        assert!(wanted(&config));
        let s: GroupSection = config.section(SECTION).unwrap();
        let conf = derive_conf(&config, &s).unwrap();
        let got: Vec<(String, String, u16)> = conf
            .daemons
            .iter()
            .map(|d| (d.name.clone(), d.addr.to_string(), d.port))
            .collect();
        assert_eq!(
            got,
            [
                ("n1".into(), "10.0.0.1".into(), 5000),
                ("n2".into(), "10.0.0.2".into(), 5000),
                ("n3".into(), "10.0.0.3".into(), 5000)
            ]
        );
        std::fs::write(&path, "name = \"n2\"\n[group]\nportt = 1\n").unwrap();
        let config = Config::load(&path, &Overrides::default()).unwrap();
        assert!(wanted(&config), "a bad table is reported at start");
        let e = config
            .section::<GroupSection>(SECTION)
            .unwrap_err()
            .to_string();
        assert!(e.contains("group.portt") || e.contains("portt"), "{e}");
        std::fs::write(&path, "name = \"n2\"\n").unwrap();
        assert!(!wanted(
            &Config::load(&path, &Overrides::default()).unwrap()
        ));
    }
}
