//! Storage across machines (the lab; root, as CI runs): a pool of two storage machines
//! and a client machine, a distributed volume over both, a FUSE mount on the client,
//! definitions on every member, and a storage machine lost under a mounted volume.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::storage::*;
use nuage_lab::Lab;

const NUAGE: &str = env!("CARGO_BIN_EXE_nuage");

#[test]
fn a_distributed_volume_over_two_machines_mounted_on_a_third() {
    let lab = Lab::create(&format!("st-{}", std::process::id()), 3).expect("lab");
    lab.start_nodes(Path::new(NUAGE)).expect("nodes");
    let ip = |m: &str| lab.addr(m).unwrap().to_string();
    let (ip1, ip2) = (ip("n1"), ip("n2"));

    // The pool: probe from n1; both members see each other.
    let out = lab_ok(&lab, "n1", &["peer", "probe", &ip2]);
    assert!(out.contains("peer probe: success"), "{out}");
    let status = lab_ok(&lab, "n2", &["peer", "status"]);
    assert!(status.contains("Number of Peers: 1"), "{status}");
    assert!(
        status.contains(&ip1) && status.contains("Connected"),
        "{status}"
    );
    let pool = lab_ok(&lab, "n1", &["pool", "list"]);
    assert!(pool.contains(&ip2) && pool.contains("localhost"), "{pool}");

    // Bricks on both machines (their own directories on this host's file system).
    let dir = tempfile::tempdir().unwrap();
    let b1 = dir.path().join("n1-brick");
    let b2 = dir.path().join("n2-brick");
    std::fs::create_dir(&b1).unwrap();
    std::fs::create_dir(&b2).unwrap();
    let e = lab_refused(
        &lab,
        "n1",
        &[
            "volume",
            "create",
            "gv0",
            &format!("10.213.254.254:{}", b1.display()),
            "force",
        ],
    );
    assert!(e.contains("peer probe"), "{e}");
    let out = lab_ok(
        &lab,
        "n1",
        &[
            "volume",
            "create",
            "gv0",
            &format!("{ip1}:{}", b1.display()),
            &format!("{ip2}:{}", b2.display()),
            "force",
        ],
    );
    assert!(out.contains("success"), "{out}");
    // The definition is on every member: start it from the other one.
    let info = lab_ok(&lab, "n2", &["volume", "info", "gv0"]);
    assert!(
        info.contains(&format!("Brick2: {ip2}:{}", b2.display())),
        "{info}"
    );
    lab_ok(&lab, "n2", &["volume", "start", "gv0"]);
    let status = lab_ok(&lab, "n1", &["volume", "status", "gv0"]);
    assert_eq!(status.matches(" Y ").count(), 2, "{status}");
    // A member holding bricks cannot leave.
    let e = lab_refused(&lab, "n1", &["peer", "detach", &ip2]);
    assert!(e.contains("hosts one or more bricks"), "{e}");

    // The client machine mounts from either member.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());
    let m = mnt.to_str().unwrap();
    lab_ok(
        &lab,
        "n3",
        &["mount", "--ping-timeout", "5", &format!("{ip2}:/gv0"), m],
    );
    for i in 0..20 {
        std::fs::write(mnt.join(format!("file{i}")), format!("data {i}")).unwrap();
    }
    let count = |b: &Path| std::fs::read_dir(b).unwrap().count() - 1;
    let (on1, on2) = (count(&b1), count(&b2));
    assert_eq!(on1 + on2, 20);
    assert!(on1 >= 4 && on2 >= 4, "{on1} / {on2}");

    // A partition between the client and n2: n2's files give ENOTCONN after the ping
    // timeout (5 s here), never a hang; n1's stay readable; after the partition heals,
    // the client reconnects by itself.
    let on_n2: Vec<String> = std::fs::read_dir(&b2)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".nuage")
        .collect();
    let on_n1: Vec<String> = std::fs::read_dir(&b1)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".nuage")
        .collect();
    let mut lab = lab;
    lab.partition(&[vec!["n1", "n3"], vec!["n2"]]).unwrap();
    let started = Instant::now();
    let e = std::fs::read_to_string(mnt.join(&on_n2[0])).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(nix::errno::Errno::ENOTCONN as i32),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert!(
        std::fs::read_to_string(mnt.join(&on_n1[0]))
            .unwrap()
            .starts_with("data ")
    );
    lab.heal().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match std::fs::read_to_string(mnt.join(&on_n2[0])) {
            Ok(s) => {
                assert!(s.starts_with("data "));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::ENOTCONN as i32));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("n2 not back after the partition healed: {e}"),
        }
    }

    // n2 goes away: its files give ENOTCONN (not a hang), n1's stay readable.
    lab.kill("n2").unwrap();
    let started = Instant::now();
    let mut enotconn = 0;
    let mut readable = 0;
    for i in 0..20 {
        match std::fs::read_to_string(mnt.join(format!("file{i}"))) {
            Ok(s) => {
                assert_eq!(s, format!("data {i}"));
                readable += 1;
            }
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(nix::errno::Errno::ENOTCONN as i32),
                    "file{i}: {e}"
                );
                enotconn += 1;
            }
        }
    }
    assert_eq!(readable, on1, "files on n1 stay readable");
    assert_eq!(enotconn, on2);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    lab_ok(&lab, "n3", &["umount", m]);

    // A lost member can be forced out of the pool.
    let out = lab_ok(&lab, "n1", &["peer", "detach", &ip2, "force"]);
    assert!(out.contains("peer detach: success"), "{out}");
    let status = lab_ok(&lab, "n1", &["peer", "status"]);
    assert!(status.contains("Number of Peers: 0"), "{status}");
}
