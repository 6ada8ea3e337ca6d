//! A volume as one file system: distribution of names over subvolumes by elastic
//! hashing (layout.rs), with every directory on every subvolume.
//!
//! - A file lives on the subvolume whose range of its directory's layout holds the hash
//!   of its name. After a rename (or a layout change) it may stay where its data is;
//!   then a *link file* (mode `---------T`, `trusted.nuage.linkto` = the data's
//!   subvolume) under the new name on the hashed subvolume points to it.
//! - A directory exists on every subvolume with the same id; each copy holds that
//!   subvolume's range. Lookups repair a directory missing on a subvolume (e.g. one
//!   that was down at mkdir) and a layout with holes.
//! - A name absent from its hashed subvolume does not exist when the directory's layout
//!   is committed at the volume's current epoch; otherwise every subvolume is asked.
//!
//! Each subvolume is a replica set (replica.rs; one brick for distribute volumes). Every
//! operation returns a Linux errno on failure; a subvolume that cannot be reached gives
//! ENOTCONN.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::client::bounded::make_room;
use crate::client::replica::{QuorumType, Replica};
use crate::client::spec::VolumeSpec;
use crate::client::write_behind::WriteBehind;
use crate::gfid::Gfid;
use crate::layout::{DirLayout, Layout};
use crate::markers::AfrState;
use crate::proto::{
    Attr, Creds, DirEntry, Entry, Errno, MAX_IO, NewObject, Op, Reply, SetAttr, SetMeta, Statfs,
    Target,
};

pub type Res<T> = Result<T, Errno>;

/// Mode of a link file.
const LINKTO_MODE: u32 = crate::brick::store::LINKTO_MODE;
/// Most stale link files `rmdir` removes from one subvolume's copy of a directory.
const MAX_STALE_LINKTO: u32 = 64;
/// Entries asked of a brick per `Readdir`.
const READDIR_BATCH: u32 = 512;
/// How long a directory's attributes read from every subvolume are reused (as the
/// kernel's own attribute cache, fuse.rs `ATTR_TTL`, and gluster's md-cache timeout).
/// Creations and removals made through this client update the cached times from the
/// brick's `parent` attributes; every other change of a directory drops the cache.
pub const DIR_ATTR_TTL: Duration = Duration::from_secs(1);
/// Most directories whose attributes are cached at once.
const MAX_DIR_ATTRS: usize = 65536;

/// A directory's merged attributes, when they were read from every subvolume, and the
/// subvolume whose copy gave the fields other than times.
#[derive(Debug, Clone, Copy)]
struct DirAttr {
    read_at: Instant,
    attr: Attr,
    first: u32,
}

/// A file or directory found by a lookup.
#[derive(Debug, Clone)]
pub struct Found {
    pub gfid: Gfid,
    pub attr: Attr,
}

/// An open file: the subvolume that holds its data and the brick's handle.
#[derive(Debug, Clone, Copy)]
pub struct OpenFile {
    pub gfid: Gfid,
    pub subvol: u32,
    pub fd: u64,
}

pub struct Volume {
    /// The volume as this client sees it now; replaced whole by [`Volume::update`].
    topo: RwLock<Arc<Topology>>,
    /// Who this client is, and its ping timeout (new brick connections need them).
    client: String,
    ping_timeout: Duration,
    /// Where the data of a non-directory is (learned by lookups, creations, searches).
    located: Mutex<HashMap<Gfid, u32>>,
    /// Directory layouts by directory id.
    layouts: Mutex<HashMap<Gfid, Layout>>,
    next_handle: AtomicU64,
    wb: WriteBehind,
    /// Directory attributes (see [`DIR_ATTR_TTL`]).
    dir_attrs: Mutex<HashMap<Gfid, DirAttr>>,
    /// Bumped by every change of a directory made here: a read of a directory's
    /// attributes that overlapped a change is not cached.
    dir_gen: AtomicU64,
}

/// Drops every cached directory attribute when it goes out of scope (so also when the
/// operation that changed directories fails half-way).
struct DirsChanged<'a>(&'a Volume);

impl Drop for DirsChanged<'_> {
    fn drop(&mut self) {
        self.0.dirs_changed();
    }
}

/// What a subvolume slot of a mount is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Names hash to it.
    Live,
    /// Being removed (remove-brick start): its files are still found, no name hashes to it.
    Draining,
    /// No longer part of the volume (remove-brick commit); kept so slots keep their numbers.
    Removed,
}

struct Slot {
    /// Ids of its bricks, in set order (a subvolume is known by its first brick's id).
    bricks: Vec<u32>,
    addrs: Vec<String>,
    replica: Arc<Replica>,
    state: SlotState,
}

/// The subvolumes of a mount. Slot k is subvolume k of the definition the mount started
/// with; subvolumes added later get new slots at the end.
struct Topology {
    spec: VolumeSpec,
    slots: Vec<Slot>,
}

impl Topology {
    fn new(
        spec: VolumeSpec,
        old: Option<&Topology>,
        client: &str,
        ping_timeout: Duration,
    ) -> anyhow::Result<Topology> {
        spec.validate().map_err(anyhow::Error::msg)?;
        let quorum = match spec.quorum_type.as_deref() {
            None => QuorumType::Auto,
            Some(q) => QuorumType::parse(q).ok_or_else(|| {
                anyhow::anyhow!("volume {}: unknown cluster.quorum-type {q:?}", spec.name)
            })?,
        };
        let make = |k: usize| -> Slot {
            let set = spec.subvolume(k);
            let conns = spec.connect_subvolume(k, client, ping_timeout);
            let ids: Vec<u32> = set.iter().map(|b| b.id).collect();
            Slot {
                replica: Replica::new(conns, ids.clone(), quorum),
                bricks: ids,
                addrs: set.iter().map(|b| b.addr.clone()).collect(),
                state: if spec.draining.contains(&(k as u32)) {
                    SlotState::Draining
                } else {
                    SlotState::Live
                },
            }
        };
        let mut slots: Vec<Slot> = match old {
            None => (0..spec.subvolume_count()).map(make).collect(),
            Some(old) => {
                // Every old slot stays, as removed unless the new definition has it.
                let mut slots: Vec<Slot> = old
                    .slots
                    .iter()
                    .map(|s| Slot {
                        bricks: s.bricks.clone(),
                        addrs: s.addrs.clone(),
                        replica: s.replica.clone(),
                        state: SlotState::Removed,
                    })
                    .collect();
                for k in 0..spec.subvolume_count() {
                    let fresh = make(k);
                    match slots.iter().position(|s| s.bricks[0] == fresh.bricks[0]) {
                        Some(i) => {
                            // A brick offline now (port 0) keeps its old address: its
                            // server may come back there, and the set's other copies
                            // keep serving the files open on them.
                            let moved = slots[i]
                                .addrs
                                .iter()
                                .zip(&fresh.addrs)
                                .any(|(a, b)| a != b && !b.ends_with(":0"));
                            let same = slots[i].bricks == fresh.bricks && !moved;
                            if same {
                                slots[i].state = fresh.state;
                            } else {
                                // Another replica count or brick address: new
                                // connections (files open on the old ones stay open
                                // there only; see docs/storage.md).
                                slots[i] = fresh;
                            }
                        }
                        None => slots.push(fresh),
                    }
                }
                slots
            }
        };
        assert!(
            slots.iter().any(|s| s.state == SlotState::Live),
            "a valid volume has a subvolume names hash to"
        );
        slots.shrink_to_fit();
        Ok(Topology { spec, slots })
    }

    fn slots_where(&self, keep: impl Fn(SlotState) -> bool) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|k| keep(self.slots[*k as usize].state))
            .collect()
    }
}

pub(crate) fn unexpected_reply(r: Reply) -> Errno {
    unexpected(r)
}

fn unexpected(r: Reply) -> Errno {
    tracing::warn!("unexpected brick reply {r:?}");
    Errno(libc::EIO)
}

fn entry_of(r: Reply) -> Res<Entry> {
    match r {
        Reply::Entry(e) => Ok(e),
        r => Err(unexpected(r)),
    }
}

fn is_linkto(e: &Entry) -> bool {
    e.is_link_file()
}

impl Volume {
    /// Connects to the volume's bricks (lazily) and makes sure the root directory has
    /// a sound layout.
    pub async fn connect(
        spec: VolumeSpec,
        client: &str,
        ping_timeout: Duration,
    ) -> anyhow::Result<Arc<Volume>> {
        let topo = Topology::new(spec, None, client, ping_timeout)?;
        let v = Arc::new(Volume {
            topo: RwLock::new(Arc::new(topo)),
            client: client.to_owned(),
            ping_timeout,
            located: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            wb: WriteBehind::default(),
            dir_attrs: Mutex::new(HashMap::new()),
            dir_gen: AtomicU64::new(0),
        });
        v.dir_layout(Gfid::ROOT).await.map_err(|e| {
            anyhow::anyhow!(
                "volume {}: cannot read the root directory of every brick: {}",
                v.spec().name,
                e.describe()
            )
        })?;
        Ok(v)
    }

    /// Switches to a new definition of the volume (add-brick, remove-brick, a layout
    /// fixed by rebalance) without a remount: subvolumes whose bricks did not change keep
    /// their connections and open files; new ones are added; removed ones stay as dead
    /// slots (so handles held by the kernel never point at another subvolume); cached
    /// layouts and file locations are dropped, to be read again from the bricks.
    pub fn update(&self, spec: VolumeSpec) -> anyhow::Result<()> {
        let mut topo = self.topo.write().expect("topology");
        if spec.volume_id != topo.spec.volume_id {
            anyhow::bail!(
                "volume {} was deleted and made again (another id); remount",
                spec.name
            );
        }
        let new = Topology::new(spec, Some(&topo), &self.client, self.ping_timeout)?;
        *topo = Arc::new(new);
        self.layouts.lock().expect("layouts").clear();
        self.located.lock().expect("located").clear();
        Ok(())
    }

    /// The definition this client uses now.
    pub fn spec(&self) -> VolumeSpec {
        self.topo().spec.clone()
    }

    fn topo(&self) -> Arc<Topology> {
        self.topo.read().expect("topology").clone()
    }

    /// The layout epoch of the volume: layouts written at another one are not trusted
    /// to say that a name is absent.
    fn epoch(&self) -> u64 {
        self.topo().spec.layout_epoch
    }

    /// Number of subvolume slots (removed ones included: slots are never renumbered).
    fn n(&self) -> u32 {
        self.topo().slots.len() as u32
    }

    fn sv(&self, k: u32) -> Arc<Replica> {
        self.topo().slots[k as usize].replica.clone()
    }

    /// The subvolumes that are part of the volume (files may be on any of them).
    fn all(&self) -> Vec<u32> {
        self.topo().slots_where(|s| s != SlotState::Removed)
    }

    /// The subvolumes new layouts spread names over (not those being removed).
    fn hashable(&self) -> Vec<u32> {
        self.topo().slots_where(|s| s == SlotState::Live)
    }

    /// Sends one request to several subvolumes at once.
    async fn fan_out(&self, to: &[u32], op: impl Fn(u32) -> Op) -> Vec<(u32, Res<Reply>)> {
        let futs: Vec<_> = to
            .iter()
            .map(|k| {
                let conn = self.sv(*k);
                let op = op(*k);
                let k = *k;
                async move { (k, conn.req(op).await) }
            })
            .collect();
        crate::client::replica::join_all(futs).await
    }

    /// The answers of the subvolumes that could be reached. Unreachable ones (ENOTCONN)
    /// are left out, as long as one answered: a directory stays usable while some of
    /// its subvolumes are down, and only names on them fail.
    fn reachable(answers: Vec<(u32, Res<Reply>)>) -> Res<Vec<(u32, Reply)>> {
        let mut out = Vec::new();
        let mut down = None;
        for (k, r) in answers {
            match r {
                Ok(r) => out.push((k, r)),
                Err(Errno(libc::ENOTCONN)) => down = Some(Errno(libc::ENOTCONN)),
                Err(e) => return Err(e),
            }
        }
        match (out.is_empty(), down) {
            (true, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }

    /// The layout of a directory: cached, else read from every subvolume (and repaired
    /// if it has holes or overlaps).
    async fn dir_layout(&self, dir: Gfid) -> Res<Layout> {
        if let Some(l) = self.layouts.lock().expect("layouts").get(&dir) {
            return Ok(l.clone());
        }
        let answers = self
            .fan_out(&self.all(), |_| Op::Stat {
                gfid: dir,
                fd: None,
            })
            .await;
        let mut ranges = Vec::new();
        let mut incomplete = false;
        let mut down = false;
        for (k, r) in answers {
            match r.and_then(entry_of) {
                Ok(e) if !e.attr.is_dir() => return Err(Errno(libc::ENOTDIR)),
                Ok(e) => ranges.push((k, e.meta.layout)),
                Err(Errno(libc::ENOTCONN)) => (incomplete, down) = (true, true),
                // No copy there yet (a subvolume added since, or down at mkdir): it
                // owns nothing until rebalance fix-layout (or a lookup) makes it.
                Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => incomplete = true,
                Err(e) => return Err(e),
            }
        }
        if ranges.is_empty() {
            return Err(Errno(if down { libc::ENOTCONN } else { libc::ENOENT }));
        }
        let mut layout = Layout { ranges };
        if incomplete {
            // Names hashed to a down subvolume fail with ENOTCONN; the rest works. Not
            // cached, so the full layout is read once every subvolume is back.
            return Ok(layout);
        }
        if layout.check().is_err() {
            // Trusted to say a name is absent only if no layout change happened since
            // the directory's ranges were written.
            let epoch = self.epoch();
            let same_epoch = layout
                .ranges
                .iter()
                .all(|(_, l)| l.is_none_or(|l| l.epoch == epoch));
            layout = self.fix_layout(dir, same_epoch).await?;
        }
        self.layouts
            .lock()
            .expect("layouts")
            .insert(dir, layout.clone());
        Ok(layout)
    }

    /// Writes even ranges for `dir` over the subvolumes names hash to (none for those
    /// being removed) on every subvolume.
    async fn fix_layout(&self, dir: Gfid, committed: bool) -> Res<Layout> {
        let _changed = DirsChanged(self);
        let epoch = self.epoch();
        let mut layout = Layout::even(&self.hashable(), dir, epoch, committed);
        for k in self.all() {
            if layout.of(k).is_none() {
                let none = DirLayout {
                    epoch,
                    committed,
                    range: None,
                };
                layout.ranges.push((k, Some(none)));
            }
        }
        layout.ranges.sort_by_key(|(k, _)| *k);
        let l2 = layout.clone();
        for (_, r) in self
            .fan_out(&self.all(), |k| Op::SetMeta {
                gfid: dir,
                set: SetMeta {
                    layout: l2.of(k),
                    ..Default::default()
                },
            })
            .await
        {
            r?;
        }
        Ok(layout)
    }

    fn remember(&self, g: Gfid, subvol: u32) {
        self.located.lock().expect("located").insert(g, subvol);
    }

    /// The subvolume holding a non-directory's data.
    async fn locate(&self, g: Gfid) -> Res<u32> {
        if let Some(k) = self.located.lock().expect("located").get(&g) {
            return Ok(*k);
        }
        self.search(g).await.map(|(k, _)| k)
    }

    /// Sends `op` (about non-directory `g`) to the subvolume holding `g`'s data; if the
    /// data is no longer there (moved by a rebalance since this client learned where it
    /// was), finds it again and retries once.
    async fn on_data(&self, g: Gfid, op: Op) -> Res<Reply> {
        self.on_data_where(g, op).await.map(|(_, r)| r)
    }

    /// [`Self::on_data`], with the subvolume that answered.
    async fn on_data_where(&self, g: Gfid, op: Op) -> Res<(u32, Reply)> {
        let k = self.locate(g).await?;
        match self.sv(k).req(op.clone()).await {
            Err(e @ Errno(libc::ENOENT)) | Err(e @ Errno(libc::ESTALE)) => {
                self.located.lock().expect("located").remove(&g);
                let (k2, _) = self.search(g).await?;
                if k2 == k {
                    // Still there: the error was about something else.
                    return Err(e);
                }
                self.sv(k2).req(op).await.map(|r| (k2, r))
            }
            r => r.map(|r| (k, r)),
        }
    }

    /// Asks every subvolume for a file by id (its data, not a link file).
    async fn search(&self, g: Gfid) -> Res<(u32, Entry)> {
        let mut first_err = None;
        for (k, r) in self
            .fan_out(&self.all(), |_| Op::Stat { gfid: g, fd: None })
            .await
        {
            match r.and_then(entry_of) {
                Ok(e) if !is_linkto(&e) => {
                    self.remember(g, k);
                    return Ok((k, e));
                }
                Ok(_) | Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        Err(first_err.unwrap_or(Errno(libc::ENOENT)))
    }

    /// Attributes of a directory: the copies merged (times: the latest of any copy).
    /// Read from every subvolume at most once per [`DIR_ATTR_TTL`]: the kernel asks
    /// again after each creation or removal in the directory (its permission check
    /// needs the mode), and those changes made here are merged into the cache.
    async fn dir_attr(&self, g: Gfid) -> Res<Attr> {
        if let Some(d) = self.dir_attrs.lock().expect("dir attrs").get(&g) {
            if d.read_at.elapsed() < DIR_ATTR_TTL {
                return Ok(d.attr);
            }
        }
        let read_at = Instant::now();
        let generation = self.dir_gen.load(Ordering::SeqCst);
        let mut attr: Option<(u32, Attr)> = None;
        let mut answers = self
            .fan_out(&self.all(), |_| Op::Stat { gfid: g, fd: None })
            .await;
        // A copy not made yet on a subvolume added since (rebalance fix-layout makes it):
        // left out, and the read is then not cached.
        let before = answers.len();
        if answers.iter().any(|(_, r)| r.is_ok()) {
            answers.retain(|(_, r)| !matches!(r, Err(Errno(libc::ENOENT))));
        }
        let copy_missing = answers.len() != before;
        let total = answers.len();
        let reached = Self::reachable(answers)?;
        let complete = reached.len() == total && !copy_missing;
        for (k, r) in reached {
            let e = entry_of(r)?;
            attr = Some(match attr {
                None => (k, e.attr),
                Some((first, mut a)) => {
                    a.mtime = a.mtime.max_by_key(e.attr.mtime);
                    a.ctime = a.ctime.max_by_key(e.attr.ctime);
                    a.atime = a.atime.max_by_key(e.attr.atime);
                    (first, a)
                }
            });
        }
        let (first, attr) = attr.ok_or(Errno(libc::EIO))?;
        let mut cache = self.dir_attrs.lock().expect("dir attrs");
        // Only a read of every copy that no change overlapped is kept.
        if complete && attr.is_dir() && self.dir_gen.load(Ordering::SeqCst) == generation {
            make_room(&mut cache, MAX_DIR_ATTRS, |d| {
                d.read_at.elapsed() < DIR_ATTR_TTL
            });
            cache.insert(
                g,
                DirAttr {
                    read_at,
                    attr,
                    first,
                },
            );
        }
        Ok(attr)
    }

    /// A creation or removal in `dir` on subvolume `k` answered with the directory's
    /// copy's attributes after it (`None`: unknown): merged into the cached attributes
    /// exactly as a new read of every copy would merge them, or the cache is dropped.
    fn dir_changed(&self, dir: Gfid, k: u32, after: Option<Attr>) {
        let mut cache = self.dir_attrs.lock().expect("dir attrs");
        self.dir_gen.fetch_add(1, Ordering::SeqCst);
        let Some(after) = after.filter(|a| a.is_dir()) else {
            cache.remove(&dir);
            return;
        };
        if let Some(d) = cache.get_mut(&dir) {
            let times = (
                d.attr.mtime.max_by_key(after.mtime),
                d.attr.ctime.max_by_key(after.ctime),
                d.attr.atime.max_by_key(after.atime),
            );
            if k == d.first {
                d.attr = after;
            }
            (d.attr.mtime, d.attr.ctime, d.attr.atime) = times;
        }
    }

    /// Any other change of a directory (its attributes, names made or removed without
    /// the directory's attributes in the answer, layouts, renames): every cached
    /// directory attribute goes (these changes are rare; creations and removals are not).
    fn dirs_changed(&self) {
        let mut cache = self.dir_attrs.lock().expect("dir attrs");
        self.dir_gen.fetch_add(1, Ordering::SeqCst);
        cache.clear();
    }

    pub async fn lookup(&self, parent: Gfid, name: &[u8]) -> Res<Found> {
        crate::proto::check_name(name)?;
        let layout = self.dir_layout(parent).await?;
        // No owner: the subvolume owning this name is down (incomplete layout).
        let hashed = layout.hashed(name).ok_or(Errno(libc::ENOTCONN))?;
        let op = |_| Op::Lookup {
            parent,
            name: name.to_vec(),
        };
        match self.sv(hashed).req(op(hashed)).await.and_then(entry_of) {
            Ok(e) if e.attr.is_dir() => self.lookup_dir(parent, name, e).await,
            Ok(e) if is_linkto(&e) => {
                let g = e.meta.gfid.ok_or(Errno(libc::EIO))?;
                let target = e.meta.linkto.expect("checked");
                if target < self.n() {
                    if let Ok(d) = self
                        .sv(target)
                        .req(Op::Stat { gfid: g, fd: None })
                        .await
                        .and_then(entry_of)
                    {
                        if !is_linkto(&d) {
                            self.remember(g, target);
                            return Ok(Found {
                                gfid: g,
                                attr: d.attr,
                            });
                        }
                    }
                }
                // A stale link file: the data moved again.
                let (_, d) = self.search(g).await?;
                Ok(Found {
                    gfid: g,
                    attr: d.attr,
                })
            }
            Ok(e) => self.found_file(parent, name, hashed, e).await,
            Err(Errno(libc::ENOENT)) if layout.is_committed(self.epoch()) => {
                Err(Errno(libc::ENOENT))
            }
            Err(Errno(libc::ENOENT)) => {
                // Not committed: the name may be on any subvolume. A file that a rebalance
                // is moving can be missed by one pass — asked for at its new place before
                // it arrives, at its old one after it left — so a miss is confirmed by a
                // second pass over every subvolume: it starts after the old copy was seen
                // gone, and a mover puts the new copy in place before removing the old.
                let others: Vec<u32> = self.all().into_iter().filter(|k| *k != hashed).collect();
                for pass in [others, self.all()] {
                    for (k, r) in self.fan_out(&pass, op).await {
                        if let Ok(e) = r.and_then(entry_of) {
                            if e.attr.is_dir() {
                                return self.lookup_dir(parent, name, e).await;
                            }
                            if !is_linkto(&e) {
                                return self.found_file(parent, name, k, e).await;
                            }
                        }
                    }
                }
                Err(Errno(libc::ENOENT))
            }
            Err(e) => Err(e),
        }
    }

    async fn found_file(&self, parent: Gfid, name: &[u8], k: u32, e: Entry) -> Res<Found> {
        let g = match e.meta.gfid {
            Some(g) => g,
            // A file put on the brick directly: give it an id.
            None => {
                let e2 = self
                    .sv(k)
                    .req(Op::SetGfid {
                        parent,
                        name: name.to_vec(),
                        gfid: Gfid::random(),
                    })
                    .await
                    .and_then(entry_of)?;
                e2.meta.gfid.ok_or(Errno(libc::EIO))?
            }
        };
        self.remember(g, k);
        Ok(Found {
            gfid: g,
            attr: e.attr,
        })
    }

    /// A directory found on one subvolume: make sure it is on all of them, with the
    /// same id, and that its layout is sound.
    async fn lookup_dir(&self, parent: Gfid, name: &[u8], seen: Entry) -> Res<Found> {
        let answers = self
            .fan_out(&self.all(), |_| Op::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await;
        let mut gfid = seen.meta.gfid;
        let mut missing = Vec::new();
        let mut attr = seen.attr;
        for (k, r) in &answers {
            match r {
                Ok(Reply::Entry(e)) if e.attr.is_dir() => {
                    if gfid.is_none() {
                        gfid = e.meta.gfid;
                    }
                    attr.mtime = attr.mtime.max_by_key(e.attr.mtime);
                    attr.ctime = attr.ctime.max_by_key(e.attr.ctime);
                }
                Ok(Reply::Entry(_)) => return Err(Errno(libc::EIO)), // a file on one, a dir on another
                Err(Errno(libc::ENOENT)) => missing.push(*k),
                // Down: repaired by a later lookup once it is back.
                Err(Errno(libc::ENOTCONN)) => {}
                Err(e) => return Err(*e),
                Ok(r) => return Err(unexpected(r.clone())),
            }
        }
        let g = match gfid {
            Some(g) => g,
            None => Gfid::random(),
        };
        // Copies without an id (made on a brick directly) get the volume's.
        let _changed = (!missing.is_empty()
            || answers
                .iter()
                .any(|(_, r)| matches!(r, Ok(Reply::Entry(e)) if e.meta.gfid.is_none())))
        .then(|| DirsChanged(self));
        for (k, r) in &answers {
            if let Ok(Reply::Entry(e)) = r {
                if e.meta.gfid.is_none() {
                    self.sv(*k)
                        .req(Op::SetGfid {
                            parent,
                            name: name.to_vec(),
                            gfid: g,
                        })
                        .await?;
                }
            }
        }
        if !missing.is_empty() {
            let obj = NewObject {
                mode: attr.mode,
                rdev: 0,
                target: None,
                creds: Creds {
                    uid: attr.uid,
                    gid: attr.gid,
                    groups: Vec::new(),
                },
                afr: AfrState::default(),
                layout: None,
                linkto: None,
                open: None,
                lock: false,
            };
            for (k, r) in self
                .fan_out(&missing, |_| Op::Mknod {
                    parent,
                    name: name.to_vec(),
                    gfid: g,
                    obj: obj.clone(),
                    parent_op: None,
                    check_epoch: None,
                })
                .await
            {
                match r {
                    Ok(_) | Err(Errno(libc::EEXIST)) => {}
                    // The parent has no copy there either (a subvolume added since, the
                    // parent's lookup cached by the kernel): made by fix-layout, or by
                    // a lookup of the parent; the directory works without it meanwhile.
                    Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => {
                        tracing::debug!("directory {g}: no parent copy on subvolume {k} yet")
                    }
                    Err(e) => return Err(e),
                }
            }
            self.layouts.lock().expect("layouts").remove(&g);
        }
        self.dir_layout(g).await?;
        Ok(Found { gfid: g, attr })
    }

    pub async fn getattr(&self, g: Gfid, is_dir: bool, fh: Option<OpenFile>) -> Res<Attr> {
        if is_dir {
            return self.dir_attr(g).await;
        }
        // Sizes and times must include writes already acknowledged, and the ctime the
        // replication post-op will give the file (replica.rs).
        self.wb.drain(g).await?;
        self.settle(g).await;
        if let Some(f) = fh {
            let r = self
                .sv(f.subvol)
                .req(Op::Stat {
                    gfid: g,
                    fd: Some(f.fd),
                })
                .await;
            return entry_of(r?).map(|e| e.attr);
        }
        let k = self.locate(g).await?;
        match self
            .sv(k)
            .req(Op::Stat { gfid: g, fd: None })
            .await
            .and_then(entry_of)
        {
            Ok(e) if !is_linkto(&e) => Ok(e.attr),
            Ok(_) | Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => {
                // Moved (rebalance) or gone.
                self.located.lock().expect("located").remove(&g);
                self.search(g).await.map(|(_, e)| e.attr)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn setattr(
        &self,
        g: Gfid,
        is_dir: bool,
        set: SetAttr,
        fh: Option<OpenFile>,
    ) -> Res<Attr> {
        if is_dir {
            let _changed = DirsChanged(self);
            let mut attr = None;
            for (_, r) in self
                .fan_out(&self.all(), |_| Op::Setattr {
                    target: Target { gfid: g, fd: None },
                    set: set.clone(),
                    op: None,
                })
                .await
            {
                match r? {
                    Reply::Attr(a) => attr = attr.or(Some(a)),
                    r => return Err(unexpected(r)),
                }
            }
            return attr.ok_or(Errno(libc::EIO));
        }
        self.wb.drain(g).await?;
        self.settle(g).await;
        let op = |fd| Op::Setattr {
            target: Target { gfid: g, fd },
            set: set.clone(),
            op: None,
        };
        let r = match fh {
            Some(f) => self.sv(f.subvol).req(op(Some(f.fd))).await?,
            None => self.on_data(g, op(None)).await?,
        };
        match r {
            Reply::Attr(a) => Ok(a),
            r => Err(unexpected(r)),
        }
    }

    /// Creates a non-directory in its hashed subvolume; `open` also opens it.
    pub async fn create(
        &self,
        parent: Gfid,
        name: &[u8],
        obj: NewObject,
    ) -> Res<(Found, Option<OpenFile>)> {
        crate::proto::check_name(name)?;
        let layout = self.dir_layout(parent).await?;
        let k = layout.hashed(name).ok_or(Errno(libc::ENOTCONN))?;
        let g = Gfid::random();
        let r = self
            .sv(k)
            .req(Op::Mknod {
                parent,
                name: name.to_vec(),
                gfid: g,
                obj,
                parent_op: None,
                check_epoch: None,
            })
            .await?;
        match r {
            Reply::Created {
                entry,
                fd,
                parent: after,
            } => {
                self.dir_changed(parent, k, after.map(|a| *a));
                self.remember(g, k);
                let open = fd.map(|fd| OpenFile {
                    gfid: g,
                    subvol: k,
                    fd,
                });
                Ok((
                    Found {
                        gfid: g,
                        attr: entry.attr,
                    },
                    open,
                ))
            }
            r => Err(unexpected(r)),
        }
    }

    pub async fn mkdir(&self, parent: Gfid, name: &[u8], mut obj: NewObject) -> Res<Found> {
        crate::proto::check_name(name)?;
        let layout = self.dir_layout(parent).await?;
        let hashed = layout.hashed(name).ok_or(Errno(libc::ENOTCONN))?;
        let g = Gfid::random();
        let _changed = DirsChanged(self);
        let new_layout = Layout::even(&self.hashable(), g, self.epoch(), true);
        // The hashed subvolume first: it decides (EEXIST) for everyone.
        obj.layout = new_layout.of(hashed);
        let mk = |k: u32, obj: &NewObject| Op::Mknod {
            parent,
            name: name.to_vec(),
            gfid: g,
            obj: NewObject {
                layout: new_layout.of(k),
                ..obj.clone()
            },
            parent_op: None,
            check_epoch: None,
        };
        let first = self.sv(hashed).req(mk(hashed, &obj)).await?;
        let Reply::Created { entry, .. } = first else {
            return Err(unexpected(first));
        };
        let others: Vec<u32> = self.all().into_iter().filter(|k| *k != hashed).collect();
        let mut made = vec![hashed];
        let mut lacking = Vec::new();
        for (k, r) in self.fan_out(&others, |k| mk(k, &obj)).await {
            match r {
                Ok(_) => made.push(k),
                // No copy of the parent there (a subvolume added since, before
                // fix-layout): no range there either, as gluster gives none to a
                // subvolume where mkdir failed.
                Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => lacking.push(k),
                // The next lookup repairs it; the directory exists for the user already.
                Err(e) => tracing::warn!("mkdir on subvolume {k}: {}", e.describe()),
            }
        }
        if lacking.is_empty() {
            self.layouts.lock().expect("layouts").insert(g, new_layout);
        } else if let Err(e) = self.spread_new_dir(g, &made, &lacking).await {
            // Not cached: the next use reads the ranges and repairs them.
            tracing::warn!("mkdir: ranges of {g}: {}", e.describe());
        }
        Ok(Found {
            gfid: g,
            attr: entry.attr,
        })
    }

    /// Gives new directory `g` even ranges over the subvolumes names hash to except
    /// `lacking` (which have no copy of it), written on its copies `made`.
    async fn spread_new_dir(&self, g: Gfid, made: &[u32], lacking: &[u32]) -> Res<()> {
        let mut spread: Vec<u32> = self
            .hashable()
            .into_iter()
            .filter(|k| !lacking.contains(k))
            .collect();
        if spread.is_empty() {
            // Only subvolumes being removed have it (they hold the parent): names go
            // there until fix-layout moves them.
            spread = made.to_vec();
        }
        let layout = Layout::even(&spread, g, self.epoch(), true);
        for (_, r) in self
            .fan_out(made, |k| Op::SetMeta {
                gfid: g,
                set: SetMeta {
                    layout: Some(layout.of(k).unwrap_or(DirLayout {
                        epoch: self.epoch(),
                        committed: true,
                        range: None,
                    })),
                    ..Default::default()
                },
            })
            .await
        {
            r?;
        }
        self.layouts.lock().expect("layouts").insert(g, layout);
        Ok(())
    }

    /// Removes a non-directory name (and its link file, if any).
    /// Removes a non-directory name: one request to its hashed subvolume in the common
    /// case; when that name was a link file, the data's name goes too.
    pub async fn unlink(&self, parent: Gfid, name: &[u8]) -> Res<()> {
        crate::proto::check_name(name)?;
        let layout = self.dir_layout(parent).await?;
        let hashed = layout.hashed(name).ok_or(Errno(libc::ENOTCONN))?;
        let op = |gfid| Op::Unlink {
            parent,
            name: name.to_vec(),
            gfid,
            parent_op: None,
        };
        let r = self.sv(hashed).req(op(None)).await;
        match &r {
            Ok(Reply::Unlinked { parent: after, .. }) => {
                self.dir_changed(parent, hashed, after.as_deref().copied())
            }
            Ok(_) => {}
            Err(_) => self.dirs_changed(),
        }
        match r {
            Ok(Reply::Unlinked {
                gfid: Some(g),
                linkto: Some(data),
                ..
            }) if data != hashed && data < self.n() => {
                let _changed = DirsChanged(self);
                match self.sv(data).req(op(Some(g))).await {
                    Ok(Reply::Unlinked { nlink_left: 0, .. }) => {
                        self.located.lock().expect("located").remove(&g);
                        Ok(())
                    }
                    Ok(_) | Err(Errno(libc::ENOENT)) => Ok(()),
                    Err(e) => {
                        // Keep the name reachable: the data could not be removed.
                        let _ = self.put_linkto(parent, name, g, hashed, data).await;
                        Err(e)
                    }
                }
            }
            Ok(Reply::Unlinked {
                gfid: Some(g),
                nlink_left: 0,
                ..
            }) => {
                self.located.lock().expect("located").remove(&g);
                Ok(())
            }
            Ok(Reply::Unlinked { .. }) => Ok(()),
            Ok(r) => Err(unexpected(r)),
            Err(Errno(libc::ENOENT)) if !layout.is_committed(self.epoch()) => {
                // Not committed: the name may be on another subvolume.
                let _changed = DirsChanged(self);
                let found = self.lookup(parent, name).await?;
                if found.attr.is_dir() {
                    return Err(Errno(libc::EISDIR));
                }
                // Where the data is, looked for again if a rebalance moved it meanwhile
                // (a request its fence held finds the old copy gone).
                self.on_data(found.gfid, op(Some(found.gfid)))
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn rmdir(&self, parent: Gfid, name: &[u8]) -> Res<()> {
        let _changed = DirsChanged(self);
        let layout = self.dir_layout(parent).await?;
        let hashed = layout.hashed(name).ok_or(Errno(libc::ENOTCONN))?;
        let found = self.lookup(parent, name).await?;
        if !found.attr.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        self.check_empty(found.gfid).await?;
        let op = |_| Op::Rmdir {
            parent,
            name: name.to_vec(),
            gfid: Some(found.gfid),
            parent_op: None,
        };
        // Others first, the hashed copy last: while it exists, lookups repair the rest.
        let others: Vec<u32> = self.all().into_iter().filter(|k| *k != hashed).collect();
        for (_, r) in self.fan_out(&others, op).await {
            match r {
                Ok(_) | Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        self.sv(hashed).req(op(hashed)).await?;
        self.layouts.lock().expect("layouts").remove(&found.gfid);
        Ok(())
    }

    /// ENOTEMPTY unless directory `g` has no entry on any subvolume. Stale link files
    /// (whose data is gone, as the directory has no other entry) are removed.
    async fn check_empty(&self, g: Gfid) -> Res<()> {
        let mut stale = Vec::new();
        for k in self.all() {
            let r = self
                .sv(k)
                .req(Op::Readdir {
                    gfid: g,
                    cookie: 0,
                    max: MAX_STALE_LINKTO,
                })
                .await?;
            let Reply::Dir { entries, eof, .. } = r else {
                return Err(unexpected(r));
            };
            for e in &entries {
                match &e.entry {
                    Some(en) if is_linkto(en) => stale.push((k, e.name.clone())),
                    _ => return Err(Errno(libc::ENOTEMPTY)),
                }
            }
            if !eof {
                return Err(Errno(libc::ENOTEMPTY));
            }
        }
        for (k, name) in stale {
            let r = self
                .sv(k)
                .req(Op::Unlink {
                    parent: g,
                    name,
                    gfid: None,
                    parent_op: None,
                })
                .await;
            match r {
                Ok(_) | Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes (or replaces) a link file `parent/name` on subvolume `at` pointing at `data`.
    async fn put_linkto(&self, parent: Gfid, name: &[u8], g: Gfid, at: u32, data: u32) -> Res<()> {
        let _changed = DirsChanged(self);
        let obj = NewObject {
            mode: LINKTO_MODE,
            rdev: 0,
            target: None,
            creds: Creds::default(),
            afr: AfrState::default(),
            layout: None,
            linkto: Some(data),
            open: None,
            lock: false,
        };
        let mk = Op::Mknod {
            parent,
            name: name.to_vec(),
            gfid: g,
            obj,
            parent_op: None,
            check_epoch: None,
        };
        match self.sv(at).req(mk.clone()).await {
            Ok(_) => Ok(()),
            Err(Errno(libc::EEXIST)) => {
                self.sv(at)
                    .req(Op::Unlink {
                        parent,
                        name: name.to_vec(),
                        gfid: None,
                        parent_op: None,
                    })
                    .await?;
                self.sv(at).req(mk).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn rename(
        &self,
        parent: Gfid,
        name: &[u8],
        new_parent: Gfid,
        new_name: &[u8],
        flags: u32,
    ) -> Res<()> {
        crate::proto::check_name(new_name)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            // Exchanging across subvolumes cannot be made atomic here.
            return Err(Errno(libc::EINVAL));
        }
        let src = self.lookup(parent, name).await?;
        let _changed = DirsChanged(self);
        let dst = match self.lookup(new_parent, new_name).await {
            Ok(d) => Some(d),
            Err(Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno(libc::EEXIST));
            }
            if d.gfid == src.gfid {
                return Ok(());
            }
            if d.attr.is_dir() != src.attr.is_dir() {
                return Err(Errno(if d.attr.is_dir() {
                    libc::EISDIR
                } else {
                    libc::ENOTDIR
                }));
            }
        }
        let old_hashed = self
            .dir_layout(parent)
            .await?
            .hashed(name)
            .ok_or(Errno(libc::ENOTCONN))?;
        let new_hashed = self
            .dir_layout(new_parent)
            .await?
            .hashed(new_name)
            .ok_or(Errno(libc::ENOTCONN))?;
        let op = |_| Op::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            parent_op: None,
            new_parent_op: None,
        };
        if src.attr.is_dir() {
            if let Some(d) = &dst {
                // Replacing a directory: it must be empty on every subvolume (each
                // brick sees only its own share of the entries).
                self.check_empty(d.gfid).await?;
            }
            // Directories are everywhere: the new name's hashed subvolume decides first.
            self.sv(new_hashed).req(op(new_hashed)).await?;
            let others: Vec<u32> = self
                .all()
                .into_iter()
                .filter(|k| *k != new_hashed)
                .collect();
            for (k, r) in self.fan_out(&others, op).await {
                if let Err(e) = r {
                    tracing::warn!("rename of a directory on subvolume {k}: {}", e.describe());
                }
            }
            return Ok(());
        }
        // The data keeps its place (found again if a rebalance moved it meanwhile); the
        // name moves with it.
        let (data, _) = self.on_data_where(src.gfid, op(0)).await?;
        if let Some(d) = &dst {
            let d_data = self.locate(d.gfid).await.ok();
            if let Some(dk) = d_data.filter(|dk| *dk != data) {
                let r = self
                    .sv(dk)
                    .req(Op::Unlink {
                        parent: new_parent,
                        name: new_name.to_vec(),
                        gfid: Some(d.gfid),
                        parent_op: None,
                    })
                    .await;
                if let Err(e) = r
                    .map(drop)
                    .or_else(|e| if e.0 == libc::ENOENT { Ok(()) } else { Err(e) })
                {
                    tracing::warn!("rename: removing the replaced file: {}", e.describe());
                }
            }
        }
        if new_hashed != data {
            self.put_linkto(new_parent, new_name, src.gfid, new_hashed, data)
                .await?;
        } else if let Some(d) = &dst {
            // The replaced name may have been a link file on the data's subvolume: the
            // brick's rename replaced it already.
            let _ = d;
        }
        if old_hashed != data
            && !(old_hashed == new_hashed && parent == new_parent && name == new_name)
        {
            let r = self
                .sv(old_hashed)
                .req(Op::Unlink {
                    parent,
                    name: name.to_vec(),
                    gfid: Some(src.gfid),
                    parent_op: None,
                })
                .await;
            match r {
                Ok(_) | Err(Errno(libc::ENOENT)) => {}
                Err(e) => tracing::warn!("rename: removing the old link file: {}", e.describe()),
            }
        }
        Ok(())
    }

    /// A new name for a non-directory.
    pub async fn link(&self, g: Gfid, new_parent: Gfid, new_name: &[u8]) -> Res<Found> {
        crate::proto::check_name(new_name)?;
        let _changed = DirsChanged(self);
        let data = self.locate(g).await?;
        let hashed = self
            .dir_layout(new_parent)
            .await?
            .hashed(new_name)
            .ok_or(Errno(libc::ENOTCONN))?;
        let e = match self.link_at(g, data, hashed, new_parent, new_name).await {
            Err(e @ Errno(libc::ENOENT)) | Err(e @ Errno(libc::ESTALE)) => {
                // Moved by a rebalance since this client learned where it was?
                self.located.lock().expect("located").remove(&g);
                let (moved_to, _) = self.search(g).await?;
                if moved_to == data {
                    return Err(e);
                }
                self.link_at(g, moved_to, hashed, new_parent, new_name)
                    .await?
            }
            r => r?,
        };
        Ok(Found {
            gfid: g,
            attr: e.attr,
        })
    }

    /// `link` with the data on subvolume `data` and the new name hashing to `hashed`.
    async fn link_at(
        &self,
        g: Gfid,
        data: u32,
        hashed: u32,
        new_parent: Gfid,
        new_name: &[u8],
    ) -> Res<Entry> {
        if hashed != data {
            // The name must be free on its hashed subvolume too.
            match self
                .sv(hashed)
                .req(Op::Lookup {
                    parent: new_parent,
                    name: new_name.to_vec(),
                })
                .await
            {
                Ok(_) => return Err(Errno(libc::EEXIST)),
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        let e = self
            .sv(data)
            .req(Op::Link {
                gfid: g,
                parent: new_parent,
                name: new_name.to_vec(),
                parent_op: None,
            })
            .await
            .and_then(entry_of)?;
        if hashed != data {
            self.put_linkto(new_parent, new_name, g, hashed, data)
                .await?;
        }
        Ok(e)
    }

    pub async fn readlink(&self, g: Gfid) -> Res<Vec<u8>> {
        match self.on_data(g, Op::Readlink { gfid: g }).await? {
            Reply::Link(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }

    pub async fn open(&self, g: Gfid, flags: i32) -> Res<OpenFile> {
        let k = self.locate(g).await?;
        let r = match self.sv(k).req(Op::Open { gfid: g, flags }).await {
            Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => {
                self.located.lock().expect("located").remove(&g);
                let (k2, _) = self.search(g).await?;
                return match self.sv(k2).req(Op::Open { gfid: g, flags }).await? {
                    Reply::Opened { fd } => Ok(OpenFile {
                        gfid: g,
                        subvol: k2,
                        fd,
                    }),
                    r => Err(unexpected(r)),
                };
            }
            r => r?,
        };
        match r {
            Reply::Opened { fd } => Ok(OpenFile {
                gfid: g,
                subvol: k,
                fd,
            }),
            r => Err(unexpected(r)),
        }
    }

    pub async fn read(&self, f: OpenFile, offset: u64, size: u32) -> Res<Vec<u8>> {
        if self.wb.busy(f.gfid) {
            self.wb.drain(f.gfid).await?;
        }
        let size = size.min(MAX_IO);
        let op = Op::Read {
            target: Target {
                gfid: f.gfid,
                fd: Some(f.fd),
            },
            offset,
            size,
        };
        match self.sv(f.subvol).call(op, &[]).await? {
            (Reply::Data { .. }, data) => Ok(data),
            (r, _) => Err(unexpected(r)),
        }
    }

    /// Queues a write (write-behind) and returns once it is queued.
    pub async fn write(&self, f: OpenFile, offset: u64, data: Vec<u8>) -> Res<u32> {
        self.write_with(f, offset, data, false).await
    }

    /// [`Volume::write`]; `kill_suidgid`: the writer may not keep the file's set-user-ID
    /// and set-group-ID bits (the bricks drop them with the write).
    pub async fn write_with(
        &self,
        f: OpenFile,
        offset: u64,
        data: Vec<u8>,
        kill_suidgid: bool,
    ) -> Res<u32> {
        if data.len() > MAX_IO as usize {
            return Err(Errno(libc::EINVAL));
        }
        let len = data.len() as u32;
        let send = self.send_write(f, offset, data, kill_suidgid);
        self.wb.submit(f.gfid, offset, u64::from(len), send).await?;
        Ok(len)
    }

    /// `write` when it can be queued without waiting (the common case of a stream of
    /// writes): `Some` answer at once, on the caller's thread, so the FUSE request is
    /// answered without a task switch. `None`: nothing done; call `write`. Must run
    /// inside the runtime.
    pub fn write_now(
        &self,
        f: OpenFile,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Option<Res<u32>> {
        if data.len() > MAX_IO as usize {
            return Some(Err(Errno(libc::EINVAL)));
        }
        let len = data.len() as u32;
        match self.wb.try_submit(f.gfid, offset, u64::from(len), || {
            self.send_write(f, offset, data.to_vec(), kill_suidgid)
        }) {
            Ok(true) => Some(Ok(len)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn send_write(
        &self,
        f: OpenFile,
        offset: u64,
        data: Vec<u8>,
        kill_suidgid: bool,
    ) -> impl std::future::Future<Output = Res<u32>> + Send + 'static {
        let op = Op::Write {
            target: Target {
                gfid: f.gfid,
                fd: Some(f.fd),
            },
            offset,
            op: None,
            kill_suidgid,
        };
        let conn = self.sv(f.subvol);
        async move {
            match conn.call(op, &data).await? {
                (Reply::Written { size }, _) => Ok(size),
                (r, _) => Err(unexpected(r)),
            }
        }
    }

    /// `close(2)` of one descriptor: every write made so far is on the brick, and a
    /// failure of one of them is reported here.
    pub async fn flush(&self, f: OpenFile) -> Res<()> {
        self.wb.drain(f.gfid).await
    }

    /// Whether `performance.flush-behind` is on for this mount now.
    pub fn flush_behind_on(&self) -> bool {
        let on = self.topo().spec.flush_behind;
        on.unwrap_or(crate::mgmt::FLUSH_BEHIND_DEFAULT)
    }

    /// `close(2)` with `performance.flush-behind` on (gluster's default): `Some`
    /// answer at once, without waiting for the file's writes in flight; only a failure
    /// already known is reported. A write failing later is reported by the next write or
    /// fsync of the file through this mount, and logged at release. Anything that reads
    /// the file or its attributes through this mount still waits for the writes.
    /// `None` with flush-behind off: call `flush`. (Descriptors opened while flush-behind
    /// is on send no FLUSH at all, see fuse.rs `fopen_flags`: this serves those opened
    /// before it was turned on.)
    pub fn flush_behind(&self, f: OpenFile) -> Option<Res<()>> {
        if !self.flush_behind_on() {
            return None;
        }
        Some(self.wb.take_error(f.gfid))
    }

    pub async fn fsync(&self, f: OpenFile, datasync: bool) -> Res<()> {
        self.wb.drain(f.gfid).await?;
        self.sv(f.subvol)
            .req(Op::Fsync {
                target: Target {
                    gfid: f.gfid,
                    fd: Some(f.fd),
                },
                datasync,
            })
            .await
            .map(drop)
    }

    pub async fn fallocate(&self, f: OpenFile, mode: i32, offset: u64, length: u64) -> Res<()> {
        self.wb.drain(f.gfid).await?;
        self.sv(f.subvol)
            .req(Op::Fallocate {
                target: Target {
                    gfid: f.gfid,
                    fd: Some(f.fd),
                },
                mode,
                offset,
                length,
                op: None,
            })
            .await
            .map(drop)
    }

    pub async fn release(&self, f: OpenFile) -> Res<()> {
        // The brick's descriptor stays until the file's writes are done with it.
        let pending = self.wb.drain(f.gfid).await;
        let sv = self.sv(f.subvol);
        // The file's replication post-op goes with the close (replica.rs).
        let (closed, ()) = tokio::join!(sv.req(Op::Close { fd: f.fd }), sv.settle(f.gfid));
        let closed = closed.map(drop);
        if let Err(e) = pending {
            // Flush-behind answered close(2) already: nobody else to tell.
            tracing::warn!(
                "a write to {} failed after it was acknowledged: {}",
                f.gfid,
                e.describe()
            );
        }
        self.wb.forget(f.gfid);
        pending.and(closed)
    }

    /// Whether acknowledged writes of `g` may still be on their way (attributes read
    /// meanwhile would miss them).
    pub fn writes_pending(&self, g: Gfid) -> bool {
        self.wb.busy(g) || self.topo().slots.iter().any(|s| s.replica.in_tx(g))
    }

    /// Ends the replication data transaction of `g` if one is open and idle: its post-op
    /// moves the file's ctime, which attributes answered after it must include.
    async fn settle(&self, g: Gfid) {
        let topo = self.topo();
        for s in topo.slots.iter().filter(|s| s.replica.in_tx(g)) {
            s.replica.settle(g).await;
        }
    }

    pub async fn statfs(&self) -> Res<Statfs> {
        let mut total = Statfs::default();
        let answers = self.fan_out(&self.all(), |_| Op::Statfs).await;
        for (_, r) in Self::reachable(answers)? {
            let s = match r {
                Reply::Statfs(s) => s,
                r => return Err(unexpected(r)),
            };
            // Sum in bytes-per-fragment of the first brick.
            if total.frsize == 0 {
                total = s;
                continue;
            }
            let scale =
                |v: u64| v.saturating_mul(u64::from(s.frsize)) / u64::from(total.frsize.max(1));
            total.blocks += scale(s.blocks);
            total.bfree += scale(s.bfree);
            total.bavail += scale(s.bavail);
            total.files += s.files;
            total.ffree += s.ffree;
        }
        Ok(total)
    }

    /// Extended attributes: a directory's are read from its first copy and written to
    /// every copy; a file's go to its data ([`Volume::on_data`]).
    fn first_dir_copy(&self) -> Res<u32> {
        self.all().first().copied().ok_or(Errno(libc::ENOTCONN))
    }

    pub async fn getxattr(&self, g: Gfid, is_dir: bool, name: &[u8]) -> Res<Vec<u8>> {
        let op = Op::Getxattr {
            gfid: g,
            name: name.to_vec(),
        };
        let r = if is_dir {
            self.sv(self.first_dir_copy()?).req(op).await?
        } else {
            self.on_data(g, op).await?
        };
        match r {
            Reply::Xattr(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub async fn listxattr(&self, g: Gfid, is_dir: bool) -> Res<Vec<Vec<u8>>> {
        let op = Op::Listxattr { gfid: g };
        let r = if is_dir {
            self.sv(self.first_dir_copy()?).req(op).await?
        } else {
            self.on_data(g, op).await?
        };
        match r {
            Reply::XattrNames(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub async fn setxattr(
        &self,
        g: Gfid,
        is_dir: bool,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Res<()> {
        let op = |_| Op::Setxattr {
            gfid: g,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
            op: None,
        };
        if !is_dir {
            return self.on_data(g, op(0)).await.map(drop);
        }
        let _changed = DirsChanged(self);
        for (_, r) in self.fan_out(&self.all(), op).await {
            r?;
        }
        Ok(())
    }

    pub async fn removexattr(&self, g: Gfid, is_dir: bool, name: &[u8]) -> Res<()> {
        let op = |_| Op::Removexattr {
            gfid: g,
            name: name.to_vec(),
            op: None,
        };
        if !is_dir {
            return self.on_data(g, op(0)).await.map(drop);
        }
        let _changed = DirsChanged(self);
        for (_, r) in self.fan_out(&self.all(), op).await {
            r?;
        }
        Ok(())
    }

    /// A fresh directory listing.
    pub fn listing(&self, dir: Gfid) -> Listing {
        Listing {
            dir,
            id: self.next_handle.fetch_add(1, Ordering::Relaxed),
            subvol: 0,
            cookie: 0,
            done: false,
            dirs_from: None,
        }
    }

    /// The next batch of a listing: each subvolume in turn; directories are listed from
    /// the first subvolume only (they are on all), link files never.
    pub async fn next_entries(&self, l: &mut Listing) -> Res<Vec<DirEntry>> {
        while !l.done {
            let r = match self
                .sv(l.subvol)
                .req(Op::Readdir {
                    gfid: l.dir,
                    cookie: l.cookie,
                    max: READDIR_BATCH,
                })
                .await
            {
                Ok(r) => r,
                // A down subvolume's names are left out (as gluster does); the rest lists.
                Err(Errno(libc::ENOTCONN)) if self.n() > 1 => {
                    tracing::warn!("listing without subvolume {} (not connected)", l.subvol);
                    l.subvol += 1;
                    l.cookie = 0;
                    l.done = l.subvol >= self.n();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Reply::Dir { entries, next, eof } = r else {
                return Err(unexpected(r));
            };
            let from = l.subvol;
            // Directories are on every subvolume: listed from the first that answers.
            let first = *l.dirs_from.get_or_insert(l.subvol) == l.subvol;
            if eof {
                l.subvol += 1;
                l.cookie = 0;
                l.done = l.subvol >= self.n();
            } else {
                l.cookie = next;
            }
            for e in &entries {
                if let Some(en) = &e.entry {
                    if let (Some(g), false) = (en.meta.gfid, en.attr.is_dir() || is_linkto(en)) {
                        self.remember(g, from);
                    }
                }
            }
            let kept: Vec<DirEntry> = entries
                .into_iter()
                .filter(|e| match &e.entry {
                    None => false,
                    Some(en) => !is_linkto(en) && (first || !en.attr.is_dir()),
                })
                .collect();
            if !kept.is_empty() {
                return Ok(kept);
            }
        }
        Ok(Vec::new())
    }

    /// Where each name of a directory lives (for tests and `rebalance` reports).
    pub async fn subvol_of(&self, g: Gfid) -> Res<u32> {
        self.locate(g).await
    }
}

/// Where a directory listing is.
#[derive(Debug, Clone)]
pub struct Listing {
    pub dir: Gfid,
    pub id: u64,
    subvol: u32,
    cookie: u64,
    done: bool,
    dirs_from: Option<u32>,
}

trait MaxTime {
    fn max_by_key(self, other: Self) -> Self;
}

impl MaxTime for crate::proto::Timespec {
    fn max_by_key(self, other: Self) -> Self {
        if (other.sec, other.nsec) > (self.sec, self.nsec) {
            other
        } else {
            self
        }
    }
}

/// Creation credentials for a new object (the layout is filled in by `mkdir`).
pub fn new_object(mode: u32, creds: Creds) -> NewObject {
    NewObject {
        mode,
        rdev: 0,
        target: None,
        creds,
        afr: AfrState::default(),
        layout: None::<DirLayout>,
        linkto: None,
        open: None,
        lock: false,
    }
}

#[cfg(test)]
mod topology_tests {
    use super::*;
    use crate::client::spec::BrickSpec;

    fn spec(bricks: &[(u32, u16)], replica: u32) -> VolumeSpec {
        VolumeSpec {
            name: "v".into(),
            volume_id: "id".into(),
            replica,
            bricks: bricks
                .iter()
                .map(|(id, port)| BrickSpec {
                    id: *id,
                    host: "h".into(),
                    path: format!("/b{id}"),
                    addr: format!("127.0.0.1:{port}"),
                })
                .collect(),
            layout_epoch: 1,
            ping_timeout: None,
            quorum_type: None,
            flush_behind: None,
            generation: 1,
            draining: Vec::new(),
        }
    }

    fn topo(s: VolumeSpec, old: Option<&Topology>) -> Topology {
        Topology::new(s, old, "t", Duration::from_secs(1)).unwrap()
    }

    fn states(t: &Topology) -> Vec<SlotState> {
        t.slots.iter().map(|s| s.state).collect()
    }

    #[test]
    fn slots_keep_their_numbers_and_connections_across_changes() {
        use SlotState::*;
        let t1 = topo(spec(&[(0, 10), (1, 11)], 1), None);
        // add-brick: a new slot at the end, the others untouched.
        let t2 = topo(spec(&[(0, 10), (1, 11), (2, 12)], 1), Some(&t1));
        assert_eq!(states(&t2), vec![Live, Live, Live]);
        assert!(Arc::ptr_eq(&t1.slots[0].replica, &t2.slots[0].replica));
        assert!(Arc::ptr_eq(&t1.slots[1].replica, &t2.slots[1].replica));
        // remove-brick start: subvolume 0 drains; commit: it is gone from the spec, and
        // the mount keeps its slot (removed) so the others keep their numbers.
        let mut draining = spec(&[(0, 10), (1, 11), (2, 12)], 1);
        draining.draining = vec![0];
        let t3 = topo(draining, Some(&t2));
        assert_eq!(states(&t3), vec![Draining, Live, Live]);
        let t4 = topo(spec(&[(1, 11), (2, 12)], 1), Some(&t3));
        assert_eq!(states(&t4), vec![Removed, Live, Live]);
        assert!(Arc::ptr_eq(&t2.slots[2].replica, &t4.slots[2].replica));
        assert_eq!(t4.slots_where(|s| s != Removed), vec![1, 2]);
        assert_eq!(t4.slots_where(|s| s == Live), vec![1, 2]);
        // A brick now offline (port 0) keeps its connection; one on a new port gets a new one.
        let t5 = topo(spec(&[(1, 0), (2, 12)], 1), Some(&t4));
        assert!(Arc::ptr_eq(&t4.slots[1].replica, &t5.slots[1].replica));
        let t6 = topo(spec(&[(1, 21), (2, 12)], 1), Some(&t5));
        assert!(!Arc::ptr_eq(&t5.slots[1].replica, &t6.slots[1].replica));
        // A higher replica count: the same slots, each a bigger set.
        let t7 = topo(spec(&[(1, 21), (3, 13), (2, 12), (4, 14)], 2), Some(&t6));
        assert_eq!(states(&t7), vec![Removed, Live, Live]);
        assert_eq!(t7.slots[1].replica.ids(), &[1, 3]);
        assert_eq!(t7.slots[2].replica.ids(), &[2, 4]);
    }

    #[test]
    fn a_spec_that_breaks_the_rules_is_refused() {
        let mut s = spec(&[(0, 10), (1, 11)], 1);
        s.draining = vec![0, 1];
        assert!(Topology::new(s, None, "t", Duration::from_secs(1)).is_err());
        assert!(
            Topology::new(
                spec(&[(0, 10), (1, 11), (2, 1)], 2),
                None,
                "t",
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
