//! nuage-mail: store-and-forward mail between domains, delivered in causal order.
//!
//! One server per domain (`nuage mail serve`) keeps the mailboxes of its domain in
//! SQLite and forwards mail for other domains to their servers, through a durable
//! outbound queue retried until the destination accepts. Servers stamp the mail they
//! forward with matrix clocks and hold back a message until everything it causally
//! depends on has been delivered, so a mailbox always reads in causal order.
//!
//! Modules, one job each: [`frame`] (the length-prefixed wire framing), [`address`],
//! [`servers`] (the servers file), [`causal`] (the delivery rule), [`protocol`] (the
//! verbs), [`store`] (mailboxes, clock, queues in SQLite), [`server`] and [`client`].
//! docs/mail.md describes the protocol and the algorithm.

pub mod address;
pub mod causal;
pub mod client;
pub mod frame;
pub mod protocol;
pub mod server;
pub mod servers;
pub mod service;
pub mod store;

pub use address::Address;
pub use causal::Order;
pub use servers::Directory;
