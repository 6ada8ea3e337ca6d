//! Fences: what makes the end of a rebalance move atomic against the file's users.
//!
//! A rebalance copies a file to its new subvolume, then switches the name over and
//! removes the old copy. Anyone who opened or changed the old copy between the last check
//! and the removal would lose their writes. So the mover *fences* the old copy first: the
//! brick grants the fence only if no connection holds the file open, and from then on
//! every other connection's open or change of that file waits (at most
//! [`MAX_FENCE_WAIT`]) until the mover lifts the fence — by then the old copy is gone, the
//! waiting request fails with ENOENT/ESTALE, and the client finds the file at its new
//! place. Reads of attributes are not held (they change nothing). A fence dies with the
//! connection that holds it, as locks do.
//!
//! The brick counts the opens of each file here, under the same mutex as the fences, so
//! that "not open" and "fenced" are decided atomically.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::brick::locks::ConnId;
use crate::gfid::Gfid;
use crate::proto::Errno;

/// Longest a request waits for another connection's fence on its file before failing
/// with ETIMEDOUT. A move holds its fence for a few brick round trips; this bound only
/// matters if the mover stalls (if it dies, its connection closes and the fence goes).
pub const MAX_FENCE_WAIT: Duration = Duration::from_secs(30);

struct Fence {
    owner: ConnId,
    /// Dropped when the fence is lifted: every waiter's receiver then wakes.
    _lifted: watch::Sender<()>,
    waiters: watch::Receiver<()>,
}

#[derive(Default)]
struct State {
    /// Open descriptors of each file on this brick (files with none are absent).
    open: HashMap<Gfid, u32>,
    fenced: HashMap<Gfid, Fence>,
}

#[derive(Default)]
pub struct Fences {
    state: Mutex<State>,
    /// How many fences exist: lets every request skip the table when there are none.
    active: AtomicUsize,
}

/// One open descriptor of a file, counted while this lives (kept beside the descriptor).
pub struct OpenMark {
    fences: Arc<Fences>,
    gfid: Gfid,
}

impl Drop for OpenMark {
    fn drop(&mut self) {
        let mut st = self.fences.state.lock().expect("fences");
        let n = st
            .open
            .get_mut(&self.gfid)
            .expect("an open mark is counted");
        assert!(*n > 0);
        *n -= 1;
        if *n == 0 {
            st.open.remove(&self.gfid);
        }
    }
}

impl Fences {
    /// Whether any file is fenced now (a lock-free check for the common case: none).
    pub fn any(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Fences `gfid` for `conn`: EBUSY if the file is open on this brick or fenced by
    /// another connection. Taking a fence one already holds succeeds.
    pub fn fence(&self, gfid: Gfid, conn: ConnId) -> Result<(), Errno> {
        let mut st = self.state.lock().expect("fences");
        if let Some(f) = st.fenced.get(&gfid) {
            return if f.owner == conn {
                Ok(())
            } else {
                Err(Errno(libc::EBUSY))
            };
        }
        if st.open.contains_key(&gfid) {
            return Err(Errno(libc::EBUSY));
        }
        let (tx, rx) = watch::channel(());
        st.fenced.insert(
            gfid,
            Fence {
                owner: conn,
                _lifted: tx,
                waiters: rx,
            },
        );
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Lifts `conn`'s fence on `gfid` (nothing if it holds none).
    pub fn unfence(&self, gfid: Gfid, conn: ConnId) {
        let mut st = self.state.lock().expect("fences");
        if st.fenced.get(&gfid).is_some_and(|f| f.owner == conn) {
            st.fenced.remove(&gfid);
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Lifts every fence of a connection that ended.
    pub fn release_all(&self, conn: ConnId) {
        let mut st = self.state.lock().expect("fences");
        let before = st.fenced.len();
        st.fenced.retain(|_, f| f.owner != conn);
        self.active
            .fetch_sub(before - st.fenced.len(), Ordering::AcqRel);
    }

    /// Waits until no other connection fences `gfid` (ETIMEDOUT after [`MAX_FENCE_WAIT`]).
    pub async fn admit(&self, gfid: Gfid, conn: ConnId) -> Result<(), Errno> {
        self.wait_then(gfid, conn, MAX_FENCE_WAIT, |_| ()).await
    }

    /// Admits an open of `gfid` and counts it, atomically with the fence check.
    pub async fn open(self: &Arc<Self>, gfid: Gfid, conn: ConnId) -> Result<OpenMark, Errno> {
        self.wait_then(gfid, conn, MAX_FENCE_WAIT, |st| Self::count(st, gfid))
            .await?;
        Ok(OpenMark {
            fences: self.clone(),
            gfid,
        })
    }

    /// Counts an open of a file this connection has just created (nobody else can have
    /// fenced what did not exist; no wait).
    pub fn created(self: &Arc<Self>, gfid: Gfid) -> OpenMark {
        Self::count(&mut self.state.lock().expect("fences"), gfid);
        OpenMark {
            fences: self.clone(),
            gfid,
        }
    }

    fn count(st: &mut State, gfid: Gfid) {
        *st.open.entry(gfid).or_insert(0) += 1;
    }

    /// Runs `then` under the table's mutex once `gfid` is not fenced by another connection
    /// (ETIMEDOUT after `limit`).
    async fn wait_then(
        &self,
        gfid: Gfid,
        conn: ConnId,
        limit: Duration,
        then: impl FnOnce(&mut State),
    ) -> Result<(), Errno> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut then = Some(then);
        loop {
            let mut waiters = {
                let mut st = self.state.lock().expect("fences");
                match st.fenced.get(&gfid) {
                    Some(f) if f.owner != conn => f.waiters.clone(),
                    _ => {
                        (then.take().expect("runs once"))(&mut st);
                        return Ok(());
                    }
                }
            };
            // Wakes when the fence's sender is dropped (lifted or its connection ended).
            if tokio::time::timeout_at(deadline, waiters.changed())
                .await
                .is_err()
            {
                return Err(Errno(libc::ETIMEDOUT));
            }
        }
    }

    #[cfg(test)]
    fn open_count(&self, gfid: Gfid) -> u32 {
        self.state
            .lock()
            .expect("fences")
            .open
            .get(&gfid)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_open_file_cannot_be_fenced_and_a_fenced_file_cannot_be_opened() {
        let f = Arc::new(Fences::default());
        let g = Gfid::random();
        let mark = f.open(g, 1).await.unwrap();
        assert_eq!(f.open_count(g), 1);
        assert_eq!(f.fence(g, 2), Err(Errno(libc::EBUSY)));
        assert!(!f.any());
        drop(mark);
        assert_eq!(f.open_count(g), 0);
        f.fence(g, 2).unwrap();
        f.fence(g, 2).unwrap(); // again, by its holder
        assert_eq!(f.fence(g, 3), Err(Errno(libc::EBUSY)));
        assert!(f.any());

        // Another connection's open waits for the fence to go; the holder's does not.
        let waiting = tokio::spawn({
            let f = f.clone();
            async move { f.open(g, 1).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "an open went through a fence");
        assert_eq!(f.open_count(g), 0);
        drop(f.open(g, 2).await.unwrap());
        f.unfence(g, 3); // not the holder: nothing happens
        assert!(f.any());
        f.unfence(g, 2);
        assert!(!f.any());
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_fence_dies_with_its_connection_and_waits_are_bounded() {
        let f = Arc::new(Fences::default());
        let (g, h) = (Gfid::random(), Gfid::random());
        f.fence(g, 7).unwrap();
        f.fence(h, 7).unwrap();
        let waiting = tokio::spawn({
            let f = f.clone();
            async move { f.admit(h, 8).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        f.release_all(7);
        assert!(!f.any());
        waiting.await.unwrap().unwrap();
        f.admit(g, 8).await.unwrap();

        f.fence(g, 9).unwrap();
        let limit = Duration::from_millis(100);
        let t0 = tokio::time::Instant::now();
        let r = f.wait_then(g, 8, limit, |_| ()).await;
        assert_eq!(r, Err(Errno(libc::ETIMEDOUT)));
        assert!(t0.elapsed() >= limit);
    }

    #[tokio::test]
    async fn a_created_file_is_counted_open() {
        let f = Arc::new(Fences::default());
        let g = Gfid::random();
        let mark = f.created(g);
        assert_eq!(f.fence(g, 1), Err(Errno(libc::EBUSY)));
        drop(mark);
        f.fence(g, 1).unwrap();
    }
}
