//! nuage storage: a distributed file system without a metadata server, modelled on
//! GlusterFS. Start reading at `brick/store.rs` (files on a brick), `proto.rs` (the
//! brick protocol), `brick/server.rs` (a brick server) and `client/` (the volume as a
//! client sees it, and the FUSE mount).

pub mod brick;
pub mod client;
pub mod gfid;
pub mod layout;
pub mod markers;
pub mod mgmt;
pub mod proto;
pub mod service;
pub mod sys;
