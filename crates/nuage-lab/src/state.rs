//! What the lab remembers on disk: one directory per lab under the lab root, holding
//! `lab.json` and one directory per machine (its UTS pin, node config, data and log).
//!
//! `lab.json` is written before any system object is made, so a lab left half-built by
//! a crash can always be found and removed. Creation and removal hold an exclusive lock
//! on the root, which also serialises the choice of subnets between parallel tests.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Environment variable overriding where labs live.
pub const ROOT_ENV: &str = "NUAGE_LAB_ROOT";
/// Where labs live by default.
pub const DEFAULT_ROOT: &str = "/var/lib/nuage/labs";
const STATE_FILE: &str = "lab.json";
const LOCK_FILE: &str = ".lock";

/// The persistent description of a lab; everything else derives from it (see `plan`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    pub name: String,
    /// K in 10.213.K.0/24.
    pub index: u8,
    /// Machines are n1..=n<machines>.
    pub machines: usize,
    /// Unix seconds.
    pub created_at: u64,
    /// The partition in force, as machine names per side; `None` when healed.
    #[serde(default)]
    pub partition: Option<Vec<Vec<String>>>,
}

/// The lab root: `$NUAGE_LAB_ROOT` or [`DEFAULT_ROOT`].
pub fn root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

pub fn lab_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// Takes the root's lock (blocking), creating the root if needed.
pub fn lock(root: &Path) -> anyhow::Result<Flock<File>> {
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the lab root {}", root.display()))?;
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", path.display()))
}

pub fn load(root: &Path, name: &str) -> anyhow::Result<Option<LabState>> {
    let path = lab_dir(root, name).join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let state: LabState = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged; remove the lab with `nuage lab down --name {name}`",
            path.display()
        )
    })?;
    if state.name != name {
        bail!(
            "{} describes lab `{}`, not `{name}`",
            path.display(),
            state.name
        );
    }
    Ok(Some(state))
}

/// Writes the state atomically (temporary file, then rename).
pub fn save(root: &Path, state: &LabState) -> anyhow::Result<()> {
    let dir = lab_dir(root, &state.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE)).context("cannot replace lab.json")?;
    Ok(())
}

/// Every lab under the root, sorted by name. Directories without a readable `lab.json`
/// are skipped.
pub fn list(root: &Path) -> anyhow::Result<Vec<LabState>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    let mut labs = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
            && let Ok(Some(state)) = load(root, name)
        {
            labs.push(state);
        }
    }
    labs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(labs)
}
