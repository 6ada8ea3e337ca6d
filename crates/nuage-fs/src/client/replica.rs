//! A replica set as one subvolume (AFR-style, as gluster's `cluster/replicate`).
//!
//! - Every change goes to every copy that is up. The request carries the *pre-op*: it
//!   raises `dirty` on each copy and accuses the copies that are down (markers.rs). Once
//!   the answers are in, a *post-op* (`Xattrop`) on each copy that made the change lowers
//!   `dirty` and accuses the copies that failed it. A copy that missed a change is thus
//!   accused by the copies that have it, and heal knows which way to copy.
//! - Reads go to one copy nobody accuses. Copies accusing each other (split-brain) give
//!   EIO; nuage never picks a winner by itself.
//! - Quorum (`cluster.quorum-type`): `auto` (the default) allows changes only with more
//!   than half the copies up, or exactly half when the first copy is one of them (gluster's
//!   tie-break, which makes replica 2 writable with only its first brick). `none` allows
//!   changes with any copy up. Without quorum a change fails with ENOTCONN, as in gluster
//!   since 3.11 (before the request reaches any copy, so nothing diverges).
//! - Open files have one descriptor per copy behind one handle of this layer. A copy that
//!   was down when the file was opened misses its writes and is accused for them.
//! - Writes of one file are grouped in a *data transaction* (gluster's eager lock and
//!   `post-op-delay-secs`): the first write carries the pre-op and the file's other writes
//!   wait for its answer; later writes carry none; a copy that fails a write is accused
//!   at once (before the write is answered); the post-op that lowers `dirty` is sent once,
//!   [`POST_OP_DELAY`] after the file's last write, or at once on fsync and close. A
//!   stream of writes thus costs one marker update per copy instead of two per write.
//!   `dirty` stays raised meanwhile, which heal never takes as an accusation.
//! - A data transaction holds the file's inode lock on every copy (gluster's eager lock),
//!   so the copies take the writes of two clients in the same order. A file created
//!   through this layer comes locked (the lock rides on the creation: no round trip);
//!   otherwise the transaction's first write takes it before the pre-op, on all copies at
//!   once without waiting, or, if any copy says busy, one copy after another in set order
//!   (so two clients never hold one copy each while waiting for the other's). The lock
//!   goes with the post-op. A brick tells the holder when another client waits: the
//!   transaction then takes no new writes and ends as soon as its writes in flight are
//!   answered. Truncations and `fallocate` are made inside the file's transaction too,
//!   holding its lock; heal holds it in a transaction of its own (`under_lock`).
//!
//! With one copy (distribute volumes) every request passes straight through.

mod tx;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::bounded::make_room;
use crate::client::conn::BrickConn;
use crate::client::heal::{self, Seen};
use crate::gfid::Gfid;
use crate::markers::{AfrDelta, AfrState, Kind};
use crate::proto::{Entry, Errno, Op, Reply};
use tx::{DataTxs, DelayedPostOps};

type Res<T> = Result<T, Errno>;

/// How long a directory's entries from its last entry post-op answer a `Stat` of it
/// (once); later, the copies are asked. The kernel asks for a directory's attributes
/// right after a name made or removed in it (its permission check needs them fresh).
const DIR_AFTER_TTL: Duration = Duration::from_secs(1);
/// Most directories remembered so.
const MAX_DIR_AFTER: usize = 1024;
/// After a failed attempt to reach a copy, changes do not try it again for this long
/// (each attempt to a dead brick costs a connect).
const RETRY_DOWN_AFTER: Duration = Duration::from_secs(1);
/// A file's data transaction ends (its post-op is sent) this long after its last write,
/// unless an fsync or close ends it sooner (gluster's `cluster.post-op-delay-secs`: 1).
pub const POST_OP_DELAY: Duration = Duration::from_secs(1);

/// `cluster.quorum-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumType {
    Auto,
    None,
}

impl QuorumType {
    pub fn parse(s: &str) -> Option<QuorumType> {
        match s {
            "auto" => Some(QuorumType::Auto),
            "none" => Some(QuorumType::None),
            _ => None,
        }
    }

    /// Whether changes are allowed with the copies `up` (indices in the set) of `n`.
    pub fn met(self, n: usize, up: &[usize]) -> bool {
        match self {
            QuorumType::None => !up.is_empty(),
            QuorumType::Auto => 2 * up.len() > n || (2 * up.len() == n && up.contains(&0) && n > 0),
        }
    }
}

/// Descriptors of one open file, one per copy (None: not open there).
type Fds = Vec<Option<u64>>;

pub struct Replica {
    /// This set itself, for the heals it starts in the background.
    me: std::sync::Weak<Replica>,
    bricks: Vec<Arc<BrickConn>>,
    /// Brick ids, in set order (markers name copies by id).
    ids: Vec<u32>,
    quorum: QuorumType,
    fds: Mutex<HashMap<u64, Fds>>,
    /// Copy to read an open file from, by handle.
    read_from: Mutex<HashMap<u64, usize>>,
    next_fd: AtomicU64,
    /// When a copy was last found unreachable.
    down_at: Mutex<Vec<Option<Instant>>>,
    /// Files being healed now (one heal per file at a time).
    healing: Arc<Mutex<HashSet<Gfid>>>,
    /// Open data transactions, by file.
    data_txs: DataTxs,
    /// Their post-ops waiting for [`POST_OP_DELAY`] to pass.
    delayed: Arc<DelayedPostOps>,
    /// The tasks that hear the bricks' lock notices run (started on first write).
    hearing: std::sync::atomic::AtomicBool,
    /// Directories' entries as the copies answered their last entry post-op, by
    /// directory (see `entry_post_ops`).
    dir_after: Mutex<HashMap<Gfid, DirAfter>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.delayed.stop.cancel();
    }
}

/// A directory's entry post-op sent to every copy, and the answers once they are in.
struct DirAfter {
    sent_at: Instant,
    answers: tokio::sync::watch::Receiver<Option<Arc<Answers>>>,
}

/// What a change touches: the objects whose markers record it.
struct Marked {
    gfid: Gfid,
    kinds: Vec<Kind>,
}

impl Replica {
    pub fn new(bricks: Vec<Arc<BrickConn>>, ids: Vec<u32>, quorum: QuorumType) -> Arc<Replica> {
        assert_eq!(bricks.len(), ids.len());
        assert!(!bricks.is_empty());
        let n = bricks.len();
        Arc::new_cyclic(|me| Replica {
            me: me.clone(),
            bricks,
            ids,
            quorum,
            fds: Mutex::new(HashMap::new()),
            read_from: Mutex::new(HashMap::new()),
            next_fd: AtomicU64::new(1),
            down_at: Mutex::new(vec![None; n]),
            healing: Arc::new(Mutex::new(HashSet::new())),
            data_txs: Arc::default(),
            delayed: Arc::default(),
            hearing: std::sync::atomic::AtomicBool::new(false),
            dir_after: Mutex::default(),
        })
    }

    pub fn n(&self) -> usize {
        self.bricks.len()
    }

    pub fn brick(&self, i: usize) -> &Arc<BrickConn> {
        &self.bricks[i]
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub async fn req(&self, op: Op) -> Res<Reply> {
        self.call(op, &[]).await.map(|(r, _)| r)
    }

    /// Sends a request to the set (see the module comment for where it goes).
    pub async fn call(&self, op: Op, data: &[u8]) -> Res<(Reply, Vec<u8>)> {
        if self.n() == 1 {
            return self.bricks[0].call(op, data).await;
        }
        match &op {
            Op::Stat { gfid, fd: None } => match self.dir_after_post_op(*gfid).await {
                Some(answers) => self.pick_entry(answers),
                None => self.lookup_like(op).await,
            },
            Op::Lookup { .. } => self.lookup_like(op).await,
            Op::Read { target, .. } => {
                let v = target.fd.ok_or(Errno(libc::EBADF))?;
                let i = self.read_copy(v)?;
                let op = self.for_copy(&op, i).ok_or(Errno(libc::EBADF))?;
                self.bricks[i].call(op, data).await
            }
            Op::Stat { fd: Some(v), .. } => {
                let i = self.read_copy(*v)?;
                let op = self.for_copy(&op, i).ok_or(Errno(libc::EBADF))?;
                self.bricks[i].call(op, data).await
            }
            Op::Statfs
            | Op::Readlink { .. }
            | Op::Readdir { .. }
            | Op::Getxattr { .. }
            | Op::Listxattr { .. }
            | Op::Path { .. }
            | Op::Checksum { .. }
            | Op::IndexList { .. }
            | Op::Ping
            | Op::Hello { .. } => self.first_answer(op, data).await,
            Op::Open { gfid, .. } => {
                let g = *gfid;
                self.open(op, g).await
            }
            Op::Close { fd } => {
                let v = *fd;
                self.close(v).await
            }
            Op::Fsync { target, .. } => {
                let g = target.gfid;
                let (synced, ()) = tokio::join!(self.everywhere_with_fd(op), self.settle(g));
                synced
            }
            Op::Write { target, .. } => {
                let g = target.gfid;
                self.write(op, data, g).await
            }
            Op::Fallocate { target, .. } => {
                let g = target.gfid;
                let m = vec![Marked {
                    gfid: g,
                    kinds: vec![Kind::Data],
                }];
                self.data_change(g, op, data, m).await
            }
            Op::Setattr { target, set, .. } if set.size.is_some() => {
                let g = target.gfid;
                let m = vec![Marked {
                    gfid: g,
                    kinds: vec![Kind::Data, Kind::Metadata],
                }];
                self.data_change(g, op, data, m).await
            }
            Op::Setattr { target, .. } => {
                let m = vec![Marked {
                    gfid: target.gfid,
                    kinds: vec![Kind::Metadata],
                }];
                self.change(op, data, m).await
            }
            Op::Setxattr { gfid, .. } | Op::Removexattr { gfid, .. } => {
                let m = vec![Marked {
                    gfid: *gfid,
                    kinds: vec![Kind::Metadata],
                }];
                self.change(op, data, m).await
            }
            Op::Mknod { parent, .. }
            | Op::Link { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. } => {
                let m = vec![Marked {
                    gfid: *parent,
                    kinds: vec![Kind::Entry],
                }];
                self.change(op, data, m).await
            }
            Op::Rename {
                parent, new_parent, ..
            } => {
                let mut m = vec![Marked {
                    gfid: *parent,
                    kinds: vec![Kind::Entry],
                }];
                if new_parent != parent {
                    m.push(Marked {
                        gfid: *new_parent,
                        kinds: vec![Kind::Entry],
                    });
                }
                self.change(op, data, m).await
            }
            // nuage's own attributes and marker operations: every copy, no markers.
            Op::SetMeta { .. }
            | Op::SetGfid { .. }
            | Op::Xattrop { .. }
            | Op::EntryPostOp { .. }
            | Op::Lock { .. }
            | Op::Unlock { .. } => self.change(op, data, Vec::new()).await,
            Op::Fence { gfid } => {
                let g = *gfid;
                self.fence(g).await
            }
            Op::Unfence { gfid } => {
                let (g, all): (Gfid, Vec<usize>) = (*gfid, (0..self.n()).collect());
                self.fan(&all, |_| Some(Op::Unfence { gfid: g }), &[]).await;
                Ok((Reply::Done, Vec::new()))
            }
        }
    }

    /// Fences a file on every copy that is up, all or none: if a copy refuses (the file
    /// is open there), the copies that granted it are unfenced and the refusal returned.
    async fn fence(&self, g: Gfid) -> Res<(Reply, Vec<u8>)> {
        let up = self.up().await;
        if up.is_empty() {
            return Err(Errno(libc::ENOTCONN));
        }
        let answers = self.fan(&up, |_| Some(Op::Fence { gfid: g }), &[]).await;
        let refusal = answers.iter().find_map(|(_, r)| r.as_ref().err().copied());
        let refusal = match refusal {
            None if answers.len() == up.len() => return Ok((Reply::Done, Vec::new())),
            None => Errno(libc::EIO),
            Some(e) => e,
        };
        let granted: Vec<usize> = answers
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| *i)
            .collect();
        self.fan(&granted, |_| Some(Op::Unfence { gfid: g }), &[])
            .await;
        Err(refusal)
    }

    /// The copies that are up (connected now, or reachable when tried), in set order.
    async fn up(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tries = Vec::new();
        for (i, b) in self.bricks.iter().enumerate() {
            if b.is_connected() {
                out.push(i);
                continue;
            }
            let recent = self.down_at.lock().expect("down_at")[i]
                .is_some_and(|t| now.duration_since(t) < RETRY_DOWN_AFTER);
            if !recent {
                tries.push(i);
            }
        }
        let pings: Vec<_> = tries
            .iter()
            .map(|i| {
                let b = self.bricks[*i].clone();
                let i = *i;
                tokio::spawn(async move { (i, b.req(Op::Ping).await.is_ok()) })
            })
            .collect();
        for p in pings {
            if let Ok((i, ok)) = p.await {
                if ok {
                    out.push(i);
                } else {
                    self.down_at.lock().expect("down_at")[i] = Some(Instant::now());
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The request as copy `i` takes it: handles of this layer become that copy's
    /// descriptors. None when the file is not open on that copy.
    fn for_copy(&self, op: &Op, i: usize) -> Option<Op> {
        let fds = self.fds.lock().expect("fds");
        let map = |v: u64| fds.get(&v).and_then(|f| f[i]);
        let mut op = op.clone();
        match &mut op {
            Op::Read { target, .. }
            | Op::Write { target, .. }
            | Op::Fsync { target, .. }
            | Op::Fallocate { target, .. }
            | Op::Setattr { target, .. } => {
                if let Some(v) = target.fd {
                    target.fd = Some(map(v)?);
                }
            }
            Op::Stat { fd: Some(v), .. } | Op::Close { fd: v } => *v = map(*v)?,
            _ => {}
        }
        Some(op)
    }

    fn read_copy(&self, v: u64) -> Res<usize> {
        self.read_from
            .lock()
            .expect("read_from")
            .get(&v)
            .copied()
            .ok_or(Errno(libc::EBADF))
    }

    /// Sends to the copies in order until one answers (a copy that is down is skipped).
    async fn first_answer(&self, op: Op, data: &[u8]) -> Res<(Reply, Vec<u8>)> {
        let mut last = Errno(libc::ENOTCONN);
        for b in &self.bricks {
            match b.call(op.clone(), data).await {
                Err(Errno(libc::ENOTCONN)) => last = Errno(libc::ENOTCONN),
                r => return r,
            }
        }
        Err(last)
    }

    /// Sends to every copy at once; the answers of copies that were reached, by index.
    async fn fan(&self, to: &[usize], op: impl Fn(usize) -> Option<Op>, data: &[u8]) -> Answers {
        let futs: Vec<_> = to
            .iter()
            .map(|i| {
                let b = &self.bricks[*i];
                let op = op(*i);
                let i = *i;
                async move {
                    match op {
                        Some(op) => (i, b.call(op, data).await),
                        None => (i, Err(Errno(libc::EBADF))),
                    }
                }
            })
            .collect();
        join_all(futs).await
    }

    /// Lookup and stat by id: every copy that is up is asked; the answer comes from a copy
    /// no other accuses.
    async fn lookup_like(&self, op: Op) -> Res<(Reply, Vec<u8>)> {
        let all: Vec<usize> = (0..self.n()).collect();
        let answers = self.fan(&all, |_| Some(op.clone()), &[]).await;
        self.pick_entry(answers)
    }

    /// The entry to answer from the copies' answers to a lookup or stat (see
    /// `lookup_like`).
    fn pick_entry(&self, answers: Answers) -> Res<(Reply, Vec<u8>)> {
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        let mut first_err = None;
        for (i, r) in answers {
            match r {
                Ok((Reply::Entry(e), _)) => entries.push((i, e)),
                Ok((r, _)) => return Err(crate::client::volume::unexpected_reply(r)),
                Err(e) => {
                    if first_err.is_none() || first_err == Some(Errno(libc::ENOTCONN)) {
                        first_err = Some(e);
                    }
                }
            }
        }
        if entries.is_empty() {
            return Err(first_err.unwrap_or(Errno(libc::ENOTCONN)));
        }
        let markers: Vec<(usize, &AfrState)> =
            entries.iter().map(|(i, e)| (*i, &e.meta.afr)).collect();
        let kinds: &[Kind] = if entries[0].1.attr.is_dir() {
            &[Kind::Metadata]
        } else {
            &[Kind::Data, Kind::Metadata]
        };
        let good = self.sources(&markers, kinds)?;
        self.heal_on_access(&entries, &good);
        let pick = entries
            .iter()
            .position(|(i, _)| good.contains(i))
            .expect("sources are among the answers");
        let (_, e) = entries.swap_remove(pick);
        Ok((Reply::Entry(e), Vec::new()))
    }

    /// The copies (among those answering with `markers`) that no other copy accuses of
    /// missing changes of `kinds`. Empty only in split-brain, which is EIO.
    pub fn sources(&self, markers: &[(usize, &AfrState)], kinds: &[Kind]) -> Res<Vec<usize>> {
        let good = self.unaccused(markers, kinds);
        if good.is_empty() {
            tracing::warn!("split-brain between copies {:?}", self.ids);
            return Err(Errno(libc::EIO));
        }
        Ok(good)
    }

    /// The copies no other copy accuses of missing changes of `kinds` (none: split-brain).
    pub fn unaccused(&self, markers: &[(usize, &AfrState)], kinds: &[Kind]) -> Vec<usize> {
        unaccused(&self.ids, markers, kinds)
    }

    /// Starts healing (in the background) the copies the sources accuse, if any.
    fn heal_on_access(&self, entries: &[(usize, Entry)], sources: &[usize]) {
        let seen: Vec<Seen> = entries
            .iter()
            .map(|(i, e)| Seen {
                index: *i,
                entry: e.clone(),
            })
            .collect();
        let sinks = heal::sinks(&self.ids, &seen, sources);
        let entry_sinks = if entries[0].1.attr.is_dir() {
            heal::entry_sinks(&self.ids, &seen)
        } else {
            Vec::new()
        };
        let Some(source) = sources.first().copied() else {
            return;
        };
        if sinks.is_empty() && entry_sinks.is_empty() {
            return;
        }
        let Some(g) = entries[0].1.meta.gfid else {
            return;
        };
        if !self.healing.lock().expect("healing").insert(g) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return; // the set is going away
        };
        let healing = self.healing.clone();
        tokio::spawn(async move {
            let (bricks, ids) = (&me.bricks, &me.ids);
            if !sinks.is_empty() {
                // Under the file's lock, alone: no write (of another client, or of this
                // one) lands on the sink while heal copies to it bytes read before.
                let healed =
                    me.under_lock(g, true, heal::heal(bricks, ids, g, &seen, source, &sinks));
                if let Err(e) = healed.await {
                    tracing::warn!("heal of {g} failed: {}", e.describe());
                }
            }
            for sink in entry_sinks {
                if let Err(e) = heal::heal_entries(bricks, ids, g, &seen, sink).await {
                    tracing::warn!("entry heal of {g} failed: {}", e.describe());
                }
            }
            healing.lock().expect("healing").remove(&g);
        });
    }

    async fn open(&self, op: Op, g: Gfid) -> Res<(Reply, Vec<u8>)> {
        let all: Vec<usize> = (0..self.n()).collect();
        let stat = Op::Stat { gfid: g, fd: None };
        let (opened, stats) = tokio::join!(
            self.fan(&all, |_| Some(op.clone()), &[]),
            self.fan(&all, |_| Some(stat.clone()), &[])
        );
        let mut fds: Fds = vec![None; self.n()];
        let mut first_err = None;
        for (i, r) in opened {
            match r {
                Ok((Reply::Opened { fd }, _)) => fds[i] = Some(fd),
                Ok((r, _)) => return Err(crate::client::volume::unexpected_reply(r)),
                Err(e) => {
                    if first_err.is_none() || first_err == Some(Errno(libc::ENOTCONN)) {
                        first_err = Some(e);
                    }
                }
            }
        }
        let entries: Vec<(usize, Entry)> = stats
            .into_iter()
            .filter_map(|(i, r)| match r {
                Ok((Reply::Entry(e), _)) if fds[i].is_some() => Some((i, e)),
                _ => None,
            })
            .collect();
        let markers: Vec<(usize, &AfrState)> =
            entries.iter().map(|(i, e)| (*i, &e.meta.afr)).collect();
        let good = if markers.is_empty() {
            Vec::new()
        } else {
            self.sources(&markers, &[Kind::Data])
                .inspect_err(|_| self.close_fds(&fds))?
        };
        self.heal_on_access(&entries, &good);
        let Some(read) = good.first().copied() else {
            self.close_fds(&fds);
            return Err(first_err.unwrap_or(Errno(libc::ENOTCONN)));
        };
        let v = self.next_fd.fetch_add(1, Ordering::Relaxed);
        self.fds.lock().expect("fds").insert(v, fds);
        self.read_from.lock().expect("read_from").insert(v, read);
        Ok((Reply::Opened { fd: v }, Vec::new()))
    }

    fn close_fds(&self, fds: &Fds) {
        for (i, fd) in fds.iter().enumerate() {
            if let Some(fd) = fd {
                let b = self.bricks[i].clone();
                let fd = *fd;
                tokio::spawn(async move { b.req(Op::Close { fd }).await });
            }
        }
    }

    async fn close(&self, v: u64) -> Res<(Reply, Vec<u8>)> {
        let fds = self.fds.lock().expect("fds").remove(&v);
        self.read_from.lock().expect("read_from").remove(&v);
        let fds = fds.ok_or(Errno(libc::EBADF))?;
        let to: Vec<usize> = (0..self.n()).filter(|i| fds[*i].is_some()).collect();
        let answers = self
            .fan(&to, |i| fds[i].map(|fd| Op::Close { fd }), &[])
            .await;
        for (_, r) in answers {
            match r {
                Ok(_) | Err(Errno(libc::ENOTCONN)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Reply::Done, Vec::new()))
    }

    /// Fsync: every copy holding the file open; the copies that are up must all succeed.
    async fn everywhere_with_fd(&self, op: Op) -> Res<(Reply, Vec<u8>)> {
        let up = self.up().await;
        if !self.quorum.met(self.n(), &up) {
            return Err(Errno(libc::ENOTCONN));
        }
        let answers = self.fan(&up, |i| self.for_copy(&op, i), &[]).await;
        let mut ok = None;
        for (_, r) in answers {
            match r {
                Ok(a) => ok = Some(a),
                Err(Errno(libc::EBADF)) | Err(Errno(libc::ENOTCONN)) => {}
                Err(e) => return Err(e),
            }
        }
        ok.ok_or(Errno(libc::ENOTCONN))
    }

    /// The post-op of an entry change (names made or removed in directories `post`, on
    /// the copies `done`). Each copy's marker update is written to its brick now, on the
    /// connection every later request of this client to that brick follows, and the
    /// brick answers it in order with the quick requests (`Stat`, `Lookup`, the next
    /// change: server.rs), so anything that reads the directory afterwards sees it after
    /// the post-op (whose extended-attribute write moves the directory's ctime) without
    /// the change's answer waiting for it: one round trip less per file created or
    /// removed. The answers carry the directory's entry after the post-op: the `Stat`
    /// that follows (the kernel's, for its permission check) is answered from them, one
    /// more round trip saved. A failure is logged (the copy keeps `dirty` raised, which
    /// heal looks at). Copies whose connection cannot take the update now get it as
    /// any other post-op, waited for.
    async fn entry_post_ops(&self, done: &[usize], post: &[(Gfid, AfrDelta)]) {
        let mut waited = Vec::new();
        for (dir, delta) in post {
            let mut sent = Vec::new();
            for i in done {
                let op = Op::EntryPostOp {
                    dir: *dir,
                    delta: delta.clone(),
                };
                match self.bricks[*i].send_now(op) {
                    Some(answer) => sent.push((*i, answer)),
                    None => waited.push((self.bricks[*i].clone(), *dir, delta.clone())),
                }
            }
            if sent.is_empty() {
                continue;
            }
            let every_copy = sent.len() == self.n();
            let (tx, rx) = tokio::sync::watch::channel(None);
            if every_copy {
                let mut after = self.dir_after.lock().expect("dir_after");
                make_room(&mut after, MAX_DIR_AFTER, |d| {
                    d.sent_at.elapsed() < DIR_AFTER_TTL
                });
                after.insert(
                    *dir,
                    DirAfter {
                        sent_at: Instant::now(),
                        answers: rx,
                    },
                );
            }
            tokio::spawn(async move {
                let mut answers: Answers = Vec::with_capacity(sent.len());
                for (i, answer) in sent {
                    let r = answer.await;
                    if let Err(e) = &r {
                        tracing::warn!("post-op failed: {}", e.describe());
                    }
                    answers.push((i, r.map(|reply| (reply, Vec::new()))));
                }
                let _ = tx.send(Some(Arc::new(answers)));
            });
        }
        for e in xattrops(waited).await {
            tracing::warn!("post-op failed: {}", e.describe());
        }
    }

    /// The answers of every copy to the last entry post-op of `dir`, if it was sent
    /// less than [`DIR_AFTER_TTL`] ago (each is used once), all answered with entries.
    async fn dir_after_post_op(&self, dir: Gfid) -> Option<Answers> {
        let mut rx = {
            let mut after = self.dir_after.lock().expect("dir_after");
            let d = after.remove(&dir)?;
            if d.sent_at.elapsed() >= DIR_AFTER_TTL {
                return None;
            }
            d.answers
        };
        let answers = rx.wait_for(|a| a.is_some()).await.ok()?.clone()?;
        let whole = answers.len() == self.n()
            && answers
                .iter()
                .all(|(_, r)| matches!(r, Ok((Reply::Entry(_), _))));
        whole.then(|| answers.iter().map(|(i, r)| (*i, r.clone())).collect())
    }

    /// A change: quorum, pre-op carried by the request, the request on every copy that is
    /// up, post-op (see the module comment).
    async fn change(&self, op: Op, data: &[u8], marked: Vec<Marked>) -> Res<(Reply, Vec<u8>)> {
        // Any change may make a directory's remembered entry stale (a chmod of it, a
        // name made in it meanwhile): a `Stat` asks the copies again.
        self.dir_after.lock().expect("dir_after").clear();
        let up = self.up().await;
        if !self.quorum.met(self.n(), &up) {
            tracing::warn!(
                "{}: no quorum ({} of {} copies up)",
                op.name(),
                up.len(),
                self.n()
            );
            return Err(Errno(libc::ENOTCONN));
        }
        let absent: Vec<u32> = (0..self.n())
            .filter(|i| !up.contains(i))
            .map(|i| self.ids[i])
            .collect();
        let pre: Vec<AfrDelta> = marked
            .iter()
            .map(|m| AfrDelta::pre_op(&m.kinds, &absent))
            .collect();
        let mut op = with_pre_op(op, &pre);
        // A regular file created open comes with its inode lock: its writes' transaction
        // needs no round trip to take it.
        let created_locked = match &mut op {
            Op::Mknod { obj, gfid, .. }
                if obj.open.is_some() && obj.mode & libc::S_IFMT == libc::S_IFREG =>
            {
                obj.lock = true;
                Some(*gfid)
            }
            _ => None,
        };
        let answers = self.fan(&up, |i| self.for_copy(&op, i), data).await;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let mut reply = None;
        let mut first_err: Option<Errno> = None;
        let mut created_fds: Fds = vec![None; self.n()];
        let mut refused = Vec::new();
        for (i, r) in answers {
            match r {
                Ok(a) => {
                    done.push(i);
                    if let Reply::Created { fd: Some(fd), .. } = &a.0 {
                        created_fds[i] = Some(*fd);
                    }
                    if reply.is_none() {
                        reply = Some(a);
                    }
                }
                Err(e) => {
                    failed.push(i);
                    if e != Errno(libc::ENOTCONN) && e != Errno(libc::EBADF) {
                        refused.push(i);
                    }
                    if first_err.is_none() || first_err == Some(Errno(libc::ENOTCONN)) {
                        first_err = Some(e);
                    }
                }
            }
        }
        if !marked.is_empty() && !refused.is_empty() {
            // A copy that refused the change (EEXIST, EACCES…) may have applied the pre-op
            // first: lower its `dirty` again (counters never go below zero). Its
            // accusations of absent copies stay: at worst a needless heal.
            let undo = refused
                .iter()
                .flat_map(|i| marked.iter().map(move |m| (*i, m)))
                .map(|(i, m)| {
                    let mut delta = AfrDelta::default();
                    for k in &m.kinds {
                        delta.dirty[*k as usize] = -1;
                    }
                    (self.bricks[i].clone(), m.gfid, delta)
                })
                .collect();
            for e in xattrops(undo).await {
                tracing::debug!("undoing a refused pre-op: {}", e.describe());
            }
        }
        if !marked.is_empty() && !done.is_empty() {
            // Post-op on the copies that made the change: the change is confirmed, and
            // the copies that failed it are accused.
            let missed: Vec<u32> = failed.iter().map(|i| self.ids[*i]).collect();
            let post: Vec<(Gfid, AfrDelta)> = marked
                .iter()
                .map(|m| {
                    let mut d = AfrDelta::pre_op(&m.kinds, &missed);
                    for k in &m.kinds {
                        d.dirty[*k as usize] = -1;
                    }
                    (m.gfid, d)
                })
                .collect();
            let post_ops = || {
                done.iter()
                    .flat_map(|i| {
                        post.iter()
                            .map(move |(g, d)| (self.bricks[*i].clone(), *g, d.clone()))
                    })
                    .collect()
            };
            if marked.iter().all(|m| m.kinds == [Kind::Entry]) {
                // Only directories' entry markers: the post-op is written before the
                // change is answered, not waited for (see `entry_post_ops`).
                self.entry_post_ops(&done, &post).await;
            } else {
                for e in xattrops(post_ops()).await {
                    // The copy keeps `dirty` raised: heal looks at it.
                    tracing::warn!("post-op failed: {}", e.describe());
                }
            }
            // The post-op wrote an extended attribute of the changed object, which moved
            // its ctime past the one in the reply: attributes answered now must be the
            // ones a later stat sees, or the kernel caches a ctime that then "changes"
            // by itself (pjdfstest's unchanged_ctime_failed after a chmod).
            match &mut reply {
                Some((Reply::Attr(a), _)) => {
                    let g = marked[0].gfid;
                    if let Ok(Reply::Entry(e)) = self.bricks[done[0]]
                        .req(Op::Stat { gfid: g, fd: None })
                        .await
                    {
                        *a = e.attr;
                    }
                }
                // Likewise the parent's: the caller asks again instead.
                Some((Reply::Created { parent, .. }, _))
                | Some((Reply::Unlinked { parent, .. }, _)) => *parent = None,
                _ => {}
            }
        }
        // A file created open: one handle of this layer for the copies' descriptors.
        if let Some((
            Reply::Created {
                fd: fd @ Some(_), ..
            },
            _,
        )) = &mut reply
        {
            if let Some(g) = created_locked {
                self.created_locked(g, &done, absent.clone());
            }
            let read = done[0];
            let v = self.next_fd.fetch_add(1, Ordering::Relaxed);
            self.fds.lock().expect("fds").insert(v, created_fds);
            self.read_from.lock().expect("read_from").insert(v, read);
            *fd = Some(v);
        }
        match reply {
            // A change that failed on every copy for the same reason (ENOENT, EEXIST…)
            // reports that reason.
            Some(r) if failed.is_empty() || !quorum_lost(self, &done) => Ok(r),
            Some(_) => Err(Errno(libc::ENOTCONN)),
            None => Err(first_err.unwrap_or(Errno(libc::ENOTCONN))),
        }
    }
}

type Answers = Vec<(usize, Res<(Reply, Vec<u8>)>)>;

/// Applies marker changes on copies, all at once; the errors of those that failed.
async fn xattrops(ops: Vec<(Arc<BrickConn>, Gfid, AfrDelta)>) -> Vec<Errno> {
    let sent: Vec<_> = ops
        .into_iter()
        .map(|(b, gfid, delta)| async move {
            b.req(Op::Xattrop {
                gfid,
                delta,
                unlock: None,
            })
            .await
        })
        .collect();
    join_all(sent)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Runs futures at once within the calling task (each request is written to its
/// brick's socket when first polled; no task, and no thread wakeup, per copy); their
/// outputs, in order. Nothing in the client cancels a change midway, so a change reaches
/// every copy it was sent to as a spawned task would.
pub(crate) async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter()
        .map(|o| o.expect("every future is ready"))
        .collect()
}

/// Whether the copies that made a change fall short of quorum (the change then fails).
fn quorum_lost(r: &Replica, done: &[usize]) -> bool {
    let mut d = done.to_vec();
    d.sort_unstable();
    !r.quorum.met(r.n(), &d)
}

/// The request with its pre-op deltas (one per marked object, in `Marked` order).
fn with_pre_op(mut op: Op, pre: &[AfrDelta]) -> Op {
    let first = pre.first().cloned();
    match &mut op {
        Op::Write { op: o, .. }
        | Op::Fallocate { op: o, .. }
        | Op::Setattr { op: o, .. }
        | Op::Setxattr { op: o, .. }
        | Op::Removexattr { op: o, .. }
        | Op::Mknod { parent_op: o, .. }
        | Op::Link { parent_op: o, .. }
        | Op::Unlink { parent_op: o, .. }
        | Op::Rmdir { parent_op: o, .. } => *o = first,
        Op::Rename {
            parent_op,
            new_parent_op,
            ..
        } => {
            *parent_op = first;
            *new_parent_op = pre.get(1).cloned();
        }
        _ => {}
    }
    op
}

/// Among the copies `(index in the set, markers)` of a set whose bricks are `ids`, those
/// no other copy accuses of missing changes of `kinds` (none: split-brain).
pub fn unaccused(ids: &[u32], markers: &[(usize, &AfrState)], kinds: &[Kind]) -> Vec<usize> {
    let accused = |j: usize| {
        markers
            .iter()
            .any(|(i, m)| *i != j && kinds.iter().any(|k| m.accuses(ids[j], *k)))
    };
    markers
        .iter()
        .map(|(i, _)| *i)
        .filter(|i| !accused(*i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_auto_needs_a_majority_or_half_with_the_first_copy() {
        let q = QuorumType::Auto;
        assert!(q.met(3, &[0, 1, 2]));
        assert!(q.met(3, &[1, 2]));
        assert!(!q.met(3, &[2]));
        assert!(q.met(2, &[0, 1]));
        assert!(q.met(2, &[0]));
        assert!(!q.met(2, &[1]));
        assert!(!q.met(2, &[]));
        assert!(q.met(4, &[0, 3]));
        assert!(!q.met(4, &[1, 3]));
        assert!(QuorumType::None.met(2, &[1]));
        assert!(!QuorumType::None.met(2, &[]));
    }
}
