//! `volume heal NAME split-brain …`: an administrator resolves a file in split-brain
//! (every copy accused by another) by naming the copy to keep, as with gluster's CLI:
//! the bigger file, the one modified last, or the copy on a given brick. The other
//! copies are made equal to it (data, owner, mode, times) and the markers of data and
//! metadata are lowered on every copy. nuage never does this by itself.
//!
//! Regular files only: a directory in split-brain (names changed on both sides while the
//! copies could not see each other) is resolved by fixing one copy on its brick.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::conn::BrickConn;
use crate::client::heal::Seen;
use crate::client::replica::{QuorumType, Replica};
use crate::client::settle;
use crate::client::spec::VolumeSpec;
use crate::gfid::Gfid;
use crate::markers::Kind;
use crate::proto::{Entry, Errno, Op, Reply};

/// How long a brick may take to answer before it counts as not connected.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Most components in a path given to resolve (a bound on the walk).
const MAX_PATH_COMPONENTS: usize = 4096;

/// Which copy wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// The largest copy (refused if the largest size is shared).
    BiggerFile,
    /// The copy modified last (refused if that time is shared).
    LatestMtime,
    /// The copy on this brick (`HOST:/path`, as `volume info` names it).
    SourceBrick(String),
}

/// A file as the administrator names it: a path from the volume root, or `gfid:<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileName {
    Path(String),
    Gfid(Gfid),
}

impl FileName {
    /// Parses `/dir/file` or `gfid:<uuid>`.
    pub fn parse(s: &str) -> anyhow::Result<FileName> {
        if let Some(u) = s.strip_prefix("gfid:") {
            return Gfid::parse(u)
                .map(FileName::Gfid)
                .with_context(|| format!("`{s}` is not gfid:<uuid>"));
        }
        if !s.starts_with('/') || s.contains('\0') {
            bail!("`{s}` is neither a path from the volume root (/dir/file) nor gfid:<uuid>");
        }
        Ok(FileName::Path(s.to_owned()))
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileName::Path(p) => f.write_str(p),
            FileName::Gfid(g) => write!(f, "gfid:{}", g.to_uuid()),
        }
    }
}

/// The volume's replica sets, connected (lazily) for resolution.
pub struct Sets {
    spec: VolumeSpec,
    sets: Vec<Arc<Replica>>,
}

impl Sets {
    pub fn connect(spec: &VolumeSpec, client: &str) -> anyhow::Result<Sets> {
        spec.validate().map_err(anyhow::Error::msg)?;
        if spec.replica < 2 {
            bail!("Volume {} is not of type replicate", spec.name);
        }
        let sets = (0..spec.subvolume_count())
            .map(|k| {
                let conns = spec.connect_subvolume(k, client, PING_TIMEOUT);
                let ids = spec.subvolume(k).iter().map(|b| b.id).collect();
                Replica::new(conns, ids, QuorumType::None)
            })
            .collect();
        Ok(Sets {
            spec: spec.clone(),
            sets,
        })
    }

    /// Resolves one file in split-brain by `policy`. The error says why not (not in
    /// split-brain, not found, the policy cannot choose…), in gluster's words where it
    /// has some.
    pub async fn resolve(&self, policy: &Policy, file: &FileName) -> anyhow::Result<()> {
        let (k, g) = match file {
            FileName::Gfid(g) => (self.holder(*g).await?, *g),
            FileName::Path(p) => self.find(p).await?,
        };
        let set = &self.sets[k];
        let seen = self.copies(set, g).await;
        if seen.len() < set.n() {
            bail!("not every copy of the file answers; bring its bricks up first");
        }
        let first = &seen[0].entry;
        if !first.attr.is_file() {
            bail!(
                "only regular files are resolved this way; for a directory, fix one copy on its brick"
            );
        }
        if !in_split_brain(set.ids(), &seen) {
            bail!("File not in split-brain.");
        }
        let from = self.choose(k, &seen, policy)?;
        let bricks: Vec<Arc<BrickConn>> = (0..set.n()).map(|i| set.brick(i).clone()).collect();
        settle::make_equal(&bricks, g, &seen, from)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
        tracing::info!("split-brain of {g} resolved from copy {from} ({policy:?})");
        Ok(())
    }

    /// Resolves every file in split-brain that brick `brick` (`HOST:/path`) has a copy of,
    /// from that copy. Returns the files healed and those that could not be.
    pub async fn resolve_all_from(
        &self,
        brick: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<(String, String)>)> {
        let (k, i) = self.brick_at(brick)?;
        let report = crate::client::heal_index::run_on(
            &self.spec,
            &format!("split-brain-{}", std::process::id()),
            false,
            Some(&[self.spec.subvolume(k)[i].id]),
        )
        .await?;
        let policy = Policy::SourceBrick(brick.to_owned());
        let (mut healed, mut failed) = (Vec::new(), Vec::new());
        for b in report {
            for e in b
                .entries
                .into_iter()
                .filter(|e| e.state == crate::client::heal_index::State::SplitBrain)
            {
                // Paths as the heal index reports them: `/dir/file`, or `<gfid:…>`.
                let text = e.path.trim_start_matches('<').trim_end_matches('>');
                let name = match FileName::parse(text) {
                    Ok(n) => n,
                    Err(err) => {
                        failed.push((e.path, err.to_string()));
                        continue;
                    }
                };
                match self.resolve(&policy, &name).await {
                    Ok(()) => healed.push(e.path),
                    Err(err) => failed.push((e.path, err.to_string())),
                }
            }
        }
        Ok((healed, failed))
    }

    /// The copy that wins: its index in the set.
    fn choose(&self, k: usize, seen: &[Seen], policy: &Policy) -> anyhow::Result<usize> {
        let best_by = |key: &dyn Fn(&Entry) -> (i64, u32), what: &str| -> anyhow::Result<usize> {
            let best = seen.iter().map(|s| key(&s.entry)).max().expect("copies");
            let winners: Vec<usize> = seen
                .iter()
                .filter(|s| key(&s.entry) == best)
                .map(|s| s.index)
                .collect();
            match winners[..] {
                [one] => Ok(one),
                _ => bail!("the copies have the same {what}: choose with another policy"),
            }
        };
        match policy {
            Policy::BiggerFile => best_by(
                &|e| (i64::try_from(e.attr.size).unwrap_or(i64::MAX), 0),
                "size",
            ),
            Policy::LatestMtime => best_by(&|e| (e.attr.mtime.sec, e.attr.mtime.nsec), "mtime"),
            Policy::SourceBrick(b) => {
                let (bk, bi) = self.brick_at(b)?;
                if bk != k {
                    bail!("{b} holds no copy of this file");
                }
                Ok(bi)
            }
        }
    }

    /// (replica set, index in the set) of brick `HOST:/path`.
    fn brick_at(&self, brick: &str) -> anyhow::Result<(usize, usize)> {
        for k in 0..self.spec.subvolume_count() {
            for (i, b) in self.spec.subvolume(k).iter().enumerate() {
                if format!("{}:{}", b.host, b.path) == brick {
                    return Ok((k, i));
                }
            }
        }
        bail!("{brick} is not a brick of volume {}", self.spec.name)
    }

    /// Every copy of `g` in `set` that answers, with its entry.
    async fn copies(&self, set: &Replica, g: Gfid) -> Vec<Seen> {
        let mut seen = Vec::new();
        for i in 0..set.n() {
            if let Ok(Reply::Entry(e)) = set.brick(i).req(Op::Stat { gfid: g, fd: None }).await {
                if !e.is_link_file() {
                    seen.push(Seen { index: i, entry: e });
                }
            }
        }
        seen
    }

    /// The replica set holding file `g`'s data.
    async fn holder(&self, g: Gfid) -> anyhow::Result<usize> {
        for (k, set) in self.sets.iter().enumerate() {
            if !self.copies(set, g).await.is_empty() {
                return Ok(k);
            }
        }
        bail!(
            "Lookup failed on gfid:{}: No such file or directory",
            g.to_uuid()
        )
    }

    /// The replica set and id of the file at `path`: directories are on every brick, so
    /// the walk asks any brick that answers; the last name is asked of every set.
    async fn find(&self, path: &str) -> anyhow::Result<(usize, Gfid)> {
        let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let Some((last, dirs)) = names.split_last() else {
            bail!("{path} is the volume's root, not a file");
        };
        if names.len() > MAX_PATH_COMPONENTS {
            bail!("{path}: more than {MAX_PATH_COMPONENTS} components");
        }
        let lookup_failed = |e: Errno| {
            anyhow::anyhow!(
                "Lookup failed on {path}: {}",
                std::io::Error::from_raw_os_error(e.0)
            )
        };
        let mut parent = Gfid::ROOT;
        for d in dirs {
            let e = self
                .lookup_anywhere(parent, d)
                .await
                .map_err(lookup_failed)?;
            if !e.attr.is_dir() {
                return Err(lookup_failed(Errno(libc::ENOTDIR)));
            }
            parent = e
                .meta
                .gfid
                .ok_or(Errno(libc::ESTALE))
                .map_err(lookup_failed)?;
        }
        for (k, set) in self.sets.iter().enumerate() {
            for i in 0..set.n() {
                let op = Op::Lookup {
                    parent,
                    name: last.as_bytes().to_vec(),
                };
                if let Ok(Reply::Entry(e)) = set.brick(i).req(op).await {
                    if !e.is_link_file() {
                        if let Some(g) = e.meta.gfid {
                            return Ok((k, g));
                        }
                    }
                }
            }
        }
        Err(lookup_failed(Errno(libc::ENOENT)))
    }

    /// `name` in directory `parent`, from the first brick that answers (ENOENT if every
    /// brick that answers lacks it).
    async fn lookup_anywhere(&self, parent: Gfid, name: &str) -> Result<Entry, Errno> {
        let mut err = Errno(libc::ENOTCONN);
        for set in &self.sets {
            for i in 0..set.n() {
                let op = Op::Lookup {
                    parent,
                    name: name.as_bytes().to_vec(),
                };
                match set.brick(i).req(op).await {
                    Ok(Reply::Entry(e)) => return Ok(e),
                    Ok(_) => err = Errno(libc::EIO),
                    Err(e) => {
                        if e.0 == libc::ENOENT || err.0 == libc::ENOTCONN {
                            err = e;
                        }
                    }
                }
            }
        }
        Err(err)
    }
}

/// Whether every copy is accused by another of missing data or metadata changes.
fn in_split_brain(ids: &[u32], seen: &[Seen]) -> bool {
    let markers: Vec<_> = seen.iter().map(|s| (s.index, &s.entry.meta.afr)).collect();
    crate::client::replica::unaccused(ids, &markers, &[Kind::Data, Kind::Metadata]).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(index: usize, accuses: &[(u32, [u32; 3])]) -> Seen {
        let afr = crate::markers::AfrState {
            dirty: [0; 3],
            pending: accuses.to_vec(),
        };
        crate::client::heal::seen_file(index, 0, 0, 0, afr)
    }

    #[test]
    fn split_brain_is_every_copy_accused_of_data_or_metadata() {
        let ids = [7, 9];
        let both = [copy(0, &[(9, [1, 0, 0])]), copy(1, &[(7, [0, 2, 0])])];
        assert!(in_split_brain(&ids, &both));
        let one_way = [copy(0, &[(9, [1, 0, 0])]), copy(1, &[])];
        assert!(!in_split_brain(&ids, &one_way));
        // Entry changes are a directory's matter.
        let entries = [copy(0, &[(9, [0, 0, 1])]), copy(1, &[(7, [0, 0, 1])])];
        assert!(!in_split_brain(&ids, &entries));
    }

    #[test]
    fn files_are_named_by_path_or_gfid() {
        assert_eq!(
            FileName::parse("/d/f").unwrap(),
            FileName::Path("/d/f".into())
        );
        let g = Gfid::random();
        let text = format!("gfid:{}", g.to_uuid());
        assert_eq!(FileName::parse(&text).unwrap(), FileName::Gfid(g));
        assert_eq!(FileName::parse(&text).unwrap().to_string(), text);
        assert!(FileName::parse("d/f").is_err());
        assert!(FileName::parse("gfid:nope").is_err());
    }
}
