//! The registry of deployed functions, kept in SQLite in the service's data directory
//! (`functions.db`), so every function listens again after `nuage up` restarts.
//!
//! Every node of a cluster keeps the whole registry. Each entry carries a version
//! `(counter, origin node)`; a change (deploy, scale, removal) gets a counter above every
//! one its author has seen, and a node keeps, per name, the entry with the highest
//! version (last writer wins, ties broken by node name). Removal leaves a tombstone (an
//! entry without spec), so a node that missed it cannot bring the function back. Nodes
//! compare digests of their registries and pull each other's entries when they differ,
//! so all nodes end with the same registry.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use nuage_core::datadir::open_sqlite;
use serde::{Deserialize, Serialize};

use crate::spec::FunctionSpec;

/// File name of the registry inside the service's data dir.
pub const DB_FILE: &str = "functions.db";
/// Most tombstones kept; the oldest are forgotten beyond it.
pub const MAX_TOMBSTONES: usize = 1024;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE functions (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        origin TEXT NOT NULL,
        updated_at REAL NOT NULL,
        spec TEXT
    );
"];

/// One registry entry: a function's spec, or its tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub version: u64,
    /// The node that made this version.
    pub origin: String,
    /// Unix time of the change, seconds.
    pub updated_at: f64,
    /// `None`: the function was removed.
    pub spec: Option<FunctionSpec>,
}

impl Entry {
    /// Whether `self` wins over `other` for the same name.
    pub fn supersedes(&self, other: &Entry) -> bool {
        (self.version, &self.origin) > (other.version, &other.origin)
    }
}

pub struct Registry {
    conn: rusqlite::Connection,
    entries: BTreeMap<String, Entry>,
}

impl Registry {
    pub fn open(dir: &Path) -> anyhow::Result<Registry> {
        let conn = open_sqlite(&dir.join(DB_FILE), MIGRATIONS)?;
        let mut entries = BTreeMap::new();
        {
            let mut stmt =
                conn.prepare("SELECT name, version, origin, updated_at, spec FROM functions")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?;
            for row in rows {
                let (name, version, origin, updated_at, spec) = row?;
                let spec = match spec {
                    Some(json) => Some(serde_json::from_str::<FunctionSpec>(&json).with_context(
                        || format!("{}: function `{name}` has an unreadable spec", DB_FILE),
                    )?),
                    None => None,
                };
                entries.insert(
                    name.clone(),
                    Entry {
                        name,
                        version: version as u64,
                        origin,
                        updated_at,
                        spec,
                    },
                );
            }
        }
        Ok(Registry { conn, entries })
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The function `name` if it is deployed (not removed).
    pub fn spec(&self, name: &str) -> Option<&FunctionSpec> {
        self.entries.get(name).and_then(|e| e.spec.as_ref())
    }

    /// Every deployed function, by name.
    pub fn specs(&self) -> impl Iterator<Item = &FunctionSpec> {
        self.entries.values().filter_map(|e| e.spec.as_ref())
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.values().cloned().collect()
    }

    /// The highest version counter known.
    pub fn max_version(&self) -> u64 {
        self.entries.values().map(|e| e.version).max().unwrap_or(0)
    }

    /// A digest of every (name, version, origin): equal registries have equal digests.
    pub fn digest(&self) -> String {
        // FNV-1a: stable across builds and machines (unlike std's hasher).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for e in self.entries.values() {
            for part in [
                e.name.as_bytes(),
                &e.version.to_le_bytes(),
                e.origin.as_bytes(),
                b"\0",
            ] {
                for b in part {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        format!("{h:016x}")
    }

    /// Keeps `entry` if it supersedes what is known of its name; returns whether it did.
    pub fn merge(&mut self, entry: Entry) -> anyhow::Result<bool> {
        if let Some(known) = self.entries.get(&entry.name) {
            if !entry.supersedes(known) {
                return Ok(false);
            }
        }
        let spec = entry.spec.as_ref().map(serde_json::to_string).transpose()?;
        self.conn.execute(
            "INSERT INTO functions(name, version, origin, updated_at, spec) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET version = ?2, origin = ?3, updated_at = ?4, spec = ?5",
            rusqlite::params![entry.name, entry.version as i64, entry.origin, entry.updated_at, spec],
        )?;
        self.entries.insert(entry.name.clone(), entry);
        self.prune_tombstones()?;
        Ok(true)
    }

    fn prune_tombstones(&mut self) -> anyhow::Result<()> {
        let mut tombs: Vec<(f64, String)> = self
            .entries
            .values()
            .filter(|e| e.spec.is_none())
            .map(|e| (e.updated_at, e.name.clone()))
            .collect();
        if tombs.len() <= MAX_TOMBSTONES {
            return Ok(());
        }
        tombs.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, name) in &tombs[..tombs.len() - MAX_TOMBSTONES] {
            self.conn
                .execute("DELETE FROM functions WHERE name = ?1", [name])?;
            self.entries.remove(name);
        }
        Ok(())
    }

    /// Writes the write-ahead log into the database file (at shutdown).
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .context("checkpointing functions.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DeployRequest;

    fn entry(name: &str, version: u64, origin: &str, port: Option<u16>) -> Entry {
        Entry {
            name: name.into(),
            version,
            origin: origin.into(),
            updated_at: version as f64,
            spec: port.map(|port| {
                DeployRequest {
                    name: name.into(),
                    port,
                    ..Default::default()
                }
                .to_spec()
                .unwrap()
            }),
        }
    }

    #[test]
    fn last_writer_wins_and_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = Registry::open(tmp.path()).unwrap();
        assert!(r.merge(entry("a", 1, "n1", Some(8001))).unwrap());
        assert!(r.merge(entry("a", 2, "n1", Some(8002))).unwrap());
        assert!(
            !r.merge(entry("a", 1, "n2", Some(8003))).unwrap(),
            "older loses"
        );
        assert!(
            r.merge(entry("a", 2, "n2", Some(8004))).unwrap(),
            "tie: higher node wins"
        );
        assert!(!r.merge(entry("a", 2, "n1", Some(8005))).unwrap());
        assert!(r.merge(entry("b", 3, "n1", Some(9000))).unwrap());
        assert!(r.merge(entry("b", 4, "n2", None)).unwrap(), "removal");
        assert_eq!(r.spec("a").unwrap().port, 8004);
        assert!(r.spec("b").is_none());
        assert_eq!(r.max_version(), 4);
        let digest = r.digest();
        drop(r);

        let r = Registry::open(tmp.path()).unwrap();
        assert_eq!(r.spec("a").unwrap().port, 8004);
        assert!(r.get("b").unwrap().spec.is_none(), "tombstone kept");
        assert_eq!(r.specs().count(), 1);
        assert_eq!(r.digest(), digest);
    }

    #[test]
    fn digests_tell_registries_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = Registry::open(&tmp.path().join("a").tap_create()).unwrap();
        let mut b = Registry::open(&tmp.path().join("b").tap_create()).unwrap();
        assert_eq!(a.digest(), b.digest());
        a.merge(entry("f", 1, "n1", Some(1))).unwrap();
        assert_ne!(a.digest(), b.digest());
        b.merge(entry("f", 1, "n1", Some(1))).unwrap();
        assert_eq!(a.digest(), b.digest());
    }

    trait TapCreate {
        fn tap_create(self) -> Self;
    }
    impl TapCreate for std::path::PathBuf {
        fn tap_create(self) -> Self {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
