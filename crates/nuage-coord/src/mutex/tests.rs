use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::frame::{FrameReader, write_frame};

struct Running {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let server = MutexServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let stop = CancellationToken::new();
    let task =
        tokio::spawn(server.run(stop.clone(), Arc::new(move |e| log.lock().unwrap().push(e))));
    Running {
        addr,
        events,
        stop,
        task,
    }
}

impl Running {
    async fn acquire(&self, name: &str) -> Holder {
        acquire("127.0.0.1", self.addr.port(), name, |_, _| {})
            .await
            .unwrap()
    }
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
    async fn wait_for(&self, what: impl Fn(&[Event]) -> bool) {
        for _ in 0..500 {
            if what(&self.events()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never met: {:#?}", self.events());
    }
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn grants(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Grant { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn grants_follow_request_order_and_exclude_each_other() {
    let s = start().await;
    let first = s.acquire("first").await;
    assert_eq!(first.ticket, 1);
    // Queue five more, one after the other, so their arrival order is known.
    let mut waiters = Vec::new();
    for i in 0..5u64 {
        let port = s.addr.port();
        waiters.push(tokio::spawn(async move {
            acquire("127.0.0.1", port, &format!("w{i}"), |_, _| {})
                .await
                .unwrap()
        }));
        s.wait_for(|e| {
            e.iter()
                .any(|e| matches!(e, Event::Request { ticket, .. } if *ticket == i + 2))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        grants(&s.events()),
        vec![1],
        "nobody else is granted while held"
    );
    first.release().await.unwrap();
    for w in waiters {
        let h = w.await.unwrap();
        h.release().await.unwrap();
    }
    assert_eq!(grants(&s.events()), vec![1, 2, 3, 4, 5, 6]);
    // Every grant comes after the previous release.
    let mut holding = false;
    for e in s.events() {
        match e {
            Event::Grant { .. } => {
                assert!(!holding, "two holders");
                holding = true;
            }
            Event::Release { clean, .. } => {
                assert!(clean);
                holding = false;
            }
            _ => {}
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_holder_that_disappears_releases_the_lock() {
    let s = start().await;
    let holder = s.acquire("doomed").await;
    let port = s.addr.port();
    let next =
        tokio::spawn(async move { acquire("127.0.0.1", port, "next", |_, _| {}).await.unwrap() });
    s.wait_for(|e| e.len() >= 3).await;
    drop(holder); // the connection closes without a release
    let h = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.ticket, 2);
    assert!(s.events().iter().any(|e| matches!(
        e,
        Event::Release {
            ticket: 1,
            clean: false,
            ..
        }
    )));
    h.release().await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_waiter_that_leaves_is_skipped() {
    let s = start().await;
    let holder = s.acquire("a").await;
    let port = s.addr.port();
    let quitter = tokio::spawn(async move {
        acquire("127.0.0.1", port, "b", |_, _| {}).await.unwrap();
    });
    s.wait_for(|e| e.len() >= 3).await;
    quitter.abort();
    let _ = quitter.await;
    s.wait_for(|e| {
        e.iter()
            .any(|e| matches!(e, Event::Abandon { ticket: 2, .. }))
    })
    .await;
    holder.release().await.unwrap();
    let c = s.acquire("c").await;
    assert_eq!(c.ticket, 3);
    c.release().await.unwrap();
    assert_eq!(grants(&s.events()), vec![1, 3]);
    s.stop().await;
}

#[tokio::test]
async fn bad_clients_end_their_session_not_the_server() {
    let s = start().await;
    // Garbage, a release before acquire, and a frame over the limit.
    let mut garbage = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    garbage.write_all(b"\x00\x00\x00\x03{x}").await.unwrap();
    let mut early = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    write_frame(&mut early, &Request::Release).await.unwrap();
    let mut reader = FrameReader::<_, Reply>::new(early);
    match reader.read().await.unwrap() {
        Some(Reply::Refused { reason }) => assert!(reason.contains("before acquire")),
        other => panic!("{other:?}"),
    }
    let mut huge = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    huge.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    s.wait_for(|e| {
        e.iter()
            .filter(|e| matches!(e, Event::Error { .. }))
            .count()
            == 3
    })
    .await;
    // The server still grants.
    let h = s.acquire("fine").await;
    h.release().await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn run_locked_runs_the_command_and_returns_its_status() {
    let s = start().await;
    let port = s.addr.port();
    let ok = run_locked("127.0.0.1", port, "t", "true", &[])
        .await
        .unwrap();
    assert!(ok.success());
    let fail = run_locked("127.0.0.1", port, "t", "false", &[])
        .await
        .unwrap();
    assert_eq!(fail.code(), Some(1));
    let err = run_locked("127.0.0.1", port, "t", "/nonexistent/prog", &[])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("cannot run"), "{err:#}");
    s.stop().await;
}

#[test]
fn names_are_cleaned() {
    assert_eq!(server_clean_name("a\nb"), "ab");
    assert_eq!(server_clean_name(""), "anonymous");
    assert_eq!(server_clean_name(&"x".repeat(500)).len(), MAX_NAME);
}

fn server_clean_name(s: &str) -> String {
    super::server::clean_name(s)
}
