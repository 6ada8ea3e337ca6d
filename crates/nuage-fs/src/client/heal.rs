//! Heal of one file of a replica set: the copies accused by the others (sinks) get the
//! contents and attributes of a copy nobody accuses (the source); then the accusations
//! are lowered by exactly what was seen, so a change made meanwhile stays marked.
//!
//! Heal works on the bricks directly (no markers for its own writes: the sink is already
//! accused until the end). Its callers run it under the file's lock (replica.rs
//! `under_lock`), as gluster's self-heal does: no other client writes the file
//! meanwhile, so no write can land on a sink between heal's read of the source and its
//! write of the same bytes.

use std::sync::Arc;

use crate::client::conn::BrickConn;
use crate::gfid::Gfid;
use crate::markers::{AfrDelta, Kind};
use crate::proto::{Entry, Errno, Op, Reply, SetAttr, SetTime, Target};

type Res<T> = Result<T, Errno>;

/// A copy of the file as a lookup saw it: its index in the set and its entry.
pub struct Seen {
    pub index: usize,
    pub entry: Entry,
}

/// The copies accused by a source of missing data or metadata changes (entry changes
/// of directories are not healed on access).
pub fn sinks(ids: &[u32], seen: &[Seen], sources: &[usize]) -> Vec<usize> {
    seen.iter()
        .map(|s| s.index)
        .filter(|j| {
            seen.iter().any(|s| {
                sources.contains(&s.index)
                    && [Kind::Data, Kind::Metadata]
                        .iter()
                        .any(|k| s.entry.meta.afr.accuses(ids[*j], *k))
            })
        })
        .collect()
}

/// Heals `sinks` from `source`; then lowers every copy's accusations of the sinks, and
/// the sinks' own `dirty`, by what `seen` showed.
pub async fn heal(
    bricks: &[Arc<BrickConn>],
    ids: &[u32],
    g: Gfid,
    seen: &[Seen],
    source: usize,
    sinks: &[usize],
) -> Res<()> {
    let src = &seen
        .iter()
        .find(|s| s.index == source)
        .ok_or(Errno(libc::EIO))?
        .entry;
    for &sink in sinks {
        let data_accused = seen
            .iter()
            .any(|s| s.entry.meta.afr.accuses(ids[sink], Kind::Data));
        if src.attr.is_file() && data_accused {
            copy_data(&bricks[source], &bricks[sink], g).await?;
        }
        if src.attr.is_file() || src.attr.is_dir() {
            let set = SetAttr {
                mode: Some(src.attr.mode & 0o7777),
                uid: Some(src.attr.uid),
                gid: Some(src.attr.gid),
                size: None,
                atime: Some(SetTime::At(src.attr.atime)),
                mtime: Some(SetTime::At(src.attr.mtime)),
                kill_suidgid: false,
            };
            bricks[sink]
                .req(Op::Setattr {
                    target: Target { gfid: g, fd: None },
                    set,
                    op: None,
                })
                .await?;
        }
        // The sink is now its source's copy: a `dirty` it kept from a change it was in
        // when it went away (the pre-op reached it, the post-op did not) means nothing
        // any more. Lowered by what was seen, so a change begun meanwhile stays marked.
        let sink_dirty = seen
            .iter()
            .find(|s| s.index == sink)
            .map_or([0; 3], |s| s.entry.meta.afr.dirty);
        let mut lower = [0i32; 3];
        let data_healed = src.attr.is_file() && data_accused;
        for k in [Kind::Data, Kind::Metadata] {
            if k == Kind::Metadata || data_healed {
                lower[k as usize] = -i32::try_from(sink_dirty[k as usize]).unwrap_or(i32::MAX);
            }
        }
        let delta = AfrDelta {
            dirty: lower,
            pending: Vec::new(),
        };
        apply_markers(&bricks[sink], g, delta).await?;
        // Lower what each copy held against this sink (entry changes of a directory
        // are not healed here: their accusations stay).
        for s in seen {
            let mut counts = s.entry.meta.afr.pending_for(ids[sink]);
            counts[Kind::Entry as usize] = 0;
            if counts == [0; 3] || s.index == sink {
                continue;
            }
            let delta = AfrDelta {
                dirty: [0; 3],
                pending: vec![(ids[sink], counts.map(|c| -(c as i32)))],
            };
            apply_markers(&bricks[s.index], g, delta).await?;
        }
        tracing::info!(
            "healed {g} on brick {} from brick {}",
            ids[sink],
            ids[source]
        );
    }
    Ok(())
}

/// Applies marker `delta` to copy `b` of file `g` (nothing is sent for an empty one).
pub(crate) async fn apply_markers(b: &BrickConn, g: Gfid, delta: AfrDelta) -> Res<()> {
    if delta.is_empty() {
        return Ok(());
    }
    b.req(Op::Xattrop {
        gfid: g,
        delta,
        unlock: None,
    })
    .await
    .map(drop)
}

/// Copies the contents of `g` from one copy to another, `MAX_IO` bytes at a time, up to
/// the source's end (the sink is then cut there).
pub(crate) async fn copy_data(from: &BrickConn, to: &BrickConn, g: Gfid) -> Res<()> {
    let rfd = opened(from.req(Op::Open {
        gfid: g,
        flags: libc::O_RDONLY,
    }))
    .await?;
    let wfd = match opened(to.req(Op::Open {
        gfid: g,
        flags: libc::O_WRONLY,
    }))
    .await
    {
        Ok(fd) => fd,
        Err(e) => {
            let _ = from.req(Op::Close { fd: rfd }).await;
            return Err(e);
        }
    };
    let r = async {
        let offset = crate::client::copy::copy_bytes(from, to, g, rfd, wfd).await?;
        to.req(Op::Setattr {
            target: Target {
                gfid: g,
                fd: Some(wfd),
            },
            set: SetAttr {
                size: Some(offset),
                ..Default::default()
            },
            op: None,
        })
        .await?;
        to.req(Op::Fsync {
            target: Target {
                gfid: g,
                fd: Some(wfd),
            },
            datasync: true,
        })
        .await
        .map(drop)
    }
    .await;
    let _ = from.req(Op::Close { fd: rfd }).await;
    let _ = to.req(Op::Close { fd: wfd }).await;
    r
}

async fn opened(r: impl std::future::Future<Output = Res<Reply>>) -> Res<u64> {
    match r.await? {
        Reply::Opened { fd } => Ok(fd),
        _ => Err(Errno(libc::EIO)),
    }
}

/// Most names entry heal reads from one copy of a directory (a bound on memory).
pub const MAX_HEAL_ENTRIES: usize = 1_000_000;
/// Names asked of a brick per `Readdir` during entry heal.
const HEAL_READDIR_BATCH: u32 = 1024;

/// The copies accused by a source of missing entry changes of a directory.
pub fn entry_sinks(ids: &[u32], seen: &[Seen]) -> Vec<usize> {
    seen.iter()
        .map(|s| s.index)
        .filter(|j| {
            seen.iter()
                .any(|s| s.index != *j && s.entry.meta.afr.accuses(ids[*j], Kind::Entry))
        })
        .collect()
}

/// Entry heal of directory `dir`: names the sink missed are made on it (same file id; a
/// file's data follows by data heal, as its source copy is marked to accuse the sink);
/// names the sink has and the source lost are removed from it — unless the sink accuses
/// the source too (entries changed on both sides), then names are only ever added.
pub async fn heal_entries(
    bricks: &[Arc<BrickConn>],
    ids: &[u32],
    dir: Gfid,
    seen: &[Seen],
    sink: usize,
) -> Res<()> {
    // A source: a copy that accuses the sink and is itself not accused by it.
    let accuses = |s: &Seen, j: usize| s.entry.meta.afr.accuses(ids[j], Kind::Entry);
    let sink_seen = seen
        .iter()
        .find(|s| s.index == sink)
        .ok_or(Errno(libc::EIO))?;
    let src = seen
        .iter()
        .find(|s| s.index != sink && accuses(s, sink) && !accuses(sink_seen, s.index))
        .or_else(|| seen.iter().find(|s| s.index != sink && accuses(s, sink)))
        .ok_or(Errno(libc::EIO))?;
    let merge_only = accuses(sink_seen, src.index);
    let source = src.index;
    let on_src = list(&bricks[source], dir).await?;
    let on_sink = list(&bricks[sink], dir).await?;
    for (name, e) in &on_src {
        if on_sink.contains_key(name) {
            continue;
        }
        let Some(g) = e.meta.gfid else { continue };
        make_copy(&bricks[source], &bricks[sink], ids[sink], dir, name, g, e).await?;
    }
    if !merge_only {
        for (name, e) in &on_sink {
            if on_src.contains_key(name) {
                continue;
            }
            let op = if e.attr.is_dir() {
                Op::Rmdir {
                    parent: dir,
                    name: name.clone(),
                    gfid: e.meta.gfid,
                    parent_op: None,
                }
            } else {
                Op::Unlink {
                    parent: dir,
                    name: name.clone(),
                    gfid: e.meta.gfid,
                    parent_op: None,
                }
            };
            if let Err(e) = bricks[sink].req(op).await {
                // A directory with names of its own is healed level by level.
                tracing::warn!(
                    "entry heal: cannot remove {:?} from brick {}: {}",
                    String::from_utf8_lossy(name),
                    ids[sink],
                    e.describe()
                );
            }
        }
    }
    for s in seen {
        let n = s.entry.meta.afr.pending_for(ids[sink])[Kind::Entry as usize];
        if n == 0 || s.index == sink {
            continue;
        }
        let mut counts = [0i32; 3];
        counts[Kind::Entry as usize] = -(n as i32);
        let delta = AfrDelta {
            dirty: [0; 3],
            pending: vec![(ids[sink], counts)],
        };
        apply_markers(&bricks[s.index], dir, delta).await?;
    }
    tracing::info!(
        "healed the entries of {dir} on brick {} from brick {}",
        ids[sink],
        ids[source]
    );
    Ok(())
}

/// Every name of a directory on one brick, with its entry (EFBIG past
/// [`MAX_HEAL_ENTRIES`]).
pub(crate) async fn list(
    b: &BrickConn,
    dir: Gfid,
) -> Res<std::collections::BTreeMap<Vec<u8>, Entry>> {
    let names = crate::client::copy::list_dir(b, dir, HEAL_READDIR_BATCH, MAX_HEAL_ENTRIES).await?;
    Ok(names.into_iter().collect())
}

/// Makes `name` on the sink as it is on the source (same id, type, owner, mode).
pub(crate) async fn make_copy(
    from: &BrickConn,
    to: &BrickConn,
    sink_id: u32,
    dir: Gfid,
    name: &[u8],
    g: Gfid,
    e: &Entry,
) -> Res<()> {
    if !e.attr.is_dir() && e.attr.nlink > 1 {
        // Another name of the same file may be on the sink already.
        let r = to
            .req(Op::Link {
                gfid: g,
                parent: dir,
                name: name.to_vec(),
                parent_op: None,
            })
            .await;
        if r.is_ok() {
            return Ok(());
        }
    }
    let target = if e.attr.mode & libc::S_IFMT == libc::S_IFLNK {
        match from.req(Op::Readlink { gfid: g }).await? {
            Reply::Link(t) => Some(t),
            _ => return Err(Errno(libc::EIO)),
        }
    } else {
        None
    };
    let obj = crate::proto::NewObject {
        mode: e.attr.mode,
        rdev: e.attr.rdev,
        target,
        // Made by root (the caller may not be allowed to write the directory any more);
        // owner and mode follow by metadata heal.
        creds: crate::proto::Creds::default(),
        afr: Default::default(),
        layout: e.meta.layout,
        linkto: e.meta.linkto,
        open: None,
        lock: false,
    };
    match to
        .req(Op::Mknod {
            parent: dir,
            name: name.to_vec(),
            gfid: g,
            obj,
            parent_op: None,
            check_epoch: None,
        })
        .await
    {
        Ok(_) | Err(Errno(libc::EEXIST)) => {}
        Err(e) => return Err(e),
    }
    if e.attr.is_file() {
        // The new copy is empty and root's: the source accuses it, so heal fills it.
        let kinds: &[Kind] = if e.attr.size > 0 {
            &[Kind::Data, Kind::Metadata]
        } else {
            &[Kind::Metadata]
        };
        from.req(Op::Xattrop {
            gfid: g,
            delta: AfrDelta::pre_op(kinds, &[sink_id]).without_dirty(),
            unlock: None,
        })
        .await?;
    }
    if e.attr.is_dir() {
        // Its names were all made while the sink was away.
        from.req(Op::Xattrop {
            gfid: g,
            delta: AfrDelta::pre_op(&[Kind::Entry, Kind::Metadata], &[sink_id]).without_dirty(),
            unlock: None,
        })
        .await?;
    }
    Ok(())
}

/// A copy of a regular file as a lookup would see it, for tests of the heal decisions.
#[cfg(test)]
pub(crate) fn seen_file(
    index: usize,
    size: u64,
    mtime: i64,
    ctime: i64,
    afr: crate::markers::AfrState,
) -> Seen {
    use crate::proto::{Attr, Meta, Timespec};
    let t = |sec| Timespec { sec, nsec: 0 };
    Seen {
        index,
        entry: Entry {
            attr: Attr {
                mode: libc::S_IFREG | 0o644,
                nlink: 1,
                uid: 0,
                gid: 0,
                rdev: 0,
                size,
                blocks: 0,
                blksize: 4096,
                atime: t(mtime),
                mtime: t(mtime),
                ctime: t(ctime),
            },
            meta: Meta {
                gfid: None,
                afr,
                layout: None,
                linkto: None,
            },
        },
    }
}
