//! A brick server: serves one [`Store`] over the brick protocol (proto.rs).
//!
//! Each connection has a reader (decodes frames, answers pings and the quick metadata
//! requests itself — see [`Run::Inline`] —, runs every other request as its own task, at
//! most [`MAX_INFLIGHT`] at a time), a sink that every task writes its answers into
//! directly (proto::FrameSink; a flusher task writes what the socket did not take at
//! once), its table of open files, and the locks it holds. When the
//! connection ends, for any reason, its files are closed and its locks released.
//! A request that cannot be decoded ends its connection, never the server.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::brick::fence::{Fences, OpenMark};
use crate::brick::locks::{Acquire, ConnId, Contention, LockTable, MAX_LOCK_WAIT};
use crate::brick::store::{BrickIdentity, Store};
use crate::proto::{
    self, Errno, FrameSink, FromBrick, MAGIC, MAX_INDEX_BATCH, MAX_IO, MAX_READDIR_BATCH, Notify,
    Op, PROTOCOL_VERSION, Reply, Target,
};

/// Most client connections a brick serves at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most requests of one connection being worked on at once; the reader waits beyond.
pub const MAX_INFLIGHT: usize = 64;
/// Most files one connection may hold open (EMFILE beyond).
pub const MAX_OPEN_FILES: usize = 65536;
/// A connection must say `Hello` within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest file whose removal — unlink of its last name, close of its last descriptor
/// once it has no name — is done on the connection's reader: freeing a few extents takes
/// microseconds; a large file's blocks may take milliseconds, and are freed off it.
pub const QUICK_FREE_MAX: u64 = 8 << 20;
/// Largest read or write answered on the connection's reader: a copy of a small file's
/// data to or from the page cache takes microseconds, less than a handoff to the
/// blocking pool and back; larger ones (and `fsync`) run there.
pub const QUICK_IO_MAX: usize = 64 << 10;
/// Bounds on the ping interval a client may ask for.
pub const MIN_PING_INTERVAL_MS: u32 = 100;
pub const MAX_PING_INTERVAL_MS: u32 = 600_000;

/// Where a request's system calls run.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    /// On the connection's reader itself, without a task (unless a rebalance fence
    /// is up: see [`Brick::answer_inline`]): a few metadata calls on one object
    /// (lookups, stats, creations, attributes), which take microseconds; a task, a
    /// handoff to another thread and back would cost more than the work, on every
    /// small-file operation. The connection's next requests wait meanwhile.
    Inline,
    /// On the same thread, with the runtime's other work handed to another thread
    /// (`block_in_place`): usually fast, but may free a large file's blocks (the last
    /// name or descriptor of a file going), which can take milliseconds.
    InPlace,
    /// On the blocking pool: data (reads, writes, syncs, checksums), listings, whose
    /// time grows with their size, and a file's path (which may search the brick).
    Pool,
}

fn how_to_run(op: &Op) -> Run {
    match op {
        Op::Lookup { .. }
        | Op::Stat { .. }
        | Op::Statfs
        | Op::Mknod { .. }
        | Op::Link { .. }
        | Op::Open { .. }
        | Op::Readlink { .. }
        | Op::Xattrop { .. }
        | Op::EntryPostOp { .. }
        | Op::SetMeta { .. }
        | Op::SetGfid { .. }
        | Op::Getxattr { .. }
        | Op::Listxattr { .. }
        | Op::Setxattr { .. }
        | Op::Removexattr { .. } => Run::Inline,
        Op::Setattr { set, .. } if set.size.is_none() => Run::Inline,
        Op::Unlink { .. } | Op::Rmdir { .. } | Op::Rename { .. } | Op::Close { .. } => Run::InPlace,
        _ => Run::Pool,
    }
}

/// Shared state of one brick server.
pub struct Brick {
    store: Arc<Store>,
    identity: BrickIdentity,
    locks: LockTable,
    fences: Arc<Fences>,
    conns: Mutex<HashMap<ConnId, Arc<FrameSink>>>,
    next_conn: AtomicU64,
    limit: Arc<Semaphore>,
}

impl Brick {
    pub fn new(store: Store, identity: BrickIdentity) -> Arc<Brick> {
        Arc::new(Brick {
            store: Arc::new(store),
            identity,
            locks: LockTable::default(),
            fences: Arc::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            limit: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    pub fn identity(&self) -> &BrickIdentity {
        &self.identity
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Number of connected clients.
    pub fn connections(&self) -> usize {
        self.conns.lock().expect("conns").len()
    }

    /// Accepts and serves connections until `shutdown`; then closes every connection.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and the like: back off instead of spinning.
                            tracing::warn!("brick {}: accept failed: {e}", self.store.root().display());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                        tracing::warn!("brick: refusing {peer}: {MAX_CONNECTIONS} connections already");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let brick = self.clone();
                    let stop = shutdown.child_token();
                    tasks.spawn(async move {
                        let id = brick.next_conn.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = brick.clone().connection(id, stream, stop).await {
                            tracing::debug!("brick connection from {peer} ended: {e}");
                        }
                        brick.connection_closed(id);
                        drop(permit);
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        while tasks.join_next().await.is_some() {}
    }

    fn connection_closed(&self, id: ConnId) {
        self.conns.lock().expect("conns").remove(&id);
        self.fences.release_all(id);
        let notes = self.locks.release_all(id);
        self.tell(notes);
    }

    /// Sends contention notices to the lock holders concerned.
    fn tell(&self, notes: impl IntoIterator<Item = Contention>) {
        for c in notes {
            let sink = self.conns.lock().expect("conns").get(&c.holder).cloned();
            if let Some(sink) = sink {
                let note = FromBrick::Notify(Notify::Contended {
                    gfid: c.gfid,
                    domain: c.domain,
                });
                if let Ok(frame) = proto::encode_frame(0, &note, 0) {
                    let _ = sink.try_send(frame);
                }
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        id: ConnId,
        stream: TcpStream,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let sink = Arc::new(FrameSink::new(wr));
        // Ends the connection when the socket fails under a write; stopped when it ends.
        let broken = stop.child_token();
        // However this ends (an early `?` too), the flusher ends, and the socket closes.
        let _end = broken.clone().drop_guard();
        let flusher = {
            let (sink, broken) = (sink.clone(), broken.clone());
            tokio::spawn(async move { sink.flush_queued(broken).await })
        };

        // Hello first, within a bound.
        let first = tokio::time::timeout(HELLO_TIMEOUT, proto::read_frame(&mut rd))
            .await
            .map_err(|_| io_err("no hello in time"))??
            .ok_or_else(|| io_err("closed before hello"))?;
        let ping_interval = match proto::decode::<Op>(&first.body)? {
            Op::Hello {
                magic,
                version,
                volume_id,
                brick_id,
                client,
                ping_interval_ms,
            } => {
                let refusal = if magic != MAGIC || version != PROTOCOL_VERSION {
                    Some(libc::EPROTO)
                } else if volume_id != self.identity.volume_id || brick_id != self.identity.brick_id
                {
                    Some(libc::ENOENT)
                } else if !(MIN_PING_INTERVAL_MS..=MAX_PING_INTERVAL_MS).contains(&ping_interval_ms)
                {
                    Some(libc::EINVAL)
                } else {
                    None
                };
                let reply = match refusal {
                    Some(e) => Err(Errno(e)),
                    None => Ok(Reply::Hello {
                        brick_id: self.identity.brick_id,
                        path: self.store.root().display().to_string(),
                    }),
                };
                let refused = reply.is_err();
                let _ = sink
                    .send(proto::encode_frame(first.id, &FromBrick::Reply(reply), 0)?)
                    .await;
                if refused {
                    sink.drained().await;
                    broken.cancel();
                    let _ = flusher.await;
                    return Err(io_err("hello refused"));
                }
                tracing::debug!(
                    "brick {}: client {client} connected",
                    self.identity.brick_id
                );
                Duration::from_millis(u64::from(ping_interval_ms))
            }
            _ => return Err(io_err("first request is not hello")),
        };
        self.conns.lock().expect("conns").insert(id, sink.clone());

        let files = Arc::new(OpenFiles::default());
        let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
        let silence = ping_interval * 3;
        let result = loop {
            let frame = tokio::select! {
                _ = broken.cancelled() => break Ok(()),
                f = tokio::time::timeout(silence, proto::read_frame(&mut rd)) => match f {
                    Err(_) => break Err(io_err("client silent for three ping intervals")),
                    Ok(Err(e)) => break Err(e),
                    Ok(Ok(None)) => break Ok(()),
                    Ok(Ok(Some(f))) => f,
                },
            };
            let op = match proto::decode::<Op>(&frame.body) {
                Ok(op) => op,
                Err(e) => break Err(e),
            };
            if op == Op::Ping {
                let _ = sink
                    .send(proto::encode_frame(
                        frame.id,
                        &FromBrick::Reply(Ok(Reply::Pong)),
                        0,
                    )?)
                    .await;
                continue;
            }
            if self.answer_inline(&files, &op, frame.data.len()) {
                let (reply, data) = self.execute_blocking(id, &files, op, frame.data);
                let _ = sink.send(reply_frame(frame.id, reply, &data)).await;
                continue;
            }
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break Ok(());
            };
            let brick = self.clone();
            let files = files.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let (reply, data) = brick.execute(id, &files, op, frame.data).await;
                let _ = sink.send(reply_frame(frame.id, reply, &data)).await;
                drop(permit);
            });
        };
        // Wait for requests still running, so their replies and fds are accounted for.
        let _ = inflight.acquire_many(MAX_INFLIGHT as u32).await;
        self.conns.lock().expect("conns").remove(&id);
        // The answers still queued go out, unless the server is stopping or the socket
        // failed.
        tokio::select! {
            _ = sink.drained() => {}
            _ = broken.cancelled() => {}
        }
        broken.cancel();
        let _ = flusher.await;
        result
    }

    /// Whether a request is answered on the connection's reader (see [`Run::Inline`]):
    /// not while any file is fenced (the request may have to wait for the fence), and
    /// never an `Open` (it counts the file open against fences, which may wait). The
    /// removal of a small file (unlink, close) is too (see [`QUICK_FREE_MAX`]), and
    /// small reads and writes (see [`QUICK_IO_MAX`]).
    fn answer_inline(&self, files: &OpenFiles, op: &Op, data_len: usize) -> bool {
        if self.fences.any() {
            return false;
        }
        match how_to_run(op) {
            Run::Inline => !matches!(op, Op::Open { .. }),
            Run::InPlace => self.quick_removal(files, op),
            Run::Pool => match op {
                // A small file's read or write: a copy to or from the page cache.
                Op::Write { .. } => data_len <= QUICK_IO_MAX,
                Op::Read { size, .. } => *size as usize <= QUICK_IO_MAX,
                _ => false,
            },
        }
    }

    /// An unlink or close that frees at most [`QUICK_FREE_MAX`] bytes of blocks (or
    /// fails at once). Costs one `fstatat` or `fstat`.
    fn quick_removal(&self, files: &OpenFiles, op: &Op) -> bool {
        let small = |st: libc::stat| (st.st_blocks.max(0) as u64) * 512 <= QUICK_FREE_MAX;
        match op {
            Op::Unlink { parent, name, .. } => {
                let (Ok(dir), Ok(name)) = (
                    self.store.dir_fd(parent),
                    std::ffi::CString::new(name.as_slice()),
                ) else {
                    return true;
                };
                crate::sys::fstatat(dir.as_raw_fd(), &name).map_or(true, small)
            }
            Op::Close { fd } => match files.get_opt(Some(*fd)) {
                // Another name or descriptor keeps the blocks, or there are few of them.
                Ok(Some(f)) => {
                    crate::sys::fstat(f.as_raw_fd()).map_or(true, |st| st.st_nlink > 0 || small(st))
                }
                _ => true,
            },
            _ => false,
        }
    }

    /// Runs one request; returns the reply and its data part.
    async fn execute(
        self: Arc<Self>,
        conn: ConnId,
        files: &Arc<OpenFiles>,
        op: Op,
        data: Vec<u8>,
    ) -> (Result<Reply, Errno>, Vec<u8>) {
        match op {
            Op::Lock {
                gfid,
                domain,
                wait,
                notify,
            } => {
                let (acq, note) = self.locks.acquire(gfid, domain, conn, wait, notify);
                self.tell(note);
                let r = match acq {
                    Acquire::Granted => Ok(Reply::Locked),
                    Acquire::Busy => Err(Errno(libc::EAGAIN)),
                    Acquire::Wait(rx) => match tokio::time::timeout(MAX_LOCK_WAIT, rx).await {
                        Ok(Ok(())) => Ok(Reply::Locked),
                        _ => {
                            let note = self.locks.abandon(gfid, domain, conn);
                            self.tell(note);
                            Err(Errno(libc::ETIMEDOUT))
                        }
                    },
                };
                (r, Vec::new())
            }
            Op::Unlock { gfid, domain } => {
                let note = self.locks.release(gfid, domain, conn);
                self.tell(note);
                (Ok(Reply::Done), Vec::new())
            }
            Op::Fence { gfid } => (
                self.fences.fence(gfid, conn).map(|()| Reply::Done),
                Vec::new(),
            ),
            Op::Unfence { gfid } => {
                self.fences.unfence(gfid, conn);
                (Ok(Reply::Done), Vec::new())
            }
            Op::Open { gfid, flags } => {
                // Counted open before the fence check can change: see brick/fence.rs.
                let r = match self.fences.open(gfid, conn).await {
                    Ok(mark) => self
                        .store
                        .open_file(&gfid, flags)
                        .and_then(|f| files.insert(f, mark))
                        .map(|fd| Reply::Opened { fd }),
                    Err(e) => Err(e),
                };
                (r, Vec::new())
            }
            op => {
                if self.fences.any() {
                    for g in self.changed_files(&op) {
                        if let Err(e) = self.fences.admit(g, conn).await {
                            return (Err(e), Vec::new());
                        }
                    }
                }
                self.run(conn, files, op, data).await
            }
        }
    }

    /// The existing files a request would change (rebalance fences hold such requests).
    /// Names are resolved here, only while some file is fenced.
    fn changed_files(&self, op: &Op) -> Vec<crate::gfid::Gfid> {
        let named = |parent: &crate::gfid::Gfid, name: &[u8]| {
            self.store
                .lookup(parent, name)
                .ok()
                .and_then(|e| e.meta.gfid)
        };
        match op {
            Op::Setattr { target, .. }
            | Op::Write { target, .. }
            | Op::Fallocate { target, .. } => vec![target.gfid],
            Op::Setxattr { gfid, .. }
            | Op::Removexattr { gfid, .. }
            | Op::Xattrop { gfid, .. }
            | Op::EntryPostOp { dir: gfid, .. }
            | Op::SetMeta { gfid, .. }
            | Op::Link { gfid, .. } => vec![*gfid],
            Op::Unlink { gfid: Some(g), .. } => vec![*g],
            Op::Unlink {
                parent,
                name,
                gfid: None,
                ..
            } => named(parent, name).into_iter().collect(),
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => named(parent, name)
                .into_iter()
                .chain(named(new_parent, new_name))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Runs a request where its kind says (see [`Run`]).
    async fn run(
        self: Arc<Self>,
        conn: ConnId,
        files: &Arc<OpenFiles>,
        op: Op,
        data: Vec<u8>,
    ) -> (Result<Reply, Errno>, Vec<u8>) {
        match how_to_run(&op) {
            // A thread handoff there and back costs more than these calls.
            Run::Inline => self.execute_blocking(conn, files, op, data),
            Run::InPlace
                if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(|| self.execute_blocking(conn, files, op, data))
            }
            Run::InPlace | Run::Pool => {
                let brick = self.clone();
                let files = files.clone();
                match tokio::task::spawn_blocking(move || {
                    brick.execute_blocking(conn, &files, op, data)
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("brick request panicked: {e}");
                        (Err(Errno(libc::EIO)), Vec::new())
                    }
                }
            }
        }
    }

    fn execute_blocking(
        &self,
        conn: ConnId,
        files: &OpenFiles,
        op: Op,
        data: Vec<u8>,
    ) -> (Result<Reply, Errno>, Vec<u8>) {
        let s = &self.store;
        let mut out = Vec::new();
        let r = (|| -> Result<Reply, Errno> {
            Ok(match op {
                Op::Hello { .. } => return Err(Errno(libc::EPROTO)),
                Op::Ping => Reply::Pong,
                Op::Lock { .. }
                | Op::Unlock { .. }
                | Op::Fence { .. }
                | Op::Unfence { .. }
                | Op::Open { .. } => unreachable!("handled by execute"),
                Op::Lookup { parent, name } => Reply::Entry(s.lookup(&parent, &name)?),
                Op::Stat { gfid, fd } => {
                    let f = files.get_opt(fd)?;
                    Reply::Entry(s.stat(&gfid, f.as_ref().map(|f| f.as_raw_fd()))?)
                }
                Op::Statfs => Reply::Statfs(s.statfs()?),
                Op::Mknod {
                    parent,
                    name,
                    gfid,
                    obj,
                    parent_op,
                    check_epoch,
                } => {
                    if obj.creds.groups.len() > proto::MAX_GROUPS {
                        return Err(Errno(libc::EINVAL));
                    }
                    let (entry, file) =
                        s.mknod(&parent, &name, &gfid, &obj, &parent_op, check_epoch)?;
                    let fd = match (obj.open, file) {
                        (Some(_), Some(f)) => Some(files.insert(f, self.fences.created(gfid))?),
                        _ => None,
                    };
                    if obj.lock {
                        let (acq, _) =
                            self.locks
                                .acquire(gfid, proto::Domain::Inode, conn, false, true);
                        debug_assert!(matches!(acq, Acquire::Granted), "a new file's lock is free");
                    }
                    Reply::Created {
                        entry,
                        fd,
                        parent: s.dir_attr(&parent).ok().map(Box::new),
                    }
                }
                Op::Link {
                    gfid,
                    parent,
                    name,
                    parent_op,
                } => Reply::Entry(s.link(&gfid, &parent, &name, &parent_op)?),
                Op::Unlink {
                    parent,
                    name,
                    gfid,
                    parent_op,
                } => {
                    let (gfid, nlink_left, linkto) =
                        s.unlink_entry(&parent, &name, gfid, &parent_op)?;
                    Reply::Unlinked {
                        gfid,
                        nlink_left,
                        linkto,
                        parent: s.dir_attr(&parent).ok().map(Box::new),
                    }
                }
                Op::Rmdir {
                    parent,
                    name,
                    gfid,
                    parent_op,
                } => {
                    let gfid = s.rmdir(&parent, &name, gfid, &parent_op)?;
                    Reply::Unlinked {
                        gfid,
                        nlink_left: 0,
                        linkto: None,
                        parent: s.dir_attr(&parent).ok().map(Box::new),
                    }
                }
                Op::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    flags,
                    parent_op,
                    new_parent_op,
                } => {
                    let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
                    if flags & !allowed != 0 {
                        return Err(Errno(libc::EINVAL));
                    }
                    let replaced = s.rename(
                        &parent,
                        &name,
                        &new_parent,
                        &new_name,
                        flags,
                        &parent_op,
                        &new_parent_op,
                    )?;
                    Reply::Renamed { replaced }
                }
                Op::Setattr { target, set, op } => {
                    let f = files.target(&target)?;
                    Reply::Attr(s.setattr(
                        &target.gfid,
                        f.as_ref().map(|f| f.as_raw_fd()),
                        &set,
                        &op,
                    )?)
                }

                Op::Close { fd } => {
                    files.remove(fd)?;
                    Reply::Done
                }
                Op::Read {
                    target,
                    offset,
                    size,
                } => {
                    if size > MAX_IO {
                        return Err(Errno(libc::EINVAL));
                    }
                    let f = files.target(&target)?;
                    out = s.read(
                        &target.gfid,
                        f.as_ref().map(|f| f.as_raw_fd()),
                        offset,
                        size,
                    )?;
                    Reply::Data {
                        eof: out.len() < size as usize,
                    }
                }
                Op::Write {
                    target,
                    offset,
                    op,
                    kill_suidgid,
                } => {
                    if data.len() > MAX_IO as usize {
                        return Err(Errno(libc::EINVAL));
                    }
                    let f = files.target(&target)?;
                    s.write(
                        &target.gfid,
                        f.as_ref().map(|f| f.as_raw_fd()),
                        offset,
                        &data,
                        &op,
                        kill_suidgid,
                    )?;
                    Reply::Written {
                        size: data.len() as u32,
                    }
                }
                Op::Fsync { target, datasync } => {
                    let f = files.target(&target)?;
                    s.fsync(&target.gfid, f.as_ref().map(|f| f.as_raw_fd()), datasync)?;
                    Reply::Done
                }
                Op::Fallocate {
                    target,
                    mode,
                    offset,
                    length,
                    op,
                } => {
                    let f = files.target(&target)?;
                    s.fallocate(
                        &target.gfid,
                        f.as_ref().map(|f| f.as_raw_fd()),
                        mode,
                        offset,
                        length,
                        &op,
                    )?;
                    Reply::Done
                }
                Op::Readlink { gfid } => Reply::Link(s.readlink(&gfid)?),
                Op::Readdir { gfid, cookie, max } => {
                    let (entries, next, eof) =
                        s.readdir(&gfid, cookie, max.clamp(1, MAX_READDIR_BATCH))?;
                    Reply::Dir { entries, next, eof }
                }
                Op::Xattrop {
                    gfid,
                    delta,
                    unlock,
                } => {
                    let st = s.xattrop(&gfid, &delta)?;
                    if let Some(domain) = unlock {
                        let note = self.locks.release(gfid, domain, conn);
                        self.tell(note);
                    }
                    Reply::Markers(st)
                }
                Op::EntryPostOp { dir, delta } => {
                    s.xattrop(&dir, &delta)?;
                    Reply::Entry(s.stat(&dir, None)?)
                }
                Op::SetMeta { gfid, set } => {
                    s.set_meta(&gfid, &set)?;
                    Reply::Done
                }
                Op::SetGfid { parent, name, gfid } => {
                    Reply::Entry(s.set_gfid(&parent, &name, &gfid)?)
                }
                Op::Getxattr { gfid, name } => Reply::Xattr(s.getxattr(&gfid, &name)?),
                Op::Listxattr { gfid } => Reply::XattrNames(s.listxattr(&gfid)?),
                Op::Setxattr {
                    gfid,
                    name,
                    value,
                    flags,
                    op,
                } => {
                    s.setxattr(&gfid, &name, &value, flags, &op)?;
                    Reply::Done
                }
                Op::Removexattr { gfid, name, op } => {
                    s.removexattr(&gfid, &name, &op)?;
                    Reply::Done
                }
                Op::IndexList { after, max } => {
                    let (gfids, more) = s.index_list(after, max.clamp(1, MAX_INDEX_BATCH))?;
                    Reply::Index { gfids, more }
                }
                Op::Path { gfid } => Reply::Path(s.path(&gfid)?),
                Op::Checksum {
                    gfid,
                    offset,
                    length,
                    block,
                } => Reply::Checksums(s.checksum(&gfid, offset, length, block)?),
            })
        })();
        if r.is_err() {
            out.clear();
        }
        (r, out)
    }
}

/// The files a connection holds open, by handle, each counted open (for fences) while
/// it is in the table.
#[derive(Default)]
struct OpenFiles {
    map: Mutex<HashMap<u64, (Arc<File>, OpenMark)>>,
    next: AtomicU64,
}

impl OpenFiles {
    fn insert(&self, f: File, mark: OpenMark) -> Result<u64, Errno> {
        let mut map = self.map.lock().expect("open files");
        if map.len() >= MAX_OPEN_FILES {
            return Err(Errno(libc::EMFILE));
        }
        let h = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        map.insert(h, (Arc::new(f), mark));
        Ok(h)
    }

    fn remove(&self, h: u64) -> Result<(), Errno> {
        self.map
            .lock()
            .expect("open files")
            .remove(&h)
            .map(drop)
            .ok_or(Errno(libc::EBADF))
    }

    fn get_opt(&self, h: Option<u64>) -> Result<Option<Arc<File>>, Errno> {
        match h {
            None => Ok(None),
            Some(h) => self
                .map
                .lock()
                .expect("open files")
                .get(&h)
                .map(|(f, _)| Some(f.clone()))
                .ok_or(Errno(libc::EBADF)),
        }
    }

    fn target(&self, t: &Target) -> Result<Option<Arc<File>>, Errno> {
        self.get_opt(t.fd)
    }
}

/// The frame answering request `id` (EIO if the answer is over the frame limits).
fn reply_frame(id: u64, reply: Result<Reply, Errno>, data: &[u8]) -> Vec<u8> {
    match proto::encode_frame(id, &FromBrick::Reply(reply), data.len()) {
        Ok(mut f) => {
            f.extend_from_slice(data);
            f
        }
        Err(e) => {
            tracing::warn!("brick: reply too large: {e}");
            proto::encode_frame(id, &FromBrick::Reply(Err(Errno(libc::EIO))), 0)
                .expect("small frame")
        }
    }
}

fn io_err(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

/// Opens the brick at `identity`'s path and serves it on `listener` until `shutdown`.
pub async fn run(
    root: &std::path::Path,
    identity: BrickIdentity,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open(root, &identity)?;
    Brick::new(store, identity).serve(listener, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfid::Gfid;
    use crate::proto::SetAttr;

    #[test]
    fn quick_requests_are_answered_on_the_reader_and_slow_ones_are_not() {
        use crate::brick::store::BrickIdentity;
        let dir = tempfile::tempdir().unwrap();
        let identity = BrickIdentity {
            volume: "vol".into(),
            volume_id: "vid".into(),
            brick_id: 1,
        };
        let brick = Brick::new(Store::open(dir.path(), &identity).unwrap(), identity);
        std::fs::write(dir.path().join("small"), vec![1u8; 4096]).unwrap();
        let big = File::create(dir.path().join("big")).unwrap();
        // Real blocks (a sparse file would free none).
        let len = 2 * QUICK_FREE_MAX as libc::off_t;
        // SAFETY: a descriptor of an open file.
        assert_eq!(unsafe { libc::fallocate(big.as_raw_fd(), 0, 0, len) }, 0);
        let files = OpenFiles::default();
        let unlink = |name: &str| Op::Unlink {
            parent: Gfid::ROOT,
            name: name.as_bytes().to_vec(),
            gfid: None,
            parent_op: None,
        };
        assert!(brick.answer_inline(&files, &unlink("small"), 0));
        assert!(!brick.answer_inline(&files, &unlink("big"), 0));
        // Fails at once.
        assert!(brick.answer_inline(&files, &unlink("missing"), 0));
        let t = Target {
            gfid: Gfid::random(),
            fd: None,
        };
        let write = Op::Write {
            target: t,
            offset: 0,
            op: None,
            kill_suidgid: false,
        };
        assert!(brick.answer_inline(&files, &write, 4096));
        assert!(!brick.answer_inline(&files, &write, QUICK_IO_MAX + 1));
        let read = |size| Op::Read {
            target: t,
            offset: 0,
            size,
        };
        assert!(brick.answer_inline(&files, &read(4096), 0));
        assert!(!brick.answer_inline(&files, &read(1 << 20), 0));
        let fsync = Op::Fsync {
            target: t,
            datasync: false,
        };
        assert!(!brick.answer_inline(&files, &fsync, 0));
        let open = Op::Open {
            gfid: t.gfid,
            flags: 0,
        };
        assert!(!brick.answer_inline(&files, &open, 0));
        let lookup = Op::Lookup {
            parent: Gfid::ROOT,
            name: b"small".to_vec(),
        };
        assert!(brick.answer_inline(&files, &lookup, 0));
        // While a file is fenced (a rebalance moving it), nothing is: it may have to wait.
        brick.fences.fence(Gfid::random(), 99).unwrap();
        assert!(!brick.answer_inline(&files, &lookup, 0));
    }

    #[test]
    fn data_listings_and_paths_run_on_the_blocking_pool() {
        let t = Target {
            gfid: Gfid::random(),
            fd: Some(1),
        };
        for op in [
            Op::Read {
                target: t,
                offset: 0,
                size: 1,
            },
            Op::Write {
                target: t,
                offset: 0,
                op: None,
                kill_suidgid: false,
            },
            Op::Fsync {
                target: t,
                datasync: false,
            },
            Op::Readdir {
                gfid: t.gfid,
                cookie: 0,
                max: 1,
            },
            Op::Setattr {
                target: t,
                set: SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
                op: None,
            },
            Op::Path { gfid: t.gfid },
        ] {
            assert_eq!(how_to_run(&op), Run::Pool, "{op:?}");
        }
        assert_eq!(how_to_run(&Op::Close { fd: 1 }), Run::InPlace);
        assert_eq!(
            how_to_run(&Op::Lookup {
                parent: Gfid::ROOT,
                name: b"a".to_vec()
            }),
            Run::Inline
        );
    }
}
