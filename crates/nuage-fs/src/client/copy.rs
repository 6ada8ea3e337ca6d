//! What heal and rebalance share, over anything that answers brick requests (one brick's
//! connection, for heal; a subvolume, for rebalance): copying a file's bytes, and reading
//! a whole directory.

use std::future::Future;

use crate::client::conn::BrickConn;
use crate::client::replica::Replica;
use crate::gfid::Gfid;
use crate::proto::{Entry, Errno, MAX_IO, Op, Reply, Target};

type Res<T> = Result<T, Errno>;

/// Something brick requests with a data payload can be sent to.
pub trait Requests {
    fn call(&self, op: Op, data: &[u8]) -> impl Future<Output = Res<(Reply, Vec<u8>)>> + Send;
}

impl Requests for BrickConn {
    fn call(&self, op: Op, data: &[u8]) -> impl Future<Output = Res<(Reply, Vec<u8>)>> + Send {
        BrickConn::call(self, op, data)
    }
}

impl Requests for Replica {
    fn call(&self, op: Op, data: &[u8]) -> impl Future<Output = Res<(Reply, Vec<u8>)>> + Send {
        Replica::call(self, op, data)
    }
}

/// Every name of directory `dir` (but `.` and `..`) with its entry, read `batch` names
/// a request; EFBIG once there are more than `max`.
pub async fn list_dir<C: Requests>(
    c: &C,
    dir: Gfid,
    batch: u32,
    max: usize,
) -> Res<Vec<(Vec<u8>, Entry)>> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let op = Op::Readdir {
            gfid: dir,
            cookie,
            max: batch,
        };
        let Reply::Dir { entries, next, eof } = c.call(op, &[]).await?.0 else {
            return Err(Errno(libc::EIO));
        };
        for d in entries {
            if d.name == b"." || d.name == b".." {
                continue;
            }
            if let Some(e) = d.entry {
                out.push((d.name, e));
            }
        }
        if out.len() > max {
            return Err(Errno(libc::EFBIG));
        }
        if eof {
            return Ok(out);
        }
        cookie = next;
    }
}

/// Reads `g` through `rfd` on `from` and writes what it reads at the same offsets through
/// `wfd` on `to`, `MAX_IO` bytes at a time, up to the source's end; returns the size
/// read (the caller cuts the sink there: sparse tails and truncations).
pub async fn copy_bytes<C: Requests>(from: &C, to: &C, g: Gfid, rfd: u64, wfd: u64) -> Res<u64> {
    let mut offset = 0u64;
    loop {
        let read = Op::Read {
            target: Target {
                gfid: g,
                fd: Some(rfd),
            },
            offset,
            size: MAX_IO,
        };
        let (reply, data) = from.call(read, &[]).await?;
        let Reply::Data { eof } = reply else {
            return Err(Errno(libc::EIO));
        };
        if !data.is_empty() {
            let write = Op::Write {
                target: Target {
                    gfid: g,
                    fd: Some(wfd),
                },
                offset,
                op: None,
                kill_suidgid: false,
            };
            to.call(write, &data).await?;
        }
        offset += data.len() as u64;
        if eof || data.len() < MAX_IO as usize {
            return Ok(offset);
        }
    }
}
