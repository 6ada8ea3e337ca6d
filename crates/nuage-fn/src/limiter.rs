//! Admission of connections: at most `--max-conns` at once per function on a machine, and
//! at most `--per-source` from one client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::stats::ErrorKind;

#[derive(Default)]
pub struct Limiter {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: u32,
    by_source: HashMap<IpAddr, u32>,
}

/// A connection admitted; dropping it frees its place.
pub struct Permit {
    limiter: Arc<Limiter>,
    source: Option<IpAddr>,
}

/// Why a connection was refused, as the one line the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Limiter {
    /// Admits a connection from `source` (none for requests without one, e.g. HTTP).
    pub fn admit(
        self: &Arc<Self>,
        source: Option<IpAddr>,
        max_conns: u32,
        per_source: u32,
    ) -> Result<Permit, Refusal> {
        let mut c = self.inner.lock().expect("limiter lock poisoned");
        if c.total >= max_conns {
            return Err(Refusal {
                kind: ErrorKind::MaxConns,
                message: format!("too many connections (max {max_conns})"),
            });
        }
        if let Some(ip) = source {
            let n = c.by_source.entry(ip).or_insert(0);
            if *n >= per_source {
                return Err(Refusal {
                    kind: ErrorKind::PerSource,
                    message: format!("too many connections from {ip} (max {per_source})"),
                });
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Permit {
            limiter: self.clone(),
            source,
        })
    }

    pub fn active(&self) -> u32 {
        self.inner.lock().expect("limiter lock poisoned").total
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("source", &self.source)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.limiter.inner.lock().expect("limiter lock poisoned");
        assert!(c.total > 0, "permit count underflow");
        c.total -= 1;
        if let Some(ip) = self.source {
            let n = c
                .by_source
                .get_mut(&ip)
                .expect("source of a permit is counted");
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_source() {
        let l = Arc::new(Limiter::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(Some(a), 3, 2).unwrap();
        let _p2 = l.admit(Some(a), 3, 2).unwrap();
        assert_eq!(
            l.admit(Some(a), 3, 2).unwrap_err().kind,
            ErrorKind::PerSource
        );
        let _p3 = l.admit(Some(b), 3, 2).unwrap();
        let e = l.admit(None, 3, 2).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MaxConns);
        assert_eq!(e.message, "too many connections (max 3)");
        drop(p1);
        assert_eq!(l.active(), 2);
        let _p4 = l.admit(Some(a), 3, 2).unwrap();
        assert_eq!(l.active(), 3);
    }
}
