//! Volume management, on every node (gluster's glusterd): the trusted pool, volume
//! definitions kept on every member, and the brick servers of this node.
//!
//! A change (probe, create, start, …) is made by the node the CLI talks to: it checks
//! everything first (names, hosts, brick directories on their own nodes), then stores
//! the new definition on every member through their internal API, then on itself. Each
//! member runs the brick servers of its own bricks of started volumes.

pub mod api;
pub mod elastic;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use nuage_core::api::ApiError;
use nuage_core::client::ApiClient;
use tokio_util::sync::CancellationToken;

use crate::brick::server::Brick;
use crate::brick::store::{BrickIdentity, Store, brick_identity};
use crate::client::spec::{BrickSpec, VolumeSpec};
use crate::gfid::Gfid;
use types::*;

/// Longest volume name, as in gluster.
pub const MAX_VOLUME_NAME: usize = 64;
/// Most bricks in one volume.
pub const MAX_BRICKS: usize = 256;
/// Most pool members.
pub const MAX_PEERS: usize = 64;
/// Largest replica count.
pub const MAX_REPLICA: u32 = 16;
/// How long a member waits for another member's management API.
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const MIGRATIONS: &[&str] = &["
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE peers (uuid TEXT PRIMARY KEY, host TEXT NOT NULL);
    CREATE TABLE volumes (name TEXT PRIMARY KEY, def TEXT NOT NULL);
"];

struct RunningBrick {
    port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The management state of this node.
pub struct Mgmt {
    db: Mutex<rusqlite::Connection>,
    me: Member,
    /// Port of every member's node API (the pool uses one port, like gluster's 24007).
    api_port: u16,
    /// Serializes management operations started on this node.
    op_lock: tokio::sync::Mutex<()>,
    bricks: tokio::sync::Mutex<HashMap<(String, u32), RunningBrick>>,
    /// This member's rebalance processes, by volume (the last one of each stays, for
    /// `rebalance status`).
    rebalances: Mutex<HashMap<String, Arc<elastic::LocalRebalance>>>,
    shutdown: CancellationToken,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// `HOST:/path` → (HOST, /path).
pub fn parse_brick(s: &str) -> Result<(String, String), String> {
    let (host, path) = s
        .rsplit_once(":/")
        .map(|(h, p)| (h.to_owned(), format!("/{p}")))
        .ok_or_else(|| format!("brick `{s}` is not HOST:/PATH"))?;
    valid_host(&host).map_err(|e| format!("brick `{s}`: {e}"))?;
    let p = Path::new(&path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "brick path `{path}` must be absolute, without `..`"
        ));
    }
    let trimmed = path.trim_end_matches('/');
    let path = if trimmed.is_empty() { "/" } else { trimmed };
    Ok((host, path.to_owned()))
}

/// A pool member's host: a DNS name or an IPv4 address (letters, digits, `.`, `-`),
/// at most 253 characters, so it can only ever name a host in a URL.
fn valid_host(host: &str) -> Result<(), String> {
    if host.is_empty()
        || host.len() > 253
        || host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(format!("`{host}` is not a host name or IPv4 address"));
    }
    Ok(())
}

fn valid_volume_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_VOLUME_NAME {
        return Err(format!(
            "volume name must be 1 to {MAX_VOLUME_NAME} characters"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with('-')
    {
        return Err(format!(
            "volume name `{name}` may hold only letters, digits, `-` and `_` (not first)"
        ));
    }
    Ok(())
}

/// Whether `host` names this machine: `localhost`, our address or name, or an IP
/// address one of our interfaces has.
fn is_local_host(host: &str, me: &Member) -> bool {
    if host == "localhost" || host == me.host {
        return true;
    }
    if let Ok(h) = nix::unistd::gethostname() {
        if h.to_string_lossy() == host {
            return true;
        }
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        // Binding to an address succeeds only if it is ours.
        Ok(ip) => std::net::UdpSocket::bind((ip, 0)).is_ok(),
        Err(_) => false,
    }
}

impl Mgmt {
    /// Opens (creating on first use) the management state in `dir`.
    pub fn open(
        dir: &Path,
        host: &str,
        api_port: u16,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Mgmt>> {
        let db = nuage_core::datadir::open_sqlite(&dir.join("storage.db"), MIGRATIONS)?;
        let uuid: Option<String> = db
            .query_row("SELECT value FROM meta WHERE key = 'uuid'", [], |r| {
                r.get(0)
            })
            .ok();
        let uuid = match uuid {
            Some(u) => u,
            None => {
                let u = Gfid::random().to_uuid();
                db.execute("INSERT INTO meta (key, value) VALUES ('uuid', ?1)", [&u])?;
                u
            }
        };
        Ok(Arc::new(Mgmt {
            db: Mutex::new(db),
            me: Member {
                uuid,
                host: host.to_owned(),
            },
            api_port,
            op_lock: tokio::sync::Mutex::new(()),
            bricks: tokio::sync::Mutex::new(HashMap::new()),
            rebalances: Mutex::new(HashMap::new()),
            shutdown,
        }))
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    fn peers(&self) -> Vec<Member> {
        let db = self.db.lock().expect("db");
        let mut st = db
            .prepare("SELECT uuid, host FROM peers ORDER BY host")
            .expect("query");
        st.query_map([], |r| {
            Ok(Member {
                uuid: r.get(0)?,
                host: r.get(1)?,
            })
        })
        .expect("query")
        .filter_map(Result::ok)
        .collect()
    }

    fn save_peer(&self, m: &Member) -> anyhow::Result<()> {
        if m.uuid == self.me.uuid {
            return Ok(());
        }
        self.db.lock().expect("db").execute(
            "INSERT INTO peers (uuid, host) VALUES (?1, ?2) ON CONFLICT(uuid) DO UPDATE SET host = ?2",
            [&m.uuid, &m.host],
        )?;
        Ok(())
    }

    fn remove_peer(&self, uuid: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .expect("db")
            .execute("DELETE FROM peers WHERE uuid = ?1", [uuid])?;
        Ok(())
    }

    pub fn volumes(&self) -> Vec<VolumeDef> {
        let db = self.db.lock().expect("db");
        let mut st = db
            .prepare("SELECT def FROM volumes ORDER BY name")
            .expect("query");
        st.query_map([], |r| r.get::<_, String>(0))
            .expect("query")
            .filter_map(Result::ok)
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect()
    }

    pub fn volume(&self, name: &str) -> Result<VolumeDef, ApiError> {
        self.volumes()
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ApiError::not_found(format!("Volume {name} does not exist")))
    }

    fn save_volume(&self, v: &VolumeDef) -> anyhow::Result<()> {
        let def = serde_json::to_string(v)?;
        self.db.lock().expect("db").execute(
            "INSERT INTO volumes (name, def) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET def = ?2",
            [&v.name, &def],
        )?;
        Ok(())
    }

    fn delete_volume_row(&self, name: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .expect("db")
            .execute("DELETE FROM volumes WHERE name = ?1", [name])?;
        Ok(())
    }

    fn client(&self, host: &str) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(&format!("{host}:{}", self.api_port))?.with_timeout(PEER_TIMEOUT))
    }

    /// The member that `host` names, if any.
    fn member_for(&self, host: &str) -> Option<Member> {
        if is_local_host(host, &self.me) {
            return Some(self.me.clone());
        }
        self.peers().into_iter().find(|p| p.host == host)
    }

    // ---- pool ----

    pub async fn pool(&self) -> Vec<MemberStatus> {
        let mut out = vec![MemberStatus {
            uuid: self.me.uuid.clone(),
            host: "localhost".into(),
            connected: true,
            local: true,
        }];
        for p in self.peers() {
            let connected = match self.client(&p.host) {
                Ok(c) => c
                    .get::<Member>("/v1/storage/internal/whoami")
                    .await
                    .is_ok_and(|m| m.uuid == p.uuid),
                Err(_) => false,
            };
            out.push(MemberStatus {
                uuid: p.uuid,
                host: p.host,
                connected,
                local: false,
            });
        }
        out
    }

    pub async fn probe(&self, host: &str) -> Result<Done, ApiError> {
        let _op = self.op_lock.lock().await;
        valid_host(host).map_err(|e| bad(format!("peer probe: failed: {e}")))?;
        if is_local_host(host, &self.me) {
            return Ok(Done {
                message: format!("peer probe: success. Probe on localhost not needed ({host})"),
            });
        }
        let peers = self.peers();
        if peers.iter().any(|p| p.host == host) {
            return Ok(Done {
                message: format!(
                    "peer probe: success. Host {host} port {} already in peer list",
                    self.api_port
                ),
            });
        }
        if peers.len() >= MAX_PEERS {
            return Err(bad(format!("the pool has {MAX_PEERS} members already")));
        }
        let c = self.client(host).map_err(|e| bad(format!("{e:#}")))?;
        let mut members = peers.clone();
        members.push(self.me.clone());
        let join = api::Join {
            members,
            volumes: self.volumes(),
        };
        let new: Member = c
            .post("/v1/storage/internal/join", &join)
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("peer probe: failed: Probe returned with {e:#}"))
            })?;
        let new = Member {
            uuid: new.uuid,
            host: host.to_owned(),
        };
        // Tell the existing members.
        for p in &peers {
            let c = self.client(&p.host).map_err(|e| bad(format!("{e:#}")))?;
            let r: Result<Done, _> = c
                .post(
                    "/v1/storage/internal/peer",
                    &api::PeerChange {
                        member: new.clone(),
                        remove: false,
                    },
                )
                .await;
            if let Err(e) = r {
                tracing::warn!("peer probe: telling {} about {host}: {e:#}", p.host);
            }
        }
        self.save_peer(&new)?;
        Ok(Done {
            message: "peer probe: success".into(),
        })
    }

    pub async fn detach(&self, host: &str, force: bool) -> Result<Done, ApiError> {
        let _op = self.op_lock.lock().await;
        let Some(member) = self.peers().into_iter().find(|p| p.host == host) else {
            if is_local_host(host, &self.me) {
                return Err(bad(format!("peer detach: failed: {host} is localhost")));
            }
            return Err(ApiError::not_found(format!(
                "peer detach: failed: {host} is not part of cluster"
            )));
        };
        let holding: Vec<String> = self
            .volumes()
            .into_iter()
            .filter(|v| v.bricks.iter().any(|b| b.node == member.uuid))
            .map(|v| v.name)
            .collect();
        if !holding.is_empty() && !force {
            return Err(ApiError::conflict(format!(
                "peer detach: failed: Peer {host} hosts one or more bricks of volume(s) {}. If the peer is in not recoverable state then use either replace-brick or remove-brick command with force to remove all bricks from the peer and attempt the peer detach again.",
                holding.join(", ")
            )));
        }
        for p in self.peers() {
            let c = self.client(&p.host).map_err(|e| bad(format!("{e:#}")))?;
            let change = api::PeerChange {
                member: if p.uuid == member.uuid {
                    self.me.clone()
                } else {
                    member.clone()
                },
                remove: true,
            };
            if p.uuid == member.uuid {
                // The detached member forgets the whole pool.
                let r: Result<Done, _> = c.post("/v1/storage/internal/leave", &change).await;
                if let Err(e) = r {
                    tracing::warn!("peer detach: {host} did not answer: {e:#}");
                }
            } else {
                let r: Result<Done, _> = c.post("/v1/storage/internal/peer", &change).await;
                if let Err(e) = r {
                    tracing::warn!("peer detach: telling {}: {e:#}", p.host);
                }
            }
        }
        self.remove_peer(&member.uuid)?;
        Ok(Done {
            message: "peer detach: success".into(),
        })
    }

    /// Internal: a member probed us. Refuse if we are in another pool or hold volumes.
    pub fn join(&self, j: api::Join) -> Result<Member, ApiError> {
        let mine = self.peers();
        let known: Vec<&str> = j.members.iter().map(|m| m.uuid.as_str()).collect();
        if mine.iter().any(|p| !known.contains(&p.uuid.as_str())) {
            return Err(ApiError::conflict(format!(
                "{} is already part of another cluster",
                self.me.host
            )));
        }
        let vols = self.volumes();
        if vols
            .iter()
            .any(|v| !j.volumes.iter().any(|w| w.name == v.name && w.id == v.id))
        {
            return Err(ApiError::conflict(format!(
                "{} has volumes of its own; a node joining a pool must have none",
                self.me.host
            )));
        }
        for m in &j.members {
            self.save_peer(m)?;
        }
        for v in &j.volumes {
            self.save_volume(v)?;
        }
        Ok(self.me.clone())
    }

    pub fn peer_change(&self, c: api::PeerChange) -> Result<Done, ApiError> {
        if c.remove {
            self.remove_peer(&c.member.uuid)?;
        } else {
            self.save_peer(&c.member)?;
        }
        Ok(Done {
            message: "ok".into(),
        })
    }

    pub async fn leave(&self) -> Result<Done, ApiError> {
        for p in self.peers() {
            self.remove_peer(&p.uuid)?;
        }
        Ok(Done {
            message: "ok".into(),
        })
    }

    // ---- volumes ----

    /// Stores `v` on every member (others first, then here) and applies it here.
    async fn publish(&self, v: &VolumeDef) -> Result<(), ApiError> {
        for p in self.peers() {
            let c = self.client(&p.host).map_err(|e| bad(format!("{e:#}")))?;
            let _: Done = c
                .post("/v1/storage/internal/volume", v)
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!("Staging failed on {}: {e:#}", p.host))
                })?;
        }
        self.store_volume(v.clone()).await
    }

    /// Internal: keep a definition (unless ours is newer) and run our bricks as it says.
    pub async fn store_volume(&self, v: VolumeDef) -> Result<(), ApiError> {
        if let Ok(old) = self.volume(&v.name) {
            if old.id == v.id && old.version > v.version {
                return Ok(());
            }
        }
        self.save_volume(&v)?;
        self.reconcile().await;
        Ok(())
    }

    pub async fn forget_volume(&self, name: &str) -> Result<(), ApiError> {
        self.delete_volume_row(name)?;
        self.reconcile().await;
        Ok(())
    }

    /// Checks a brick directory on this node (`volume create`, `add-brick`).
    pub fn check_brick(&self, path: &str, force: bool) -> Result<Done, ApiError> {
        let p = PathBuf::from(path);
        let here = &self.me.host;
        match std::fs::metadata(&p) {
            Ok(m) if !m.is_dir() => return Err(bad(format!("{here}:{path} is not a directory"))),
            Ok(_) => {}
            Err(_) if force => {
                std::fs::create_dir_all(&p)
                    .map_err(|e| bad(format!("cannot create brick {here}:{path}: {e}")))?;
            }
            Err(e) => {
                return Err(bad(format!(
                    "brick {here}:{path} does not exist ({e}); create it, or use force to have it created"
                )));
            }
        }
        if let Some(id) = brick_identity(&p) {
            return Err(bad(format!(
                "{here}:{path} is already part of a volume ({})",
                id.volume
            )));
        }
        let root_dev = std::fs::metadata("/")
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .ok();
        let dev = std::fs::metadata(&p)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .ok();
        if !force && root_dev.is_some() && root_dev == dev {
            return Err(bad(format!(
                "The brick {here}:{path} is being created in the root partition. It is recommended that you don't use the system's root partition for storage backend. Or use 'force' at the end of the command if you want to override this behavior."
            )));
        }
        let non_empty = std::fs::read_dir(&p)
            .map_err(|e| bad(format!("cannot read {here}:{path}: {e}")))?
            .next()
            .is_some();
        if non_empty && !force {
            return Err(bad(format!(
                "brick {here}:{path} is not empty; use an empty directory, or force to keep its files in the volume"
            )));
        }
        Ok(Done {
            message: "ok".into(),
        })
    }

    pub async fn create_volume(&self, req: CreateVolume) -> Result<VolumeDef, ApiError> {
        let _op = self.op_lock.lock().await;
        let name = &req.name;
        valid_volume_name(name).map_err(|e| bad(format!("volume create: {name}: failed: {e}")))?;
        if self.volume(name).is_ok() {
            return Err(ApiError::conflict(format!(
                "volume create: {name}: failed: Volume {name} already exists"
            )));
        }
        if req.bricks.is_empty() || req.bricks.len() > MAX_BRICKS {
            return Err(bad(format!(
                "volume create: {name}: failed: a volume needs 1 to {MAX_BRICKS} bricks"
            )));
        }
        if req.replica == 0 || req.replica > MAX_REPLICA {
            return Err(bad(format!(
                "volume create: {name}: failed: replica count must be 1 to {MAX_REPLICA}"
            )));
        }
        if req.bricks.len() % req.replica as usize != 0 {
            return Err(bad(format!(
                "volume create: {name}: failed: number of bricks ({}) is not a multiple of replica count ({})",
                req.bricks.len(),
                req.replica
            )));
        }
        let bricks = self
            .new_bricks(&req.bricks, 0)
            .map_err(|e| bad(format!("volume create: {name}: failed: {e}")))?;
        self.check_bricks(&bricks, req.force)
            .await
            .map_err(|e| bad(format!("volume create: {name}: failed: {e}")))?;
        let def = VolumeDef {
            name: name.clone(),
            id: Gfid::random().to_uuid(),
            replica: req.replica,
            bricks,
            state: VolumeState::Created,
            options: BTreeMap::new(),
            layout_epoch: 1,
            version: 1,
            removing: Vec::new(),
            next_brick_id: req.bricks.len() as u32,
        };
        self.publish(&def).await?;
        Ok(def)
    }

    pub async fn set_state(
        &self,
        name: &str,
        state: VolumeState,
        force: bool,
    ) -> Result<VolumeDef, ApiError> {
        let _op = self.op_lock.lock().await;
        let mut v = self.volume(name)?;
        let verb = if state == VolumeState::Started {
            "start"
        } else {
            "stop"
        };
        if v.state == state && !force {
            return Err(bad(format!(
                "volume {verb}: {name}: failed: Volume {name} already {}",
                state.name().to_lowercase()
            )));
        }
        if state == VolumeState::Stopped && v.state == VolumeState::Created {
            return Err(bad(format!(
                "volume stop: {name}: failed: Volume {name} is not in the started state"
            )));
        }
        v.state = state;
        v.version += 1;
        self.publish(&v).await?;
        Ok(v)
    }

    pub async fn delete_volume(&self, name: &str) -> Result<Done, ApiError> {
        let _op = self.op_lock.lock().await;
        let v = self.volume(name)?;
        if v.state == VolumeState::Started {
            return Err(bad(format!(
                "volume delete: {name}: failed: Volume {name} has been started. Volume needs to be stopped before deletion."
            )));
        }
        for p in self.peers() {
            let c = self.client(&p.host).map_err(|e| bad(format!("{e:#}")))?;
            let _: Done = c
                .post(
                    "/v1/storage/internal/volume-delete",
                    &api::Name {
                        name: name.to_owned(),
                    },
                )
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!(
                        "volume delete: {name}: failed on {}: {e:#}",
                        p.host
                    ))
                })?;
        }
        self.forget_volume(name).await?;
        Ok(Done {
            message: format!("volume delete: {name}: success"),
        })
    }

    // ---- bricks of this node ----

    /// Runs exactly the brick servers of this node's bricks of started volumes.
    pub async fn reconcile(&self) {
        let wanted: Vec<(VolumeDef, BrickDef)> = self
            .volumes()
            .into_iter()
            .filter(|v| v.state == VolumeState::Started)
            .flat_map(|v| {
                let mine: Vec<BrickDef> = v
                    .bricks
                    .iter()
                    .filter(|b| b.node == self.me.uuid)
                    .cloned()
                    .collect();
                mine.into_iter().map(move |b| (v.clone(), b))
            })
            .collect();
        let mut running = self.bricks.lock().await;
        let keep: Vec<(String, u32)> = wanted.iter().map(|(v, b)| (v.name.clone(), b.id)).collect();
        let gone: Vec<(String, u32)> = running
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(r) = running.remove(&k) {
                r.stop.cancel();
                let _ = r.task.await;
                tracing::info!("storage: brick {} of volume {} stopped", k.1, k.0);
            }
        }
        for (v, b) in wanted {
            let key = (v.name.clone(), b.id);
            if running.get(&key).is_some_and(|r| !r.task.is_finished()) {
                continue;
            }
            match self.start_brick(&v, &b).await {
                Ok(r) => {
                    tracing::info!(
                        "storage: brick {}:{} of volume {} on port {}",
                        b.host,
                        b.path,
                        v.name,
                        r.port
                    );
                    running.insert(key, r);
                }
                Err(e) => tracing::error!(
                    "storage: brick {}:{} of volume {}: {e:#}",
                    b.host,
                    b.path,
                    v.name
                ),
            }
        }
    }

    async fn start_brick(&self, v: &VolumeDef, b: &BrickDef) -> anyhow::Result<RunningBrick> {
        let identity = BrickIdentity {
            volume: v.name.clone(),
            volume_id: v.id.clone(),
            brick_id: b.id,
        };
        let path = PathBuf::from(&b.path);
        let store = tokio::task::spawn_blocking(move || {
            Store::open(&path, &identity).map(|s| (s, identity))
        })
        .await
        .context("brick start")??;
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0))
            .await
            .context("binding a port for the brick")?;
        let port = listener.local_addr()?.port();
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(Brick::new(store.0, store.1).serve(listener, stop.clone()));
        Ok(RunningBrick { port, stop, task })
    }

    pub async fn local_bricks(&self) -> Vec<LocalBrick> {
        self.bricks
            .lock()
            .await
            .iter()
            .filter(|(_, r)| !r.task.is_finished())
            .map(|((v, id), r)| LocalBrick {
                volume: v.clone(),
                id: *id,
                port: r.port,
                pid: std::process::id(),
            })
            .collect()
    }

    /// Stops every brick server (node shutdown).
    pub async fn stop_all(&self) {
        let mut running = self.bricks.lock().await;
        for (_, r) in running.drain() {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }

    /// Where each brick of a volume is served now, asking each member for its own.
    pub async fn brick_status(&self, name: &str) -> Result<Vec<BrickStatus>, ApiError> {
        let v = self.volume(name)?;
        let mut by_node: HashMap<String, Vec<LocalBrick>> = HashMap::new();
        by_node.insert(self.me.uuid.clone(), self.local_bricks().await);
        for p in self.peers() {
            if !v.bricks.iter().any(|b| b.node == p.uuid) {
                continue;
            }
            let list = match self.client(&p.host) {
                Ok(c) => c
                    .get::<Vec<LocalBrick>>("/v1/storage/internal/bricks")
                    .await
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            by_node.insert(p.uuid, list);
        }
        Ok(v.bricks
            .iter()
            .map(|b| {
                let running = by_node
                    .get(&b.node)
                    .and_then(|l| l.iter().find(|x| x.volume == v.name && x.id == b.id));
                BrickStatus {
                    id: b.id,
                    host: b.host.clone(),
                    path: b.path.clone(),
                    port: running.map(|r| r.port),
                    online: running.is_some(),
                    pid: running.map(|r| r.pid),
                }
            })
            .collect())
    }

    /// What a client needs to mount a started volume.
    pub async fn spec(&self, name: &str) -> Result<VolumeSpec, ApiError> {
        let v = self.volume(name)?;
        if v.state != VolumeState::Started {
            return Err(bad(format!(
                "Volume {name} is not started (run `nuage volume start {name}`)"
            )));
        }
        let status = self.brick_status(name).await?;
        let bricks = v
            .bricks
            .iter()
            .map(|b| {
                let port = status.iter().find(|s| s.id == b.id).and_then(|s| s.port);
                BrickSpec {
                    id: b.id,
                    host: b.host.clone(),
                    path: b.path.clone(),
                    // An offline brick gets an address nothing listens on: ENOTCONN.
                    addr: format!("{}:{}", b.host, port.unwrap_or(0)),
                }
            })
            .collect();
        let draining = v.draining();
        Ok(VolumeSpec {
            name: v.name,
            volume_id: v.id,
            replica: v.replica,
            bricks,
            layout_epoch: v.layout_epoch,
            ping_timeout: v
                .options
                .get(PING_TIMEOUT_OPTION)
                .and_then(|t| t.parse().ok()),
            quorum_type: v.options.get(QUORUM_TYPE_OPTION).cloned(),
            flush_behind: v
                .options
                .get(FLUSH_BEHIND_OPTION)
                .and_then(|s| parse_switch(s)),
            generation: v.version,
            draining,
        })
    }

    /// The self-heal daemon: every `cluster.heal-timeout` seconds per started replicated
    /// volume, heals what the heal indexes of this member's bricks list (as gluster's
    /// glustershd). Ends when `stop` is cancelled.
    pub async fn self_heal_daemon(self: Arc<Self>, stop: CancellationToken) {
        let mut last: HashMap<String, std::time::Instant> = HashMap::new();
        let client = format!("shd-{}", self.me.uuid);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SELF_HEAL_TICK) => {}
            }
            for v in self.volumes() {
                if v.state != VolumeState::Started || v.replica < 2 {
                    continue;
                }
                let mine: Vec<u32> = v
                    .bricks
                    .iter()
                    .filter(|b| b.node == self.me.uuid)
                    .map(|b| b.id)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let every = v
                    .options
                    .get(HEAL_TIMEOUT_OPTION)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(DEFAULT_HEAL_TIMEOUT);
                let due = last
                    .get(&v.name)
                    .is_none_or(|t| t.elapsed().as_secs() >= every);
                if !due {
                    continue;
                }
                last.insert(v.name.clone(), std::time::Instant::now());
                let Ok(spec) = self.spec(&v.name).await else {
                    continue;
                };
                let pass = crate::client::heal_index::run_on(&spec, &client, true, Some(&mine));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = pass => match r {
                        Ok(report) => {
                            let left: usize = report.iter().map(|b| b.entries.len()).sum();
                            if left > 0 {
                                tracing::info!("self-heal of {}: {left} entries left", v.name);
                            }
                        }
                        Err(e) => tracing::warn!("self-heal of {}: {e:#}", v.name),
                    },
                }
            }
        }
    }

    /// `volume set NAME OPTION VALUE`.
    pub async fn set_option(
        &self,
        name: &str,
        option: &str,
        value: &str,
    ) -> Result<Done, ApiError> {
        let _op = self.op_lock.lock().await;
        let mut v = self.volume(name)?;
        let known = VOLUME_OPTIONS
            .iter()
            .find(|o| o.name == option)
            .ok_or_else(|| {
                bad(format!(
                    "volume set: failed: option : {option} does not exist"
                ))
            })?;
        (known.check)(value).map_err(|e| bad(format!("volume set: failed: {option}: {e}")))?;
        v.options.insert(option.to_owned(), value.to_owned());
        v.version += 1;
        self.publish(&v).await?;
        Ok(Done {
            message: "volume set: success".into(),
        })
    }

    /// `volume get NAME OPTION|all`: (option, value) pairs, defaults included.
    pub fn get_options(&self, name: &str, option: &str) -> Result<Vec<(String, String)>, ApiError> {
        let v = self.volume(name)?;
        let value = |o: &VolumeOption| {
            v.options
                .get(o.name)
                .cloned()
                .unwrap_or_else(|| o.default.to_owned())
        };
        if option == "all" {
            return Ok(VOLUME_OPTIONS
                .iter()
                .map(|o| (o.name.to_owned(), value(o)))
                .collect());
        }
        let o = VOLUME_OPTIONS
            .iter()
            .find(|o| o.name == option)
            .ok_or_else(|| {
                bad(format!(
                    "volume get option: failed: Did you mean {}?",
                    VOLUME_OPTIONS[0].name
                ))
            })?;
        Ok(vec![(o.name.to_owned(), value(o))])
    }
}

/// The option a mount reads for its ping timeout.
pub const PING_TIMEOUT_OPTION: &str = "network.ping-timeout";
/// Largest ping timeout (seconds).
pub const MAX_PING_TIMEOUT: u64 = 3600;

/// Seconds between the self-heal daemon's passes over a member's bricks' heal indexes.
pub const HEAL_TIMEOUT_OPTION: &str = "cluster.heal-timeout";
/// Largest `cluster.heal-timeout` (seconds).
pub const MAX_HEAL_TIMEOUT: u64 = 86_400;
/// Default `cluster.heal-timeout` (gluster's).
pub const DEFAULT_HEAL_TIMEOUT: u64 = 600;
/// How often the self-heal daemon looks whether a volume's pass is due.
const SELF_HEAL_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The option a mount reads for write quorum in replica sets (`auto` or `none`).
pub const QUORUM_TYPE_OPTION: &str = "cluster.quorum-type";

/// The option a mount reads to answer `close(2)` before its writes are on the bricks
/// (`on`, gluster's default) or after (`off`, nuage's default: a file closed through a
/// mount is on the bricks, which tools reading bricks directly rely on).
pub const FLUSH_BEHIND_OPTION: &str = "performance.flush-behind";
/// `performance.flush-behind` when not set.
pub const FLUSH_BEHIND_DEFAULT: bool = false;

/// A gluster on/off option value.
pub fn parse_switch(s: &str) -> Option<bool> {
    match s {
        "on" | "true" | "yes" | "enable" | "1" => Some(true),
        "off" | "false" | "no" | "disable" | "0" => Some(false),
        _ => None,
    }
}

/// An option `volume set` accepts: only options that take effect are listed.
pub struct VolumeOption {
    pub name: &'static str,
    pub default: &'static str,
    pub check: fn(&str) -> Result<(), String>,
}

/// The options of a volume, with their defaults.
pub const VOLUME_OPTIONS: &[VolumeOption] = &[
    VolumeOption {
        name: PING_TIMEOUT_OPTION,
        default: "42",
        check: |v| match v.parse::<u64>() {
            Ok(n) if (1..=MAX_PING_TIMEOUT).contains(&n) => Ok(()),
            _ => Err(format!(
                "must be whole seconds from 1 to {MAX_PING_TIMEOUT}"
            )),
        },
    },
    VolumeOption {
        name: HEAL_TIMEOUT_OPTION,
        default: "600",
        check: |v| match v.parse::<u64>() {
            Ok(n) if (1..=MAX_HEAL_TIMEOUT).contains(&n) => Ok(()),
            _ => Err(format!(
                "must be whole seconds from 1 to {MAX_HEAL_TIMEOUT}"
            )),
        },
    },
    VolumeOption {
        name: QUORUM_TYPE_OPTION,
        default: "auto",
        check: |v| match crate::client::replica::QuorumType::parse(v) {
            Some(_) => Ok(()),
            None => Err("must be auto or none".into()),
        },
    },
    VolumeOption {
        name: FLUSH_BEHIND_OPTION,
        default: if FLUSH_BEHIND_DEFAULT { "on" } else { "off" },
        check: |v| match parse_switch(v) {
            Some(_) => Ok(()),
            None => Err("must be on or off".into()),
        },
    },
];

/// Errors when a brick string cannot be used (shared with the CLI for early checks).
pub fn check_brick_arg(s: &str) -> anyhow::Result<()> {
    parse_brick(s).map(drop).map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brick_arguments_are_parsed_strictly() {
        assert_eq!(
            parse_brick("h1:/data/b1").unwrap(),
            ("h1".into(), "/data/b1".into())
        );
        assert_eq!(
            parse_brick("10.0.0.1:/b/").unwrap(),
            ("10.0.0.1".into(), "/b".into())
        );
        assert!(parse_brick("h1/data").is_err());
        assert!(parse_brick(":/data").is_err());
        assert!(parse_brick("h:/a/../b").is_err());
        assert!(parse_brick("h@evil:/b").is_err());
        assert!(valid_host("node-1.example").is_ok());
        assert!(valid_host("10.0.0.1").is_ok());
        assert!(valid_host("a/b").is_err());
        assert!(valid_host("-x").is_err());
        assert!(valid_host("").is_err());
    }

    #[test]
    fn volume_names_are_checked() {
        assert!(valid_volume_name("gv0").is_ok());
        assert!(valid_volume_name("my_vol-2").is_ok());
        assert!(valid_volume_name("").is_err());
        assert!(valid_volume_name("-x").is_err());
        assert!(valid_volume_name("a/b").is_err());
        assert!(valid_volume_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn local_hosts_are_recognized() {
        let me = Member {
            uuid: "u".into(),
            host: "node-a".into(),
        };
        assert!(is_local_host("localhost", &me));
        assert!(is_local_host("127.0.0.1", &me));
        assert!(is_local_host("node-a", &me));
        // TEST-NET-1 is never ours.
        assert!(!is_local_host("192.0.2.1", &me));
        assert!(!is_local_host("elsewhere.invalid", &me));
    }
}
