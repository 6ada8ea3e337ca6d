//! Elastic volumes as a user drives them, through `nuage up`, the CLI and a real FUSE
//! mount that stays mounted throughout: add-brick, rebalance, remove-brick, and a
//! replica count raised by add-brick and filled by `heal full`. Needs root and /dev/fuse.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::storage::*;
use common::*;

/// Polls `status` until every row says `completed` (at most `limit`).
fn wait_completed(api: &str, args: &[&str], limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let out = node_cli(api, args);
        let text = stdout(&out);
        if out.status.success()
            && text.contains("completed")
            && !text.contains("in progress")
            && !text.contains("failed")
        {
            return text;
        }
        assert!(
            t0.elapsed() < limit,
            "{args:?} not completed: {text}{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Writes files in the root and in two directories; returns name → contents.
fn populate(mnt: &Path, tag: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    std::fs::create_dir_all(mnt.join("d/e")).unwrap();
    for (dir, n) in [("", 30), ("d/", 15), ("d/e/", 10)] {
        for i in 0..n {
            let name = format!("{dir}{tag}{i}");
            // Sizes from empty to over one brick I/O (1 MiB), contents unique per file.
            let len = (i * 37_171) % (1_300_000);
            let data: Vec<u8> = (0..len)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8))
                .collect();
            std::fs::write(mnt.join(&name), &data).unwrap();
            files.insert(name, data);
        }
    }
    files
}

/// A thread asking the mount for an absent extended attribute of each file, round after
/// round: the answer must always be "absent" (ENODATA), never ENOENT, while files move.
struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Probe {
    fn start(paths: Vec<PathBuf>) -> Probe {
        use std::os::unix::ffi::OsStrExt;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let attr = std::ffi::CString::new("user.nuage-probe").unwrap();
            let (mut rounds, mut errors) = (0u64, Vec::new());
            while !stop2.load(Ordering::Relaxed) {
                for p in &paths {
                    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
                    match nuage_fs::sys::getxattr(nuage_fs::sys::XTarget::Path(&c), &attr) {
                        Ok(None) => {}
                        other => errors.push(format!("{}: {other:?}", p.display())),
                    }
                }
                rounds += 1;
            }
            (rounds, errors)
        });
        Probe { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (rounds, errors) = self.thread.join().unwrap();
        assert!(rounds >= 1);
        assert!(errors.is_empty(), "after {rounds} rounds: {errors:?}");
    }
}

fn check_all(mnt: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, data) in files {
        let got = std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == *data, "{name}: contents differ after the change");
    }
    // And listed exactly once.
    let listed: Vec<String> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut dedup = listed.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), listed.len(), "a name listed twice: {listed:?}");
    for name in files.keys().filter(|n| !n.contains('/')) {
        assert!(listed.contains(name), "{name} not listed");
    }
}

#[test]
fn add_brick_rebalance_remove_brick_under_a_live_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = StorageNode::start(tmp.path(), "el1");
    let api = run.api();
    let (b1, a1) = brick(tmp.path(), "b1");
    let (b2, a2) = brick(tmp.path(), "b2");
    let (b3, a3) = brick(tmp.path(), "b3");
    node_ok(&api, &["volume", "create", "ev", &a1, &a2, "force"]);
    node_ok(&api, &["volume", "start", "ev"]);
    let mnt = tmp.path().join("mnt");
    run.mount("ev", &mnt);
    let mut files = populate(&mnt, "f");

    // Bad input: a clear error each, and the volume unchanged.
    let missing = format!("localhost:{}/nope", tmp.path().display());
    let e = node_refused(&api, &["volume", "add-brick", "ev", &missing]);
    assert!(e.contains("does not exist"), "{e}");
    std::fs::create_dir(&b3).unwrap();
    let e = node_refused(&api, &["volume", "add-brick", "ev", &a3]);
    assert!(e.contains("root partition"), "{e}");
    let e = node_refused(
        &api,
        &["volume", "add-brick", "ev", "192.0.2.7:/b", "force"],
    );
    assert!(e.contains("peer probe"), "{e}");
    let e = node_refused(&api, &["volume", "add-brick", "ev", &a1, "force"]);
    assert!(e.contains("already part of a volume"), "{e}");
    let e = node_refused(
        &api,
        &["volume", "add-brick", "ev", "replica", "2", &a3, "force"],
    );
    assert!(e.contains("needs 2 bricks"), "{e}");
    let e = node_refused(&api, &["volume", "add-brick", "nosuch", &a3, "force"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = node_refused(&api, &["volume", "rebalance", "ev", "status"]);
    assert!(e.contains("not started"), "{e}");
    let info = node_ok(&api, &["volume", "info", "ev"]);
    assert!(info.contains("Number of Bricks: 2"), "{info}");
    assert!(
        std::fs::read_dir(&b3).unwrap().next().is_none(),
        "nothing written"
    );

    // add-brick, then rebalance: files move to the new brick, all still readable.
    assert!(node_ok(&api, &["volume", "add-brick", "ev", &a3, "force"]).contains("success"));
    let info = node_ok(&api, &["volume", "info", "ev"]);
    assert!(info.contains("Number of Bricks: 3"), "{info}");
    assert!(info.contains(&format!("Brick3: {a3}")), "{info}");
    // Before any rebalance the mount keeps working, old files and new.
    check_all(&mnt, &files);
    files.extend(populate(&mnt, "g"));
    assert!(files_on(&b3).is_empty(), "no range on the new brick yet");

    // Files held open across the rebalance are left where they are (and keep working).
    use std::io::Write;
    // (Three root files whose names hash to the new, third subvolume.)
    let layout = nuage_fs::layout::Layout::even(&[0, 1, 2], nuage_fs::gfid::Gfid::ROOT, 1, true);
    let moving: Vec<String> = (0..30)
        .map(|i| format!("f{i}"))
        .filter(|n| layout.hashed(n.as_bytes()) == Some(2))
        .take(3)
        .collect();
    assert_eq!(moving.len(), 3);
    let mut held: Vec<(String, std::fs::File)> = moving
        .into_iter()
        .map(|name| {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(mnt.join(&name))
                .unwrap();
            (name, f)
        })
        .collect();
    // While files move, the mount keeps being used by inode (the kernel holds the
    // dentries): extended attributes asked of files it may know at their old place.
    let probe = Probe::start(files.keys().map(|n| mnt.join(n)).collect());
    let out = node_ok(&api, &["volume", "rebalance", "ev", "start"]);
    assert!(out.contains("has been started successfully"), "{out}");
    let e = node_refused(&api, &["volume", "rebalance", "ev", "start"]);
    assert!(e.contains("already started"), "{e}");
    let status = wait_completed(
        &api,
        &["volume", "rebalance", "ev", "status"],
        Duration::from_secs(120),
    );
    probe.stop();
    assert!(status.contains("Rebalanced-files"), "{status}");
    let row = status.lines().find(|l| l.starts_with("localhost")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cols[5].parse::<u32>().unwrap() >= 3,
        "the open files skipped: {status}"
    );
    assert_eq!(cols[4], "0", "no failures: {status}");
    let on3 = files_on(&b3);
    assert!(
        on3.len() >= files.len() / 6,
        "{} of {} files moved to the new brick: {on3:?}\n{status}",
        on3.len(),
        files.len()
    );
    assert!(on3.iter().any(|f| f.starts_with("d/e/")), "{on3:?}");
    let mut everywhere: Vec<String> = [&b1, &b2, &b3].iter().flat_map(|b| files_on(b)).collect();
    everywhere.sort();
    assert_eq!(
        everywhere,
        files.keys().cloned().collect::<Vec<_>>(),
        "each file on exactly one brick"
    );
    check_all(&mnt, &files);
    for (name, f) in &mut held {
        f.write_all(b"+appended").unwrap();
        f.sync_all().unwrap();
        files.get_mut(name).unwrap().extend_from_slice(b"+appended");
    }
    drop(held);
    check_all(&mnt, &files);
    // Once closed, a second rebalance moves them if they hash elsewhere.
    node_ok(&api, &["volume", "rebalance", "ev", "start"]);
    let status = wait_completed(
        &api,
        &["volume", "rebalance", "ev", "status"],
        Duration::from_secs(120),
    );
    let mut everywhere: Vec<String> = [&b1, &b2, &b3].iter().flat_map(|b| files_on(b)).collect();
    everywhere.sort();
    assert_eq!(
        everywhere,
        files.keys().cloned().collect::<Vec<_>>(),
        "{status}"
    );
    check_all(&mnt, &files);
    // New files through the same mount land on the new brick too (it follows the layout).
    let before = files_on(&b3).len();
    files.extend(populate(&mnt, "h"));
    assert!(
        files_on(&b3).len() > before + 5,
        "new files reach the new brick"
    );
    check_all(&mnt, &files);

    // remove-brick: refused as it should be, then start → status → commit.
    let e = node_refused(
        &api,
        &["volume", "remove-brick", "ev", &a1, &a2, &a3, "start"],
    );
    assert!(e.contains("every brick"), "{e}");
    let e = node_refused(&api, &["volume", "remove-brick", "ev", &a1, "commit"]);
    assert!(e.contains("start` first"), "{e}");
    let e = node_refused(&api, &["volume", "remove-brick", "ev", &missing, "start"]);
    assert!(e.contains("Incorrect brick"), "{e}");
    let out = node_ok(&api, &["volume", "remove-brick", "ev", &a1, "start"]);
    assert!(out.contains("success"), "{out}");
    let status = wait_completed(
        &api,
        &["volume", "remove-brick", "ev", &a1, "status"],
        Duration::from_secs(120),
    );
    assert!(status.contains("localhost"), "{status}");
    assert!(files_on(&b1).is_empty(), "{:?}", files_on(&b1));
    check_all(&mnt, &files);
    let out = node_ok(&api, &["volume", "remove-brick", "ev", &a1, "commit"]);
    assert!(out.contains("commit: success"), "{out}");
    let info = node_ok(&api, &["volume", "info", "ev"]);
    assert!(info.contains("Number of Bricks: 2"), "{info}");
    assert!(!info.contains(&a1), "{info}");
    // The mount follows the commit (no remount), and every file is still there.
    std::thread::sleep(Duration::from_secs(5));
    check_all(&mnt, &files);
    std::fs::write(mnt.join("after-commit"), "x").unwrap();
    assert_eq!(std::fs::read(mnt.join("after-commit")).unwrap(), b"x");
    assert!(files_on(&b1).is_empty());

    run.stop();
}

#[test]
fn replica_raised_by_add_brick_and_filled_by_heal_full() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = StorageNode::start(tmp.path(), "el2");
    let api = run.api();
    let (b1, a1) = brick(tmp.path(), "r1");
    let (b2, a2) = brick(tmp.path(), "r2");
    let (_, a3) = brick(tmp.path(), "r3");
    node_ok(&api, &["volume", "create", "rv1", &a1, "force"]);
    node_ok(
        &api,
        &["volume", "set", "rv1", "cluster.heal-timeout", "86400"],
    );
    node_ok(&api, &["volume", "start", "rv1"]);
    let mnt = tmp.path().join("mnt");
    run.mount("rv1", &mnt);
    let files = populate(&mnt, "f");
    std::os::unix::fs::symlink("d/e/f1", mnt.join("link")).unwrap();

    let e = node_refused(&api, &["volume", "heal", "rv1", "full"]);
    assert!(e.contains("not of type replicate"), "{e}");
    let e = node_refused(
        &api,
        &["volume", "add-brick", "rv1", "replica", "3", &a2, "force"],
    );
    assert!(e.contains("needs 2 bricks"), "{e}");
    let e = node_refused(&api, &["volume", "rebalance", "rv1", "start"]);
    assert!(e.contains("only 1 brick"), "{e}");

    node_ok(
        &api,
        &["volume", "add-brick", "rv1", "replica", "2", &a2, "force"],
    );
    let info = node_ok(&api, &["volume", "info", "rv1"]);
    assert!(info.contains("Type: Replicate"), "{info}");
    assert!(info.contains("Number of Bricks: 1 x 2 = 2"), "{info}");
    // Before any heal, the mount (switched to two copies by now) still reads everything.
    std::thread::sleep(Duration::from_secs(5));
    check_all(&mnt, &files);
    let out = node_ok(&api, &["volume", "heal", "rv1", "full"]);
    assert!(out.contains("full self heal"), "{out}");
    assert!(out.contains("still needing heal: 0"), "{out}");
    // Both copies identical, file by file.
    assert_eq!(files_on(&b1), files_on(&b2));
    for (name, data) in &files {
        assert!(
            std::fs::read(b2.join(name)).unwrap() == *data,
            "{name} on the new copy"
        );
    }
    assert_eq!(
        std::fs::read_link(b2.join("link")).unwrap(),
        Path::new("d/e/f1")
    );
    let info = node_ok(&api, &["volume", "heal", "rv1", "info", "summary"]);
    assert!(!info.contains("Total Number of entries: 1"), "{info}");

    // The mount switched to two copies without a remount: new writes reach both.
    let t0 = Instant::now();
    loop {
        std::fs::write(mnt.join("late"), "both").unwrap();
        if std::fs::read(b2.join("late")).is_ok_and(|d| d == b"both") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the mount never wrote to the new copy"
        );
        std::fs::remove_file(mnt.join("late")).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(std::fs::read(b1.join("late")).unwrap(), b"both");
    check_all(&mnt, &files);

    // Lowering the replica count again needs force, and keeps every file.
    let e = node_refused(
        &api,
        &[
            "volume",
            "remove-brick",
            "rv1",
            "replica",
            "1",
            &a2,
            "commit",
        ],
    );
    assert!(e.contains("force"), "{e}");
    let e = node_refused(
        &api,
        &[
            "volume",
            "remove-brick",
            "rv1",
            "replica",
            "1",
            &a3,
            "force",
        ],
    );
    assert!(e.contains("Incorrect brick"), "{e}");
    node_ok(
        &api,
        &[
            "volume",
            "remove-brick",
            "rv1",
            "replica",
            "1",
            &a2,
            "force",
        ],
    );
    let info = node_ok(&api, &["volume", "info", "rv1"]);
    assert!(info.contains("Type: Distribute"), "{info}");
    std::thread::sleep(Duration::from_secs(5));
    check_all(&mnt, &files);

    run.stop();
}

#[test]
fn a_copy_added_by_add_brick_is_filled_by_the_self_heal_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = StorageNode::start(tmp.path(), "el3");
    let api = run.api();
    let (b1, a1) = brick(tmp.path(), "s1");
    let (b2, a2) = brick(tmp.path(), "s2");
    node_ok(&api, &["volume", "create", "sv", &a1, "force"]);
    node_ok(&api, &["volume", "set", "sv", "cluster.heal-timeout", "1"]);
    node_ok(&api, &["volume", "start", "sv"]);
    let mnt = tmp.path().join("mnt");
    run.mount("sv", &mnt);
    let files = populate(&mnt, "f");
    node_ok(&api, &["umount", mnt.to_str().unwrap()]);
    run.mounts.clear();

    node_ok(
        &api,
        &["volume", "add-brick", "sv", "replica", "2", &a2, "force"],
    );
    // No `heal full`: the daemon (every second here) heals from the root down.
    let t0 = Instant::now();
    while files_on(&b2) != files_on(&b1) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the daemon did not fill the new copy: {:?}",
            files_on(&b2)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let t0 = Instant::now();
    loop {
        let same = files
            .iter()
            .all(|(name, data)| std::fs::read(b2.join(name)).is_ok_and(|d| d == *data));
        if same {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "data not healed");
        std::thread::sleep(Duration::from_millis(500));
    }
    run.stop();
}
