//! Ring members in this process over real loopback sockets, with the test playing the
//! launcher: a healthy election, and a member that dies between `ready` and `go`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::frame::FrameReader;

struct Member {
    task: JoinHandle<anyhow::Result<()>>,
    from: FrameReader<OwnedReadHalf, ToLauncher>,
    to: OwnedWriteHalf,
    addr: SocketAddr,
}

/// Starts `n` members, each connected to the test's launcher socket.
async fn members(n: u32) -> Vec<Member> {
    let launcher = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let launcher_addr = launcher.local_addr().unwrap();
    let mut out = Vec::new();
    for index in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let s = TcpStream::connect(launcher_addr).await?;
            let (r, mut w) = s.into_split();
            let mut from = FrameReader::<_, ToProcess>::new(r);
            let Some(ToProcess::Ring {
                n,
                bootstrap,
                contact,
                algorithm,
            }) = from.read().await?
            else {
                bail!("no ring order");
            };
            let task = Task {
                index,
                n,
                bootstrap,
                contact,
                algorithm,
                own: addr,
            };
            run_member(task, listener, &mut from, &mut w).await
        });
        let (s, _) = launcher.accept().await.unwrap();
        let (r, w) = s.into_split();
        out.push(Member {
            task,
            from: FrameReader::new(r),
            to: w,
            addr,
        });
    }
    out
}

async fn order_ring(ms: &mut [Member], bootstrap: Bootstrap, ids: &[u64], initiators: &[u32]) {
    let n = ms.len() as u32;
    let addrs: Vec<SocketAddr> = ms.iter().map(|m| m.addr).collect();
    for (i, m) in ms.iter_mut().enumerate() {
        let contact = match (bootstrap, i) {
            (_, 0) => None,
            (Bootstrap::Chain, i) => Some(addrs[i - 1]),
            (Bootstrap::First, _) => Some(addrs[0]),
        };
        let order = ToProcess::Ring {
            n,
            bootstrap,
            contact,
            algorithm: Algorithm::Election {
                id: ids[i],
                initiator: initiators.contains(&(i as u32)),
            },
        };
        write_frame(&mut m.to, &order).await.unwrap();
    }
    for m in ms.iter_mut() {
        assert_eq!(m.from.read().await.unwrap(), Some(ToLauncher::Ready));
    }
}

#[tokio::test]
async fn election_over_loopback_members() {
    for bootstrap in [Bootstrap::Chain, Bootstrap::First] {
        let ids = [40, 10, 70, 20, 60, 30];
        let mut ms = members(ids.len() as u32).await;
        order_ring(&mut ms, bootstrap, &ids, &[1, 3]).await;
        for m in ms.iter_mut() {
            write_frame(&mut m.to, &ToProcess::Go).await.unwrap();
        }
        let mut ranks = Vec::new();
        for m in ms.iter_mut() {
            match m.from.read().await.unwrap() {
                Some(ToLauncher::Elected(r)) => {
                    assert_eq!(r.leader, 70);
                    assert_eq!(r.size.is_some(), r.id == 70);
                    ranks.push(r.rank);
                }
                other => panic!("{other:?}"),
            }
        }
        ranks.sort_unstable();
        assert_eq!(ranks, vec![0, 1, 2, 3, 4, 5]);
        for m in ms {
            drop(m.to);
            m.task.await.unwrap().unwrap();
        }
    }
}

/// A member that dies after the ring is up never leaves the others waiting forever: each
/// fails well within its timeouts ("the predecessor closed its link" cascades around), and
/// its launcher connection ends (the real agent also sends `failed` first).
#[tokio::test]
async fn a_member_dying_mid_election_fails_the_others_not_hangs_them() {
    let ids = [5, 9, 2, 7, 3];
    let mut ms = members(ids.len() as u32).await;
    order_ring(&mut ms, Bootstrap::Chain, &ids, &[0, 1, 2, 3, 4]).await;
    let dead = ms.remove(2);
    dead.task.abort(); // its sockets close, as when a process is killed
    let _ = dead.task.await;
    for m in ms.iter_mut() {
        let _ = write_frame(&mut m.to, &ToProcess::Go).await;
    }
    let limit = Duration::from_secs(10);
    assert!(
        limit < RUN_TIMEOUT,
        "failing comes from the broken links, not a timeout"
    );
    for m in ms {
        let Member { task, mut from, .. } = m;
        let result = tokio::time::timeout(limit, task)
            .await
            .expect("a member hung");
        let err = result.unwrap().expect_err("the election cannot succeed");
        let text = format!("{err:#}");
        assert!(
            text.contains("predecessor") || text.contains("successor"),
            "{text}"
        );
        assert_eq!(from.read().await.unwrap(), None);
    }
}
