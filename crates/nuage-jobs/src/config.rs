//! Options of the manager and the worker, their defaults and bounds, and the `[jobs]`
//! table of `nuage.toml`. Every default here is documented in docs/jobs.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Port of the manager (the gRPC default, as in the examples of gRPC itself).
pub const DEFAULT_PORT: u16 = 50051;
/// Where `nuage jobs manager` listens without `--listen`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT);
/// Where clients and workers look for the manager without `--manager`/`NUAGE_MANAGER`.
pub const DEFAULT_MANAGER_URL: &str = "http://127.0.0.1:50051";
/// Environment variable naming the manager.
pub const MANAGER_ENV: &str = "NUAGE_MANAGER";

/// Times a job is given to a worker before it is marked failed, when its workers keep
/// being lost.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts one may configure.
pub const MAX_MAX_ATTEMPTS: u32 = 100;
/// Silence after which a worker is lost and its task requeued.
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest and longest worker timeout accepted.
pub const MIN_WORKER_TIMEOUT: Duration = Duration::from_millis(500);
pub const MAX_WORKER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output kept per stream (stdout, stderr) of each job; the rest is counted and dropped.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// Largest output limit one may configure per stream.
pub const MAX_MAX_OUTPUT_BYTES: u64 = 16 << 20;
/// Between SIGTERM and SIGKILL when a running job is cancelled.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Jobs waiting in the queue at most; Submit beyond it is RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_QUEUED: usize = 100_000;
/// Finished jobs kept in the history; older ones are deleted.
pub const DEFAULT_HISTORY_LIMIT: usize = 100_000;
/// Workers registered at once, at most.
pub const MAX_WORKERS: usize = 1024;

/// Job names: 1 to this many characters.
pub const MAX_NAME_LEN: usize = 128;
/// Arguments of a command, at most.
pub const MAX_ARGS: usize = 4096;
/// Bytes of a command line (all arguments), at most.
pub const MAX_COMMAND_BYTES: usize = 256 << 10;
/// Jobs one `submit --array N` queues at most.
pub const MAX_ARRAY: u32 = 10_000;
/// Jobs one `List` returns by default and at most.
pub const DEFAULT_LIST_LIMIT: u32 = 1000;
pub const MAX_LIST_LIMIT: u32 = 100_000;
/// How long a client waits for a connection to the manager.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a unary reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `submit --wait`, `logs --follow` and `submit --array --wait` keep trying to
/// reach a manager that went away mid-stream (a restart) before giving up.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Waits between reconnection attempts: doubling from the first to the last.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Duration of the worker's default task.
pub const DEFAULT_TASK_DURATION: Duration = Duration::from_secs(1);

/// What the manager needs to run.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub listen: SocketAddr,
    pub max_attempts: u32,
    pub worker_timeout: Duration,
    pub max_output_bytes: u64,
    pub kill_grace: Duration,
    pub max_queued: usize,
    pub history_limit: usize,
    /// Where to write traces (CTF and Trace Event JSON), if anywhere.
    pub trace_dir: Option<PathBuf>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            listen: DEFAULT_LISTEN,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            kill_grace: DEFAULT_KILL_GRACE,
            max_queued: DEFAULT_MAX_QUEUED,
            history_limit: DEFAULT_HISTORY_LIMIT,
            trace_dir: None,
        }
    }
}

impl ManagerOptions {
    /// Checks every bound; the message names the option.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_attempts == 0 || self.max_attempts > MAX_MAX_ATTEMPTS {
            bail!(
                "max attempts must be 1 to {MAX_MAX_ATTEMPTS}, not {}",
                self.max_attempts
            );
        }
        if self.worker_timeout < MIN_WORKER_TIMEOUT || self.worker_timeout > MAX_WORKER_TIMEOUT {
            bail!(
                "the worker timeout must be {} to {}, not {}",
                format_duration(MIN_WORKER_TIMEOUT),
                format_duration(MAX_WORKER_TIMEOUT),
                format_duration(self.worker_timeout)
            );
        }
        if self.max_output_bytes == 0 || self.max_output_bytes > MAX_MAX_OUTPUT_BYTES {
            bail!(
                "the output limit must be 1 to {MAX_MAX_OUTPUT_BYTES} bytes, not {}",
                self.max_output_bytes
            );
        }
        if self.max_queued == 0 || self.history_limit == 0 {
            bail!("the queue and history limits must be at least 1");
        }
        Ok(())
    }

    /// How often workers heartbeat: a fifth of the timeout, so four may be lost.
    pub fn heartbeat_interval(&self) -> Duration {
        self.worker_timeout / 5
    }

    /// How long a worker keeps a task without an acknowledged heartbeat: half the
    /// timeout, so it has stopped the task well before the manager requeues it.
    pub fn lease(&self) -> Duration {
        self.worker_timeout / 2
    }
}

/// The `[jobs]` table of `nuage.toml`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// The node that runs the manager; `nuage up` on that node starts it.
    pub manager: Option<String>,
    /// Where the manager listens (default 0.0.0.0:50051).
    pub listen: Option<ListenAddr>,
    /// Also run a worker in this node (default false).
    #[serde(default)]
    pub worker: bool,
    pub max_attempts: Option<u32>,
    pub worker_timeout: Option<ConfigDuration>,
    pub max_output_bytes: Option<u64>,
    pub kill_grace: Option<ConfigDuration>,
    pub max_queued: Option<usize>,
    pub history_limit: Option<usize>,
    /// Trace the manager and the worker of this node into this directory.
    pub trace_dir: Option<PathBuf>,
    /// The default task's duration on this node's worker.
    pub default_task_duration: Option<ConfigDuration>,
}

/// `ip:port` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(ListenAddr).map_err(|_| {
            de::Error::custom(format!(
                "`{s}` is not a listen address; write ip:port, e.g. 0.0.0.0:50051"
            ))
        })
    }
}

/// A duration in the configuration: `"500ms"`, `"10s"`, `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(ConfigDuration)
            .map_err(|e| de::Error::custom(e.to_string()))
    }
}

impl JobsSection {
    /// The manager's options: defaults, then this table.
    pub fn manager_options(&self) -> anyhow::Result<ManagerOptions> {
        let d = ManagerOptions::default();
        let opts = ManagerOptions {
            listen: self.listen.map_or(d.listen, |l| l.0),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            worker_timeout: self.worker_timeout.map_or(d.worker_timeout, |t| t.0),
            max_output_bytes: self.max_output_bytes.unwrap_or(d.max_output_bytes),
            kill_grace: self.kill_grace.map_or(d.kill_grace, |t| t.0),
            max_queued: self.max_queued.unwrap_or(d.max_queued),
            history_limit: self.history_limit.unwrap_or(d.history_limit),
            trace_dir: self.trace_dir.clone(),
        };
        opts.validate().map_err(|e| anyhow!("[jobs]: {e}"))?;
        Ok(opts)
    }
}

/// Parses `250ms`, `3s`, `1.5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow!("`{text}` is not a duration; write e.g. 500ms, 10s, 2m"))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "us" | "µs" => 1e-6,
        other => bail!("`{text}`: unknown unit `{other}`; use us, ms, s, m or h"),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        bail!("`{text}` is too long a duration");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `1.5s`, `250ms`, `12us`: short and exact enough for messages and tables.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        let ms = us as f64 / 1000.0;
        if ms < 10.0 {
            format!("{ms:.2}ms")
        } else {
            format!("{ms:.1}ms")
        }
    } else if us < 60_000_000 {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        nuage_core::time::human_duration(d)
    }
}

/// The manager URL: the flag, else `NUAGE_MANAGER`, else the default; `host`,
/// `host:port` and `http://host:port` are accepted.
pub fn manager_url(flag: Option<&str>) -> anyhow::Result<String> {
    let env = std::env::var(MANAGER_ENV).ok().filter(|s| !s.is_empty());
    let raw = flag.map(str::to_owned).or(env);
    match raw {
        None => Ok(DEFAULT_MANAGER_URL.to_owned()),
        Some(s) => normalize_url(&s),
    }
}

/// `host[:port]` or `http://host[:port]` → `http://host:port`.
pub fn normalize_url(text: &str) -> anyhow::Result<String> {
    let t = text.trim().trim_end_matches('/');
    if t.starts_with("https://") {
        bail!("`{text}`: the jobs manager speaks plain gRPC (http://), not TLS");
    }
    let rest = t.strip_prefix("http://").unwrap_or(t);
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        bail!("`{text}` is not a manager address; write host:port or http://host:port");
    }
    let has_port = if rest.starts_with('[') {
        rest.contains("]:")
    } else {
        rest.contains(':')
    };
    let authority = if has_port {
        let port = rest.rsplit(':').next().unwrap_or("");
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            bail!("`{text}`: bad port `{port}`");
        }
        rest.to_owned()
    } else {
        format!("{rest}:{DEFAULT_PORT}")
    };
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "3x", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_format() {
        assert_eq!(format_duration(Duration::from_micros(12)), "12us");
        assert_eq!(format_duration(Duration::from_micros(1234)), "1.23ms");
        assert_eq!(format_duration(Duration::from_millis(250)), "250.0ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500s");
    }

    #[test]
    fn urls_normalize() {
        assert_eq!(normalize_url("n1").unwrap(), "http://n1:50051");
        assert_eq!(normalize_url("10.0.0.1:7").unwrap(), "http://10.0.0.1:7");
        assert_eq!(normalize_url("http://h:9/").unwrap(), "http://h:9");
        assert_eq!(normalize_url("[::1]").unwrap(), "http://[::1]:50051");
        assert_eq!(normalize_url("[::1]:5").unwrap(), "http://[::1]:5");
        for bad in ["", "https://h", "h:0", "h:x", "a b", "h/x"] {
            assert!(normalize_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_are_bounded() {
        let mut o = ManagerOptions::default();
        o.validate().unwrap();
        o.max_attempts = 0;
        assert!(o.validate().unwrap_err().to_string().contains("attempts"));
        o = ManagerOptions {
            worker_timeout: Duration::from_millis(10),
            ..Default::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("timeout"));
        assert!(o.lease() < o.worker_timeout);
    }

    #[test]
    fn section_fills_defaults() {
        let s: JobsSection = toml::from_str("manager = \"n1\"\nworker_timeout = \"3s\"\n").unwrap();
        let o = s.manager_options().unwrap();
        assert_eq!(o.worker_timeout, Duration::from_secs(3));
        assert_eq!(o.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(toml::from_str::<JobsSection>("mangaer = \"n1\"\n").is_err());
    }
}
