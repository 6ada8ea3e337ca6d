//! A replica-2 volume across two machines, mounted on a third (the lab; root, as CI
//! runs): a brick machine killed during a large write, the write completing on the other
//! copy, the machine back, `volume heal` making both copies identical.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use nuage_lab::Lab;

const NUAGE: &str = env!("CARGO_BIN_EXE_nuage");
/// Size of the file written while a brick dies (MiB).
const WRITE_MIB: usize = 128;

fn run_in(lab: &Lab, machine: &str, args: &[&str]) -> Output {
    lab.exec(machine, NUAGE, args)
        .expect("run nuage in the lab")
}

fn ok(lab: &Lab, machine: &str, args: &[&str]) -> String {
    let out = run_in(lab, machine, args);
    assert!(
        out.status.success(),
        "nuage {args:?} on {machine}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn chunk(i: usize) -> Vec<u8> {
    (0..1024 * 1024)
        .map(|j| (j as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ i as u8)
        .collect()
}

#[test]
fn a_brick_killed_during_a_write_is_healed_when_it_returns() {
    let lab = Lab::create(&format!("sr-{}", std::process::id()), 3).expect("lab");
    lab.start_nodes(Path::new(NUAGE)).expect("nodes");
    let ip = |m: &str| lab.addr(m).unwrap().to_string();
    let (ip1, ip2) = (ip("n1"), ip("n2"));
    ok(&lab, "n1", &["peer", "probe", &ip2]);
    let dir = tempfile::tempdir().unwrap();
    let b1 = dir.path().join("n1-brick");
    let b2 = dir.path().join("n2-brick");
    let out = ok(
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
    ok(
        &lab,
        "n1",
        &["volume", "set", "rv", "cluster.heal-timeout", "86400"],
    );
    ok(&lab, "n1", &["volume", "start", "rv"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());
    ok(
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

    // n2 (the second brick) dies a quarter of the way through: the write goes on to the
    // first brick, which alone is quorum for replica 2.
    let mut f = std::fs::File::create(mnt.join("big")).unwrap();
    for i in 0..WRITE_MIB {
        if i == WRITE_MIB / 4 {
            lab.kill("n2").unwrap();
        }
        f.write_all(&chunk(i)).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let want: Vec<u8> = (0..WRITE_MIB).flat_map(chunk).collect();
    assert!(
        std::fs::read(b1.join("big")).unwrap() == want,
        "first copy whole"
    );
    assert!(
        std::fs::read(b2.join("big")).unwrap() != want,
        "second copy missed writes"
    );

    // n2 back: its bricks restart; heal info names the file, heal makes the copies equal.
    lab.restart("n2", Path::new(NUAGE)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = ok(&lab, "n1", &["volume", "status", "rv"]);
        if s.matches(" Y ").count() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n2's brick not back: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let info = ok(&lab, "n1", &["volume", "heal", "rv", "info"]);
    assert!(info.contains("/big"), "{info}");
    let out = ok(&lab, "n1", &["volume", "heal", "rv"]);
    assert!(out.contains("Entries still needing heal: 0"), "{out}");
    let c1 = std::fs::read(b1.join("big")).unwrap();
    let c2 = std::fs::read(b2.join("big")).unwrap();
    assert!(c1 == want && c2 == want, "both copies identical after heal");
    let info = ok(&lab, "n1", &["volume", "heal", "rv", "info"]);
    assert_eq!(info.matches("Number of entries: 0").count(), 2, "{info}");
    assert!(std::fs::read(mnt.join("big")).unwrap() == want);
    ok(&lab, "n3", &["umount", mnt.to_str().unwrap()]);
}
