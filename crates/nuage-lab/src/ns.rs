//! Namespaces of a lab machine.
//!
//! A machine is a network namespace (made by `ip netns add`, pinned at
//! `/run/netns/<name>`) plus a UTS namespace holding its hostname, pinned by a bind mount
//! on a file in the machine's directory. Processes enter both with `setns(2)` between
//! fork and exec, so nothing but the kernel stands between a process and its machine.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Where `ip netns` pins network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The inode of a namespace file: the namespace's identity, as `/proc/<pid>/ns/net` shows.
pub fn ns_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Creates a UTS namespace whose hostname is `hostname` and pins it at `pin` (a new file).
pub fn create_uts(pin: &Path, hostname: &str) -> anyhow::Result<()> {
    assert!(!hostname.is_empty() && hostname.len() <= 64);
    File::create(pin).with_context(|| format!("cannot create {}", pin.display()))?;
    // Everything the child touches is prepared here: between fork and exec only
    // async-signal-safe calls are allowed, so no allocation happens there.
    let target = CString::new(pin.as_os_str().as_bytes()).context("pin path has a NUL byte")?;
    let host = hostname.as_bytes().to_vec();
    let mut cmd = Command::new("true");
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: the closure calls only unshare, sethostname and mount, all async-signal-safe,
    // on buffers allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::sethostname(host.as_ptr().cast(), host.len()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let rc = libc::mount(
                c"/proc/self/ns/uts".as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .context("cannot create the machine's UTS namespace")?;
    if !status.success() {
        bail!("creating the UTS namespace for {hostname} failed ({status})");
    }
    Ok(())
}

/// Unpins a UTS namespace and removes its file; missing or unmounted pins are fine.
pub fn remove_pin(pin: &Path) -> anyhow::Result<()> {
    if let Ok(c) = CString::new(pin.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; EINVAL (not mounted) and ENOENT are expected.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", pin.display())),
    }
}

/// Makes `cmd` run inside the given network and UTS namespaces.
pub fn enter(cmd: &mut Command, netns: &Path, uts: &Path) -> anyhow::Result<()> {
    let net = File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    let uts = File::open(uts).with_context(|| format!("cannot open {}", uts.display()))?;
    // SAFETY: setns is async-signal-safe; the files are opened (close-on-exec) before the
    // fork and kept alive by the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Writes `value` to a file under `/proc/sys/net` as seen from inside `netns` (these
/// files are per network namespace). Runs on a short-lived thread that joins the
/// namespace, so the calling thread never changes namespace.
pub fn write_netns_sysctl(netns: &Path, key: &str, value: &str) -> anyhow::Result<()> {
    assert!(key.starts_with("/proc/sys/net/"));
    let ns = File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    let key = key.to_owned();
    let value = value.to_owned();
    std::thread::spawn(move || -> anyhow::Result<()> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        std::fs::write(&key, &value).with_context(|| format!("cannot write {key}"))
    })
    .join()
    .expect("sysctl thread panicked")
}
