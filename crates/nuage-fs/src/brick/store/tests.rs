//! The brick store against a real directory (these tests need root, for the `trusted.*`
//! extended attributes, as CI has).

use std::os::fd::AsRawFd;

use super::*;
use crate::markers::Kind;

fn identity(vid: &str) -> BrickIdentity {
    BrickIdentity {
        volume: "vol".into(),
        volume_id: vid.into(),
        brick_id: 0,
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path(), &identity("v1")).unwrap();
    (tmp, s)
}

fn new_obj(mode: u32) -> NewObject {
    NewObject {
        mode,
        rdev: 0,
        target: None,
        creds: Creds::root(),
        afr: AfrState::default(),
        layout: None,
        linkto: None,
        open: None,
        lock: false,
    }
}

fn mkfile(s: &Store, parent: &Gfid, name: &[u8]) -> Gfid {
    let g = Gfid::random();
    s.mknod(
        parent,
        name,
        &g,
        &new_obj(libc::S_IFREG | 0o644),
        &None,
        None,
    )
    .unwrap();
    g
}

fn mkdir(s: &Store, parent: &Gfid, name: &[u8]) -> Gfid {
    let g = Gfid::random();
    s.mknod(
        parent,
        name,
        &g,
        &new_obj(libc::S_IFDIR | 0o755),
        &None,
        None,
    )
    .unwrap();
    g
}

#[test]
fn files_are_plain_files_with_ids_and_handles() {
    let (tmp, s) = store();
    let g = mkfile(&s, &Gfid::ROOT, b"hello.txt");
    s.write(&g, None, 0, b"hello world", &None, false).unwrap();
    // `cat` on the brick shows the file.
    assert_eq!(
        std::fs::read(tmp.path().join("hello.txt")).unwrap(),
        b"hello world"
    );
    let e = s.lookup(&Gfid::ROOT, b"hello.txt").unwrap();
    assert_eq!(e.meta.gfid, Some(g));
    assert!(e.attr.is_file());
    assert_eq!(e.attr.size, 11);
    // The handle is not counted as a link.
    assert_eq!(e.attr.nlink, 1);
    assert_eq!(s.read(&g, None, 6, 100).unwrap(), b"world");
    assert_eq!(s.stat(&g, None).unwrap().attr.size, 11);
    // The hidden directory is invisible and untouchable through the protocol.
    assert_eq!(
        s.lookup(&Gfid::ROOT, HIDDEN_DIR.as_bytes()),
        Err(Errno(libc::ENOENT))
    );
    assert_eq!(
        s.mknod(
            &Gfid::ROOT,
            HIDDEN_DIR.as_bytes(),
            &Gfid::random(),
            &new_obj(libc::S_IFDIR | 0o755),
            &None,
            None
        )
        .map(|_| ()),
        Err(Errno(libc::EPERM))
    );
    let (entries, _, eof) = s.readdir(&Gfid::ROOT, 0, 100).unwrap();
    assert!(eof);
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, vec![&b"hello.txt"[..]]);
    // An existing name is refused.
    assert_eq!(
        s.mknod(
            &Gfid::ROOT,
            b"hello.txt",
            &Gfid::random(),
            &new_obj(libc::S_IFREG | 0o644),
            &None,
            None
        )
        .map(|_| ()),
        Err(Errno(libc::EEXIST))
    );
}

#[test]
fn a_brick_of_another_volume_is_refused() {
    let (tmp, s) = store();
    drop(s);
    let err = Store::open(tmp.path(), &identity("other"))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("another volume"), "{err}");
    // Reopening with the right identity works and finds the files again.
    assert!(Store::open(tmp.path(), &identity("v1")).is_ok());
    let missing = tmp.path().join("nope");
    assert!(Store::open(&missing, &identity("v1")).is_err());
}

#[test]
fn directories_resolve_by_id_after_renames_and_restarts() {
    let (tmp, s) = store();
    let a = mkdir(&s, &Gfid::ROOT, b"a");
    let b = mkdir(&s, &a, b"b");
    let f = mkfile(&s, &b, b"f");
    s.write(&f, None, 0, b"deep", &None, false).unwrap();
    s.rename(&Gfid::ROOT, b"a", &Gfid::ROOT, b"renamed", 0, &None, &None)
        .unwrap();
    assert_eq!(s.path(&f).unwrap(), b"/renamed/b/f");
    drop(s);
    // A fresh store has an empty directory cache: ids resolve through the handles.
    let s = Store::open(tmp.path(), &identity("v1")).unwrap();
    assert_eq!(s.lookup(&b, b"f").unwrap().meta.gfid, Some(f));
    assert_eq!(s.read(&f, None, 0, 10).unwrap(), b"deep");
    assert_eq!(s.path(&b).unwrap(), b"/renamed/b");
    assert!(tmp.path().join("renamed/b/f").exists());
    // rmdir of a non-empty directory fails, of an empty one forgets its handle.
    assert_eq!(s.rmdir(&a, b"b", None, &None), Err(Errno(libc::ENOTEMPTY)));
    s.unlink(&b, b"f", Some(f), &None).unwrap();
    assert_eq!(s.rmdir(&a, b"b", Some(b), &None), Ok(Some(b)));
    assert_eq!(s.stat(&b, None).map(|_| ()), Err(Errno(libc::ENOENT)));
}

#[test]
fn hard_links_count_and_the_file_goes_with_its_last_name() {
    let (_tmp, s) = store();
    let g = mkfile(&s, &Gfid::ROOT, b"one");
    let e = s.link(&g, &Gfid::ROOT, b"two", &None).unwrap();
    assert_eq!(e.attr.nlink, 2);
    assert_eq!(e.meta.gfid, Some(g));
    assert_eq!(s.unlink(&Gfid::ROOT, b"one", None, &None), Ok((Some(g), 1)));
    assert_eq!(s.stat(&g, None).unwrap().attr.nlink, 1);
    // Unlinking with the wrong expected id is refused and changes nothing.
    assert_eq!(
        s.unlink(&Gfid::ROOT, b"two", Some(Gfid::random()), &None),
        Err(Errno(libc::ESTALE))
    );
    assert_eq!(
        s.unlink(&Gfid::ROOT, b"two", Some(g), &None),
        Ok((Some(g), 0))
    );
    assert_eq!(s.stat(&g, None).map(|_| ()), Err(Errno(libc::ENOENT)));
    // Directories cannot be hard-linked.
    let d = mkdir(&s, &Gfid::ROOT, b"d");
    assert_eq!(
        s.link(&d, &Gfid::ROOT, b"d2", &None).map(|_| ()),
        Err(Errno(libc::EPERM))
    );
}

#[test]
fn rename_over_a_file_reports_the_replaced_one() {
    let (_tmp, s) = store();
    let a = mkfile(&s, &Gfid::ROOT, b"a");
    let b = mkfile(&s, &Gfid::ROOT, b"b");
    assert_eq!(
        s.rename(&Gfid::ROOT, b"a", &Gfid::ROOT, b"b", 0, &None, &None),
        Ok(Some(b))
    );
    assert_eq!(s.stat(&b, None).map(|_| ()), Err(Errno(libc::ENOENT)));
    assert_eq!(s.lookup(&Gfid::ROOT, b"b").unwrap().meta.gfid, Some(a));
    // RENAME_NOREPLACE refuses an existing target.
    let c = mkfile(&s, &Gfid::ROOT, b"c");
    assert_eq!(
        s.rename(
            &Gfid::ROOT,
            b"b",
            &Gfid::ROOT,
            b"c",
            libc::RENAME_NOREPLACE,
            &None,
            &None
        ),
        Err(Errno(libc::EEXIST))
    );
    assert_eq!(s.lookup(&Gfid::ROOT, b"c").unwrap().meta.gfid, Some(c));
}

#[test]
fn set_id_bits_go_at_writes_and_truncations_that_may_not_keep_them() {
    use crate::brick::store::without_privileges;
    assert_eq!(without_privileges(0o6777), Some(0o0777));
    assert_eq!(without_privileges(0o4755), Some(0o0755));
    // Set-group-ID without group-execute marks mandatory locking: it stays.
    assert_eq!(without_privileges(0o2666), None);
    assert_eq!(without_privileges(0o6666), Some(0o2666));
    assert_eq!(without_privileges(0o1777), None);
    assert_eq!(without_privileges(libc::S_IFREG | 0o755), None);

    let (_tmp, s) = store();
    let mode = |g: &Gfid| s.stat(g, None).unwrap().attr.mode & 0o7777;
    let chmod = |g: &Gfid, m: u32| {
        let set = SetAttr {
            mode: Some(m),
            ..Default::default()
        };
        s.setattr(g, None, &set, &None).unwrap();
    };
    let g = mkfile(&s, &Gfid::ROOT, b"f");
    chmod(&g, 0o6755);
    s.write(&g, None, 0, b"kept", &None, false).unwrap();
    assert_eq!(mode(&g), 0o6755, "a writer who may keep them");
    s.write(&g, None, 0, b"gone", &None, true).unwrap();
    assert_eq!(mode(&g), 0o0755);
    chmod(&g, 0o6755);
    let truncate = |kill| SetAttr {
        size: Some(1),
        kill_suidgid: kill,
        ..Default::default()
    };
    s.setattr(&g, None, &truncate(false), &None).unwrap();
    assert_eq!(mode(&g), 0o6755);
    let a = s.setattr(&g, None, &truncate(true), &None).unwrap();
    assert_eq!((a.mode & 0o7777, a.size), (0o0755, 1));
    // Directories keep theirs (set-group-ID on a directory is inheritance).
    let d = mkdir(&s, &Gfid::ROOT, b"d");
    chmod(&d, 0o2775);
    let bare = SetAttr {
        kill_suidgid: true,
        ..Default::default()
    };
    s.setattr(&d, None, &bare, &None).unwrap();
    assert_eq!(mode(&d), 0o2775);
}

#[test]
fn setattr_symlinks_and_special_files() {
    let (_tmp, s) = store();
    let g = mkfile(&s, &Gfid::ROOT, b"f");
    s.write(&g, None, 0, &[1u8; 1000], &None, false).unwrap();
    let a = s
        .setattr(
            &g,
            None,
            &SetAttr {
                mode: Some(0o600),
                uid: Some(1234),
                gid: Some(5678),
                size: Some(10),
                mtime: Some(crate::proto::SetTime::At(Timespec { sec: 1000, nsec: 5 })),
                ..Default::default()
            },
            &None,
        )
        .unwrap();
    assert_eq!(a.mode & 0o7777, 0o600);
    assert_eq!((a.uid, a.gid, a.size), (1234, 5678, 10));
    assert_eq!(a.mtime, Timespec { sec: 1000, nsec: 5 });

    let l = Gfid::random();
    let mut obj = new_obj(libc::S_IFLNK | 0o777);
    obj.target = Some(b"../somewhere/else".to_vec());
    let (e, _) = s
        .mknod(&Gfid::ROOT, b"link", &l, &obj, &None, None)
        .unwrap();
    assert_eq!(e.attr.file_type(), libc::S_IFLNK);
    assert_eq!(s.readlink(&l).unwrap(), b"../somewhere/else");
    // Chown of a symlink changes the link, not its (missing) target.
    let a = s
        .setattr(
            &l,
            None,
            &SetAttr {
                uid: Some(42),
                ..Default::default()
            },
            &None,
        )
        .unwrap();
    assert_eq!(a.uid, 42);

    let p = Gfid::random();
    let (e, _) = s
        .mknod(
            &Gfid::ROOT,
            b"pipe",
            &p,
            &new_obj(libc::S_IFIFO | 0o640),
            &None,
            None,
        )
        .unwrap();
    assert_eq!(e.attr.file_type(), libc::S_IFIFO);
    assert_eq!(
        s.open_file(&p, libc::O_RDONLY).map(|_| ()),
        Err(Errno(libc::EOPNOTSUPP))
    );
}

#[test]
fn files_are_created_as_the_caller() {
    let (_tmp, s) = store();
    let g = Gfid::random();
    let mut obj = new_obj(libc::S_IFREG | 0o640);
    obj.creds = Creds {
        uid: 1000,
        gid: 1000,
        groups: vec![1000],
    };
    // The brick root is root's (0700 here): the caller may not create there.
    assert_eq!(
        s.mknod(&Gfid::ROOT, b"mine", &g, &obj, &None, None)
            .map(|_| ()),
        Err(Errno(libc::EACCES))
    );
    assert_eq!(
        s.lookup(&Gfid::ROOT, b"mine").map(|_| ()),
        Err(Errno(libc::ENOENT))
    );
    let shared = Gfid::random();
    s.mknod(
        &Gfid::ROOT,
        b"shared",
        &shared,
        &new_obj(libc::S_IFDIR | 0o777),
        &None,
        None,
    )
    .unwrap();
    let (e, _) = s.mknod(&shared, b"mine", &g, &obj, &None, None).unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (1000, 1000));
    assert_eq!(e.attr.mode & 0o7777, 0o640);
    // The process umask does not apply: the client's kernel applied the caller's.
    let d = Gfid::random();
    let (e, _) = s
        .mknod(
            &Gfid::ROOT,
            b"open",
            &d,
            &new_obj(libc::S_IFDIR | 0o1777),
            &None,
            None,
        )
        .unwrap();
    assert_eq!(e.attr.mode & 0o7777, 0o1777);
    // The thread is root again afterwards.
    let g2 = mkfile(&s, &Gfid::ROOT, b"roots");
    assert_eq!(s.stat(&g2, None).unwrap().attr.uid, 0);
}

#[test]
fn markers_keep_the_heal_index() {
    let (_tmp, s) = store();
    let g = mkfile(&s, &Gfid::ROOT, b"f");
    assert_eq!(s.index_list(None, 10).unwrap(), (vec![], false));
    let st = s
        .xattrop(&g, &AfrDelta::pre_op(&[Kind::Data], &[7]))
        .unwrap();
    assert_eq!(st.dirty, [1, 0, 0]);
    assert_eq!(s.index_list(None, 10).unwrap(), (vec![g], false));
    assert_eq!(s.stat(&g, None).unwrap().meta.afr, st);
    let undo = AfrDelta {
        dirty: [-1, 0, 0],
        pending: vec![(7, [-1, 0, 0])],
    };
    assert!(s.xattrop(&g, &undo).unwrap().is_clean());
    assert_eq!(s.index_list(None, 10).unwrap(), (vec![], false));
    // Writes carry their delta.
    s.write(
        &g,
        None,
        0,
        b"x",
        &Some(AfrDelta::pre_op(&[Kind::Data], &[3])),
        false,
    )
    .unwrap();
    assert!(s.stat(&g, None).unwrap().meta.afr.accuses(3, Kind::Data));
    assert_eq!(s.index_list(None, 10).unwrap().0, vec![g]);
}

#[test]
fn readdir_pages_through_a_large_directory() {
    let (_tmp, s) = store();
    let d = mkdir(&s, &Gfid::ROOT, b"big");
    for i in 0..300 {
        mkfile(&s, &d, format!("file{i:04}").as_bytes());
    }
    let mut cookie = 0;
    let mut names = Vec::new();
    loop {
        let (entries, next, eof) = s.readdir(&d, cookie, 64).unwrap();
        assert!(entries.len() <= 64);
        for e in &entries {
            assert!(e.entry.as_ref().unwrap().meta.gfid.is_some());
        }
        names.extend(entries.into_iter().map(|e| e.name));
        cookie = next;
        if eof {
            break;
        }
    }
    names.sort();
    let want: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("file{i:04}").into_bytes())
        .collect();
    assert_eq!(names, want);
}

#[test]
fn foreign_files_get_an_id_and_user_xattrs_work() {
    let (tmp, s) = store();
    std::fs::write(tmp.path().join("dropped-in"), b"abc").unwrap();
    let e = s.lookup(&Gfid::ROOT, b"dropped-in").unwrap();
    assert_eq!(e.meta.gfid, None);
    let g = Gfid::random();
    let e = s.set_gfid(&Gfid::ROOT, b"dropped-in", &g).unwrap();
    assert_eq!(e.meta.gfid, Some(g));
    assert_eq!(s.read(&g, None, 0, 10).unwrap(), b"abc");
    // A different id for a file that has one is refused.
    assert_eq!(
        s.set_gfid(&Gfid::ROOT, b"dropped-in", &Gfid::random())
            .map(|_| ()),
        Err(Errno(libc::EEXIST))
    );

    s.setxattr(&g, b"user.colour", b"blue", 0, &None).unwrap();
    assert_eq!(s.getxattr(&g, b"user.colour").unwrap(), b"blue");
    assert_eq!(s.listxattr(&g).unwrap(), vec![b"user.colour".to_vec()]);
    // nuage's own attributes are out of reach.
    assert_eq!(
        s.getxattr(&g, XATTR_GFID.as_bytes()),
        Err(Errno(libc::EOPNOTSUPP))
    );
    s.removexattr(&g, b"user.colour", &None).unwrap();
    assert_eq!(s.getxattr(&g, b"user.colour"), Err(Errno(libc::ENODATA)));
}

#[test]
fn checksums_compare_copies_block_by_block() {
    let (_tmp, s) = store();
    let a = mkfile(&s, &Gfid::ROOT, b"a");
    let b = mkfile(&s, &Gfid::ROOT, b"b");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    s.write(&a, None, 0, &data, &None, false).unwrap();
    s.write(&b, None, 0, &data, &None, false).unwrap();
    s.write(&b, None, 200_000, b"X", &None, false).unwrap();
    let ca = s.checksum(&a, 0, 300_000, 128 << 10).unwrap();
    let cb = s.checksum(&b, 0, 300_000, 128 << 10).unwrap();
    assert_eq!(ca.len(), 3);
    assert_eq!(ca[0], cb[0]);
    assert_ne!(ca[1], cb[1]);
    assert_eq!(
        s.checksum(&a, 0, 1 << 40, 1).map(|_| ()),
        Err(Errno(libc::EINVAL))
    );
    // A block is read whole into memory: at most MAX_IO bytes.
    assert_eq!(
        s.checksum(&a, 0, 300_000, crate::proto::MAX_IO + 1)
            .map(|_| ()),
        Err(Errno(libc::EINVAL))
    );
    assert_eq!(
        s.checksum(&a, 0, 300_000, crate::proto::MAX_IO)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn open_files_keep_working_and_layouts_are_stored() {
    let (_tmp, s) = store();
    let g = Gfid::random();
    let mut obj = new_obj(libc::S_IFREG | 0o644);
    obj.open = Some(libc::O_RDWR);
    let (_, f) = s.mknod(&Gfid::ROOT, b"f", &g, &obj, &None, None).unwrap();
    let f = f.expect("opened");
    s.write(&g, Some(f.as_raw_fd()), 0, b"via fd", &None, false)
        .unwrap();
    assert_eq!(s.read(&g, Some(f.as_raw_fd()), 0, 100).unwrap(), b"via fd");

    let d = mkdir(&s, &Gfid::ROOT, b"d");
    let l = DirLayout {
        epoch: 3,
        committed: true,
        range: Some((0, 99)),
    };
    s.set_meta(
        &d,
        &SetMeta {
            layout: Some(l),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.stat(&d, None).unwrap().meta.layout, Some(l));
    // Creation checks the parent's layout epoch when asked.
    let r = s.mknod(
        &d,
        b"x",
        &Gfid::random(),
        &new_obj(libc::S_IFREG | 0o644),
        &None,
        Some(2),
    );
    assert_eq!(r.map(|_| ()), Err(Errno(libc::ESTALE)));
    assert!(
        s.mknod(
            &d,
            b"x",
            &Gfid::random(),
            &new_obj(libc::S_IFREG | 0o644),
            &None,
            Some(3)
        )
        .is_ok()
    );
}

#[test]
fn open_unlinked_files_and_several_link_files_of_one_file() {
    let (_tmp, s) = store();
    let g = Gfid::random();
    let mut obj = new_obj(libc::S_IFREG | 0o644);
    obj.open = Some(libc::O_RDWR);
    let (_, f) = s.mknod(&Gfid::ROOT, b"f", &g, &obj, &None, None).unwrap();
    let f = f.unwrap();
    s.unlink(&Gfid::ROOT, b"f", Some(g), &None).unwrap();
    // Still usable through the open file, with no name left.
    s.write(&g, Some(f.as_raw_fd()), 0, b"x", &None, false)
        .unwrap();
    assert_eq!(s.stat(&g, Some(f.as_raw_fd())).unwrap().attr.nlink, 0);

    // Two names of one file hashed to this brick: two link files, one id.
    let data = Gfid::random();
    for name in [&b"l1"[..], b"l2"] {
        let mut obj = new_obj(LINKTO_MODE);
        obj.linkto = Some(1);
        s.mknod(&Gfid::ROOT, name, &data, &obj, &None, None)
            .unwrap();
        let e = s.lookup(&Gfid::ROOT, name).unwrap();
        assert_eq!((e.meta.gfid, e.meta.linkto), (Some(data), Some(1)));
    }
    s.unlink(&Gfid::ROOT, b"l1", Some(data), &None).unwrap();
    assert!(s.lookup(&Gfid::ROOT, b"l2").is_ok());
}

#[test]
fn large_writes_land_whole_in_page_cache_sized_pieces() {
    let (_tmp, s) = store();
    let g = mkfile(&s, &Gfid::ROOT, b"big");
    // Longer than several pieces and not a multiple of one, at an unaligned offset.
    let len = 3 * PAGE_CACHE_WRITE + 4097;
    let data: Vec<u8> = (0..len as u32).map(|i| (i % 253) as u8).collect();
    s.write(&g, None, 7, &data, &None, false).unwrap();
    let back = s.read(&g, None, 0, (len + 100) as u32).unwrap();
    assert_eq!(back.len(), len + 7);
    assert_eq!(&back[..7], &[0u8; 7]);
    assert!(
        back[7..] == data[..],
        "the pieces must land at their offsets"
    );
    // Through an open descriptor too, over the first write.
    let f = s.open_file(&g, libc::O_RDWR).unwrap();
    let over: Vec<u8> = data.iter().rev().copied().collect();
    s.write(&g, Some(f.as_raw_fd()), 7, &over, &None, false)
        .unwrap();
    let back = s.read(&g, Some(f.as_raw_fd()), 7, len as u32).unwrap();
    assert!(back == over);
}

#[test]
fn paths_of_files_are_found_without_a_recorded_location() {
    let (tmp, s) = store();
    let a = mkdir(&s, &Gfid::ROOT, b"a");
    let b = mkdir(&s, &a, b"b");
    let f = mkfile(&s, &b, b"f");
    let top = mkfile(&s, &Gfid::ROOT, b"top");
    // Only the id: a file's attributes stay small enough for the inode (no `loc`).
    let names = sys::listxattr(XTarget::Path(
        &cstr(tmp.path().join("a/b/f").as_os_str().as_encoded_bytes()).unwrap(),
    ))
    .unwrap();
    assert_eq!(names, vec![XATTR_GFID.as_bytes().to_vec()]);
    assert_eq!(s.path(&f).unwrap(), b"/a/b/f");
    assert_eq!(s.path(&top).unwrap(), b"/top");
    s.rename(&b, b"f", &Gfid::ROOT, b"moved", 0, &None, &None)
        .unwrap();
    assert_eq!(s.path(&f).unwrap(), b"/moved");

    // A location written by an earlier release is used while true, ignored once stale.
    let loc = |parent: &Gfid, name: &[u8]| {
        let mut v = parent.0.to_vec();
        v.extend_from_slice(name);
        v
    };
    let set_loc = |path: &str, value: &[u8]| {
        let p = cstr(tmp.path().join(path).as_os_str().as_encoded_bytes()).unwrap();
        sys::setxattr(
            XTarget::Path(&p),
            &cstr(XATTR_LOC.as_bytes()).unwrap(),
            value,
            0,
        )
        .unwrap();
    };
    set_loc("moved", &loc(&Gfid::ROOT, b"moved"));
    assert_eq!(s.path(&f).unwrap(), b"/moved");
    set_loc("moved", &loc(&b, b"f"));
    assert_eq!(s.path(&f).unwrap(), b"/moved");
    set_loc("moved", b"short");
    assert_eq!(s.path(&f).unwrap(), b"/moved");

    // A file whose only name was removed behind the brick's back (its handle left) is
    // reported by id.
    let h = mkfile(&s, &a, b"kept");
    std::fs::remove_file(tmp.path().join("a/kept")).unwrap();
    assert_eq!(s.path(&h).unwrap(), format!("<gfid:{h}>").into_bytes());
}
