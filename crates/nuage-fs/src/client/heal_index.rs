//! `volume heal NAME [info [summary|split-brain]]`: what the bricks' heal indexes list,
//! checked against the copies' markers, and (without `info`) healed — the work gluster's
//! `glfsheal` client does. Runs as a client of the volume, wherever the command runs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::client::conn::BrickConn;
use crate::client::heal::{self, Seen};
use crate::client::replica::{QuorumType, Replica};
use crate::client::settle;
use crate::client::spec::VolumeSpec;
use crate::gfid::Gfid;
use crate::markers::Kind;
use crate::proto::{Errno, Op, Reply};

/// Index entries asked of a brick per request.
const INDEX_BATCH: u32 = 1024;
/// Most index entries one `heal` run looks at per brick (the rest: the next run).
pub const MAX_HEAL_ENTRIES_PER_BRICK: usize = 100_000;
/// How long an unreachable brick may take to answer before it counts as not connected.
const HEAL_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What one file of the index is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Some copy misses changes a source has.
    Pending,
    /// Every copy is accused by another: an administrator must choose.
    SplitBrain,
}

#[derive(Debug, Clone)]
pub struct Listed {
    /// Path from the volume root, or `<gfid:…>` when no path is known.
    pub path: String,
    pub state: State,
}

/// One brick's part of the report: the files its index lists that need heal.
#[derive(Debug, Clone)]
pub struct BrickReport {
    pub brick: String,
    pub connected: bool,
    pub entries: Vec<Listed>,
}

/// Examines every brick's heal index; with `heal`, heals what can be healed first (the
/// report then lists what is left).
pub async fn run(spec: &VolumeSpec, client: &str, heal: bool) -> anyhow::Result<Vec<BrickReport>> {
    run_on(spec, client, heal, None).await
}

/// Like `run`, walking only the indexes of the bricks in `only` (the self-heal daemon
/// of a pool member walks its own bricks').
pub async fn run_on(
    spec: &VolumeSpec,
    client: &str,
    heal: bool,
    only: Option<&[u32]>,
) -> anyhow::Result<Vec<BrickReport>> {
    spec.validate().map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for k in 0..spec.subvolume_count() {
        let set = spec.subvolume(k);
        let walk = |id: u32| only.is_none_or(|o| o.contains(&id));
        if !set.iter().any(|b| walk(b.id)) {
            continue;
        }
        let conns = spec.connect_subvolume(k, client, HEAL_PING_TIMEOUT);
        let r = Replica::new(conns, set.iter().map(|b| b.id).collect(), QuorumType::None);
        for (i, b) in set.iter().enumerate() {
            if !walk(b.id) {
                continue;
            }
            let name = format!("{}:{}", b.host, b.path);
            let gfids = match index_of(r.brick(i)).await {
                Ok(g) => g,
                Err(_) => {
                    out.push(BrickReport {
                        brick: name,
                        connected: false,
                        entries: Vec::new(),
                    });
                    continue;
                }
            };
            let mut entries = Vec::new();
            for g in gfids {
                if let Some(state) = examine(&r, g, heal).await {
                    entries.push(Listed {
                        path: path_of(&r, i, g).await,
                        state,
                    });
                }
            }
            out.push(BrickReport {
                brick: name,
                connected: true,
                entries,
            });
        }
    }
    Ok(out)
}

async fn index_of(b: &BrickConn) -> Result<BTreeSet<Gfid>, Errno> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        let r = b
            .req(Op::IndexList {
                after,
                max: INDEX_BATCH,
            })
            .await?;
        let Reply::Index { gfids, more } = r else {
            return Err(Errno(libc::EIO));
        };
        after = gfids.last().copied();
        out.extend(gfids);
        if !more || after.is_none() || out.len() >= MAX_HEAL_ENTRIES_PER_BRICK {
            return Ok(out);
        }
    }
}

/// The state of file `g` per its copies' markers (None: nothing to heal), healing it
/// first when asked.
async fn examine(r: &Replica, g: Gfid, heal_it: bool) -> Option<State> {
    let mut state = None;
    for attempt in 0..2 {
        let seen = stat_copies(r, g).await;
        let first = seen.first()?;
        let kinds: &[Kind] = if first.entry.attr.is_dir() {
            &[Kind::Metadata, Kind::Entry]
        } else {
            &[Kind::Data, Kind::Metadata]
        };
        let markers: Vec<_> = seen.iter().map(|s| (s.index, &s.entry.meta.afr)).collect();
        let accused = seen.iter().any(|s| {
            (0..r.n()).any(|j| {
                j != s.index
                    && kinds
                        .iter()
                        .any(|k| s.entry.meta.afr.accuses(r.ids()[j], *k))
            })
        });
        let bricks: Vec<Arc<BrickConn>> = (0..r.n()).map(|i| r.brick(i).clone()).collect();
        if !accused {
            // A change begun and never confirmed, abandoned by its client: settled.
            if !settle::abandoned(&seen, r.n(), SystemTime::now()) {
                if heal_it && attempt == 0 && settle::data_dirty(&seen, r.n()) {
                    // A writer still in its data transaction holds the file's lock
                    // (replica/tx.rs). Once heal holds it, `dirty` still raised for data
                    // was left by a writer that is gone (its lock went with its
                    // connection): settled now, whatever the bricks' clocks say.
                    let settled = r.under_lock(g, true, settle_if_left(r, g, &bricks));
                    if let Err(e) = settled.await {
                        tracing::warn!("settling {g}: {}", e.describe());
                    }
                    continue;
                }
                return None;
            }
            state = Some(State::Pending);
            if !heal_it || attempt == 1 {
                break;
            }
            if let Err(e) = settle::settle(&bricks, g, &seen).await {
                tracing::warn!("settling {g}: {}", e.describe());
            }
            continue;
        }
        // Reported, not logged: `heal info` lists split-brain itself.
        let sources = r.unaccused(&markers, kinds);
        if sources.is_empty() {
            return Some(State::SplitBrain);
        }
        state = Some(State::Pending);
        if !heal_it || attempt == 1 {
            break;
        }
        let sinks = heal::sinks(r.ids(), &seen, &sources);
        if !sinks.is_empty() {
            // Under the file's lock, as heal on access (replica.rs).
            let healed = r.under_lock(
                g,
                true,
                heal::heal(&bricks, r.ids(), g, &seen, sources[0], &sinks),
            );
            if let Err(e) = healed.await {
                tracing::warn!("heal of {g}: {}", e.describe());
            }
        }
        if first.entry.attr.is_dir() {
            for sink in heal::entry_sinks(r.ids(), &seen) {
                if let Err(e) = heal::heal_entries(&bricks, r.ids(), g, &seen, sink).await {
                    tracing::warn!("entry heal of {g}: {}", e.describe());
                }
            }
        }
    }
    state
}

/// File `g` as each copy that answers sees it.
async fn stat_copies(r: &Replica, g: Gfid) -> Vec<Seen> {
    let mut seen = Vec::new();
    for i in 0..r.n() {
        if let Ok(Reply::Entry(e)) = r.brick(i).req(Op::Stat { gfid: g, fd: None }).await {
            seen.push(Seen { index: i, entry: e });
        }
    }
    seen
}

/// Under the file's lock: settles `g` if its copies still show a data change begun and
/// never confirmed, with nobody accused.
async fn settle_if_left(r: &Replica, g: Gfid, bricks: &[Arc<BrickConn>]) -> Result<(), Errno> {
    let seen = stat_copies(r, g).await;
    let markers: Vec<_> = seen.iter().map(|s| (s.index, &s.entry.meta.afr)).collect();
    let kinds = [Kind::Data, Kind::Metadata];
    let unaccused = r.unaccused(&markers, &kinds).len() == seen.len();
    if unaccused && settle::data_dirty(&seen, r.n()) {
        settle::settle(bricks, g, &seen).await?;
    }
    Ok(())
}

async fn path_of(r: &Replica, i: usize, g: Gfid) -> String {
    match r.brick(i).req(Op::Path { gfid: g }).await {
        Ok(Reply::Path(p)) => {
            let p = String::from_utf8_lossy(&p).into_owned();
            if p.starts_with('/') {
                p
            } else {
                format!("/{p}")
            }
        }
        _ => format!("<gfid:{g}>"),
    }
}

/// What `volume heal NAME full` did.
#[derive(Debug, Clone, Default)]
pub struct FullReport {
    /// Files and directories looked at (each once per replica set).
    pub scanned: u64,
    /// Names made on copies that lacked them.
    pub created: u64,
    /// Left needing heal (no source reachable, or a heal that failed).
    pub pending: u64,
    pub split_brain: u64,
    /// Bricks that could not be reached.
    pub not_connected: Vec<String>,
}

/// `volume heal NAME full`: crawls every directory of every replica set from the root,
/// not just the heal index. A name that some copies of a directory have and others lack
/// (with or without markers saying so: a copy added by `add-brick … replica N` has no
/// markers at all) is made on the copies that lack it, its source then accusing them;
/// every file and directory is then examined and healed as `volume heal` does. Names
/// are only ever added by the crawl, never removed (removals need markers saying which
/// copy is right: the index heal does those).
pub async fn full(spec: &VolumeSpec, client: &str) -> anyhow::Result<FullReport> {
    spec.validate().map_err(anyhow::Error::msg)?;
    let mut report = FullReport::default();
    for k in 0..spec.subvolume_count() {
        let set = spec.subvolume(k);
        let conns = spec.connect_subvolume(k, client, HEAL_PING_TIMEOUT);
        let r = Replica::new(conns, set.iter().map(|b| b.id).collect(), QuorumType::None);
        for (i, b) in set.iter().enumerate() {
            if r.brick(i).req(Op::Ping).await.is_err() {
                report.not_connected.push(format!("{}:{}", b.host, b.path));
            }
        }
        crawl_set(&r, &mut report).await;
    }
    Ok(report)
}

/// Most directories queued by one crawl of a replica set.
const MAX_CRAWL_DIRS: usize = 1_000_000;

async fn crawl_set(r: &Replica, report: &mut FullReport) {
    let tally = |report: &mut FullReport, s: Option<State>| match s {
        Some(State::Pending) => report.pending += 1,
        Some(State::SplitBrain) => report.split_brain += 1,
        None => {}
    };
    let s = examine(r, Gfid::ROOT, true).await;
    tally(report, s);
    report.scanned += 1;
    let mut queue = std::collections::VecDeque::from([Gfid::ROOT]);
    while let Some(dir) = queue.pop_front() {
        // Every copy's names.
        let mut lists = Vec::new();
        for i in 0..r.n() {
            if let Ok(l) = heal::list(r.brick(i), dir).await {
                lists.push((i, l));
            }
        }
        let mut names: std::collections::BTreeMap<Vec<u8>, (usize, crate::proto::Entry)> =
            Default::default();
        for (i, l) in &lists {
            for (name, e) in l {
                names.entry(name.clone()).or_insert((*i, e.clone()));
            }
        }
        for (name, (from, e)) in &names {
            let Some(g) = e.meta.gfid else { continue };
            for (j, l) in &lists {
                if l.contains_key(name) {
                    continue;
                }
                let made =
                    heal::make_copy(r.brick(*from), r.brick(*j), r.ids()[*j], dir, name, g, e)
                        .await;
                match made {
                    Ok(()) => report.created += 1,
                    Err(err) => tracing::warn!(
                        "heal full: making {:?} in {dir} on brick {}: {}",
                        String::from_utf8_lossy(name),
                        r.ids()[*j],
                        err.describe()
                    ),
                }
            }
            report.scanned += 1;
            let s = examine(r, g, true).await;
            tally(report, s);
            if e.attr.is_dir() && queue.len() < MAX_CRAWL_DIRS {
                queue.push_back(g);
            }
        }
    }
}
