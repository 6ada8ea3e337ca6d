//! Storage as a user drives it: `nuage up`, `nuage volume …`, `nuage mount`, files
//! through the mount, `nuage umount`. Needs root and /dev/fuse (as CI has).

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::storage::*;

#[test]
fn create_start_mount_use_unmount_stop_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let node = StorageNode::start(tmp.path(), "s1");
    let api = node.api();
    let b1 = tmp.path().join("b1");
    let b2 = tmp.path().join("b2");
    std::fs::create_dir(&b1).unwrap();
    std::fs::create_dir(&b2).unwrap();
    let brick1 = format!("localhost:{}", b1.display());
    let brick2 = format!("localhost:{}", b2.display());

    // Bad input: each a clear error that changes nothing.
    let e = node_refused(&api, &["volume", "create", "gv0", &brick1, &brick2]);
    assert!(e.contains("root partition"), "{e}");
    let missing = format!("localhost:{}/nope", tmp.path().display());
    let e = node_refused(&api, &["volume", "create", "gv0", &missing]);
    assert!(e.contains("does not exist"), "{e}");
    let e = node_refused(
        &api,
        &[
            "volume",
            "create",
            "gv0",
            "replica",
            "2",
            &brick1,
            &brick2,
            "localhost:/x",
            "force",
        ],
    );
    assert!(e.contains("not a multiple of replica"), "{e}");
    let e = node_refused(&api, &["volume", "create", "gv0", "192.0.2.7:/b", "force"]);
    assert!(e.contains("192.0.2.7") && e.contains("peer probe"), "{e}");
    let e = node_refused(&api, &["volume", "create", "bad/name", &brick1, "force"]);
    assert!(e.contains("may hold only"), "{e}");
    let e = node_refused(&api, &["volume", "info"]);
    assert!(e.contains("No volumes present"), "{e}");

    let out = node_ok(
        &api,
        &["volume", "create", "gv0", &brick1, &brick2, "force"],
    );
    assert!(out.contains("volume create: gv0: success"), "{out}");
    let e = node_refused(&api, &["volume", "create", "gv0", &brick1, "force"]);
    assert!(e.contains("already exists"), "{e}");
    let info = node_ok(&api, &["volume", "info", "gv0"]);
    assert!(info.contains("Type: Distribute"), "{info}");
    assert!(info.contains("Status: Created"), "{info}");
    assert!(info.contains("Number of Bricks: 2"), "{info}");
    assert!(info.contains(&format!("Brick1: {brick1}")), "{info}");
    let e = node_refused(&api, &["volume", "create", "other", &brick1, "force"]);
    assert!(e.contains("already part of a volume"), "{e}");

    // Options: only ones that take effect; bad names and values refused.
    let get = node_ok(&api, &["volume", "get", "gv0", "all"]);
    assert!(
        get.contains("network.ping-timeout") && get.contains("42"),
        "{get}"
    );
    let e = node_refused(&api, &["volume", "set", "gv0", "no.such-option", "1"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = node_refused(&api, &["volume", "set", "gv0", "network.ping-timeout", "0"]);
    assert!(e.contains("1 to 3600"), "{e}");
    node_ok(
        &api,
        &["volume", "set", "gv0", "network.ping-timeout", "10"],
    );
    let e = node_refused(
        &api,
        &["volume", "set", "gv0", "cluster.quorum-type", "fixed"],
    );
    assert!(e.contains("auto or none"), "{e}");
    let get = node_ok(&api, &["volume", "get", "gv0", "cluster.quorum-type"]);
    assert!(get.contains("auto"), "{get}");
    let get = node_ok(&api, &["volume", "get", "gv0", "network.ping-timeout"]);
    assert!(get.contains(" 10"), "{get}");
    assert!(node_ok(&api, &["volume", "info", "gv0"]).contains("network.ping-timeout: 10"));

    node_ok(&api, &["volume", "start", "gv0"]);
    let status = node_ok(&api, &["volume", "status", "gv0"]);
    assert_eq!(status.matches(" Y ").count(), 2, "{status}");
    let pool = node_ok(&api, &["pool", "list"]);
    assert!(
        pool.contains("localhost") && pool.contains("Connected"),
        "{pool}"
    );

    // Mount in the background, use it, unmount.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let source = format!("{api}:/gv0");
    node_ok(&api, &["mount", &source, mnt.to_str().unwrap()]);
    let e = node_refused(&api, &["mount", &source, mnt.to_str().unwrap()]);
    assert!(e.contains("already"), "{e}");
    assert_ne!(
        std::fs::metadata(&mnt).unwrap().dev(),
        std::fs::metadata(tmp.path()).unwrap().dev()
    );
    for i in 0..20 {
        std::fs::write(mnt.join(format!("f{i}")), format!("hello {i}")).unwrap();
    }
    let on1 = std::fs::read_dir(&b1).unwrap().count() - 1; // minus .nuage
    let on2 = std::fs::read_dir(&b2).unwrap().count() - 1;
    assert_eq!(on1 + on2, 20);
    assert!(on1 >= 4 && on2 >= 4, "{on1} and {on2}");
    assert_eq!(std::fs::read_to_string(mnt.join("f7")).unwrap(), "hello 7");
    let df = nix::sys::statvfs::statvfs(&mnt).unwrap();
    assert!(df.blocks() > 0);
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "unmounted"
    );
    let e = node_refused(&api, &["umount", mnt.to_str().unwrap()]);
    assert!(e.contains("not a nuage mount"), "{e}");

    // A volume not started cannot be mounted; a started one cannot be deleted.
    let e = node_refused(&api, &["volume", "delete", "gv0"]);
    assert!(e.contains("stopped before deletion"), "{e}");
    node_ok(&api, &["volume", "stop", "gv0"]);
    let e = node_refused(&api, &["mount", &source, mnt.to_str().unwrap()]);
    assert!(e.contains("not started"), "{e}");
    node_ok(&api, &["volume", "delete", "gv0"]);
    assert!(node_ok(&api, &["volume", "list"]).contains("No volumes present"));
    // The files stay on the bricks.
    assert_eq!(
        std::fs::read_to_string(b1.join("f7"))
            .or_else(|_| std::fs::read_to_string(b2.join("f7")))
            .unwrap(),
        "hello 7"
    );

    node.stop();
}

#[test]
fn volumes_and_their_bricks_survive_a_node_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let b1 = tmp.path().join("b1");
    std::fs::create_dir(&b1).unwrap();
    let brick = format!("127.0.0.1:{}", b1.display());
    let node = StorageNode::start(tmp.path(), "s2");
    node_ok(&node.api(), &["volume", "create", "keep", &brick, "force"]);
    node_ok(&node.api(), &["volume", "start", "keep"]);
    node.stop();

    let node = StorageNode::start(tmp.path(), "s2");
    let info = node_ok(&node.api(), &["volume", "info", "keep"]);
    assert!(info.contains("Status: Started"), "{info}");
    let status = node_ok(&node.api(), &["volume", "status", "keep"]);
    assert!(status.contains(" Y "), "{status}");
    node.stop();
}

/// A node with a started replica-2 volume over two bricks in a temporary directory
/// (their paths, and their names as `volume info` gives them), mounted on the last path;
/// the self-heal daemon's interval set to a day: after its first pass at start, heals
/// run only when asked.
type ReplicaTwo = (
    tempfile::TempDir,
    StorageNode,
    String,
    [std::path::PathBuf; 2],
    std::path::PathBuf,
    [String; 2],
);

fn replica_two(name: &str) -> ReplicaTwo {
    let tmp = tempfile::tempdir().unwrap();
    let node = StorageNode::start(tmp.path(), "s1");
    let api = node.api();
    let b1 = tmp.path().join("b1");
    let b2 = tmp.path().join("b2");
    let brick1 = format!("localhost:{}", b1.display());
    let brick2 = format!("localhost:{}", b2.display());
    let out = node_ok(
        &api,
        &[
            "volume", "create", name, "replica", "2", &brick1, &brick2, "force",
        ],
    );
    assert!(out.contains("success"), "{out}");
    node_ok(
        &api,
        &["volume", "set", name, "cluster.heal-timeout", "86400"],
    );
    node_ok(&api, &["volume", "start", name]);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    node_ok(
        &api,
        &["mount", &format!("{api}:/{name}"), mnt.to_str().unwrap()],
    );
    (tmp, node, api, [b1, b2], mnt, [brick1, brick2])
}

#[test]
fn writes_and_truncations_by_others_drop_set_id_bits_on_every_copy() {
    // Mounts leave the set-user-ID and set-group-ID bits to the bricks (the kernel's
    // FUSE_HANDLE_KILLPRIV_V2): a write or a truncation by a caller without CAP_FSETID
    // drops them on every copy, as on a local file system; root's keep them.
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let (_tmp, node, api, bricks, mnt, _) = replica_two("kp");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let set_mode = |name: &str, m: u32| {
        let p = mnt.join(name);
        std::fs::write(&p, "data").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        assert_eq!(mode(&p), m);
    };
    // `cmd` runs as nobody with the file, opened by root for appending, as its stdout:
    // the mount's path is out of nobody's reach (a private temporary directory).
    let as_nobody = |name: &str, cmd: &str| {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join(name))
            .unwrap();
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", cmd])
            .stdout(f)
            .uid(65534)
            .gid(65534)
            .status()
            .unwrap();
        assert!(status.success(), "{cmd}: {status}");
    };
    let expect = |name: &str, m: u32| {
        for b in &bricks {
            assert_eq!(mode(&b.join(name)), m, "{name} on {}", b.display());
        }
        // The mount's view, once the kernel's cached attributes (1 s) have expired.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while mode(&mnt.join(name)) != m && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(mode(&mnt.join(name)), m, "{name} on the mount");
    };

    set_mode("w", 0o6777);
    as_nobody("w", "printf x");
    expect("w", 0o0777);
    assert_eq!(std::fs::read_to_string(mnt.join("w")).unwrap(), "datax");

    set_mode("t", 0o6777);
    as_nobody("t", "truncate -s 1 /dev/stdout");
    expect("t", 0o0777);
    assert_eq!(std::fs::read_to_string(mnt.join("t")).unwrap(), "d");

    // Set-group-ID without group-execute marks mandatory locking: it stays.
    set_mode("g", 0o2666);
    as_nobody("g", "printf x");
    expect("g", 0o2666);
    set_mode("u", 0o4666);
    as_nobody("u", "printf x");
    expect("u", 0o0666);

    // A change of group by the owner (chown's rule: both go, set-group-ID with
    // group-execute), made by the brick's own kernel at its chown.
    std::fs::write(mnt.join("c"), "").unwrap();
    std::os::unix::fs::chown(mnt.join("c"), Some(65534), Some(0)).unwrap();
    set_mode("c", 0o6775);
    as_nobody("c", "chgrp 65534 /dev/stdout");
    expect("c", 0o0775);
    assert_eq!(std::fs::metadata(mnt.join("c")).unwrap().gid(), 65534);

    // Root may keep them.
    set_mode("r", 0o6777);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("r"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"x").unwrap();
    f.set_len(2).unwrap();
    drop(f);
    expect("r", 0o6777);

    // (The mount is the node's child: left mounted, it would outlive the test.)
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    node_ok(&api, &["volume", "stop", "kp"]);
    node.stop();
}

/// `trusted.nuage.*` attribute of a file on a brick (None if absent).
fn brick_xattr(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        nix::libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

#[test]
fn a_replicated_volume_reports_and_heals_a_stale_copy() {
    use nuage_fs::markers::AfrState;
    let (_tmp, node, api, [b1, b2], mnt, [brick1, brick2]) = replica_two("rv");
    assert!(node_ok(&api, &["volume", "info", "rv"]).contains("Type: Replicate"));
    let e = node_refused(&api, &["volume", "heal", "rv", "info", "nonsense"]);
    assert!(e.contains("usage"), "{e}");
    std::fs::write(mnt.join("f"), "good data").unwrap();
    assert_eq!(std::fs::read_to_string(b1.join("f")).unwrap(), "good data");
    assert_eq!(std::fs::read_to_string(b2.join("f")).unwrap(), "good data");
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(2));

    // Make brick 2's copy one that missed a write, as a brick down at the time leaves it:
    // older data, and brick 1's copy accusing it (marker and heal index).
    let id2 = brick_id(&b2);
    std::fs::write(b2.join("f"), "stale").unwrap();
    let st = AfrState {
        dirty: [0; 3],
        pending: vec![(id2, [1, 0, 0])],
    };
    mark_on_brick(&b1, "f", &st);
    // Brick 2 got the change's pre-op before it went away, and kept its `dirty`.
    let kept = AfrState {
        dirty: [1, 0, 0],
        pending: Vec::new(),
    };
    mark_on_brick(&b2, "f", &kept);

    let info = node_ok(&api, &["volume", "heal", "rv", "info"]);
    assert!(
        info.contains(&format!(
            "Brick {brick1}\n/f\nStatus: Connected\nNumber of entries: 1"
        )),
        "{info}"
    );
    // Brick 2's index lists it too (its `dirty`), as gluster's sink bricks do.
    assert!(
        info.contains(&format!(
            "Brick {brick2}\n/f\nStatus: Connected\nNumber of entries: 1"
        )),
        "{info}"
    );
    let summary = node_ok(&api, &["volume", "heal", "rv", "info", "summary"]);
    assert!(
        summary.contains("Number of entries in heal pending: 1"),
        "{summary}"
    );
    let sb = node_ok(&api, &["volume", "heal", "rv", "info", "split-brain"]);
    assert!(
        !sb.contains("/f") && sb.contains("Number of entries in split-brain: 0"),
        "{sb}"
    );

    // The daemon heals it once its interval comes round.
    node_ok(&api, &["volume", "set", "rv", "cluster.heal-timeout", "1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let healed = std::fs::read_to_string(b2.join("f")).unwrap() == "good data"
            && brick_xattr(&b1.join("f"), "trusted.nuage.afr").is_none();
        if healed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not healed by the daemon"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The heal lowered the sink's own `dirty` too: nothing is left to list.
    assert!(
        brick_xattr(&b2.join("f"), "trusted.nuage.afr").is_none(),
        "the healed copy kept its dirty marker"
    );
    let info = node_ok(&api, &["volume", "heal", "rv", "info"]);
    assert_eq!(info.matches("Number of entries: 0").count(), 2, "{info}");
    let out = node_ok(&api, &["volume", "heal", "rv"]);
    assert!(out.contains("has been successful"), "{out}");

    node_ok(&api, &["volume", "stop", "rv"]);
    node.stop();
}

/// The id the volume gave the brick at `b`.
fn brick_id(b: &std::path::Path) -> u32 {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join(".nuage/brick.json")).unwrap()).unwrap();
    j["brick_id"].as_u64().unwrap() as u32
}

/// Sets `trusted.nuage.afr` of a file on a brick to `st` and lists the file in that
/// brick's heal index, as the brick does when markers are not clean.
fn mark_on_brick(brick: &std::path::Path, name: &str, st: &nuage_fs::markers::AfrState) {
    let path = brick.join(name);
    let cp = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let v = st.encode();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        nix::libc::lsetxattr(
            cp.as_ptr(),
            c"trusted.nuage.afr".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {}", path.display());
    let g = nuage_fs::gfid::Gfid::from_slice(&brick_xattr(&path, "trusted.nuage.gfid").unwrap())
        .unwrap();
    std::fs::write(brick.join(".nuage/index").join(g.to_uuid()), "").unwrap();
}

/// A client that dies in the middle of a change leaves `dirty` raised on every copy and
/// no accusation, and the copies may differ. A data change is settled by heal at once
/// (the writer's lock died with it: heal can take it); a metadata change, which takes no
/// lock, once no client can still be in it (`settle::SETTLE_AFTER`). The largest copy
/// wins, equal copies only get their markers lowered.
#[test]
fn a_change_its_client_abandoned_is_settled_by_heal() {
    use nuage_fs::markers::AfrState;
    let (_tmp, node, api, [b1, b2], mnt, _) = replica_two("sv");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(mnt.join("f"), &data).unwrap();
    std::fs::write(mnt.join("same"), "identical").unwrap();
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(2));

    // The writer's last change reached brick 1 only (brick 2's copy is shorter), then it
    // died before its post-op: `dirty` raised on every copy, nobody accused.
    std::fs::OpenOptions::new()
        .write(true)
        .open(b2.join("f"))
        .unwrap()
        .set_len(70_000)
        .unwrap();
    let data_dirty = AfrState {
        dirty: [1, 0, 0],
        pending: Vec::new(),
    };
    // And a metadata change (chmod, chown…) begun on "same" by a client that died.
    let metadata_dirty = AfrState {
        dirty: [0, 1, 0],
        pending: Vec::new(),
    };
    for b in [&b1, &b2] {
        mark_on_brick(b, "f", &data_dirty);
        mark_on_brick(b, "same", &metadata_dirty);
    }

    // Just changed: not listed yet (a client may still be in a change). Heal settles the
    // data change at once: holding the file's lock, no writer can be in it.
    let info = node_ok(&api, &["volume", "heal", "sv", "info"]);
    assert_eq!(info.matches("Number of entries: 0").count(), 2, "{info}");
    node_ok(&api, &["volume", "heal", "sv"]);
    assert_eq!(std::fs::read(b2.join("f")).unwrap(), data);
    assert!(brick_xattr(&b1.join("f"), "trusted.nuage.afr").is_none());
    // The metadata change is left alone…
    assert!(brick_xattr(&b1.join("same"), "trusted.nuage.afr").is_some());

    // …until left alone long enough (settle::SETTLE_AFTER): listed, then settled.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = node_ok(&api, &["volume", "heal", "sv", "info"]);
        if info.matches("Number of entries: 1").count() == 2 {
            break info;
        }
        assert!(std::time::Instant::now() < deadline, "never listed: {info}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(info.contains("/same\n"), "{info}");
    let out = node_ok(&api, &["volume", "heal", "sv"]);
    assert!(out.contains("has been successful"), "{out}");
    assert_eq!(std::fs::read(b2.join("f")).unwrap(), data);
    assert_eq!(std::fs::read(b1.join("f")).unwrap(), data);
    for b in [&b1, &b2] {
        assert_eq!(
            std::fs::read_to_string(b.join("same")).unwrap(),
            "identical"
        );
        for name in ["f", "same"] {
            assert!(
                brick_xattr(&b.join(name), "trusted.nuage.afr").is_none(),
                "{name} on {} still marked",
                b.display()
            );
        }
        assert_eq!(
            std::fs::read_dir(b.join(".nuage/index")).unwrap().count(),
            0
        );
    }
    let info = node_ok(&api, &["volume", "heal", "sv", "info"]);
    assert_eq!(info.matches("Number of entries: 0").count(), 2, "{info}");

    // Through a mount, the file reads whole.
    node_ok(
        &api,
        &["mount", &format!("{api}:/sv"), mnt.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), data);
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    node_ok(&api, &["volume", "stop", "sv"]);
    node.stop();
}

/// Split-brain is never resolved by nuage itself; the administrator resolves it as with
/// gluster's CLI: `volume heal NAME split-brain bigger-file|latest-mtime FILE`, or
/// `source-brick HOST:/PATH [FILE]` (every file in split-brain the brick has a copy of).
#[test]
fn split_brain_is_resolved_as_the_administrator_chooses() {
    use nuage_fs::markers::AfrState;
    let (_tmp, node, api, [b1, b2], mnt, [brick1, brick2]) = replica_two("sb");
    std::fs::create_dir(mnt.join("d")).unwrap();
    for f in ["d/big", "same-size", "one", "two", "fine"] {
        std::fs::write(mnt.join(f), "first version").unwrap();
    }
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(2));

    // Each copy took changes the other missed, and accuses it: split-brain.
    let (id1, id2) = (brick_id(&b1), brick_id(&b2));
    let split = |f: &str, second: &str| {
        std::fs::write(b2.join(f), second).unwrap();
        for (b, other) in [(&b1, id2), (&b2, id1)] {
            let st = AfrState {
                dirty: [0; 3],
                pending: vec![(other, [1, 0, 0])],
            };
            mark_on_brick(b, f, &st);
        }
    };
    split("d/big", "a longer second version");
    split("same-size", "other version");
    split("one", "second");
    split("two", "second");
    let info = node_ok(&api, &["volume", "heal", "sb", "info", "split-brain"]);
    assert_eq!(
        info.matches("Number of entries in split-brain: 4").count(),
        2,
        "{info}"
    );

    // Bad requests: each a clear error that changes nothing.
    // `volume heal sb split-brain ARGS…`
    let sb = |args: &[&str]| -> Vec<String> {
        ["volume", "heal", "sb", "split-brain"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect()
    };
    let refused = |args: &[&str]| {
        let all = sb(args);
        node_refused(&api, &all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let resolved = |args: &[&str]| {
        let all = sb(args);
        node_ok(&api, &all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for (args, why) in [
        (&["biggest", "/x"][..], "usage"),
        (&["bigger-file", "x"], "path from the volume root"),
        (
            &["bigger-file", "/nope"],
            "Lookup failed on /nope: No such file or directory",
        ),
        (&["bigger-file", "/fine"], "File not in split-brain."),
        (&["bigger-file", "/same-size"], "same size"),
        (
            &["source-brick", "localhost:/elsewhere", "/one"],
            "not a brick of volume sb",
        ),
    ] {
        let e = refused(args);
        assert!(e.contains(why), "{args:?}: {e}");
    }
    assert_eq!(
        std::fs::read_to_string(b1.join("one")).unwrap(),
        "first version"
    );

    // The bigger copy wins.
    let out = resolved(&["bigger-file", "/d/big"]);
    assert!(out.contains("Healed /d/big."), "{out}");
    // The copy modified last wins.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(b1.join("same-size"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = resolved(&["latest-mtime", "/same-size"]);
    assert!(out.contains("Healed /same-size."), "{out}");
    // Brick 1's copy wins, for one file named by its id.
    let g = nuage_fs::gfid::Gfid::from_slice(
        &brick_xattr(&b1.join("one"), "trusted.nuage.gfid").unwrap(),
    )
    .unwrap();
    let out = resolved(&["source-brick", &brick1, &format!("gfid:{}", g.to_uuid())]);
    assert!(
        out.contains(&format!("Healed gfid:{}.", g.to_uuid())),
        "{out}"
    );
    // Brick 2's copy wins for every file still in split-brain.
    let out = resolved(&["source-brick", &brick2]);
    assert!(
        out.contains("Healed /two.") && out.contains("Number of healed entries: 1"),
        "{out}"
    );

    for (f, want) in [
        ("d/big", "a longer second version"),
        ("same-size", "other version"),
        ("one", "first version"),
        ("two", "second"),
        ("fine", "first version"),
    ] {
        for b in [&b1, &b2] {
            assert_eq!(std::fs::read_to_string(b.join(f)).unwrap(), want, "{f}");
            assert!(
                brick_xattr(&b.join(f), "trusted.nuage.afr").is_none(),
                "{f} on {} still marked",
                b.display()
            );
        }
    }
    let info = node_ok(&api, &["volume", "heal", "sb", "info"]);
    assert_eq!(info.matches("Number of entries: 0").count(), 2, "{info}");
    node_ok(&api, &["volume", "stop", "sb"]);
    node.stop();
}
