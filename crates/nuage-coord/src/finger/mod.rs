//! Finger (RFC 1288): who is on this machine, and who is a user.
//!
//! The server answers one query per connection from the system's own records: the
//! user database (`/etc/passwd`, GECOS), login records (utmp, wtmp, lastlog), terminal
//! access times (idle), the mail spool, and the users' `~/.plan`, `~/.project`,
//! `~/.pgpkey` and `~/.forward`, laid out exactly as the finger(1) program prints them,
//! so the standard client gets what it would get from the system's fingerd. Queries are
//! parsed, never passed to a shell or a program; forwarding is refused.

pub mod client;
mod localtime;
pub mod passwd;
pub mod query;
pub mod records;
pub mod report;
pub mod server;

pub use report::{Request, Sources};
pub use server::{DEFAULT_PORT, FingerServer, ServerConfig};
