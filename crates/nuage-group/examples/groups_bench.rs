//! The benchmark client of bench/groups: one sender, several receivers, one group.
//!
//! ```text
//! groups_bench send -s SPREAD -g GROUP --service agreed --size 1000 --count 20000 --members 3 --latency 2000
//! groups_bench recv -s SPREAD -g GROUP --count 20000 --latency 2000
//! ```
//!
//! The sender waits until the group has `--members` members, sends `--count` messages as
//! fast as the daemon takes them (throughput phase, message type 1), then, once it has its own messages back, `--latency`
//! messages one at a time (each after the previous one came back), each carrying its send time (type 2; lab machines share the
//! host's clock, so one-way latency is measured directly), then one END message (type 3).
//! A receiver prints one line: `recv msgs=N secs=T msgs_per_s=R mbit_per_s=B p50_us=X
//! p99_us=Y`. Throughput is measured at the receivers, from the first to the last
//! message of the throughput phase.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nuage_group::client::{ConnectOptions, Mailbox, Received, Service};

/// Pause between the throughput phase and the latency probes (receivers drain).
const SETTLE: Duration = Duration::from_secs(1);

struct Args {
    mode: String,
    spread: String,
    group: String,
    service: Service,
    size: usize,
    count: u64,
    members: usize,
    latency: u64,
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        mode,
        spread: "4803".into(),
        group: "bench".into(),
        service: Service::Agreed,
        size: 1000,
        count: 10_000,
        members: 3,
        latency: 1000,
    };
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "-s" => a.spread = v,
            "-g" => a.group = v,
            "--service" => a.service = v.parse::<Service>().unwrap_or_else(|e: String| fail(&e)),
            "--size" => a.size = v.parse().unwrap_or_else(|_| usage()),
            "--count" => a.count = v.parse().unwrap_or_else(|_| usage()),
            "--members" => a.members = v.parse().unwrap_or_else(|_| usage()),
            "--latency" => a.latency = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a
}

fn usage() -> ! {
    fail(
        "usage: groups_bench send|recv [-s SPREAD] [-g GROUP] [--service S] [--size B] [--count N] [--members M] [--latency N]",
    )
}

fn fail(msg: &str) -> ! {
    eprintln!("groups_bench: {msg}");
    std::process::exit(2)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = parse();
    let name = format!("b{}", std::process::id() % 1_000_000);
    let mb = Mailbox::connect(&a.spread, &name, &ConnectOptions::default())
        .await
        .unwrap_or_else(|e| fail(&format!("connect {}: {e}", a.spread)));
    mb.join(&a.group)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    match a.mode.as_str() {
        "send" => send(&a, &mb).await,
        "recv" => recv(&a, &mb).await,
        _ => usage(),
    }
    let _ = mb.disconnect().await;
}

async fn send(a: &Args, mb: &Mailbox) {
    // Wait for the receivers.
    loop {
        match mb.receive().await {
            Ok(Received::Membership(m)) if m.group == a.group && m.members.len() >= a.members => {
                break;
            }
            Ok(_) => {}
            Err(e) => fail(&e.to_string()),
        }
    }
    let body = vec![b'x'; a.size.max(16)];
    let groups = [a.group.as_str()];
    // The sender reads its own copies concurrently (so its session queue never fills)
    // and counts them: (throughput messages, latency probes) delivered back to it.
    let (seen_tx, mut seen) = tokio::sync::watch::channel((0u64, 0u64));
    let reader = async {
        loop {
            match mb.receive().await {
                Ok(Received::Message(m)) => match m.mess_type {
                    1 => seen_tx.send_modify(|s| s.0 += 1),
                    2 => seen_tx.send_modify(|s| s.1 += 1),
                    _ => break,
                },
                Ok(_) => {}
                Err(e) => fail(&e.to_string()),
            }
        }
    };
    let writer = async {
        let start = Instant::now();
        for _ in 0..a.count {
            mb.multicast(a.service, &groups, 1, &body)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            // Writes to a socket rarely wait, so let the reader (same task) drain our
            // own copies; a client that does not read is disconnected by the daemon.
            tokio::task::yield_now().await;
        }
        // The throughput phase is over once the sender has its own messages back, so
        // the latency probes do not queue behind it.
        let _ = seen.wait_for(|s| s.0 >= a.count).await;
        let took = start.elapsed();
        // Said at once (the benchmark script snapshots the daemons' counters on it).
        println!("throughput phase over secs={:.3}", took.as_secs_f64());
        // The receivers may still be behind the sender: let them drain before probing,
        // so the probes measure latency, not the receivers' backlog (same pause in
        // cpg_bench.c).
        tokio::time::sleep(SETTLE).await;
        for i in 0..a.latency {
            let mut b = body.clone();
            b[..8].copy_from_slice(&now_us().to_le_bytes());
            mb.multicast(a.service, &groups, 2, &b)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            // One probe in flight at a time: latency without queueing.
            let _ = seen.wait_for(|s| s.1 > i).await;
        }
        mb.multicast(a.service, &groups, 3, b"end")
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        println!("send msgs={} secs={:.3}", a.count, took.as_secs_f64());
    };
    tokio::join!(reader, writer);
}

async fn recv(a: &Args, mb: &Mailbox) {
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut lat: Vec<u64> = Vec::with_capacity(a.latency as usize);
    loop {
        match mb.receive().await {
            Ok(Received::Message(m)) => match m.mess_type {
                1 => {
                    let t = Instant::now();
                    first.get_or_insert(t);
                    last = t;
                    n += 1;
                    bytes += m.data.len() as u64;
                }
                2 => {
                    let sent = u64::from_le_bytes(m.data[..8].try_into().expect("8 bytes"));
                    lat.push(now_us().saturating_sub(sent));
                }
                _ => break,
            },
            Ok(_) => {}
            Err(e) => fail(&e.to_string()),
        }
    }
    let secs = first.map_or(0.0, |f| (last - f).as_secs_f64()).max(1e-6);
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "recv msgs={n} secs={secs:.3} msgs_per_s={:.0} mbit_per_s={:.1} p50_us={} p99_us={} p90_us={} max_us={}",
        n as f64 / secs,
        bytes as f64 * 8.0 / secs / 1e6,
        pct(0.50),
        pct(0.99),
        pct(0.90),
        lat.last().copied().unwrap_or(0)
    );
}
