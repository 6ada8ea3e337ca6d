//! A client switching to a grown volume, and the rebalance moving files under it (brick
//! servers on loopback, in this process; no FUSE): files keep their data, owner, mode,
//! times and extended attributes, and a client that learned where files were before
//! they moved still reaches them.

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
        vol.write(f, 0, &data).await.unwrap();
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
