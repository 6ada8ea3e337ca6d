//! nuage-lab: several machines on one host, with faults on demand.
//!
//! A machine is a Linux network namespace plus a UTS namespace (its own hostname), with
//! one veth on a bridge the lab owns; each lab has its own /24 out of 10.213.0.0/16 and
//! the host routes the whole /16 to `unreachable`, so lab traffic never leaves the host.
//! Faults are real: partitions are nftables rules on the bridge, crashes are SIGKILL,
//! pauses are SIGSTOP. Root is required.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut lab = nuage_lab::Lab::create("demo", 3)?;
//! let out = lab.exec("n2", "hostname", &[])?;
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n2");
//! lab.partition(&[vec!["n1"], vec!["n2", "n3"]])?;
//! lab.heal()?;
//! # Ok(()) }  // dropping `lab` tears everything down
//! ```

mod lab;
mod node;
mod ns;
pub mod plan;
mod procs;
mod state;
mod sys;

pub use lab::{Lab, Machine, require_root};
pub use node::{NODE_API_PORT, NODE_READY_TIMEOUT};
pub use procs::{KILL_TIMEOUT, Process};
pub use state::{DEFAULT_ROOT, ROOT_ENV};
