//! What a client needs to know about a volume: its bricks, where their servers listen,
//! how they group into subvolumes (replica sets), and the layout epoch.

use serde::{Deserialize, Serialize};

/// One brick of a volume, as the client reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickSpec {
    /// Unique within the volume; never reused (markers name bricks by id).
    pub id: u32,
    /// The pool member that holds it, as named in the pool.
    pub host: String,
    /// The brick directory on that host.
    pub path: String,
    /// `ip:port` of the brick's server (set once the volume is started).
    pub addr: String,
}

/// A volume as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    /// Random id, written on every brick so a brick cannot be mixed up between volumes.
    pub volume_id: String,
    /// Copies of each file (1: distribute only).
    pub replica: u32,
    /// In subvolume order: bricks `[k*replica, (k+1)*replica)` form subvolume k.
    pub bricks: Vec<BrickSpec>,
    /// Raised by every change of the set of subvolumes (add-brick, remove-brick).
    pub layout_epoch: u64,
    /// `network.ping-timeout` of the volume, seconds (None: the default, 42).
    #[serde(default)]
    pub ping_timeout: Option<u64>,
    /// `cluster.quorum-type` of the volume (None: the default, `auto`).
    #[serde(default)]
    pub quorum_type: Option<String>,
    /// `performance.flush-behind` of the volume (None: the default, off).
    #[serde(default)]
    pub flush_behind: Option<bool>,
    /// The definition's version: raised by every change of the volume, so a mount that
    /// polls the spec knows when to switch ([`crate::client::mount`]).
    #[serde(default)]
    pub generation: u64,
    /// Subvolumes being removed (`remove-brick … start`): their files are still found
    /// there, but new layouts give them no hash range.
    #[serde(default)]
    pub draining: Vec<u32>,
}

impl VolumeSpec {
    /// Number of subvolumes files are distributed over.
    pub fn subvolume_count(&self) -> usize {
        self.bricks.len() / self.replica.max(1) as usize
    }

    /// The bricks of subvolume `k`.
    pub fn subvolume(&self, k: usize) -> &[BrickSpec] {
        let r = self.replica.max(1) as usize;
        &self.bricks[k * r..(k + 1) * r]
    }

    /// A connection (not yet connected: each connects on first use) to every brick of
    /// subvolume `k`, in set order; each keeps its lock notices for its replica set.
    pub fn connect_subvolume(
        &self,
        k: usize,
        client: &str,
        ping_timeout: std::time::Duration,
    ) -> Vec<std::sync::Arc<crate::client::conn::BrickConn>> {
        self.subvolume(k)
            .iter()
            .map(|b| {
                let (conn, notices) = crate::client::conn::BrickConn::new(
                    crate::client::conn::BrickAddr {
                        addr: b.addr.clone(),
                        volume_id: self.volume_id.clone(),
                        brick_id: b.id,
                    },
                    client.to_owned(),
                    ping_timeout,
                );
                conn.keep_notices(notices);
                conn
            })
            .collect()
    }

    /// Checks the invariants a client relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.bricks.is_empty() {
            return Err(format!("volume {} has no bricks", self.name));
        }
        if self.replica == 0 || self.bricks.len() % self.replica as usize != 0 {
            return Err(format!(
                "volume {}: {} bricks is not a multiple of replica {}",
                self.name,
                self.bricks.len(),
                self.replica
            ));
        }
        let n = self.subvolume_count() as u32;
        if self.draining.iter().any(|k| *k >= n) || self.draining.len() as u32 >= n {
            return Err(format!(
                "volume {}: subvolumes being removed {:?} out of {n}",
                self.name, self.draining
            ));
        }
        let mut ids: Vec<u32> = self.bricks.iter().map(|b| b.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.bricks.len() {
            return Err(format!("volume {}: duplicate brick ids", self.name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32, replica: u32) -> VolumeSpec {
        VolumeSpec {
            name: "v".into(),
            volume_id: "id".into(),
            replica,
            bricks: (0..n)
                .map(|i| BrickSpec {
                    id: i,
                    host: format!("h{i}"),
                    path: "/b".into(),
                    addr: String::new(),
                })
                .collect(),
            layout_epoch: 1,
            ping_timeout: None,
            quorum_type: None,
            flush_behind: None,
            generation: 1,
            draining: Vec::new(),
        }
    }

    #[test]
    fn subvolumes_group_bricks_by_replica() {
        let s = spec(6, 2);
        assert!(s.validate().is_ok());
        assert_eq!(s.subvolume_count(), 3);
        assert_eq!(
            s.subvolume(1).iter().map(|b| b.id).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(spec(5, 2).validate().is_err());
        assert!(spec(0, 1).validate().is_err());
        let mut dup = spec(2, 1);
        dup.bricks[1].id = 0;
        assert!(dup.validate().is_err());
        let mut all_draining = spec(2, 1);
        all_draining.draining = vec![0, 1];
        assert!(all_draining.validate().is_err());
        all_draining.draining = vec![1];
        assert!(all_draining.validate().is_ok());
        all_draining.draining = vec![2];
        assert!(all_draining.validate().is_err());
    }
}
