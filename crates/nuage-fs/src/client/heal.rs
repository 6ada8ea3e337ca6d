//! Heal of one file of a replica set: the copies accused by the others (sinks) get the
//! contents and attributes of a copy nobody accuses (the source); then the accusations
//! are lowered by exactly what was seen, so a change made meanwhile stays marked.
//!
//! Heal works on the bricks directly (no markers for its own writes: the sink is already
//! accused until the end). It is not serialized against writes of other clients to the
//! same file (gluster takes a lock for that; nuage does not yet, see docs/storage.md).

use std::sync::Arc;

use crate::client::conn::BrickConn;
use crate::gfid::Gfid;
use crate::markers::{AfrDelta, Kind};
use crate::proto::{Entry, Errno, MAX_IO, Op, Reply, SetAttr, SetTime, Target};

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

/// Heals `sinks` from `source`; then lowers every copy's accusations of the sinks by
/// what `seen` showed.
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
            };
            bricks[sink]
                .req(Op::Setattr {
                    target: Target { gfid: g, fd: None },
                    set,
                    op: None,
                })
                .await?;
        }
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
            bricks[s.index]
                .req(Op::Xattrop {
                    gfid: g,
                    delta,
                    unlock: None,
                })
                .await?;
        }
        tracing::info!(
            "healed {g} on brick {} from brick {}",
            ids[sink],
            ids[source]
        );
    }
    Ok(())
}

/// Copies the contents of `g` from one copy to another, `MAX_IO` bytes at a time, up to
/// the source's end (the sink is then cut there).
async fn copy_data(from: &BrickConn, to: &BrickConn, g: Gfid) -> Res<()> {
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
        let mut offset = 0u64;
        loop {
            let want = MAX_IO;
            let (reply, data) = from
                .call(
                    Op::Read {
                        target: Target {
                            gfid: g,
                            fd: Some(rfd),
                        },
                        offset,
                        size: want,
                    },
                    &[],
                )
                .await?;
            let Reply::Data { eof } = reply else {
                return Err(Errno(libc::EIO));
            };
            if !data.is_empty() {
                to.call(
                    Op::Write {
                        target: Target {
                            gfid: g,
                            fd: Some(wfd),
                        },
                        offset,
                        op: None,
                    },
                    &data,
                )
                .await?;
            }
            offset += data.len() as u64;
            if eof || data.len() < want as usize {
                break;
            }
        }
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
