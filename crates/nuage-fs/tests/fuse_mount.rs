//! A real FUSE mount of a 2-brick distributed volume (brick servers on loopback, in
//! this process), exercised with ordinary file system calls. Needs root and /dev/fuse.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nuage_fs::brick::server::Brick;
use nuage_fs::brick::store::{BrickIdentity, Store};
use nuage_fs::client::fuse::mount_background;
use nuage_fs::client::spec::{BrickSpec, VolumeSpec};
use nuage_fs::client::volume::Volume;
use tokio_util::sync::CancellationToken;

struct Cluster {
    rt: tokio::runtime::Runtime,
    bricks: Vec<tempfile::TempDir>,
    stop: CancellationToken,
    spec: VolumeSpec,
}

fn start(n: u32) -> Cluster {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let mut bricks = Vec::new();
    let mut specs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let identity = BrickIdentity {
            volume: "vol".into(),
            volume_id: "test-volume-id".into(),
            brick_id: i,
        };
        let store = Store::open(dir.path(), &identity).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        rt.spawn(Brick::new(store, identity).serve(listener, stop.clone()));
        specs.push(BrickSpec {
            id: i,
            host: "localhost".into(),
            path: dir.path().display().to_string(),
            addr,
        });
        bricks.push(dir);
    }
    let spec = VolumeSpec {
        name: "vol".into(),
        volume_id: "test-volume-id".into(),
        replica: 1,
        bricks: specs,
        layout_epoch: 1,
        ping_timeout: None,
        quorum_type: None,
        flush_behind: None,
        generation: 1,
        draining: Vec::new(),
    };
    Cluster {
        rt,
        bricks,
        stop,
        spec,
    }
}

fn mount(c: &Cluster) -> (tempfile::TempDir, fuser::BackgroundSession) {
    let mnt = tempfile::tempdir().unwrap();
    let vol: Arc<Volume> =
        c.rt.block_on(Volume::connect(
            c.spec.clone(),
            "test-client",
            Duration::from_secs(42),
        ))
        .unwrap();
    let session =
        mount_background(vol, c.rt.handle().clone(), "localhost:/vol", mnt.path()).unwrap();
    // The mount is live once the root is a different device from the temp dir's parent.
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

fn on_brick(c: &Cluster, rel: &str) -> Vec<usize> {
    (0..c.bricks.len())
        .filter(|i| c.bricks[*i].path().join(rel).symlink_metadata().is_ok())
        .collect()
}

fn is_linkto(c: &Cluster, i: usize, rel: &str) -> bool {
    let m = c.bricks[i].path().join(rel).symlink_metadata().unwrap();
    m.mode() == (libc::S_IFREG | libc::S_ISVTX)
}

#[test]
fn posix_operations_through_a_fuse_mount_of_a_distributed_volume() {
    let c = start(2);
    let (mnt, session) = mount(&c);
    let m: PathBuf = mnt.path().to_owned();

    // 20 files spread over both bricks, each on exactly one, as plain files.
    for i in 0..20 {
        fs::write(m.join(format!("file{i}")), format!("content {i}")).unwrap();
    }
    let mut per_brick = [0usize; 2];
    for i in 0..20 {
        let rel = format!("file{i}");
        let at = on_brick(&c, &rel);
        assert_eq!(at.len(), 1, "{rel} on bricks {at:?}");
        per_brick[at[0]] += 1;
        assert_eq!(
            fs::read_to_string(c.bricks[at[0]].path().join(&rel)).unwrap(),
            format!("content {i}")
        );
        assert_eq!(
            fs::read_to_string(m.join(&rel)).unwrap(),
            format!("content {i}")
        );
    }
    assert!(
        per_brick[0] >= 4 && per_brick[1] >= 4,
        "unbalanced: {per_brick:?}"
    );
    let mut names: Vec<String> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("file{i}")).collect();
    want.sort();
    assert_eq!(names, want);

    // Directories are on every brick; files inside them are distributed.
    fs::create_dir(m.join("dir")).unwrap();
    assert_eq!(on_brick(&c, "dir"), vec![0, 1]);
    fs::create_dir_all(m.join("dir/a/b/c")).unwrap();
    fs::write(m.join("dir/a/b/c/deep"), b"deep").unwrap();
    assert_eq!(fs::read(m.join("dir/a/b/c/deep")).unwrap(), b"deep");
    assert!(fs::metadata(m.join("dir")).unwrap().is_dir());
    assert_eq!(
        fs::create_dir(m.join("dir")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );

    // Read/write at offsets, truncate, append, sizes.
    let p = m.join("dir/data");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let block: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    f.write_all(&block).unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(1_000_000)).unwrap();
    let mut back = vec![0u8; 10];
    f.read_exact(&mut back).unwrap();
    assert_eq!(back, block[1_000_000..1_000_010]);
    f.set_len(100).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), 100);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let all = fs::read(&p).unwrap();
    assert_eq!(all.len(), 104);
    assert_eq!(&all[100..], b"tail");

    // chmod, chown, utimens.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, Some(1234), Some(4321)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mtime(), 1_000_000_000);

    // Symbolic links and hard links.
    symlink("data", m.join("dir/link")).unwrap();
    assert_eq!(
        fs::read_link(m.join("dir/link")).unwrap(),
        Path::new("data")
    );
    assert_eq!(fs::read(m.join("dir/link")).unwrap().len(), 104);
    fs::hard_link(&p, m.join("dir/hard")).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(&p).unwrap().ino(),
        fs::metadata(m.join("dir/hard")).unwrap().ino()
    );
    fs::remove_file(&p).unwrap();
    assert_eq!(fs::read(m.join("dir/hard")).unwrap().len(), 104);
    assert_eq!(fs::metadata(m.join("dir/hard")).unwrap().nlink(), 1);

    // Renames: every name is still found wherever its data stayed; link files on bricks
    // point to it and never show in listings.
    for i in 0..20 {
        fs::rename(m.join(format!("file{i}")), m.join(format!("moved{i}"))).unwrap();
    }
    let mut linktos = 0;
    for i in 0..20 {
        assert_eq!(
            fs::read_to_string(m.join(format!("moved{i}"))).unwrap(),
            format!("content {i}")
        );
        assert!(fs::symlink_metadata(m.join(format!("file{i}"))).is_err());
        let rel = format!("moved{i}");
        for b in on_brick(&c, &rel) {
            linktos += usize::from(is_linkto(&c, b, &rel));
        }
    }
    assert!(linktos > 0, "some renamed files should need link files");
    let count = fs::read_dir(&m).unwrap().count();
    assert_eq!(count, 21, "20 files and dir, no link files");
    // Rename over an existing file replaces it.
    fs::rename(m.join("moved0"), m.join("moved1")).unwrap();
    assert_eq!(fs::read_to_string(m.join("moved1")).unwrap(), "content 0");
    assert_eq!(fs::read_dir(&m).unwrap().count(), 20);
    // Renamed directories keep their contents.
    fs::rename(m.join("dir/a"), m.join("dir/z")).unwrap();
    assert_eq!(fs::read(m.join("dir/z/b/c/deep")).unwrap(), b"deep");

    // A directory cannot replace a non-empty one, wherever the entries are.
    fs::create_dir(m.join("full")).unwrap();
    fs::create_dir(m.join("empty")).unwrap();
    for i in 0..6 {
        fs::write(m.join(format!("full/e{i}")), b"").unwrap();
    }
    let e = fs::rename(m.join("empty"), m.join("full")).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)),
        "{e}"
    );
    assert_eq!(fs::read_dir(m.join("full")).unwrap().count(), 6);
    fs::remove_dir_all(m.join("full")).unwrap();
    fs::rename(m.join("empty"), m.join("renamed-empty")).unwrap();
    fs::remove_dir(m.join("renamed-empty")).unwrap();

    // Many names of one file, hashed all over: every name works, the count is right.
    fs::write(m.join("orig"), b"shared").unwrap();
    for i in 0..8 {
        fs::hard_link(m.join("orig"), m.join(format!("alias{i}"))).unwrap();
    }
    assert_eq!(fs::metadata(m.join("alias3")).unwrap().nlink(), 9);
    fs::remove_file(m.join("orig")).unwrap();
    for i in 0..8 {
        assert_eq!(fs::read(m.join(format!("alias{i}"))).unwrap(), b"shared");
        fs::rename(
            m.join(format!("alias{i}")),
            m.join(format!("moved-alias{i}")),
        )
        .unwrap();
    }
    for i in 0..8 {
        fs::remove_file(m.join(format!("moved-alias{i}"))).unwrap();
    }

    // An open file outlives its last name.
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.join("ghost"))
        .unwrap();
    fs::remove_file(m.join("ghost")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.write_all(b"still here").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(f);

    // Extended attributes (user namespace).
    let x = m.join("moved1");
    xattr_set(&x, "user.colour", b"blue");
    assert_eq!(xattr_get(&x, "user.colour"), Some(b"blue".to_vec()));

    // Unlink and rmdir; rmdir of a non-empty directory fails.
    assert_eq!(
        fs::remove_dir(m.join("dir/z")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir_all(m.join("dir")).unwrap();
    assert_eq!(on_brick(&c, "dir"), Vec::<usize>::new());
    for i in 1..20 {
        fs::remove_file(m.join(format!("moved{i}"))).unwrap();
    }
    assert_eq!(fs::read_dir(&m).unwrap().count(), 0);
    for i in 0..2 {
        let left: Vec<_> = fs::read_dir(c.bricks[i].path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != ".nuage")
            .collect();
        assert!(left.is_empty(), "brick {i} still has {left:?}");
    }

    // statfs sums the bricks.
    let st = nix::sys::statvfs::statvfs(&m).unwrap();
    assert!(st.blocks() > 0);

    drop(session);
    c.stop.cancel();
}

#[test]
fn a_large_directory_lists_completely() {
    let c = start(2);
    let (mnt, session) = mount(&c);
    let d = mnt.path().join("big");
    fs::create_dir(&d).unwrap();
    const N: usize = 3000;
    for i in 0..N {
        fs::File::create(d.join(format!("entry-{i:05}"))).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), N);
    drop(session);
    c.stop.cancel();
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: valid C strings and buffer.
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}
