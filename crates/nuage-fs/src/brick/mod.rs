//! A brick: a directory of a storage machine that holds part of a volume.

pub mod fence;
pub mod locks;
pub mod server;
pub mod store;
