//! `nuage peer …`, `nuage pool list`, `nuage volume …`, `nuage mount`, `nuage umount`:
//! the storage commands, with gluster's words and output shapes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use nuage_core::client::ApiClient;
use nuage_fs::client::mount as fsmount;
use nuage_fs::mgmt::api::Force;
use nuage_fs::mgmt::types::*;

use crate::node_cmd::ApiArg;

#[derive(Subcommand, Debug)]
pub enum PeerCmd {
    /// Add a machine to the trusted storage pool
    Probe { host: String },
    /// Show the other members of the pool
    Status,
    /// Remove a machine from the pool (refused while it holds bricks, unless `force`)
    Detach {
        host: String,
        /// `force`
        #[arg(value_parser = ["force"])]
        force: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// List the members of the pool, this machine included
    List,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume: NAME [replica N] HOST:/PATH… [force]
    Create {
        name: String,
        /// `[replica N] HOST:/PATH… [force]`
        #[arg(num_args = 1.., required = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Start a volume (its brick servers start on their machines)
    Start {
        name: String,
        #[arg(value_parser = ["force"])]
        force: Option<String>,
    },
    /// Stop a volume (its data becomes unreachable until started again)
    Stop {
        name: String,
        #[arg(value_parser = ["force"])]
        force: Option<String>,
    },
    /// Delete a stopped volume (the files stay on the bricks)
    Delete { name: String },
    /// Show volume definitions
    Info {
        /// A volume name, or `all` (default)
        name: Option<String>,
    },
    /// Show the brick servers of volumes
    Status {
        /// A volume name, or `all` (default)
        name: Option<String>,
        /// `detail`
        #[arg(value_parser = ["detail"])]
        detail: Option<String>,
    },
    /// List volume names
    List,
    /// Set a volume option (see `volume get NAME all`)
    Set {
        name: String,
        option: String,
        value: String,
    },
    /// Show a volume option, or `all` of them with their values
    Get { name: String, option: String },
    /// Heal replicated copies now, or show what needs heal: NAME [full|info
    /// [summary|split-brain]]; resolve split-brain: NAME split-brain {bigger-file FILE |
    /// latest-mtime FILE | source-brick HOST:/PATH [FILE]} (FILE: /path or gfid:UUID)
    Heal {
        name: String,
        /// `full`, `info [summary|split-brain]`, or `split-brain POLICY …`
        #[arg(num_args = 0..=4)]
        args: Vec<String>,
    },
    /// Add bricks: NAME [replica N] HOST:/PATH… [force] (new subvolumes, or a higher
    /// replica count: one more copy per replica set, filled by heal)
    #[command(name = "add-brick")]
    AddBrick {
        name: String,
        /// `[replica N] HOST:/PATH… [force]`
        #[arg(num_args = 1.., required = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove bricks: NAME [replica N] HOST:/PATH… start|status|stop|commit|force
    #[command(name = "remove-brick")]
    RemoveBrick {
        name: String,
        /// `[replica N] HOST:/PATH… start|status|stop|commit|force`
        #[arg(num_args = 2.., required = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Spread files over the volume's subvolumes: NAME fix-layout|start|stop|status
    Rebalance {
        name: String,
        #[arg(value_parser = ["fix-layout", "start", "stop", "status"])]
        action: String,
    },
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// HOST[:PORT]:/VOLUME — any member of the pool (PORT: its node API, default 7070)
    pub source: String,
    pub mountpoint: PathBuf,
    /// Stay in the foreground (default: serve the mount from a background process)
    #[arg(long)]
    pub foreground: bool,
    /// Seconds after which an unresponsive brick gives ENOTCONN (default: the volume's
    /// network.ping-timeout, 42 unless set)
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
}

pub async fn peer(cmd: PeerCmd, api: ApiArg) -> anyhow::Result<()> {
    let c = api.client()?;
    match cmd {
        PeerCmd::Probe { host } => {
            let d: Done = c
                .post("/v1/storage/peers", &PeerRequest { host, force: false })
                .await?;
            println!("{}", d.message);
        }
        PeerCmd::Detach { host, force } => {
            let d: Done = c
                .post(
                    "/v1/storage/peers/detach",
                    &PeerRequest {
                        host,
                        force: force.is_some(),
                    },
                )
                .await?;
            println!("{}", d.message);
        }
        PeerCmd::Status => {
            let pool: Vec<MemberStatus> = c.get("/v1/storage/pool").await?;
            let others: Vec<&MemberStatus> = pool.iter().filter(|m| !m.local).collect();
            println!("Number of Peers: {}", others.len());
            for m in others {
                println!();
                println!("Hostname: {}", m.host);
                println!("Uuid: {}", m.uuid);
                let state = if m.connected {
                    "Connected"
                } else {
                    "Disconnected"
                };
                println!("State: Peer in Cluster ({state})");
            }
        }
    }
    Ok(())
}

pub async fn pool(cmd: PoolCmd, api: ApiArg) -> anyhow::Result<()> {
    let PoolCmd::List = cmd;
    let pool: Vec<MemberStatus> = api.client()?.get("/v1/storage/pool").await?;
    let mut t = crate::table::Table::new(&["UUID", "Hostname", "State"]);
    for m in pool {
        let state = if m.connected {
            "Connected"
        } else {
            "Disconnected"
        };
        t.row(vec![m.uuid, m.host, state.into()]);
    }
    print!("{}", t.render());
    Ok(())
}

/// Splits gluster's `[replica N] BRICK…` (the trailing keyword already taken off).
fn replica_and_bricks(
    verb: &str,
    mut args: Vec<String>,
) -> anyhow::Result<(Option<u32>, Vec<String>)> {
    let mut replica = None;
    if args.first().is_some_and(|a| a == "replica") {
        let n = args
            .get(1)
            .ok_or_else(|| anyhow::anyhow!("`replica` needs a count"))?;
        replica = Some(
            n.parse()
                .map_err(|_| anyhow::anyhow!("replica count `{n}` is not a number"))?,
        );
        args.drain(..2);
    }
    if args.is_empty() {
        bail!("volume {verb}: no bricks given (HOST:/PATH …)");
    }
    for b in &args {
        nuage_fs::mgmt::check_brick_arg(b)?;
    }
    Ok((replica, args))
}

/// Splits gluster's `[replica N] BRICK… [force]`.
fn create_args(name: String, mut args: Vec<String>) -> anyhow::Result<CreateVolume> {
    let force = args.last().is_some_and(|a| a == "force");
    if force {
        args.pop();
    }
    let (replica, bricks) = replica_and_bricks(&format!("create {name}"), args)?;
    Ok(CreateVolume {
        name,
        replica: replica.unwrap_or(1),
        bricks,
        force,
    })
}

fn add_brick_args(name: &str, mut args: Vec<String>) -> anyhow::Result<AddBrick> {
    let force = args.last().is_some_and(|a| a == "force");
    if force {
        args.pop();
    }
    let (replica, bricks) = replica_and_bricks(&format!("add-brick {name}"), args)?;
    Ok(AddBrick {
        replica,
        bricks,
        force,
    })
}

fn remove_brick_args(name: &str, mut args: Vec<String>) -> anyhow::Result<RemoveBrick> {
    let action = args.pop().unwrap_or_default();
    if !["start", "status", "stop", "commit", "force"].contains(&action.as_str()) {
        bail!(
            "usage: volume remove-brick NAME [replica N] HOST:/PATH… start|status|stop|commit|force"
        );
    }
    let (replica, bricks) = replica_and_bricks(&format!("remove-brick {name}"), args)?;
    Ok(RemoveBrick {
        replica,
        bricks,
        action,
    })
}

/// gluster's rebalance status table.
fn print_rebalance(rows: &[NodeRebalance]) {
    let mut t = crate::table::Table::new(&[
        "Node",
        "Rebalanced-files",
        "size",
        "scanned",
        "failures",
        "skipped",
        "status",
        "run time in h:m:s",
    ]);
    for r in rows {
        let p = r.progress;
        t.row(vec![
            r.host.clone(),
            p.moved.to_string(),
            human_size(p.bytes),
            p.scanned.to_string(),
            p.failed.to_string(),
            p.skipped.to_string(),
            r.state.name(r.kind).to_owned(),
            format!(
                "{}:{:02}:{:02}",
                r.run_secs / 3600,
                r.run_secs / 60 % 60,
                r.run_secs % 60
            ),
        ]);
    }
    print!("{}", t.render());
    for r in rows {
        if let Some(e) = &r.error {
            println!("{}: {e}", r.host);
        }
    }
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["Bytes", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}{}", UNITS[0])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn print_info(v: &VolumeDef) {
    println!();
    println!("Volume Name: {}", v.name);
    println!("Type: {}", v.kind());
    println!("Volume ID: {}", v.id);
    println!("Status: {}", v.state.name());
    let subvols = v.bricks.len() / v.replica.max(1) as usize;
    if v.replica > 1 {
        println!(
            "Number of Bricks: {} x {} = {}",
            subvols,
            v.replica,
            v.bricks.len()
        );
    } else {
        println!("Number of Bricks: {}", v.bricks.len());
    }
    println!("Transport-type: tcp");
    println!("Bricks:");
    for (i, b) in v.bricks.iter().enumerate() {
        println!("Brick{}: {}:{}", i + 1, b.host, b.path);
    }
    if !v.options.is_empty() {
        println!("Options Reconfigured:");
        for (k, val) in &v.options {
            println!("{k}: {val}");
        }
    }
}

async fn names(c: &ApiClient, name: Option<String>) -> anyhow::Result<Vec<VolumeDef>> {
    Ok(match name.as_deref() {
        None | Some("all") => {
            let all: Vec<VolumeDef> = c.get("/v1/storage/volumes").await?;
            if all.is_empty() {
                bail!("No volumes present");
            }
            all
        }
        Some(n) => vec![c.get(&format!("/v1/storage/volumes/{n}")).await?],
    })
}

pub async fn volume(cmd: VolumeCmd, api: ApiArg) -> anyhow::Result<()> {
    let c = api.client()?;
    match cmd {
        VolumeCmd::Create { name, args } => {
            let req = create_args(name, args)?;
            let v: VolumeDef = c.post("/v1/storage/volumes", &req).await?;
            println!(
                "volume create: {}: success: please start the volume to access data",
                v.name
            );
        }
        VolumeCmd::Start { name, force } => {
            let _: VolumeDef = c
                .post(
                    &format!("/v1/storage/volumes/{name}/start"),
                    &Force {
                        force: force.is_some(),
                    },
                )
                .await?;
            println!("volume start: {name}: success");
        }
        VolumeCmd::Stop { name, force } => {
            let _: VolumeDef = c
                .post(
                    &format!("/v1/storage/volumes/{name}/stop"),
                    &Force {
                        force: force.is_some(),
                    },
                )
                .await?;
            println!("volume stop: {name}: success");
        }
        VolumeCmd::Delete { name } => {
            let d: Done = c.delete(&format!("/v1/storage/volumes/{name}")).await?;
            println!("{}", d.message);
        }
        VolumeCmd::Info { name } => {
            for v in names(&c, name).await? {
                print_info(&v);
            }
        }
        VolumeCmd::Set {
            name,
            option,
            value,
        } => {
            let d: Done = c
                .post(
                    &format!("/v1/storage/volumes/{name}/options"),
                    &nuage_fs::mgmt::api::SetOption { option, value },
                )
                .await?;
            println!("{}", d.message);
        }
        VolumeCmd::Heal { name, args } => heal(&c, &name, &args).await?,
        VolumeCmd::AddBrick { name, args } => {
            let req = add_brick_args(&name, args)?;
            let _: VolumeDef = c
                .post(&format!("/v1/storage/volumes/{name}/add-brick"), &req)
                .await?;
            println!("volume add-brick: success");
        }
        VolumeCmd::RemoveBrick { name, args } => {
            let req = remove_brick_args(&name, args)?;
            if req.action == "status" {
                let rows: Vec<NodeRebalance> = c
                    .get(&format!("/v1/storage/volumes/{name}/remove-brick"))
                    .await?;
                if rows.is_empty() {
                    bail!("volume remove-brick status: failed: remove-brick not started");
                }
                print_rebalance(&rows);
            } else {
                let d: Done = c
                    .post(&format!("/v1/storage/volumes/{name}/remove-brick"), &req)
                    .await?;
                println!("{}", d.message);
            }
        }
        VolumeCmd::Rebalance { name, action } => {
            if action == "status" {
                let rows: Vec<NodeRebalance> = c
                    .get(&format!("/v1/storage/volumes/{name}/rebalance"))
                    .await?;
                if rows.is_empty() {
                    bail!(
                        "volume rebalance: {name}: failed: Rebalance not started for volume {name}"
                    );
                }
                print_rebalance(&rows);
                println!("volume rebalance: {name}: success");
            } else {
                let d: Done = c
                    .post(
                        &format!("/v1/storage/volumes/{name}/rebalance"),
                        &RebalanceRequest { action },
                    )
                    .await?;
                println!("{}", d.message);
            }
        }
        VolumeCmd::Get { name, option } => {
            if option.is_empty()
                || !option
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                bail!("volume get: `{option}` is not an option name");
            }
            let opts: Vec<(String, String)> = c
                .get(&format!(
                    "/v1/storage/volumes/{name}/options?option={option}"
                ))
                .await?;
            let mut t = crate::table::Table::new(&["Option", "Value"]);
            for (k, v) in opts {
                t.row(vec![k, v]);
            }
            print!("{}", t.render());
        }
        VolumeCmd::List => {
            let all: Vec<VolumeDef> = c.get("/v1/storage/volumes").await?;
            if all.is_empty() {
                println!("No volumes present in cluster");
            }
            for v in all {
                println!("{}", v.name);
            }
        }
        VolumeCmd::Status { name, detail } => {
            for v in names(&c, name).await? {
                if v.state != VolumeState::Started {
                    println!("Volume {} is not started", v.name);
                    continue;
                }
                let st: Vec<BrickStatus> = c
                    .get(&format!("/v1/storage/volumes/{}/status", v.name))
                    .await?;
                println!("Status of volume: {}", v.name);
                let mut t =
                    crate::table::Table::new(&["Nuage process", "TCP Port", "Online", "Pid"]);
                for b in &st {
                    t.row(vec![
                        format!("Brick {}:{}", b.host, b.path),
                        b.port.map_or("N/A".into(), |p| p.to_string()),
                        if b.online { "Y".into() } else { "N".into() },
                        b.pid.map_or("N/A".into(), |p| p.to_string()),
                    ]);
                }
                print!("{}", t.render());
                if detail.is_some() {
                    for b in &st {
                        println!(
                            "------------------------------------------------------------------------------"
                        );
                        println!("Brick                : Brick {}:{}", b.host, b.path);
                        println!(
                            "TCP Port             : {}",
                            b.port.map_or("N/A".into(), |p| p.to_string())
                        );
                        println!(
                            "Online               : {}",
                            if b.online { "Y" } else { "N" }
                        );
                        println!(
                            "Pid                  : {}",
                            b.pid.map_or("N/A".into(), |p| p.to_string())
                        );
                    }
                }
                println!();
            }
        }
    }
    Ok(())
}

pub async fn mount(args: MountArgs) -> anyhow::Result<()> {
    let src = fsmount::Source::parse(&args.source)?;
    let ping = args.ping_timeout.map(Duration::from_secs);
    if args.foreground {
        return fsmount::run_foreground(&src, &args.mountpoint, ping).await;
    }
    // Fail early (and in this terminal) on a bad source or volume.
    fsmount::fetch_spec(&src).await?;
    let exe = std::env::current_exe()?;
    let mp = args.mountpoint.clone();
    tokio::task::spawn_blocking(move || fsmount::spawn_background(&exe, &args.source, &mp, ping))
        .await??;
    Ok(())
}

pub fn umount(args: UmountArgs) -> anyhow::Result<()> {
    fsmount::umount(&args.mountpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_arguments_follow_gluster() {
        let r = create_args(
            "gv0".into(),
            vec![
                "replica".into(),
                "2".into(),
                "a:/b1".into(),
                "b:/b2".into(),
                "force".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.replica, 2);
        assert!(r.force);
        assert_eq!(r.bricks, vec!["a:/b1", "b:/b2"]);
        let r = create_args("gv0".into(), vec!["a:/b1".into()]).unwrap();
        assert_eq!((r.replica, r.force), (1, false));
        assert!(
            create_args(
                "gv0".into(),
                vec!["replica".into(), "x".into(), "a:/b".into()]
            )
            .is_err()
        );
        assert!(create_args("gv0".into(), vec!["force".into()]).is_err());
        assert!(create_args("gv0".into(), vec!["a-b".into()]).is_err());
    }

    #[test]
    fn add_and_remove_brick_arguments_follow_gluster() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = add_brick_args("gv0", v(&["replica", "3", "c:/b3", "force"])).unwrap();
        assert_eq!((r.replica, r.force), (Some(3), true));
        assert_eq!(r.bricks, vec!["c:/b3"]);
        let r = add_brick_args("gv0", v(&["c:/b3"])).unwrap();
        assert_eq!((r.replica, r.force), (None, false));
        assert!(add_brick_args("gv0", v(&["force"])).is_err());
        let r = remove_brick_args("gv0", v(&["a:/b1", "start"])).unwrap();
        assert_eq!((r.action.as_str(), r.replica), ("start", None));
        let r = remove_brick_args("gv0", v(&["replica", "1", "a:/b1", "force"])).unwrap();
        assert_eq!((r.action.as_str(), r.replica), ("force", Some(1)));
        let e = remove_brick_args("gv0", v(&["a:/b1", "now"])).unwrap_err();
        assert!(e.to_string().contains("usage"), "{e}");
        assert!(remove_brick_args("gv0", v(&["commit"])).is_err());
        assert_eq!(human_size(0), "0Bytes");
        assert_eq!(human_size(3 << 20), "3.0MB");
    }

    #[test]
    fn split_brain_arguments_follow_gluster() {
        use nuage_fs::client::split_brain::{FileName, Policy};
        let (p, f) = split_brain_args(&["bigger-file", "/a"]).unwrap();
        assert_eq!(
            (p, f),
            (Policy::BiggerFile, Some(FileName::Path("/a".into())))
        );
        let (p, f) = split_brain_args(&["source-brick", "h:/b"]).unwrap();
        assert_eq!((p, f), (Policy::SourceBrick("h:/b".into()), None));
        assert!(split_brain_args(&["latest-mtime"]).is_err());
        assert!(split_brain_args(&["bigger-file", "/a", "/b"]).is_err());
        assert!(split_brain_args(&["source-brick", "h:/b", "rel"]).is_err());
    }
}

/// `volume heal NAME split-brain …`: which copy to keep, of which files (None: every
/// file in split-brain that the source brick has).
fn split_brain_args(
    args: &[&str],
) -> anyhow::Result<(
    nuage_fs::client::split_brain::Policy,
    Option<nuage_fs::client::split_brain::FileName>,
)> {
    use nuage_fs::client::split_brain::{FileName, Policy};
    Ok(match args {
        ["bigger-file", file] => (Policy::BiggerFile, Some(FileName::parse(file)?)),
        ["latest-mtime", file] => (Policy::LatestMtime, Some(FileName::parse(file)?)),
        ["source-brick", brick] => (Policy::SourceBrick((*brick).to_owned()), None),
        ["source-brick", brick, file] => (
            Policy::SourceBrick((*brick).to_owned()),
            Some(FileName::parse(file)?),
        ),
        _ => bail!(
            "usage: volume heal NAME split-brain {{bigger-file FILE | latest-mtime FILE | source-brick HOST:/PATH [FILE]}}"
        ),
    })
}

/// Resolves split-brain as `volume heal NAME split-brain …` asks, printing gluster's lines.
async fn resolve_split_brain(
    spec: &nuage_fs::client::spec::VolumeSpec,
    args: &[&str],
) -> anyhow::Result<()> {
    use nuage_fs::client::split_brain::{Policy, Sets};
    let (policy, file) = split_brain_args(args)?;
    let sets = Sets::connect(spec, &format!("split-brain-{}", std::process::id()))?;
    match (file, &policy) {
        (Some(file), _) => match sets.resolve(&policy, &file).await {
            Ok(()) => println!("Healed {file}."),
            Err(e) => bail!("Healing {file} failed: {e}"),
        },
        (None, Policy::SourceBrick(brick)) => {
            let (healed, failed) = sets.resolve_all_from(brick).await?;
            for f in &healed {
                println!("Healed {f}.");
            }
            for (f, why) in &failed {
                println!("Healing {f} failed: {why}");
            }
            println!("Number of healed entries: {}", healed.len());
            if !failed.is_empty() {
                bail!("Volume heal failed: {} entries not healed.", failed.len());
            }
        }
        (None, _) => unreachable!("split_brain_args names a file for these policies"),
    }
    Ok(())
}

/// What `volume heal` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealView {
    /// `heal NAME`: heal, then report what is left.
    Heal,
    /// `heal NAME full`: crawl every directory, not just the heal index.
    Full,
    Info,
    Summary,
    SplitBrain,
    /// `heal NAME split-brain …`: resolve, as the administrator chose.
    Resolve,
}

async fn heal(c: &ApiClient, name: &str, args: &[String]) -> anyhow::Result<()> {
    use nuage_fs::client::heal_index::{self, State};
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let view = match words[..] {
        [] => HealView::Heal,
        ["full"] => HealView::Full,
        ["info"] => HealView::Info,
        ["info", "summary"] => HealView::Summary,
        ["info", "split-brain"] => HealView::SplitBrain,
        ["split-brain", ..] => {
            split_brain_args(&words[1..])?;
            HealView::Resolve
        }
        _ => {
            bail!("usage: volume heal NAME [full|info [summary|split-brain]|split-brain POLICY …]")
        }
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("volume heal: `{name}` is not a volume name");
    }
    let spec: nuage_fs::client::spec::VolumeSpec =
        c.get(&format!("/v1/storage/volumes/{name}/spec")).await?;
    if spec.replica < 2 {
        bail!("Volume {name} is not of type replicate");
    }
    if view == HealView::Resolve {
        return resolve_split_brain(&spec, &words[1..]).await;
    }
    let client = format!("heal-{}", std::process::id());
    if view == HealView::Full {
        let r = heal_index::full(&spec, &client).await?;
        println!(
            "Launching heal operation to perform full self heal on volume {name} has been successful"
        );
        println!(
            "Files and directories crawled: {}; names made on copies that lacked them: {}; still needing heal: {}; in split-brain: {}; bricks not connected: {}",
            r.scanned,
            r.created,
            r.pending,
            r.split_brain,
            r.not_connected.len()
        );
        for b in &r.not_connected {
            println!("Brick {b}: Transport endpoint is not connected");
        }
        return Ok(());
    }
    let report = heal_index::run(&spec, &client, view == HealView::Heal).await?;
    if view == HealView::Heal {
        println!(
            "Launching heal operation to perform index self heal on volume {name} has been successful"
        );
        let left: usize = report.iter().map(|b| b.entries.len()).sum();
        let down = report.iter().filter(|b| !b.connected).count();
        println!("Entries still needing heal: {left}; bricks not connected: {down}");
        return Ok(());
    }
    for b in &report {
        println!("Brick {}", b.brick);
        let split = b
            .entries
            .iter()
            .filter(|e| e.state == State::SplitBrain)
            .count();
        let status = if b.connected {
            "Connected"
        } else {
            "Transport endpoint is not connected"
        };
        match view {
            HealView::Info => {
                for e in &b.entries {
                    let tag = if e.state == State::SplitBrain {
                        " - Is in split-brain"
                    } else {
                        ""
                    };
                    println!("{}{tag}", e.path);
                }
                println!("Status: {status}");
                if b.connected {
                    println!("Number of entries: {}", b.entries.len());
                } else {
                    println!("Number of entries: -");
                }
            }
            HealView::Summary => {
                println!("Status: {status}");
                println!("Total Number of entries: {}", b.entries.len());
                println!(
                    "Number of entries in heal pending: {}",
                    b.entries.len() - split
                );
                println!("Number of entries in split-brain: {split}");
                println!("Number of entries possibly healing: 0");
            }
            HealView::SplitBrain => {
                for e in b.entries.iter().filter(|e| e.state == State::SplitBrain) {
                    println!("{}", e.path);
                }
                println!("Status: {status}");
                println!("Number of entries in split-brain: {split}");
            }
            HealView::Heal | HealView::Full | HealView::Resolve => {
                unreachable!("handled above")
            }
        }
        println!();
    }
    Ok(())
}
