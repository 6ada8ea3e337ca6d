//! What the storage tests share: the CLI run against a node from the host or inside a lab
//! machine, a guard that unmounts a FUSE mount whatever happens, and the files a brick
//! holds.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use nuage_lab::Lab;

use super::{nuage, stderr, stdout};

const NUAGE: &str = env!("CARGO_BIN_EXE_nuage");

/// `nuage ARGS…` against the node API at `api`.
pub fn node_cli(api: &str, args: &[&str]) -> Output {
    nuage()
        .args(args)
        .env("NUAGE_API", api)
        .stdin(Stdio::null())
        .output()
        .expect("run nuage")
}

/// The stdout of `nuage ARGS…` against `api`, which must succeed.
pub fn node_ok(api: &str, args: &[&str]) -> String {
    let out = node_cli(api, args);
    assert!(
        out.status.success(),
        "nuage {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// The one-line error of a command against `api` that must be refused.
pub fn node_refused(api: &str, args: &[&str]) -> String {
    let out = node_cli(api, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "nuage {args:?} should fail: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("nuage: error: "), "{err}");
    err
}

/// `nuage ARGS…` run inside lab machine `machine` (against that machine's node).
pub fn lab_run(lab: &Lab, machine: &str, args: &[&str]) -> Output {
    lab.exec(machine, NUAGE, args)
        .expect("run nuage in the lab")
}

/// The stdout of `nuage ARGS…` in `machine`, which must succeed.
pub fn lab_ok(lab: &Lab, machine: &str, args: &[&str]) -> String {
    let out = lab_run(lab, machine, args);
    assert!(
        out.status.success(),
        "nuage {args:?} on {machine}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The error of `nuage ARGS…` in `machine`, which must fail with status 1.
pub fn lab_refused(lab: &Lab, machine: &str, args: &[&str]) -> String {
    let out = lab_run(lab, machine, args);
    assert_eq!(out.status.code(), Some(1), "nuage {args:?} should fail");
    stderr(&out)
}

/// Unmounts (lazily) when dropped, so a test that fails midway leaves no dead mount.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A tmpfs of at most `size_mib` MiB mounted on a fresh temporary directory, unmounted
/// (lazily) and removed when dropped. The tests that write a GiB put their bricks here:
/// the disk is shared with other work and its free space varies (a CI run once hit
/// ENOSPC), while the machine's memory is large and private. tmpfs keeps `trusted.*`
/// extended attributes, which is all a brick needs. Needs root, as the lab does.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size_mib: usize) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size_mib}m,mode=0755").as_str()),
        )
        .expect("mount a tmpfs for the bricks (root needed)");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Regular files on a brick, as paths relative to it, sorted: neither link files (mode
/// 01000, pointing at the brick that holds the data) nor nuage's own `.nuage` directory.
pub fn files_on(brick: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![brick.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if e.file_name() == ".nuage" && d == brick {
                continue;
            }
            if md.is_dir() {
                stack.push(e.path());
            } else if md.permissions().mode() & 0o7777 != 0o1000 {
                out.push(e.path().strip_prefix(brick).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A `nuage up` node for storage tests (data under `tmp/data`), with the mounts a test
/// made through it: killed and unmounted when dropped, so a failing test leaves nothing
/// behind; a passing test calls [`StorageNode::stop`].
pub struct StorageNode {
    pub node: super::UpNode,
    pub mounts: Vec<PathBuf>,
}

impl StorageNode {
    /// Starts `nuage up --name NAME` with its data directory in `tmp/data` (kept across
    /// restarts of a node started again on the same `tmp`).
    pub fn start(tmp: &Path, name: &str) -> StorageNode {
        let data = tmp.join("data");
        StorageNode {
            node: super::start_up(&[
                "--api",
                "127.0.0.1:0",
                "--data",
                data.to_str().unwrap(),
                "--name",
                name,
            ]),
            mounts: Vec::new(),
        }
    }

    pub fn api(&self) -> String {
        self.node.api.clone()
    }

    /// Mounts volume `volume` of this node on `mnt` (created here) and remembers it.
    pub fn mount(&mut self, volume: &str, mnt: &Path) {
        std::fs::create_dir_all(mnt).unwrap();
        let api = self.api();
        node_ok(
            &api,
            &["mount", &format!("{api}:/{volume}"), mnt.to_str().unwrap()],
        );
        self.mounts.push(mnt.to_owned());
    }

    /// `nuage umount` of every mount, then SIGTERM: the node must exit cleanly.
    pub fn stop(mut self) {
        let api = self.api();
        for m in std::mem::take(&mut self.mounts) {
            node_ok(&api, &["umount", m.to_str().unwrap()]);
        }
        super::signal(&self.node.child, nix::sys::signal::Signal::SIGTERM);
        let status = super::wait_exit(&mut self.node.child, std::time::Duration::from_secs(30));
        assert!(status.success(), "nuage up exited with {status}");
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = self.node.child.kill();
        let _ = self.node.child.wait();
    }
}

/// A brick directory `tmp/NAME` (not created) and its `localhost:PATH` argument.
pub fn brick(tmp: &Path, name: &str) -> (PathBuf, String) {
    let p = tmp.join(name);
    let arg = format!("localhost:{}", p.display());
    (p, arg)
}
