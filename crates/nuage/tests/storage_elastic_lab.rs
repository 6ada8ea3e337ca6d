//! Elastic volumes across machines (the lab; root, as CI runs): two storage machines and
//! a client machine whose mount stays up throughout. add-brick on one member is seen by
//! the other and by the mount; rebalance moves files in the rebalance processes of both
//! members (status rows from each); remove-brick of the first member's brick moves its
//! files to the other member; every file keeps its contents.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::storage::*;
use nuage_lab::Lab;

const NUAGE: &str = env!("CARGO_BIN_EXE_nuage");

fn wait_completed(lab: &Lab, machine: &str, args: &[&str], rows: usize) -> String {
    let t0 = Instant::now();
    loop {
        let out = lab_run(lab, machine, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && text.matches("completed").count() >= rows
            && !text.contains("in progress")
            && !text.contains("failed")
        {
            return text;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "{args:?}: {text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check_all(mnt: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, data) in files {
        let got = std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == *data, "{name}: contents differ");
    }
}

#[test]
fn add_brick_rebalance_and_remove_brick_across_machines() {
    let lab = Lab::create(&format!("se-{}", std::process::id()), 3).expect("lab");
    lab.start_nodes(Path::new(NUAGE)).expect("nodes");
    let ip = |m: &str| lab.addr(m).unwrap().to_string();
    let (ip1, ip2) = (ip("n1"), ip("n2"));
    lab_ok(&lab, "n1", &["peer", "probe", &ip2]);

    let dir = tempfile::tempdir().unwrap();
    let b1 = dir.path().join("n1-b1");
    let b2 = dir.path().join("n2-b2");
    let b3 = dir.path().join("n2-b3");
    for b in [&b1, &b2, &b3] {
        std::fs::create_dir(b).unwrap();
    }
    let (a1, a2, a3) = (
        format!("{ip1}:{}", b1.display()),
        format!("{ip2}:{}", b2.display()),
        format!("{ip2}:{}", b3.display()),
    );
    lab_ok(&lab, "n1", &["volume", "create", "gv", &a1, &a2, "force"]);
    lab_ok(&lab, "n1", &["volume", "start", "gv"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());
    let m = mnt.to_str().unwrap();
    lab_ok(&lab, "n3", &["mount", &format!("{ip1}:/gv"), m]);
    let mut files = BTreeMap::new();
    std::fs::create_dir(mnt.join("sub")).unwrap();
    for i in 0..40 {
        let name = if i % 2 == 0 {
            format!("f{i}")
        } else {
            format!("sub/f{i}")
        };
        let data: Vec<u8> = (0..(i * 10_007))
            .map(|j| (j % 251) as u8 ^ i as u8)
            .collect();
        std::fs::write(mnt.join(&name), &data).unwrap();
        files.insert(name, data);
    }

    // add-brick on n2: a host outside the pool is refused; the new definition is on n1.
    let e = lab_refused(
        &lab,
        "n2",
        &["volume", "add-brick", "gv", "10.213.254.254:/x", "force"],
    );
    assert!(e.contains("peer probe"), "{e}");
    lab_ok(&lab, "n2", &["volume", "add-brick", "gv", &a3, "force"]);
    let info = lab_ok(&lab, "n1", &["volume", "info", "gv"]);
    assert!(info.contains(&format!("Brick3: {a3}")), "{info}");

    // Rebalance from n1: both members run their part.
    lab_ok(&lab, "n1", &["volume", "rebalance", "gv", "start"]);
    let status = wait_completed(&lab, "n1", &["volume", "rebalance", "gv", "status"], 2);
    assert!(
        status.contains("localhost") && status.contains(&ip2),
        "{status}"
    );
    assert!(
        !files_on(&b3).is_empty(),
        "files reached the new brick: {status}"
    );
    let mut all: Vec<String> = [&b1, &b2, &b3].iter().flat_map(|b| files_on(b)).collect();
    all.sort();
    assert_eq!(all, files.keys().cloned().collect::<Vec<_>>(), "{status}");
    check_all(&mnt, &files);

    // remove-brick of n1's brick, from n2: its files go to n2's bricks.
    lab_ok(&lab, "n2", &["volume", "remove-brick", "gv", &a1, "start"]);
    wait_completed(
        &lab,
        "n2",
        &["volume", "remove-brick", "gv", &a1, "status"],
        1,
    );
    lab_ok(&lab, "n2", &["volume", "remove-brick", "gv", &a1, "commit"]);
    assert!(files_on(&b1).is_empty(), "{:?}", files_on(&b1));
    let info = lab_ok(&lab, "n1", &["volume", "info", "gv"]);
    assert!(
        info.contains("Number of Bricks: 2") && !info.contains(&a1),
        "{info}"
    );
    std::thread::sleep(Duration::from_secs(5));
    check_all(&mnt, &files);
    lab_ok(&lab, "n3", &["umount", m]);
}
