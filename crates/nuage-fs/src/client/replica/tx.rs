//! Data transactions of a replica set and the file locks they hold (see the module
//! comment of replica.rs): joining and ending them, the locks taken with the creation or
//! at the first write, given back with the post-op or when another client waits.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{
    Answers, Marked, POST_OP_DELAY, Replica, Res, join_all, quorum_lost, with_pre_op, xattrops,
};
use crate::client::conn::BrickConn;
use crate::gfid::Gfid;
use crate::markers::{AfrDelta, Kind};
use crate::proto::{Domain, Errno, Notify, Op, Reply};

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
pub(super) struct Txs {
    table: Mutex<TxTable>,
    /// Signalled when an ending transaction's post-op is done.
    released: tokio::sync::Notify,
}

pub(super) type DataTxs = Arc<Txs>;

/// Data transactions whose post-op is due [`POST_OP_DELAY`] after their last write, in
/// the order they went idle (so by deadline). One task per replica set sends the post-ops
/// that come due, sleeping until the next deadline of a transaction still open: the
/// transactions ended sooner by a close or an fsync (every small file written and closed)
/// cost no timer and no wakeup each, as a sleeping task per transaction did.
#[derive(Default)]
pub(super) struct DelayedPostOps {
    /// (deadline, file, generation of its transaction when it went idle).
    queue: Mutex<std::collections::VecDeque<(Instant, Gfid, u64)>>,
    /// Something was queued into an empty queue.
    queued: tokio::sync::Notify,
    /// The task runs (started on first use, inside the runtime).
    started: std::sync::atomic::AtomicBool,
    /// Ends the task with the replica set.
    pub(super) stop: tokio_util::sync::CancellationToken,
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

impl Replica {
    /// A write, as part of its file's data transaction (see the module comment).
    pub(super) async fn write(&self, op: Op, data: &[u8], g: Gfid) -> Res<(Reply, Vec<u8>)> {
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
        let locking = self.with_tx(g, |tx| tx.locking.clone());
        let _taking = locking.lock().await;
        // Read once taking: another taker of this client may have locked copies since.
        let want: Vec<usize> = self.with_tx(g, |tx| {
            up.iter().copied().filter(|i| !tx.locked[*i]).collect()
        });
        let got = self.lock_copies(g, &want).await?;
        self.with_tx(g, |tx| got.iter().for_each(|i| tx.locked[*i] = true));
        Ok(())
    }

    /// `f` on the open transaction of `g`, which the caller has joined.
    fn with_tx<T>(&self, g: Gfid, f: impl FnOnce(&mut DataTx) -> T) -> T {
        let mut t = self.data_txs.table.lock().expect("data_txs");
        f(t.open.get_mut(&g).expect("a transaction the caller joined"))
    }

    /// A truncation or `fallocate` of `g`: a change (module comment) made inside the
    /// file's data transaction, so that it holds the file's lock as writes do.
    pub(super) async fn data_change(
        &self,
        g: Gfid,
        op: Op,
        data: &[u8],
        m: Vec<Marked>,
    ) -> Res<(Reply, Vec<u8>)> {
        let up = self.up().await;
        if !self.quorum.met(self.n(), &up) {
            // `change` refuses it and says why.
            return self.change(op, data, m).await;
        }
        self.locked_with(g, &up, false, self.change(op, data, m))
            .await
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
        self.locked_with(g, &self.up().await, alone, work).await
    }

    /// [`Replica::under_lock`] with the copies found up.
    async fn locked_with<T>(
        &self,
        g: Gfid,
        up: &[usize],
        alone: bool,
        work: impl std::future::Future<Output = Res<T>>,
    ) -> Res<T> {
        let absent: Vec<u32> = (0..self.n())
            .filter(|i| !up.contains(i))
            .map(|i| self.ids[i])
            .collect();
        self.hear_notices();
        self.enter_tx(g, &absent, alone).await;
        let r = match self.hold_lock(g, up).await {
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
    pub(super) fn hear_notices(&self) {
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
    pub(super) fn created_locked(&self, g: Gfid, locked: &[usize], absent: Vec<u32>) {
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
}

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
