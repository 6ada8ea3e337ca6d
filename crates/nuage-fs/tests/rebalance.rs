//! A client switching to a grown volume, and the rebalance moving files under it (brick
//! servers on loopback, in this process; no FUSE): files keep their data, owner, mode,
//! times and extended attributes; a client that learned where files were before they
//! moved still reaches them with every operation it sends by file id; files held open
//! stay put; directories the new subvolume lacks before fix-layout stay usable.

use std::sync::Arc;
use std::time::Duration;

use nuage_fs::brick::server::Brick;
use nuage_fs::brick::store::{BrickIdentity, Store};
use nuage_fs::client::rebalance::{Counters, Crawler};
use nuage_fs::client::spec::{BrickSpec, VolumeSpec};
use nuage_fs::client::volume::{Volume, new_object};
use nuage_fs::gfid::Gfid;
use nuage_fs::proto::{Creds, SetAttr};
use tokio_util::sync::CancellationToken;

struct Bricks {
    dirs: Vec<tempfile::TempDir>,
    specs: Vec<BrickSpec>,
}

async fn bricks(n: u32, stop: &CancellationToken) -> Bricks {
    let mut dirs = Vec::new();
    let mut specs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let identity = BrickIdentity {
            volume: "vol".into(),
            volume_id: "rebalance-test".into(),
            brick_id: i,
        };
        let store = Store::open(dir.path(), &identity).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        specs.push(BrickSpec {
            id: i,
            host: "localhost".into(),
            path: dir.path().display().to_string(),
            addr: listener.local_addr().unwrap().to_string(),
        });
        tokio::spawn(Brick::new(store, identity).serve(listener, stop.clone()));
        dirs.push(dir);
    }
    Bricks { dirs, specs }
}

fn spec(bricks: &[BrickSpec], epoch: u64, generation: u64) -> VolumeSpec {
    VolumeSpec {
        name: "vol".into(),
        volume_id: "rebalance-test".into(),
        replica: 1,
        bricks: bricks.to_vec(),
        layout_epoch: epoch,
        ping_timeout: None,
        quorum_type: None,
        flush_behind: None,
        generation,
        draining: Vec::new(),
    }
}

fn root() -> Creds {
    Creds::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_move_to_a_new_subvolume_and_stay_reachable() {
    let stop = CancellationToken::new();
    let b = bricks(3, &stop).await;
    let vol: Arc<Volume> = Volume::connect(spec(&b.specs[..2], 1, 1), "t", Duration::from_secs(10))
        .await
        .unwrap();
    let mut made = Vec::new();
    for i in 0..30 {
        let name = format!("file{i}");
        let obj = nuage_fs::proto::NewObject {
            open: Some(libc::O_RDWR),
            ..new_object(libc::S_IFREG | 0o640, root())
        };
        let (found, open) = vol.create(Gfid::ROOT, name.as_bytes(), obj).await.unwrap();
        let f = open.unwrap();
        let data = vec![i as u8; 1000 * i];
        vol.write(f, 0, data.clone()).await.unwrap();
        vol.release(f).await.unwrap();
        vol.setxattr(found.gfid, false, b"user.tag", name.as_bytes(), 0)
            .await
            .unwrap();
        made.push((name, found.gfid, data));
    }
    let link = nuage_fs::proto::NewObject {
        target: Some(b"file1".to_vec()),
        ..new_object(libc::S_IFLNK | 0o777, root())
    };
    let (sym, _) = vol.create(Gfid::ROOT, b"link", link).await.unwrap();

    // The volume grows: the client switches, then learns where every file is (before
    // they move).
    let grown = spec(&b.specs, 2, 2);
    vol.update(grown.clone()).unwrap();
    for (name, g, _) in &made {
        assert_eq!(
            vol.lookup(Gfid::ROOT, name.as_bytes()).await.unwrap().gfid,
            *g
        );
    }
    assert_eq!(vol.readlink(sym.gfid).await.unwrap(), b"file1");

    let crawler = Crawler::new(grown, "rebalancer").unwrap();
    let c = Counters::default();
    crawler.fix_layout(&stop, &c).await.unwrap();
    let c = Counters::default();
    crawler
        .migrate(&[0, 1, 2], &[None, None, None], &stop, &c)
        .await
        .unwrap();
    let p = c.snapshot();
    assert_eq!((p.failed, p.skipped), (0, 0), "{p:?}");
    assert!(p.moved >= 5, "{p:?}");
    // Each name once, on one brick (moves go between the old subvolumes too: every
    // range changed), some on the new one; a second run finds nothing to move.
    let names_on = |i: usize| -> Vec<String> {
        std::fs::read_dir(b.dirs[i].path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let mut all: Vec<String> = (0..3).flat_map(names_on).collect();
    all.sort();
    let mut expected: Vec<String> = made.iter().map(|(n, _, _)| n.clone()).collect();
    expected.push("link".into());
    expected.sort();
    assert_eq!(all, expected);
    assert!(!names_on(2).is_empty());
    let again = Counters::default();
    crawler
        .migrate(&[0, 1, 2], &[None, None, None], &stop, &again)
        .await
        .unwrap();
    let p2 = again.snapshot();
    assert_eq!((p2.scanned, p2.moved, p2.failed), (31, 0, 0), "{p2:?}");

    // The same client, with its stale idea of where files are: metadata, xattrs and
    // links still reach them; data and attributes came along.
    assert_eq!(vol.readlink(sym.gfid).await.unwrap(), b"file1");
    for (name, g, data) in &made {
        assert_eq!(
            vol.getxattr(*g, false, b"user.tag").await.unwrap(),
            name.as_bytes()
        );
        let set = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        assert_eq!(
            vol.setattr(*g, false, set, None).await.unwrap().mode & 0o7777,
            0o600
        );
        let found = vol.lookup(Gfid::ROOT, name.as_bytes()).await.unwrap();
        assert_eq!(found.gfid, *g);
        assert_eq!(found.attr.size, data.len() as u64);
        let f = vol.open(*g, libc::O_RDONLY).await.unwrap();
        let mut got = Vec::new();
        loop {
            let chunk = vol.read(f, got.len() as u64, 1 << 20).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            got.extend(chunk);
        }
        vol.release(f).await.unwrap();
        assert!(got == *data, "{name}");
    }
    // A name that does not exist is still absent (uncommitted layouts: asked everywhere).
    assert_eq!(
        vol.lookup(Gfid::ROOT, b"nothing").await.unwrap_err().0,
        libc::ENOENT
    );
    stop.cancel();
}

/// Creates `name` in the root holding `data`, with two extended attributes.
async fn make_file(vol: &Volume, name: &str, data: &[u8]) -> Gfid {
    let obj = nuage_fs::proto::NewObject {
        open: Some(libc::O_RDWR),
        ..new_object(libc::S_IFREG | 0o644, root())
    };
    let (found, open) = vol.create(Gfid::ROOT, name.as_bytes(), obj).await.unwrap();
    let f = open.unwrap();
    vol.write(f, 0, data.to_vec()).await.unwrap();
    vol.release(f).await.unwrap();
    vol.setxattr(found.gfid, false, b"user.a", name.as_bytes(), 0)
        .await
        .unwrap();
    vol.setxattr(found.gfid, false, b"user.b", b"b", 0)
        .await
        .unwrap();
    found.gfid
}

/// The whole contents of `g`, read through a fresh open.
async fn read_all(vol: &Volume, g: Gfid) -> Vec<u8> {
    let f = vol.open(g, libc::O_RDONLY).await.unwrap();
    let mut got = Vec::new();
    loop {
        let chunk = vol.read(f, got.len() as u64, 1 << 20).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        got.extend(chunk);
    }
    vol.release(f).await.unwrap();
    got
}

/// The brick (index) each name of the root has its data on (link files left out).
fn placement(dirs: &[tempfile::TempDir]) -> std::collections::HashMap<String, usize> {
    use std::os::unix::fs::MetadataExt;
    let mut at = std::collections::HashMap::new();
    for (i, d) in dirs.iter().enumerate() {
        for e in std::fs::read_dir(d.path()).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().into_string().unwrap();
            let link_file = e.metadata().unwrap().mode() == libc::S_IFREG | libc::S_ISVTX;
            if !n.starts_with('.') && !link_file {
                assert!(at.insert(n.clone(), i).is_none(), "{n} on two bricks");
            }
        }
    }
    at
}

fn content(name: &str) -> Vec<u8> {
    format!("contents of {name};").repeat(100).into_bytes()
}

/// Every operation a mount sends by file id (the kernel holds inodes, not names) reaches
/// a file the rebalance moved after this client learned where it was; files held open
/// stay where they are (skipped) and keep taking writes; a second client, knowing
/// nothing, sees each operation's effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_reaches_a_file_moved_under_a_live_client() {
    let stop = CancellationToken::new();
    let b = bricks(3, &stop).await;
    let vol: Arc<Volume> = Volume::connect(spec(&b.specs[..2], 1, 1), "t", Duration::from_secs(10))
        .await
        .unwrap();
    let mut files = Vec::new();
    for i in 0..80 {
        let name = format!("f{i}");
        let g = make_file(&vol, &name, &content(&name)).await;
        files.push((name, g));
    }
    let mut links = Vec::new();
    for i in 0..20 {
        let name = format!("s{i}");
        let obj = nuage_fs::proto::NewObject {
            target: Some(format!("f{i}").into_bytes()),
            ..new_object(libc::S_IFLNK | 0o777, root())
        };
        let (found, _) = vol.create(Gfid::ROOT, name.as_bytes(), obj).await.unwrap();
        links.push((name, found.gfid));
    }
    let mut held = Vec::new();
    for i in 0..12 {
        let name = format!("open{i}");
        let g = make_file(&vol, &name, &content(&name)).await;
        held.push((name, g, vol.open(g, libc::O_RDWR).await.unwrap()));
    }

    // The volume grows; the client learns where everything is, then the files move.
    let grown = spec(&b.specs, 2, 2);
    vol.update(grown.clone()).unwrap();
    for (name, g) in files.iter().chain(&links) {
        assert_eq!(
            vol.lookup(Gfid::ROOT, name.as_bytes()).await.unwrap().gfid,
            *g
        );
    }
    let before = placement(&b.dirs);
    let crawler = Crawler::new(grown.clone(), "rebalancer").unwrap();
    crawler
        .fix_layout(&stop, &Counters::default())
        .await
        .unwrap();
    let local: Vec<Option<std::path::PathBuf>> =
        b.dirs.iter().map(|d| Some(d.path().to_owned())).collect();
    let c = Counters::default();
    crawler
        .migrate(&[0, 1, 2], &local, &stop, &c)
        .await
        .unwrap();
    let after = placement(&b.dirs);
    let moved = |list: &[(String, Gfid)]| -> Vec<(String, Gfid)> {
        list.iter()
            .filter(|(n, _)| before[n] != after[n])
            .cloned()
            .collect()
    };
    let (moved_files, moved_links) = (moved(&files), moved(&links));

    // Open files stayed (skipped), the others that hash elsewhere now moved.
    let hashed = nuage_fs::layout::Layout::even(&[0, 1, 2], Gfid::ROOT, 2, false);
    let should_move: Vec<&String> = held
        .iter()
        .map(|(n, _, _)| n)
        .filter(|n| hashed.hashed(n.as_bytes()) != Some(before[*n] as u32))
        .collect();
    assert!(!should_move.is_empty(), "no open file hashes elsewhere");
    for (n, _, _) in &held {
        assert_eq!(before[n], after[n], "{n} moved while open");
    }
    let p = c.snapshot();
    assert_eq!(
        (p.failed, p.skipped),
        (0, should_move.len() as u64),
        "{p:?}"
    );
    // The operations, each on a different moved file (its location in this client stale).
    const OPS: usize = 11;
    assert!(
        moved_files.len() >= OPS,
        "{} files moved",
        moved_files.len()
    );
    assert!(!moved_links.is_empty());
    let f = |i: usize| &moved_files[i];

    // 0: stat
    let (n, g) = f(0);
    assert_eq!(
        vol.getattr(*g, false, None).await.unwrap().size,
        content(n).len() as u64
    );
    // 1: chmod
    let (_, g) = f(1);
    let set = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    vol.setattr(*g, false, set, None).await.unwrap();
    // 2: truncate(2) by path
    let (_, g) = f(2);
    let set = SetAttr {
        size: Some(7),
        ..Default::default()
    };
    assert_eq!(vol.setattr(*g, false, set, None).await.unwrap().size, 7);
    // 3: open, write, fsync, read back through the same handle
    let (_, g) = f(3);
    let h = vol.open(*g, libc::O_RDWR).await.unwrap();
    vol.write(h, 0, b"NEW".to_vec()).await.unwrap();
    vol.fsync(h, false).await.unwrap();
    assert_eq!(vol.read(h, 0, 3).await.unwrap(), b"NEW");
    vol.release(h).await.unwrap();
    // 4-7: extended attributes
    let (n, g) = f(4);
    assert_eq!(
        vol.getxattr(*g, false, b"user.a").await.unwrap(),
        n.as_bytes()
    );
    let (_, g) = f(5);
    let mut names = vol.listxattr(*g, false).await.unwrap();
    names.sort();
    assert_eq!(names, vec![b"user.a".to_vec(), b"user.b".to_vec()]);
    let (_, g) = f(6);
    vol.setxattr(*g, false, b"user.c", b"c", 0).await.unwrap();
    let (_, g) = f(7);
    vol.removexattr(*g, false, b"user.b").await.unwrap();
    // 8: a hard link
    let (_, g) = f(8);
    assert_eq!(
        vol.link(*g, Gfid::ROOT, b"hard").await.unwrap().attr.nlink,
        2
    );
    // 9: rename
    let (n, _) = f(9);
    vol.rename(Gfid::ROOT, n.as_bytes(), Gfid::ROOT, b"renamed", 0)
        .await
        .unwrap();
    // 10: unlink
    let (n, _) = f(10);
    vol.unlink(Gfid::ROOT, n.as_bytes()).await.unwrap();
    // A moved symbolic link.
    let (_, g) = &moved_links[0];
    let want = links.iter().position(|(_, lg)| lg == g).unwrap();
    assert_eq!(
        vol.readlink(*g).await.unwrap(),
        format!("f{want}").into_bytes()
    );
    // Files held open across the rebalance keep taking writes.
    for (_, _, h) in &held {
        vol.write(*h, 0, b"HELD".to_vec()).await.unwrap();
        vol.release(*h).await.unwrap();
    }

    // A second client, knowing nothing: every effect is there, on the data.
    let fresh: Arc<Volume> = Volume::connect(grown, "t2", Duration::from_secs(10))
        .await
        .unwrap();
    let look = |name: &str| {
        let fresh = fresh.clone();
        let name = name.to_owned();
        async move { fresh.lookup(Gfid::ROOT, name.as_bytes()).await }
    };
    assert_eq!(look(&f(1).0).await.unwrap().attr.mode & 0o7777, 0o600);
    assert_eq!(read_all(&fresh, f(2).1).await, content(&f(2).0)[..7]);
    let mut want = content(&f(3).0);
    want[..3].copy_from_slice(b"NEW");
    assert_eq!(read_all(&fresh, f(3).1).await, want);
    assert_eq!(
        fresh.getxattr(f(6).1, false, b"user.c").await.unwrap(),
        b"c"
    );
    assert_eq!(
        fresh
            .getxattr(f(7).1, false, b"user.b")
            .await
            .unwrap_err()
            .0,
        libc::ENODATA
    );
    let hard = look("hard").await.unwrap();
    assert_eq!((hard.gfid, hard.attr.nlink), (f(8).1, 2));
    assert_eq!(read_all(&fresh, hard.gfid).await, content(&f(8).0));
    assert_eq!(look("renamed").await.unwrap().gfid, f(9).1);
    assert_eq!(look(&f(9).0).await.unwrap_err().0, libc::ENOENT);
    assert_eq!(look(&f(10).0).await.unwrap_err().0, libc::ENOENT);
    for (n, g, _) in &held {
        let mut want = content(n);
        want[..4].copy_from_slice(b"HELD");
        assert_eq!(read_all(&fresh, *g).await, want, "{n}");
    }
    // Closed now, the held files move too; nothing is lost, every name is found.
    let c = Counters::default();
    crawler
        .migrate(&[0, 1, 2], &local, &stop, &c)
        .await
        .unwrap();
    let p = c.snapshot();
    // Also moved: "renamed" if its data is not where the new name hashes; skipped: the
    // file with two hard links.
    assert_eq!(p.failed, 0, "{p:?}");
    assert!(p.moved >= should_move.len() as u64, "{p:?}");
    assert!(p.skipped <= 1, "{p:?}");
    let end = placement(&b.dirs);
    for (n, g, _) in &held {
        assert_eq!(hashed.hashed(n.as_bytes()), Some(end[n] as u32), "{n}");
        assert_eq!(look(n).await.unwrap().gfid, *g);
        let mut want = content(n);
        want[..4].copy_from_slice(b"HELD");
        assert_eq!(read_all(&fresh, *g).await, want, "{n}");
    }
    // Nothing is left behind: each name on exactly one brick (placement asserts it),
    // the removed ones on none.
    assert!(!end.contains_key(&f(10).0));
    assert!(!end.contains_key(&f(9).0));
    stop.cancel();
}

/// After add-brick and before any fix-layout, the new subvolume has no copy of `d`; a
/// lookup *inside* `d` (the kernel keeps `d` cached, so it does not look `d` up again)
/// still finds `d/e` and can create there: the copy of `e` that cannot be made on the
/// new subvolume (no parent there) is left to fix-layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_in_a_directory_the_new_subvolume_lacks_are_found() {
    let stop = CancellationToken::new();
    let b = bricks(3, &stop).await;
    let vol: Arc<Volume> = Volume::connect(spec(&b.specs[..2], 1, 1), "t", Duration::from_secs(10))
        .await
        .unwrap();
    let dir = |mode| new_object(libc::S_IFDIR | mode, root());
    let d = vol.mkdir(Gfid::ROOT, b"d", dir(0o755)).await.unwrap();
    let e = vol.mkdir(d.gfid, b"e", dir(0o750)).await.unwrap();
    vol.update(spec(&b.specs, 2, 2)).unwrap();
    let found = vol.lookup(d.gfid, b"e").await.unwrap();
    assert_eq!((found.gfid, found.attr.mode & 0o7777), (e.gfid, 0o750));
    assert!(found.attr.is_dir());
    // Still usable: a file and a directory made inside, found again.
    let obj = new_object(libc::S_IFREG | 0o644, root());
    let (f, _) = vol.create(e.gfid, b"new", obj).await.unwrap();
    assert_eq!(vol.lookup(e.gfid, b"new").await.unwrap().gfid, f.gfid);
    let sub = vol.mkdir(e.gfid, b"sub", dir(0o700)).await.unwrap();
    assert_eq!(vol.lookup(e.gfid, b"sub").await.unwrap().gfid, sub.gfid);
    for i in 0..12 {
        let name = format!("x{i}");
        let obj = new_object(libc::S_IFREG | 0o644, root());
        let (x, _) = vol.create(sub.gfid, name.as_bytes(), obj).await.unwrap();
        assert_eq!(
            vol.lookup(sub.gfid, name.as_bytes()).await.unwrap().gfid,
            x.gfid
        );
    }
    // fix-layout then makes the copies, and the layout covers the new subvolume.
    let crawler = Crawler::new(spec(&b.specs, 2, 2), "rebalancer").unwrap();
    let c = Counters::default();
    crawler.fix_layout(&stop, &c).await.unwrap();
    assert_eq!(c.snapshot().failed, 0);
    assert!(b.dirs[2].path().join("d/e/sub").is_dir());
    // With the new ranges (a new generation drops cached layouts), every name is found.
    vol.update(spec(&b.specs, 2, 3)).unwrap();
    for i in 0..12 {
        let name = format!("x{i}");
        vol.lookup(sub.gfid, name.as_bytes()).await.unwrap();
    }
    assert_eq!(vol.lookup(e.gfid, b"new").await.unwrap().gfid, f.gfid);
    stop.cancel();
}

/// Three bricks, a volume of the first two holding `count` files named `prefix…` whose
/// names hash to the third once the volume has grown to it: each of them moves. The
/// grown volume's layout is fixed; nothing has moved yet.
struct Moving {
    b: Bricks,
    grown: VolumeSpec,
    names: Vec<String>,
    crawler: Crawler,
}

async fn moving_files(prefix: &str, count: usize, stop: &CancellationToken) -> Moving {
    let b = bricks(3, stop).await;
    let small = spec(&b.specs[..2], 1, 1);
    let vol: Arc<Volume> = Volume::connect(small.clone(), "t", Duration::from_secs(10))
        .await
        .unwrap();
    let hashed = nuage_fs::layout::Layout::even(&[0, 1, 2], Gfid::ROOT, 2, false);
    let names: Vec<String> = (0..count * 10)
        .map(|i| format!("{prefix}{i}"))
        .filter(|n| hashed.hashed(n.as_bytes()) == Some(2))
        .take(count)
        .collect();
    assert_eq!(names.len(), count);
    for name in &names {
        make_file(&vol, name, &content(name)).await;
    }
    let grown = spec(&b.specs, 2, 2);
    let crawler = Crawler::new(grown.clone(), "rebalancer").unwrap();
    crawler
        .fix_layout(stop, &Counters::default())
        .await
        .unwrap();
    Moving {
        b,
        grown,
        names,
        crawler,
    }
}

/// Writers that keep opening, appending to, syncing and closing the files a rebalance is
/// moving lose nothing: a move either sees the file open and skips it, or fences it, and
/// an open that comes during the last steps of the move waits, then reaches the file at
/// its new place. The mover is told nothing of local bricks here, so the brick's fence is
/// the only thing that can keep a write from landing on a copy about to be removed.
/// Meanwhile another client looks every name up, again and again: each lookup finds the
/// file, wherever it is in its move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_racing_a_rebalance_lose_no_acknowledged_write() {
    const WRITERS: usize = 4;
    let stop = CancellationToken::new();
    let Moving {
        b,
        grown,
        names,
        crawler,
    } = moving_files("w", 48, &stop).await;
    let mut expected: std::collections::HashMap<String, Vec<u8>> =
        names.iter().map(|n| (n.clone(), content(n))).collect();

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mine: Vec<(String, Vec<u8>)> = names
            .iter()
            .skip(w)
            .step_by(WRITERS)
            .map(|n| (n.clone(), expected[n].clone()))
            .collect();
        let client = Volume::connect(grown.clone(), &format!("w{w}"), Duration::from_secs(10))
            .await
            .unwrap();
        let done = done.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = mine;
            let mut round = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || round == 0 {
                for (name, data) in &mut mine {
                    let g = client
                        .lookup(Gfid::ROOT, name.as_bytes())
                        .await
                        .unwrap()
                        .gfid;
                    let f = client.open(g, libc::O_RDWR).await.unwrap();
                    let record = format!("[{name} round {round}]").into_bytes();
                    client
                        .write(f, data.len() as u64, record.clone())
                        .await
                        .unwrap();
                    client.fsync(f, false).await.unwrap();
                    client.release(f).await.unwrap();
                    // Acknowledged by fsync: it must be there in the end.
                    data.extend_from_slice(&record);
                }
                round += 1;
                // Now and then, every file of this writer closed for a while.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (mine, round)
        }));
    }
    // And a client that only looks the names up, all along: never "no such file".
    let prober = {
        let client = Volume::connect(grown.clone(), "prober", Duration::from_secs(10))
            .await
            .unwrap();
        let (names, done) = (names.clone(), done.clone());
        tokio::spawn(async move {
            let (mut lookups, mut misses) = (0u64, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for name in &names {
                    lookups += 1;
                    if let Err(e) = client.lookup(Gfid::ROOT, name.as_bytes()).await {
                        misses.push(format!("{name}: {e:?}"));
                    }
                }
            }
            (lookups, misses)
        })
    };
    // Passes until every file has moved (a pass skips the files open at that moment).
    let c = Counters::default();
    let none: Vec<Option<std::path::PathBuf>> = vec![None; 3];
    let mut passes = 0;
    while placement(&b.dirs).values().any(|brick| *brick != 2) {
        passes += 1;
        assert!(passes <= 200, "files still unmoved after 200 passes");
        crawler.migrate(&[0, 1, 2], &none, &stop, &c).await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for w in writers {
        let (mine, r) = w.await.unwrap();
        rounds += r;
        for (name, data) in mine {
            expected.insert(name, data);
        }
    }
    let p = c.snapshot();
    assert_eq!(p.failed, 0, "{p:?}");
    assert_eq!(p.moved, names.len() as u64, "{p:?}");
    let (lookups, misses) = prober.await.unwrap();
    assert!(
        misses.is_empty(),
        "{} of {lookups} lookups failed: {misses:?}",
        misses.len()
    );

    // A client that knows nothing reads every file: each acknowledged write is there.
    let reader: Arc<Volume> = Volume::connect(grown, "reader", Duration::from_secs(10))
        .await
        .unwrap();
    for name in &names {
        let g = reader
            .lookup(Gfid::ROOT, name.as_bytes())
            .await
            .unwrap()
            .gfid;
        let got = read_all(&reader, g).await;
        assert!(
            got == expected[name],
            "{name}: {} bytes, {} expected ({p:?}, {passes} passes, {rounds} rounds)",
            got.len(),
            expected[name].len()
        );
    }
    let after = placement(&b.dirs);
    assert_eq!(after.len(), names.len(), "each file on exactly one brick");
    stop.cancel();
}

/// A client removes and renames files while passes of a rebalance move them: every
/// removal and rename succeeds once, whatever instant of a move it meets (before the
/// copy, during it, held by the move's fences, after the switch), and a removed file
/// never comes back with the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removers_and_renamers_racing_a_rebalance_change_each_name_once() {
    let stop = CancellationToken::new();
    let Moving {
        b,
        grown,
        names,
        crawler,
    } = moving_files("u", 96, &stop).await;

    // Even names are removed, odd ones renamed, one every few hundred microseconds while
    // the passes run.
    let changer = {
        let client = Volume::connect(grown.clone(), "changer", Duration::from_secs(10))
            .await
            .unwrap();
        let names = names.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let r = if i % 2 == 0 {
                    client.unlink(Gfid::ROOT, name.as_bytes()).await
                } else {
                    let new = format!("r{name}");
                    client
                        .rename(Gfid::ROOT, name.as_bytes(), Gfid::ROOT, new.as_bytes(), 0)
                        .await
                };
                if let Err(e) = r {
                    failures.push(format!("{name}: {e:?}"));
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            failures
        })
    };
    let c = Counters::default();
    let none: Vec<Option<std::path::PathBuf>> = vec![None; 3];
    while !changer.is_finished() {
        crawler.migrate(&[0, 1, 2], &none, &stop, &c).await.unwrap();
    }
    let failures = changer.await.unwrap();
    assert!(failures.is_empty(), "{failures:?} ({:?})", c.snapshot());
    // Two more passes over the names left (the renamed files may hash elsewhere).
    for _ in 0..2 {
        crawler.migrate(&[0, 1, 2], &none, &stop, &c).await.unwrap();
    }
    assert_eq!(c.snapshot().failed, 0, "{:?}", c.snapshot());

    // A client that knows nothing: removed names are gone, renamed files are under their
    // new names only, with their contents; nothing else is on the bricks.
    let reader: Arc<Volume> = Volume::connect(grown, "reader", Duration::from_secs(10))
        .await
        .unwrap();
    let mut left = std::collections::BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let old = reader.lookup(Gfid::ROOT, name.as_bytes()).await;
        assert!(old.is_err(), "{name} is still there ({:?})", c.snapshot());
        if i % 2 == 1 {
            let new = format!("r{name}");
            let g = reader
                .lookup(Gfid::ROOT, new.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{new}: {e:?}"))
                .gfid;
            assert_eq!(read_all(&reader, g).await, content(name), "{new}");
            left.insert(new);
        }
    }
    let on_bricks: std::collections::BTreeSet<String> = placement(&b.dirs).into_keys().collect();
    assert_eq!(on_bricks, left, "{:?}", c.snapshot());
    stop.cancel();
}
