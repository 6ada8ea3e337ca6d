//! The management API's data: pool members, volume definitions, brick status. Shared by
//! the node service, its peers, and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A member of the trusted pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub uuid: String,
    /// How the pool reaches it (name or address, as probed).
    pub host: String,
}

/// A pool member as `peer status` and `pool list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub uuid: String,
    pub host: String,
    /// Whether its management API answered just now.
    pub connected: bool,
    /// This node itself.
    pub local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    Created,
    Started,
    Stopped,
}

impl VolumeState {
    pub fn name(self) -> &'static str {
        match self {
            VolumeState::Created => "Created",
            VolumeState::Started => "Started",
            VolumeState::Stopped => "Stopped",
        }
    }
}

/// One brick of a volume definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickDef {
    pub id: u32,
    /// The host as written in `volume create` (and as clients reach it).
    pub host: String,
    /// The uuid of the pool member that serves it.
    pub node: String,
    pub path: String,
}

/// A volume definition, kept on every pool member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDef {
    pub name: String,
    pub id: String,
    pub replica: u32,
    pub bricks: Vec<BrickDef>,
    pub state: VolumeState,
    /// Options set with `volume set` (reported by `volume info`).
    pub options: BTreeMap<String, String>,
    pub layout_epoch: u64,
    /// Bumped by every change, so a member can tell a newer definition from an older.
    pub version: u64,
    /// Bricks being removed (`remove-brick … start`), until commit or stop.
    #[serde(default)]
    pub removing: Vec<u32>,
    /// The id the next added brick gets (ids are never reused: markers name bricks by id).
    #[serde(default)]
    pub next_brick_id: u32,
}

impl VolumeDef {
    /// `Distribute`, `Replicate` or `Distributed-Replicate`, as gluster names them.
    pub fn kind(&self) -> &'static str {
        let subvols = self.bricks.len() / self.replica.max(1) as usize;
        match (self.replica, subvols) {
            (1, _) => "Distribute",
            (_, 1) => "Replicate",
            _ => "Distributed-Replicate",
        }
    }
}

/// `volume create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolume {
    pub name: String,
    pub replica: u32,
    /// `HOST:/path` each.
    pub bricks: Vec<String>,
    pub force: bool,
}

/// `peer probe` / `peer detach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRequest {
    pub host: String,
    #[serde(default)]
    pub force: bool,
}

/// The state of one brick, as `volume status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickStatus {
    pub id: u32,
    pub host: String,
    pub path: String,
    pub port: Option<u16>,
    pub online: bool,
    pub pid: Option<u32>,
}

/// A running brick server as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalBrick {
    pub volume: String,
    pub id: u32,
    pub port: u16,
    pub pid: u32,
}

/// A simple acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
}

impl VolumeDef {
    /// The subvolumes (replica sets) whose bricks are all being removed.
    pub fn draining(&self) -> Vec<u32> {
        let r = self.replica.max(1) as usize;
        self.bricks
            .chunks(r)
            .enumerate()
            .filter(|(_, set)| set.iter().all(|b| self.removing.contains(&b.id)))
            .map(|(k, _)| k as u32)
            .collect()
    }
}

/// `volume add-brick NAME [replica N] BRICK… [force]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddBrick {
    /// The new replica count (None: unchanged).
    pub replica: Option<u32>,
    pub bricks: Vec<String>,
    pub force: bool,
}

/// `volume remove-brick NAME [replica N] BRICK… start|status|stop|commit|force`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveBrick {
    pub replica: Option<u32>,
    pub bricks: Vec<String>,
    pub action: String,
}

/// `volume rebalance NAME fix-layout|start|stop [force]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceRequest {
    pub action: String,
}

/// What a member's rebalance process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebalanceKind {
    FixLayout,
    Rebalance,
    RemoveBrick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebalanceState {
    /// Writing the new directory layouts (the member that took the command).
    FixingLayout,
    InProgress,
    Completed,
    Failed,
    Stopped,
}

impl RebalanceState {
    /// As gluster's status table says it.
    pub fn name(self, kind: RebalanceKind) -> &'static str {
        match (self, kind) {
            (RebalanceState::FixingLayout, _) => "fix-layout in progress",
            (RebalanceState::InProgress, RebalanceKind::FixLayout) => "fix-layout in progress",
            (RebalanceState::InProgress, _) => "in progress",
            (RebalanceState::Completed, RebalanceKind::FixLayout) => "fix-layout completed",
            (RebalanceState::Completed, _) => "completed",
            (RebalanceState::Failed, _) => "failed",
            (RebalanceState::Stopped, _) => "stopped",
        }
    }
}

/// One member's row of `rebalance status` / `remove-brick status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRebalance {
    pub host: String,
    pub kind: RebalanceKind,
    pub state: RebalanceState,
    pub progress: crate::client::rebalance::Progress,
    pub run_secs: u64,
    /// The generation of the volume definition it worked from.
    pub generation: u64,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// Internal: a member starts its part of a rebalance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRebalance {
    pub name: String,
    pub kind: RebalanceKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_subvolumes_are_whole_sets_being_removed() {
        let v = VolumeDef {
            name: "v".into(),
            id: "id".into(),
            replica: 2,
            bricks: (0..6)
                .map(|id| BrickDef {
                    id,
                    host: "h".into(),
                    node: "n".into(),
                    path: format!("/b{id}"),
                })
                .collect(),
            state: VolumeState::Started,
            options: BTreeMap::new(),
            layout_epoch: 1,
            version: 1,
            removing: vec![2, 3, 4],
            next_brick_id: 6,
        };
        assert_eq!(v.draining(), vec![1]);
        assert_eq!(v.kind(), "Distributed-Replicate");
    }
}
