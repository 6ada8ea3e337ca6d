//! nuage-core: what every nuage service shares and nothing more: configuration, the
//! data directory and its SQLite stores, metrics, the service contract, the API error
//! shape and client, socket binding with clear errors, time formatting, starting child
//! processes cheaply.
//!
//! No service logic lives here.

pub mod api;
pub mod client;
pub mod config;
pub mod datadir;
pub mod launch;
pub mod metrics;
pub mod net;
pub mod peers;
pub mod service;
pub mod time;

/// The nuage version, shared by every crate of the workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
