//! Load generator for bench/finger: asks a finger server the same query from C clients
//! at once for S seconds and prints what it measured. Also builds the fake system the
//! benchmark mounts over the real one, so both servers answer about the same users.
//!
//! ```text
//! finger_load system DIR USERS          # passwd (this machine's + USERS users), utmp, …
//! finger_load run HOST PORT QUERY CLIENTS SECONDS
//! ```
//!
//! `run` prints one line: `queries=N qps=Q p50_ms=A p99_ms=B bytes=L`, where `bytes` is
//! the length of the answers (all must be the same length, or it fails: a server that
//! answered something else would not be measured fairly).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nuage_coord::finger::records::{Login, encode_utmp_record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer read; a larger one is an error.
const MAX_ANSWER: usize = 16 << 20;
/// One query may take this long before the run fails.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["system", dir, users] => system(Path::new(dir), users.parse().context("USERS")?),
        ["run", host, port, query, clients, seconds] => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run(
                host,
                port.parse().context("PORT")?,
                query,
                clients.parse().context("CLIENTS")?,
                Duration::from_secs(seconds.parse().context("SECONDS")?),
            ))
        }
        _ => bail!(
            "usage: finger_load system DIR USERS | finger_load run HOST PORT QUERY CLIENTS SECONDS"
        ),
    }
}

/// `DIR/passwd` (this machine's, plus user1…userN, each logged in once, with a plan),
/// `DIR/utmp`, empty `DIR/lastlog` and `DIR/wtmp`, `DIR/home/userI/.plan`, and the
/// terminals `DIR/pts/I` (to be mounted over /dev/pts).
fn system(dir: &Path, users: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    ensure!((1..=1000).contains(&users), "USERS must be 1 to 1000");
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    for sub in ["home", "pts"] {
        std::fs::create_dir_all(dir.join(sub))?;
        mode(&dir.join(sub), 0o755)?;
    }
    mode(dir, 0o755)?;
    let now = nuage_core::time::unix_now() as i64;
    let mut passwd = std::fs::read_to_string("/etc/passwd")?;
    let mut utmp = Vec::new();
    for i in 1..=users {
        let home = dir.join(format!("home/user{i}"));
        std::fs::create_dir_all(&home)?;
        mode(&home, 0o755)?;
        std::fs::write(
            home.join(".plan"),
            format!("User {i}'s plan: measure finger.\nLine two.\n"),
        )?;
        mode(&home.join(".plan"), 0o644)?;
        passwd.push_str(&format!(
            "user{i}:x:{uid}:{uid}:User Number{i},Room {i},555{i:04},:{}:/bin/bash\n",
            home.display(),
            uid = 20_000 + i
        ));
        let login = Login {
            user: format!("user{i}"),
            line: format!("pts/{i}"),
            host: format!("10.0.{}.{}", i / 250, i % 250 + 1),
            time: now - 60 * i as i64,
        };
        utmp.extend(encode_utmp_record(&login, 1000 + i as i32));
        let tty = dir.join(format!("pts/{i}"));
        std::fs::write(&tty, b"")?;
        mode(&tty, 0o620)?;
        // Used "tomorrow": idle 0 for both servers, so their answers stay identical.
        let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&tty)?
            .set_times(std::fs::FileTimes::new().set_accessed(tomorrow))?;
    }
    std::fs::write(dir.join("passwd"), passwd)?;
    std::fs::write(dir.join("utmp"), utmp)?;
    std::fs::write(dir.join("lastlog"), b"")?;
    std::fs::write(dir.join("wtmp"), b"")?;
    for f in ["passwd", "utmp", "lastlog", "wtmp"] {
        mode(&dir.join(f), 0o644)?;
    }
    Ok(())
}

async fn run(
    host: &str,
    port: u16,
    query: &str,
    clients: usize,
    length: Duration,
) -> anyhow::Result<()> {
    ensure!((1..=1000).contains(&clients), "CLIENTS must be 1 to 1000");
    let line = format!("{query}\r\n");
    let end = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (host, line) = (host.to_owned(), line.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut size = None;
            while Instant::now() < end {
                let start = Instant::now();
                let answer = tokio::time::timeout(QUERY_TIMEOUT, ask(&host, port, &line))
                    .await
                    .context("a query took longer than 30 s")??;
                latencies.push(start.elapsed());
                ensure!(!answer.is_empty(), "empty answer");
                match size {
                    None => size = Some(answer.len()),
                    Some(s) => {
                        ensure!(s == answer.len(), "answers differ: {s} vs {}", answer.len())
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, size))
        }));
    }
    let mut all = Vec::new();
    let mut size = None;
    for t in tasks {
        let (latencies, s) = t.await??;
        all.extend(latencies);
        if let (Some(a), Some(b)) = (size, s) {
            ensure!(a == b, "answers differ: {a} vs {b}");
        }
        size = size.or(s);
    }
    ensure!(!all.is_empty(), "no query finished");
    all.sort();
    let pct = |p: usize| all[(all.len() * p / 100).min(all.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "queries={} qps={:.0} p50_ms={:.2} p99_ms={:.2} bytes={}",
        all.len(),
        all.len() as f64 / length.as_secs_f64(),
        pct(50),
        pct(99),
        size.unwrap_or(0)
    );
    Ok(())
}

async fn ask(host: &str, port: u16, line: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect((host, port)).await?;
    stream.write_all(line.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .await?;
    ensure!(
        answer.len() <= MAX_ANSWER,
        "answer longer than {MAX_ANSWER} bytes"
    );
    Ok(answer)
}
