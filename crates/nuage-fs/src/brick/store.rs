//! A brick on disk: the volume's files as plain files and directories under the brick
//! path, and beside them what the volume needs:
//!
//! ```text
//! BRICK/                       the volume's files (`ls` shows them)
//! BRICK/.nuage/                hidden from clients
//!   brick.json                 which volume and brick this is
//!   gfid/aa/bb/<gfid>          a handle per file: a hard link (files, symlinks, devices)
//!                              or a symlink `../../pa/pb/<parent-gfid>/<name>` (directories)
//!   index/<gfid>               files whose replication markers are not clean (heal index)
//! ```
//!
//! Extended attributes (`trusted.nuage.*`, so only root reads or changes them): `gfid`,
//! `afr` (markers, see markers.rs), `layout` (directories), `linkto` (link files), and
//! `volume-id` on the brick root. A file's `gfid` and a clean or dirty-only `afr` fit in
//! the inode of an ext4 brick (256-byte inodes); a third attribute would not, and an
//! attribute block costs a block allocation per file created and, on a file system
//! mounted with `discard`, a synchronous discard per file removed (measured: an unlink
//! 10 µs without, 75 µs with). So where a non-directory lives is not recorded: `path`
//! (heal reports) searches the brick for it; `loc` (parent id and name), written by
//! earlier releases, is still used when it is still true. Every operation is relative to an open directory (`*at` calls), so path length on
//! the brick never limits the volume, and symlinks stored on a brick are never followed.
//!
//! All functions here block; the server runs them on tokio's blocking pool.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::gfid::Gfid;
use crate::layout::DirLayout;
use crate::markers::{AfrDelta, AfrState};
use crate::proto::{
    Attr, Creds, DirEntry, Entry, Errno, MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN, Meta, NewObject,
    SetAttr, SetMeta, Statfs, Timespec, check_name,
};
use crate::sys::{self, SysResult, XTarget, cstr};

/// The hidden directory at the root of every brick.
pub const HIDDEN_DIR: &str = ".nuage";
pub const XATTR_GFID: &str = "trusted.nuage.gfid";
pub const XATTR_AFR: &str = "trusted.nuage.afr";
pub const XATTR_LAYOUT: &str = "trusted.nuage.layout";
pub const XATTR_LINKTO: &str = "trusted.nuage.linkto";
/// Parent id and name of a non-directory, written by earlier releases (read only now:
/// see the module comment).
pub const XATTR_LOC: &str = "trusted.nuage.loc";
pub const XATTR_VOLUME_ID: &str = "trusted.nuage.volume-id";
/// The mode of a link file (`---------T`): a regular file with only the sticky bit.
pub const LINKTO_MODE: u32 = libc::S_IFREG | libc::S_ISVTX;
/// Open directories kept per brick (resolving a directory id walks its handles once).
pub const DIR_CACHE_SIZE: usize = 4096;
/// Bytes of directory entries read from the kernel at a time.
const GETDENTS_BUF: usize = 64 << 10;
/// Encoded size budget of one `Readdir` answer (below the protocol's body limit).
const READDIR_BYTES: usize = 768 << 10;
/// Deepest directory chain a handle resolution follows before calling it a loop.
const MAX_DEPTH: usize = 8192;
/// Most directory entries [`Store::path`] reads looking for the name of a file (names of
/// non-directories are not recorded: see the module comment); beyond, the file is
/// reported by id.
pub const MAX_NAME_SEARCH: usize = 1_000_000;
/// Deepest directory [`Store::path`] looks into (one open directory per level).
const MAX_SEARCH_DEPTH: usize = 256;
/// Most bytes of a client's write given to the kernel in one `pwrite`. The kernel (ext4
/// with large folios, Linux 6.x) sizes the page-cache folios it allocates for a write by
/// the write's length; 1 MiB writes get 1 MiB folios, and on a virtual machine whose free
/// memory is handed back to the host (virtio-balloon free page reporting) the first touch
/// of such a folio costs about 4× the CPU of the same bytes written 256 KiB at a time
/// (measured on the benchmark machine: 1.0–1.2 s against 0.25 s of system time per GiB;
/// rewriting folios already in the cache costs 0.15 s either way). GlusterFS's bricks
/// write 128 KiB at a time (its write-behind's aggregate size). The pieces are written in
/// order; a failure stops the write, as a short `pwrite` would.
pub const PAGE_CACHE_WRITE: usize = 256 << 10;

fn xname(name: &str) -> CString {
    CString::new(name).expect("attribute names have no NUL")
}

/// Which brick of which volume a directory is, kept in `.nuage/brick.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrickIdentity {
    pub volume: String,
    pub volume_id: String,
    pub brick_id: u32,
}

/// An object of the volume on this brick, opened the way operations need it.
enum Obj {
    /// Directories: an open fd.
    Dir(Arc<OwnedFd>),
    /// Everything else: its handle, relative to the handles directory.
    Handle(CString),
}

pub struct Store {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    handles: OwnedFd,
    index: OwnedFd,
    dirs: Mutex<DirCache>,
    /// Serializes marker read-modify-writes and handle upkeep per file id.
    stripes: Vec<Mutex<()>>,
    names: Names,
}

struct Names {
    gfid: CString,
    afr: CString,
    layout: CString,
    linkto: CString,
    loc: CString,
}

struct DirCache {
    map: HashMap<Gfid, (Arc<OwnedFd>, u64)>,
    tick: u64,
}

impl DirCache {
    fn get(&mut self, g: &Gfid) -> Option<Arc<OwnedFd>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(g).map(|(fd, t)| {
            *t = tick;
            fd.clone()
        })
    }
    fn put(&mut self, g: Gfid, fd: Arc<OwnedFd>) {
        if self.map.len() >= DIR_CACHE_SIZE {
            // Drop the least recently used eighth.
            let mut ticks: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 8];
            self.map.retain(|k, (_, t)| *t > cut || *k == Gfid::ROOT);
        }
        self.tick += 1;
        self.map.insert(g, (fd, self.tick));
    }
    fn remove(&mut self, g: &Gfid) {
        self.map.remove(g);
    }
}

/// `aa/bb/<uuid>`: where a file's handle lives under `.nuage/gfid`.
pub fn handle_rel(g: &Gfid) -> String {
    let h = crate::gfid::hex(&g.0[..2]);
    format!("{}/{}/{}", &h[0..2], &h[2..4], g.to_uuid())
}

fn st_time(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        sec,
        nsec: nsec as u32,
    }
}

/// Attributes from a stat, with the handle's link left out of the count.
fn attr_of(st: &libc::stat, has_handle: bool) -> Attr {
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    // Names + the handle. 1 is a name without a handle (a link file, or a file just put
    // on the brick), 0 an open file whose last name is gone.
    let nlink = if !is_dir && has_handle && st.st_nlink >= 2 {
        st.st_nlink as u32 - 1
    } else {
        st.st_nlink as u32
    };
    Attr {
        mode: st.st_mode,
        nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: st_time(st.st_atime, st.st_atime_nsec),
        mtime: st_time(st.st_mtime, st.st_mtime_nsec),
        ctime: st_time(st.st_ctime, st.st_ctime_nsec),
    }
}

impl Store {
    /// Opens (and on first use prepares) the brick at `root` for `identity`. The
    /// directory must exist: a missing brick directory usually means a disk that is
    /// not mounted, and writing to the file system below it would be wrong.
    pub fn open(root: &Path, identity: &BrickIdentity) -> anyhow::Result<Store> {
        use anyhow::{Context, bail};
        let meta = std::fs::metadata(root)
            .with_context(|| format!("brick directory {}", root.display()))?;
        if !meta.is_dir() {
            bail!("brick {} is not a directory", root.display());
        }
        let root_c =
            cstr(root.as_os_str().as_encoded_bytes()).map_err(|_| anyhow::anyhow!("bad path"))?;
        let root_fd = sys::open_dir(libc::AT_FDCWD, &root_c).map_err(|e| {
            anyhow::anyhow!("cannot open brick {}: {}", root.display(), e.describe())
        })?;
        let vid = xname(XATTR_VOLUME_ID);
        match sys::getxattr(XTarget::Fd(root_fd.as_raw_fd()), &vid) {
            Ok(Some(v)) if v == identity.volume_id.as_bytes() => {}
            Ok(Some(v)) => bail!(
                "brick {} belongs to another volume (volume id {}); use a fresh directory",
                root.display(),
                String::from_utf8_lossy(&v)
            ),
            Ok(None) => sys::setxattr(
                XTarget::Fd(root_fd.as_raw_fd()),
                &vid,
                identity.volume_id.as_bytes(),
                0,
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot set extended attributes on {} ({}); bricks need a file system with extended attributes and nuage running as root",
                    root.display(),
                    e.describe()
                )
            })?,
            Err(e) => bail!(
                "cannot read extended attributes of {} ({}); bricks need a file system with extended attributes and nuage running as root",
                root.display(),
                e.describe()
            ),
        }
        let hidden = root.join(HIDDEN_DIR);
        for sub in ["", "gfid", "index", "tmp"] {
            let d = hidden.join(sub);
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
            }
        }
        std::fs::set_permissions(&hidden, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let id_file = hidden.join("brick.json");
        match std::fs::read(&id_file) {
            Ok(bytes) => {
                let found: BrickIdentity = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", id_file.display()))?;
                if found.volume_id != identity.volume_id {
                    bail!(
                        "brick {} belongs to volume {}",
                        root.display(),
                        found.volume
                    );
                }
            }
            Err(_) => std::fs::write(&id_file, serde_json::to_vec_pretty(identity)?)
                .with_context(|| format!("writing {}", id_file.display()))?,
        }
        let open = |p: &Path| -> anyhow::Result<OwnedFd> {
            let c =
                cstr(p.as_os_str().as_encoded_bytes()).map_err(|_| anyhow::anyhow!("bad path"))?;
            sys::open_dir(libc::AT_FDCWD, &c)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {}", p.display(), e.describe()))
        };
        let store = Store {
            root: root.to_owned(),
            root_fd: Arc::new(root_fd),
            handles: open(&hidden.join("gfid"))?,
            index: open(&hidden.join("index"))?,
            dirs: Mutex::new(DirCache {
                map: HashMap::new(),
                tick: 0,
            }),
            stripes: (0..64).map(|_| Mutex::new(())).collect(),
            names: Names {
                gfid: xname(XATTR_GFID),
                afr: xname(XATTR_AFR),
                layout: xname(XATTR_LAYOUT),
                linkto: xname(XATTR_LINKTO),
                loc: xname(XATTR_LOC),
            },
        };
        let rt = XTarget::Fd(store.root_fd.as_raw_fd());
        if sys::getxattr(rt, &store.names.gfid)
            .map_err(to_any)?
            .is_none()
        {
            sys::setxattr(rt, &store.names.gfid, &Gfid::ROOT.0, 0).map_err(to_any)?;
        }
        store.ensure_handle_dirs(&Gfid::ROOT).map_err(to_any)?;
        let rel = cstr(handle_rel(&Gfid::ROOT).as_bytes()).map_err(to_any)?;
        match sys::symlinkat(c"../../../..", store.handles.as_raw_fd(), &rel) {
            Ok(()) | Err(Errno(libc::EEXIST)) => {}
            Err(e) => return Err(to_any(e)),
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn stripe(&self, g: &Gfid) -> std::sync::MutexGuard<'_, ()> {
        let i = (g.0[15] as usize ^ g.0[7] as usize) % self.stripes.len();
        self.stripes[i].lock().expect("stripe lock poisoned")
    }

    fn ensure_handle_dirs(&self, g: &Gfid) -> SysResult<()> {
        let h = crate::gfid::hex(&g.0[..2]);
        for d in [h[0..2].to_owned(), format!("{}/{}", &h[0..2], &h[2..4])] {
            match sys::mkdirat(self.handles.as_raw_fd(), &cstr(d.as_bytes())?, 0o700) {
                Ok(()) | Err(Errno(libc::EEXIST)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An open directory by id: from the cache, else by walking directory handles up to
    /// a known ancestor and opening back down.
    pub fn dir_fd(&self, g: &Gfid) -> SysResult<Arc<OwnedFd>> {
        if *g == Gfid::ROOT {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = self.dirs.lock().expect("dir cache").get(g) {
            return Ok(fd);
        }
        // Walk up: (gfid, parent, name) until a cached ancestor or the root.
        let mut chain: Vec<(Gfid, Gfid, Vec<u8>)> = Vec::new();
        let mut cur = *g;
        let base = loop {
            if chain.len() > MAX_DEPTH {
                return Err(Errno(libc::ELOOP));
            }
            let (parent, name) = self.dir_handle_target(&cur)?;
            chain.push((cur, parent, name));
            if parent == Gfid::ROOT {
                break self.root_fd.clone();
            }
            if let Some(fd) = self.dirs.lock().expect("dir cache").get(&parent) {
                break fd;
            }
            cur = parent;
        };
        let mut fd = base;
        for (gfid, _, name) in chain.into_iter().rev() {
            let child = Arc::new(sys::open_dir(fd.as_raw_fd(), &cstr(&name)?)?);
            let found = sys::getxattr(XTarget::Fd(child.as_raw_fd()), &self.names.gfid)?;
            if found.as_deref() != Some(&gfid.0[..]) {
                // The handle is stale (renamed behind our back or half-healed).
                return Err(Errno(libc::ESTALE));
            }
            self.dirs
                .lock()
                .expect("dir cache")
                .put(gfid, child.clone());
            fd = child;
        }
        Ok(fd)
    }

    /// Parent id and name from a directory handle `../../pa/pb/<parent>/<name>`.
    fn dir_handle_target(&self, g: &Gfid) -> SysResult<(Gfid, Vec<u8>)> {
        let rel = cstr(handle_rel(g).as_bytes())?;
        let target = sys::readlinkat(self.handles.as_raw_fd(), &rel)?;
        parse_dir_handle(&target).ok_or(Errno(libc::ESTALE))
    }

    fn dir_handle_value(parent: &Gfid, name: &[u8]) -> Vec<u8> {
        let mut v = format!("../../{}/", handle_rel(parent)).into_bytes();
        v.extend_from_slice(name);
        v
    }

    fn set_dir_handle(&self, g: &Gfid, parent: &Gfid, name: &[u8]) -> SysResult<()> {
        self.ensure_handle_dirs(g)?;
        let rel = cstr(handle_rel(g).as_bytes())?;
        let value = cstr(&Self::dir_handle_value(parent, name))?;
        match sys::symlinkat(&value, self.handles.as_raw_fd(), &rel) {
            Err(Errno(libc::EEXIST)) => {
                sys::unlinkat(self.handles.as_raw_fd(), &rel, 0)?;
                sys::symlinkat(&value, self.handles.as_raw_fd(), &rel)
            }
            r => r,
        }
    }

    /// Links `name` in `dir` as the handle of `g`; an orphan handle (one left by a crash)
    /// is replaced, a live one is a conflict.
    fn link_handle(&self, g: &Gfid, dir: RawFd, name: &CStr) -> SysResult<()> {
        self.ensure_handle_dirs(g)?;
        let rel = cstr(handle_rel(g).as_bytes())?;
        match sys::linkat(dir, name, self.handles.as_raw_fd(), &rel, 0) {
            Err(Errno(libc::EEXIST)) => {
                let st = sys::fstatat(self.handles.as_raw_fd(), &rel)?;
                if st.st_nlink > 1 {
                    return Err(Errno(libc::EEXIST));
                }
                sys::unlinkat(self.handles.as_raw_fd(), &rel, 0)?;
                sys::linkat(dir, name, self.handles.as_raw_fd(), &rel, 0)
            }
            r => r,
        }
    }

    /// Drops the handle of a non-directory once no name of it is left.
    fn drop_handle_if_orphan(&self, g: &Gfid) -> SysResult<u32> {
        let rel = cstr(handle_rel(g).as_bytes())?;
        match sys::fstatat(self.handles.as_raw_fd(), &rel) {
            Ok(st) if st.st_nlink <= 1 => {
                sys::unlinkat(self.handles.as_raw_fd(), &rel, 0)?;
                self.index_set(g, false);
                Ok(0)
            }
            Ok(st) => Ok(st.st_nlink as u32 - 1),
            Err(Errno(libc::ENOENT)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn obj(&self, g: &Gfid) -> SysResult<Obj> {
        if *g == Gfid::ROOT {
            return Ok(Obj::Dir(self.root_fd.clone()));
        }
        if let Some(fd) = self.dirs.lock().expect("dir cache").get(g) {
            return Ok(Obj::Dir(fd));
        }
        let rel = cstr(handle_rel(g).as_bytes())?;
        let st = sys::fstatat(self.handles.as_raw_fd(), &rel)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK && st.st_nlink == 1 {
            return Ok(Obj::Dir(self.dir_fd(g)?));
        }
        Ok(Obj::Handle(rel))
    }

    /// `/proc/self/fd/N/aa/bb/<gfid>`: a path usable by path-only calls (lgetxattr).
    fn handle_path(&self, rel: &CStr) -> SysResult<CString> {
        sys::proc_path(&self.handles, rel.to_bytes())
    }

    fn read_meta(&self, t: XTarget<'_>, st: &libc::stat) -> SysResult<Meta> {
        let gfid = sys::getxattr(t, &self.names.gfid)?.and_then(|v| Gfid::from_slice(&v));
        let afr = match sys::getxattr(t, &self.names.afr)? {
            Some(v) => AfrState::decode(&v).map_err(|_| Errno(libc::EIO))?,
            None => AfrState::default(),
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let layout = if is_dir {
            match sys::getxattr(t, &self.names.layout)? {
                Some(v) => Some(DirLayout::decode(&v).map_err(|_| Errno(libc::EIO))?),
                None => None,
            }
        } else {
            None
        };
        let linkto = if st.st_mode == LINKTO_MODE {
            sys::getxattr(t, &self.names.linkto)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map(u32::from_be_bytes)
        } else {
            None
        };
        Ok(Meta {
            gfid,
            afr,
            layout,
            linkto,
        })
    }

    fn entry_of(&self, t: XTarget<'_>, st: &libc::stat) -> SysResult<Entry> {
        let meta = self.read_meta(t, st)?;
        Ok(Entry {
            attr: attr_of(st, meta.gfid.is_some()),
            meta,
        })
    }

    /// A name in a directory.
    pub fn lookup(&self, parent: &Gfid, name: &[u8]) -> SysResult<Entry> {
        check_name(name)?;
        if *parent == Gfid::ROOT && name == HIDDEN_DIR.as_bytes() {
            return Err(Errno(libc::ENOENT));
        }
        let pfd = self.dir_fd(parent)?;
        let cname = cstr(name)?;
        let st = sys::fstatat(pfd.as_raw_fd(), &cname)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let fd = Arc::new(sys::open_dir(pfd.as_raw_fd(), &cname)?);
            let e = self.entry_of(XTarget::Fd(fd.as_raw_fd()), &st)?;
            if let Some(g) = e.meta.gfid {
                self.dirs.lock().expect("dir cache").put(g, fd);
            }
            return Ok(e);
        }
        let p = sys::proc_path(&*pfd, name)?;
        self.entry_of(XTarget::Path(&p), &st)
    }

    /// Attributes of a directory by id (one `fstat` of its cached descriptor).
    pub fn dir_attr(&self, g: &Gfid) -> SysResult<Attr> {
        let fd = self.dir_fd(g)?;
        Ok(attr_of(&sys::fstat(fd.as_raw_fd())?, true))
    }

    /// Attributes and markers of a file by id (`fd`: one of its open files).
    pub fn stat(&self, g: &Gfid, fd: Option<RawFd>) -> SysResult<Entry> {
        if let Some(fd) = fd {
            let st = sys::fstat(fd)?;
            return self.entry_of(XTarget::Fd(fd), &st);
        }
        match self.obj(g)? {
            Obj::Dir(fd) => {
                let st = sys::fstat(fd.as_raw_fd())?;
                self.entry_of(XTarget::Fd(fd.as_raw_fd()), &st)
            }
            Obj::Handle(rel) => {
                let st = sys::fstatat(self.handles.as_raw_fd(), &rel)?;
                let p = self.handle_path(&rel)?;
                self.entry_of(XTarget::Path(&p), &st)
            }
        }
    }

    pub fn statfs(&self) -> SysResult<Statfs> {
        let s = sys::fstatvfs(self.root_fd.as_raw_fd())?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    /// Applies a marker delta to the object `t` (whose id is `g`), keeping the index.
    fn apply_delta(&self, g: &Gfid, t: XTarget<'_>, delta: &AfrDelta) -> SysResult<AfrState> {
        let _s = self.stripe(g);
        let mut st = match sys::getxattr(t, &self.names.afr)? {
            Some(v) => AfrState::decode(&v).map_err(|_| Errno(libc::EIO))?,
            None => AfrState::default(),
        };
        let was_clean = st.is_clean();
        st.apply(delta);
        self.write_afr(g, t, &st, was_clean)?;
        Ok(st)
    }

    fn write_afr(&self, g: &Gfid, t: XTarget<'_>, st: &AfrState, was_clean: bool) -> SysResult<()> {
        if st.is_clean() {
            sys::removexattr_if_any(t, &self.names.afr)?;
        } else {
            sys::setxattr(t, &self.names.afr, &st.encode(), 0)?;
        }
        if was_clean != st.is_clean() {
            self.index_set(g, !st.is_clean());
        }
        Ok(())
    }

    /// Adds or removes `g` in the heal index (best effort: the index is a hint that the
    /// self-heal daemon double-checks against the markers).
    fn index_set(&self, g: &Gfid, present: bool) {
        let Ok(name) = cstr(g.to_uuid().as_bytes()) else {
            return;
        };
        let r = if present {
            sys::openat(
                self.index.as_raw_fd(),
                &name,
                libc::O_CREAT | libc::O_WRONLY,
                0o600,
            )
            .map(drop)
        } else {
            match sys::unlinkat(self.index.as_raw_fd(), &name, 0) {
                Err(Errno(libc::ENOENT)) => Ok(()),
                r => r,
            }
        };
        if let Err(e) = r {
            tracing::warn!("heal index update for {g} failed: {}", e.describe());
        }
    }

    /// Applies `delta` to the markers of the object with id `g`.
    pub fn xattrop(&self, g: &Gfid, delta: &AfrDelta) -> SysResult<AfrState> {
        match self.obj(g)? {
            Obj::Dir(fd) => self.apply_delta(g, XTarget::Fd(fd.as_raw_fd()), delta),
            Obj::Handle(rel) => {
                let p = self.handle_path(&rel)?;
                self.apply_delta(g, XTarget::Path(&p), delta)
            }
        }
    }

    fn parent_op(&self, parent: &Gfid, pfd: &OwnedFd, op: &Option<AfrDelta>) -> SysResult<()> {
        if let Some(d) = op.as_ref().filter(|d| !d.is_empty()) {
            self.apply_delta(parent, XTarget::Fd(pfd.as_raw_fd()), d)?;
        }
        Ok(())
    }

    /// Creates a file, directory, symlink or special file with id `gfid`. Returns its
    /// entry and, for a regular file asked to be opened, the open file.
    pub fn mknod(
        &self,
        parent: &Gfid,
        name: &[u8],
        gfid: &Gfid,
        obj: &NewObject,
        parent_op: &Option<AfrDelta>,
        check_epoch: Option<u64>,
    ) -> SysResult<(Entry, Option<std::fs::File>)> {
        check_name(name)?;
        if *parent == Gfid::ROOT && name == HIDDEN_DIR.as_bytes() {
            return Err(Errno(libc::EPERM));
        }
        if *gfid == Gfid::ROOT {
            return Err(Errno(libc::EINVAL));
        }
        let pfd = self.dir_fd(parent)?;
        if let Some(epoch) = check_epoch {
            let l = sys::getxattr(XTarget::Fd(pfd.as_raw_fd()), &self.names.layout)?
                .and_then(|v| DirLayout::decode(&v).ok());
            if l.map(|l| l.epoch) != Some(epoch) {
                return Err(Errno(libc::ESTALE));
            }
        }
        let cname = cstr(name)?;
        let kind = obj.mode & libc::S_IFMT;
        let perm = obj.mode & 0o7777;
        // Refuse before touching the parent's markers.
        match sys::fstatat(pfd.as_raw_fd(), &cname) {
            Ok(_) => return Err(Errno(libc::EEXIST)),
            Err(Errno(libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        self.parent_op(parent, &pfd, parent_op)?;
        let mut file: Option<std::fs::File> = None;
        let mut dir: Option<Arc<OwnedFd>> = None;
        {
            let c = &obj.creds;
            let _as = sys::AsCaller::enter(c.uid, c.gid, &c.groups)?;
            match kind {
                libc::S_IFREG => {
                    let mut flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
                    flags |= match obj.open {
                        Some(f) => brick_open_flags(f),
                        None => libc::O_RDWR,
                    };
                    file = Some(std::fs::File::from(sys::openat(
                        pfd.as_raw_fd(),
                        &cname,
                        flags,
                        perm,
                    )?));
                }
                libc::S_IFDIR => {
                    sys::mkdirat(pfd.as_raw_fd(), &cname, perm)?;
                    dir = Some(Arc::new(sys::open_dir(pfd.as_raw_fd(), &cname)?));
                }
                libc::S_IFLNK => {
                    let target = obj.target.as_deref().ok_or(Errno(libc::EINVAL))?;
                    if target.is_empty() || target.len() > crate::proto::MAX_SYMLINK_LEN {
                        return Err(Errno(libc::ENAMETOOLONG));
                    }
                    sys::symlinkat(&cstr(target)?, pfd.as_raw_fd(), &cname)?;
                }
                libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
                    sys::mknodat(pfd.as_raw_fd(), &cname, obj.mode, obj.rdev)?;
                }
                _ => return Err(Errno(libc::EINVAL)),
            }
        }
        // The process umask (shared with the rest of the node, so left alone) may have
        // removed permission bits the client asked for: put them back.
        let result = self
            .restore_perm(&pfd, &cname, kind, perm, file.as_ref(), dir.as_ref())
            .and_then(|()| {
                self.finish_new(
                    parent,
                    &pfd,
                    &cname,
                    name,
                    gfid,
                    obj,
                    file.as_ref(),
                    dir.as_ref(),
                )
            });
        if let Err(e) = result {
            // Leave nothing half-made behind.
            let flag = if kind == libc::S_IFDIR {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            let _ = sys::unlinkat(pfd.as_raw_fd(), &cname, flag);
            return Err(e);
        }
        let entry = self.lookup(parent, name)?;
        Ok((entry, file))
    }

    fn restore_perm(
        &self,
        pfd: &OwnedFd,
        cname: &CStr,
        kind: u32,
        perm: u32,
        file: Option<&std::fs::File>,
        dir: Option<&Arc<OwnedFd>>,
    ) -> SysResult<()> {
        if kind == libc::S_IFLNK {
            return Ok(());
        }
        let fd = file.map(|f| f.as_raw_fd()).or(dir.map(|d| d.as_raw_fd()));
        let st = match fd {
            Some(fd) => sys::fstat(fd)?,
            None => sys::fstatat(pfd.as_raw_fd(), cname)?,
        };
        let want = (st.st_mode & 0o7000) | (perm & 0o7777);
        if st.st_mode & 0o7777 == want {
            return Ok(());
        }
        match fd {
            Some(fd) => sys::fchmod(fd, want),
            None => sys::fchmodat(pfd.as_raw_fd(), cname, want),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_new(
        &self,
        parent: &Gfid,
        pfd: &OwnedFd,
        cname: &CStr,
        name: &[u8],
        gfid: &Gfid,
        obj: &NewObject,
        file: Option<&std::fs::File>,
        dir: Option<&Arc<OwnedFd>>,
    ) -> SysResult<()> {
        let path;
        let t = match (file, dir) {
            (Some(f), _) => XTarget::Fd(f.as_raw_fd()),
            (_, Some(d)) => XTarget::Fd(d.as_raw_fd()),
            _ => {
                path = sys::proc_path(pfd, name)?;
                XTarget::Path(&path)
            }
        };
        sys::setxattr(t, &self.names.gfid, &gfid.0, 0)?;
        if !obj.afr.is_clean() {
            sys::setxattr(t, &self.names.afr, &obj.afr.encode(), 0)?;
            self.index_set(gfid, true);
        }
        if let Some(l) = obj.layout {
            sys::setxattr(t, &self.names.layout, &l.encode(), 0)?;
        }
        if let Some(sv) = obj.linkto {
            sys::setxattr(t, &self.names.linkto, &sv.to_be_bytes(), 0)?;
        }
        match dir {
            Some(d) => {
                self.set_dir_handle(gfid, parent, name)?;
                self.dirs.lock().expect("dir cache").put(*gfid, d.clone());
            }
            // A link file only points at the data elsewhere: it gets no handle, so a
            // brick may hold several link files of one file (several names hashed here).
            None if obj.linkto.is_some() => {}
            None => self.link_handle(gfid, pfd.as_raw_fd(), cname)?,
        }
        Ok(())
    }

    /// A new name for an existing non-directory.
    pub fn link(
        &self,
        g: &Gfid,
        parent: &Gfid,
        name: &[u8],
        parent_op: &Option<AfrDelta>,
    ) -> SysResult<Entry> {
        check_name(name)?;
        if *parent == Gfid::ROOT && name == HIDDEN_DIR.as_bytes() {
            return Err(Errno(libc::EPERM));
        }
        let rel = match self.obj(g)? {
            Obj::Dir(_) => return Err(Errno(libc::EPERM)),
            Obj::Handle(rel) => rel,
        };
        let pfd = self.dir_fd(parent)?;
        let cname = cstr(name)?;
        match sys::fstatat(pfd.as_raw_fd(), &cname) {
            Ok(_) => return Err(Errno(libc::EEXIST)),
            Err(Errno(libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        self.parent_op(parent, &pfd, parent_op)?;
        sys::linkat(self.handles.as_raw_fd(), &rel, pfd.as_raw_fd(), &cname, 0)?;
        self.lookup(parent, name)
    }

    /// Removes a non-directory name; the file goes with its last name.
    pub fn unlink(
        &self,
        parent: &Gfid,
        name: &[u8],
        expect: Option<Gfid>,
        parent_op: &Option<AfrDelta>,
    ) -> SysResult<(Option<Gfid>, u32)> {
        self.unlink_entry(parent, name, expect, parent_op)
            .map(|(g, left, _)| (g, left))
    }

    /// Like `unlink`, also saying where the data is when the name was a link file.
    pub fn unlink_entry(
        &self,
        parent: &Gfid,
        name: &[u8],
        expect: Option<Gfid>,
        parent_op: &Option<AfrDelta>,
    ) -> SysResult<(Option<Gfid>, u32, Option<u32>)> {
        check_name(name)?;
        if *parent == Gfid::ROOT && name == HIDDEN_DIR.as_bytes() {
            return Err(Errno(libc::EPERM));
        }
        let pfd = self.dir_fd(parent)?;
        let cname = cstr(name)?;
        let st = sys::fstatat(pfd.as_raw_fd(), &cname)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno(libc::EISDIR));
        }
        let p = sys::proc_path(&*pfd, name)?;
        let g =
            sys::getxattr(XTarget::Path(&p), &self.names.gfid)?.and_then(|v| Gfid::from_slice(&v));
        if expect.is_some() && g.is_some() && expect != g {
            return Err(Errno(libc::ESTALE));
        }
        let linkto = if st.st_mode == LINKTO_MODE {
            sys::getxattr(XTarget::Path(&p), &self.names.linkto)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map(u32::from_be_bytes)
        } else {
            None
        };
        self.parent_op(parent, &pfd, parent_op)?;
        sys::unlinkat(pfd.as_raw_fd(), &cname, 0)?;
        let left = match (g, linkto) {
            // A link file has no handle: the data's names are elsewhere.
            (Some(_), Some(_)) | (None, _) => 0,
            (Some(g), None) => {
                let _s = self.stripe(&g);
                self.drop_handle_if_orphan(&g)?
            }
        };
        Ok((g, left, linkto))
    }

    pub fn rmdir(
        &self,
        parent: &Gfid,
        name: &[u8],
        expect: Option<Gfid>,
        parent_op: &Option<AfrDelta>,
    ) -> SysResult<Option<Gfid>> {
        check_name(name)?;
        if *parent == Gfid::ROOT && name == HIDDEN_DIR.as_bytes() {
            return Err(Errno(libc::EPERM));
        }
        let pfd = self.dir_fd(parent)?;
        let cname = cstr(name)?;
        let st = sys::fstatat(pfd.as_raw_fd(), &cname)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR));
        }
        let p = sys::proc_path(&*pfd, name)?;
        let g =
            sys::getxattr(XTarget::Path(&p), &self.names.gfid)?.and_then(|v| Gfid::from_slice(&v));
        if expect.is_some() && g.is_some() && expect != g {
            return Err(Errno(libc::ESTALE));
        }
        self.parent_op(parent, &pfd, parent_op)?;
        sys::unlinkat(pfd.as_raw_fd(), &cname, libc::AT_REMOVEDIR)?;
        if let Some(g) = g {
            self.forget_dir(&g);
        }
        Ok(g)
    }

    fn forget_dir(&self, g: &Gfid) {
        self.dirs.lock().expect("dir cache").remove(g);
        if let Ok(rel) = cstr(handle_rel(g).as_bytes()) {
            let _ = sys::unlinkat(self.handles.as_raw_fd(), &rel, 0);
        }
        self.index_set(g, false);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        parent: &Gfid,
        name: &[u8],
        new_parent: &Gfid,
        new_name: &[u8],
        flags: u32,
        parent_op: &Option<AfrDelta>,
        new_parent_op: &Option<AfrDelta>,
    ) -> SysResult<Option<Gfid>> {
        check_name(name)?;
        check_name(new_name)?;
        let hidden = HIDDEN_DIR.as_bytes();
        if (*parent == Gfid::ROOT && name == hidden)
            || (*new_parent == Gfid::ROOT && new_name == hidden)
        {
            return Err(Errno(libc::EPERM));
        }
        let pfd = self.dir_fd(parent)?;
        let npfd = self.dir_fd(new_parent)?;
        let (cname, cnew) = (cstr(name)?, cstr(new_name)?);
        let src_st = sys::fstatat(pfd.as_raw_fd(), &cname)?;
        let src_path = sys::proc_path(&*pfd, name)?;
        let src = sys::getxattr(XTarget::Path(&src_path), &self.names.gfid)?
            .and_then(|v| Gfid::from_slice(&v));
        let dst_path = sys::proc_path(&*npfd, new_name)?;
        let dst_st = match sys::fstatat(npfd.as_raw_fd(), &cnew) {
            Ok(st) => Some(st),
            Err(Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e),
        };
        let dst = match dst_st {
            Some(_) => sys::getxattr(XTarget::Path(&dst_path), &self.names.gfid)?
                .and_then(|v| Gfid::from_slice(&v)),
            None => None,
        };
        if dst_st.is_some_and(|d| (d.st_dev, d.st_ino) == (src_st.st_dev, src_st.st_ino)) {
            // Two names of one file: rename(2) does nothing. (The same file id is not
            // enough: a link file carries the id of the file it points at, and a
            // rebalance renames the moved file over it.)
            return Ok(None);
        }
        self.parent_op(parent, &pfd, parent_op)?;
        if new_parent != parent {
            self.parent_op(new_parent, &npfd, new_parent_op)?;
        } else if let Some(d) = new_parent_op {
            self.parent_op(parent, &pfd, &Some(d.clone()))?;
        }
        sys::renameat2(pfd.as_raw_fd(), &cname, npfd.as_raw_fd(), &cnew, flags)?;
        let is_dir = |st: &libc::stat| st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        // Keep directory handles true.
        if let Some(g) = src {
            if is_dir(&src_st) {
                self.set_dir_handle(&g, new_parent, new_name)?;
            }
        }
        let exchanged = flags & libc::RENAME_EXCHANGE != 0;
        let mut replaced = None;
        if let (Some(g), Some(st)) = (dst, dst_st) {
            if exchanged {
                if is_dir(&st) {
                    self.set_dir_handle(&g, parent, name)?;
                }
            } else {
                replaced = Some(g);
                if is_dir(&st) {
                    self.forget_dir(&g);
                } else {
                    let _s = self.stripe(&g);
                    self.drop_handle_if_orphan(&g)?;
                }
            }
        }
        Ok(replaced)
    }

    fn with_obj<T>(
        &self,
        g: &Gfid,
        fd: Option<RawFd>,
        on_fd: impl FnOnce(RawFd) -> SysResult<T>,
        on_handle: impl FnOnce(&CStr, &libc::stat) -> SysResult<T>,
    ) -> SysResult<T> {
        if let Some(fd) = fd {
            return on_fd(fd);
        }
        match self.obj(g)? {
            Obj::Dir(d) => on_fd(d.as_raw_fd()),
            Obj::Handle(rel) => {
                let st = sys::fstatat(self.handles.as_raw_fd(), &rel)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                    let f = sys::openat(
                        self.handles.as_raw_fd(),
                        &rel,
                        libc::O_RDWR | libc::O_NOFOLLOW,
                        0,
                    )?;
                    return on_fd(f.as_raw_fd());
                }
                on_handle(&rel, &st)
            }
        }
    }

    pub fn setattr(
        &self,
        g: &Gfid,
        fd: Option<RawFd>,
        set: &SetAttr,
        op: &Option<AfrDelta>,
    ) -> SysResult<Attr> {
        let handles = self.handles.as_raw_fd();
        let apply_op = |t: XTarget<'_>| -> SysResult<()> {
            if let Some(d) = op.as_ref().filter(|d| !d.is_empty()) {
                self.apply_delta(g, t, d)?;
            }
            Ok(())
        };
        self.with_obj(
            g,
            fd,
            |fd| {
                apply_op(XTarget::Fd(fd))?;
                if set.kill_suidgid {
                    kill_privileges(fd)?;
                }
                if let Some(size) = set.size {
                    sys::ftruncate(fd, size)?;
                }
                if set.uid.is_some() || set.gid.is_some() {
                    sys::fchown(fd, set.uid, set.gid)?;
                }
                if let Some(mode) = set.mode {
                    sys::fchmod(fd, mode & 0o7777)?;
                }
                if set.atime.is_some() || set.mtime.is_some() {
                    sys::futimens(fd, set.atime, set.mtime)?;
                }
                let st = sys::fstat(fd)?;
                Ok(attr_of(&st, true))
            },
            |rel, st| {
                let p = self.handle_path(rel)?;
                apply_op(XTarget::Path(&p))?;
                if set.size.is_some() {
                    return Err(Errno(libc::EINVAL));
                }
                if set.uid.is_some() || set.gid.is_some() {
                    sys::fchownat(handles, rel, set.uid, set.gid)?;
                }
                if let Some(mode) = set.mode {
                    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                        return Err(Errno(libc::EOPNOTSUPP));
                    }
                    sys::fchmodat(handles, rel, mode & 0o7777)?;
                }
                if set.atime.is_some() || set.mtime.is_some() {
                    sys::utimensat(handles, rel, set.atime, set.mtime)?;
                }
                let st = sys::fstatat(handles, rel)?;
                Ok(attr_of(&st, true))
            },
        )
    }

    /// Opens a regular file by id.
    pub fn open_file(&self, g: &Gfid, flags: i32) -> SysResult<std::fs::File> {
        let rel = match self.obj(g)? {
            Obj::Dir(_) => return Err(Errno(libc::EISDIR)),
            Obj::Handle(rel) => rel,
        };
        let st = sys::fstatat(self.handles.as_raw_fd(), &rel)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            // FIFOs and devices are opened by the client's kernel, never on a brick.
            return Err(Errno(libc::EOPNOTSUPP));
        }
        let fd = sys::openat(
            self.handles.as_raw_fd(),
            &rel,
            brick_open_flags(flags) | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(std::fs::File::from(fd))
    }

    pub fn read(&self, g: &Gfid, fd: Option<RawFd>, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        match fd {
            Some(fd) => sys::pread_full(fd, offset, size as usize),
            None => {
                let f = self.open_file(g, libc::O_RDONLY)?;
                sys::pread_full(f.as_raw_fd(), offset, size as usize)
            }
        }
    }

    pub fn write(
        &self,
        g: &Gfid,
        fd: Option<RawFd>,
        offset: u64,
        data: &[u8],
        op: &Option<AfrDelta>,
        kill_suidgid: bool,
    ) -> SysResult<()> {
        let owned;
        let fd = match fd {
            Some(fd) => fd,
            None => {
                owned = self.open_file(g, libc::O_RDWR)?;
                owned.as_raw_fd()
            }
        };
        if let Some(d) = op.as_ref().filter(|d| !d.is_empty()) {
            self.apply_delta(g, XTarget::Fd(fd), d)?;
        }
        if kill_suidgid {
            // Before the bytes: a write that cannot drop the bits writes nothing.
            kill_privileges(fd)?;
        }
        let mut at = offset;
        for piece in data.chunks(PAGE_CACHE_WRITE) {
            sys::pwrite_full(fd, at, piece)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    pub fn fsync(&self, g: &Gfid, fd: Option<RawFd>, datasync: bool) -> SysResult<()> {
        self.with_obj(g, fd, |fd| sys::fsync(fd, datasync), |_, _| Ok(()))
    }

    pub fn fallocate(
        &self,
        g: &Gfid,
        fd: Option<RawFd>,
        mode: i32,
        offset: u64,
        len: u64,
        op: &Option<AfrDelta>,
    ) -> SysResult<()> {
        self.with_obj(
            g,
            fd,
            |fd| {
                if let Some(d) = op.as_ref().filter(|d| !d.is_empty()) {
                    self.apply_delta(g, XTarget::Fd(fd), d)?;
                }
                sys::fallocate(fd, mode, offset, len)
            },
            |_, _| Err(Errno(libc::ENODEV)),
        )
    }

    pub fn readlink(&self, g: &Gfid) -> SysResult<Vec<u8>> {
        match self.obj(g)? {
            Obj::Dir(_) => Err(Errno(libc::EINVAL)),
            Obj::Handle(rel) => sys::readlinkat(self.handles.as_raw_fd(), &rel),
        }
    }

    /// Up to `max` entries after `cookie`, with their attributes, id and link-file
    /// mark; and the cookie to continue from.
    pub fn readdir(
        &self,
        g: &Gfid,
        cookie: u64,
        max: u32,
    ) -> SysResult<(Vec<DirEntry>, u64, bool)> {
        let dfd = self.dir_fd(g)?;
        // A private open file: its position must not be shared with other listings.
        let fd = sys::open_dir(dfd.as_raw_fd(), c".")?;
        sys::lseek(fd.as_raw_fd(), cookie)?;
        let mut buf = vec![0u8; GETDENTS_BUF];
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = cookie;
        loop {
            let batch = sys::getdents(fd.as_raw_fd(), &mut buf)?;
            if batch.is_empty() {
                return Ok((out, next, true));
            }
            for d in batch {
                if out.len() as u32 >= max || bytes >= READDIR_BYTES {
                    return Ok((out, next, false));
                }
                next = d.cookie;
                let skip = d.name == b"."
                    || d.name == b".."
                    || (*g == Gfid::ROOT && d.name == HIDDEN_DIR.as_bytes());
                if skip {
                    continue;
                }
                bytes += d.name.len() + 160;
                let entry = self.dir_entry(&fd, &d.name).ok();
                out.push(DirEntry {
                    name: d.name,
                    entry,
                });
            }
        }
    }

    fn dir_entry(&self, dir: &OwnedFd, name: &[u8]) -> SysResult<Entry> {
        let st = sys::fstatat(dir.as_raw_fd(), &cstr(name)?)?;
        let p = sys::proc_path(dir, name)?;
        let t = XTarget::Path(&p);
        let gfid = sys::getxattr(t, &self.names.gfid)?.and_then(|v| Gfid::from_slice(&v));
        let linkto = if st.st_mode == LINKTO_MODE {
            sys::getxattr(t, &self.names.linkto)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map(u32::from_be_bytes)
        } else {
            None
        };
        Ok(Entry {
            attr: attr_of(&st, gfid.is_some()),
            meta: Meta {
                gfid,
                linkto,
                ..Meta::default()
            },
        })
    }

    pub fn set_meta(&self, g: &Gfid, set: &SetMeta) -> SysResult<()> {
        let apply = |t: XTarget<'_>| -> SysResult<()> {
            if let Some(l) = set.layout {
                sys::setxattr(t, &self.names.layout, &l.encode(), 0)?;
            }
            match set.linkto {
                Some(Some(sv)) => sys::setxattr(t, &self.names.linkto, &sv.to_be_bytes(), 0)?,
                Some(None) => sys::removexattr_if_any(t, &self.names.linkto)?,
                None => {}
            }
            if let Some(afr) = &set.afr {
                let _s = self.stripe(g);
                let was_clean = match sys::getxattr(t, &self.names.afr)? {
                    Some(v) => AfrState::decode(&v).map(|s| s.is_clean()).unwrap_or(false),
                    None => true,
                };
                self.write_afr(g, t, afr, was_clean)?;
            }
            Ok(())
        };
        match self.obj(g)? {
            Obj::Dir(fd) => apply(XTarget::Fd(fd.as_raw_fd())),
            Obj::Handle(rel) => {
                let p = self.handle_path(&rel)?;
                apply(XTarget::Path(&p))
            }
        }
    }

    /// Gives id `g` to a name that has none (a file put on the brick directly).
    pub fn set_gfid(&self, parent: &Gfid, name: &[u8], g: &Gfid) -> SysResult<Entry> {
        check_name(name)?;
        let pfd = self.dir_fd(parent)?;
        let cname = cstr(name)?;
        let st = sys::fstatat(pfd.as_raw_fd(), &cname)?;
        let p = sys::proc_path(&*pfd, name)?;
        let t = XTarget::Path(&p);
        if let Some(existing) = sys::getxattr(t, &self.names.gfid)? {
            if existing != g.0 {
                return Err(Errno(libc::EEXIST));
            }
        } else {
            sys::setxattr(t, &self.names.gfid, &g.0, libc::XATTR_CREATE)?;
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.set_dir_handle(g, parent, name)?;
        } else {
            match self.link_handle(g, pfd.as_raw_fd(), &cname) {
                Ok(()) => {}
                // Already linked (a second name of the same file).
                Err(Errno(libc::EEXIST)) => {}
                Err(e) => return Err(e),
            }
        }
        self.lookup(parent, name)
    }

    fn user_xattr(name: &[u8]) -> SysResult<CString> {
        if name.len() > MAX_XATTR_NAME_LEN {
            return Err(Errno(libc::ERANGE));
        }
        if !name.starts_with(b"user.") || name.len() == 5 {
            return Err(Errno(libc::EOPNOTSUPP));
        }
        cstr(name)
    }

    fn with_xtarget<T>(
        &self,
        g: &Gfid,
        f: impl FnOnce(XTarget<'_>) -> SysResult<T>,
    ) -> SysResult<T> {
        match self.obj(g)? {
            Obj::Dir(fd) => f(XTarget::Fd(fd.as_raw_fd())),
            Obj::Handle(rel) => {
                let p = self.handle_path(&rel)?;
                f(XTarget::Path(&p))
            }
        }
    }

    pub fn getxattr(&self, g: &Gfid, name: &[u8]) -> SysResult<Vec<u8>> {
        let n = Self::user_xattr(name)?;
        self.with_xtarget(g, |t| sys::getxattr(t, &n)?.ok_or(Errno(libc::ENODATA)))
    }

    pub fn listxattr(&self, g: &Gfid) -> SysResult<Vec<Vec<u8>>> {
        self.with_xtarget(g, |t| {
            Ok(sys::listxattr(t)?
                .into_iter()
                .filter(|n| n.starts_with(b"user."))
                .collect())
        })
    }

    pub fn setxattr(
        &self,
        g: &Gfid,
        name: &[u8],
        value: &[u8],
        flags: i32,
        op: &Option<AfrDelta>,
    ) -> SysResult<()> {
        let n = Self::user_xattr(name)?;
        if value.len() > MAX_XATTR_VALUE_LEN {
            return Err(Errno(libc::E2BIG));
        }
        self.with_xtarget(g, |t| {
            if let Some(d) = op.as_ref().filter(|d| !d.is_empty()) {
                self.apply_delta(g, t, d)?;
            }
            sys::setxattr(t, &n, value, flags)
        })
    }

    pub fn removexattr(&self, g: &Gfid, name: &[u8], op: &Option<AfrDelta>) -> SysResult<()> {
        let n = Self::user_xattr(name)?;
        self.with_xtarget(g, |t| {
            if let Some(d) = op.as_ref().filter(|d| !d.is_empty()) {
                self.apply_delta(g, t, d)?;
            }
            sys::removexattr(t, &n)
        })
    }

    /// Ids in the heal index, in order, after `after`.
    pub fn index_list(&self, after: Option<Gfid>, max: u32) -> SysResult<(Vec<Gfid>, bool)> {
        let fd = sys::open_dir(self.index.as_raw_fd(), c".")?;
        let mut buf = vec![0u8; GETDENTS_BUF];
        let mut all = Vec::new();
        loop {
            let batch = sys::getdents(fd.as_raw_fd(), &mut buf)?;
            if batch.is_empty() {
                break;
            }
            all.extend(
                batch
                    .iter()
                    .filter_map(|d| std::str::from_utf8(&d.name).ok().and_then(Gfid::parse)),
            );
        }
        all.sort();
        all.retain(|g| after.is_none_or(|a| *g > a));
        let more = all.len() > max as usize;
        all.truncate(max as usize);
        Ok((all, more))
    }

    /// A path of the file from the volume root, `<gfid:…>` parts where unknown.
    pub fn path(&self, g: &Gfid) -> SysResult<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = *g;
        if cur != Gfid::ROOT {
            if let Obj::Handle(rel) = self.obj(&cur)? {
                let ino = sys::fstatat(self.handles.as_raw_fd(), &rel)?.st_ino;
                match self.recorded_location(&rel, ino)? {
                    Some((parent, name)) => {
                        parts.push(name);
                        cur = parent;
                    }
                    None => {
                        return Ok(self
                            .search_path(ino)?
                            .unwrap_or_else(|| format!("<gfid:{cur}>").into_bytes()));
                    }
                }
            }
        }
        while cur != Gfid::ROOT {
            if parts.len() > MAX_DEPTH {
                return Err(Errno(libc::ELOOP));
            }
            match self.dir_handle_target(&cur) {
                Ok((parent, name)) => {
                    parts.push(name);
                    cur = parent;
                }
                Err(_) => {
                    parts.push(format!("<gfid:{cur}>").into_bytes());
                    break;
                }
            }
        }
        let mut out = Vec::new();
        for p in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        Ok(out)
    }

    /// Parent and name of a non-directory (inode `ino`, handle `rel`) as recorded by an
    /// earlier release (`loc`), if that name still is this file.
    fn recorded_location(&self, rel: &CStr, ino: u64) -> SysResult<Option<(Gfid, Vec<u8>)>> {
        let p = self.handle_path(rel)?;
        let Some(v) = sys::getxattr(XTarget::Path(&p), &self.names.loc)? else {
            return Ok(None);
        };
        let (Some(parent), Some(name)) =
            (Gfid::from_slice(v.get(..16).unwrap_or(&[])), v.get(16..))
        else {
            return Ok(None);
        };
        let still = self.dir_fd(&parent).ok().is_some_and(|d| {
            cstr(name)
                .and_then(|n| sys::fstatat(d.as_raw_fd(), &n))
                .is_ok_and(|st| st.st_ino == ino)
        });
        Ok(still.then(|| (parent, name.to_vec())))
    }

    /// The path from the volume root of a non-directory (inode `ino`), searched for depth
    /// first through the brick's directories; `None` when not found within
    /// [`MAX_NAME_SEARCH`] entries and [`MAX_SEARCH_DEPTH`] levels.
    fn search_path(&self, ino: u64) -> SysResult<Option<Vec<u8>>> {
        struct Level {
            fd: OwnedFd,
            path: Vec<u8>,
            subdirs: Vec<Vec<u8>>,
        }
        let mut buf = vec![0u8; GETDENTS_BUF];
        let mut budget = MAX_NAME_SEARCH;
        // Reads a whole directory: the path of the file if it is there, else the names
        // of its subdirectories.
        let mut scan = |fd: &OwnedFd, path: &[u8]| -> SysResult<Result<Vec<u8>, Vec<Vec<u8>>>> {
            let mut subdirs = Vec::new();
            loop {
                let batch = sys::getdents(fd.as_raw_fd(), &mut buf)?;
                if batch.is_empty() {
                    return Ok(Err(subdirs));
                }
                for d in batch {
                    if d.name == b"." || d.name == b".." {
                        continue;
                    }
                    if path.is_empty() && d.name == HIDDEN_DIR.as_bytes() {
                        continue;
                    }
                    budget = budget.checked_sub(1).ok_or(Errno(libc::E2BIG))?;
                    let is_dir = match d.kind {
                        libc::DT_DIR => true,
                        libc::DT_UNKNOWN => cstr(&d.name)
                            .and_then(|n| sys::fstatat(fd.as_raw_fd(), &n))
                            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
                        _ => false,
                    };
                    if is_dir {
                        subdirs.push(d.name);
                    } else if d.ino == ino {
                        let mut found = path.to_vec();
                        found.push(b'/');
                        found.extend_from_slice(&d.name);
                        return Ok(Ok(found));
                    }
                }
            }
        };
        let root = sys::open_dir(self.root_fd.as_raw_fd(), c".")?;
        let mut stack = match scan(&root, b"") {
            Ok(Ok(found)) => return Ok(Some(found)),
            Ok(Err(subdirs)) => vec![Level {
                fd: root,
                path: Vec::new(),
                subdirs,
            }],
            Err(Errno(libc::E2BIG)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut depth = stack.len();
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.subdirs.pop() else {
                stack.pop();
                depth -= 1;
                continue;
            };
            if depth >= MAX_SEARCH_DEPTH {
                continue;
            }
            // Gone or replaced meanwhile: not there, then.
            let Ok(fd) = cstr(&name).and_then(|n| sys::open_dir(top.fd.as_raw_fd(), &n)) else {
                continue;
            };
            let mut path = top.path.clone();
            path.push(b'/');
            path.extend_from_slice(&name);
            match scan(&fd, &path) {
                Ok(Ok(found)) => return Ok(Some(found)),
                Ok(Err(subdirs)) => {
                    stack.push(Level { fd, path, subdirs });
                    depth += 1;
                }
                Err(Errno(libc::E2BIG)) => return Ok(None),
                // An unreadable directory: look elsewhere.
                Err(_) => {}
            }
        }
        Ok(None)
    }

    pub fn checksum(&self, g: &Gfid, offset: u64, length: u64, block: u32) -> SysResult<Vec<u64>> {
        if block == 0
            || block > crate::proto::MAX_IO
            || length / u64::from(block) > crate::proto::MAX_CHECKSUM_BLOCKS
        {
            return Err(Errno(libc::EINVAL));
        }
        let f = self.open_file(g, libc::O_RDONLY)?;
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset.saturating_add(length);
        while at < end {
            let n = (end - at).min(u64::from(block)) as usize;
            let data = sys::pread_full(f.as_raw_fd(), at, n)?;
            out.push(xxhash_rust::xxh3::xxh3_64(&data));
            if data.len() < n {
                break;
            }
            at += n as u64;
        }
        Ok(out)
    }
}

/// The flags a brick opens a file with for a client's `open(2)` flags: the access mode
/// and synchronous-write flags. Appends, truncation and creation are done by the client
/// through explicit offsets and operations, so every copy sees the same ones.
pub fn brick_open_flags(flags: i32) -> i32 {
    (flags & libc::O_ACCMODE) | (flags & (libc::O_SYNC | libc::O_DSYNC))
}

fn parse_dir_handle(target: &[u8]) -> Option<(Gfid, Vec<u8>)> {
    // ../../pa/pb/<uuid>/<name>
    let rest = target.strip_prefix(b"../../")?;
    let rest = rest.get(6..)?;
    let uuid = std::str::from_utf8(rest.get(..36)?).ok()?;
    let g = Gfid::parse(uuid)?;
    let name = rest.get(36..)?.strip_prefix(b"/")?;
    if name.is_empty() || name.contains(&b'/') {
        return None;
    }
    Some((g, name.to_vec()))
}

fn to_any(e: Errno) -> anyhow::Error {
    anyhow::anyhow!("{}", e.describe())
}

/// Reads a brick's identity file, if it has one (volume management uses it to refuse a
/// directory that already belongs to a volume).
pub fn brick_identity(root: &Path) -> Option<BrickIdentity> {
    let bytes = std::fs::read(root.join(HIDDEN_DIR).join("brick.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The permission bits a regular file keeps once someone who may not keep its privileges
/// has written to it or truncated it: set-user-ID goes, and set-group-ID when
/// group-execute is set too (without it the bit marks mandatory locking, and stays), as
/// the kernel's `setattr_should_drop_suidgid` decides. `None`: nothing to clear.
///
/// Mounts negotiate FUSE_HANDLE_KILLPRIV_V2, so the kernel leaves this to the file
/// system: it no longer asks for `security.capability` before every write (a FUSE round
/// trip per written file), and bricks drop the bits themselves, on every copy. File
/// capabilities need nothing here: the brick writes as root, and the brick's own kernel
/// removes `security.capability` at any write, whoever writes.
pub fn without_privileges(mode: u32) -> Option<u32> {
    let group_exec_sgid = libc::S_ISGID | libc::S_IXGRP;
    let mut kept = mode & 0o7777;
    kept &= !libc::S_ISUID;
    if mode & group_exec_sgid == group_exec_sgid {
        kept &= !libc::S_ISGID;
    }
    (kept != mode & 0o7777).then_some(kept)
}

/// Drops a regular file's set-user-ID and set-group-ID bits ([`without_privileges`]).
fn kill_privileges(fd: RawFd) -> SysResult<()> {
    let st = sys::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    match without_privileges(st.st_mode) {
        Some(mode) => sys::fchmod(fd, mode),
        None => Ok(()),
    }
}

impl Creds {
    pub fn root() -> Creds {
        Creds::default()
    }
}

#[cfg(test)]
mod tests;
