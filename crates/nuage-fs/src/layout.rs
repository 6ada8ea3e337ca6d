//! Elastic hashing: which subvolume (replica set) holds a file.
//!
//! A file name hashes to a 32-bit number ([`name_hash`]). Every directory exists on every
//! subvolume, and each copy of a directory carries in `trusted.nuage.layout` the hash
//! range that subvolume owns *for that directory*. The ranges of a directory cover the
//! whole 32-bit space exactly once; a file lives on the subvolume whose range holds its
//! name's hash (its *hashed* subvolume), or is found through a link file there.
//! Layouts are per directory and rotated by the directory's id, so that the first range
//! is not always on the same subvolume.

use serde::{Deserialize, Serialize};

use crate::gfid::Gfid;

/// The 32-bit hash of a file name (xxHash32, seed 0). Temporary names of the form
/// `.NAME.XXXXXX` (rsync's) hash like `NAME`, so renaming the temporary file into place
/// does not move it to another subvolume.
pub fn name_hash(name: &[u8]) -> u32 {
    xxhash_rust::xxh32::xxh32(hashed_part(name), 0)
}

fn hashed_part(name: &[u8]) -> &[u8] {
    if name.len() > 8 && name[0] == b'.' {
        let dot = name.len() - 7;
        if name[dot] == b'.' && name[dot + 1..].iter().all(u8::is_ascii_alphanumeric) {
            return &name[1..dot];
        }
    }
    name
}

/// One subvolume's share of a directory, as stored on each of its bricks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirLayout {
    /// The volume's layout epoch when this range was written (raised by add-brick and
    /// remove-brick).
    pub epoch: u64,
    /// Every file of the directory is on its hashed subvolume or has a link file there,
    /// so a name missing from its hashed subvolume does not exist.
    pub committed: bool,
    /// Inclusive hash range; `None` owns nothing (e.g. a brick being removed).
    pub range: Option<(u32, u32)>,
}

impl DirLayout {
    /// The attribute value: version 1, epoch (u64), flags (bit 0 committed, bit 1 has a
    /// range), start, stop (u32); big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        out.push(1);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        let flags = u8::from(self.committed) | (u8::from(self.range.is_some()) << 1);
        out.push(flags);
        let (start, stop) = self.range.unwrap_or((0, 0));
        out.extend_from_slice(&start.to_be_bytes());
        out.extend_from_slice(&stop.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DirLayout, String> {
        if bytes.len() != 18 || bytes[0] != 1 {
            return Err("corrupt directory layout attribute".into());
        }
        let epoch = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let flags = bytes[9];
        let start = u32::from_be_bytes(bytes[10..14].try_into().expect("4 bytes"));
        let stop = u32::from_be_bytes(bytes[14..18].try_into().expect("4 bytes"));
        if flags & 2 != 0 && start > stop {
            return Err("corrupt directory layout attribute (start after stop)".into());
        }
        Ok(DirLayout {
            epoch,
            committed: flags & 1 != 0,
            range: (flags & 2 != 0).then_some((start, stop)),
        })
    }
}

/// A directory's whole layout as a client sees it: each subvolume's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// (subvolume id, its range for this directory, or None if it has none).
    pub ranges: Vec<(u32, Option<DirLayout>)>,
}

/// What is wrong with a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutProblem {
    /// Some hashes belong to no subvolume (a subvolume lacks the directory or a range).
    Hole,
    /// Some hashes belong to two subvolumes.
    Overlap,
}

impl Layout {
    /// Even ranges over `subvols` (in the given order, which must be sorted), rotated by
    /// the directory's id. The result covers the 32-bit space exactly once.
    pub fn even(subvols: &[u32], dir: Gfid, epoch: u64, committed: bool) -> Layout {
        assert!(!subvols.is_empty(), "a layout needs at least one subvolume");
        let n = subvols.len() as u64;
        let space = 1u64 << 32;
        let first = if dir == Gfid::ROOT {
            0
        } else {
            xxhash_rust::xxh32::xxh32(&dir.0, 0) as u64 % n
        };
        let mut ranges = Vec::with_capacity(subvols.len());
        for i in 0..n {
            let start = space * i / n;
            let stop = space * (i + 1) / n - 1;
            let sv = subvols[((first + i) % n) as usize];
            ranges.push((
                sv,
                Some(DirLayout {
                    epoch,
                    committed,
                    range: Some((start as u32, stop as u32)),
                }),
            ));
        }
        ranges.sort_by_key(|(sv, _)| *sv);
        Layout { ranges }
    }

    /// The subvolume owning `hash`, if any.
    pub fn subvol_for(&self, hash: u32) -> Option<u32> {
        self.ranges.iter().find_map(|(sv, l)| match l {
            Some(DirLayout {
                range: Some((a, b)),
                ..
            }) if (*a..=*b).contains(&hash) => Some(*sv),
            _ => None,
        })
    }

    pub fn hashed(&self, name: &[u8]) -> Option<u32> {
        self.subvol_for(name_hash(name))
    }

    /// Whether a name missing from its hashed subvolume can be taken as absent: every
    /// range is committed, of the current epoch, and the layout is sound.
    pub fn is_committed(&self, epoch: u64) -> bool {
        self.check().is_ok()
            && self.ranges.iter().all(|(_, l)| match l {
                Some(l) => l.committed && l.epoch == epoch,
                None => false,
            })
    }

    /// Checks that the ranges cover the hash space exactly once.
    pub fn check(&self) -> Result<(), LayoutProblem> {
        let mut rs: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .filter_map(|(_, l)| l.and_then(|l| l.range))
            .collect();
        rs.sort();
        let mut next: u64 = 0;
        for (a, b) in rs {
            match u64::from(a).cmp(&next) {
                std::cmp::Ordering::Less => return Err(LayoutProblem::Overlap),
                std::cmp::Ordering::Greater => return Err(LayoutProblem::Hole),
                std::cmp::Ordering::Equal => next = u64::from(b) + 1,
            }
        }
        if next == 1 << 32 {
            Ok(())
        } else {
            Err(LayoutProblem::Hole)
        }
    }

    pub fn of(&self, subvol: u32) -> Option<DirLayout> {
        self.ranges
            .iter()
            .find(|(sv, _)| *sv == subvol)
            .and_then(|(_, l)| *l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_layouts_cover_the_space_once() {
        for n in 1..=7u32 {
            let svs: Vec<u32> = (0..n).map(|i| i * 3 + 1).collect();
            for _ in 0..20 {
                let l = Layout::even(&svs, Gfid::random(), 4, true);
                assert_eq!(l.check(), Ok(()), "{l:?}");
                assert!(l.is_committed(4));
                assert!(!l.is_committed(5));
                assert_eq!(l.ranges.len(), n as usize);
                for h in [0, 1, u32::MAX / 2, u32::MAX] {
                    assert!(l.subvol_for(h).is_some());
                }
            }
        }
    }

    #[test]
    fn holes_and_overlaps_are_found() {
        let mut l = Layout::even(&[0, 1], Gfid::ROOT, 1, true);
        l.ranges[1].1 = None;
        assert_eq!(l.check(), Err(LayoutProblem::Hole));
        assert!(!l.is_committed(1));
        let mut l = Layout::even(&[0, 1], Gfid::ROOT, 1, true);
        l.ranges[1].1.as_mut().unwrap().range = Some((0, 10));
        assert_eq!(l.check(), Err(LayoutProblem::Overlap));
    }

    #[test]
    fn attribute_round_trips() {
        for d in [
            DirLayout {
                epoch: 7,
                committed: true,
                range: Some((5, 99)),
            },
            DirLayout {
                epoch: 0,
                committed: false,
                range: None,
            },
        ] {
            assert_eq!(DirLayout::decode(&d.encode()).unwrap(), d);
        }
        assert!(DirLayout::decode(b"x").is_err());
    }

    #[test]
    fn twenty_files_spread_over_two_subvolumes() {
        let l = Layout::even(&[0, 1], Gfid::ROOT, 1, true);
        let on0 = (1..=20)
            .filter(|i| l.hashed(format!("file{i}").as_bytes()) == Some(0))
            .count();
        assert!((5..=15).contains(&on0), "{on0} of 20 on subvolume 0");
    }

    #[test]
    fn rsync_temporary_names_hash_like_the_final_name() {
        assert_eq!(name_hash(b".report.pdf.Ab12Cd"), name_hash(b"report.pdf"));
        assert_ne!(name_hash(b".profile"), name_hash(b"profile"));
        assert_eq!(hashed_part(b".a.b"), b".a.b");
    }
}
