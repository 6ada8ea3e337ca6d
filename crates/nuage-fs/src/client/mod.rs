//! The client side of a volume: connections to bricks, the distribution of files over
//! them, and the FUSE mount.

pub mod bounded;
pub mod conn;
pub mod copy;
pub mod fuse;
pub mod heal;
pub mod heal_index;
pub mod here;
pub mod mount;
pub mod rebalance;
pub mod replica;
pub mod settle;
pub mod spec;
pub mod split_brain;
pub mod volume;
pub mod write_behind;
