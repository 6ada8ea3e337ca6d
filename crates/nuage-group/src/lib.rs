//! nuage-group: a Spread-compatible group communication daemon.
//!
//! - [`wire`]: the Spread client protocol (connect, messages, membership bodies).
//! - [`conf`]: spread.conf.
//! - [`ring`]: the daemon-to-daemon protocol, a pure Totem-style state machine.

pub mod conf;
pub mod ring;
pub mod wire;
