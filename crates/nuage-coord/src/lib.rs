//! nuage-coord: logical clocks, the classic socket services (the UDP and TCP tools,
//! finger), and the classic coordination algorithms (launcher, mutual exclusion, ring and
//! election, failure detection, snapshots).
//!
//! Each module has one job; see ARCHITECTURE.md for the map.

pub mod clock;
pub mod detector;
pub mod election;
pub mod finger;
pub mod frame;
pub mod launch;
pub mod mutex;
pub mod net;
pub mod ring;
pub mod rng;
pub mod snapshot;
