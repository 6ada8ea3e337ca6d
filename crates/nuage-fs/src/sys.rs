//! Thin, safe wrappers over the system calls a brick needs and std does not offer:
//! the `*at` family (so paths never grow past PATH_MAX and symlinks are never followed),
//! extended attributes, getdents64, and per-thread file-system credentials.
//! Every function returns the errno on failure.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::proto::{Errno, Timespec};

pub type SysResult<T> = Result<T, Errno>;

fn last() -> Errno {
    Errno::from_io(&std::io::Error::last_os_error())
}

fn check(r: libc::c_int) -> SysResult<()> {
    if r < 0 { Err(last()) } else { Ok(()) }
}

/// A C string from file-name bytes (refused if it holds a NUL).
pub fn cstr(bytes: &[u8]) -> SysResult<CString> {
    CString::new(bytes).map_err(|_| Errno(libc::EINVAL))
}

pub fn openat(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    loop {
        // SAFETY: `name` is a valid C string; the returned fd is owned by the caller.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd >= 0 {
            // SAFETY: a fresh fd from openat.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = last();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

/// Opens a directory without following a final symlink.
pub fn open_dir(dir: RawFd, name: &CStr) -> SysResult<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

pub fn fstatat(dir: RawFd, name: &CStr) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is written by the kernel on success.
    check(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialized.
    Ok(unsafe { st.assume_init() })
}

pub fn fstat(fd: RawFd) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as above.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdirat(dir: RawFd, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) })
}

pub fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> SysResult<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) })
}

pub fn mknodat(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) })
}

/// Makes `new` a hard link of `old` (never following a symlink `old`).
pub fn linkat(old_dir: RawFd, old: &CStr, new_dir: RawFd, new: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::linkat(old_dir, old.as_ptr(), new_dir, new.as_ptr(), flags) })
}

pub fn unlinkat(dir: RawFd, name: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) })
}

pub fn renameat2(
    old_dir: RawFd,
    old: &CStr,
    new_dir: RawFd,
    new: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::renameat2(old_dir, old.as_ptr(), new_dir, new.as_ptr(), flags) })
}

pub fn readlinkat(dir: RawFd, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn fchownat(dir: RawFd, name: &CStr, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: valid C string; -1 leaves an id unchanged.
    check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
}

pub fn fchown(fd: RawFd, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fchown(fd, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) })
}

pub fn fchmod(fd: RawFd, mode: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fchmod(fd, mode) })
}

/// chmod of a non-symlink by path relative to `dir` (the caller checked the type).
pub fn fchmodat(dir: RawFd, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) })
}

fn timespec(t: Option<crate::proto::SetTime>) -> libc::timespec {
    use crate::proto::SetTime;
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(Timespec { sec, nsec })) => libc::timespec {
            tv_sec: sec,
            tv_nsec: i64::from(nsec),
        },
    }
}

pub fn utimensat(
    dir: RawFd,
    name: &CStr,
    atime: Option<crate::proto::SetTime>,
    mtime: Option<crate::proto::SetTime>,
) -> SysResult<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: times has two entries as required.
    check(unsafe {
        libc::utimensat(
            dir,
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn futimens(
    fd: RawFd,
    atime: Option<crate::proto::SetTime>,
    mtime: Option<crate::proto::SetTime>,
) -> SysResult<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: times has two entries.
    check(unsafe { libc::futimens(fd, times.as_ptr()) })
}

pub fn ftruncate(fd: RawFd, size: u64) -> SysResult<()> {
    let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
    // SAFETY: plain syscall.
    check(unsafe { libc::ftruncate(fd, size) })
}

pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
    let len = i64::try_from(len).map_err(|_| Errno(libc::EFBIG))?;
    // SAFETY: plain syscall.
    check(unsafe { libc::fallocate(fd, mode, offset, len) })
}

pub fn fsync(fd: RawFd, datasync: bool) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
}

/// Reads up to `size` bytes at `offset`, fewer only at end of file.
pub fn pread_full(fd: RawFd, offset: u64, size: usize) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let mut done = 0;
    while done < size {
        let at = i64::try_from(offset + done as u64).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: the pointer/length are the unfilled tail of buf.
        let n = unsafe { libc::pread(fd, buf[done..].as_mut_ptr().cast(), size - done, at) };
        if n < 0 {
            let e = last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    buf.truncate(done);
    Ok(buf)
}

pub fn pwrite_full(fd: RawFd, offset: u64, data: &[u8]) -> SysResult<()> {
    let mut done = 0;
    while done < data.len() {
        let at = i64::try_from(offset + done as u64).map_err(|_| Errno(libc::EFBIG))?;
        // SAFETY: the pointer/length are the unwritten tail of data.
        let n = unsafe { libc::pwrite(fd, data[done..].as_ptr().cast(), data.len() - done, at) };
        if n < 0 {
            let e = last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

pub fn lseek(fd: RawFd, offset: u64) -> SysResult<()> {
    // Directory cookies are opaque 63-bit values; they fit in an off_t.
    let off = offset as i64;
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd, off, libc::SEEK_SET) };
    if r < 0 { Err(last()) } else { Ok(()) }
}

/// One raw directory entry from getdents64.
pub struct RawDirent {
    pub name: Vec<u8>,
    pub cookie: u64,
    /// The inode number (`d_ino`).
    pub ino: u64,
    /// The file type (`d_type`: `DT_DIR`, `DT_REG`…, `DT_UNKNOWN` when the file system
    /// does not say).
    pub kind: u8,
}

/// Reads the next batch of entries of an open directory (empty at the end).
pub fn getdents(fd: RawFd, buf: &mut [u8]) -> SysResult<Vec<RawDirent>> {
    // SAFETY: buf is writable for its length; the kernel fills whole records.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(last());
    }
    let n = n as usize;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 19 <= n {
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        let ino = u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let kind = buf[at + 18];
        let off = u64::from_ne_bytes(buf[at + 8..at + 16].try_into().expect("8 bytes"));
        let reclen =
            u16::from_ne_bytes(buf[at + 16..at + 18].try_into().expect("2 bytes")) as usize;
        assert!(
            reclen >= 19 && at + reclen <= n,
            "getdents64 returned a malformed record"
        );
        let name_bytes = &buf[at + 19..at + reclen];
        let len = name_bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(name_bytes.len());
        out.push(RawDirent {
            name: name_bytes[..len].to_vec(),
            cookie: off,
            ino,
            kind,
        });
        at += reclen;
    }
    Ok(out)
}

pub fn fstatvfs(fd: RawFd) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: written by the kernel on success.
    check(unsafe { libc::fstatvfs(fd, st.as_mut_ptr()) })?;
    // SAFETY: success.
    Ok(unsafe { st.assume_init() })
}

/// Where an extended attribute call applies: an open fd, or a path that is never
/// followed if it is a symlink.
#[derive(Clone, Copy)]
pub enum XTarget<'a> {
    Fd(RawFd),
    Path(&'a CStr),
}

/// Reads an attribute; `Ok(None)` if it is absent.
pub fn getxattr(t: XTarget<'_>, name: &CStr) -> SysResult<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            match t {
                XTarget::Fd(fd) => {
                    libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
                XTarget::Path(p) => libc::lgetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
            }
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = last();
        match e.0 {
            libc::ENODATA => return Ok(None),
            libc::ERANGE if buf.len() < crate::proto::MAX_XATTR_VALUE_LEN => {
                buf.resize(crate::proto::MAX_XATTR_VALUE_LEN, 0);
            }
            _ => return Err(e),
        }
    }
}

pub fn setxattr(t: XTarget<'_>, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: value is readable for its length.
    check(unsafe {
        match t {
            XTarget::Fd(fd) => {
                libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
            }
            XTarget::Path(p) => libc::lsetxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ),
        }
    })
}

pub fn removexattr(t: XTarget<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: valid C strings.
    check(unsafe {
        match t {
            XTarget::Fd(fd) => libc::fremovexattr(fd, name.as_ptr()),
            XTarget::Path(p) => libc::lremovexattr(p.as_ptr(), name.as_ptr()),
        }
    })
}

/// Removes an attribute, treating "absent" as done.
pub fn removexattr_if_any(t: XTarget<'_>, name: &CStr) -> SysResult<()> {
    match removexattr(t, name) {
        Err(Errno(libc::ENODATA)) => Ok(()),
        r => r,
    }
}

pub fn listxattr(t: XTarget<'_>) -> SysResult<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            match t {
                XTarget::Fd(fd) => libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()),
                XTarget::Path(p) => {
                    libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
            }
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = last();
        if e.0 == libc::ERANGE && buf.len() < (1 << 20) {
            let len = buf.len() * 4;
            buf.resize(len, 0);
            continue;
        }
        return Err(e);
    }
}

/// The file-system identity of the calling thread, switched for the life of the guard:
/// new files get the caller's owner and group exactly as a local file system would
/// give them (set-group-id directories, group membership), without affecting other
/// threads (setfsuid/setfsgid and the raw setgroups syscall are per thread).
pub struct AsCaller {
    switched: bool,
}

impl AsCaller {
    pub fn enter(uid: u32, gid: u32, groups: &[u32]) -> SysResult<AsCaller> {
        if uid == 0 && gid == 0 && groups.is_empty() {
            return Ok(AsCaller { switched: false });
        }
        // SAFETY: per-thread credential syscalls; restored in Drop.
        unsafe {
            let r = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            if r < 0 {
                return Err(last());
            }
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        Ok(AsCaller { switched: true })
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: back to root for this thread.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
                libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<u32>());
            }
        }
    }
}

/// `/proc/self/fd/N/NAME`: a path naming `name` in the directory open as `dir`, short
/// whatever the directory's depth, for calls that have no `*at` form (lgetxattr…).
pub fn proc_path(dir: &impl AsRawFd, name: &[u8]) -> SysResult<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    cstr(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getdents_lists_a_directory_and_resumes_at_a_cookie() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(tmp.path().join(format!("f{i}")), b"").unwrap();
        }
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let mut buf = vec![0u8; 512];
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            lseek(dir.as_raw_fd(), cookie).unwrap();
            let batch = getdents(dir.as_raw_fd(), &mut buf).unwrap();
            if batch.is_empty() {
                break;
            }
            // Take only the first two, then resume from the cookie like a client would.
            for e in batch.into_iter().take(2) {
                cookie = e.cookie;
                names.push(String::from_utf8(e.name).unwrap());
            }
        }
        names.retain(|n| n != "." && n != "..");
        names.sort();
        let mut want: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn user_xattrs_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(tmp.path().join("x")).unwrap();
        let t = XTarget::Fd(f.as_raw_fd());
        let name = cstr(b"user.test").unwrap();
        assert_eq!(getxattr(t, &name).unwrap(), None);
        setxattr(t, &name, b"value", 0).unwrap();
        assert_eq!(getxattr(t, &name).unwrap().unwrap(), b"value");
        let big = vec![7u8; 4000];
        setxattr(t, &name, &big, 0).unwrap();
        assert_eq!(getxattr(t, &name).unwrap().unwrap(), big);
        assert!(listxattr(t).unwrap().contains(&b"user.test".to_vec()));
        removexattr_if_any(t, &name).unwrap();
        removexattr_if_any(t, &name).unwrap();
    }
}
