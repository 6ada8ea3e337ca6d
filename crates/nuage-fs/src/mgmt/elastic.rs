//! Growing and shrinking volumes: `add-brick`, `remove-brick`, `rebalance`.
//!
//! A change of the set of bricks is a new volume definition (a new version, and a new
//! layout epoch when the set of subvolumes changes), published to every member like any
//! other change; mounts pick it up by polling (client/mount.rs). Files move in the
//! *rebalance processes* of the members (client/rebalance.rs): the member that takes the
//! command writes the new directory layouts (fix-layout), raises the definition's
//! version so mounts drop the layouts they cached, waits [`LAYOUT_SETTLE`], then asks
//! every member to move the files of the subvolumes whose first brick it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nuage_core::api::ApiError;
use tokio_util::sync::CancellationToken;

use super::types::*;
use super::{Mgmt, api, bad, parse_brick};
use crate::client::mount::SPEC_POLL_INTERVAL;
use crate::client::rebalance::{Counters, Crawler};
use crate::client::spec::VolumeSpec;

/// How long `rebalance start` and `remove-brick start` wait between publishing the new
/// layouts and moving files: long enough for every mount (polling every
/// `SPEC_POLL_INTERVAL`) to have dropped the layouts it had cached.
pub const LAYOUT_SETTLE: Duration = Duration::from_secs(2 * SPEC_POLL_INTERVAL.as_secs() + 1);

/// A member's rebalance process for one volume.
pub struct LocalRebalance {
    kind: RebalanceKind,
    generation: u64,
    state: std::sync::Mutex<(RebalanceState, Option<String>)>,
    counters: Counters,
    started: Instant,
    ended: std::sync::Mutex<Option<Instant>>,
    stop: CancellationToken,
}

impl LocalRebalance {
    fn new(
        kind: RebalanceKind,
        state: RebalanceState,
        generation: u64,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(LocalRebalance {
            kind,
            generation,
            state: std::sync::Mutex::new((state, None)),
            counters: Counters::default(),
            started: Instant::now(),
            ended: std::sync::Mutex::new(None),
            stop,
        })
    }

    fn running(&self) -> bool {
        matches!(
            self.state.lock().expect("state").0,
            RebalanceState::FixingLayout | RebalanceState::InProgress
        )
    }

    fn set(&self, state: RebalanceState, error: Option<String>) {
        *self.state.lock().expect("state") = (state, error);
    }

    fn finish(&self, r: anyhow::Result<()>) {
        let state = match &r {
            Ok(()) => RebalanceState::Completed,
            Err(_) if self.stop.is_cancelled() => RebalanceState::Stopped,
            Err(_) => RebalanceState::Failed,
        };
        self.set(state, r.err().map(|e| format!("{e:#}")));
        *self.ended.lock().expect("ended") = Some(Instant::now());
    }

    fn row(&self, host: &str) -> NodeRebalance {
        let (state, error) = self.state.lock().expect("state").clone();
        let end = self
            .ended
            .lock()
            .expect("ended")
            .unwrap_or_else(Instant::now);
        NodeRebalance {
            host: host.to_owned(),
            kind: self.kind,
            state,
            progress: self.counters.snapshot(),
            run_secs: end.duration_since(self.started).as_secs(),
            generation: self.generation,
            error,
        }
    }
}

fn fail(verb: &str, name: &str, msg: impl std::fmt::Display) -> ApiError {
    bad(format!("volume {verb}: {name}: failed: {msg}"))
}

impl Mgmt {
    /// Parses `HOST:/path` arguments into new bricks (ids from `first_id`): each host a
    /// pool member, no brick given twice or already part of any volume.
    pub(super) fn new_bricks(
        &self,
        args: &[String],
        first_id: u32,
    ) -> Result<Vec<BrickDef>, String> {
        let mut bricks: Vec<BrickDef> = Vec::new();
        for (i, b) in args.iter().enumerate() {
            let (host, path) = parse_brick(b)?;
            let member = self.member_for(&host).ok_or_else(|| {
                format!(
                    "Host {host} is not in 'Peer in Cluster' state (run `nuage peer probe {host}` first)"
                )
            })?;
            if bricks
                .iter()
                .any(|x| x.node == member.uuid && x.path == path)
            {
                return Err(format!("brick {b} is given twice"));
            }
            bricks.push(BrickDef {
                id: first_id + i as u32,
                host,
                node: member.uuid,
                path,
            });
        }
        let in_use: Vec<(String, String)> = self
            .volumes()
            .iter()
            .flat_map(|v| v.bricks.iter().map(|b| (b.node.clone(), b.path.clone())))
            .collect();
        for b in &bricks {
            if in_use.contains(&(b.node.clone(), b.path.clone())) {
                return Err(format!("{}:{} is already part of a volume", b.host, b.path));
            }
        }
        Ok(bricks)
    }

    /// Each brick checked by its own member (exists, empty, not on the root file system,
    /// unless `force`), before anything is changed anywhere.
    pub(super) async fn check_bricks(
        &self,
        bricks: &[BrickDef],
        force: bool,
    ) -> Result<(), String> {
        for b in bricks {
            if b.node == self.me.uuid {
                self.check_brick(&b.path, force)
                    .map_err(|e| e.message.clone())?;
                continue;
            }
            let host = self.host_of(&b.node);
            let c = self.client(&host).map_err(|e| format!("{e:#}"))?;
            c.post::<_, Done>(
                "/v1/storage/internal/check-brick",
                &api::CheckBrick {
                    path: b.path.clone(),
                    force,
                },
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }

    fn host_of(&self, node: &str) -> String {
        self.peers()
            .into_iter()
            .find(|p| p.uuid == node)
            .map(|p| p.host)
            .unwrap_or_default()
    }

    /// `volume add-brick NAME [replica N] BRICK… [force]`: new subvolumes (distribute),
    /// or one more copy in every replica set (a higher replica count; heal fills them).
    pub async fn add_brick(&self, name: &str, req: AddBrick) -> Result<VolumeDef, ApiError> {
        let _op = self.op_lock.lock().await;
        let verb = "add-brick";
        let mut v = self.volume(name)?;
        if !v.removing.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume {verb}: {name}: failed: a remove-brick is in progress; commit or stop it first"
            )));
        }
        if self.running_rebalance_anywhere(name).await {
            return Err(ApiError::conflict(format!(
                "volume {verb}: {name}: failed: a rebalance is in progress; wait for it or stop it first"
            )));
        }
        if req.bricks.is_empty() {
            return Err(fail(verb, name, "no bricks given (HOST:/PATH …)"));
        }
        let old_replica = v.replica.max(1);
        let replica = req.replica.unwrap_or(old_replica);
        if replica == 0 || replica > super::MAX_REPLICA {
            return Err(fail(
                verb,
                name,
                format!("replica count must be 1 to {}", super::MAX_REPLICA),
            ));
        }
        if replica < old_replica {
            return Err(fail(
                verb,
                name,
                format!(
                    "replica count {replica} is below the volume's {old_replica}; lower it with remove-brick"
                ),
            ));
        }
        if v.bricks.len() + req.bricks.len() > super::MAX_BRICKS {
            return Err(fail(
                verb,
                name,
                format!("a volume has at most {} bricks", super::MAX_BRICKS),
            ));
        }
        let subvols = v.bricks.len() / old_replica as usize;
        let per_set = (replica - old_replica) as usize;
        if replica > old_replica {
            if req.bricks.len() != subvols * per_set {
                return Err(fail(
                    verb,
                    name,
                    format!(
                        "raising replica count from {old_replica} to {replica} needs {} bricks ({per_set} for each of the {subvols} replica sets), {} given",
                        subvols * per_set,
                        req.bricks.len()
                    ),
                ));
            }
        } else if req.bricks.len() % replica as usize != 0 {
            return Err(fail(
                verb,
                name,
                format!(
                    "number of bricks ({}) is not a multiple of replica count ({replica})",
                    req.bricks.len()
                ),
            ));
        }
        let first_id = v
            .next_brick_id
            .max(v.bricks.iter().map(|b| b.id + 1).max().unwrap_or(0));
        let new = self
            .new_bricks(&req.bricks, first_id)
            .map_err(|e| fail(verb, name, e))?;
        self.check_bricks(&new, req.force)
            .await
            .map_err(|e| fail(verb, name, e))?;
        let new_ids: Vec<u32> = new.iter().map(|b| b.id).collect();
        if replica > old_replica {
            // Brick i of the new ones joins set i / per_set, as gluster does.
            let mut bricks = Vec::with_capacity(v.bricks.len() + new.len());
            for (k, set) in v.bricks.chunks(old_replica as usize).enumerate() {
                bricks.extend_from_slice(set);
                bricks.extend_from_slice(&new[k * per_set..(k + 1) * per_set]);
            }
            v.bricks = bricks;
            v.replica = replica;
        } else {
            v.bricks.extend(new);
            // A new subvolume: layouts written before do not cover it.
            v.layout_epoch += 1;
        }
        v.next_brick_id = first_id + new_ids.len() as u32;
        v.version += 1;
        self.publish(&v).await?;
        if replica > old_replica && v.state == VolumeState::Started {
            // The self-heal daemon fills the new copies from the root down: each set's
            // first copy accuses them of missing the root's names.
            if let Err(e) = self.accuse_new_copies(name, &new_ids).await {
                tracing::warn!("add-brick {name}: the new copies wait for `heal full`: {e:#}");
            }
        }
        Ok(v)
    }

    async fn accuse_new_copies(&self, name: &str, new_ids: &[u32]) -> anyhow::Result<()> {
        use crate::markers::{AfrDelta, Kind};
        use crate::proto::Op;
        let spec = self
            .spec(name)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        for k in 0..spec.subvolume_count() {
            let set = spec.subvolume(k);
            let absent: Vec<u32> = set
                .iter()
                .map(|b| b.id)
                .filter(|id| new_ids.contains(id))
                .collect();
            let Some(first) = set.iter().find(|b| !new_ids.contains(&b.id)) else {
                continue;
            };
            let (conn, _) = crate::client::conn::BrickConn::new(
                crate::client::conn::BrickAddr {
                    addr: first.addr.clone(),
                    volume_id: spec.volume_id.clone(),
                    brick_id: first.id,
                },
                format!("add-brick-{}", self.me.uuid),
                Duration::from_secs(10),
            );
            conn.req(Op::Xattrop {
                gfid: crate::gfid::Gfid::ROOT,
                delta: AfrDelta::pre_op(&[Kind::Entry, Kind::Metadata], &absent).without_dirty(),
                unlock: None,
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!("brick {}:{}: {}", first.host, first.path, e.describe())
            })?;
        }
        Ok(())
    }

    /// The ids of the bricks `args` names in `v`.
    fn named_bricks(&self, v: &VolumeDef, args: &[String]) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        for a in args {
            let (host, path) = parse_brick(a)?;
            let member = self
                .member_for(&host)
                .ok_or_else(|| format!("Host {host} is not part of the pool"))?;
            let b = v
                .bricks
                .iter()
                .find(|b| b.node == member.uuid && b.path == path)
                .ok_or_else(|| format!("Incorrect brick {a} for volume {}", v.name))?;
            if ids.contains(&b.id) {
                return Err(format!("brick {a} is given twice"));
            }
            ids.push(b.id);
        }
        Ok(ids)
    }

    /// `volume remove-brick NAME [replica N] BRICK… start|stop|commit|force`.
    pub async fn remove_brick(
        self: &Arc<Self>,
        name: &str,
        req: RemoveBrick,
    ) -> Result<Done, ApiError> {
        let verb = "remove-brick";
        let action = req.action.as_str();
        if !matches!(action, "start" | "stop" | "commit" | "force") {
            return Err(fail(
                verb,
                name,
                format!("unknown action `{action}` (start, status, stop, commit or force)"),
            ));
        }
        let op = self.op_lock.lock().await;
        let mut v = self.volume(name)?;
        if req.bricks.is_empty() {
            return Err(fail(verb, name, "no bricks given (HOST:/PATH …)"));
        }
        let ids = self
            .named_bricks(&v, &req.bricks)
            .map_err(|e| fail(verb, name, e))?;
        let r = v.replica.max(1) as usize;
        if let Some(n) = req.replica.filter(|n| *n != v.replica) {
            // A lower replica count: the same number of copies leaves every set; the
            // files stay on the other copies, so nothing moves (gluster asks for force).
            if n == 0 || n > v.replica {
                return Err(fail(
                    verb,
                    name,
                    format!(
                        "replica count {n} must be 1 to {} (raise it with add-brick)",
                        v.replica
                    ),
                ));
            }
            if action != "force" {
                return Err(fail(
                    verb,
                    name,
                    "lowering the replica count needs `force` (no data moves: the other copies keep it)",
                ));
            }
            let drop = (v.replica - n) as usize;
            for set in v.bricks.chunks(r) {
                let named = set.iter().filter(|b| ids.contains(&b.id)).count();
                if named != drop {
                    return Err(fail(
                        verb,
                        name,
                        format!(
                            "give {drop} brick(s) of every replica set to go from replica {} to {n}",
                            v.replica
                        ),
                    ));
                }
            }
            v.bricks.retain(|b| !ids.contains(&b.id));
            v.replica = n;
            v.version += 1;
            self.publish(&v).await?;
            return Ok(Done {
                message: format!("volume remove-brick commit force: success (replica {n})"),
            });
        }
        // Whole replica sets, and not all of them.
        let mut sets = 0;
        for set in v.bricks.chunks(r) {
            let named = set.iter().filter(|b| ids.contains(&b.id)).count();
            if named != 0 && named != set.len() {
                return Err(fail(
                    verb,
                    name,
                    format!(
                        "the bricks of a replica set go together: give all {r} bricks of each set (or `replica N … force` to lower the replica count)"
                    ),
                ));
            }
            sets += usize::from(named != 0);
        }
        if sets * r == v.bricks.len() {
            return Err(fail(
                verb,
                name,
                "cannot remove every brick of the volume (delete it instead)",
            ));
        }
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        let mut removing = v.removing.clone();
        removing.sort_unstable();
        match action {
            "start" => {
                if !v.removing.is_empty() && removing != sorted {
                    return Err(ApiError::conflict(format!(
                        "volume {verb}: {name}: failed: a remove-brick of other bricks is in progress; commit or stop it first"
                    )));
                }
                if v.state != VolumeState::Started {
                    return Err(fail(
                        verb,
                        name,
                        format!("Volume {name} needs to be started to move its files"),
                    ));
                }
                if self.running_rebalance_anywhere(name).await {
                    return Err(ApiError::conflict(format!(
                        "volume {verb}: {name}: failed: a rebalance is in progress"
                    )));
                }
                if v.removing.is_empty() {
                    v.removing = sorted;
                    v.layout_epoch += 1;
                    v.version += 1;
                    self.publish(&v).await?;
                }
                drop(op);
                tokio::spawn(
                    self.clone()
                        .orchestrate(name.to_owned(), RebalanceKind::RemoveBrick),
                );
                Ok(Done {
                    message: format!("volume remove-brick start: success\nID: {}", v.id),
                })
            }
            "stop" => {
                if removing != sorted {
                    return Err(fail(
                        verb,
                        name,
                        "no remove-brick of these bricks is in progress",
                    ));
                }
                self.stop_everywhere(name).await;
                v.removing.clear();
                v.layout_epoch += 1;
                v.version += 1;
                self.publish(&v).await?;
                Ok(Done {
                    message: "volume remove-brick stop: success\nFiles moved so far stay where they are; run `rebalance NAME fix-layout` to give these bricks hash ranges again".into(),
                })
            }
            _ => {
                let force = action == "force";
                if !force {
                    if removing != sorted {
                        return Err(fail(
                            verb,
                            name,
                            "run `remove-brick … start` first (or `force` to remove the bricks without moving their files)",
                        ));
                    }
                    drop(op);
                    let left = self
                        .files_left(name)
                        .await
                        .map_err(|e| fail(verb, name, format!("{e:#}")))?;
                    if left > 0 {
                        return Err(fail(
                            verb,
                            name,
                            format!(
                                "{left} file(s) are still on the bricks being removed (see `remove-brick … status`); run start again, or use force to remove the bricks anyway (their files then stay on them, outside the volume)"
                            ),
                        ));
                    }
                    return self.commit_removal(name, &sorted).await;
                }
                self.stop_everywhere(name).await;
                drop(op);
                self.commit_removal(name, &sorted).await
            }
        }
    }

    async fn commit_removal(&self, name: &str, ids: &[u32]) -> Result<Done, ApiError> {
        let _op = self.op_lock.lock().await;
        let mut v = self.volume(name)?;
        v.bricks.retain(|b| !ids.contains(&b.id));
        v.removing.clear();
        v.layout_epoch += 1;
        v.version += 1;
        self.publish(&v).await?;
        Ok(Done {
            message: "volume remove-brick commit: success\nCheck the removed bricks to ensure all files are migrated.\nIf files with data are found on the brick path, copy them via a mount point before re-purposing the removed brick.".into(),
        })
    }

    /// Files (not directories, not link files) on the subvolumes being removed.
    async fn files_left(&self, name: &str) -> anyhow::Result<u64> {
        if self.running_rebalance_anywhere(name).await {
            anyhow::bail!("files are still being moved (see `remove-brick … status`)");
        }
        let spec = self
            .spec(name)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let crawler = Crawler::new(spec.clone(), &format!("remove-brick-{}", self.me.uuid))?;
        let stop = self.shutdown.child_token();
        let mut n = 0;
        for k in &spec.draining {
            n += crawler.files_on(*k, &stop).await?;
        }
        Ok(n)
    }

    /// `volume rebalance NAME fix-layout|start|stop`.
    pub async fn rebalance(self: &Arc<Self>, name: &str, action: &str) -> Result<Done, ApiError> {
        let verb = "rebalance";
        let kind = match action {
            "fix-layout" => RebalanceKind::FixLayout,
            "start" => RebalanceKind::Rebalance,
            "stop" => {
                self.volume(name)?;
                self.stop_everywhere(name).await;
                return Ok(Done {
                    message: format!(
                        "volume rebalance: {name}: success: rebalance process stopped"
                    ),
                });
            }
            _ => {
                return Err(fail(
                    verb,
                    name,
                    format!("unknown action `{action}` (fix-layout, start, stop or status)"),
                ));
            }
        };
        {
            let _op = self.op_lock.lock().await;
            let v = self.volume(name)?;
            if v.state != VolumeState::Started {
                return Err(fail(
                    verb,
                    name,
                    format!("Volume {name} needs to be started to perform rebalance"),
                ));
            }
            if v.bricks.len() / (v.replica.max(1) as usize) < 2 {
                return Err(fail(
                    verb,
                    name,
                    format!("Volume {name} is not a distribute volume or contains only 1 brick."),
                ));
            }
            if !v.removing.is_empty() {
                return Err(ApiError::conflict(format!(
                    "volume {verb}: {name}: failed: a remove-brick is in progress"
                )));
            }
            if self.running_rebalance_anywhere(name).await {
                return Err(ApiError::conflict(format!(
                    "volume {verb}: {name}: failed: Rebalance on {name} is already started"
                )));
            }
        }
        tokio::spawn(self.clone().orchestrate(name.to_owned(), kind));
        Ok(Done {
            message: format!(
                "volume rebalance: {name}: success: Rebalance on {name} has been started successfully. Use rebalance status command to check status of the rebalance process."
            ),
        })
    }

    fn running_rebalance(&self, name: &str) -> bool {
        self.rebalances
            .lock()
            .expect("rebalances")
            .get(name)
            .is_some_and(|r| r.running())
    }

    async fn running_rebalance_anywhere(&self, name: &str) -> bool {
        self.rebalance_rows(name).await.iter().any(|r| {
            matches!(
                r.state,
                RebalanceState::FixingLayout | RebalanceState::InProgress
            )
        })
    }

    fn register(&self, name: &str, r: Arc<LocalRebalance>) {
        self.rebalances
            .lock()
            .expect("rebalances")
            .insert(name.to_owned(), r);
    }

    /// The member that took the command: fix-layout, a new generation for mounts, then
    /// every member moves its files.
    async fn orchestrate(self: Arc<Self>, name: String, kind: RebalanceKind) {
        let stop = self.shutdown.child_token();
        let generation = self.volume(&name).map(|v| v.version).unwrap_or(0);
        let first = if kind == RebalanceKind::FixLayout {
            RebalanceState::InProgress
        } else {
            RebalanceState::FixingLayout
        };
        let task = LocalRebalance::new(kind, first, generation, stop.clone());
        self.register(&name, task.clone());
        let r = async {
            let spec = self
                .spec(&name)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let crawler = Crawler::new(spec, &format!("rebalance-{}", self.me.uuid))?;
            crawler.fix_layout(&stop, &task.counters).await?;
            {
                // Mounts drop their cached layouts when the generation changes.
                let _op = self.op_lock.lock().await;
                let mut v = self
                    .volume(&name)
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                v.version += 1;
                self.publish(&v)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            }
            if kind == RebalanceKind::FixLayout {
                return Ok(());
            }
            tokio::select! {
                _ = stop.cancelled() => anyhow::bail!("stopped"),
                _ = tokio::time::sleep(LAYOUT_SETTLE) => {}
            }
            let v = self
                .volume(&name)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            for p in self.peers() {
                if !v.bricks.iter().any(|b| b.node == p.uuid) {
                    continue;
                }
                let c = self.client(&p.host)?;
                let _: Done = c
                    .post(
                        "/v1/storage/internal/rebalance",
                        &StartRebalance {
                            name: name.clone(),
                            kind,
                        },
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("starting on {}: {e:#}", p.host))?;
            }
            Ok(())
        }
        .await;
        let failed = r.is_err();
        if kind == RebalanceKind::FixLayout || failed {
            task.finish(r);
            return;
        }
        // This member's own part (its row then counts files, not directories).
        task.finish(Ok(()));
        if let Err(e) = self.start_local(&name, kind) {
            task.finish(Err(anyhow::anyhow!("{}", e.message)));
        }
    }

    /// Internal: this member moves the files of the subvolumes whose first brick it holds
    /// (for remove-brick: of those being removed).
    pub fn start_local(
        self: &Arc<Self>,
        name: &str,
        kind: RebalanceKind,
    ) -> Result<Done, ApiError> {
        let v = self.volume(name)?;
        if self.running_rebalance(name) {
            return Err(ApiError::conflict(format!(
                "a rebalance of {name} is in progress here"
            )));
        }
        let stop = self.shutdown.child_token();
        let task = LocalRebalance::new(kind, RebalanceState::InProgress, v.version, stop.clone());
        self.register(name, task.clone());
        let me = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let r = async {
                let spec: VolumeSpec = me
                    .spec(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                let v = me
                    .volume(&name)
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                let r = v.replica.max(1) as usize;
                let firsts: Vec<&BrickDef> = v.bricks.chunks(r).map(|s| &s[0]).collect();
                let mine: Vec<u32> = (0..firsts.len() as u32)
                    .filter(|k| firsts[*k as usize].node == me.me.uuid)
                    .filter(|k| kind != RebalanceKind::RemoveBrick || spec.draining.contains(k))
                    .collect();
                let paths: Vec<Option<std::path::PathBuf>> = firsts
                    .iter()
                    .map(|b| (b.node == me.me.uuid).then(|| std::path::PathBuf::from(&b.path)))
                    .collect();
                let crawler = Crawler::new(spec, &format!("rebalance-{}", me.me.uuid))?;
                crawler.migrate(&mine, &paths, &stop, &task.counters).await
            }
            .await;
            task.finish(r);
        });
        Ok(Done {
            message: "ok".into(),
        })
    }

    /// Internal: this member's row, if it ran a rebalance of `name`.
    pub fn local_rebalance(&self, name: &str) -> Option<NodeRebalance> {
        self.rebalances
            .lock()
            .expect("rebalances")
            .get(name)
            .map(|r| r.row("localhost"))
    }

    /// Internal: stops this member's rebalance of `name`.
    pub fn stop_local(&self, name: &str) {
        if let Some(r) = self.rebalances.lock().expect("rebalances").get(name) {
            r.stop.cancel();
        }
    }

    async fn stop_everywhere(&self, name: &str) {
        self.stop_local(name);
        for p in self.peers() {
            if let Ok(c) = self.client(&p.host) {
                let r: Result<Done, _> = c
                    .post(
                        "/v1/storage/internal/rebalance-stop",
                        &api::Name {
                            name: name.to_owned(),
                        },
                    )
                    .await;
                if let Err(e) = r {
                    tracing::warn!("stopping the rebalance of {name} on {}: {e:#}", p.host);
                }
            }
        }
    }

    /// `rebalance status` / `remove-brick status`: a row per member that ran one.
    pub async fn rebalance_rows(&self, name: &str) -> Vec<NodeRebalance> {
        let mut rows = Vec::new();
        rows.extend(self.local_rebalance(name));
        for p in self.peers() {
            let Ok(c) = self.client(&p.host) else {
                continue;
            };
            match c
                .get::<Option<NodeRebalance>>(&format!("/v1/storage/internal/rebalance/{name}"))
                .await
            {
                Ok(Some(mut r)) => {
                    r.host = p.host.clone();
                    rows.push(r);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("rebalance status from {}: {e:#}", p.host),
            }
        }
        rows
    }
}
