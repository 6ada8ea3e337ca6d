//! The brick wire protocol (documented in docs/storage.md, "Brick protocol").
//!
//! One TCP connection per client and brick carries frames in both directions:
//!
//! ```text
//! +----------------+----------------+--------------------------------+
//! | body length u32| data length u32|     request id u64             |  16-byte header,
//! +----------------+----------------+--------------------------------+  big-endian
//! | body: a postcard-encoded message (≤ MAX_BODY bytes)              |
//! | data: raw bytes (written or read file contents, ≤ MAX_DATA)      |
//! +------------------------------------------------------------------+
//! ```
//!
//! A client sends [`Op`] bodies; the brick answers each with a frame of the same id whose
//! body is [`FromBrick::Reply`]. Requests may be answered out of order (many are in
//! flight at once). The brick may also send [`FromBrick::Notify`] frames with id 0.
//! The first request on a connection must be [`Op::Hello`]. A frame that cannot be
//! decoded, or is over a limit, closes the connection (it cannot be resynchronized).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::gfid::Gfid;
use crate::layout::DirLayout;
use crate::markers::{AfrDelta, AfrState};

/// Version of this protocol; a brick refuses a client of another version.
pub const PROTOCOL_VERSION: u32 = 5;
/// Sent in `Hello`, so a stray connection from another program is refused at once.
pub const MAGIC: [u8; 4] = *b"NUFS";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest encoded message body.
pub const MAX_BODY: usize = 1 << 20;
/// Largest data part of a frame.
pub const MAX_DATA: usize = 4 << 20;
/// Largest read or write in one request (FUSE never asks for more than 1 MiB).
pub const MAX_IO: u32 = 1 << 20;
/// Longest file name (one path component), as on Linux.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symbolic link target.
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Longest extended attribute name and value, as on Linux.
pub const MAX_XATTR_NAME_LEN: usize = 255;
pub const MAX_XATTR_VALUE_LEN: usize = 65536;
/// Most directory entries in one `Readdir` answer.
pub const MAX_READDIR_BATCH: u32 = 1024;
/// Most ids in one `IndexList` answer.
pub const MAX_INDEX_BATCH: u32 = 4096;
/// Most supplementary groups sent with a request (Linux's NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;
/// Most blocks one `Checksum` request may cover; a block is at most [`MAX_IO`] bytes.
pub const MAX_CHECKSUM_BLOCKS: u64 = 512;

/// A point in time (seconds and nanoseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// A time to set: now (by the brick's clock) or a given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Timespec),
}

/// File attributes, as `stat` gives them (nlink counts only the volume's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attr {
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

impl Attr {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// What nuage keeps beside a file on a brick.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// None for a file put on the brick behind nuage's back (it gets one on lookup).
    pub gfid: Option<Gfid>,
    pub afr: AfrState,
    /// Directories: this subvolume's hash range for the directory.
    pub layout: Option<DirLayout>,
    /// Link files: the subvolume that holds the data.
    pub linkto: Option<u32>,
}

/// A file found on a brick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub attr: Attr,
    pub meta: Meta,
}

impl Entry {
    /// A link file: a name that points at the subvolume holding the file's data.
    pub fn is_link_file(&self) -> bool {
        self.attr.mode == crate::brick::store::LINKTO_MODE && self.meta.linkto.is_some()
    }
}

/// The caller of an operation that creates a file, so the brick creates it as the caller
/// would (owner, group of a set-group-id directory, umask already applied by the kernel).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Where an inode operation applies: an open file of this connection, or the file id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub gfid: Gfid,
    pub fd: Option<u64>,
}

/// Attributes to change (`None` leaves one alone).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetAttr {
    /// Permission bits only (07777).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// A regular file's set-user-ID and set-group-ID bits go (see
    /// `brick::store::without_privileges`): the change is a truncation (or the kernel's
    /// bare request to drop them) by a caller who may not keep them.
    pub kill_suidgid: bool,
}

/// Changes to nuage's own attributes (heal, rebalance, layout fixes).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetMeta {
    pub layout: Option<DirLayout>,
    /// `Some(None)` removes the link-file mark.
    pub linkto: Option<Option<u32>>,
    /// Replaces the markers outright (heal of a fresh copy).
    pub afr: Option<AfrState>,
}

/// How a new object is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewObject {
    /// Type (`S_IFREG`, `S_IFDIR`, `S_IFLNK`, `S_IFIFO`, `S_IFSOCK`, `S_IFCHR`,
    /// `S_IFBLK`) and permission bits, umask applied.
    pub mode: u32,
    pub rdev: u64,
    /// Symbolic links: the target.
    pub target: Option<Vec<u8>>,
    pub creds: Creds,
    pub afr: AfrState,
    pub layout: Option<DirLayout>,
    pub linkto: Option<u32>,
    /// Regular files: open the new file with these `open(2)` flags and return a handle.
    pub open: Option<i32>,
    /// Take the inode lock of the new file for this connection (no-one else can have it;
    /// the connection is told when someone waits for it).
    pub lock: bool,
}

/// Lock domains: one for inode changes (data and metadata), one for directory entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Domain {
    Inode,
    Entry,
}

/// A request from a client to a brick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// First request of a connection: who the client is and which brick it expects.
    Hello {
        magic: [u8; 4],
        version: u32,
        volume_id: String,
        brick_id: u32,
        client: String,
        /// The client pings at least this often; the brick drops a connection silent for
        /// three intervals (releasing its locks).
        ping_interval_ms: u32,
    },
    Ping,
    Lookup {
        parent: Gfid,
        name: Vec<u8>,
    },
    /// Attributes of a file by id.
    Stat {
        gfid: Gfid,
        fd: Option<u64>,
    },
    Statfs,
    Mknod {
        parent: Gfid,
        name: Vec<u8>,
        gfid: Gfid,
        obj: NewObject,
        /// Applied to the parent's markers before the change.
        parent_op: Option<AfrDelta>,
        /// Refuse (ESTALE) unless the parent's layout has this epoch on this brick.
        check_epoch: Option<u64>,
    },
    Link {
        gfid: Gfid,
        parent: Gfid,
        name: Vec<u8>,
        parent_op: Option<AfrDelta>,
    },
    Unlink {
        parent: Gfid,
        name: Vec<u8>,
        /// Refuse (ESTALE) if the name is another file now.
        gfid: Option<Gfid>,
        parent_op: Option<AfrDelta>,
    },
    Rmdir {
        parent: Gfid,
        name: Vec<u8>,
        gfid: Option<Gfid>,
        parent_op: Option<AfrDelta>,
    },
    Rename {
        parent: Gfid,
        name: Vec<u8>,
        new_parent: Gfid,
        new_name: Vec<u8>,
        /// `renameat2` flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
        flags: u32,
        parent_op: Option<AfrDelta>,
        new_parent_op: Option<AfrDelta>,
    },
    Setattr {
        target: Target,
        set: SetAttr,
        op: Option<AfrDelta>,
    },
    Open {
        gfid: Gfid,
        flags: i32,
    },
    Close {
        fd: u64,
    },
    Read {
        target: Target,
        offset: u64,
        size: u32,
    },
    /// The bytes to write are the frame's data.
    Write {
        target: Target,
        offset: u64,
        op: Option<AfrDelta>,
        /// The writer may not keep the file's set-user-ID and set-group-ID bits (the
        /// kernel's FUSE_WRITE_KILL_SUIDGID): the brick clears them with the write.
        kill_suidgid: bool,
    },
    Fsync {
        target: Target,
        datasync: bool,
    },
    Fallocate {
        target: Target,
        mode: i32,
        offset: u64,
        length: u64,
        op: Option<AfrDelta>,
    },
    Readlink {
        gfid: Gfid,
    },
    /// Entries of a directory after `cookie` (0: from the start).
    Readdir {
        gfid: Gfid,
        cookie: u64,
        max: u32,
    },
    /// Applies a delta to a file's markers atomically; optionally then releases a lock.
    Xattrop {
        gfid: Gfid,
        delta: AfrDelta,
        unlock: Option<Domain>,
    },
    SetMeta {
        gfid: Gfid,
        set: SetMeta,
    },
    /// Gives an id to a file that has none on this brick (put there behind nuage's back).
    SetGfid {
        parent: Gfid,
        name: Vec<u8>,
        gfid: Gfid,
    },
    Getxattr {
        gfid: Gfid,
        name: Vec<u8>,
    },
    Listxattr {
        gfid: Gfid,
    },
    Setxattr {
        gfid: Gfid,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
        op: Option<AfrDelta>,
    },
    Removexattr {
        gfid: Gfid,
        name: Vec<u8>,
        op: Option<AfrDelta>,
    },
    /// Takes the lock of `domain` on a file for this connection. `wait`: queue until it is
    /// free (else EAGAIN). `notify`: tell this connection when someone waits for it.
    Lock {
        gfid: Gfid,
        domain: Domain,
        wait: bool,
        notify: bool,
    },
    Unlock {
        gfid: Gfid,
        domain: Domain,
    },
    /// Files whose markers are not clean on this brick (the heal index), after `after`.
    IndexList {
        after: Option<Gfid>,
        max: u32,
    },
    /// A path of the file from the volume root (for heal reports).
    Path {
        gfid: Gfid,
    },
    /// xxh3-64 checksums of consecutive `block`-byte blocks (heal compares copies).
    Checksum {
        gfid: Gfid,
        offset: u64,
        length: u64,
        block: u32,
    },
    /// Fences a file for a rebalance move (brick/fence.rs): EBUSY if it is open on this
    /// brick; until `Unfence` (or this connection ends), other connections' opens and
    /// changes of it wait.
    Fence {
        gfid: Gfid,
    },
    Unfence {
        gfid: Gfid,
    },
    /// The post-op of a name made or removed in a directory (replica.rs): applies a delta
    /// to the directory's markers like `Xattrop` and answers with the directory's
    /// [`Reply::Entry`] after it, so that the client knows its attributes without
    /// another round trip (the marker update moved its ctime).
    EntryPostOp {
        dir: Gfid,
        delta: AfrDelta,
    },
}

impl Op {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Ping => "ping",
            Op::Lookup { .. } => "lookup",
            Op::Stat { .. } => "stat",
            Op::Statfs => "statfs",
            Op::Mknod { .. } => "mknod",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Setattr { .. } => "setattr",
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Fsync { .. } => "fsync",
            Op::Fallocate { .. } => "fallocate",
            Op::Readlink { .. } => "readlink",
            Op::Readdir { .. } => "readdir",
            Op::Xattrop { .. } => "xattrop",
            Op::SetMeta { .. } => "setmeta",
            Op::SetGfid { .. } => "setgfid",
            Op::Getxattr { .. } => "getxattr",
            Op::Listxattr { .. } => "listxattr",
            Op::Setxattr { .. } => "setxattr",
            Op::Removexattr { .. } => "removexattr",
            Op::Lock { .. } => "lock",
            Op::Unlock { .. } => "unlock",
            Op::IndexList { .. } => "indexlist",
            Op::Path { .. } => "path",
            Op::Checksum { .. } => "checksum",
            Op::Fence { .. } => "fence",
            Op::Unfence { .. } => "unfence",
            Op::EntryPostOp { .. } => "entrypostop",
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    /// None if the entry vanished while being read.
    pub entry: Option<Entry>,
}

/// File system usage of a brick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A brick's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        brick_id: u32,
        path: String,
    },
    Pong,
    Entry(Entry),
    /// `parent`: the parent directory's attributes just after the change (gluster's
    /// `postparent`), so a client can answer the kernel's next stat of the directory
    /// without asking every brick again.
    Created {
        entry: Entry,
        fd: Option<u64>,
        parent: Option<Box<Attr>>,
    },
    /// `linkto`: the name was a link file pointing at that subvolume. `parent`: as in
    /// `Created`.
    Unlinked {
        gfid: Option<Gfid>,
        nlink_left: u32,
        linkto: Option<u32>,
        parent: Option<Box<Attr>>,
    },
    Renamed {
        replaced: Option<Gfid>,
    },
    Attr(Attr),
    Opened {
        fd: u64,
    },
    /// The bytes read are the frame's data; `eof` if the file ends there.
    Data {
        eof: bool,
    },
    Written {
        size: u32,
    },
    Done,
    Link(Vec<u8>),
    /// `next`: the cookie to continue from.
    Dir {
        entries: Vec<DirEntry>,
        next: u64,
        eof: bool,
    },
    Markers(AfrState),
    Xattr(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    Statfs(Statfs),
    Locked,
    Index {
        gfids: Vec<Gfid>,
        more: bool,
    },
    Path(Vec<u8>),
    Checksums(Vec<u64>),
}

/// A Linux errno value, as carried in failed replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl Errno {
    pub fn from_io(e: &std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
    pub fn describe(self) -> String {
        std::io::Error::from_raw_os_error(self.0).to_string()
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Errno {
        Errno(e as i32)
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno::from_io(&e)
    }
}

/// Something the brick tells a client without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notify {
    /// Another client waits for a lock this connection holds.
    Contended { gfid: Gfid, domain: Domain },
}

/// The body of every frame a brick sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromBrick {
    Reply(Result<Reply, Errno>),
    Notify(Notify),
}

/// A frame as read from the wire.
#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    pub body: Vec<u8>,
    pub data: Vec<u8>,
}

/// Header and body of a frame (the data part is written after it, unchanged).
pub fn encode_frame<T: Serialize>(id: u64, body: &T, data_len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = postcard::to_extend(body, vec![0u8; HEADER_LEN])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let body_len = out.len() - HEADER_LEN;
    if body_len > MAX_BODY || data_len > MAX_DATA {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame too large (body {body_len} bytes, data {data_len} bytes)"),
        ));
    }
    out[0..4].copy_from_slice(&(body_len as u32).to_be_bytes());
    out[4..8].copy_from_slice(&(data_len as u32).to_be_bytes());
    out[8..16].copy_from_slice(&id.to_be_bytes());
    Ok(out)
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..]).await?;
    let body_len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let data_len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    let id = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    if body_len > MAX_BODY || data_len > MAX_DATA {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "frame over the limits (body {body_len} > {MAX_BODY} or data {data_len} > {MAX_DATA})"
            ),
        ));
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body).await?;
    let mut data = vec![0u8; data_len];
    r.read_exact(&mut data).await?;
    Ok(Some(Frame { id, body, data }))
}

/// Bytes a connection's sender may have queued beyond what its socket took at once;
/// senders wait beyond that (back-pressure on a peer that does not read).
pub const MAX_SEND_BACKLOG: usize = 8 << 20;

/// The sending side of a connection, shared by every task that sends on it.
///
/// A frame is written by the task that made it, straight into the socket (a
/// non-blocking `send`), under a lock that is never held across an await: the common
/// case — a small frame, a socket with room — costs no handoff to a writer task and
/// back (a thread wakeup each way, on every request and every answer). What the socket
/// does not take at once is queued, in order, and written by [`FrameSink::flush_queued`]
/// (one task per connection, woken only then). Frames are never interleaved: a frame is
/// either written whole or its rest queued before the lock is released, and nothing is
/// written directly while anything is queued.
pub struct FrameSink {
    wr: tokio::net::tcp::OwnedWriteHalf,
    state: std::sync::Mutex<SinkState>,
    /// Wakes the flusher: something was queued.
    queued: tokio::sync::Notify,
    /// Wakes senders waiting for room, and `drained`.
    room: tokio::sync::Notify,
}

#[derive(Default)]
struct SinkState {
    /// Frames (and how much of the first was written) waiting for the socket.
    queue: std::collections::VecDeque<(Vec<u8>, usize)>,
    /// Bytes in `queue` not yet written.
    bytes: usize,
    /// The socket failed (or was closed): every send fails from then on.
    broken: bool,
}

fn broken_pipe() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed")
}

impl FrameSink {
    pub fn new(wr: tokio::net::tcp::OwnedWriteHalf) -> FrameSink {
        FrameSink {
            wr,
            state: std::sync::Mutex::default(),
            queued: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        }
    }

    /// Sends a frame, waiting only while [`MAX_SEND_BACKLOG`] bytes are queued already.
    /// Cancel-safe: a frame is either taken whole or not at all.
    pub async fn send(&self, frame: Vec<u8>) -> std::io::Result<()> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let mut st = self.state.lock().expect("sink");
                if st.broken {
                    return Err(broken_pipe());
                }
                if st.bytes < MAX_SEND_BACKLOG {
                    return self.push(&mut st, frame);
                }
                // Registered before the lock goes, so a drain in between is not missed.
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// Sends a frame unless the backlog is full (pings, notices: dropped then, as the
    /// peer will hear from the frames ahead of them). Never waits.
    pub fn try_send(&self, frame: Vec<u8>) -> std::io::Result<bool> {
        let mut st = self.state.lock().expect("sink");
        if st.broken {
            return Err(broken_pipe());
        }
        if st.bytes >= MAX_SEND_BACKLOG {
            return Ok(false);
        }
        self.push(&mut st, frame).map(|()| true)
    }

    fn push(&self, st: &mut SinkState, frame: Vec<u8>) -> std::io::Result<()> {
        let mut done = 0;
        if st.queue.is_empty() {
            while done < frame.len() {
                match self.wr.try_write(&frame[done..]) {
                    Ok(0) => return Err(self.fail(st)),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(self.fail(st)),
                }
            }
            if done == frame.len() {
                return Ok(());
            }
            self.queued.notify_one();
        }
        st.bytes += frame.len() - done;
        st.queue.push_back((frame, done));
        Ok(())
    }

    fn fail(&self, st: &mut SinkState) -> std::io::Error {
        st.broken = true;
        st.queue.clear();
        st.bytes = 0;
        self.room.notify_waiters();
        self.queued.notify_one();
        broken_pipe()
    }

    /// Marks the sink closed: queued frames are dropped, sends fail.
    pub fn close(&self) {
        let mut st = self.state.lock().expect("sink");
        let _ = self.fail(&mut st);
    }

    /// Writes what senders queued, as the socket takes it, until the sink breaks or
    /// `stop` is cancelled (one such task per connection). Cancels `stop` when the
    /// socket fails, so the connection ends; closes the sink when it returns, so that
    /// no sender waits for room that will never come.
    pub async fn flush_queued(&self, stop: tokio_util::sync::CancellationToken) {
        self.flush_until(&stop).await;
        self.close();
    }

    async fn flush_until(&self, stop: &tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.queued.notified() => {}
            }
            loop {
                {
                    let st = self.state.lock().expect("sink");
                    if st.broken {
                        stop.cancel();
                        return;
                    }
                    if st.queue.is_empty() {
                        break;
                    }
                }
                let ready = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = self.wr.writable() => r,
                };
                let mut st = self.state.lock().expect("sink");
                if ready.is_err() {
                    let _ = self.fail(&mut st);
                    stop.cancel();
                    return;
                }
                while let Some((f, off)) = st.queue.front_mut() {
                    match self.wr.try_write(&f[*off..]) {
                        Ok(0) => {
                            let _ = self.fail(&mut st);
                            stop.cancel();
                            return;
                        }
                        Ok(n) => {
                            *off += n;
                            let whole = *off == f.len();
                            st.bytes -= n;
                            if whole {
                                st.queue.pop_front();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            let _ = self.fail(&mut st);
                            stop.cancel();
                            return;
                        }
                    }
                }
                if st.bytes < MAX_SEND_BACKLOG {
                    self.room.notify_waiters();
                }
            }
        }
    }

    /// Waits until everything queued was written (or the sink broke).
    pub async fn drained(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let st = self.state.lock().expect("sink");
                if st.broken || st.queue.is_empty() {
                    return;
                }
                room.as_mut().enable();
            }
            room.await;
        }
    }
}

pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> std::io::Result<T> {
    postcard::from_bytes(body).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("undecodable message: {e}"),
        )
    })
}

/// Checks a file name from a request: one component, not `.`/`..`, no NUL or `/`.
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Errno(libc::EINVAL));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markers::Kind;
    use std::sync::Arc;

    /// A connected pair: the sink's side, and the peer's read half.
    async fn sink_pair() -> (Arc<FrameSink>, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        let (_rd, wr) = a.unwrap().into_split();
        (Arc::new(FrameSink::new(wr)), b.unwrap().0)
    }

    #[tokio::test]
    async fn a_sink_keeps_frames_whole_and_in_order_when_the_peer_reads_late() {
        let (sink, mut peer) = sink_pair().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn({
            let (sink, stop) = (sink.clone(), stop.clone());
            async move { sink.flush_queued(stop).await }
        });
        // Several senders at once, more than the socket buffers hold while nobody reads:
        // the rest is queued, then senders wait for room (the backlog is bounded).
        let frames = 64u64;
        let data = vec![7u8; 512 << 10];
        let mut senders = Vec::new();
        for s in 0..4u64 {
            let (sink, data) = (sink.clone(), data.clone());
            senders.push(tokio::spawn(async move {
                for i in (s..frames).step_by(4) {
                    let mut f = encode_frame(i, &Op::Ping, data.len()).unwrap();
                    f.extend_from_slice(&data);
                    sink.send(f).await.unwrap();
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        {
            let st = sink.state.lock().unwrap();
            assert!(st.bytes <= MAX_SEND_BACKLOG + data.len() + HEADER_LEN + 16);
        }
        let mut seen = Vec::new();
        for _ in 0..frames {
            let f = read_frame(&mut peer).await.unwrap().expect("a frame");
            assert_eq!(decode::<Op>(&f.body).unwrap(), Op::Ping);
            assert_eq!(f.data, data, "frame {} arrived whole", f.id);
            seen.push(f.id);
        }
        for s in senders {
            s.await.unwrap();
        }
        // Each sender's frames in its own order.
        for s in 0..4u64 {
            let mine: Vec<u64> = seen.iter().copied().filter(|i| i % 4 == s).collect();
            let sorted = {
                let mut m = mine.clone();
                m.sort_unstable();
                m
            };
            assert_eq!(mine, sorted);
        }
        sink.drained().await;
        stop.cancel();
        flusher.await.unwrap();
        // Closed with its flusher: sends fail rather than wait.
        assert!(sink.send(vec![0; 16]).await.is_err());
        assert!(sink.try_send(vec![0; 16]).is_err());
    }

    #[tokio::test]
    async fn a_sink_fails_its_waiting_senders_when_the_peer_goes() {
        let (sink, peer) = sink_pair().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = tokio::spawn({
            let (sink, stop) = (sink.clone(), stop.clone());
            async move { sink.flush_queued(stop).await }
        });
        let big = vec![1u8; 1 << 20];
        let sender = tokio::spawn({
            let sink = sink.clone();
            async move {
                loop {
                    if sink.send(big.clone()).await.is_err() {
                        return;
                    }
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(peer);
        tokio::time::timeout(std::time::Duration::from_secs(20), sender)
            .await
            .expect("the sender gives up once the peer is gone")
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(20), flusher)
            .await
            .expect("the flusher ends")
            .unwrap();
        assert!(stop.is_cancelled(), "the connection is told to end");
    }

    fn round_trip_op(op: Op) {
        let frame = encode_frame(42, &op, 0).unwrap();
        let body = &frame[HEADER_LEN..];
        assert_eq!(decode::<Op>(body).unwrap(), op);
    }

    #[test]
    fn every_request_round_trips() {
        let g = Gfid::random();
        let t = Target {
            gfid: g,
            fd: Some(3),
        };
        let delta = Some(AfrDelta::pre_op(&[Kind::Data], &[2]));
        let ops = vec![
            Op::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                volume_id: "v".into(),
                brick_id: 1,
                client: "c".into(),
                ping_interval_ms: 1000,
            },
            Op::Ping,
            Op::Lookup {
                parent: Gfid::ROOT,
                name: b"a".to_vec(),
            },
            Op::Stat { gfid: g, fd: None },
            Op::Statfs,
            Op::Mknod {
                parent: Gfid::ROOT,
                name: b"f".to_vec(),
                gfid: g,
                obj: NewObject {
                    mode: libc::S_IFREG | 0o644,
                    rdev: 0,
                    target: None,
                    creds: Creds {
                        uid: 1,
                        gid: 2,
                        groups: vec![3, 4],
                    },
                    afr: AfrState::default(),
                    layout: None,
                    linkto: Some(4),
                    open: Some(libc::O_RDWR),
                    lock: true,
                },
                parent_op: delta.clone(),
                check_epoch: Some(9),
            },
            Op::Link {
                gfid: g,
                parent: Gfid::ROOT,
                name: b"l".to_vec(),
                parent_op: None,
            },
            Op::Unlink {
                parent: Gfid::ROOT,
                name: b"f".to_vec(),
                gfid: Some(g),
                parent_op: delta.clone(),
            },
            Op::Rmdir {
                parent: Gfid::ROOT,
                name: b"d".to_vec(),
                gfid: None,
                parent_op: None,
            },
            Op::Rename {
                parent: Gfid::ROOT,
                name: b"a".to_vec(),
                new_parent: g,
                new_name: b"b".to_vec(),
                flags: 1,
                parent_op: None,
                new_parent_op: delta.clone(),
            },
            Op::Setattr {
                target: t,
                set: SetAttr {
                    mode: Some(0o600),
                    size: Some(7),
                    atime: Some(SetTime::Now),
                    mtime: Some(SetTime::At(Timespec { sec: -5, nsec: 9 })),
                    ..Default::default()
                },
                op: delta.clone(),
            },
            Op::Open { gfid: g, flags: 2 },
            Op::Close { fd: 3 },
            Op::Read {
                target: t,
                offset: 1 << 40,
                size: 4096,
            },
            Op::Write {
                target: t,
                offset: 5,
                op: None,
                kill_suidgid: true,
            },
            Op::Fsync {
                target: t,
                datasync: true,
            },
            Op::Fallocate {
                target: t,
                mode: 0,
                offset: 0,
                length: 10,
                op: None,
            },
            Op::Readlink { gfid: g },
            Op::Readdir {
                gfid: g,
                cookie: u64::MAX,
                max: 10,
            },
            Op::Xattrop {
                gfid: g,
                delta: AfrDelta::default(),
                unlock: Some(Domain::Entry),
            },
            Op::EntryPostOp {
                dir: g,
                delta: AfrDelta::default(),
            },
            Op::SetMeta {
                gfid: g,
                set: SetMeta {
                    layout: Some(DirLayout {
                        epoch: 1,
                        committed: true,
                        range: Some((0, 5)),
                    }),
                    linkto: Some(None),
                    afr: Some(AfrState::default()),
                },
            },
            Op::SetGfid {
                parent: Gfid::ROOT,
                name: b"x".to_vec(),
                gfid: g,
            },
            Op::Getxattr {
                gfid: g,
                name: b"user.a".to_vec(),
            },
            Op::Listxattr { gfid: g },
            Op::Setxattr {
                gfid: g,
                name: b"user.a".to_vec(),
                value: vec![0, 1, 2],
                flags: 0,
                op: None,
            },
            Op::Removexattr {
                gfid: g,
                name: b"user.a".to_vec(),
                op: None,
            },
            Op::Lock {
                gfid: g,
                domain: Domain::Inode,
                wait: true,
                notify: true,
            },
            Op::Unlock {
                gfid: g,
                domain: Domain::Inode,
            },
            Op::IndexList {
                after: Some(g),
                max: 5,
            },
            Op::Path { gfid: g },
            Op::Checksum {
                gfid: g,
                offset: 0,
                length: 1 << 20,
                block: 128 << 10,
            },
            Op::Fence { gfid: g },
            Op::Unfence { gfid: g },
        ];
        for op in ops {
            round_trip_op(op);
        }
    }

    #[test]
    fn replies_round_trip_with_their_data() {
        let g = Gfid::random();
        let entry = Entry {
            attr: Attr {
                mode: libc::S_IFDIR | 0o755,
                nlink: 2,
                size: 4096,
                ..Default::default()
            },
            meta: Meta {
                gfid: Some(g),
                afr: AfrState {
                    dirty: [0, 0, 1],
                    pending: vec![(2, [0, 0, 1])],
                },
                layout: None,
                linkto: None,
            },
        };
        let replies = vec![
            FromBrick::Reply(Ok(Reply::Entry(entry.clone()))),
            FromBrick::Reply(Ok(Reply::Dir {
                entries: vec![DirEntry {
                    name: b"a".to_vec(),
                    entry: Some(entry),
                }],
                next: 77,
                eof: true,
            })),
            FromBrick::Reply(Ok(Reply::Data { eof: false })),
            FromBrick::Reply(Err(Errno(libc::ENOENT))),
            FromBrick::Notify(Notify::Contended {
                gfid: g,
                domain: Domain::Inode,
            }),
        ];
        for r in replies {
            let data = b"payload".to_vec();
            let mut wire = encode_frame(7, &r, data.len()).unwrap();
            wire.extend_from_slice(&data);
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let frame = rt
                .block_on(read_frame(&mut wire.as_slice()))
                .unwrap()
                .unwrap();
            assert_eq!(frame.id, 7);
            assert_eq!(frame.data, data);
            assert_eq!(decode::<FromBrick>(&frame.body).unwrap(), r);
        }
    }

    #[test]
    fn oversized_or_garbled_frames_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut wire = Vec::new();
        wire.extend_from_slice(&((MAX_BODY as u32) + 1).to_be_bytes());
        wire.extend_from_slice(&[0; 12]);
        let err = rt.block_on(read_frame(&mut wire.as_slice())).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // A truncated frame is an error, an empty stream a clean end.
        assert!(rt.block_on(read_frame(&mut &[0u8, 0, 0][..])).is_err());
        assert!(rt.block_on(read_frame(&mut &[][..])).unwrap().is_none());
        assert!(decode::<Op>(&[250, 250, 250]).is_err());
        assert!(encode_frame(1, &Op::Ping, MAX_DATA + 1).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(b"ok").is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert_eq!(check_name(bad), Err(Errno(libc::EINVAL)));
        }
        assert_eq!(check_name(&[b'x'; 256]), Err(Errno(libc::ENAMETOOLONG)));
    }
}
