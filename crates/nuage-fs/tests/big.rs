//! The sizes the issue names, through a real FUSE mount of a replica-2 volume (two brick
//! servers on loopback in this process): a file of several GiB written and read back
//! with a checksum, and a directory of 100,000 entries. Both take minutes on a small
//! machine, so they are `#[ignore]`d in CI and run by the longer test run
//! (`bench/storage/posix.sh`, step `big`):
//!
//! ```console
//! # cargo test --release -p nuage-fs --test big -- --ignored --nocapture
//! # BIG_FILE_GIB=4 cargo test --release -p nuage-fs --test big -- --ignored big_file
//! ```
//!
//! Needs root and /dev/fuse. Brick directories go under `$BIG_TEST_DIR` (default
//! /var/tmp): the big file needs twice its size free there (one copy per brick).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nuage_fs::brick::server::Brick;
use nuage_fs::brick::store::{BrickIdentity, Store};
use nuage_fs::client::fuse::mount_background;
use nuage_fs::client::spec::{BrickSpec, VolumeSpec};
use nuage_fs::client::volume::Volume;
use tokio_util::sync::CancellationToken;

/// Default size of the big file, GiB (`BIG_FILE_GIB` overrides).
const DEFAULT_BIG_FILE_GIB: u64 = 2;
/// Entries of the big directory.
const BIG_DIR_ENTRIES: usize = 100_000;
/// Size of one write and one read of the big file.
const CHUNK: usize = 1 << 20;

struct Cluster {
    rt: tokio::runtime::Runtime,
    base: tempfile::TempDir,
    stops: Vec<CancellationToken>,
    spec: VolumeSpec,
}

impl Cluster {
    /// Two bricks, replica 2.
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::var("BIG_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into());
        let base = tempfile::Builder::new()
            .prefix("nuage-big-")
            .tempdir_in(dir)
            .unwrap();
        let mut spec = VolumeSpec {
            name: "big".into(),
            volume_id: "big-test-volume".into(),
            replica: 2,
            bricks: Vec::new(),
            layout_epoch: 1,
            ping_timeout: None,
            quorum_type: None,
            flush_behind: None,
            generation: 1,
            draining: Vec::new(),
        };
        let mut stops = Vec::new();
        for i in 0..2u32 {
            let path = base.path().join(format!("b{i}"));
            fs::create_dir(&path).unwrap();
            let identity = BrickIdentity {
                volume: "big".into(),
                volume_id: "big-test-volume".into(),
                brick_id: i,
            };
            let store = Store::open(&path, &identity).unwrap();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let stop = CancellationToken::new();
            rt.spawn(Brick::new(store, identity).serve(listener, stop.clone()));
            stops.push(stop);
            spec.bricks.push(BrickSpec {
                id: i,
                host: "localhost".into(),
                path: path.display().to_string(),
                addr,
            });
        }
        Cluster {
            rt,
            base,
            stops,
            spec,
        }
    }

    fn brick(&self, i: usize) -> std::path::PathBuf {
        self.base.path().join(format!("b{i}"))
    }

    fn mount(&self) -> (tempfile::TempDir, fuser::BackgroundSession) {
        let mnt = tempfile::Builder::new()
            .prefix("mnt-")
            .tempdir_in(self.base.path())
            .unwrap();
        let vol: Arc<Volume> = self
            .rt
            .block_on(Volume::connect(
                self.spec.clone(),
                "big-test-client",
                Duration::from_secs(42),
            ))
            .unwrap();
        let session =
            mount_background(vol, self.rt.handle().clone(), "localhost:/big", mnt.path()).unwrap();
        let parent_dev = fs::metadata(self.base.path()).unwrap().dev();
        for _ in 0..200 {
            if fs::metadata(mnt.path()).is_ok_and(|m| m.dev() != parent_dev) {
                return (mnt, session);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the volume did not appear on {}", mnt.path().display());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
        }
    }
}

/// Deterministic contents: chunk `i` of the big file (xorshift64*, so no two chunks are
/// alike and a misplaced chunk changes the checksum).
fn fill(chunk: &mut [u8], i: u64) {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for w in chunk.chunks_exact_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
}

/// xxh3-64 of a whole file, read `CHUNK` bytes at a time.
fn checksum(p: &Path) -> (u64, u64) {
    let mut f = fs::File::open(p).unwrap();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    (h.digest(), len)
}

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

#[test]
#[ignore = "minutes and 2×BIG_FILE_GIB of disk: run by bench/storage/posix.sh"]
fn big_file_written_and_read_back_with_its_checksum() {
    let gib: u64 = std::env::var("BIG_FILE_GIB")
        .ok()
        .map(|v| v.parse().expect("BIG_FILE_GIB: a whole number of GiB"))
        .unwrap_or(DEFAULT_BIG_FILE_GIB);
    assert!(gib >= 1);
    let c = Cluster::start();
    let chunks = gib * 1024;
    let size = chunks * CHUNK as u64;
    let expect = {
        let (mnt, session) = c.mount();
        let p = mnt.path().join("big");
        let t = Instant::now();
        let mut f = fs::File::create(&p).unwrap();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; CHUNK];
        for i in 0..chunks {
            fill(&mut buf, i);
            h.update(&buf);
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        eprintln!(
            "wrote {gib} GiB + fsync in {:?} ({:.0} MiB/s)",
            t.elapsed(),
            mib_per_s(size, t.elapsed())
        );
        assert_eq!(fs::metadata(&p).unwrap().len(), size);
        drop(session);
        h.digest()
    };
    // Read back through a new mount (nothing from the first one's caches).
    let (mnt, session) = c.mount();
    let t = Instant::now();
    let (got, len) = checksum(&mnt.path().join("big"));
    eprintln!(
        "read {gib} GiB in {:?} ({:.0} MiB/s)",
        t.elapsed(),
        mib_per_s(size, t.elapsed())
    );
    assert_eq!(len, size);
    assert_eq!(
        got, expect,
        "the file read back differs from what was written"
    );
    // Both copies are whole and identical on the bricks.
    for i in 0..2 {
        let (h, len) = checksum(&c.brick(i).join("big"));
        assert_eq!((h, len), (expect, size), "brick {i}'s copy");
    }
    fs::remove_file(mnt.path().join("big")).unwrap();
    assert!(!c.brick(0).join("big").exists() && !c.brick(1).join("big").exists());
    drop(session);
}

#[test]
#[ignore = "minutes: run by bench/storage/posix.sh"]
fn directory_of_100000_entries() {
    let c = Cluster::start();
    let (mnt, session) = c.mount();
    let d = mnt.path().join("many");
    fs::create_dir(&d).unwrap();
    let name = |i: usize| format!("entry-{i:06}");
    let t = Instant::now();
    for i in 0..BIG_DIR_ENTRIES {
        // Every 10th entry carries 16 bytes, the rest are empty.
        let mut f = fs::File::create(d.join(name(i))).unwrap();
        if i % 10 == 0 {
            f.write_all(&(i as u128).to_le_bytes()).unwrap();
        }
    }
    eprintln!("created {BIG_DIR_ENTRIES} entries in {:?}", t.elapsed());

    // readdir: every name exactly once.
    let t = Instant::now();
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    eprintln!("listed {} entries in {:?}", names.len(), t.elapsed());
    assert_eq!(names.len(), BIG_DIR_ENTRIES);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), BIG_DIR_ENTRIES, "a name listed twice");
    assert!((0..BIG_DIR_ENTRIES).all(|i| names.binary_search(&name(i)).is_ok()));
    // The same on each brick's copy of the directory.
    for b in 0..2 {
        assert_eq!(
            fs::read_dir(c.brick(b).join("many")).unwrap().count(),
            BIG_DIR_ENTRIES,
            "brick {b}"
        );
    }

    // stat some (and read the ones with contents) after a fresh lookup.
    for i in (0..BIG_DIR_ENTRIES).step_by(997) {
        let m = fs::metadata(d.join(name(i))).unwrap();
        let want = if i % 10 == 0 { 16 } else { 0 };
        assert_eq!(m.len(), want, "{}", name(i));
        if want > 0 {
            assert_eq!(
                fs::read(d.join(name(i))).unwrap(),
                (i as u128).to_le_bytes()
            );
        }
    }
    let st = fs::metadata(&d).unwrap();
    assert!(st.is_dir());

    // Remove them all; the directory is then empty and goes.
    let t = Instant::now();
    for i in 0..BIG_DIR_ENTRIES {
        fs::remove_file(d.join(name(i))).unwrap();
    }
    eprintln!("removed {BIG_DIR_ENTRIES} entries in {:?}", t.elapsed());
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
    fs::remove_dir(&d).unwrap();
    for b in 0..2 {
        assert!(!c.brick(b).join("many").exists(), "brick {b}");
    }
    drop(session);
}
