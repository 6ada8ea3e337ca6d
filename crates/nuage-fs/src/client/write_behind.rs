//! Write-behind (gluster's `performance.write-behind`, on by default there too): a write
//! is acknowledged to the application once it is queued to its brick, so a stream of
//! writes keeps the network and the brick busy instead of waiting one round trip each.
//!
//! What stays true: writes to overlapping ranges reach the brick in the order they were
//! made (a write waits for earlier overlapping ones); at most [`WINDOW`] writes of a file
//! are in flight; anything that reads the file or its attributes, and `flush` (close),
//! `fsync`, truncation and release, first wait for the file's writes; a failed write is
//! reported by the next write, flush or fsync of the file (as with NFS and gluster), so
//! `fsync` returning success means every earlier write is on the brick and synced.
//! With flush-behind (volume.rs) `flush` does not wait: it reports only a failure
//! already known; descriptors opened while flush-behind is on send no flush at all
//! (fuse.rs `fopen_flags`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::client::here::start_here;
use crate::gfid::Gfid;
use crate::proto::Errno;

/// Most writes of one file in flight at once (each at most 1 MiB).
pub const WINDOW: u32 = 16;

#[derive(Default)]
struct State {
    /// (id, start, end) of the writes in flight.
    ranges: Vec<(u64, u64, u64)>,
    next_id: u64,
    /// The first failure not yet reported.
    error: Option<Errno>,
}

struct FileWb {
    slots: Arc<Semaphore>,
    state: Mutex<State>,
}

#[derive(Default)]
pub struct WriteBehind {
    files: Mutex<HashMap<Gfid, Arc<FileWb>>>,
}

impl WriteBehind {
    fn file(&self, g: Gfid) -> Arc<FileWb> {
        self.files
            .lock()
            .expect("write-behind")
            .entry(g)
            .or_insert_with(|| {
                Arc::new(FileWb {
                    slots: Arc::new(Semaphore::new(WINDOW as usize)),
                    state: Mutex::new(State::default()),
                })
            })
            .clone()
    }

    /// Whether writes of `g` are in flight or a failure waits to be reported.
    pub fn busy(&self, g: Gfid) -> bool {
        let f = self.files.lock().expect("write-behind").get(&g).cloned();
        f.is_some_and(|f| {
            let st = f.state.lock().expect("write-behind state");
            !st.ranges.is_empty() || st.error.is_some()
        })
    }

    /// Waits until no write of `g` is in flight; returns (and clears) a failure not yet
    /// reported.
    pub async fn drain(&self, g: Gfid) -> Result<(), Errno> {
        let Some(f) = self.files.lock().expect("write-behind").get(&g).cloned() else {
            return Ok(());
        };
        let all = f.slots.acquire_many(WINDOW).await.expect("never closed");
        drop(all);
        match f.state.lock().expect("write-behind state").error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Returns (and clears) a failure not yet reported, without waiting for the writes in
    /// flight (flush-behind).
    pub fn take_error(&self, g: Gfid) -> Result<(), Errno> {
        let Some(f) = self.files.lock().expect("write-behind").get(&g).cloned() else {
            return Ok(());
        };
        match f.state.lock().expect("write-behind state").error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Forgets a file whose last handle is closed (after `drain`).
    pub fn forget(&self, g: Gfid) {
        let mut files = self.files.lock().expect("write-behind");
        if let Some(f) = files.get(&g) {
            let st = f.state.lock().expect("write-behind state");
            if st.ranges.is_empty() && st.error.is_none() {
                drop(st);
                files.remove(&g);
            }
        }
    }

    /// Queues `write` of `len` bytes at `offset` of `g` and returns once it is queued.
    /// `write` resolves to the number of bytes the brick wrote.
    pub async fn submit<F>(&self, g: Gfid, offset: u64, len: u64, write: F) -> Result<(), Errno>
    where
        F: Future<Output = Result<u32, Errno>> + Send + 'static,
    {
        let f = self.file(g);
        let end = offset.saturating_add(len);
        let (permit, id) = loop {
            let permit = f.slots.clone().acquire_owned().await.expect("never closed");
            match Self::register(&f, offset, end)? {
                Some(id) => break (permit, id),
                None => {
                    // Overlaps a write in flight: let everything land first, keeping order.
                    drop(permit);
                    self.drain(g).await?;
                }
            }
        };
        Self::launch(f, permit, id, len, write);
        Ok(())
    }

    /// Like `submit` when that would not wait (a free slot, no overlapping write in
    /// flight): queues the write and returns `Ok(true)` at once, without a task switch.
    /// `Ok(false)`: nothing was queued; use `submit`. Must run inside the runtime.
    pub fn try_submit<F>(
        &self,
        g: Gfid,
        offset: u64,
        len: u64,
        write: impl FnOnce() -> F,
    ) -> Result<bool, Errno>
    where
        F: Future<Output = Result<u32, Errno>> + Send + 'static,
    {
        let f = self.file(g);
        let Ok(permit) = f.slots.clone().try_acquire_owned() else {
            return Ok(false);
        };
        let Some(id) = Self::register(&f, offset, offset.saturating_add(len))? else {
            return Ok(false);
        };
        Self::launch(f, permit, id, len, write());
        Ok(true)
    }

    /// Records a write of `[offset, end)` as in flight, unless it overlaps one (`None`);
    /// a failure not yet reported is reported instead (and cleared).
    fn register(f: &FileWb, offset: u64, end: u64) -> Result<Option<u64>, Errno> {
        let mut st = f.state.lock().expect("write-behind state");
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.ranges.iter().any(|(_, a, b)| offset < *b && *a < end) {
            return Ok(None);
        }
        st.next_id += 1;
        let id = st.next_id;
        st.ranges.push((id, offset, end));
        Ok(Some(id))
    }

    fn launch<F>(
        f: Arc<FileWb>,
        permit: tokio::sync::OwnedSemaphorePermit,
        id: u64,
        len: u64,
        write: F,
    ) where
        F: Future<Output = Result<u32, Errno>> + Send + 'static,
    {
        // The write goes to its brick from this thread, now (the FUSE thread for a write
        // queued at once): a spawned task would first wake a runtime thread to send it.
        start_here(&tokio::runtime::Handle::current(), async move {
            let r = write.await;
            let mut st = f.state.lock().expect("write-behind state");
            st.ranges.retain(|(i, _, _)| *i != id);
            let failed = match r {
                Ok(n) if u64::from(n) == len => None,
                Ok(_) => Some(Errno(libc::EIO)),
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                st.error.get_or_insert(e);
            }
            drop(st);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_writes_keep_their_order_and_errors_surface() {
        let wb = Arc::new(WriteBehind::default());
        let g = Gfid::random();
        let log = Arc::new(Mutex::new(Vec::new()));
        // A slow first write, then an overlapping one: the second must land after.
        let l = log.clone();
        wb.submit(g, 0, 10, async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            l.lock().unwrap().push(1);
            Ok(10)
        })
        .await
        .unwrap();
        let l = log.clone();
        wb.submit(g, 5, 10, async move {
            l.lock().unwrap().push(2);
            Ok(10)
        })
        .await
        .unwrap();
        // A disjoint write may go at once; it is in flight until its answer.
        let l = log.clone();
        wb.submit(g, 100, 10, async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            l.lock().unwrap().push(3);
            Ok(10)
        })
        .await
        .unwrap();
        assert!(wb.busy(g));
        wb.drain(g).await.unwrap();
        let order = log.lock().unwrap().clone();
        let pos = |x| order.iter().position(|v| *v == x).unwrap();
        assert!(pos(1) < pos(2), "{order:?}");
        // A failed write is reported once, by the next drain (flush/fsync).
        wb.submit(g, 0, 4, async { Err(Errno(libc::ENOSPC)) })
            .await
            .unwrap();
        assert_eq!(wb.drain(g).await, Err(Errno(libc::ENOSPC)));
        assert_eq!(wb.drain(g).await, Ok(()));
        // A short write is an error too.
        wb.submit(g, 0, 4, async { Ok(2) }).await.unwrap();
        assert_eq!(wb.drain(g).await, Err(Errno(libc::EIO)));
        wb.forget(g);
        assert!(!wb.busy(g));
    }

    #[tokio::test]
    async fn try_submit_queues_only_what_would_not_wait() {
        let wb = Arc::new(WriteBehind::default());
        let g = Gfid::random();
        let (release, held) = tokio::sync::watch::channel(false);
        let slow = |n: u32| {
            let mut held = held.clone();
            move || async move {
                let _ = held.wait_for(|go| *go).await;
                Ok(n)
            }
        };
        // A full window: WINDOW disjoint writes go at once, the next does not.
        for i in 0..u64::from(WINDOW) {
            assert_eq!(wb.try_submit(g, i * 10, 10, slow(10)), Ok(true));
        }
        assert_eq!(wb.try_submit(g, 1000, 10, slow(10)), Ok(false));
        release.send(true).unwrap();
        wb.drain(g).await.unwrap();
        // An overlapping write in flight: not queued (`submit` keeps the order).
        let (release, held) = tokio::sync::watch::channel(false);
        let slow = |n: u32| {
            let mut held = held.clone();
            move || async move {
                let _ = held.wait_for(|go| *go).await;
                Ok(n)
            }
        };
        assert_eq!(wb.try_submit(g, 0, 10, slow(10)), Ok(true));
        assert_eq!(wb.try_submit(g, 5, 10, slow(10)), Ok(false));
        release.send(true).unwrap();
        wb.drain(g).await.unwrap();
        // A failure not yet reported is reported by the next write, once.
        assert_eq!(
            wb.try_submit(g, 0, 4, || async { Err(Errno(libc::EIO)) }),
            Ok(true)
        );
        wb.drain(g).await.unwrap_err();
        assert_eq!(wb.try_submit(g, 0, 4, || async { Ok(4) }), Ok(true));
        wb.drain(g).await.unwrap();
    }

    #[tokio::test]
    async fn flush_behind_reports_only_known_failures_and_keeps_later_ones() {
        let wb = Arc::new(WriteBehind::default());
        let g = Gfid::random();
        let (release, mut held) = tokio::sync::watch::channel(false);
        wb.submit(g, 0, 4, async move {
            let _ = held.wait_for(|go| *go).await;
            Err(Errno(libc::ENOSPC))
        })
        .await
        .unwrap();
        // The write is in flight: flush-behind answers at once, with no failure known.
        assert_eq!(wb.take_error(g), Ok(()));
        assert!(wb.busy(g));
        release.send(true).unwrap();
        // The failure is kept for the next drain (fsync, release), reported once.
        assert_eq!(wb.drain(g).await, Err(Errno(libc::ENOSPC)));
        assert_eq!(wb.take_error(g), Ok(()));
    }
}
