//! The group daemon as a service of `nuage up`, configured by the `[group]` table of
//! nuage.toml. The daemons are this node and its peers (sorted by name, so every node
//! numbers them alike), all on the same port.
//!
//! The daemon runs by default, on Spread's port 4803, so that Spread programs on the
//! machine find it where they expect it. If that port is taken (a Spread daemon, another
//! node on the same host), `nuage up` fails with an error saying so and how to choose:
//! a node half-started without the service an operator counts on is worse than a clear
//! refusal. `[group] enabled = false` (or `NUAGE_GROUP_ENABLED=false` in the environment,
//! for hosts running many nodes, such as test machines) turns it off.

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
/// Environment variable giving the default of `[group] enabled` (`true` or `false`); an
/// `enabled` key in nuage.toml wins over it.
pub const ENABLED_ENV: &str = "NUAGE_GROUP_ENABLED";
/// Where the port and socket directory of `nuage up`'s daemon are chosen, for errors.
const SETTINGS_HINT: &str = "[group] port or runtime_dir in nuage.toml (or turn the daemon off with [group] enabled = false)";

/// `[group]` in nuage.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    /// Run a group daemon in this node (default true, or `$NUAGE_GROUP_ENABLED`).
    pub enabled: Option<bool>,
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
            enabled: None,
            port: DEFAULT_PORT,
            runtime_dir: None,
            max_session_messages: DEFAULT_MAX_SESSION_MESSAGES,
            spread_conf: None,
        }
    }
}

impl GroupSection {
    /// Whether the daemon runs: `enabled` from nuage.toml, else `$NUAGE_GROUP_ENABLED`,
    /// else true.
    pub fn enabled(&self) -> anyhow::Result<bool> {
        if let Some(on) = self.enabled {
            return Ok(on);
        }
        enabled_from_env(std::env::var(ENABLED_ENV).ok().as_deref())
    }
}

/// The default of `enabled` given the value of `$NUAGE_GROUP_ENABLED` (unset: true).
fn enabled_from_env(value: Option<&str>) -> anyhow::Result<bool> {
    match value.map(str::trim) {
        None | Some("") => Ok(true),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(other) => anyhow::bail!(
            "{ENABLED_ENV}=`{other}` is neither true nor false (nor 1/0, yes/no, on/off)"
        ),
    }
}

/// Whether `nuage up` should include the group service: unless it is turned off (see
/// [`GroupSection::enabled`]); when the table or the variable is malformed it is included,
/// so that starting reports the error.
pub fn wanted(config: &Config) -> bool {
    config
        .section::<GroupSection>(SECTION)
        .map_or(true, |s| s.enabled().unwrap_or(true))
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
            s.enabled()?;
            if s.max_session_messages == 0 {
                anyhow::bail!("[group] max_session_messages must be at least 1");
            }
            let conf = derive_conf(&ctx.config, &s)?;
            let me = ctx.config.name.as_str().to_owned();
            let mut cfg = DaemonConfig::new(
                conf,
                Some(&me),
                Some(s.runtime_dir.clone().unwrap_or_else(default_runtime_dir)),
            )?;
            cfg.settings_hint = SETTINGS_HINT;
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
        std::fs::write(&path, "name = \"n2\"\n[group]\nenabled = false\n").unwrap();
        assert!(!wanted(
            &Config::load(&path, &Overrides::default()).unwrap()
        ));
    }

    #[test]
    fn enabled_by_default_unless_the_environment_says_otherwise() {
        assert!(enabled_from_env(None).unwrap());
        assert!(enabled_from_env(Some("")).unwrap());
        for on in ["true", "1", "yes", "on"] {
            assert!(enabled_from_env(Some(on)).unwrap(), "{on}");
        }
        for off in ["false", "0", "no", "off", " false "] {
            assert!(!enabled_from_env(Some(off)).unwrap(), "{off}");
        }
        let e = enabled_from_env(Some("maybe")).unwrap_err().to_string();
        assert!(e.contains("NUAGE_GROUP_ENABLED=`maybe`"), "{e}");
        // The file wins over the environment.
        let s = GroupSection {
            enabled: Some(true),
            ..GroupSection::default()
        };
        assert!(s.enabled().unwrap());
    }
}
