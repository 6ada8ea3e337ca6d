//! The load generator of `bench/functions/run.sh`. It speaks to any TCP server that
//! answers each line with one line (nuage's functions, socat/xinetd running cat, HAProxy
//! in front of them) and prints one line of figures:
//!
//! ```text
//! fn-loadgen conns ADDR TOTAL CLIENTS   connect, send a line, read the answer, close
//! fn-loadgen reqs  ADDR TOTAL CONNS     round trips on persistent connections
//! fn-loadgen free-port                  a free TCP port on 127.0.0.1
//! ```
//!
//! Output: `rate=<ops/s> p50_us=<µs> p99_us=<µs> errors=<n>`. Each of CLIENTS threads
//! runs its share of TOTAL operations back to back; latency is per operation. With one
//! client, also `p50_fast_half_us=<µs> p50_slow_half_us=<µs>`: the p50 of the even and of
//! the odd operations, the lower first (behind a round-robin balancer over two machines,
//! one path each).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use socket2::{Domain, Protocol, Socket, Type};
use std::time::{Duration, Instant};

/// The request line every operation sends (its answer must be the same bytes).
const REQUEST: &[u8] = b"hello nuage\n";
/// Longest wait for one answer before the operation counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for one answer: the request's length and more, so a longer answer is seen as wrong.
const ANSWER_MAX: usize = 64;
/// Most client threads.
const MAX_CLIENTS: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("free-port") => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            println!("{}", l.local_addr().expect("local address").port());
            return;
        }
        Some(mode @ ("conns" | "reqs")) if args.len() == 4 => run(mode, &args[1..]),
        _ => Err("usage: fn-loadgen conns|reqs ADDR TOTAL CLIENTS | fn-loadgen free-port".into()),
    };
    if let Err(e) = result {
        eprintln!("fn-loadgen: {e}");
        std::process::exit(1);
    }
}

fn run(mode: &str, args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = args[0].parse().map_err(|e| format!("{}: {e}", args[0]))?;
    let total: usize = args[1]
        .parse()
        .map_err(|e| format!("TOTAL {}: {e}", args[1]))?;
    let clients: usize = args[2]
        .parse()
        .map_err(|e| format!("CLIENTS {}: {e}", args[2]))?;
    if clients == 0 || clients > MAX_CLIENTS || total < clients {
        return Err(format!(
            "CLIENTS must be 1 to {MAX_CLIENTS} and at most TOTAL"
        ));
    }
    let persistent = mode == "reqs";
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let share = total / clients + usize::from(i < total % clients);
            std::thread::spawn(move || client(addr, share, persistent))
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for t in threads {
        let (lat, err) = t
            .join()
            .map_err(|_| "a client thread panicked".to_owned())?;
        latencies.extend(lat);
        errors += err;
    }
    let took = started.elapsed().as_secs_f64();
    // One client in turn over two machines (round-robin): every other operation takes
    // the same path, so the p50 of each half is the p50 of one path.
    let halves = (clients == 1).then(|| {
        let half = |parity: usize| {
            let mut h: Vec<Duration> = latencies.iter().skip(parity).step_by(2).copied().collect();
            h.sort_unstable();
            percentile(&h, 0.50)
        };
        let (a, b) = (half(0), half(1));
        format!(
            " p50_fast_half_us={} p50_slow_half_us={}",
            a.min(b),
            a.max(b)
        )
    });
    latencies.sort_unstable();
    println!(
        "rate={:.0} p50_us={} p99_us={} errors={errors}{}",
        latencies.len() as f64 / took,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        halves.unwrap_or_default()
    );
    Ok(())
}

/// The `p` percentile of sorted latencies, in µs (0 if there are none).
fn percentile(sorted: &[Duration], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_micros()
}

/// A connection with the timeouts of one operation, made with as few system calls as the
/// measurement allows (`socket`, two `setsockopt`, a blocking `connect`): the load
/// generator's own cost is in every server's figures alike, and it is kept small so that
/// it hides no difference between them. `SO_SNDTIMEO` bounds the blocking `connect`
/// too (a server whose backlog is full drops the SYN; the kernel would retry for minutes).
fn connect(addr: SocketAddr, persistent: bool) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    if persistent {
        // Many round trips on one connection: no request may wait for Nagle.
        socket.set_tcp_nodelay(true)?;
    }
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// Sends the request and reads its answer line; whether the answer was the request.
fn round_trip(mut stream: &TcpStream, answer: &mut [u8; ANSWER_MAX]) -> std::io::Result<bool> {
    stream.write_all(REQUEST)?;
    let mut got = 0;
    while got == 0 || answer[got - 1] != b'\n' {
        if got == answer.len() {
            return Ok(false); // longer than the request: not its echo
        }
        match stream.read(&mut answer[got..])? {
            0 => return Ok(false), // closed before a whole line
            n => got += n,
        }
    }
    Ok(&answer[..got] == REQUEST)
}

/// Runs `n` operations; their latencies and the number that failed.
fn client(addr: SocketAddr, n: usize, persistent: bool) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    let mut conn: Option<TcpStream> = None;
    let mut answer = [0u8; ANSWER_MAX];
    for _ in 0..n {
        let t0 = Instant::now();
        let ok = (|| -> std::io::Result<bool> {
            if conn.is_none() {
                conn = Some(connect(addr, persistent)?);
            }
            round_trip(conn.as_ref().expect("connected above"), &mut answer)
        })();
        match ok {
            Ok(true) => latencies.push(t0.elapsed()),
            _ => {
                errors += 1;
                conn = None;
            }
        }
        if !persistent {
            conn = None; // close: the server sees end of input
        }
    }
    (latencies, errors)
}
