//! A replica-2 volume across two machines, mounted on a third (the lab; root, as CI
//! runs): a 1 GiB write during which one brick's machine is killed, or cut off from the
//! client by a partition; the write completes on the other copy and its fsync holds; once
//! the machine is back, `volume heal` makes both copies identical (SHA-256 compared).
//! The bricks live on a tmpfs (see `Tmpfs`): the shared disk's free space varies.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::storage::*;
use nuage_lab::Lab;

const NUAGE: &str = env!("CARGO_BIN_EXE_nuage");
/// Size of the file written while a brick fails (MiB): the 1 GiB, unless
/// `NUAGE_TEST_WRITE_MIB` says otherwise (for a quick run while developing).
fn write_mib() -> usize {
    std::env::var("NUAGE_TEST_WRITE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// The i-th MiB of the test file: not all zeros, different for every MiB.
fn chunk(i: usize) -> Vec<u8> {
    (0..1024 * 1024)
        .map(|j| (j as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ i as u8)
        .collect()
}

/// SHA-256 (sha256sum's hex) of the file, or of the whole expected content with `None`.
fn sha256(path: Option<&Path>) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.stdout(Stdio::piped());
    match path {
        Some(p) => {
            cmd.arg(p);
        }
        None => {
            cmd.stdin(Stdio::piped());
        }
    }
    let mut child = cmd.spawn().expect("sha256sum (coreutils)");
    if path.is_none() {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..write_mib() {
            stdin.write_all(&chunk(i)).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sha256sum {path:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// How the second brick fails during the write.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// n2, the second brick's machine, is killed (every process in it).
    Kill,
    /// n2 is cut off from n1 and from the client n3 (nftables), its processes running.
    Partition,
}

fn replica_write_survives(fault: Fault) {
    let tag = if fault == Fault::Kill { "sk" } else { "sp" };
    let mut lab = Lab::create(&format!("{tag}-{}", std::process::id()), 3).expect("lab");
    lab.start_nodes(Path::new(NUAGE)).expect("nodes");
    let ip = |m: &str| lab.addr(m).unwrap().to_string();
    let (ip1, ip2) = (ip("n1"), ip("n2"));
    lab_ok(&lab, "n1", &["peer", "probe", &ip2]);
    // Two copies of the file at most, plus room for heal's work.
    let dir = Tmpfs::mount(2 * write_mib() + 512);
    let b1 = dir.path().join("n1-brick");
    let b2 = dir.path().join("n2-brick");
    let out = lab_ok(
        &lab,
        "n1",
        &[
            "volume",
            "create",
            "rv",
            "replica",
            "2",
            &format!("{ip1}:{}", b1.display()),
            &format!("{ip2}:{}", b2.display()),
            "force",
        ],
    );
    assert!(out.contains("success"), "{out}");
    // Heal only when asked (the daemon's first pass is at start).
    lab_ok(
        &lab,
        "n1",
        &["volume", "set", "rv", "cluster.heal-timeout", "86400"],
    );
    lab_ok(&lab, "n1", &["volume", "start", "rv"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());
    lab_ok(
        &lab,
        "n3",
        &[
            "mount",
            "--ping-timeout",
            "5",
            &format!("{ip1}:/rv"),
            mnt.to_str().unwrap(),
        ],
    );

    // The second brick fails a quarter of the way through: the write goes on to the
    // first brick, which alone is quorum for replica 2 (auto: the first brick breaks the
    // tie), and the fsync at the end is acknowledged.
    let mut f = std::fs::File::create(mnt.join("big")).unwrap();
    for i in 0..write_mib() {
        if i == write_mib() / 4 {
            match fault {
                Fault::Kill => {
                    lab.kill("n2").unwrap();
                }
                Fault::Partition => lab.partition(&[vec!["n1", "n3"], vec!["n2"]]).unwrap(),
            }
        }
        f.write_all(&chunk(i)).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let want = sha256(None);
    assert_eq!(sha256(Some(&b1.join("big"))), want, "first copy whole");
    assert_ne!(
        sha256(Some(&b2.join("big"))),
        want,
        "second copy missed writes"
    );

    // n2 back: heal info names the file, heal makes the copies equal.
    match fault {
        Fault::Kill => lab.restart("n2", Path::new(NUAGE)).unwrap(),
        Fault::Partition => lab.heal().unwrap(),
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = lab_ok(&lab, "n1", &["volume", "status", "rv"]);
        if s.matches(" Y ").count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "n2's brick not back: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let info = lab_ok(&lab, "n1", &["volume", "heal", "rv", "info"]);
    assert!(info.contains("/big"), "{info}");
    let out = lab_ok(&lab, "n1", &["volume", "heal", "rv"]);
    assert!(out.contains("Entries still needing heal: 0"), "{out}");
    assert_eq!(sha256(Some(&b1.join("big"))), want, "first copy after heal");
    assert_eq!(
        sha256(Some(&b2.join("big"))),
        want,
        "second copy after heal"
    );
    let info = lab_ok(&lab, "n1", &["volume", "heal", "rv", "info"]);
    assert_eq!(info.matches("Number of entries: 0").count(), 2, "{info}");
    assert_eq!(
        sha256(Some(&mnt.join("big"))),
        want,
        "read through the mount"
    );
    lab_ok(&lab, "n3", &["umount", mnt.to_str().unwrap()]);
}

#[test]
fn a_brick_killed_during_a_write_is_healed_when_it_returns() {
    replica_write_survives(Fault::Kill);
}

#[test]
fn a_brick_partitioned_during_a_write_is_healed_when_the_partition_ends() {
    replica_write_survives(Fault::Partition);
}
