//! `nuage.toml`: the configuration of one node.
//!
//! Every key and its default is documented in `docs/config.md`; keep the two in step.
//! Parsing is strict: an unknown key or a bad value is an error naming the file, the
//! line and the key, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Port of the node HTTP API when none is given.
pub const DEFAULT_API_PORT: u16 = 7070;
/// Address the node HTTP API listens on when none is given.
pub const DEFAULT_API_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_API_PORT);
/// Data directory when none is given, relative to the current directory.
pub const DEFAULT_DATA_DIR: &str = "nuage-data";
/// Longest node name accepted (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Most peers one configuration may name.
pub const MAX_PEERS: usize = 256;
/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The top-level tables subsystems own, besides the node's own keys. A subsystem adds
/// its table here and reads it with [`Config::section`]; a table not listed here is an
/// unknown key. Keep docs/config.md in step.
pub const SECTIONS: &[&str] = &["functions", "jobs", "group", "storage", "mail"];

/// The resolved configuration of a node: every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This node's name, unique in its cluster.
    pub name: NodeName,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// The host other nodes and clients reach this node at.
    pub address: String,
    /// Listen addresses of the node's own endpoints.
    pub listen: Listen,
    /// The other nodes of the cluster, sorted by name.
    pub peers: Vec<Peer>,
    /// The file this configuration came from, if any.
    pub source: Option<PathBuf>,
    /// The text it was parsed from, for [`Config::section`].
    text: String,
}

/// Listen addresses (`[listen]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// The node HTTP API (`listen.api`).
    pub api: SocketAddr,
}

/// One other node of the cluster (`[peers]`: `name = "host[:api_port]"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: NodeName,
    pub address: PeerAddr,
}

/// A node name: 1 to 63 characters, letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit (a hostname works as one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(format!(
                "node name `{name}` must have 1 to {MAX_NAME_LEN} characters"
            ));
        }
        let first = name.as_bytes()[0];
        if !first.is_ascii_alphanumeric() {
            return Err(format!(
                "node name `{name}` must start with a letter or a digit"
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "node name `{name}` has the character {bad:?}; use letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(NodeName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeName::new(&s).map_err(de::Error::custom)
    }
}

/// The address of a peer's API: a host (IPv4, `[IPv6]` or a DNS name) and a port that
/// defaults to [`DEFAULT_API_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl PeerAddr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("`{text}` is not a peer address ({why}); write host or host:port");
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(PeerAddr {
                host: ip.to_string(),
                port: DEFAULT_API_PORT,
            });
        }
        if let Ok(sa) = text.parse::<SocketAddr>() {
            return Ok(PeerAddr {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| bad("bad port"))?;
                if port == 0 {
                    return Err(bad("port 0"));
                }
                (h, port)
            }
            None => (text, DEFAULT_API_PORT),
        };
        if !is_host_name(host) {
            return Err(bad("bad host name"));
        }
        Ok(PeerAddr {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PeerAddr::parse(&s).map_err(de::Error::custom)
    }
}

/// A listen address: `ip:port`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ListenAddr(SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<SocketAddr>().map(ListenAddr).map_err(|_| {
            de::Error::custom(format!(
                "`{s}` is not a listen address; write ip:port, e.g. 127.0.0.1:7070 or 0.0.0.0:7070"
            ))
        })
    }
}

/// A host name or address this node is reached at.
#[derive(Debug, Clone, PartialEq)]
struct AdvertisedHost(String);

impl<'de> Deserialize<'de> for AdvertisedHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.parse::<IpAddr>().is_ok() || is_host_name(&s) {
            Ok(AdvertisedHost(s))
        } else {
            Err(de::Error::custom(format!(
                "`{s}` is not a host; write an IP address or a DNS name, without a port"
            )))
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits and `-`.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The node's own keys. Subsystem tables (see [`SECTIONS`]) are checked separately, so
/// unknown keys are detected by `check_top_level`, not by serde.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    name: Option<NodeName>,
    data_dir: Option<PathBuf>,
    address: Option<AdvertisedHost>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    peers: BTreeMap<NodeName, PeerAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    api: Option<ListenAddr>,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub api: Option<SocketAddr>,
}

/// A configuration that could not be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `command line` for an override.
    pub origin: String,
    pub line: Option<usize>,
    /// The dotted key, e.g. `listen.api`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The configuration of a single node with every default.
    pub fn single_node(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::resolve(RawConfig::default(), None, overrides)
    }

    /// Reads and resolves a configuration file. Relative paths in it are relative to
    /// the file's directory.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let whole = |message: String| ConfigError {
            origin: origin.clone(),
            line: None,
            key: None,
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read it: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(whole(format!(
                "file is {} bytes, more than the limit of {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read it: {e}")))?;
        Self::parse(&text, Some(path), overrides)
    }

    /// Parses configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Self::parse_with_sections(text, path, overrides, SECTIONS)
    }

    fn parse_with_sections(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
        sections: &[&str],
    ) -> Result<Config, ConfigError> {
        let origin = path.map_or_else(|| "nuage.toml".to_owned(), |p| p.display().to_string());
        check_top_level(text, &origin, sections)?;
        let raw: RawConfig = toml::from_str(text).map_err(|e| locate(text, &origin, &e))?;
        if raw.peers.len() > MAX_PEERS {
            return Err(ConfigError {
                origin,
                line: None,
                key: Some("peers".into()),
                message: format!(
                    "{} peers, more than the limit of {MAX_PEERS}",
                    raw.peers.len()
                ),
            });
        }
        let mut config = Self::resolve(raw, path, overrides)?;
        config.text = text.to_owned();
        Ok(config)
    }

    /// The subsystem table `[name]` (which must be listed in [`SECTIONS`]), or `T`'s
    /// default when the file has none. Errors name the file, line and key, like every
    /// configuration error; `T` should use `#[serde(deny_unknown_fields)]`.
    pub fn section<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        assert!(
            SECTIONS.contains(&name),
            "section [{name}] is not registered in config::SECTIONS"
        );
        self.section_unchecked(name)
    }

    fn section_unchecked<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        let origin = self
            .source
            .as_ref()
            .map_or_else(|| "nuage.toml".to_owned(), |p| p.display().to_string());
        if self.text.is_empty() {
            return Ok(T::default());
        }
        let located = |e: &toml::de::Error| locate(&self.text, &origin, e);
        let root = toml::de::DeTable::parse(&self.text).map_err(|e| located(&e))?;
        let Some((key, value)) = root.get_ref().iter().find(|(k, _)| k.get_ref() == name) else {
            return Ok(T::default());
        };
        let span = value.span();
        let toml::de::DeValue::Table(table) = value.get_ref() else {
            return Err(ConfigError {
                origin,
                line: Some(line_of(&self.text, key.span().start)),
                key: Some(name.to_owned()),
                message: format!("`{name}` must be a table: write [{name}] and its keys below it"),
            });
        };
        let table = toml::Spanned::new(span, table.clone());
        T::deserialize(toml::de::Deserializer::from(table)).map_err(|e| located(&e))
    }

    fn resolve(raw: RawConfig, path: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let origin = path.map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        let cli = |key: &str, message: String| ConfigError {
            origin: "command line".into(),
            line: None,
            key: Some(key.into()),
            message,
        };
        let name = match (&o.name, raw.name) {
            (Some(n), _) => NodeName::new(n).map_err(|m| cli("--name", m))?,
            (None, Some(n)) => n,
            (None, None) => {
                let host = nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_default();
                NodeName::new(&host).map_err(|m| ConfigError {
                    origin: origin.clone(),
                    line: None,
                    key: Some("name".into()),
                    message: format!("no name given and the hostname does not fit: {m}; set `name` or pass --name"),
                })?
            }
        };
        let base = path
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty());
        let data_dir = match (&o.data_dir, raw.data_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => match base {
                Some(b) if d.is_relative() => b.join(d),
                _ => d,
            },
            (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let api = o
            .api
            .or(raw.listen.api.map(|a| a.0))
            .unwrap_or(DEFAULT_API_LISTEN);
        let address = match raw.address {
            Some(a) => a.0,
            None if !api.ip().is_unspecified() => api.ip().to_string(),
            None => name.to_string(),
        };
        if raw.peers.contains_key(&name) {
            return Err(ConfigError {
                origin,
                line: None,
                key: Some(format!("peers.{name}")),
                message: format!("`{name}` is this node's own name; list only the other nodes"),
            });
        }
        let peers = raw
            .peers
            .into_iter()
            .map(|(name, address)| Peer { name, address })
            .collect();
        Ok(Config {
            name,
            data_dir,
            address,
            listen: Listen { api },
            peers,
            source: path.map(Path::to_path_buf),
            text: String::new(),
        })
    }
}

/// The node's own top-level keys.
const NODE_KEYS: &[&str] = &["name", "data_dir", "address", "listen", "peers"];

/// Refuses top-level keys that are neither the node's nor a registered subsystem's, and
/// checks the `[listen]` and `[peers]` tables (serde checks the node's keys' values).
fn check_top_level(text: &str, origin: &str, sections: &[&str]) -> Result<(), ConfigError> {
    let root = toml::de::DeTable::parse(text).map_err(|e| locate(text, origin, &e))?;
    for (key, _) in root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        if !NODE_KEYS.contains(&name) && !sections.contains(&name) {
            let mut known: Vec<&str> = NODE_KEYS.iter().chain(sections).copied().collect();
            known.sort_unstable();
            return Err(ConfigError {
                origin: origin.to_owned(),
                line: Some(line_of(text, key.span().start)),
                key: Some(name.to_owned()),
                message: format!("unknown key `{name}`, expected one of {}", known.join(", ")),
            });
        }
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Turns a TOML error into one line naming the file, the line and the dotted key.
fn locate(text: &str, origin: &str, err: &toml::de::Error) -> ConfigError {
    let message = err
        .message()
        .trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key");
    let Some(span) = err.span() else {
        return ConfigError {
            origin: origin.into(),
            line: None,
            key: None,
            message,
        };
    };
    let line = line_of(text, span.start);
    ConfigError {
        origin: origin.into(),
        line: Some(line),
        key: key_at_line(text, line),
        message,
    }
}

/// The dotted key defined on `line` (1-based), using the table headers above it.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        let header = l
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .map(|h| h.trim_matches(['[', ' ']).to_owned());
        if i + 1 == line {
            if let Some(h) = header {
                return Some(h);
            }
            let (key, _) = l.split_once('=')?;
            let key = key.trim().trim_matches('"');
            return Some(match &table {
                Some(t) => format!("{t}.{key}"),
                None => key.to_owned(),
            });
        }
        if header.is_some() {
            table = header;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Some(Path::new("n.toml")),
            &Overrides {
                name: Some("t".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn defaults_are_a_single_local_node() {
        let c = Config::single_node(&Overrides {
            name: Some("solo".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.name.as_str(), "solo");
        assert_eq!(c.data_dir, PathBuf::from("nuage-data"));
        assert_eq!(c.listen.api, DEFAULT_API_LISTEN);
        assert_eq!(c.address, "127.0.0.1");
        assert!(c.peers.is_empty());
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
name = "n1"
address = "10.213.0.1"
data_dir = "state"

[listen]
api = "0.0.0.0:7171"

[peers]
n2 = "10.213.0.2"
n3 = "n3.example:7300"
"#;
        let c = Config::parse(
            text,
            Some(Path::new("/etc/nuage/nuage.toml")),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.name.as_str(), "n1");
        assert_eq!(c.address, "10.213.0.1");
        assert_eq!(c.data_dir, PathBuf::from("/etc/nuage/state"));
        assert_eq!(c.listen.api, "0.0.0.0:7171".parse().unwrap());
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].address.authority(), "10.213.0.2:7070");
        assert_eq!(c.peers[1].address.authority(), "n3.example:7300");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            name: Some("x".into()),
            data_dir: Some("/d".into()),
            api: Some("127.0.0.1:1".parse().unwrap()),
        };
        let c = Config::parse("name = \"n1\"\n[listen]\napi = \"0.0.0.0:2\"\n", None, &o).unwrap();
        assert_eq!(c.name.as_str(), "x");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.listen.api.port(), 1);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse("name = \"n1\"\n\n[listen]\napi = \"127.0.0.1:7070\"\napii = \"x\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.key.as_deref(), Some("listen.apii"), "{e}");
        assert!(
            e.to_string()
                .starts_with("n.toml:5: key `listen.apii`: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let e = parse("nmae = \"n1\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("nmae")), "{e}");
    }

    #[test]
    fn bad_value_names_line_and_key() {
        let e = parse("[listen]\napi = \"localhost\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("listen.api")),
            "{e}"
        );
        assert!(e.message.contains("not a listen address"), "{e}");

        let e = parse("[peers]\nn2 = \"10.0.0.2:99999\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("peers.n2")),
            "{e}"
        );

        let e = parse("name = 7\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("name")), "{e}");

        let e = parse("name = \"bad name\"\n").unwrap_err();
        assert!(e.message.contains("character ' '"), "{e}");
    }

    #[test]
    fn peer_named_like_self_is_refused() {
        let e = Config::parse(
            "name = \"a\"\n[peers]\na = \"10.0.0.1\"\n",
            None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("peers.a"));
    }

    #[test]
    fn bad_override_names_the_flag() {
        let e = Config::single_node(&Overrides {
            name: Some("-x".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line: key `--name`: node name `-x` must start with a letter or a digit"
        );
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(PeerAddr::parse("::1").unwrap().authority(), "[::1]:7070");
        assert_eq!(PeerAddr::parse("[::1]:80").unwrap().authority(), "[::1]:80");
        assert_eq!(PeerAddr::parse("h-1.x").unwrap().authority(), "h-1.x:7070");
        for bad in ["", "a b", "h:", "h:0", "h:x", "a..b", ":80"] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        mode: String,
    }

    fn with_demo(text: &str) -> Result<Config, ConfigError> {
        let o = Overrides {
            name: Some("t".into()),
            ..Default::default()
        };
        Config::parse_with_sections(text, Some(Path::new("n.toml")), &o, &["demo"])
    }

    #[test]
    fn sections_parse_with_lines() {
        let c = with_demo("name = \"x\"\n\n[demo]\nport = 8888\nmode = \"pool\"\n").unwrap();
        assert_eq!(
            c.section_unchecked::<Demo>("demo").unwrap(),
            Demo {
                port: 8888,
                mode: "pool".into()
            }
        );

        let c = with_demo("name = \"x\"\n").unwrap();
        assert_eq!(
            c.section_unchecked::<Demo>("demo").unwrap(),
            Demo::default()
        );

        let c = with_demo("[demo]\nport = 8888\nmdoe = \"pool\"\n").unwrap();
        let e = c.section_unchecked::<Demo>("demo").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("demo.mdoe")),
            "{e}"
        );

        let c = with_demo("[demo]\nport = -1\n").unwrap();
        let e = c.section_unchecked::<Demo>("demo").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("demo.port")),
            "{e}"
        );

        let c = with_demo("demo = 3\n").unwrap();
        let e = c.section_unchecked::<Demo>("demo").unwrap_err();
        assert!(e.message.contains("must be a table"), "{e}");
    }

    #[test]
    fn unregistered_section_is_an_unknown_key() {
        let e = with_demo("name = \"x\"\n[other]\na = 1\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("other")), "{e}");
        assert!(
            e.message
                .contains("expected one of address, data_dir, demo, listen, name, peers"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_one_clear_line() {
        let e =
            Config::load(Path::new("/nonexistent/nuage.toml"), &Overrides::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/nuage.toml: cannot read it:"),
            "{e}"
        );
    }
}
