//! Real FUSE mounts of replicated volumes (brick servers on loopback, in this process,
//! each stoppable and restartable on its port): data on every copy, change markers that
//! name the copy that missed a write, quorum, heal. Needs root and /dev/fuse.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nuage_fs::brick::server::Brick;
use nuage_fs::brick::store::{BrickIdentity, Store, XATTR_AFR};
use nuage_fs::client::fuse::mount_background;
use nuage_fs::client::heal_index::{self, State};
use nuage_fs::client::spec::{BrickSpec, VolumeSpec};
use nuage_fs::client::volume::Volume;
use nuage_fs::markers::{AfrState, Kind};
use tokio_util::sync::CancellationToken;

struct Cluster {
    rt: tokio::runtime::Runtime,
    bricks: Vec<tempfile::TempDir>,
    stops: Vec<CancellationToken>,
    spec: VolumeSpec,
}

impl Cluster {
    fn start(n: u32, replica: u32) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let mut c = Cluster {
            rt,
            bricks: Vec::new(),
            stops: Vec::new(),
            spec: VolumeSpec {
                name: "rvol".into(),
                volume_id: "replica-test-volume".into(),
                replica,
                bricks: Vec::new(),
                layout_epoch: 1,
                ping_timeout: None,
                quorum_type: None,
                flush_behind: None,
                generation: 1,
                draining: Vec::new(),
            },
        };
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            c.bricks.push(dir);
            c.stops.push(CancellationToken::new());
            let addr = c.serve(i as usize, "127.0.0.1:0");
            c.spec.bricks.push(BrickSpec {
                id: i,
                host: "localhost".into(),
                path: c.bricks[i as usize].path().display().to_string(),
                addr,
            });
        }
        c
    }

    fn identity(&self, i: usize) -> BrickIdentity {
        BrickIdentity {
            volume: "rvol".into(),
            volume_id: "replica-test-volume".into(),
            brick_id: i as u32,
        }
    }

    /// Serves brick `i` on `addr`; returns the address it listens on.
    fn serve(&mut self, i: usize, addr: &str) -> String {
        let identity = self.identity(i);
        let store = Store::open(self.bricks[i].path(), &identity).unwrap();
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        self.stops[i] = CancellationToken::new();
        self.rt
            .spawn(Brick::new(store, identity).serve(listener, self.stops[i].clone()));
        addr
    }

    /// Stops brick `i`'s server (its connections close).
    fn kill(&self, i: usize) {
        self.stops[i].cancel();
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Starts brick `i` again on its old port.
    fn revive(&mut self, i: usize) {
        let addr = self.spec.bricks[i].addr.clone();
        self.serve(i, &addr);
        // The client retries a copy found down at most once a second.
        std::thread::sleep(Duration::from_millis(1200));
    }

    fn mount(&self) -> (tempfile::TempDir, fuser::BackgroundSession) {
        self.mount_spec(self.spec.clone())
    }

    /// A mount of the volume as `spec` describes it (brick addresses may differ).
    fn mount_spec(&self, spec: VolumeSpec) -> (tempfile::TempDir, fuser::BackgroundSession) {
        let mnt = tempfile::tempdir().unwrap();
        let vol: Arc<Volume> = self
            .rt
            .block_on(Volume::connect(
                spec,
                "replica-test-client",
                Duration::from_secs(42),
            ))
            .unwrap();
        let session =
            mount_background(vol, self.rt.handle().clone(), "localhost:/rvol", mnt.path()).unwrap();
        let parent_dev = fs::metadata(mnt.path().parent().unwrap()).unwrap().dev();
        for _ in 0..200 {
            if fs::metadata(mnt.path())
                .map(|m| m.dev() != parent_dev)
                .unwrap_or(false)
            {
                return (mnt, session);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the volume did not appear on {}", mnt.path().display());
    }

    /// The markers of a file's copy on brick `i` (clean when the attribute is absent).
    fn markers(&self, i: usize, rel: &str) -> AfrState {
        let p = self.bricks[i].path().join(rel);
        let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let cn = std::ffi::CString::new(XATTR_AFR).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENODATA),
                "{}: {e}",
                p.display()
            );
            return AfrState::default();
        }
        buf.truncate(n as usize);
        AfrState::decode(&buf).unwrap()
    }

    fn on_brick(&self, i: usize, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.bricks[i].path().join(rel)).ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
        }
    }
}

fn write_file(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed)
        .collect()
}

#[test]
fn replica_3_keeps_every_copy_and_names_the_one_that_missed_writes() {
    let mut c = Cluster::start(3, 3);
    let (mnt, session) = c.mount();
    let m = mnt.path();

    // Everything lands on every copy, with clean markers.
    fs::create_dir(m.join("d")).unwrap();
    let big = payload(1, 3 * 1024 * 1024 + 17);
    write_file(&m.join("d/big"), &big).unwrap();
    write_file(&m.join("small"), b"hello").unwrap();
    write_file(&m.join("d/gone"), b"removed while brick 2 is down").unwrap();
    for i in 0..3 {
        assert_eq!(
            c.on_brick(i, "d/big").as_deref(),
            Some(&big[..]),
            "brick {i}"
        );
        assert_eq!(c.on_brick(i, "small").as_deref(), Some(&b"hello"[..]));
        assert!(c.markers(i, "d/big").is_clean(), "brick {i}");
        assert!(c.markers(i, "d").is_clean(), "brick {i}");
    }
    assert_eq!(fs::read(m.join("d/big")).unwrap(), big);

    // One copy down: changes still succeed (2 of 3 is a majority), and the copies that
    // made them accuse the one that did not.
    c.kill(2);
    let big2 = payload(2, 2 * 1024 * 1024);
    write_file(&m.join("d/big"), &big2).unwrap();
    write_file(&m.join("d/new"), b"made while brick 2 was down").unwrap();
    fs::remove_file(m.join("d/gone")).unwrap();
    fs::create_dir(m.join("d/sub")).unwrap();
    write_file(&m.join("d/sub/deep"), b"deep").unwrap();
    assert_eq!(fs::read(m.join("d/big")).unwrap(), big2);
    for i in 0..2 {
        let st = c.markers(i, "d/big");
        assert!(st.accuses(2, Kind::Data), "brick {i}: {st:?}");
        assert!(!st.accuses(0, Kind::Data) && !st.accuses(1, Kind::Data));
        assert_eq!(st.dirty, [0; 3], "post-op lowered dirty: {st:?}");
        assert!(c.markers(i, "d").accuses(2, Kind::Entry), "brick {i}");
        assert_eq!(c.on_brick(i, "d/big").as_deref(), Some(&big2[..]));
    }
    assert_eq!(c.on_brick(2, "d/big").as_deref(), Some(&big[..]), "missed");
    assert!(c.on_brick(2, "d/new").is_none());
    assert!(c.on_brick(2, "d/gone").is_some());

    // Two copies down: no quorum, changes refused, nothing changes.
    c.kill(1);
    let e = write_file(&m.join("small"), b"refused").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    assert_eq!(c.on_brick(0, "small").as_deref(), Some(&b"hello"[..]));
    // Reads still work from a good copy.
    assert_eq!(fs::read(m.join("d/big")).unwrap(), big2);

    c.revive(1);
    c.revive(2);
    write_file(&m.join("after"), b"all back").unwrap();
    for i in 0..3 {
        assert_eq!(c.on_brick(i, "after").as_deref(), Some(&b"all back"[..]));
    }

    // Access heals: the names brick 2 missed are made (new ones) or removed (deleted
    // ones), then the files' data follows. (No readdir here: its attributes would keep
    // the kernel from looking names up again, and lookups are what heal.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = fs::metadata(m.join("d"));
        let _ = fs::read(m.join("d/new"));
        let _ = fs::read(m.join("d/big"));
        let _ = fs::metadata(m.join("d/sub"));
        let _ = fs::read(m.join("d/sub/deep"));
        let done = c.on_brick(2, "d/new").as_deref() == Some(&b"made while brick 2 was down"[..])
            && c.on_brick(2, "d/big").as_deref() == Some(&big2[..])
            && c.on_brick(2, "d/gone").is_none()
            && c.on_brick(2, "d/sub/deep").as_deref() == Some(&b"deep"[..])
            && (0..3).all(|i| {
                c.markers(i, "d").is_clean()
                    && c.markers(i, "d/big").is_clean()
                    && c.markers(i, "d/sub").is_clean()
            });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "brick 2 not healed: new {:?} big {} gone {} deep {:?}, markers d {:?} big {:?} sub {:?}",
            c.on_brick(2, "d/new"),
            c.on_brick(2, "d/big").as_deref() == Some(&big2[..]),
            c.on_brick(2, "d/gone").is_none(),
            c.on_brick(2, "d/sub/deep"),
            (0..3).map(|i| c.markers(i, "d")).collect::<Vec<_>>(),
            (0..3).map(|i| c.markers(i, "d/big")).collect::<Vec<_>>(),
            (0..3)
                .map(|i| c.bricks[i]
                    .path()
                    .join("d/sub")
                    .is_dir()
                    .then(|| c.markers(i, "d/sub")))
                .collect::<Vec<_>>(),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(session);
}

#[test]
fn replica_2_quorum_follows_the_first_brick() {
    let mut c = Cluster::start(2, 2);
    let (mnt, session) = c.mount();
    let m = mnt.path();
    write_file(&m.join("f"), b"one").unwrap();
    assert_eq!(c.on_brick(0, "f").as_deref(), Some(&b"one"[..]));
    assert_eq!(c.on_brick(1, "f").as_deref(), Some(&b"one"[..]));

    // Second brick down: the first one alone is quorum (gluster's tie-break).
    c.kill(1);
    write_file(&m.join("f"), b"two").unwrap();
    assert!(c.markers(0, "f").accuses(1, Kind::Data));
    assert_eq!(c.on_brick(1, "f").as_deref(), Some(&b"one"[..]));
    c.revive(1);

    // First brick down: the second alone is not quorum; writes are refused.
    c.kill(0);
    let e = write_file(&m.join("g"), b"refused").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .and_then(|mut f| f.write_all(b"x").and_then(|_| f.sync_all()))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    assert!(c.on_brick(1, "g").is_none());
    drop(session);
}

#[test]
fn a_distributed_replicated_volume_spreads_names_over_replica_sets() {
    let c = Cluster::start(4, 2);
    let (mnt, session) = c.mount();
    let m = mnt.path();
    for i in 0..20 {
        write_file(&m.join(format!("f{i}")), format!("data {i}").as_bytes()).unwrap();
    }
    let count = |b: usize| {
        (0..20)
            .filter(|i| c.on_brick(b, &format!("f{i}")).is_some())
            .count()
    };
    let (b0, b1, b2, b3) = (count(0), count(1), count(2), count(3));
    assert_eq!(b0, b1, "set 0's copies hold the same names");
    assert_eq!(b2, b3, "set 1's copies hold the same names");
    assert_eq!(b0 + b2, 20);
    assert!(b0 >= 4 && b2 >= 4, "{b0} / {b2}");
    for i in 0..20 {
        assert_eq!(
            fs::read_to_string(m.join(format!("f{i}"))).unwrap(),
            format!("data {i}")
        );
    }
    drop(session);
}

/// Waits (up to a minute) until every copy of `rel` holds `want` with clean markers.
fn wait_healed(c: &Cluster, rel: &str, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let healed = (0..c.bricks.len())
            .all(|i| c.on_brick(i, rel).as_deref() == Some(want) && c.markers(i, rel).is_clean());
        if healed {
            return;
        }
        assert!(Instant::now() < deadline, "{rel} not healed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_copy_that_missed_writes_is_healed_on_access() {
    let mut c = Cluster::start(2, 2);
    let (mnt, session) = c.mount();
    let m = mnt.path();
    let before = payload(3, 1024 * 1024 + 5);
    write_file(&m.join("f"), &before).unwrap();
    c.kill(1);
    // Shorter than before: heal must cut the sink's copy too.
    let after = payload(4, 700 * 1024 + 3);
    write_file(&m.join("f"), &after).unwrap();
    fs::set_permissions(
        m.join("f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert!(c.markers(0, "f").accuses(1, Kind::Data));
    assert_eq!(c.on_brick(1, "f").as_deref(), Some(&before[..]));
    c.revive(1);
    // Reading opens the file: the copies' markers are seen and the stale copy healed.
    assert_eq!(fs::read(m.join("f")).unwrap(), after);
    wait_healed(&c, "f", &after);
    let mode = |i: usize| fs::metadata(c.bricks[i].path().join("f")).unwrap().mode() & 0o7777;
    assert_eq!(mode(1), 0o640);
    // Healed, the second copy serves alone.
    c.kill(0);
    assert_eq!(fs::read(m.join("f")).unwrap(), after);
    drop(session);
}

#[test]
fn split_brain_is_reported_as_eio_and_never_resolved_silently() {
    let mut c = Cluster::start(2, 2);
    // Without quorum each copy can take writes alone: the way to split-brain.
    c.spec.quorum_type = Some("none".into());
    let (mnt, session) = c.mount();
    let m = mnt.path();
    write_file(&m.join("f"), b"common").unwrap();
    c.kill(1);
    write_file(&m.join("f"), b"only on brick 0").unwrap();
    c.revive(1);
    c.kill(0);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .unwrap();
    f.write_all(b"only on brick 1").unwrap();
    f.sync_all().unwrap();
    drop(f);
    c.revive(0);
    assert!(c.markers(0, "f").accuses(1, Kind::Data));
    assert!(c.markers(1, "f").accuses(0, Kind::Data));
    let e = fs::read(m.join("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Both versions are still there.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.on_brick(0, "f").as_deref(), Some(&b"only on brick 0"[..]));
    assert_eq!(
        c.on_brick(1, "f").as_deref().map(|d| &d[..15]),
        Some(&b"only on brick 1"[..])
    );
    drop(session);
}

#[test]
fn heal_info_lists_pending_files_and_split_brain_and_heal_fixes_the_pending_ones() {
    let mut c = Cluster::start(2, 2);
    c.spec.quorum_type = Some("none".into());
    let (mnt, session) = c.mount();
    let m = mnt.path();
    fs::create_dir(m.join("d")).unwrap();
    write_file(&m.join("d/p"), b"pending v1").unwrap();
    write_file(&m.join("s"), b"split v1").unwrap();
    c.kill(1);
    write_file(&m.join("d/p"), b"pending v2, longer").unwrap();
    write_file(&m.join("s"), b"split on 0").unwrap();
    c.revive(1);
    c.kill(0);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("s"))
        .unwrap();
    f.write_all(b"split on 1").unwrap();
    f.sync_all().unwrap();
    drop(f);
    c.revive(0);

    let info = |heal: bool| {
        c.rt.block_on(heal_index::run(&c.spec, "heal-test", heal))
            .unwrap()
    };
    let report = info(false);
    assert_eq!(report.len(), 2);
    assert!(report.iter().all(|b| b.connected));
    let on0: Vec<(&str, &State)> = report[0]
        .entries
        .iter()
        .map(|e| (e.path.as_str(), &e.state))
        .collect();
    assert!(on0.contains(&("/d/p", &State::Pending)), "{on0:?}");
    assert!(on0.contains(&("/s", &State::SplitBrain)), "{on0:?}");
    assert!(
        report[1]
            .entries
            .iter()
            .any(|e| e.path == "/s" && e.state == State::SplitBrain),
        "{report:?}"
    );

    // Heal: the pending file is made whole; the split-brain stays, both versions kept.
    let left = info(true);
    let remaining: Vec<&str> = left
        .iter()
        .flat_map(|b| b.entries.iter().map(|e| e.path.as_str()))
        .collect();
    assert!(remaining.iter().all(|p| *p == "/s"), "{remaining:?}");
    assert_eq!(
        c.on_brick(1, "d/p").as_deref(),
        Some(&b"pending v2, longer"[..])
    );
    assert!(c.markers(0, "d/p").is_clean() && c.markers(1, "d/p").is_clean());
    assert_eq!(c.on_brick(0, "s").as_deref(), Some(&b"split on 0"[..]));
    assert_eq!(c.on_brick(1, "s").as_deref(), Some(&b"split on 1"[..]));
    let again = info(false);
    assert!(
        again
            .iter()
            .flat_map(|b| &b.entries)
            .all(|e| e.path == "/s" && e.state == State::SplitBrain),
        "{again:?}"
    );

    // A brick that is down is reported as such.
    c.kill(1);
    let down = info(false);
    assert!(down[0].connected && !down[1].connected);
    drop(session);
}

#[test]
fn a_file_left_open_after_writes_gets_its_post_op_after_the_delay() {
    let c = Cluster::start(2, 2);
    let (mnt, session) = c.mount();
    let m = mnt.path();
    // Written and kept open, no fsync: `dirty` stays raised until the delayed post-op.
    let mut f = fs::File::create(m.join("open")).unwrap();
    f.write_all(b"first").unwrap();
    // Others written and closed at once meanwhile: their post-ops go with the close.
    for i in 0..20 {
        write_file(&m.join(format!("small{i}")), b"x").unwrap();
    }
    let clean = |c: &Cluster| (0..2).all(|i| c.markers(i, "open").is_clean());
    // Raised by the write (for about POST_OP_DELAY), then lowered with the file open.
    let raised_then_lowered = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while clean(&c) {
            assert!(Instant::now() < deadline, "{what}: dirty never raised");
            std::thread::sleep(Duration::from_millis(5));
        }
        while !clean(&c) {
            assert!(
                Instant::now() < deadline,
                "{what}: no post-op for a file left open"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    raised_then_lowered("first write");
    // A later write opens a new transaction, ended again after the delay.
    f.write_all(b" second").unwrap();
    raised_then_lowered("second write");
    for i in 0..2 {
        assert_eq!(c.on_brick(i, "open").as_deref(), Some(&b"first second"[..]));
        for j in 0..20 {
            assert!(c.markers(i, &format!("small{j}")).is_clean());
        }
    }
    drop(f);
    drop(session);
}

/// Waits until no copy of `rel` has `dirty` raised (every transaction's post-op done).
fn wait_clean(c: &Cluster, rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..c.bricks.len()).all(|i| c.markers(i, rel).is_clean()) {
        assert!(Instant::now() < deadline, "{rel}: markers never clean");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two mounts of `c`'s volume, each reaching one copy late by a varying delay, as over a
/// busy network (A the second copy, B the first): two changes crossing on their way
/// come first on one copy to A's and on the other to B's. Runs `rounds` rounds of `a` and
/// `b` at once on a file `name` of 8 KiB open in each (each synced), and returns the
/// rounds after which the two copies differ.
fn crossing_rounds(
    c: &Cluster,
    name: &str,
    rounds: u8,
    a: impl Fn(&fs::File, u8) + Sync,
    b: impl Fn(&fs::File, u8) + Sync,
) -> Vec<u8> {
    let mut slow_a = c.spec.clone();
    slow_a.bricks[1].addr = c.rt.block_on(delaying_proxy(c.spec.bricks[1].addr.clone()));
    let mut slow_b = c.spec.clone();
    slow_b.bricks[0].addr = c.rt.block_on(delaying_proxy(c.spec.bricks[0].addr.clone()));
    let (ma, session_a) = c.mount_spec(slow_a);
    let (mb, session_b) = c.mount_spec(slow_b);
    write_file(&ma.path().join(name), &[0u8; 8192]).unwrap();
    let open = |dir: &Path| {
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join(name))
            .unwrap()
    };
    let (fa, fb) = (open(ma.path()), open(mb.path()));
    let start = std::sync::Barrier::new(3);
    let done = std::sync::Barrier::new(3);
    let run = |f: &fs::File, change: &(dyn Fn(&fs::File, u8) + Sync)| {
        for round in 0..rounds {
            start.wait();
            change(f, round);
            f.sync_data().unwrap();
            done.wait();
        }
    };
    // (Compared after each round, asserted by the caller: a panic here would leave the
    // changing threads at a barrier.)
    let mut different = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| run(&fa, &a));
        s.spawn(|| run(&fb, &b));
        for round in 0..rounds {
            start.wait();
            done.wait();
            if c.on_brick(0, name) != c.on_brick(1, name) {
                different.push(round);
            }
        }
    });
    drop((fa, fb));
    wait_clean(c, name);
    drop(session_a);
    drop(session_b);
    different
}

#[test]
fn two_clients_writing_the_same_range_leave_identical_copies() {
    use std::os::unix::fs::FileExt;
    let c = Cluster::start(2, 2);
    let write = |seed: u8| {
        move |f: &fs::File, round: u8| {
            f.write_all_at(&payload(seed ^ round, 8192), 0).unwrap();
        }
    };
    let different = crossing_rounds(&c, "shared", 20, write(0x11), write(0xee));
    assert!(
        different.is_empty(),
        "the copies took the two clients' writes in different orders in rounds {different:?}"
    );
    assert_eq!(c.on_brick(0, "shared").map(|d| d.len()), Some(8192));
}

#[test]
fn a_truncation_and_another_clients_write_reach_the_copies_in_one_order() {
    use std::os::unix::fs::FileExt;
    let c = Cluster::start(2, 2);
    let truncate = |f: &fs::File, round: u8| f.set_len(1024 * u64::from(round % 7)).unwrap();
    let write = |f: &fs::File, round: u8| {
        f.write_all_at(&payload(round, 8192), 0).unwrap();
    };
    let different = crossing_rounds(&c, "cut", 20, truncate, write);
    assert!(
        different.is_empty(),
        "the copies took a truncation and a write in different orders in rounds {different:?}"
    );
}

/// A TCP relay to `to` that holds each chunk from the client for 0–2 ms (order kept);
/// its address.
async fn delaying_proxy(to: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut seed = 0x9e37_79b9u32;
        while let Ok((client, _)) = listener.accept().await {
            let Ok(brick) = tokio::net::TcpStream::connect(&to).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut br, mut bw) = brick.into_split();
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut state = seed;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    tokio::time::sleep(Duration::from_micros(u64::from(state >> 21) % 2000)).await;
                    if bw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = bw.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut br, &mut cw).await;
            });
        }
    });
    addr
}

#[test]
fn a_client_writing_without_pause_lets_another_client_write() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = Cluster::start(2, 2);
    let (a, session_a) = c.mount();
    let (b, session_b) = c.mount();
    write_file(&a.path().join("busy"), &[0u8; 4096]).unwrap();
    let open = |dir: &Path| {
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("busy"))
            .unwrap()
    };
    let (fa, fb) = (open(a.path()), open(b.path()));
    // A's writes come faster than its transaction's post-op delay, so its transaction
    // never ends by itself: B's wait for the lock must end it.
    let b_done = AtomicBool::new(false);
    let limit = Duration::from_secs(60);
    let a_gave_up = std::thread::scope(|s| {
        let a_writer = s.spawn(|| {
            let start = Instant::now();
            let mut round = 0u8;
            while !b_done.load(Ordering::Acquire) {
                if start.elapsed() > limit {
                    return true;
                }
                fa.write_all_at(&payload(round, 4096), 0).unwrap();
                round = round.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        });
        std::thread::sleep(Duration::from_millis(500));
        fb.write_all_at(&payload(0xb0, 4096), 0).unwrap();
        fb.sync_data().unwrap();
        b_done.store(true, Ordering::Release);
        a_writer.join().unwrap()
    });
    assert!(!a_gave_up, "B's write waited for as long as A kept writing");
    drop((fa, fb));
    wait_clean(&c, "busy");
    assert_eq!(c.on_brick(0, "busy"), c.on_brick(1, "busy"));
    drop(session_a);
    drop(session_b);
}

#[test]
fn writes_during_a_heal_are_not_undone_by_it() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    const SIZE: usize = 4 << 20;
    const BLOCK: usize = 64 << 10;
    let c = Cluster::start(2, 2);
    // A heals, and reaches the copy it heals late (by a varying delay, as over a busy
    // network); B writes, at full speed to both copies.
    let mut slow = c.spec.clone();
    slow.bricks[1].addr = c.rt.block_on(delaying_proxy(c.spec.bricks[1].addr.clone()));
    let (a, session_a) = c.mount_spec(slow);
    let (b, session_b) = c.mount();
    write_file(&b.path().join("healme"), &payload(1, SIZE)).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(b.path().join("healme"))
        .unwrap();
    f.write_all_at(&payload(2, BLOCK), 0).unwrap();
    f.sync_all().unwrap();
    // The second copy goes stale behind B's back (its bytes replaced on the brick) and
    // the first accuses it: a heal is due, while B keeps its descriptor on both copies.
    fs::write(c.bricks[1].path().join("healme"), vec![0xffu8; SIZE]).unwrap();
    let mut accusation = AfrState::default();
    accusation.pending.push((1, {
        let mut counts = [0; 3];
        counts[Kind::Data as usize] = 1;
        counts
    }));
    let path = std::ffi::CString::new(
        c.bricks[0]
            .path()
            .join("healme")
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    let name = std::ffi::CString::new(XATTR_AFR).unwrap();
    let value = accusation.encode();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // A's first look at the file heals it (on access) while B rewrites blocks all over
    // it: heal must not copy over a block B wrote meanwhile the bytes it read before.
    let writing = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut state = 7u32;
            for round in 0..300u32 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let at = (state as usize >> 8) % (SIZE / BLOCK) * BLOCK;
                f.write_all_at(&payload(round as u8 ^ 0x5a, BLOCK), at as u64)
                    .unwrap();
            }
            f.sync_all().unwrap();
            writing.store(false, Ordering::Release);
        });
        std::thread::sleep(Duration::from_millis(5));
        let _ = fs::metadata(a.path().join("healme"));
        while writing.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..2).all(|i| c.markers(i, "healme").is_clean()) {
        assert!(Instant::now() < deadline, "the copy was never healed");
        std::thread::sleep(Duration::from_millis(200));
        let _ = fs::metadata(a.path().join("healme"));
    }
    let (first, second) = (
        c.on_brick(0, "healme").unwrap(),
        c.on_brick(1, "healme").unwrap(),
    );
    assert_eq!(first.len(), SIZE);
    let differ = (0..SIZE / BLOCK)
        .filter(|k| first[k * BLOCK..(k + 1) * BLOCK] != second[k * BLOCK..(k + 1) * BLOCK])
        .count();
    assert_eq!(
        differ, 0,
        "{differ} blocks differ between the copies after heal"
    );
    drop(session_a);
    drop(session_b);
}

#[test]
fn heal_leaves_a_live_writers_change_to_its_writer() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    const SIZE: usize = 1 << 20;
    const BLOCK: usize = 64 << 10;
    let c = Cluster::start(2, 2);
    let (m, session) = c.mount();
    write_file(&m.path().join("live"), &payload(3, SIZE)).unwrap();
    // A writer keeps a data transaction open (`dirty` raised, nobody accused) while heal
    // runs again and again: heal must take it as a change in progress (the writer holds
    // the file's lock), never settle it under the writer's feet.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path().join("live"))
        .unwrap();
    let writing = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..300u32 {
                let at = (round as usize * 7) % (SIZE / BLOCK) * BLOCK;
                f.write_all_at(&payload(round as u8, BLOCK), at as u64)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            f.sync_all().unwrap();
            writing.store(false, Ordering::Release);
        });
        while writing.load(Ordering::Acquire) {
            c.rt.block_on(heal_index::run(&c.spec, "heal-test", true))
                .unwrap();
        }
    });
    drop(f);
    wait_clean(&c, "live");
    assert_eq!(c.on_brick(0, "live"), c.on_brick(1, "live"));
    let mut want = payload(3, SIZE);
    for round in 0..300u32 {
        let at = (round as usize * 7) % (SIZE / BLOCK) * BLOCK;
        want[at..at + BLOCK].copy_from_slice(&payload(round as u8, BLOCK));
    }
    assert!(c.on_brick(0, "live").unwrap() == want, "a write was lost");
    drop(session);
}
