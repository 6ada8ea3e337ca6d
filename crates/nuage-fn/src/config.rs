//! The `[functions]` table of nuage.toml, and the service-wide bounds.
//!
//! Every key has a default (see docs/functions.md and docs/config.md); values are range
//! checked while parsing, so a bad one names the file, the line and the key.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Name of the table in nuage.toml (registered in `nuage_core::config::SECTIONS`).
pub const SECTION: &str = "functions";

/// Longest request line, in bytes, newline included (`max_line`).
pub const DEFAULT_MAX_LINE: u64 = 1024;
/// Longest response line a pool instance may write, newline included (`max_response`).
pub const DEFAULT_MAX_RESPONSE: u64 = 64 * 1024;
/// A connection with no traffic for this long is closed (`connection_idle_timeout`).
pub const DEFAULT_CONNECTION_IDLE_SECS: u64 = 60;

/// Most functions a cluster's registry holds (removed ones aside).
pub const MAX_FUNCTIONS: usize = 256;
/// Most directories in `path`.
pub const MAX_PATH_DIRS: usize = 32;

/// The `[functions]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FnConfig {
    /// Longest request line in bytes, newline included (16 B – 1 MiB).
    pub max_line: Bounded<16, { 1 << 20 }>,
    /// Longest response line of a pool instance, newline included (16 B – 16 MiB).
    pub max_response: Bounded<16, { 16 << 20 }>,
    /// Seconds without traffic after which a connection is closed (1 – 86400).
    pub connection_idle_timeout: Bounded<1, 86_400>,
    /// The address function ports (and the relay) listen on; default: the IP of the node
    /// API (`listen.api`).
    pub listen_ip: Option<IpAddr>,
    /// Port of the relay, where other machines hand connections over; 0 (the default)
    /// picks a free port, which the node tells its peers.
    pub relay_port: u16,
    /// Directories searched, in order, for a function command given by name (before the
    /// directory of the nuage executable and `$PATH`).
    pub path: Vec<PathBuf>,
}

impl Default for FnConfig {
    fn default() -> Self {
        FnConfig {
            max_line: Bounded(DEFAULT_MAX_LINE),
            max_response: Bounded(DEFAULT_MAX_RESPONSE),
            connection_idle_timeout: Bounded(DEFAULT_CONNECTION_IDLE_SECS),
            listen_ip: None,
            relay_port: 0,
            path: Vec::new(),
        }
    }
}

impl FnConfig {
    pub fn max_line(&self) -> usize {
        self.max_line.0 as usize
    }
    pub fn max_response(&self) -> usize {
        self.max_response.0 as usize
    }
    pub fn connection_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.connection_idle_timeout.0)
    }
    /// Checks what serde cannot: the number of directories.
    pub fn check(&self) -> Result<(), String> {
        if self.path.len() > MAX_PATH_DIRS {
            return Err(format!(
                "functions.path has {} directories, more than the limit of {MAX_PATH_DIRS}",
                self.path.len()
            ));
        }
        Ok(())
    }
}

/// An integer that must lie in `LO..=HI`; parsing says so otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const LO: u64, const HI: u64>(pub u64);

impl<const LO: u64, const HI: u64> fmt::Display for Bounded<LO, HI> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for Bounded<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v < LO as i64 || v as u64 > HI {
            return Err(de::Error::custom(format!(
                "{v} is out of range; write a whole number from {LO} to {HI}"
            )));
        }
        Ok(Bounded(v as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_ranges() {
        let c: FnConfig = toml::from_str("").unwrap();
        assert_eq!(c, FnConfig::default());
        assert_eq!(c.max_line(), 1024);
        let c: FnConfig = toml::from_str("max_line = 4096\npath = [\"/opt/f\"]").unwrap();
        assert_eq!(c.max_line(), 4096);
        assert_eq!(c.path, vec![PathBuf::from("/opt/f")]);
        let e = toml::from_str::<FnConfig>("max_line = 3").unwrap_err();
        assert!(e.to_string().contains("from 16 to 1048576"), "{e}");
        let e = toml::from_str::<FnConfig>("max_lien = 3").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
