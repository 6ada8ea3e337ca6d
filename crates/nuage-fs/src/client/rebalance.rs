//! Rebalance (gluster's DHT rebalance): after add-brick or remove-brick, rewrite every
//! directory's hash ranges over the subvolumes names now hash to (*fix-layout*), and
//! move each file to its hashed subvolume (*migrate*). Runs as a client of the volume,
//! on the bricks directly (one [`Replica`] per subvolume), in the management service of
//! each pool member: a member migrates the files of the subvolumes whose first brick it
//! holds, so that it can tell whether a file is open there (see [`open_here`]).
//!
//! Layouts written here are *not committed*: a name missing from its hashed subvolume
//! is then looked up on every subvolume, so a file is found wherever it is while files
//! move (and after: see docs/storage.md, "Rebalance").
//!
//! Migration of one regular file (data on `from`, its name hashing to `to`):
//! 1. on `to`, a new file with the same id under a temporary name, marked as a link
//!    file to `from` (so listings skip it and lookups that meet it go to `from`);
//! 2. the data, the user's extended attributes, owner and times are copied into it;
//! 3. the source is fenced (brick/fence.rs: refused if it is open; from then on, other
//!    connections' opens and changes of it wait); if it changed meanwhile, or is open,
//!    the copy is dropped (skipped);
//! 4. it is renamed over the name on `to` (replacing a link file there): lookups that
//!    hash to `to` meet a link file to `from`, still right;
//! 5. its mode is set to the source's: it is a plain file now, the data's new home;
//! 6. the name is removed from `from`, and the fence lifted: the requests it held find
//!    the old copy gone and look the file up again, at its new place.
//!
//! Symbolic links and special files are made again on `to` and removed from `from`.
//! Files with several hard links are skipped (counted), as are files open on `from`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::replica::{QuorumType, Replica};
use crate::client::spec::VolumeSpec;
use crate::gfid::Gfid;
use crate::layout::{DirLayout, Layout};
use crate::proto::{Creds, Entry, Errno, NewObject, Op, Reply, SetAttr, SetMeta, SetTime, Target};

type Res<T> = Result<T, Errno>;

/// Directory entries asked of a brick per `Readdir`.
const READDIR_BATCH: u32 = 1024;
/// Most names of one directory a rebalance reads at once (as heal's `MAX_HEAL_ENTRIES`).
pub const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Most directories one crawl keeps queued (a bound on memory; deeper trees are crawled
/// depth-first past it).
pub const MAX_QUEUED_DIRS: usize = 1_000_000;
/// How long a brick may take to answer the rebalance before it counts as down.
const REBALANCE_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the temporary name of a file being migrated (hidden from listings: it is
/// marked as a link file until it takes its real name).
pub const TEMP_PREFIX: &str = ".nuage-rebalance-";

/// Progress of one member's rebalance, as `rebalance status` shows it.
#[derive(Debug, Default)]
pub struct Counters {
    pub scanned: AtomicU64,
    pub moved: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub scanned: u64,
    pub moved: u64,
    pub bytes: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Progress {
        Progress {
            scanned: self.scanned.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// What became of one file.
enum Moved {
    Done(u64),
    Skipped(&'static str),
}

/// The entry `name` of directory `dir` on one subvolume (None if there is none).
async fn name_on(sv: &Replica, dir: Gfid, name: &[u8]) -> Res<Option<Entry>> {
    match sv
        .req(Op::Lookup {
            parent: dir,
            name: name.to_vec(),
        })
        .await
    {
        Ok(Reply::Entry(e)) => Ok(Some(e)),
        Ok(_) => Err(Errno(libc::EIO)),
        Err(Errno(libc::ENOENT)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The volume's subvolumes as the rebalance reaches them.
pub struct Crawler {
    spec: VolumeSpec,
    sets: Vec<Arc<Replica>>,
}

impl Crawler {
    pub fn new(spec: VolumeSpec, client: &str) -> anyhow::Result<Crawler> {
        spec.validate().map_err(anyhow::Error::msg)?;
        let quorum = match spec.quorum_type.as_deref() {
            None => QuorumType::Auto,
            Some(q) => QuorumType::parse(q).unwrap_or(QuorumType::Auto),
        };
        let sets = (0..spec.subvolume_count())
            .map(|k| {
                let conns = spec.connect_subvolume(k, client, REBALANCE_PING_TIMEOUT);
                Replica::new(
                    conns,
                    spec.subvolume(k).iter().map(|b| b.id).collect(),
                    quorum,
                )
            })
            .collect();
        Ok(Crawler { spec, sets })
    }

    fn n(&self) -> u32 {
        self.sets.len() as u32
    }

    fn hashable(&self) -> Vec<u32> {
        (0..self.n())
            .filter(|k| !self.spec.draining.contains(k))
            .collect()
    }

    fn sv(&self, k: u32) -> &Replica {
        &self.sets[k as usize]
    }

    /// Every name of directory `dir` on subvolume `k`, with its entry (EFBIG past
    /// [`MAX_DIR_ENTRIES`]: that directory is counted as failed).
    async fn list(&self, k: u32, dir: Gfid) -> Res<Vec<(Vec<u8>, Entry)>> {
        crate::client::copy::list_dir(self.sv(k), dir, READDIR_BATCH, MAX_DIR_ENTRIES).await
    }

    /// The subdirectories of `dir` (the union over every subvolume: a copy may be
    /// missing on one), with their entries.
    async fn subdirs(&self, dir: Gfid) -> Res<Vec<(Vec<u8>, Entry)>> {
        let mut out: Vec<(Vec<u8>, Entry)> = Vec::new();
        for k in 0..self.n() {
            for (name, e) in self.list(k, dir).await? {
                if e.attr.is_dir() && !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, e));
                }
            }
        }
        Ok(out)
    }

    /// Makes sure directory `parent/name` (id `g`) exists on every subvolume.
    async fn ensure_dir(&self, parent: Gfid, name: &[u8], g: Gfid, e: &Entry) -> Res<()> {
        for k in 0..self.n() {
            match self
                .sv(k)
                .req(Op::Lookup {
                    parent,
                    name: name.to_vec(),
                })
                .await
            {
                Ok(_) => continue,
                Err(Errno(libc::ENOENT)) => {}
                Err(err) => return Err(err),
            }
            let obj = NewObject {
                mode: e.attr.mode,
                rdev: 0,
                target: None,
                creds: Creds {
                    uid: e.attr.uid,
                    gid: e.attr.gid,
                    groups: Vec::new(),
                },
                afr: Default::default(),
                layout: None,
                linkto: None,
                open: None,
                lock: false,
            };
            match self
                .sv(k)
                .req(Op::Mknod {
                    parent,
                    name: name.to_vec(),
                    gfid: g,
                    obj,
                    parent_op: None,
                    check_epoch: None,
                })
                .await
            {
                Ok(_) | Err(Errno(libc::EEXIST)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Writes the new layout of `dir`: even ranges over the subvolumes names hash to,
    /// none for those being removed; not committed.
    async fn write_layout(&self, dir: Gfid) -> Res<()> {
        let epoch = self.spec.layout_epoch;
        let layout = Layout::even(&self.hashable(), dir, epoch, false);
        for k in 0..self.n() {
            let l = layout.of(k).unwrap_or(DirLayout {
                epoch,
                committed: false,
                range: None,
            });
            self.sv(k)
                .req(Op::SetMeta {
                    gfid: dir,
                    set: SetMeta {
                        layout: Some(l),
                        ..Default::default()
                    },
                })
                .await?;
        }
        Ok(())
    }

    /// The layout of `dir` as its copies hold it now.
    async fn layout_of(&self, dir: Gfid) -> Res<Layout> {
        let mut ranges = Vec::new();
        for k in 0..self.n() {
            let e = match self
                .sv(k)
                .req(Op::Stat {
                    gfid: dir,
                    fd: None,
                })
                .await?
            {
                Reply::Entry(e) => e,
                _ => return Err(Errno(libc::EIO)),
            };
            ranges.push((k, e.meta.layout));
        }
        Ok(Layout { ranges })
    }

    /// fix-layout: every directory gets a copy on every subvolume and its new ranges.
    /// `counters.scanned` counts directories.
    pub async fn fix_layout(&self, stop: &CancellationToken, c: &Counters) -> anyhow::Result<()> {
        let mut queue = VecDeque::from([Gfid::ROOT]);
        while let Some(dir) = queue.pop_front() {
            if stop.is_cancelled() {
                anyhow::bail!("stopped");
            }
            if let Err(e) = self.write_layout(dir).await {
                Counters::add(&c.failed, 1);
                tracing::warn!("fix-layout of {dir}: {}", e.describe());
                continue;
            }
            Counters::add(&c.scanned, 1);
            let subdirs = match self.subdirs(dir).await {
                Ok(s) => s,
                Err(e) => {
                    Counters::add(&c.failed, 1);
                    tracing::warn!("fix-layout: listing {dir}: {}", e.describe());
                    continue;
                }
            };
            for (name, e) in subdirs {
                let Some(g) = e.meta.gfid else { continue };
                if let Err(err) = self.ensure_dir(dir, &name, g, &e).await {
                    Counters::add(&c.failed, 1);
                    tracing::warn!("fix-layout: making directory {g}: {}", err.describe());
                    continue;
                }
                if queue.len() < MAX_QUEUED_DIRS {
                    queue.push_back(g);
                } else {
                    Counters::add(&c.failed, 1);
                }
            }
        }
        Ok(())
    }

    /// Moves the files of subvolumes `mine` that are not on their hashed subvolume (all
    /// of them, for a subvolume being removed). `local[k]` is the local path of the
    /// first brick of subvolume k, if on this machine (to see whether a file is open).
    pub async fn migrate(
        &self,
        mine: &[u32],
        local: &[Option<PathBuf>],
        stop: &CancellationToken,
        c: &Counters,
    ) -> anyhow::Result<()> {
        let mut queue = VecDeque::from([Gfid::ROOT]);
        while let Some(dir) = queue.pop_front() {
            if stop.is_cancelled() {
                anyhow::bail!("stopped");
            }
            let layout = match self.layout_of(dir).await {
                Ok(l) => l,
                Err(e) => {
                    Counters::add(&c.failed, 1);
                    tracing::warn!("rebalance: layout of {dir}: {}", e.describe());
                    continue;
                }
            };
            for &k in mine {
                let names = match self.list(k, dir).await {
                    Ok(n) => n,
                    Err(e) => {
                        Counters::add(&c.failed, 1);
                        tracing::warn!("rebalance: listing {dir} on {k}: {}", e.describe());
                        continue;
                    }
                };
                for (name, e) in names {
                    if stop.is_cancelled() {
                        anyhow::bail!("stopped");
                    }
                    if e.attr.is_dir() || is_linkto(&e) {
                        continue;
                    }
                    Counters::add(&c.scanned, 1);
                    let Some(to) = layout.hashed(&name) else {
                        Counters::add(&c.failed, 1);
                        continue;
                    };
                    if to == k && !self.spec.draining.contains(&k) {
                        continue;
                    }
                    let here = local.get(k as usize).cloned().flatten();
                    match self.move_file(dir, &name, &e, k, to, here).await {
                        Ok(Moved::Done(bytes)) => {
                            Counters::add(&c.moved, 1);
                            Counters::add(&c.bytes, bytes);
                        }
                        // Gone since it was listed: removed or renamed by a client (it
                        // is not lost; a renamed file is met again under its new name).
                        Err(Errno(libc::ENOENT)) | Err(Errno(libc::ESTALE)) => {
                            Counters::add(&c.skipped, 1);
                            tracing::info!(
                                "rebalance: {:?} in {dir} was removed or renamed meanwhile",
                                String::from_utf8_lossy(&name)
                            );
                        }
                        Ok(Moved::Skipped(why)) => {
                            Counters::add(&c.skipped, 1);
                            tracing::info!(
                                "rebalance: {:?} in {dir} stays on subvolume {k}: {why}",
                                String::from_utf8_lossy(&name)
                            );
                        }
                        Err(err) => {
                            Counters::add(&c.failed, 1);
                            tracing::warn!(
                                "rebalance: moving {:?} in {dir} from {k} to {to}: {}",
                                String::from_utf8_lossy(&name),
                                err.describe()
                            );
                        }
                    }
                }
            }
            match self.subdirs(dir).await {
                Ok(s) => {
                    for (_, e) in s {
                        if let Some(g) = e.meta.gfid {
                            if queue.len() < MAX_QUEUED_DIRS {
                                queue.push_back(g);
                            } else {
                                Counters::add(&c.failed, 1);
                            }
                        }
                    }
                }
                Err(e) => {
                    Counters::add(&c.failed, 1);
                    tracing::warn!("rebalance: listing {dir}: {}", e.describe());
                }
            }
        }
        Ok(())
    }

    async fn move_file(
        &self,
        dir: Gfid,
        name: &[u8],
        e: &Entry,
        from: u32,
        to: u32,
        local: Option<PathBuf>,
    ) -> Res<Moved> {
        let Some(g) = e.meta.gfid else {
            return Ok(Moved::Skipped(
                "no file id yet (looked up through a mount, it gets one)",
            ));
        };
        if e.attr.nlink > 1 {
            return Ok(Moved::Skipped("several hard links"));
        }
        if open_here(local.as_deref(), g) {
            return Ok(Moved::Skipped("open"));
        }
        if !e.attr.is_file() {
            return self.move_special(dir, name, e, g, from, to).await;
        }
        let tmp = format!("{TEMP_PREFIX}{g}").into_bytes();
        let (src, dst) = (self.sv(from), self.sv(to));
        // The name on the hashed subvolume: nothing, or a link file to this file. The
        // switch goes ahead only if it is still so once fenced (a mount that removed the
        // link file meanwhile is removing the file: the move must not bring it back).
        let before = name_on(dst, dir, name).await?;
        if let Some(b) = before.as_ref().filter(|b| !is_linkto(b)) {
            return Ok(Moved::Skipped(if b.meta.gfid == Some(g) {
                // Renaming over it would replace the file by its older copy.
                "a copy with its id already has its name on the hashed subvolume (a move interrupted after its switch)"
            } else {
                "another file has the name on its hashed subvolume"
            }));
        }
        if before.as_ref().is_some_and(|b| b.meta.gfid != Some(g)) {
            return Ok(Moved::Skipped(
                "its name on the hashed subvolume is a link file of another file",
            ));
        }
        // 1. The new copy, hidden as a link file to the data's subvolume.
        let obj = NewObject {
            mode: crate::brick::store::LINKTO_MODE,
            rdev: 0,
            target: None,
            creds: Creds::default(),
            afr: Default::default(),
            layout: None,
            linkto: None,
            open: Some(libc::O_RDWR),
            lock: false,
        };
        let created = dst
            .req(Op::Mknod {
                parent: dir,
                name: tmp.clone(),
                gfid: g,
                obj,
                parent_op: None,
                check_epoch: None,
            })
            .await;
        let wfd = match created {
            Ok(Reply::Created { fd: Some(fd), .. }) => fd,
            Ok(_) => return Err(Errno(libc::EIO)),
            Err(Errno(libc::EEXIST)) => {
                // A copy left by an interrupted run: drop it and try next time.
                let _ = self.drop_temp(dir, &tmp, g, to).await;
                return Ok(Moved::Skipped("an earlier copy was left half-made"));
            }
            Err(err) => return Err(err),
        };
        let result = async {
            dst.req(Op::SetMeta {
                gfid: g,
                set: SetMeta {
                    linkto: Some(Some(from)),
                    ..Default::default()
                },
            })
            .await?;
            // 2. Data, extended attributes, owner, times.
            let bytes = copy_data(src, dst, g, wfd).await?;
            copy_xattrs(src, dst, g).await?;
            dst.req(Op::Setattr {
                target: Target {
                    gfid: g,
                    fd: Some(wfd),
                },
                set: SetAttr {
                    uid: Some(e.attr.uid),
                    gid: Some(e.attr.gid),
                    atime: Some(SetTime::At(e.attr.atime)),
                    mtime: Some(SetTime::At(e.attr.mtime)),
                    ..Default::default()
                },
                op: None,
            })
            .await?;
            dst.req(Op::Fsync {
                target: Target {
                    gfid: g,
                    fd: Some(wfd),
                },
                datasync: false,
            })
            .await?;
            // 3. Fenced (not open on the source, and nobody may open or change it until
            // the move ends: brick/fence.rs), and unchanged since it was listed?
            match src.req(Op::Fence { gfid: g }).await {
                Ok(_) => {}
                Err(Errno(libc::EBUSY)) => return Ok(Moved::Skipped("opened while being copied")),
                Err(e) => return Err(e),
            }
            let now = match src.req(Op::Stat { gfid: g, fd: None }).await? {
                Reply::Entry(n) => n,
                _ => return Err(Errno(libc::EIO)),
            };
            if now.attr.size != e.attr.size
                || now.attr.mtime != e.attr.mtime
                || now.attr.ctime != e.attr.ctime
                || now.attr.nlink != e.attr.nlink
            {
                return Ok(Moved::Skipped("changed while being copied"));
            }
            Ok(Moved::Done(bytes))
        }
        .await;
        let _ = dst.req(Op::Close { fd: wfd }).await;
        // 3b. The name on the hashed subvolume fenced too (the link file and the new copy
        // carry the file's id), and as it was.
        let result = match result {
            Ok(Moved::Done(n)) => match self.fence_name(dst, dir, name, g, &before).await {
                Ok(None) => Ok(Moved::Done(n)),
                Ok(Some(why)) => Ok(Moved::Skipped(why)),
                Err(e) => Err(e),
            },
            other => other,
        };
        if !matches!(result, Ok(Moved::Done(_))) {
            let _ = src.req(Op::Unfence { gfid: g }).await;
            let _ = self.drop_temp(dir, &tmp, g, to).await;
            return result;
        }
        let switched = self.switch(dir, name, e, g, &tmp, from, to).await;
        // Requests held by the fences now go on: they find the old copy gone and the
        // client looks the file up again, at its new place.
        let _ = dst.req(Op::Unfence { gfid: g }).await;
        let _ = src.req(Op::Unfence { gfid: g }).await;
        switched.map(|()| Moved::Done(e.attr.size))
    }

    /// Fences file `g` on the subvolume it moves to and checks that `name` there is still
    /// `before` (nothing, or the same link file). None: fenced and unchanged; else why the
    /// move is skipped (the fence then lifted again).
    async fn fence_name(
        &self,
        dst: &Replica,
        dir: Gfid,
        name: &[u8],
        g: Gfid,
        before: &Option<Entry>,
    ) -> Res<Option<&'static str>> {
        match dst.req(Op::Fence { gfid: g }).await {
            Ok(_) => {}
            Err(Errno(libc::EBUSY)) => return Ok(Some("opened while being copied")),
            Err(e) => return Err(e),
        }
        let now = name_on(dst, dir, name).await;
        let same = match (&now, before) {
            (Ok(None), None) => true,
            (Ok(Some(n)), Some(b)) => is_linkto(n) && n.meta.gfid == b.meta.gfid,
            _ => false,
        };
        if same {
            return Ok(None);
        }
        let _ = dst.req(Op::Unfence { gfid: g }).await;
        now.map(|_| Some("its name changed on the hashed subvolume while being copied"))
    }

    /// Steps 4 to 6 of a move: the new copy takes the name, and the old one goes.
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        dir: Gfid,
        name: &[u8],
        e: &Entry,
        g: Gfid,
        tmp: &[u8],
        from: u32,
        to: u32,
    ) -> Res<()> {
        let (src, dst) = (self.sv(from), self.sv(to));
        // 4. Over the name on the hashed subvolume (a link file there, if any).
        dst.req(Op::Rename {
            parent: dir,
            name: tmp.to_vec(),
            new_parent: dir,
            new_name: name.to_vec(),
            flags: 0,
            parent_op: None,
            new_parent_op: None,
        })
        .await?;
        // 5. The switch: a plain file now.
        dst.req(Op::Setattr {
            target: Target { gfid: g, fd: None },
            set: SetAttr {
                mode: Some(e.attr.mode & 0o7777),
                ..Default::default()
            },
            op: None,
        })
        .await?;
        dst.req(Op::SetMeta {
            gfid: g,
            set: SetMeta {
                linkto: Some(None),
                ..Default::default()
            },
        })
        .await?;
        // 6. The old copy goes.
        src.req(Op::Unlink {
            parent: dir,
            name: name.to_vec(),
            gfid: Some(g),
            parent_op: None,
        })
        .await?;
        Ok(())
    }

    async fn drop_temp(&self, dir: Gfid, tmp: &[u8], g: Gfid, to: u32) -> Res<()> {
        self.sv(to)
            .req(Op::Unlink {
                parent: dir,
                name: tmp.to_vec(),
                gfid: Some(g),
                parent_op: None,
            })
            .await
            .map(drop)
    }

    /// Symbolic links, FIFOs, sockets, devices: made again on `to`, then removed from
    /// `from`. While layouts are not committed, a lookup meeting neither finds it on the
    /// other subvolume.
    async fn move_special(
        &self,
        dir: Gfid,
        name: &[u8],
        e: &Entry,
        g: Gfid,
        from: u32,
        to: u32,
    ) -> Res<Moved> {
        let (src, dst) = (self.sv(from), self.sv(to));
        let target = if e.attr.mode & libc::S_IFMT == libc::S_IFLNK {
            match src.req(Op::Readlink { gfid: g }).await? {
                Reply::Link(t) => Some(t),
                _ => return Err(Errno(libc::EIO)),
            }
        } else {
            None
        };
        match dst
            .req(Op::Lookup {
                parent: dir,
                name: name.to_vec(),
            })
            .await
        {
            Ok(Reply::Entry(there)) if is_linkto(&there) => {
                dst.req(Op::Unlink {
                    parent: dir,
                    name: name.to_vec(),
                    gfid: None,
                    parent_op: None,
                })
                .await?;
            }
            Ok(_) => {
                return Ok(Moved::Skipped(
                    "another file has the name on its hashed subvolume",
                ));
            }
            Err(Errno(libc::ENOENT)) => {}
            Err(err) => return Err(err),
        }
        let obj = NewObject {
            mode: e.attr.mode,
            rdev: e.attr.rdev,
            target,
            creds: Creds {
                uid: e.attr.uid,
                gid: e.attr.gid,
                groups: Vec::new(),
            },
            afr: Default::default(),
            layout: None,
            linkto: None,
            open: None,
            lock: false,
        };
        dst.req(Op::Mknod {
            parent: dir,
            name: name.to_vec(),
            gfid: g,
            obj,
            parent_op: None,
            check_epoch: None,
        })
        .await?;
        src.req(Op::Unlink {
            parent: dir,
            name: name.to_vec(),
            gfid: Some(g),
            parent_op: None,
        })
        .await?;
        Ok(Moved::Done(0))
    }

    /// Files and symbolic links (not directories, not link files) left on subvolume
    /// `k`: what `remove-brick commit` checks is zero.
    pub async fn files_on(&self, k: u32, stop: &CancellationToken) -> anyhow::Result<u64> {
        let mut queue = VecDeque::from([Gfid::ROOT]);
        let mut n = 0;
        while let Some(dir) = queue.pop_front() {
            if stop.is_cancelled() {
                anyhow::bail!("stopped");
            }
            let names = self
                .list(k, dir)
                .await
                .map_err(|e| anyhow::anyhow!("listing on subvolume {k}: {}", e.describe()))?;
            for (_, e) in names {
                if e.attr.is_dir() {
                    if let Some(g) = e.meta.gfid {
                        queue.push_back(g);
                    }
                } else if !is_linkto(&e) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn is_linkto(e: &Entry) -> bool {
    e.is_link_file()
}

/// Copies the contents of `g` from `src` into the open `wfd` on `dst`; returns the size.
async fn copy_data(src: &Replica, dst: &Replica, g: Gfid, wfd: u64) -> Res<u64> {
    let rfd = match src
        .req(Op::Open {
            gfid: g,
            flags: libc::O_RDONLY,
        })
        .await?
    {
        Reply::Opened { fd } => fd,
        _ => return Err(Errno(libc::EIO)),
    };
    let r = crate::client::copy::copy_bytes(src, dst, g, rfd, wfd).await;
    let _ = src.req(Op::Close { fd: rfd }).await;
    let size = r?;
    // Sparse tails and truncations: the copy ends exactly where the source does.
    dst.req(Op::Setattr {
        target: Target {
            gfid: g,
            fd: Some(wfd),
        },
        set: SetAttr {
            size: Some(size),
            ..Default::default()
        },
        op: None,
    })
    .await?;
    Ok(size)
}

/// Copies the user's extended attributes (nuage's own are not listed by bricks).
async fn copy_xattrs(src: &Replica, dst: &Replica, g: Gfid) -> Res<()> {
    let names = match src.req(Op::Listxattr { gfid: g }).await? {
        Reply::XattrNames(n) => n,
        _ => return Err(Errno(libc::EIO)),
    };
    for name in names {
        let value = match src
            .req(Op::Getxattr {
                gfid: g,
                name: name.clone(),
            })
            .await
        {
            Ok(Reply::Xattr(v)) => v,
            Err(Errno(libc::ENODATA)) => continue,
            Ok(_) => return Err(Errno(libc::EIO)),
            Err(e) => return Err(e),
        };
        dst.req(Op::Setxattr {
            gfid: g,
            name,
            value,
            flags: 0,
            op: None,
        })
        .await?;
    }
    Ok(())
}

/// Whether file `g` of the brick at `brick` is open in this process (brick servers run
/// in the node's process, so a file a mount holds open is open here). Unknown (no local
/// brick) counts as not open.
pub fn open_here(brick: Option<&std::path::Path>, g: Gfid) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(brick) = brick else { return false };
    let handle = brick
        .join(crate::brick::store::HIDDEN_DIR)
        .join("gfid")
        .join(crate::brick::store::handle_rel(&g));
    let Ok(md) = std::fs::symlink_metadata(&handle) else {
        return false;
    };
    let (dev, ino) = (md.dev(), md.ino());
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}
