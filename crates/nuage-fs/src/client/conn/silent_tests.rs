//! A brick that goes silent (as behind a partition) and comes back: requests fail at once
//! while it is silent, and the background reconnection serves them again afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::tests::{TestBrick, start_brick};
use super::*;

/// Copies one direction of a proxied connection; while `silent` is set, what arrives
/// is read and dropped (the bytes a partition would lose), and an end of stream is not
/// passed on either (a partition loses the FIN too: the brick, hearing nothing, closes
/// its side, and the client must not learn of it).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) if silent.load(Ordering::Acquire) => {
                // Keep `to` open, as unaware as the partition leaves it.
                return std::future::pending::<()>().await;
            }
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !silent.load(Ordering::Acquire) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A real brick server behind a proxy that can go silent: connections stay open (no
/// reset, no close) but nothing passes, as in a network partition.
async fn silent_capable_brick() -> (String, Arc<AtomicBool>, TestBrick) {
    let brick = start_brick().await;
    let brick_addr = brick.addr.clone();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let silent = Arc::new(AtomicBool::new(false));
    let s = silent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = proxy.accept().await {
            let brick = TcpStream::connect(&brick_addr).await.unwrap();
            let (cr, cw) = client.into_split();
            let (br, bw) = brick.into_split();
            tokio::spawn(pump(cr, bw, s.clone()));
            tokio::spawn(pump(br, cw, s.clone()));
        }
    });
    (proxy_addr, silent, brick)
}

#[tokio::test]
async fn a_silent_brick_fails_requests_at_once_and_is_reconnected_when_it_answers() {
    let (addr, silent, _dir) = silent_capable_brick().await;
    let ping_timeout = Duration::from_secs(3);
    let (c, _notes) = BrickConn::new(
        BrickAddr {
            addr,
            volume_id: "vid".into(),
            brick_id: 3,
        },
        "test".into(),
        ping_timeout,
    );
    assert!(matches!(c.req(Op::Statfs).await.unwrap(), Reply::Statfs(_)));

    // Silence: the request in flight fails once the ping timeout has passed...
    silent.store(true, Ordering::Release);
    assert_eq!(c.req(Op::Statfs).await.unwrap_err(), Errno(libc::ENOTCONN));
    // ...and later ones fail at once, instead of each waiting for a connection (and
    // its hello) to time out.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(c.req(Op::Statfs).await.unwrap_err(), Errno(libc::ENOTCONN));
        let took = started.elapsed();
        assert!(took < ping_timeout / 2, "{took:?}");
    }

    // The brick answers again: within a few reconnection intervals, requests succeed.
    silent.store(false, Ordering::Release);
    let deadline = Instant::now() + RECONNECT_INTERVAL * 2 + ping_timeout * 2;
    loop {
        match c.req(Op::Statfs).await {
            Ok(Reply::Statfs(_)) => break,
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) => {
                assert_eq!(e, Errno(libc::ENOTCONN));
                assert!(Instant::now() < deadline, "never reconnected");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
