//! A real brick server on loopback and the client connection against it.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::brick::server::Brick;
use crate::brick::store::{BrickIdentity, Store};
use crate::gfid::Gfid;
use crate::markers::AfrState;
use crate::proto::{Creds, NewObject, Target};

pub(super) struct TestBrick {
    _dir: tempfile::TempDir,
    pub(super) addr: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub(super) async fn start_brick() -> TestBrick {
    let dir = tempfile::tempdir().unwrap();
    let identity = BrickIdentity {
        volume: "vol".into(),
        volume_id: "vid".into(),
        brick_id: 3,
    };
    let store = Store::open(dir.path(), &identity).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let task = tokio::spawn(Brick::new(store, identity).serve(listener, stop.clone()));
    TestBrick {
        _dir: dir,
        addr,
        stop,
        task,
    }
}

fn conn(addr: &str, brick_id: u32, timeout: Duration) -> Arc<BrickConn> {
    BrickConn::new(
        BrickAddr {
            addr: addr.to_owned(),
            volume_id: "vid".into(),
            brick_id,
        },
        "test".into(),
        timeout,
    )
    .0
}

fn new_file() -> NewObject {
    NewObject {
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: None,
        creds: Creds::default(),
        afr: AfrState::default(),
        layout: None,
        linkto: None,
        open: Some(libc::O_RDWR),
        lock: false,
    }
}

#[tokio::test]
async fn files_are_created_written_and_read_over_the_wire() {
    let b = start_brick().await;
    let c = conn(&b.addr, 3, DEFAULT_PING_TIMEOUT);
    let g = Gfid::random();
    let Reply::Created {
        entry,
        fd: Some(fd),
        parent: Some(parent),
    } = c
        .req(Op::Mknod {
            parent: Gfid::ROOT,
            name: b"f".to_vec(),
            gfid: g,
            obj: new_file(),
            parent_op: None,
            check_epoch: None,
        })
        .await
        .unwrap()
    else {
        panic!("expected an open file")
    };
    assert_eq!(entry.meta.gfid, Some(g));
    // The parent's attributes after the creation come with it.
    assert!(parent.is_dir());
    let t = Target {
        gfid: g,
        fd: Some(fd),
    };
    let data = vec![7u8; 300_000];
    let (r, _) = c
        .call(
            Op::Write {
                target: t,
                offset: 0,
                op: None,
                kill_suidgid: false,
            },
            &data,
        )
        .await
        .unwrap();
    assert_eq!(r, Reply::Written { size: 300_000 });
    // Many requests in flight at once on one connection.
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = c.clone();
        reads.spawn(async move {
            c.call(
                Op::Read {
                    target: t,
                    offset: i * 10_000,
                    size: 10_000,
                },
                &[],
            )
            .await
        });
    }
    while let Some(r) = reads.join_next().await {
        let (reply, bytes) = r.unwrap().unwrap();
        assert_eq!(reply, Reply::Data { eof: false });
        assert_eq!(bytes, vec![7u8; 10_000]);
    }
    assert_eq!(c.req(Op::Close { fd }).await.unwrap(), Reply::Done);
    // A closed handle is refused; the file is still there by id.
    assert_eq!(
        c.req(Op::Close { fd }).await.unwrap_err(),
        Errno(libc::EBADF)
    );
    let Reply::Entry(e) = c
        .req(Op::Lookup {
            parent: Gfid::ROOT,
            name: b"f".to_vec(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(e.attr.size, 300_000);
    // Errors come back as errno values.
    assert_eq!(
        c.req(Op::Lookup {
            parent: Gfid::ROOT,
            name: b"missing".to_vec(),
        })
        .await
        .unwrap_err(),
        Errno(libc::ENOENT)
    );
    // Over-large reads are refused, not served.
    assert_eq!(
        c.req(Op::Read {
            target: Target { gfid: g, fd: None },
            offset: 0,
            size: crate::proto::MAX_IO + 1,
        })
        .await
        .unwrap_err(),
        Errno(libc::EINVAL)
    );
    b.stop.cancel();
    b.task.await.unwrap();
}

#[tokio::test]
async fn the_wrong_brick_or_a_dead_one_gives_enotconn() {
    let b = start_brick().await;
    let wrong = conn(&b.addr, 4, DEFAULT_PING_TIMEOUT);
    assert_eq!(
        wrong.req(Op::Statfs).await.unwrap_err(),
        Errno(libc::ENOTCONN)
    );
    let c = conn(&b.addr, 3, DEFAULT_PING_TIMEOUT);
    assert!(matches!(c.req(Op::Statfs).await.unwrap(), Reply::Statfs(_)));
    b.stop.cancel();
    b.task.await.unwrap();
    // The server closed the connection; the next request fails at once, not after 42 s.
    let started = Instant::now();
    assert_eq!(c.req(Op::Statfs).await.unwrap_err(), Errno(libc::ENOTCONN));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_silent_brick_is_declared_gone_after_the_ping_timeout() {
    // A "brick" that answers hello and then never answers again (as a paused process).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let hello = proto::read_frame(&mut s).await.unwrap().unwrap();
        let reply = FromBrick::Reply(Ok(Reply::Hello {
            brick_id: 3,
            path: "/x".into(),
        }));
        s.write_all(&proto::encode_frame(hello.id, &reply, 0).unwrap())
            .await
            .unwrap();
        // Read and ignore everything.
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut s, &mut sink).await;
    });
    let c = conn(&addr, 3, Duration::from_secs(1));
    let started = Instant::now();
    assert_eq!(c.req(Op::Statfs).await.unwrap_err(), Errno(libc::ENOTCONN));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    server.abort();
}

#[tokio::test]
async fn garbage_ends_one_connection_not_the_brick() {
    let b = start_brick().await;
    let mut raw = tokio::net::TcpStream::connect(&b.addr).await.unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    // The brick closes it.
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    // A request before hello is refused too.
    let mut raw = tokio::net::TcpStream::connect(&b.addr).await.unwrap();
    raw.write_all(&proto::encode_frame(1, &Op::Statfs, 0).unwrap())
        .await
        .unwrap();
    let n = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    let c = conn(&b.addr, 3, DEFAULT_PING_TIMEOUT);
    assert!(matches!(c.req(Op::Statfs).await.unwrap(), Reply::Statfs(_)));
    b.stop.cancel();
    b.task.await.unwrap();
}

#[tokio::test]
async fn locks_pass_between_connections_and_die_with_them() {
    let b = start_brick().await;
    let a = conn(&b.addr, 3, DEFAULT_PING_TIMEOUT);
    let (c2, mut notes) = BrickConn::new(
        BrickAddr {
            addr: b.addr.clone(),
            volume_id: "vid".into(),
            brick_id: 3,
        },
        "other".into(),
        DEFAULT_PING_TIMEOUT,
    );
    let g = Gfid::random();
    let lock = move |wait, notify| Op::Lock {
        gfid: g,
        domain: proto::Domain::Inode,
        wait,
        notify,
    };
    assert_eq!(a.req(lock(true, true)).await.unwrap(), Reply::Locked);
    assert_eq!(
        c2.req(lock(false, true)).await.unwrap_err(),
        Errno(libc::EAGAIN)
    );
    let waiter = {
        let c2 = c2.clone();
        tokio::spawn(async move { c2.req(lock(true, true)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    // The holder's connection dies: the waiter gets the lock.
    a.disconnect().await;
    assert_eq!(waiter.await.unwrap().unwrap(), Reply::Locked);
    // Contention notices reach the holder.
    let b2 = conn(&b.addr, 3, DEFAULT_PING_TIMEOUT);
    assert_eq!(
        b2.req(lock(false, false)).await.unwrap_err(),
        Errno(libc::EAGAIN)
    );
    let note = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        note,
        Notify::Contended {
            gfid: g,
            domain: proto::Domain::Inode
        }
    );
    b.stop.cancel();
    b.task.await.unwrap();
}

/// The rebalance fence over the wire: refused while the file is open; then other
/// connections' opens and changes of the file wait until the fence goes (and find the
/// file gone, as after a move); a fence dies with its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_holds_other_connections_opens_and_changes_until_it_goes() {
    let b = start_brick().await;
    let (user, mover) = (
        conn(&b.addr, 3, DEFAULT_PING_TIMEOUT),
        conn(&b.addr, 3, DEFAULT_PING_TIMEOUT),
    );
    let create = |name: &'static [u8], g: Gfid| Op::Mknod {
        parent: Gfid::ROOT,
        name: name.to_vec(),
        gfid: g,
        obj: new_file(),
        parent_op: None,
        check_epoch: None,
    };
    let g = Gfid::random();
    let Reply::Created { fd: Some(fd), .. } = user.req(create(b"moving", g)).await.unwrap() else {
        panic!("expected an open file")
    };
    assert_eq!(
        mover.req(Op::Fence { gfid: g }).await,
        Err(Errno(libc::EBUSY)),
        "an open file cannot be fenced"
    );
    user.req(Op::Close { fd }).await.unwrap();
    mover.req(Op::Fence { gfid: g }).await.unwrap();

    let held_open = tokio::spawn({
        let user = user.clone();
        async move {
            user.req(Op::Open {
                gfid: g,
                flags: libc::O_RDWR,
            })
            .await
        }
    });
    let held_chmod = tokio::spawn({
        let user = user.clone();
        async move {
            user.req(Op::Setattr {
                target: Target { gfid: g, fd: None },
                set: crate::proto::SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
                op: None,
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held_open.is_finished(), "an open went through the fence");
    assert!(!held_chmod.is_finished(), "a change went through the fence");
    // The fence's holder is not held: the old copy goes, then the fence.
    user.req(Op::Stat { gfid: g, fd: None }).await.unwrap();
    mover
        .req(Op::Unlink {
            parent: Gfid::ROOT,
            name: b"moving".to_vec(),
            gfid: Some(g),
            parent_op: None,
        })
        .await
        .unwrap();
    mover.req(Op::Unfence { gfid: g }).await.unwrap();
    for held in [held_open, held_chmod] {
        let r = held.await.unwrap();
        assert!(
            matches!(r, Err(Errno(libc::ENOENT | libc::ESTALE))),
            "after the move: {r:?}"
        );
    }

    // A fence goes with its connection.
    let h = Gfid::random();
    let Reply::Created { fd: Some(fd), .. } = user.req(create(b"other", h)).await.unwrap() else {
        panic!("expected an open file")
    };
    user.req(Op::Close { fd }).await.unwrap();
    mover.req(Op::Fence { gfid: h }).await.unwrap();
    mover.disconnect().await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        user.req(Op::Open {
            gfid: h,
            flags: libc::O_RDONLY,
        }),
    )
    .await
    .expect("the fence outlived its connection");
    assert!(matches!(r, Ok(Reply::Opened { .. })), "{r:?}");
    b.stop.cancel();
    let _ = b.task.await;
}
