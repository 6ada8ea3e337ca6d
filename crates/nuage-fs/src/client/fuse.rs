//! The FUSE mount: the kernel's requests mapped onto [`Volume`].
//!
//! Every request runs as its own task on a tokio runtime and answers when done, so slow
//! bricks never hold up other requests; it starts on the FUSE thread and moves to the
//! runtime when it first waits (see [`start_here`]). Inode numbers come from file ids (gfid.rs), so
//! they are the same for every client and every mount. Permissions are checked by the
//! kernel (`default_permissions`); bricks create files as the caller.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::client::bounded::make_room;
use crate::client::here::start_here;
use crate::client::volume::{Listing, OpenFile, Volume, new_object};
use crate::gfid::Gfid;
use crate::proto::{Attr, Creds, DirEntry, Errno, MAX_IO, SetAttr, SetTime, Timespec};

/// How long the kernel may cache attributes and names (gluster's attribute-timeout and
/// entry-timeout default to 1 s too).
pub const ATTR_TTL: Duration = Duration::from_secs(1);
/// Most supplementary groups read for a caller (the brick's bound too).
const MAX_CALLER_GROUPS: usize = 1024;
/// The attribute the kernel asks for before every write (to clear file capabilities).
const CAPABILITY_XATTR: &[u8] = b"security.capability";
/// Most files remembered as having no `security.capability`.
const MAX_NO_CAPS: usize = 65536;

/// What an open or a creation is answered with. `close(2)` of a descriptor that cannot
/// have written (opened read-only), or whose close would not wait for its writes anyway
/// (`performance.flush-behind` on), makes the kernel send nothing (FOPEN_NOFLUSH, Linux
/// 5.16 and later; older kernels ignore the flag and send FLUSH as before): one round
/// trip through the kernel less per file read or written, about a seventh of a small
/// file's creation on the benchmark machine. The price, with flush-behind on: a write
/// failure already known when the file is closed is no longer reported by that
/// `close(2)` but by the file's next write or `fsync` through the mount, and logged at
/// release, as a failure found after the close always was. POSIX locks are the kernel's
/// (the mount implements none), so no FLUSH is needed to release them.
fn fopen_flags(open_flags: i32, flush_behind: bool) -> FopenFlags {
    let read_only = open_flags & libc::O_ACCMODE == libc::O_RDONLY;
    if read_only || flush_behind {
        FopenFlags::FOPEN_NOFLUSH
    } else {
        FopenFlags::empty()
    }
}

struct Node {
    gfid: Gfid,
    is_dir: bool,
    lookups: u64,
}

struct DirState {
    listing: Listing,
    /// Entries fetched but not yet passed to the kernel, with their offsets.
    buffer: Vec<(u64, DirEntry)>,
    /// Offset of the last entry fetched from the bricks.
    fetched: u64,
}

enum Handle_ {
    File(OpenFile),
    Dir(Arc<tokio::sync::Mutex<DirState>>),
}

/// The mounted file system.
pub struct NuageFs {
    volume: Arc<Volume>,
    rt: Handle,
    nodes: Arc<Mutex<HashMap<u64, Node>>>,
    handles: Arc<Mutex<HashMap<u64, Handle_>>>,
    next_fh: AtomicU64,
    no_caps: Arc<NoCaps>,
}

/// Files known to have no `security.capability` attribute, and since when. The kernel
/// asks for it before *every* write (a brick round trip each, in the way of the write);
/// as gluster's md-cache does, the answer is reused for [`ATTR_TTL`], as long as the
/// kernel keeps attributes. A file created here has none; setting or removing any
/// attribute of a file through this mount forgets it.
#[derive(Default)]
struct NoCaps(Mutex<HashMap<u64, Instant>>);

impl NoCaps {
    fn known(&self, ino: u64) -> bool {
        self.0
            .lock()
            .expect("no caps")
            .get(&ino)
            .is_some_and(|t| t.elapsed() < ATTR_TTL)
    }

    fn remember(&self, ino: u64) {
        let mut m = self.0.lock().expect("no caps");
        make_room(&mut m, MAX_NO_CAPS, |t| t.elapsed() < ATTR_TTL);
        m.insert(ino, Instant::now());
    }

    fn forget(&self, ino: u64) {
        self.0.lock().expect("no caps").remove(&ino);
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            }),
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos();
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                SetTime::At(Timespec { sec, nsec })
            }
        },
    })
}

/// Whether a SETATTR must drop the file's set-user-ID and set-group-ID bits. With
/// FUSE_HANDLE_KILLPRIV_V2 the kernel asks for it with a flag (FATTR_KILL_SUIDGID) that
/// fuser does not pass on, on a truncation, or alone (an otherwise empty SETATTR, as after
/// a `fallocate` that grows the file). The caller's capabilities are not known here either,
/// so a caller other than root counts as one without CAP_FSETID: the bits go at a
/// truncation or an empty SETATTR by anyone but root, as they do on a local file system
/// for every caller without CAP_FSETID.
fn kills_privileges(uid: u32, set: &SetAttr) -> bool {
    let empty = SetAttr::default();
    uid != 0 && (set.size.is_some() || *set == empty)
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(g: Gfid, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(g.ino()),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: if a.blksize == 0 { 4096 } else { a.blksize },
        flags: 0,
    }
}

/// The caller's identity, with its supplementary groups from /proc (as gluster's
/// resolve-gids does), so set-group-id directories and group permissions work on bricks.
fn creds(req: &Request) -> Creds {
    let mut groups = Vec::new();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) {
        if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
            groups = line[7..]
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .take(MAX_CALLER_GROUPS)
                .collect();
        }
    }
    if !groups.contains(&req.gid()) {
        groups.push(req.gid());
    }
    Creds {
        uid: req.uid(),
        gid: req.gid(),
        groups,
    }
}

impl NuageFs {
    pub fn new(volume: Arc<Volume>, rt: Handle) -> NuageFs {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                gfid: Gfid::ROOT,
                is_dir: true,
                lookups: 1,
            },
        );
        NuageFs {
            volume,
            rt,
            nodes: Arc::new(Mutex::new(nodes)),
            handles: Arc::new(Mutex::new(HashMap::new())),
            next_fh: AtomicU64::new(1),
            no_caps: Arc::default(),
        }
    }

    fn node(&self, ino: INodeNo) -> Result<(Gfid, bool), Errno> {
        self.nodes
            .lock()
            .expect("nodes")
            .get(&ino.0)
            .map(|n| (n.gfid, n.is_dir))
            .ok_or(Errno(libc::ESTALE))
    }

    fn file(&self, fh: FileHandle) -> Result<OpenFile, Errno> {
        match self.handles.lock().expect("handles").get(&fh.0) {
            Some(Handle_::File(f)) => Ok(*f),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    /// An open file of `g`, if any (linear in the open files; used only for getattr).
    fn any_open(&self, g: Gfid) -> Option<OpenFile> {
        self.handles
            .lock()
            .expect("handles")
            .values()
            .find_map(|h| match h {
                Handle_::File(f) if f.gfid == g => Some(*f),
                _ => None,
            })
    }

    fn add_handle(&self, h: Handle_) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles").insert(fh, h);
        FileHandle(fh)
    }

    /// Records one more kernel reference to a file found or made.
    fn remember(nodes: &Mutex<HashMap<u64, Node>>, g: Gfid, a: &Attr) {
        let mut nodes = nodes.lock().expect("nodes");
        let n = nodes.entry(g.ino()).or_insert(Node {
            gfid: g,
            is_dir: a.is_dir(),
            lookups: 0,
        });
        n.gfid = g;
        n.is_dir = a.is_dir();
        n.lookups += 1;
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        start_here(&self.rt, f);
    }

    fn entry_reply(nodes: &Mutex<HashMap<u64, Node>>, reply: ReplyEntry, g: Gfid, a: &Attr) {
        Self::remember(nodes, g, a);
        reply.entry(&ATTR_TTL, &file_attr(g, a), Generation(0));
    }
}

impl Filesystem for NuageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_background(64);
        // Listings carry attributes: `ls -l` needs no lookup per name.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // Set-user-ID and set-group-ID bits are dropped by the bricks, at writes and
        // truncations by callers who may not keep them (brick::store::without_privileges);
        // the kernel then stops asking for `security.capability` before every write.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (v, nodes, name) = (
            self.volume.clone(),
            self.nodes.clone(),
            name.as_bytes().to_vec(),
        );
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        self.spawn(async move {
            match v.lookup(p, &name).await {
                Ok(f) if !f.attr.is_dir() && v.writes_pending(f.gfid) => {
                    // The size must include writes already acknowledged.
                    match v.getattr(f.gfid, false, None).await {
                        Ok(a) => Self::entry_reply(&nodes, reply, f.gfid, &a),
                        Err(e) => reply.error(errno(e)),
                    }
                }
                Ok(f) => Self::entry_reply(&nodes, reply, f.gfid, &f.attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 == 1 {
            return;
        }
        let mut nodes = self.nodes.lock().expect("nodes");
        if let Some(n) = nodes.get_mut(&ino.0) {
            n.lookups = n.lookups.saturating_sub(nlookup);
            if n.lookups == 0 {
                nodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let (g, is_dir) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        // fstat(2) of an unlinked open file comes without a handle: use one of ours.
        let f = fh
            .and_then(|fh| self.file(fh).ok())
            .or_else(|| if is_dir { None } else { self.any_open(g) });
        let v = self.volume.clone();
        self.spawn(async move {
            match v.getattr(g, is_dir, f).await {
                Ok(a) => reply.attr(&ATTR_TTL, &file_attr(g, &a)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (g, is_dir) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        let f = fh.and_then(|fh| self.file(fh).ok());
        let mut set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            kill_suidgid: false,
        };
        set.kill_suidgid = !is_dir && kills_privileges(req.uid(), &set);
        let v = self.volume.clone();
        self.spawn(async move {
            match v.setattr(g, is_dir, set, f).await {
                Ok(a) => reply.attr(&ATTR_TTL, &file_attr(g, &a)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let g = match self.node(ino) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let v = self.volume.clone();
        self.spawn(async move {
            match v.readlink(g).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let mut obj = new_object(mode & !umask | (mode & libc::S_IFMT), creds(req));
        obj.rdev = u64::from(rdev);
        let (v, nodes, name) = (
            self.volume.clone(),
            self.nodes.clone(),
            name.as_bytes().to_vec(),
        );
        self.spawn(async move {
            match v.create(p, &name, obj).await {
                Ok((f, _)) => Self::entry_reply(&nodes, reply, f.gfid, &f.attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let obj = new_object(libc::S_IFDIR | (mode & !umask & 0o7777), creds(req));
        let (v, nodes, name) = (
            self.volume.clone(),
            self.nodes.clone(),
            name.as_bytes().to_vec(),
        );
        self.spawn(async move {
            match v.mkdir(p, &name, obj).await {
                Ok(f) => Self::entry_reply(&nodes, reply, f.gfid, &f.attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let (v, name) = (self.volume.clone(), name.as_bytes().to_vec());
        self.spawn(async move {
            match v.unlink(p, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let (v, name) = (self.volume.clone(), name.as_bytes().to_vec());
        self.spawn(async move {
            match v.rmdir(p, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let mut obj = new_object(libc::S_IFLNK | 0o777, creds(req));
        obj.target = Some(target.as_os_str().as_bytes().to_vec());
        let (v, nodes, name) = (
            self.volume.clone(),
            self.nodes.clone(),
            link_name.as_bytes().to_vec(),
        );
        self.spawn(async move {
            match v.create(p, &name, obj).await {
                Ok((f, _)) => Self::entry_reply(&nodes, reply, f.gfid, &f.attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (p, np) = match (self.node(parent), self.node(newparent)) {
            (Ok((p, _)), Ok((np, _))) => (p, np),
            (Err(e), _) | (_, Err(e)) => return reply.error(errno(e)),
        };
        let (v, name, newname) = (
            self.volume.clone(),
            name.as_bytes().to_vec(),
            newname.as_bytes().to_vec(),
        );
        let flags = flags.bits();
        self.spawn(async move {
            match v.rename(p, &name, np, &newname, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (g, np) = match (self.node(ino), self.node(newparent)) {
            (Ok((g, _)), Ok((np, _))) => (g, np),
            (Err(e), _) | (_, Err(e)) => return reply.error(errno(e)),
        };
        let (v, nodes, name) = (
            self.volume.clone(),
            self.nodes.clone(),
            newname.as_bytes().to_vec(),
        );
        self.spawn(async move {
            match v.link(g, np, &name).await {
                Ok(f) => Self::entry_reply(&nodes, reply, f.gfid, &f.attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let g = match self.node(ino) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let (v, handles) = (self.volume.clone(), self.handles.clone());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.spawn(async move {
            match v.open(g, flags.0).await {
                Ok(f) => {
                    handles
                        .lock()
                        .expect("handles")
                        .insert(fh, Handle_::File(f));
                    let reply_flags = fopen_flags(flags.0, v.flush_behind_on());
                    reply.opened(FileHandle(fh), reply_flags);
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let v = self.volume.clone();
        self.spawn(async move {
            match v.read(f, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        // Queued at once when write-behind has room: answered from this thread.
        let now = {
            let _rt = self.rt.enter();
            self.volume.write_now(f, offset, data, kill)
        };
        match now {
            Some(Ok(n)) => return reply.written(n),
            Some(Err(e)) => return reply.error(errno(e)),
            None => {}
        }
        let (v, data) = (self.volume.clone(), data.to_vec());
        self.spawn(async move {
            match v.write_with(f, offset, data, kill).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        // Flush-behind: answered from this thread.
        match self.volume.flush_behind(f) {
            Some(Ok(())) => return reply.ok(),
            Some(Err(e)) => return reply.error(errno(e)),
            None => {}
        }
        let v = self.volume.clone();
        self.spawn(async move {
            match v.flush(f).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = self.handles.lock().expect("handles").remove(&fh.0);
        reply.ok();
        if let Some(Handle_::File(f)) = h {
            let v = self.volume.clone();
            self.spawn(async move {
                let _ = v.release(f).await;
            });
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let v = self.volume.clone();
        self.spawn(async move {
            match v.fsync(f, datasync).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let g = match self.node(ino) {
            Ok((g, true)) => g,
            Ok(_) => return reply.error(fuser::Errno::ENOTDIR),
            Err(e) => return reply.error(errno(e)),
        };
        let state = DirState {
            listing: self.volume.listing(g),
            buffer: Vec::new(),
            fetched: 2,
        };
        let fh = self.add_handle(Handle_::Dir(Arc::new(tokio::sync::Mutex::new(state))));
        reply.opened(fh, FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = match self.handles.lock().expect("handles").get(&fh.0) {
            Some(Handle_::Dir(s)) => s.clone(),
            _ => return reply.error(fuser::Errno::EBADF),
        };
        let v = self.volume.clone();
        self.spawn(async move {
            let mut st = state.lock().await;
            // Offsets: 1 is ".", 2 is "..", then entries in listing order.
            let oldest = st.buffer.first().map_or(st.fetched + 1, |(o, _)| *o);
            if offset < 2 || offset + 1 < oldest {
                // rewinddir or a seek back: list again from the start.
                st.listing = v.listing(st.listing.dir);
                st.buffer.clear();
                st.fetched = 2;
            }
            if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            if offset < 2 && reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            st.buffer.retain(|(o, _)| *o > offset);
            loop {
                if st.buffer.is_empty() {
                    let DirState { listing, .. } = &mut *st;
                    let batch = match v.next_entries(listing).await {
                        Ok(b) => b,
                        Err(e) => return reply.error(errno(e)),
                    };
                    if batch.is_empty() {
                        return reply.ok();
                    }
                    for e in batch {
                        st.fetched += 1;
                        let o = st.fetched;
                        if o > offset {
                            st.buffer.push((o, e));
                        }
                    }
                    continue;
                }
                let (o, e) = st.buffer.first().expect("not empty");
                let en = e
                    .entry
                    .as_ref()
                    .expect("listings keep entries with attributes");
                let ino = en
                    .meta
                    .gfid
                    .map_or(u64::from(crate::layout::name_hash(&e.name)) + 2, |g| {
                        g.ino()
                    });
                if reply.add(
                    INodeNo(ino),
                    *o,
                    kind(en.attr.mode),
                    OsStr::from_bytes(&e.name),
                ) {
                    return reply.ok();
                }
                st.buffer.remove(0);
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let state = match self.handles.lock().expect("handles").get(&fh.0) {
            Some(Handle_::Dir(s)) => s.clone(),
            _ => return reply.error(fuser::Errno::EBADF),
        };
        let (v, nodes) = (self.volume.clone(), self.nodes.clone());
        self.spawn(async move {
            let mut st = state.lock().await;
            let oldest = st.buffer.first().map_or(st.fetched + 1, |(o, _)| *o);
            if offset < 2 || offset + 1 < oldest {
                st.listing = v.listing(st.listing.dir);
                st.buffer.clear();
                st.fetched = 2;
            }
            let dir_g = st.listing.dir;
            // "." and "..": the kernel takes no reference for them.
            let dot = match v.getattr(dir_g, true, None).await {
                Ok(a) => file_attr(dir_g, &a),
                Err(e) => return reply.error(errno(e)),
            };
            if offset < 1 && reply.add(ino, 1, ".", &ATTR_TTL, &dot, Generation(0)) {
                return reply.ok();
            }
            if offset < 2 && reply.add(ino, 2, "..", &ATTR_TTL, &dot, Generation(0)) {
                return reply.ok();
            }
            st.buffer.retain(|(o, _)| *o > offset);
            loop {
                if st.buffer.is_empty() {
                    let DirState { listing, .. } = &mut *st;
                    let batch = match v.next_entries(listing).await {
                        Ok(b) => b,
                        Err(e) => return reply.error(errno(e)),
                    };
                    if batch.is_empty() {
                        return reply.ok();
                    }
                    for e in batch {
                        st.fetched += 1;
                        let o = st.fetched;
                        if o > offset {
                            st.buffer.push((o, e));
                        }
                    }
                    continue;
                }
                let (o, e) = st.buffer.first().expect("not empty").clone();
                let en = e
                    .entry
                    .as_ref()
                    .expect("listings keep entries with attributes");
                // A name without an id (put on a brick directly), or a file whose
                // acknowledged writes are still on their way: ask properly.
                let found = match en.meta.gfid {
                    Some(g) if en.attr.is_dir() || !v.writes_pending(g) => Ok((g, en.attr)),
                    _ => v.lookup(dir_g, &e.name).await.map(|f| (f.gfid, f.attr)),
                };
                // An error: gone since it was listed, so left out.
                if let Ok((g, attr)) = found {
                    let fa = file_attr(g, &attr);
                    if reply.add(
                        fa.ino,
                        o,
                        OsStr::from_bytes(&e.name),
                        &ATTR_TTL,
                        &fa,
                        Generation(0),
                    ) {
                        return reply.ok();
                    }
                    Self::remember(&nodes, g, &attr);
                }
                st.buffer.remove(0);
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().expect("handles").remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are made by the bricks' own system calls before they answer.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let v = self.volume.clone();
        self.spawn(async move {
            match v.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (g, is_dir) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        self.no_caps.forget(ino.0);
        let (v, name, value) = (
            self.volume.clone(),
            name.as_bytes().to_vec(),
            value.to_vec(),
        );
        self.spawn(async move {
            match v.setxattr(g, is_dir, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (g, is_dir) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        let caps = name.as_bytes() == CAPABILITY_XATTR;
        if caps && self.no_caps.known(ino.0) {
            return reply.error(fuser::Errno::from_i32(libc::ENODATA));
        }
        let (v, name, no_caps) = (
            self.volume.clone(),
            name.as_bytes().to_vec(),
            self.no_caps.clone(),
        );
        self.spawn(async move {
            match v.getxattr(g, is_dir, &name).await {
                Ok(val) => xattr_reply(reply, size, &val),
                Err(e) => {
                    if caps && e == Errno(libc::ENODATA) {
                        no_caps.remember(ino.0);
                    }
                    reply.error(errno(e))
                }
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (g, is_dir) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        let v = self.volume.clone();
        self.spawn(async move {
            match v.listxattr(g, is_dir).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    xattr_reply(reply, size, &buf)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (g, is_dir) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        self.no_caps.forget(ino.0);
        let (v, name) = (self.volume.clone(), name.as_bytes().to_vec());
        self.spawn(async move {
            match v.removexattr(g, is_dir, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel has checked already.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let p = match self.node(parent) {
            Ok((g, _)) => g,
            Err(e) => return reply.error(errno(e)),
        };
        let mut obj = new_object(libc::S_IFREG | (mode & !umask & 0o7777), creds(req));
        obj.open = Some(flags);
        let (v, nodes, handles, name, no_caps) = (
            self.volume.clone(),
            self.nodes.clone(),
            self.handles.clone(),
            name.as_bytes().to_vec(),
            self.no_caps.clone(),
        );
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.spawn(async move {
            match v.create(p, &name, obj).await {
                Ok((f, Some(open))) => {
                    Self::remember(&nodes, f.gfid, &f.attr);
                    // A new file has no capabilities.
                    no_caps.remember(f.gfid.ino());
                    handles
                        .lock()
                        .expect("handles")
                        .insert(fh, Handle_::File(open));
                    reply.created(
                        &ATTR_TTL,
                        &file_attr(f.gfid, &f.attr),
                        Generation(0),
                        FileHandle(fh),
                        fopen_flags(flags, v.flush_behind_on()),
                    );
                }
                Ok((_, None)) => reply.error(fuser::Errno::EIO),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let v = self.volume.clone();
        self.spawn(async move {
            match v.fallocate(f, mode, offset, length).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(fuser::Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Mount options for a volume mount: `fsname` shows `HOST:/VOLUME` in `df` and
/// /proc/mounts, every user may use the mount (as gluster's), the kernel checks
/// permissions.
pub fn mount_config(source: &str) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName(source.to_owned()),
        MountOption::Subtype("nuage".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    c.acl = SessionACL::All;
    c
}

/// Mounts `volume` on `mountpoint` in the background; dropping the session unmounts.
pub fn mount_background(
    volume: Arc<Volume>,
    rt: Handle,
    source: &str,
    mountpoint: &Path,
) -> std::io::Result<fuser::BackgroundSession> {
    fuser::spawn_mount(NuageFs::new(volume, rt), mountpoint, &mount_config(source))
}

/// Mounts and serves until the file system is unmounted.
pub fn mount_foreground(
    volume: Arc<Volume>,
    rt: Handle,
    source: &str,
    mountpoint: &Path,
) -> std::io::Result<()> {
    fuser::mount(NuageFs::new(volume, rt), mountpoint, &mount_config(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_descriptors_that_may_have_writes_to_wait_for_are_flushed_at_close() {
        let no_flush = FopenFlags::FOPEN_NOFLUSH;
        for flush_behind in [false, true] {
            assert_eq!(fopen_flags(libc::O_RDONLY, flush_behind), no_flush);
            assert_eq!(
                fopen_flags(libc::O_RDONLY | libc::O_TRUNC, flush_behind),
                no_flush
            );
        }
        for access in [libc::O_WRONLY, libc::O_RDWR] {
            let created = access | libc::O_CREAT | libc::O_EXCL;
            assert_eq!(fopen_flags(access, false), FopenFlags::empty());
            assert_eq!(fopen_flags(created, false), FopenFlags::empty());
            assert_eq!(fopen_flags(access | libc::O_APPEND, true), no_flush);
            assert_eq!(fopen_flags(created, true), no_flush);
        }
    }
}
