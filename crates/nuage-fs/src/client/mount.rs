//! `nuage mount` and `nuage umount`: fetch a volume's layout from a pool member, mount it
//! with FUSE in a background process (as `mount -t glusterfs` does), unmount it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nuage_core::client::ApiClient;

use crate::client::spec::VolumeSpec;
use crate::client::volume::Volume;

/// Default port of a pool member's management API (the node API).
pub const DEFAULT_MGMT_PORT: u16 = 7070;
/// Longest wait for a background mount to appear.
pub const MOUNT_WAIT: Duration = Duration::from_secs(60);
/// How often a mount asks for the volume's definition, to follow changes.
pub const SPEC_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Where background mounts log (one file per mount point), as gluster's /var/log/glusterfs.
pub const LOG_DIR: &str = "/var/log/nuage";

/// `HOST[:PORT]:/VOLUME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub volume: String,
}

impl Source {
    pub fn parse(s: &str) -> anyhow::Result<Source> {
        let (server, volume) = s
            .split_once(":/")
            .ok_or_else(|| anyhow!("`{s}` is not HOST:/VOLUME"))?;
        let volume = volume.trim_end_matches('/');
        if volume.is_empty() || volume.contains('/') {
            bail!("`{s}` is not HOST:/VOLUME (subdirectory mounts are not supported)");
        }
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h.to_owned(),
                p.parse().map_err(|_| anyhow!("bad port in `{s}`"))?,
            ),
            _ => (server.to_owned(), DEFAULT_MGMT_PORT),
        };
        if host.is_empty() {
            bail!("`{s}` has no host");
        }
        Ok(Source {
            host,
            port,
            volume: volume.to_owned(),
        })
    }

    pub fn fsname(&self) -> String {
        format!("{}:/{}", self.host, self.volume)
    }
}

/// The volume's client view, from the pool member named in `src`.
pub async fn fetch_spec(src: &Source) -> anyhow::Result<VolumeSpec> {
    let c = ApiClient::new(&format!("{}:{}", src.host, src.port))?;
    c.get::<VolumeSpec>(&format!("/v1/storage/volumes/{}/spec", src.volume))
        .await
        .with_context(|| format!("getting volume {} from {}", src.volume, src.host))
}

/// Mounts in this process and serves until unmounted.
pub async fn run_foreground(
    src: &Source,
    mountpoint: &Path,
    ping_timeout: Option<Duration>,
) -> anyhow::Result<()> {
    check_mountpoint(mountpoint)?;
    let spec = fetch_spec(src).await?;
    // The mount's own option, else the volume's `network.ping-timeout`, else 42 s.
    let ping_timeout = ping_timeout
        .or(spec.ping_timeout.map(Duration::from_secs))
        .unwrap_or(crate::client::conn::DEFAULT_PING_TIMEOUT);
    let client = format!("{}-{}", hostname(), std::process::id());
    let volume = Volume::connect(spec, &client, ping_timeout).await?;
    let follow = tokio::spawn(follow_changes(src.clone(), volume.clone()));
    let rt = tokio::runtime::Handle::current();
    let (fsname, mp) = (src.fsname(), mountpoint.to_owned());
    let served = tokio::task::spawn_blocking(move || {
        crate::client::fuse::mount_foreground(volume, rt, &fsname, &mp)
    })
    .await;
    follow.abort();
    served?.with_context(|| format!("mounting on {}", mountpoint.display()))
}

/// Asks the pool member the volume was mounted from for the volume's definition every
/// `SPEC_POLL_INTERVAL` and switches the mount to a newer one (add-brick, remove-brick,
/// rebalance's new layouts, options). A member that does not answer is asked again at
/// the next tick; the mount goes on with what it has.
pub async fn follow_changes(src: Source, volume: std::sync::Arc<Volume>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(SPEC_POLL_INTERVAL).await;
        let spec = match fetch_spec(&src).await {
            Ok(s) => {
                failing = false;
                s
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("following volume {}: {e:#}", src.volume);
                }
                failing = true;
                continue;
            }
        };
        if spec.generation == volume.spec().generation {
            continue;
        }
        let generation = spec.generation;
        match volume.update(spec) {
            Ok(()) => tracing::info!("volume {}: switched to generation {generation}", src.volume),
            Err(e) => tracing::warn!("volume {}: not switching: {e:#}", src.volume),
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "client".into())
}

fn check_mountpoint(mp: &Path) -> anyhow::Result<()> {
    let md = std::fs::metadata(mp).with_context(|| format!("mount point {}", mp.display()))?;
    if !md.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    if is_mounted(mp)? {
        bail!("{} is already a nuage mount", mp.display());
    }
    Ok(())
}

/// Whether a nuage volume (a FUSE file system) is mounted on `mp` (per /proc/self/mountinfo).
pub fn is_mounted(mp: &Path) -> anyhow::Result<bool> {
    let mp = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        // The kernel shows `fuse` when the mount was made directly (as root), and
        // `fuse.nuage` when made through fusermount3 with the subtype.
        fields.get(4).map(|p| unescape(p)) == Some(mp.display().to_string())
            && matches!(fields.get(sep + 1), Some(&"fuse.nuage") | Some(&"fuse"))
    }))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The log file of a background mount.
pub fn log_path(mp: &Path) -> PathBuf {
    let name: String = mp
        .display()
        .to_string()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Path::new(LOG_DIR).join(format!("mnt-{name}.log"))
}

/// Starts `nuage mount --foreground …` in its own session, detached, and waits until
/// the mount is there (or the child failed, whose log then says why).
pub fn spawn_background(
    exe: &Path,
    src: &str,
    mountpoint: &Path,
    ping_timeout: Option<Duration>,
) -> anyhow::Result<PathBuf> {
    check_mountpoint(mountpoint)?;
    std::fs::create_dir_all(LOG_DIR).with_context(|| format!("creating {LOG_DIR}"))?;
    let log = log_path(mountpoint);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let start_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount").arg("--foreground");
    if let Some(t) = ping_timeout {
        cmd.arg("--ping-timeout").arg(t.as_secs().to_string());
    }
    cmd.arg(src)
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let started = Instant::now();
    loop {
        if is_mounted(mountpoint)? {
            return Ok(log);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read(&log).unwrap_or_default();
            let tail = String::from_utf8_lossy(&text[(start_len as usize).min(text.len())..]);
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bail!(
                "mount failed ({status}): {}",
                last.trim_start_matches("nuage: error: ")
            );
        }
        if started.elapsed() > MOUNT_WAIT {
            let _ = child.kill();
            bail!(
                "the volume did not appear on {} within {MOUNT_WAIT:?} (see {})",
                mountpoint.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts a nuage mount (its background process then ends).
pub fn umount(mp: &Path) -> anyhow::Result<()> {
    if !is_mounted(mp)? {
        bail!("{} is not a nuage mount", mp.display());
    }
    match nix::mount::umount2(mp, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => bail!("{}: target is busy", mp.display()),
        Err(nix::errno::Errno::EPERM) => {
            // Not root: the setuid helper does it for the user who mounted.
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mp)
                .status()
                .context("running fusermount3")?;
            if !st.success() {
                bail!("fusermount3 -u {} failed ({st})", mp.display());
            }
            Ok(())
        }
        Err(e) => Err(anyhow!("unmounting {}: {e}", mp.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("node1:/gv0").unwrap(),
            Source {
                host: "node1".into(),
                port: DEFAULT_MGMT_PORT,
                volume: "gv0".into()
            }
        );
        assert_eq!(Source::parse("10.0.0.2:7171:/gv0").unwrap().port, 7171);
        assert!(Source::parse("node1/gv0").is_err());
        assert!(Source::parse("node1:/").is_err());
        assert!(Source::parse("node1:/a/b").is_err());
        assert!(Source::parse(":/v").is_err());
        assert_eq!(
            log_path(Path::new("/mnt/a b")),
            Path::new("/var/log/nuage/mnt-mnt-a-b.log")
        );
    }
}
