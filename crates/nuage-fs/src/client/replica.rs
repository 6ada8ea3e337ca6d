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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::bounded::make_room;
use crate::client::conn::BrickConn;
use crate::client::heal::{self, Seen};
use crate::gfid::Gfid;
use crate::markers::{AfrDelta, AfrState, Kind};
use crate::proto::{Domain, Entry, Errno, Notify, Op, Reply};

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

/// The open data transaction of one file (see the module comment).
struct DataTx {
    /// Writes of this transaction being sent now.
    inflight: u32,
    /// Bumped by every write: a delayed post-op runs only if no write came since.
    generation: u64,
    /// Pre-ops (raises of `dirty`) sent to each copy, by index: the post-op lowers these.
    raised: Vec<i32>,
    /// Copies absent (accused by the pre-op) when the last pre-op was sent; a write seeing
    /// other copies up sends a new pre-op.
    absent: Vec<u32>,
    /// Resolved once the transaction's pre-op has been answered: later writes wait on it.
    gate: Arc<tokio::sync::OnceCell<()>>,
    /// Copies whose inode lock of the file this transaction holds, by index.
    locked: Vec<bool>,
    /// Held while the transaction takes locks: the brick's lock is one per connection,
    /// so two takers in this client must not give back each other's.
    locking: Arc<tokio::sync::Mutex<()>>,
    /// Another client waits for the lock: no new write joins; the transaction ends when
    /// its writes in flight are answered.
    contended: bool,
}

impl DataTx {
    fn new(n: usize, absent: Vec<u32>) -> DataTx {
        DataTx {
            inflight: 0,
            generation: 0,
            raised: vec![0; n],
            absent,
            gate: Arc::new(tokio::sync::OnceCell::new()),
            locked: vec![false; n],
            locking: Arc::default(),
            contended: false,
        }
    }
}

/// A transaction ended: what its post-op must lower and release.
struct Ended {
    g: Gfid,
    raised: Vec<i32>,
    locked: Vec<bool>,
    done: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct TxTable {
    open: HashMap<Gfid, DataTx>,
    /// Transactions ended whose post-op (and lock release) is on its way: a new
    /// transaction of the file waits for it, so that the release cannot take away the
    /// new one's lock (the brick's lock is one per connection, not counted).
    ending: HashMap<Gfid, tokio::sync::watch::Receiver<bool>>,
}

#[derive(Default)]
struct Txs {
    table: Mutex<TxTable>,
    /// Signalled when an ending transaction's post-op is done.
    released: tokio::sync::Notify,
}

type DataTxs = Arc<Txs>;

/// Data transactions whose post-op is due [`POST_OP_DELAY`] after their last write, in
/// the order they went idle (so by deadline). One task per replica set sends the post-ops
/// that come due, sleeping until the next deadline of a transaction still open: the
/// transactions ended sooner by a close or an fsync (every small file written and closed)
/// cost no timer and no wakeup each, as a sleeping task per transaction did.
#[derive(Default)]
struct DelayedPostOps {
    /// (deadline, file, generation of its transaction when it went idle).
    queue: Mutex<std::collections::VecDeque<(Instant, Gfid, u64)>>,
    /// Something was queued into an empty queue.
    queued: tokio::sync::Notify,
    /// The task runs (started on first use, inside the runtime).
    started: std::sync::atomic::AtomicBool,
    /// Ends the task with the replica set.
    stop: tokio_util::sync::CancellationToken,
}

impl DelayedPostOps {
    /// Queues the post-op of `g`'s transaction (at `generation`) for [`POST_OP_DELAY`]
    /// from now.
    fn push(self: &Arc<Self>, g: Gfid, generation: u64, txs: &DataTxs, bricks: &[Arc<BrickConn>]) {
        let was_empty = {
            let mut q = self.queue.lock().expect("delayed post-ops");
            q.push_back((Instant::now() + POST_OP_DELAY, g, generation));
            q.len() == 1
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().run(Arc::downgrade(txs), bricks.to_vec()));
        }
        if was_empty {
            self.queued.notify_one();
        }
    }

    async fn run(self: Arc<Self>, txs: std::sync::Weak<Txs>, bricks: Vec<Arc<BrickConn>>) {
        loop {
            let Some(txs) = txs.upgrade() else { return };
            let now = Instant::now();
            let (due, next) = {
                let mut q = self.queue.lock().expect("delayed post-ops");
                let table = txs.table.lock().expect("data_txs");
                let open = &table.open;
                let mut due = Vec::new();
                // Transactions ended since (closed, synced) or written to again (queued
                // anew then) are dropped; the due ones taken.
                while let Some((at, g, generation)) = q.front().copied() {
                    if open.get(&g).is_none_or(|tx| tx.generation != generation) {
                        q.pop_front();
                    } else if at <= now {
                        q.pop_front();
                        due.push((g, generation));
                    } else {
                        break;
                    }
                }
                (due, q.front().map(|(at, ..)| *at))
            };
            for (g, generation) in due {
                if let Some(ended) = end_tx(&txs, g, Some(generation)) {
                    let (bricks, txs) = (bricks.clone(), txs.clone());
                    tokio::spawn(async move { post_op(&bricks, &txs, ended).await });
                }
            }
            drop(txs);
            match next {
                Some(at) => tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at.into()) => {}
                },
                None => tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.queued.notified() => {}
                },
            }
        }
    }
}

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

    /// A write, as part of its file's data transaction (see the module comment).
    async fn write(&self, op: Op, data: &[u8], g: Gfid) -> Res<(Reply, Vec<u8>)> {
        let up = self.up().await;
        if !self.quorum.met(self.n(), &up) {
            tracing::warn!("write: no quorum ({} of {} copies up)", up.len(), self.n());
            return Err(Errno(libc::ENOTCONN));
        }
        let absent: Vec<u32> = (0..self.n())
            .filter(|i| !up.contains(i))
            .map(|i| self.ids[i])
            .collect();
        self.hear_notices();
        let gate = self.join_tx(g, &absent).await;
        // The first write of the transaction takes the lock where it is not held yet and
        // carries the pre-op; the others wait for its answer, so that no copy takes a
        // write before its `dirty` is raised.
        let mut first = None;
        let opened = gate
            .get_or_try_init(|| async {
                self.hold_lock(g, &up).await?;
                let pre = AfrDelta::pre_op(&[Kind::Data], &absent);
                let op = with_pre_op(op.clone(), std::slice::from_ref(&pre));
                let answers = self.fan(&up, |i| self.for_copy(&op, i), data).await;
                {
                    let mut t = self.data_txs.table.lock().expect("data_txs");
                    let tx = t
                        .open
                        .get_mut(&g)
                        .expect("a transaction with a write in flight");
                    for (i, r) in &answers {
                        if !matches!(r, Err(Errno(libc::ENOTCONN))) {
                            tx.raised[*i] += 1;
                        }
                    }
                }
                first = Some(answers);
                Ok::<(), Errno>(())
            })
            .await;
        if let Err(e) = opened {
            self.write_done(g);
            return Err(e);
        }
        let answers = match first {
            Some(a) => a,
            None => self.fan(&up, |i| self.for_copy(&op, i), data).await,
        };
        let r = self.write_answered(g, answers).await;
        self.write_done(g);
        r
    }

    /// The outcome of a write from its copies' answers; copies that failed it are accused
    /// by the ones that made it before the write is answered.
    async fn write_answered(&self, g: Gfid, answers: Answers) -> Res<(Reply, Vec<u8>)> {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let mut reply = None;
        let mut first_err: Option<Errno> = None;
        for (i, r) in answers {
            match r {
                Ok(a) => {
                    done.push(i);
                    reply.get_or_insert(a);
                }
                Err(e) => {
                    failed.push(i);
                    if first_err.is_none() || first_err == Some(Errno(libc::ENOTCONN)) {
                        first_err = Some(e);
                    }
                }
            }
        }
        if !done.is_empty() && !failed.is_empty() {
            let missed: Vec<u32> = failed.iter().map(|i| self.ids[*i]).collect();
            let delta = AfrDelta::pre_op(&[Kind::Data], &missed).without_dirty();
            let accusations = done
                .iter()
                .map(|i| (self.bricks[*i].clone(), g, delta.clone()))
                .collect();
            for e in xattrops(accusations).await {
                tracing::warn!(
                    "accusing copies that missed a write failed: {}",
                    e.describe()
                );
            }
        }
        match reply {
            Some(r) if failed.is_empty() || !quorum_lost(self, &done) => Ok(r),
            Some(_) => Err(Errno(libc::ENOTCONN)),
            None => Err(first_err.unwrap_or(Errno(libc::ENOTCONN))),
        }
    }

    /// The gate of the transaction of `g` this write joins (opened if none is), with the
    /// write counted in flight. Waits while the file's last transaction is ending, or while
    /// the open one is contended (it then ends when its writes are answered).
    async fn join_tx(&self, g: Gfid, absent: &[u32]) -> Arc<tokio::sync::OnceCell<()>> {
        self.enter_tx(g, absent, false).await
    }

    /// As [`Replica::join_tx`]; `alone`: a transaction of its own that nothing else of
    /// this client joins, opened once this client's open one (told to end) has ended.
    async fn enter_tx(
        &self,
        g: Gfid,
        absent: &[u32],
        alone: bool,
    ) -> Arc<tokio::sync::OnceCell<()>> {
        loop {
            let released = self.data_txs.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let ended = {
                let mut t = self.data_txs.table.lock().expect("data_txs");
                let n = self.n();
                let ending = t.ending.contains_key(&g);
                match t.open.get_mut(&g) {
                    _ if ending => None,
                    Some(tx) if alone || tx.contended => {
                        // Told to end: it does when its last write in flight is answered
                        // (write_done), or now if it has none.
                        tx.contended = true;
                        let idle = tx.inflight == 0;
                        drop(t);
                        idle.then(|| end_tx(&self.data_txs, g, None)).flatten()
                    }
                    Some(tx) => {
                        tx.inflight += 1;
                        tx.generation += 1;
                        if tx.absent != absent {
                            // Other copies up or down since the last pre-op: a new one
                            // accuses the copies absent now.
                            tx.absent = absent.to_vec();
                            tx.gate = Arc::new(tokio::sync::OnceCell::new());
                        }
                        return tx.gate.clone();
                    }
                    None => {
                        let mut tx = DataTx::new(n, absent.to_vec());
                        tx.inflight = 1;
                        tx.generation = 1;
                        // Alone: contended from the start, so no write joins it and it
                        // ends as soon as its work is done.
                        tx.contended = alone;
                        let gate = tx.gate.clone();
                        t.open.insert(g, tx);
                        return gate;
                    }
                }
            };
            if let Some(ended) = ended {
                post_op(&self.bricks, &self.data_txs, ended).await;
                continue;
            }
            released.await;
        }
    }

    /// Makes the open transaction of `g` (joined by the caller) hold the lock on the
    /// copies `up`.
    async fn hold_lock(&self, g: Gfid, up: &[usize]) -> Res<()> {
        let tx_locked = |t: &TxTable| -> Vec<bool> {
            t.open
                .get(&g)
                .expect("a transaction with a write in flight")
                .locked
                .clone()
        };
        let locking = {
            let t = self.data_txs.table.lock().expect("data_txs");
            t.open.get(&g).expect("joined").locking.clone()
        };
        let _taking = locking.lock().await;
        let locked = tx_locked(&self.data_txs.table.lock().expect("data_txs"));
        let want: Vec<usize> = up.iter().copied().filter(|i| !locked[*i]).collect();
        let got = self.lock_copies(g, &want).await?;
        let mut t = self.data_txs.table.lock().expect("data_txs");
        let tx = t
            .open
            .get_mut(&g)
            .expect("a transaction with a write in flight");
        for i in got {
            tx.locked[i] = true;
        }
        Ok(())
    }

    /// A truncation or `fallocate` of `g`: a change (module comment) made inside the
    /// file's data transaction, so that it holds the file's lock as writes do.
    async fn data_change(
        &self,
        g: Gfid,
        op: Op,
        data: &[u8],
        m: Vec<Marked>,
    ) -> Res<(Reply, Vec<u8>)> {
        if !self.quorum.met(self.n(), &self.up().await) {
            // `change` refuses it and says why.
            return self.change(op, data, m).await;
        }
        self.under_lock(g, false, self.change(op, data, m)).await
    }

    /// Runs `work` inside a data transaction of `g`, holding the file's lock on every
    /// copy that is up: other clients' writes wait for it. This client's writes join the
    /// same transaction, unless `alone` (heal): then it waits for this client's open
    /// transaction to end, and this client's writes wait for it.
    pub async fn under_lock<T>(
        &self,
        g: Gfid,
        alone: bool,
        work: impl std::future::Future<Output = Res<T>>,
    ) -> Res<T> {
        let up = self.up().await;
        let absent: Vec<u32> = (0..self.n())
            .filter(|i| !up.contains(i))
            .map(|i| self.ids[i])
            .collect();
        self.hear_notices();
        self.enter_tx(g, &absent, alone).await;
        let r = match self.hold_lock(g, &up).await {
            Ok(()) => work.await,
            Err(e) => Err(e),
        };
        self.write_done(g);
        r
    }

    /// Takes the inode lock of `g` on the copies `want` (set order) for this client: on
    /// all at once without waiting; if a copy says busy, the locks granted are given back
    /// and the copies locked one after another in set order, waiting (bounded by the
    /// brick's `MAX_LOCK_WAIT`). The copies locked: one that cannot be reached is left
    /// out (its writes fail too, and it is accused for them).
    async fn lock_copies(&self, g: Gfid, want: &[usize]) -> Res<Vec<usize>> {
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let lock = |wait| Op::Lock {
            gfid: g,
            domain: Domain::Inode,
            wait,
            notify: true,
        };
        let mut got = Vec::new();
        let mut busy = false;
        for (i, r) in self.fan(want, |_| Some(lock(false)), &[]).await {
            match r {
                Ok(_) => got.push(i),
                Err(Errno(libc::EAGAIN)) => busy = true,
                Err(_) => {}
            }
        }
        if !busy {
            return Ok(got);
        }
        self.unlock_copies(g, &got).await;
        got.clear();
        for &i in want {
            match self.bricks[i].call(lock(true), &[]).await {
                Ok(_) => got.push(i),
                Err(Errno(libc::ENOTCONN)) => {}
                Err(e) => {
                    tracing::warn!("cannot lock {g} on copy {}: {}", self.ids[i], e.describe());
                    self.unlock_copies(g, &got).await;
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    async fn unlock_copies(&self, g: Gfid, copies: &[usize]) {
        let unlock = |_| {
            Some(Op::Unlock {
                gfid: g,
                domain: Domain::Inode,
            })
        };
        self.fan(copies, unlock, &[]).await;
    }

    /// Starts, once, the tasks that hear the bricks' notices: a contended lock ends its
    /// transaction as soon as no write of it is in flight.
    fn hear_notices(&self) {
        if self.hearing.swap(true, Ordering::AcqRel) {
            return;
        }
        for b in &self.bricks {
            let Some(mut notices) = b.take_notices() else {
                continue;
            };
            // Weak: the task must not keep the set (and so its own sender) alive.
            let txs = Arc::downgrade(&self.data_txs);
            let bricks: Vec<_> = self.bricks.iter().map(Arc::downgrade).collect();
            tokio::spawn(async move {
                while let Some(Notify::Contended { gfid, domain }) = notices.recv().await {
                    if domain != Domain::Inode {
                        continue;
                    }
                    let Some(txs) = txs.upgrade() else { return };
                    let ended = {
                        let mut t = txs.table.lock().expect("data_txs");
                        let Some(tx) = t.open.get_mut(&gfid) else {
                            continue; // released already, or its release is on its way
                        };
                        tx.contended = true;
                        drop(t);
                        end_tx(&txs, gfid, None)
                    };
                    if let Some(ended) = ended {
                        let Some(bricks) = bricks
                            .iter()
                            .map(std::sync::Weak::upgrade)
                            .collect::<Option<Vec<_>>>()
                        else {
                            return;
                        };
                        tokio::spawn(async move { post_op(&bricks, &txs, ended).await });
                    }
                }
            });
        }
    }

    /// A write of `g` is answered: when it was the transaction's last one in flight, the
    /// post-op is sent after [`POST_OP_DELAY`] unless another write comes first, or at
    /// once when another client waits for the lock.
    fn write_done(&self, g: Gfid) {
        let (generation, contended) = {
            let mut t = self.data_txs.table.lock().expect("data_txs");
            let tx = t
                .open
                .get_mut(&g)
                .expect("a transaction with a write in flight");
            tx.inflight -= 1;
            if tx.inflight > 0 {
                return;
            }
            (tx.generation, tx.contended)
        };
        if contended {
            if let Some(ended) = end_tx(&self.data_txs, g, None) {
                let (bricks, txs) = (self.bricks.clone(), self.data_txs.clone());
                tokio::spawn(async move { post_op(&bricks, &txs, ended).await });
            }
            return;
        }
        self.delayed
            .push(g, generation, &self.data_txs, &self.bricks);
    }

    /// A file created open with its lock on the copies `locked`: its transaction starts
    /// now, holding them; it ends [`POST_OP_DELAY`] after creation if nothing is
    /// written, like any other.
    fn created_locked(&self, g: Gfid, locked: &[usize], absent: Vec<u32>) {
        let generation = {
            let mut t = self.data_txs.table.lock().expect("data_txs");
            debug_assert!(!t.open.contains_key(&g), "a new file has no transaction");
            let tx = t
                .open
                .entry(g)
                .or_insert_with(|| DataTx::new(self.n(), absent));
            for i in locked {
                tx.locked[*i] = true;
            }
            tx.generation
        };
        self.hear_notices();
        self.delayed
            .push(g, generation, &self.data_txs, &self.bricks);
    }

    /// Whether a data transaction of `g` is open (its post-op not yet sent).
    pub fn in_tx(&self, g: Gfid) -> bool {
        self.n() > 1 && {
            let t = self.data_txs.table.lock().expect("data_txs");
            t.open.contains_key(&g) || t.ending.contains_key(&g)
        }
    }

    /// Ends the data transaction of `g` now if no write of it is in flight (fsync, close):
    /// its post-op is sent and answered before this returns.
    pub async fn settle(&self, g: Gfid) {
        if self.n() == 1 {
            return;
        }
        if let Some(ended) = end_tx(&self.data_txs, g, None) {
            post_op(&self.bricks, &self.data_txs, ended).await;
        }
        // A transaction ended by its delay or a contention: its post-op is done first.
        let ending = self
            .data_txs
            .table
            .lock()
            .expect("data_txs")
            .ending
            .get(&g)
            .cloned();
        if let Some(mut done) = ending {
            let _ = done.wait_for(|d| *d).await;
        }
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

/// Ends the transaction of `g` when no write of it is in flight (and, with
/// `generation`, none came since): it moves to the ending ones until [`post_op`] is done.
fn end_tx(txs: &DataTxs, g: Gfid, generation: Option<u64>) -> Option<Ended> {
    let mut t = txs.table.lock().expect("data_txs");
    let tx = t.open.get(&g)?;
    if tx.inflight > 0 || generation.is_some_and(|n| n != tx.generation) {
        return None;
    }
    let tx = t.open.remove(&g).expect("present");
    assert!(
        !t.ending.contains_key(&g),
        "one transaction of a file at a time"
    );
    let (done, rx) = tokio::sync::watch::channel(false);
    t.ending.insert(g, rx);
    Some(Ended {
        g,
        raised: tx.raised,
        locked: tx.locked,
        done,
    })
}

/// Lowers `dirty` (data) on each copy by the raises of an ended transaction and releases
/// its locks (with the marker update where there is one). A copy that cannot be reached
/// keeps `dirty` raised, which heal does not take as an accusation; its lock went with
/// the connection.
async fn post_op(bricks: &[Arc<BrickConn>], txs: &DataTxs, ended: Ended) {
    let g = ended.g;
    let ops = ended.raised.iter().zip(&ended.locked).enumerate();
    let sent: Vec<_> = ops
        .filter(|(_, (n, locked))| **n > 0 || **locked)
        .map(|(i, (n, locked))| {
            let unlock = locked.then_some(Domain::Inode);
            let op = if *n > 0 {
                let mut delta = AfrDelta::default();
                delta.dirty[Kind::Data as usize] = -n;
                Op::Xattrop {
                    gfid: g,
                    delta,
                    unlock,
                }
            } else {
                Op::Unlock {
                    gfid: g,
                    domain: Domain::Inode,
                }
            };
            let b = bricks[i].clone();
            async move { b.req(op).await }
        })
        .collect();
    for r in join_all(sent).await {
        if let Err(e) = r {
            tracing::debug!("post-op of {g}: {}", e.describe());
        }
    }
    txs.table.lock().expect("data_txs").ending.remove(&g);
    let _ = ended.done.send(true);
    txs.released.notify_waiters();
}

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
