//! nuage-group: a Spread-compatible group communication daemon.
//!
//! - [`wire`]: the Spread client protocol (connect, messages, membership bodies).
//! - [`conf`]: the spread.conf file.
//! - [`ring`]: the daemon-to-daemon protocol, a pure Totem-style state machine.
//! - [`group`]: groups and members over the ring, what each local client receives.
//! - [`daemon`]: the daemon: client sessions, the ring over UDP, the core task.
//! - [`pace`]: token pacing, so a stream of small messages fills its frames.
//! - [`sim`]: the seeded simulator of the ring and the checker of virtual synchrony.
//! - [`check`]: the checker of the group guarantees over what every member received
//!   (the simulation's group mode and the lab fault tests).
//! - [`service`]: the daemon as a service of `nuage up` (`[group]` in nuage.toml).
//! - [`client`]: the client library (async, with a blocking wrapper).

pub mod check;
pub mod client;
pub mod conf;
pub mod daemon;
pub mod group;
pub mod pace;
pub mod ring;
pub mod service;
pub mod sim;
pub mod wire;
