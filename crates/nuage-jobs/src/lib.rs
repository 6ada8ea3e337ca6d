//! nuage jobs: a FIFO job scheduler over gRPC, traced end to end.
//!
//! - [`manager`]: the queue (SQLite), the scheduler and the gRPC services
//!   (`proto/jobs.proto`). Start reading at [`manager::Manager`].
//! - [`worker`]: registers, heartbeats, runs one task at a time as a process group.
//! - [`client`]: what `nuage jobs submit/ls/show/…` call.
//! - [`trace`]: spans written as CTF 1.8 and Trace Event JSON, read back, and
//!   analyzed ([`trace::analyze`]: own time per component, bottleneck, critical path).
//! - [`demo`]: the three-tier `demo-auth` service used to practise finding bottlenecks.
//! - [`service`]: the manager (and optionally a worker) as a service of `nuage up`.

pub mod client;
pub mod config;
pub mod default_task;
pub mod demo;
pub mod manager;
pub mod service;
pub mod timefmt;
pub mod trace;
pub mod worker;

/// Code generated from `proto/jobs.proto`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("nuage.jobs.v1");
}

/// Code generated from `proto/demo_auth.proto`.
pub mod demo_proto {
    #![allow(clippy::all)]
    tonic::include_proto!("nuage.demo.v1");
}

/// The connections accepted on `listener`, with Nagle's algorithm off. tonic's own
/// `tcp_nodelay` only applies to listeners it binds itself; without this, small
/// messages on a stream (a task, a report's reply) wait ~40 ms for delayed ACKs.
pub fn incoming_nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// Microseconds since the Unix epoch (the unit of every timestamp in the protocol).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// 64 random bits from the OS (ids of sessions, spans and traces; not secrets).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    u64::from_le_bytes(b)
}
