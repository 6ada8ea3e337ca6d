//! Login records: utmp (who is logged in now), wtmp (every login and logout) and
//! lastlog (each uid's last login), in glibc's binary layout on 64-bit Linux.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Size of one utmp/wtmp record (`struct utmp`).
pub const UTMP_RECORD: usize = 384;
/// Size of one lastlog record (`struct lastlog`), at offset `uid × 292`.
pub const LASTLOG_RECORD: usize = 292;
/// Largest utmp file read (utmp holds one record per terminal; this is ~43,000 logins).
pub const MAX_UTMP_BYTES: u64 = 16 << 20;
/// How far back in wtmp the last login of a user is looked for.
pub const MAX_WTMP_SCAN_BYTES: u64 = 64 << 20;

/// `ut_type` of a user's login session.
const USER_PROCESS: i16 = 7;

/// A login session: a `USER_PROCESS` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    /// The terminal, relative to /dev (`pts/3`, `tty1`, `:0`).
    pub line: String,
    /// Where from (a host name or address; empty for a local login).
    pub host: String,
    /// Seconds since the epoch.
    pub time: i64,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn i16_at(r: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([r[at], r[at + 1]])
}

fn i32_at(r: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]])
}

/// Decodes one `struct utmp`; `None` unless it is a user's login with a name.
pub fn parse_utmp_record(r: &[u8]) -> Option<Login> {
    assert_eq!(r.len(), UTMP_RECORD);
    // Layout: ut_type i16 @0, ut_pid i32 @4, ut_line [32] @8, ut_id [4] @40,
    // ut_user [32] @44, ut_host [256] @76, ut_exit @332, ut_session @336,
    // ut_tv.tv_sec i32 @340, ut_tv.tv_usec @344, ut_addr_v6 @348.
    if i16_at(r, 0) != USER_PROCESS || r[44] == 0 {
        return None;
    }
    Some(Login {
        user: c_string(&r[44..76]),
        line: c_string(&r[8..40]),
        host: c_string(&r[76..332]),
        time: i64::from(i32_at(r, 340)),
    })
}

/// Encodes a login as a `struct utmp` record (for tests and tools that write records).
pub fn encode_utmp_record(login: &Login, pid: i32) -> Vec<u8> {
    let mut r = vec![0u8; UTMP_RECORD];
    r[0..2].copy_from_slice(&USER_PROCESS.to_le_bytes());
    r[4..8].copy_from_slice(&pid.to_le_bytes());
    put(&mut r[8..40], &login.line);
    let id = login.line.rsplit('/').next().unwrap_or("");
    put(&mut r[40..44], &id[id.len().saturating_sub(4)..]);
    put(&mut r[44..76], &login.user);
    put(&mut r[76..332], &login.host);
    let t = i32::try_from(login.time).unwrap_or(i32::MAX);
    r[340..344].copy_from_slice(&t.to_le_bytes());
    r
}

/// Encodes a `struct lastlog` record.
pub fn encode_lastlog_record(time: i64, line: &str, host: &str) -> Vec<u8> {
    let mut r = vec![0u8; LASTLOG_RECORD];
    let t = i32::try_from(time).unwrap_or(i32::MAX);
    r[0..4].copy_from_slice(&t.to_le_bytes());
    put(&mut r[4..36], line);
    put(&mut r[36..292], host);
    r
}

fn put(field: &mut [u8], text: &str) {
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// The current logins, in file order. A missing utmp means nobody is logged in.
pub fn read_utmp(path: &Path) -> std::io::Result<Vec<Login>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    (&mut file).take(MAX_UTMP_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes
        .chunks_exact(UTMP_RECORD)
        .filter_map(parse_utmp_record)
        .collect())
}

/// The last login of `uid` from lastlog, if it records one.
pub fn lastlog(path: &Path, uid: u32) -> Option<Login> {
    let mut file = File::open(path).ok()?;
    let offset = u64::from(uid) * LASTLOG_RECORD as u64;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut r = [0u8; LASTLOG_RECORD];
    file.read_exact(&mut r).ok()?;
    let time = i64::from(i32_at(&r, 0));
    (time != 0).then(|| Login {
        user: String::new(),
        line: c_string(&r[4..36]),
        host: c_string(&r[36..292]),
        time,
    })
}

/// The last login of a user as finger(1) tells it: from lastlog where the system keeps
/// one (finger(1) reads nothing else, so a user absent from it "never logged in"); where
/// there is no lastlog file at all (systems that moved to lastlog2), from the latest
/// login in wtmp.
pub fn last_login(lastlog_path: &Path, wtmp_path: &Path, uid: u32, user: &str) -> Option<Login> {
    if lastlog_path.exists() {
        lastlog(lastlog_path, uid)
    } else {
        last_wtmp_login(wtmp_path, user)
    }
}

/// The latest login of `user` in wtmp, reading backwards from the end, at most
/// [`MAX_WTMP_SCAN_BYTES`].
pub fn last_wtmp_login(path: &Path, user: &str) -> Option<Login> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut end = len - len % UTMP_RECORD as u64;
    let floor = end.saturating_sub(MAX_WTMP_SCAN_BYTES);
    const CHUNK_RECORDS: u64 = 256;
    let mut buf = Vec::new();
    while end > floor {
        let start = end
            .saturating_sub(CHUNK_RECORDS * UTMP_RECORD as u64)
            .max(floor);
        buf.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start)).ok()?;
        file.read_exact(&mut buf).ok()?;
        for r in buf.chunks_exact(UTMP_RECORD).rev() {
            if let Some(login) = parse_utmp_record(r) {
                if login.user == user {
                    return Some(login);
                }
            }
        }
        end = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str, line: &str, host: &str, time: i64) -> Login {
        Login {
            user: user.into(),
            line: line.into(),
            host: host.into(),
            time,
        }
    }

    #[test]
    fn utmp_round_trips_and_skips_other_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("utmp");
        let a = login("alice", "pts/5", "10.0.0.9", 1_700_000_000);
        let b = login("bob", "tty3", "", 1_700_000_100);
        let mut bytes = encode_utmp_record(&a, 10);
        let mut dead = encode_utmp_record(&b, 11);
        dead[0] = 8; // DEAD_PROCESS
        bytes.extend(dead);
        bytes.extend(encode_utmp_record(&b, 12));
        bytes.extend([0u8; 100]); // a torn last record is ignored
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_utmp(&path).unwrap(), vec![a, b]);
        assert_eq!(read_utmp(&dir.path().join("none")).unwrap(), vec![]);
    }

    #[test]
    fn wtmp_finds_the_latest_login() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wtmp");
        let mut bytes = Vec::new();
        for i in 0..600 {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            bytes.extend(encode_utmp_record(
                &login(who, &format!("pts/{i}"), "", 1000 + i),
                1,
            ));
        }
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(last_wtmp_login(&path, "alice").unwrap().line, "pts/598");
        assert_eq!(last_wtmp_login(&path, "bob").unwrap().time, 1599);
        assert!(last_wtmp_login(&path, "carol").is_none());
    }

    #[test]
    fn lastlog_is_indexed_by_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lastlog");
        let mut bytes = vec![0u8; LASTLOG_RECORD * 3];
        bytes[LASTLOG_RECORD * 2..].copy_from_slice(&encode_lastlog_record(42, "pts/1", "far"));
        std::fs::write(&path, bytes).unwrap();
        let l = lastlog(&path, 2).unwrap();
        assert_eq!(
            (l.time, l.line.as_str(), l.host.as_str()),
            (42, "pts/1", "far")
        );
        assert!(lastlog(&path, 1).is_none());
        assert!(lastlog(&path, 7).is_none());
    }

    #[test]
    fn wtmp_stands_in_only_where_there_is_no_lastlog() {
        let dir = tempfile::tempdir().unwrap();
        let lastlog_path = dir.path().join("lastlog");
        let wtmp = dir.path().join("wtmp");
        std::fs::write(
            &wtmp,
            encode_utmp_record(&login("bob", "pts/4", "h", 77), 1),
        )
        .unwrap();
        // No lastlog file: wtmp tells.
        let l = last_login(&lastlog_path, &wtmp, 2, "bob").unwrap();
        assert_eq!((l.line.as_str(), l.time), ("pts/4", 77));
        // A lastlog file without bob: he never logged in, whatever wtmp says.
        std::fs::write(&lastlog_path, vec![0u8; LASTLOG_RECORD * 3]).unwrap();
        assert!(last_login(&lastlog_path, &wtmp, 2, "bob").is_none());
    }
}
