//! nuage functions: programs that answer request lines on stdin with response lines on
//! stdout, instantiated on demand for network connections.
//!
//! Start reading at [`service`] (the service `nuage up` runs), then [`function`] (one
//! function on this machine: accept, admit, place, serve), [`spawn`] (the inetd model:
//! the socket *is* the process's stdin and stdout) and [`pool`] (warm instances). Across
//! machines: [`cluster`] (health of the others), [`balancer`] (where a connection goes),
//! [`relay`] (handing a connection to another machine; [`ready`] keeps connections to
//! the others open ahead of need), [`registry`] (what is deployed,
//! the same on every machine). The wire formats and every option are in
//! docs/functions.md.

pub mod api;
pub mod backoff;
pub mod balancer;
pub mod cluster;
pub mod command;
pub mod config;
pub mod function;
pub mod gateway;
pub mod instance;
pub mod limiter;
pub mod line;
pub mod logs;
pub mod pool;
pub mod process;
pub mod ready;
pub mod registry;
pub mod relay;
pub mod service;
pub mod sockopt;
pub mod spawn;
pub mod spec;
pub mod stats;
pub mod stderr;
pub mod types;

pub use service::FunctionsService;
