//! What a deployed function is: its name, port, mode, command and limits, with every
//! default and bound, and the checks that refuse a bad deployment in one clear line.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest function name.
pub const MAX_NAME_LEN: usize = 63;
/// Most arguments of a command, the program included.
pub const MAX_ARGS: usize = 64;
/// Longest argument or environment value, in bytes.
pub const MAX_ARG_LEN: usize = 4096;
/// Most environment variables given to a function.
pub const MAX_ENV: usize = 64;

/// Fewest warm instances kept in pool mode (`--min`).
pub const DEFAULT_MIN: u32 = 0;
/// Most instances in pool mode (`--max`).
pub const DEFAULT_MAX: u32 = 4;
/// Upper bound of `--max`.
pub const MAX_INSTANCES: u32 = 1024;
/// Seconds an instance above `--min` may stay idle before it is stopped (`--idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Upper bound of `--idle-timeout` (one day).
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 86_400;
/// Seconds a request may take (`--timeout`).
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Upper bound of `--timeout` (one hour).
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Connections one machine holds at once for a function (`--max-conns`).
pub const DEFAULT_MAX_CONNS: u32 = 1000;
/// Upper bound of `--max-conns`.
pub const MAX_MAX_CONNS: u32 = 65_536;

/// How connections reach a function's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One fresh process per connection, the socket as its stdin and stdout (inetd).
    #[default]
    Spawn,
    /// Long-lived instances; each request line goes to an idle one.
    Pool,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Spawn => "spawn",
            Mode::Pool => "pool",
        })
    }
}

/// How each machine places new connections over the machines running the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// In turn, in the order of the machines' names.
    #[default]
    RoundRobin,
    /// On the machine with the fewest connections this machine has placed there.
    LeastConns,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConns => "least-conns",
        })
    }
}

/// The bounds of a function that can change while it runs (`nuage fn scale`, redeploy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub min: u32,
    pub max: u32,
    pub idle_timeout_secs: u64,
    pub timeout_secs: u64,
    pub max_conns: u32,
    pub per_source: u32,
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// A deployed function, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    pub port: u16,
    pub mode: Mode,
    /// The program (a name looked up on each machine, or an absolute path) and its
    /// arguments. Never given to a shell.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The machines that run it; empty means every machine of the cluster.
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    pub limits: Limits,
}

impl FunctionSpec {
    /// Whether `machine` runs this function.
    pub fn placed_on(&self, machine: &str) -> bool {
        self.on.is_empty() || self.on.iter().any(|m| m == machine)
    }

    /// Whether changing from `self` to `other` needs the function restarted (rather
    /// than its limits adjusted while it runs).
    pub fn needs_restart(&self, other: &FunctionSpec) -> bool {
        self.port != other.port
            || self.mode != other.mode
            || self.command != other.command
            || self.env != other.env
    }
}

/// A deployment request, as the CLI sends it (`POST /v1/functions`): every limit left
/// out takes its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub mode: Mode,
    /// Empty: the program is the function's name.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub idle_timeout: Option<u64>,
    pub timeout: Option<u64>,
    pub max_conns: Option<u32>,
    pub per_source: Option<u32>,
}

impl DeployRequest {
    /// The spec this request asks for, defaults filled in and every value checked.
    pub fn to_spec(&self) -> Result<FunctionSpec, String> {
        check_name(&self.name)?;
        if self.mode == Mode::Spawn && (self.min.is_some() || self.max.is_some()) {
            return Err(
                "--min and --max size the warm instances of pool mode; in spawn mode each connection has its own process (limit them with --max-conns)"
                    .into(),
            );
        }
        let command = if self.command.is_empty() {
            vec![self.name.clone()]
        } else {
            self.command.clone()
        };
        let max_conns = self.max_conns.unwrap_or(DEFAULT_MAX_CONNS);
        let spec = FunctionSpec {
            name: self.name.clone(),
            port: self.port,
            mode: self.mode,
            command,
            env: self.env.clone(),
            on: self.on.clone(),
            balance: self.balance,
            limits: Limits {
                min: self.min.unwrap_or(DEFAULT_MIN),
                max: self.max.unwrap_or(DEFAULT_MAX.max(self.min.unwrap_or(0))),
                idle_timeout_secs: self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS),
                timeout_secs: self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS),
                max_conns,
                per_source: self.per_source.unwrap_or(max_conns),
            },
        };
        spec.check()?;
        Ok(spec)
    }
}

impl FunctionSpec {
    /// Checks every field against its bounds; the error is one line saying what to do.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.port == 0 {
            return Err(
                "--port is required: the TCP port the function listens on, e.g. --port 8888".into(),
            );
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err("the command is empty; give it after --, e.g. -- /usr/bin/cat".into());
        }
        if self.command.len() > MAX_ARGS {
            return Err(format!(
                "the command has {} arguments, more than the limit of {MAX_ARGS}",
                self.command.len()
            ));
        }
        for arg in &self.command {
            check_text("a command argument", arg)?;
        }
        if self.env.len() > MAX_ENV {
            return Err(format!(
                "{} environment variables, more than the limit of {MAX_ENV}",
                self.env.len()
            ));
        }
        for (key, value) in &self.env {
            let mut chars = key.chars();
            let good = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good {
                return Err(format!(
                    "`{key}` is not an environment variable name (letters, digits and _, not starting with a digit)"
                ));
            }
            check_text("an environment value", value)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.on {
            nuage_core::config::NodeName::new(m).map_err(|e| format!("--on: {e}"))?;
            if !seen.insert(m) {
                return Err(format!("--on names {m} twice"));
            }
        }
        let l = &self.limits;
        if l.max == 0 || l.max > MAX_INSTANCES {
            return Err(format!(
                "--max {} is out of range; write 1 to {MAX_INSTANCES}",
                l.max
            ));
        }
        if l.min > l.max {
            return Err(format!("--min {} is more than --max {}", l.min, l.max));
        }
        if l.idle_timeout_secs == 0 || l.idle_timeout_secs > MAX_IDLE_TIMEOUT_SECS {
            return Err(format!(
                "--idle-timeout {} is out of range; write 1 to {MAX_IDLE_TIMEOUT_SECS} seconds",
                l.idle_timeout_secs
            ));
        }
        if l.timeout_secs == 0 || l.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(format!(
                "--timeout {} is out of range; write 1 to {MAX_TIMEOUT_SECS} seconds",
                l.timeout_secs
            ));
        }
        if l.max_conns == 0 || l.max_conns > MAX_MAX_CONNS {
            return Err(format!(
                "--max-conns {} is out of range; write 1 to {MAX_MAX_CONNS}",
                l.max_conns
            ));
        }
        if l.per_source == 0 || l.per_source > l.max_conns {
            return Err(format!(
                "--per-source {} is out of range; write 1 to --max-conns ({})",
                l.per_source, l.max_conns
            ));
        }
        Ok(())
    }
}

/// A function name: 1 to 63 lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit (it appears in URLs, metric labels and log tags).
pub fn check_name(name: &str) -> Result<(), String> {
    let good = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if good {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a function name: use 1 to {MAX_NAME_LEN} lowercase letters, digits, '-' or '_', starting with a letter or digit"
        ))
    }
}

fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_ARG_LEN {
        return Err(format!(
            "{what} has {} bytes, more than the limit of {MAX_ARG_LEN}",
            text.len()
        ));
    }
    if text.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> DeployRequest {
        DeployRequest {
            name: name.into(),
            port: 8888,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let spec = req("toupper").to_spec().unwrap();
        assert_eq!(spec.command, vec!["toupper"]);
        assert_eq!(spec.mode, Mode::Spawn);
        assert_eq!(spec.limits.max, DEFAULT_MAX);
        assert_eq!(spec.limits.per_source, DEFAULT_MAX_CONNS);
        assert!(spec.placed_on("anywhere"));
        let mut r = req("p");
        r.mode = Mode::Pool;
        r.min = Some(6);
        let spec = r.to_spec().unwrap();
        assert_eq!((spec.limits.min, spec.limits.max), (6, 6));
    }

    #[test]
    fn bad_requests_are_refused_clearly() {
        let cases: Vec<(DeployRequest, &str)> = vec![
            (req("Bad"), "not a function name"),
            (req("_x"), "not a function name"),
            (
                DeployRequest {
                    port: 0,
                    ..req("a")
                },
                "--port is required",
            ),
            (
                DeployRequest {
                    min: Some(1),
                    ..req("a")
                },
                "pool mode",
            ),
            (
                DeployRequest {
                    mode: Mode::Pool,
                    min: Some(3),
                    max: Some(2),
                    ..req("a")
                },
                "--min 3 is more than --max 2",
            ),
            (
                DeployRequest {
                    mode: Mode::Pool,
                    max: Some(0),
                    ..req("a")
                },
                "--max 0 is out of range",
            ),
            (
                DeployRequest {
                    timeout: Some(0),
                    ..req("a")
                },
                "--timeout 0",
            ),
            (
                DeployRequest {
                    max_conns: Some(2),
                    per_source: Some(3),
                    ..req("a")
                },
                "--per-source 3",
            ),
            (
                DeployRequest {
                    command: vec!["a\0b".into()],
                    ..req("a")
                },
                "NUL",
            ),
            (
                DeployRequest {
                    env: [("1X".to_owned(), "v".to_owned())].into(),
                    ..req("a")
                },
                "not an environment variable name",
            ),
            (
                DeployRequest {
                    on: vec!["n1".into(), "n1".into()],
                    ..req("a")
                },
                "twice",
            ),
        ];
        for (r, want) in cases {
            let e = r.to_spec().unwrap_err();
            assert!(e.contains(want), "{r:?}: {e}");
        }
    }

    #[test]
    fn restart_only_for_what_cannot_change_live() {
        let a = req("a").to_spec().unwrap();
        let mut b = a.clone();
        b.limits.max_conns = 3;
        b.limits.per_source = 3;
        assert!(!a.needs_restart(&b));
        b.port = 9999;
        assert!(a.needs_restart(&b));
    }
}
