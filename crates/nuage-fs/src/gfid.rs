//! File ids: every file and directory of a volume carries a random 128-bit id, the same
//! on every brick that holds a copy of it, kept in the `trusted.nuage.gfid` extended
//! attribute. The client's inode numbers are derived from it, so they are stable across
//! mounts and clients.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A file id. The root directory of every volume has [`Gfid::ROOT`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gfid(pub [u8; 16]);

impl Gfid {
    /// The root directory of a volume.
    pub const ROOT: Gfid = Gfid([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    /// A fresh random id (from the kernel's CSPRNG), never the root's.
    pub fn random() -> Gfid {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        // Version-4 UUID bits, so `uuidgen`-style tools read it as a random UUID.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Gfid(bytes)
    }

    /// The inode number the client shows for this file: the root is 1, every other file
    /// the last 8 bytes of its id (never 0 or 1).
    pub fn ino(&self) -> u64 {
        if *self == Gfid::ROOT {
            return 1;
        }
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&self.0[8..]);
        match u64::from_be_bytes(tail) {
            0 | 1 => 2 + u64::from(self.0[0]),
            n => n,
        }
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Gfid> {
        <[u8; 16]>::try_from(bytes).ok().map(Gfid)
    }

    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn to_uuid(&self) -> String {
        let h = hex(&self.0);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    pub fn parse(text: &str) -> Option<Gfid> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        if digits.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Gfid(out))
    }
}

impl fmt::Debug for Gfid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uuid())
    }
}

impl fmt::Display for Gfid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uuid())
    }
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Fills `buf` from getrandom(2); it cannot fail on Linux ≥ 3.17 once the pool is ready.
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr().cast::<libc::c_void>(),
                buf.len() - done,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EINTR),
                "getrandom failed: {err}"
            );
            continue;
        }
        done += n as usize;
    }
}

/// A random 64-bit number (ids of clients, lock owners).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip_and_inode_numbers() {
        let g = Gfid::random();
        assert_ne!(g, Gfid::ROOT);
        assert_eq!(Gfid::parse(&g.to_uuid()), Some(g));
        assert_eq!(Gfid::ROOT.to_uuid(), "00000000-0000-0000-0000-000000000001");
        assert_eq!(Gfid::ROOT.ino(), 1);
        assert!(g.ino() > 1);
        let zero_tail = Gfid([9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(zero_tail.ino(), 11);
        assert_eq!(Gfid::parse("nope"), None);
    }

    #[test]
    fn random_ids_differ() {
        let a: Vec<Gfid> = (0..100).map(|_| Gfid::random()).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }
}
