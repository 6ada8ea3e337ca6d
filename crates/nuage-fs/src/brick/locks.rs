//! Inode locks on a brick: one holder per (file, domain), waiters served in arrival
//! order. Clients take them before changing replicated files, so every copy applies
//! changes in the same order; a lock dies with the connection that holds it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::gfid::Gfid;
use crate::proto::Domain;

/// Longest a blocking lock request waits before failing with ETIMEDOUT.
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(300);

/// A connection id, unique within the brick process.
pub type ConnId = u64;

struct Waiter {
    conn: ConnId,
    notify: bool,
    grant: oneshot::Sender<()>,
}

struct LockState {
    holder: ConnId,
    holder_notify: bool,
    /// Whether the holder was already told someone waits.
    told: bool,
    waiters: VecDeque<Waiter>,
}

/// What the caller must do after a lock call: tell a holder that someone waits.
#[derive(Debug, PartialEq, Eq)]
pub struct Contention {
    pub holder: ConnId,
    pub gfid: Gfid,
    pub domain: Domain,
}

#[derive(Default)]
pub struct LockTable {
    locks: Mutex<HashMap<(Gfid, Domain), LockState>>,
}

pub enum Acquire {
    Granted,
    /// Queued: the lock is ours when this fires.
    Wait(oneshot::Receiver<()>),
    /// Held by another connection and the caller would not wait (EAGAIN).
    Busy,
}

impl LockTable {
    /// Takes the lock, queues for it (`wait`), or reports it busy; and says whether the
    /// holder must be told that someone wants it.
    pub fn acquire(
        &self,
        gfid: Gfid,
        domain: Domain,
        conn: ConnId,
        wait: bool,
        notify: bool,
    ) -> (Acquire, Option<Contention>) {
        let mut locks = self.locks.lock().expect("lock table");
        let key = (gfid, domain);
        let Some(st) = locks.get_mut(&key) else {
            locks.insert(
                key,
                LockState {
                    holder: conn,
                    holder_notify: notify,
                    told: false,
                    waiters: VecDeque::new(),
                },
            );
            return (Acquire::Granted, None);
        };
        if st.holder == conn {
            // Idempotent for the holder (a retried request).
            st.holder_notify |= notify;
            return (Acquire::Granted, None);
        }
        let contention = (st.holder_notify && !st.told).then(|| {
            st.told = true;
            Contention {
                holder: st.holder,
                gfid,
                domain,
            }
        });
        if !wait {
            return (Acquire::Busy, contention);
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter {
            conn,
            notify,
            grant: tx,
        });
        (Acquire::Wait(rx), contention)
    }

    /// Releases a lock held by `conn` and passes it to the next live waiter. Returns a
    /// contention notice for the new holder if others still wait.
    pub fn release(&self, gfid: Gfid, domain: Domain, conn: ConnId) -> Option<Contention> {
        let mut locks = self.locks.lock().expect("lock table");
        let key = (gfid, domain);
        let st = locks.get_mut(&key)?;
        if st.holder != conn {
            // Not ours: drop a queued request of this connection, if any.
            st.waiters.retain(|w| w.conn != conn);
            return None;
        }
        Self::hand_over(&mut locks, key)
    }

    fn hand_over(
        locks: &mut HashMap<(Gfid, Domain), LockState>,
        key: (Gfid, Domain),
    ) -> Option<Contention> {
        let st = locks.get_mut(&key).expect("present");
        while let Some(w) = st.waiters.pop_front() {
            if w.grant.send(()).is_ok() {
                st.holder = w.conn;
                st.holder_notify = w.notify;
                st.told = false;
                if w.notify && !st.waiters.is_empty() {
                    st.told = true;
                    return Some(Contention {
                        holder: w.conn,
                        gfid: key.0,
                        domain: key.1,
                    });
                }
                return None;
            }
        }
        locks.remove(&key);
        None
    }

    /// Called when a waiter gave up (timeout): forget its request. If the lock was
    /// granted meanwhile, release it.
    pub fn abandon(&self, gfid: Gfid, domain: Domain, conn: ConnId) -> Option<Contention> {
        self.release(gfid, domain, conn)
    }

    /// Everything a closed connection held or waited for.
    pub fn release_all(&self, conn: ConnId) -> Vec<Contention> {
        let mut locks = self.locks.lock().expect("lock table");
        let keys: Vec<(Gfid, Domain)> = locks.keys().copied().collect();
        let mut notes = Vec::new();
        for key in keys {
            let st = locks.get_mut(&key).expect("present");
            st.waiters.retain(|w| w.conn != conn);
            if st.holder == conn {
                notes.extend(Self::hand_over(&mut locks, key));
            }
        }
        notes
    }

    pub fn holder(&self, gfid: Gfid, domain: Domain) -> Option<ConnId> {
        self.locks
            .lock()
            .expect("lock table")
            .get(&(gfid, domain))
            .map(|s| s.holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_served_in_order_and_holders_told() {
        let t = LockTable::default();
        let g = Gfid::random();
        assert!(matches!(
            t.acquire(g, Domain::Inode, 1, true, true),
            (Acquire::Granted, None)
        ));
        // A try-lock from another connection is refused but the holder is told once.
        match t.acquire(g, Domain::Inode, 2, false, true) {
            (Acquire::Busy, Some(c)) => assert_eq!(c.holder, 1),
            _ => panic!("expected a contention notice"),
        }
        assert!(matches!(
            t.acquire(g, Domain::Inode, 2, false, true),
            (Acquire::Busy, None)
        ));
        let (Acquire::Wait(mut rx2), None) = t.acquire(g, Domain::Inode, 2, true, false) else {
            panic!("expected to wait")
        };
        let (Acquire::Wait(mut rx3), None) = t.acquire(g, Domain::Inode, 3, true, true) else {
            panic!("expected to wait")
        };
        // Another domain is independent.
        assert!(matches!(
            t.acquire(g, Domain::Entry, 3, false, false),
            (Acquire::Granted, None)
        ));
        assert!(rx2.try_recv().is_err());
        assert_eq!(t.release(g, Domain::Inode, 1), None);
        assert!(rx2.try_recv().is_ok());
        assert_eq!(t.holder(g, Domain::Inode), Some(2));
        // Connection 2 dies: 3 gets it.
        t.release_all(2);
        assert!(rx3.try_recv().is_ok());
        assert_eq!(t.holder(g, Domain::Inode), Some(3));
        t.release(g, Domain::Inode, 3);
        assert_eq!(t.holder(g, Domain::Inode), None);
    }

    #[test]
    fn gone_waiters_are_skipped() {
        let t = LockTable::default();
        let g = Gfid::random();
        t.acquire(g, Domain::Inode, 1, true, false);
        let (Acquire::Wait(rx), _) = t.acquire(g, Domain::Inode, 2, true, false) else {
            panic!()
        };
        drop(rx);
        let (Acquire::Wait(mut rx3), _) = t.acquire(g, Domain::Inode, 3, true, false) else {
            panic!()
        };
        t.release(g, Domain::Inode, 1);
        assert!(rx3.try_recv().is_ok());
        assert_eq!(t.holder(g, Domain::Inode), Some(3));
    }
}
