//! Settling a file whose change was begun and never confirmed: every copy carries `dirty`
//! and no copy accuses another. That is what a client leaves when it dies (or its
//! post-op fails) in the middle of a data or metadata change: the change may have reached
//! some copies and not others, and no marker says which. Left alone, reads could get
//! either version. Heal settles such a file as gluster's AFR does: every copy counts as a
//! source, and the largest one (by size, then the newest by modification time) is copied
//! to the copies that differ from it; then `dirty` is lowered by exactly what was seen.
//!
//! Only a change no live client can still be in is settled. A data change (writes,
//! truncation, fallocate) is made under the file's lock (replica/tx.rs), which dies with
//! its client's connection: heal takes the lock, and `dirty` for data still raised then
//! is settled at once ([`data_dirty`]). A metadata change takes no lock: a transaction
//! lowers `dirty` within a round trip, and every marker update moves the copy's ctime, so
//! a file whose copies all have a ctime older than [`SETTLE_AFTER`] (by the bricks'
//! clocks, against the healing machine's) is taken as abandoned; `heal info` lists a
//! file only so. Directories are not settled here (their entry changes are healed from
//! accusations only).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::client::conn::BrickConn;
use crate::client::heal::{Seen, apply_markers, copy_data};
use crate::gfid::Gfid;
use crate::markers::{AfrDelta, AfrState, Kind};
use crate::proto::{Attr, Errno, Op, Reply, SetAttr, SetTime, Target};

type Res<T> = Result<T, Errno>;

/// How long every copy of a file must have been unchanged (ctime) with `dirty` raised
/// before heal settles it.
pub const SETTLE_AFTER: Duration = Duration::from_secs(15);
/// Block size of the checksums that compare the copies' data.
const CHECKSUM_BLOCK: u32 = crate::proto::MAX_IO;

/// Whether `seen` (every copy of a regular file) shows a change begun and never
/// confirmed, abandoned for [`SETTLE_AFTER`] at `now`: `dirty` raised for data or
/// metadata on some copy, no accusation of data or metadata anywhere (the caller checked
/// that), every copy of the set answering (`copies`).
pub fn abandoned(seen: &[Seen], copies: usize, now: SystemTime) -> bool {
    if seen.len() != copies || seen.is_empty() || !seen.iter().all(|s| s.entry.attr.is_file()) {
        return false;
    }
    let dirty = seen.iter().any(|s| {
        let d = s.entry.meta.afr.dirty;
        d[Kind::Data as usize] > 0 || d[Kind::Metadata as usize] > 0
    });
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let settle = i64::try_from(SETTLE_AFTER.as_secs()).expect("a few seconds");
    dirty
        && seen
            .iter()
            .all(|s| s.entry.attr.ctime.sec.saturating_add(settle) <= now)
}

/// Whether `seen` (every copy of a regular file, `copies` of them) shows `dirty` raised
/// for data: a data change begun and not yet confirmed. Heal settles it at once if it can
/// take the file's lock (no writer is in the change any more), without waiting for
/// [`SETTLE_AFTER`].
pub fn data_dirty(seen: &[Seen], copies: usize) -> bool {
    seen.len() == copies
        && !seen.is_empty()
        && seen.iter().all(|s| s.entry.attr.is_file())
        && seen
            .iter()
            .any(|s| s.entry.meta.afr.dirty[Kind::Data as usize] > 0)
}

/// The copy the others are made equal to: the largest, then the most recently modified,
/// then the first (by index in the set).
pub fn source(seen: &[Seen]) -> usize {
    assert!(!seen.is_empty(), "a file has copies");
    let key = |s: &Seen| {
        (
            s.entry.attr.size,
            s.entry.attr.mtime.sec,
            s.entry.attr.mtime.nsec,
        )
    };
    let best = seen.iter().map(key).max().expect("not empty");
    seen.iter()
        .filter(|s| key(s) == best)
        .map(|s| s.index)
        .min()
        .expect("the best is among them")
}

/// Settles file `g` (see the module documentation; `seen` passed [`abandoned`]) from its
/// [`source`]. Returns how many copies were changed.
pub async fn settle(bricks: &[Arc<BrickConn>], g: Gfid, seen: &[Seen]) -> Res<usize> {
    make_equal(bricks, g, seen, source(seen)).await
}

/// Makes every copy of file `g` in `seen` equal to copy `from`: copies whose data differ
/// from its get its data, copies whose owner, mode or modification time differ get its;
/// then every copy's markers for data and metadata (`dirty` and accusations) are lowered
/// by exactly what `seen` showed, so a change begun meanwhile stays marked. Returns how
/// many copies were changed. (Settling, and split-brain resolution by an administrator.)
pub async fn make_equal(
    bricks: &[Arc<BrickConn>],
    g: Gfid,
    seen: &[Seen],
    from: usize,
) -> Res<usize> {
    let src = &seen
        .iter()
        .find(|s| s.index == from)
        .expect("the source is seen")
        .entry
        .attr;
    let src_sums = checksums(&bricks[from], g, src.size).await?;
    let mut changed = 0;
    for s in seen.iter().filter(|s| s.index != from) {
        let sink = &bricks[s.index];
        let mut touched = false;
        if s.entry.attr.size != src.size || checksums(sink, g, src.size).await? != src_sums {
            copy_data(&bricks[from], sink, g).await?;
            touched = true;
        }
        if touched || !same_attributes(&s.entry.attr, src) {
            sink.req(Op::Setattr {
                target: Target { gfid: g, fd: None },
                set: SetAttr {
                    mode: Some(src.mode & 0o7777),
                    uid: Some(src.uid),
                    gid: Some(src.gid),
                    size: None,
                    atime: Some(SetTime::At(src.atime)),
                    mtime: Some(SetTime::At(src.mtime)),
                    kill_suidgid: false,
                },
                op: None,
            })
            .await?;
            touched = true;
        }
        if touched {
            changed += 1;
            tracing::info!("{g}: copy {} made equal to copy {from}", s.index);
        }
    }
    for s in seen {
        apply_markers(&bricks[s.index], g, lowering(&s.entry.meta.afr)).await?;
    }
    Ok(changed)
}

/// The delta that takes `st`'s data and metadata markers (dirty and accusations) back to
/// zero; entry markers are left.
fn lowering(st: &AfrState) -> AfrDelta {
    let minus = |c: &[u32; 3]| {
        let mut d = [0i32; 3];
        for k in [Kind::Data, Kind::Metadata] {
            d[k as usize] = -i32::try_from(c[k as usize]).unwrap_or(i32::MAX);
        }
        d
    };
    AfrDelta {
        dirty: minus(&st.dirty),
        pending: st
            .pending
            .iter()
            .map(|(b, c)| (*b, minus(c)))
            .filter(|(_, d)| *d != [0; 3])
            .collect(),
    }
}

/// Owner, permissions and modification time: what a metadata change sets.
fn same_attributes(a: &Attr, b: &Attr) -> bool {
    (a.mode, a.uid, a.gid, a.mtime) == (b.mode, b.uid, b.gid, b.mtime)
}

/// Block checksums of the first `size` bytes of a copy.
async fn checksums(b: &BrickConn, g: Gfid, size: u64) -> Res<Vec<u64>> {
    let per_request = u64::from(CHECKSUM_BLOCK) * crate::proto::MAX_CHECKSUM_BLOCKS;
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < size {
        let length = (size - offset).min(per_request);
        let r = b
            .req(Op::Checksum {
                gfid: g,
                offset,
                length,
                block: CHECKSUM_BLOCK,
            })
            .await?;
        let Reply::Checksums(sums) = r else {
            return Err(Errno(libc::EIO));
        };
        out.extend(sums);
        offset += length;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(index: usize, size: u64, mtime: i64, ctime: i64, dirty: u32) -> Seen {
        let afr = AfrState {
            dirty: [dirty, 0, 0],
            pending: Vec::new(),
        };
        crate::client::heal::seen_file(index, size, mtime, ctime, afr)
    }

    fn at(sec: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(sec)
    }

    #[test]
    fn only_dirty_copies_left_alone_long_enough_are_abandoned() {
        let both = [copy(0, 10, 100, 100, 1), copy(1, 5, 100, 100, 1)];
        assert!(abandoned(&both, 2, at(100 + SETTLE_AFTER.as_secs())));
        // A change still in progress: a copy changed less than SETTLE_AFTER ago.
        assert!(!abandoned(&both, 2, at(100 + SETTLE_AFTER.as_secs() - 1)));
        // A copy not answering: it may hold what the others miss.
        assert!(!abandoned(&both[..1], 2, at(1000)));
        // Nothing begun.
        let clean = [copy(0, 10, 100, 100, 0), copy(1, 10, 100, 100, 0)];
        assert!(!abandoned(&clean, 2, at(1000)));
        // One dirty copy is enough.
        let one = [copy(0, 10, 100, 100, 0), copy(1, 10, 100, 100, 2)];
        assert!(abandoned(&one, 2, at(1000)));
    }

    #[test]
    fn lowering_takes_data_and_metadata_markers_to_zero_and_leaves_entry_ones() {
        let st = AfrState {
            dirty: [2, 1, 4],
            pending: vec![(3, [1, 0, 0]), (5, [0, 0, 7]), (6, [0, 2, 1])],
        };
        let d = lowering(&st);
        assert_eq!(d.dirty, [-2, -1, 0]);
        assert_eq!(d.pending, vec![(3, [-1, 0, 0]), (6, [0, -2, 0])]);
        let mut after = st.clone();
        after.apply(&d);
        assert_eq!(after.dirty, [0, 0, 4]);
        assert_eq!(after.pending, vec![(5, [0, 0, 7]), (6, [0, 0, 1])]);
    }

    #[test]
    fn the_source_is_the_largest_then_the_newest_then_the_first() {
        assert_eq!(source(&[copy(0, 5, 200, 0, 1), copy(1, 9, 100, 0, 1)]), 1);
        assert_eq!(source(&[copy(0, 9, 100, 0, 1), copy(1, 9, 200, 0, 1)]), 1);
        assert_eq!(source(&[copy(0, 9, 100, 0, 1), copy(1, 9, 100, 0, 1)]), 0);
        assert_eq!(
            source(&[
                copy(2, 9, 100, 0, 1),
                copy(1, 9, 100, 0, 1),
                copy(0, 1, 900, 0, 1)
            ]),
            1
        );
    }
}
