//! `nuage group` on three lab machines (as root; CI runs as root): a daemon on each,
//! clients sending AGREED and SAFE all along, and real faults — a client process killed,
//! a partition and its healing, a daemon paused past the token timeout, a daemon killed.
//! A checker then goes over everything every client received.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nuage_group::client::{Cause, ConnectOptions, Mailbox, MembershipKind, Received, Service};
use nuage_group::wire::GroupId;
use nuage_lab::Lab;

/// What one client received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    View {
        id: GroupId,
        members: Vec<String>,
        cause: Cause,
        vs_sets: Vec<Vec<String>>,
    },
    Transitional,
    Msg {
        sender: String,
        n: u64,
    },
    Closed,
}

struct Client {
    name: String,
    mb: Arc<Mailbox>,
    log: Arc<Mutex<Vec<Rec>>>,
    sent: Arc<Mutex<Vec<u64>>>,
}

impl Client {
    fn views(&self) -> Vec<Rec> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r, Rec::View { .. }))
            .cloned()
            .collect()
    }

    fn last_view(&self) -> Option<(Vec<String>, Cause, Vec<Vec<String>>)> {
        self.views().into_iter().last().map(|v| match v {
            Rec::View {
                members,
                cause,
                vs_sets,
                ..
            } => (members, cause, vs_sets),
            _ => unreachable!(),
        })
    }

    fn closed(&self) -> bool {
        self.log.lock().unwrap().last() == Some(&Rec::Closed)
    }
}

fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_view(c: &Client, members: &[&String]) -> (Cause, Vec<Vec<String>>) {
    let want: Vec<String> = members.iter().map(|s| (*s).clone()).collect();
    let mut got = None;
    wait(&format!("{} to see {want:?}", c.name), 30, || {
        got = c.last_view().filter(|(m, _, _)| *m == want);
        got.is_some()
    });
    let (_, cause, vs) = got.expect("waited");
    (cause, vs)
}

/// The checker of the properties (nuage_group::check, the one the simulation
/// uses) over every client's log: one order, FIFO, no duplicates, one view per message,
/// virtual synchrony (to the end, for the clients that stay), SAFE, self-delivery. The
/// senders alternate AGREED (odd counters) and SAFE (even ones).
fn check(clients: &[&Client]) -> Result<(), String> {
    let logs: Vec<nuage_group::check::MemberLog> = clients
        .iter()
        .map(|c| {
            let log = c.log.lock().unwrap();
            let recs = log
                .iter()
                .filter_map(|r| match r {
                    Rec::View {
                        id,
                        members,
                        cause,
                        vs_sets,
                    } => Some(nuage_group::check::Rec::View {
                        id: *id,
                        members: members.clone(),
                        network: *cause == Cause::Network,
                        vs_sets: vs_sets.clone(),
                    }),
                    Rec::Transitional => Some(nuage_group::check::Rec::Transitional),
                    Rec::Msg { sender, n } => Some(nuage_group::check::Rec::Msg {
                        sender: sender.clone(),
                        n: *n,
                        safe: n % 2 == 0,
                    }),
                    Rec::Closed => None,
                })
                .collect();
            nuage_group::check::MemberLog {
                label: c.name.clone(),
                private_group: c.name.clone(),
                recs,
                sent: c.sent.lock().unwrap().clone(),
                crashed: log.last() == Some(&Rec::Closed),
            }
        })
        .collect();
    nuage_group::check::check(&logs)
}

#[test]
fn three_machines_through_faults() {
    let name = format!("grp-{}", std::process::id());
    let mut lab = Lab::create(&name, 3).expect("creating the lab (needs root)");
    let dir = lab.dir();
    let addrs: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|m| lab.addr(m).unwrap().to_string())
        .collect();
    let mut conf = String::from("TokenTimeout = 1000\nHurryTimeout = 300\n");
    let bcast = addrs[0].rsplit_once('.').unwrap().0.to_owned() + ".255";
    conf.push_str(&format!("Spread_Segment {bcast}:4803 {{\n"));
    for (i, a) in addrs.iter().enumerate() {
        conf.push_str(&format!("  n{} {a}\n", i + 1));
    }
    conf.push_str("}\n");
    let conf_path = dir.join("spread.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let nuage = env!("CARGO_BIN_EXE_nuage");
    let run_dir = |m: &str| dir.join(format!("{m}-run"));
    let mut daemons = Vec::new();
    for m in ["n1", "n2", "n3"] {
        std::fs::create_dir_all(run_dir(m)).unwrap();
        let mut cmd = lab.command(m, nuage).unwrap();
        cmd.args(["group", "daemon", "-l", "n", "-n", m, "-c"])
            .arg(&conf_path)
            .arg("--runtime-dir")
            .arg(run_dir(m))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        daemons.push(cmd.spawn().unwrap());
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let connect = |i: usize, user: &str| -> Client {
        let target = format!("4803@{}", addrs[i]);
        let mut mb = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while mb.is_none() {
            match rt.block_on(Mailbox::connect(&target, user, &ConnectOptions::default())) {
                Ok(m) => mb = Some(m),
                Err(e) => {
                    assert!(Instant::now() < deadline, "connecting to {target}: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let mb = Arc::new(mb.unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        rt.block_on(mb.join("g")).unwrap();
        {
            let (mb, log) = (mb.clone(), log.clone());
            rt.spawn(async move {
                loop {
                    let rec = match mb.receive().await {
                        Ok(Received::Message(m)) => {
                            let text = String::from_utf8_lossy(&m.data).into_owned();
                            Rec::Msg {
                                sender: m.sender,
                                n: text.parse().expect("a counter"),
                            }
                        }
                        Ok(Received::Membership(m)) => match m.kind {
                            MembershipKind::Regular { cause, .. } => Rec::View {
                                id: m.group_id.expect("regular views carry an id"),
                                members: m.members,
                                cause,
                                vs_sets: m.vs_sets,
                            },
                            MembershipKind::Transitional => Rec::Transitional,
                            MembershipKind::SelfLeave => continue,
                        },
                        Err(_) => {
                            log.lock().unwrap().push(Rec::Closed);
                            break;
                        }
                    };
                    log.lock().unwrap().push(rec);
                }
            });
        }
        {
            let (mb, sent, stop) = (mb.clone(), sent.clone(), stop.clone());
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let svc = if n % 2 == 0 {
                        Service::Safe
                    } else {
                        Service::Agreed
                    };
                    if mb
                        .multicast(svc, &["g"], 0, n.to_string().as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent.lock().unwrap().push(n);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            });
        }
        Client {
            name: mb.private_group().to_owned(),
            mb,
            log,
            sent,
        }
    };
    let c1 = connect(0, "c1");
    let c2 = connect(1, "c2");
    let c3 = connect(2, "c3");
    let (p1, p2, p3) = (&c1.name, &c2.name, &c3.name);
    for c in [&c1, &c2, &c3] {
        wait_view(c, &[p1, p2, p3]);
    }

    // (a) A client process killed: a DISCONNECT at the others.
    let mut victim = lab.command("n2", nuage).unwrap();
    victim
        .args([
            "group",
            "shell",
            "-u",
            "victim",
            "-s",
            "4803",
            "--runtime-dir",
        ])
        .arg(run_dir("n2"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut victim = victim.spawn().unwrap();
    writeln!(victim.stdin.as_mut().unwrap(), "j g").unwrap();
    let v = "#victim#n2".to_owned();
    for c in [&c1, &c2, &c3] {
        wait_view(c, &[p1, p2, &v, p3]);
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    for c in [&c1, &c2, &c3] {
        let (cause, _) = wait_view(c, &[p1, p2, p3]);
        assert_eq!(cause, Cause::Disconnect, "at {}", c.name);
    }

    // (c) A partition {n1,n2} | {n3}: both sides go on; healing merges them.
    lab.partition(&[vec!["n1", "n2"], vec!["n3"]]).unwrap();
    let (cause, _) = wait_view(&c1, &[p1, p2]);
    assert_eq!(cause, Cause::Network);
    wait_view(&c2, &[p1, p2]);
    let (cause, _) = wait_view(&c3, &[p3]);
    assert_eq!(cause, Cause::Network);
    // Both sides keep delivering their own traffic.
    let count = |c: &Client, from: &String| {
        c.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r, Rec::Msg { sender, .. } if sender == from))
            .count()
    };
    let (before12, before33) = (count(&c1, p2), count(&c3, p3));
    wait("both sides to keep working", 20, || {
        count(&c1, p2) > before12 + 5 && count(&c3, p3) > before33 + 5
    });
    lab.heal().unwrap();
    let (cause, vs) = wait_view(&c1, &[p1, p2, p3]);
    assert_eq!(cause, Cause::Network);
    assert_eq!(
        vs,
        [vec![p1.clone(), p2.clone()], vec![p3.clone()]],
        "vs-sets name who came from where"
    );
    let (_, vs3) = wait_view(&c3, &[p1, p2, p3]);
    assert_eq!(vs3, vs);

    // (d) n2 paused past the token timeout is excluded; resumed, it comes back.
    lab.pause("n2").unwrap();
    for c in [&c1, &c3] {
        let (cause, _) = wait_view(c, &[p1, p3]);
        assert_eq!(cause, Cause::Network, "at {}", c.name);
    }
    lab.resume("n2").unwrap();
    for c in [&c1, &c2, &c3] {
        // The vs-sets depend on the configurations each went through (n2 waking up
        // with a stale ring may cut the others apart once more); the checker verifies
        // them against each member's previous view.
        let (cause, _) = wait_view(c, &[p1, p2, p3]);
        assert_eq!(cause, Cause::Network, "at {}", c.name);
    }

    // (b) n3's daemon killed: TRANSITIONAL then a NETWORK view at n1 and n2; c3's
    // connection is closed.
    let before: Vec<usize> = [&c1, &c2]
        .iter()
        .map(|c| c.log.lock().unwrap().len())
        .collect();
    lab.kill("n3").unwrap();
    for (c, before) in [&c1, &c2].into_iter().zip(before) {
        let (cause, _) = wait_view(c, &[p1, p2]);
        assert_eq!(cause, Cause::Network, "at {}", c.name);
        let tail: Vec<Rec> = c.log.lock().unwrap()[before..].to_vec();
        let t = tail
            .iter()
            .position(|r| *r == Rec::Transitional)
            .unwrap_or_else(|| panic!("no TRANSITIONAL at {}: {tail:?}", c.name));
        let r = tail
            .iter()
            .position(|r| matches!(r, Rec::View { .. }))
            .unwrap();
        assert!(
            t < r,
            "TRANSITIONAL comes before the regular view at {}: {tail:?}",
            c.name
        );
    }
    wait("c3 to see its connection closed", 20, || c3.closed());

    // Let the last messages arrive, then check everything.
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    if let Err(e) = check(&[&c1, &c2, &c3]) {
        panic!("{e}");
    }
    for c in [&c1, &c2] {
        let sent = c.sent.lock().unwrap().len();
        assert!(sent > 50, "{} sent only {sent}", c.name);
    }
    drop(rt);
    for mut d in daemons {
        let _ = d.kill();
        let _ = d.wait();
    }
    let _ = c1.mb.private_group();
}

/// `nuage up` on each machine, with nothing about groups in nuage.toml: every node runs a
/// group daemon on port 4803, the daemons are the node and its peers, and they form one
/// ring; `nuage group status` inside a machine finds its own daemon (the lab gives each
/// machine its own socket directory).
#[test]
fn nuage_up_on_three_machines_forms_one_group_ring_from_the_peers() {
    let name = format!("gup-{}", std::process::id());
    let lab = Lab::create(&name, 3).expect("creating the lab (needs root)");
    let nuage = env!("CARGO_BIN_EXE_nuage");
    // As an operator runs it: the group daemon's default applies (the nodes inherit this
    // process's environment, where the common helpers' NUAGE_GROUP_ENABLED=false is not).
    lab.start_nodes(std::path::Path::new(nuage)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in ["n1", "n2", "n3"] {
        loop {
            let out = lab.exec(m, nuage, &["group", "status", "--json"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let st: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            if let Some(st) = st.filter(|st| {
                st["operational"] == true && st["members"] == serde_json::json!(["n1", "n2", "n3"])
            }) {
                assert_eq!(st["daemon"], m);
                assert_eq!(st["port"], 4803);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{m}: no ring of n1, n2, n3 within 30 s: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // A client on n1 and one on n3 (over TCP from the host) share a group.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = |m: &str, user: &'static str| {
            let target = format!("4803@{}", lab.addr(m).unwrap());
            async move {
                Mailbox::connect(&target, user, &ConnectOptions::default())
                    .await
                    .unwrap()
            }
        };
        let a = connect("n1", "a").await;
        let c = connect("n3", "c").await;
        a.join("g").await.unwrap();
        c.join("g").await.unwrap();
        // Wait until a sees both members, then send.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no view of a and c");
            match tokio::time::timeout(Duration::from_secs(20), a.receive())
                .await
                .unwrap()
                .unwrap()
            {
                Received::Membership(m) if m.members.len() == 2 => break,
                _ => {}
            }
        }
        a.multicast(Service::Agreed, &["g"], 7, b"through nuage up")
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), c.receive())
                .await
                .expect("c receives within 20 s")
                .unwrap()
            {
                Received::Message(m) => {
                    assert_eq!(&m.data[..], b"through nuage up");
                    assert_eq!(m.sender, "#a#n1");
                    break;
                }
                Received::Membership(_) => {}
            }
        }
    });
}
