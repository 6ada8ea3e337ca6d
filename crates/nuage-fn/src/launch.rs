//! Starting spawn mode's processes with few system calls, and reaping them by pidfd.
//!
//! std and tokio start processes with glibc's `posix_spawn`: vfork-like and cheap, but its
//! child resets the disposition of *every* signal before it execs (about 120
//! `rt_sigaction` calls per process), and that is on the path of every connection: the
//! parent waits until the child has exec'd. [`launch`] does the same job with what nuage
//! knows about itself. `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`; then, in the child:
//! its own process group, the few signals whose disposition is not the default (listed
//! once by [`Dispositions::current`]) set back to the default, the socket on fds 0 and 1,
//! the stderr pipe on fd 2, an empty signal mask, `execve`. The same `clone` returns a
//! pidfd, by which [`Launched::wait`] reaps the child (no SIGCHLD handling involved).

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::io::unix::AsyncFd;

/// Stack of the child between `clone` and `execve`, where it makes a handful of system
/// calls through libc (glibc's own `posix_spawn` gives its child 36 KiB).
const CHILD_STACK: usize = 64 * 1024;

/// Highest signal number on Linux (x86_64 and aarch64: 64 signals).
const MAX_SIGNAL: c_int = 64;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("launch.rs knows the kernel's sigaction layout of x86_64 and aarch64 only");

/// The kernel's `struct sigaction` as `rt_sigaction` takes it on x86_64 and aarch64.
/// All zeroes is SIG_DFL, no flags, an empty mask.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// `rt_sigaction` directly: glibc's wrapper hides its own internal signals (32 and 33),
/// and those must be reset too (glibc's `posix_spawn` even leaves them ignored).
///
/// # Safety
/// `act` and `old` are null or point to valid `KernelSigaction`s.
unsafe fn rt_sigaction(
    sig: c_int,
    act: *const KernelSigaction,
    old: *mut KernelSigaction,
) -> c_int {
    // SAFETY: per this function's contract; the size is that of the kernel's sigset.
    unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act, old, 8usize) as c_int }
}

/// The signals whose disposition in this process is not the default (ignored, like
/// SIGPIPE in every Rust program or what the node inherited, or caught, like SIGINT and
/// SIGTERM by the node): the child sets them back to the default before it execs, as
/// inetd does for its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispositions(Vec<c_int>);

impl Dispositions {
    /// Reads the dispositions of this process (64 system calls: done once per function,
    /// not per connection). A handler installed later is not in the list; `execve`
    /// itself resets every caught signal, and until its `execve` the child blocks every
    /// signal (see [`launch`] for the last window).
    pub fn current() -> Dispositions {
        let mut signals = Vec::new();
        for sig in 1..=MAX_SIGNAL {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction::default();
            // SAFETY: `act` is null (read only); `old` is a valid KernelSigaction.
            let rc = unsafe { rt_sigaction(sig, std::ptr::null(), &mut old) };
            if rc == 0 && old.handler != libc::SIG_DFL {
                signals.push(sig);
            }
        }
        Dispositions(signals)
    }

    pub fn contains(&self, signal: c_int) -> bool {
        self.0.contains(&signal)
    }
}

/// A program, its arguments and environment, ready for `execve` (converted once per
/// function; each connection adds its own variables).
#[derive(Debug)]
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

impl Prepared {
    /// Fails on a NUL byte (the spec checks refuse them before).
    pub fn new(
        path: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
    ) -> io::Result<Prepared> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NUL byte in the command or its environment",
                )
            })
        };
        let path = c(path.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        let env = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<_>>()?;
        Ok(Prepared { path, argv, env })
    }
}

/// What the child needs, read by it between `clone` and `execve`. It lives on the
/// parent's stack: with CLONE_VFORK the parent's thread is suspended until the child
/// has exec'd or exited, so it stays valid and unchanged while the child reads it.
struct ChildArgs<'a> {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    io: RawFd,
    stderr: RawFd,
    reset: &'a [c_int],
    /// errno of the step that failed, written by the child before it exits (0: exec'd).
    errno: AtomicI32,
}

/// The child, between `clone` and `execve`. It shares the parent's memory (CLONE_VM), so
/// it only makes system calls through libc: no allocation, no lock, no unwinding.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `launch` passed to clone; it outlives the
    // child's use of it (see `ChildArgs`).
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    let fail = || -> c_int {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        args.errno.store(errno.max(1), Ordering::Relaxed);
        // SAFETY: ends this child at once (exit_group of its own thread group); no
        // destructor or atexit handler of the parent runs.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on the child's own process state; every pointer is
    // valid (ChildArgs) or built on this stack.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return fail();
        }
        let default = KernelSigaction::default();
        for &sig in args.reset {
            rt_sigaction(sig, &default, std::ptr::null_mut());
        }
        // dup2 clears close-on-exec on the new descriptors (both sources are above 2).
        if libc::dup2(args.io, 0) < 0
            || libc::dup2(args.io, 1) < 0
            || libc::dup2(args.stderr, 2) < 0
        {
            return fail();
        }
        let mut empty = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(args.path, args.argv, args.envp);
    }
    fail()
}

/// Starts `program` (plus the `extra` environment variables) in a new process group,
/// with `io` as its stdin and stdout and `stderr` as its stderr.
///
/// Signals: the parent's thread blocks every signal around `clone`, so the child starts
/// with all blocked; it resets the listed dispositions, then unblocks just before
/// `execve`. A signal delivered in that last window would run the parent's handler in
/// the child: only one sent to the whole system or to nuage's process group can reach a
/// child nobody knows the pid of yet, and nuage receives that signal too.
pub fn launch(
    program: &Prepared,
    extra_env: &[CString],
    io: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
    reset: &Dispositions,
) -> io::Result<Launched> {
    // Descriptors 0..=2 of nuage itself would collide with the child's stdio.
    let io = above_stdio(io)?;
    let stderr = above_stdio(stderr)?;
    let mut argv: Vec<*const c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = program
        .env
        .iter()
        .chain(extra_env)
        .map(|e| e.as_ptr())
        .collect();
    envp.push(std::ptr::null());
    let args = ChildArgs {
        path: program.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        io: io.fd(),
        stderr: stderr.fd(),
        reset: &reset.0,
        errno: AtomicI32::new(0),
    };
    let mut stack = Box::<[u8]>::new_uninit_slice(CHILD_STACK);
    // The stack grows down from its end, 16-byte aligned as the ABI wants.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: sigset_t values are initialized by sigfillset/pthread_sigmask before use.
    // `clone` runs `child_main` on `stack` (unused by anyone else, and alive until clone
    // returns, which with CLONE_VFORK is after the child exec'd or exited) with `args`;
    // with CLONE_PIDFD the kernel writes the pidfd into `pidfd`.
    let (pid, clone_error) = unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            &args as *const ChildArgs<'_> as *mut c_void,
            &mut pidfd as *mut c_int,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (pid, clone_error)
    };
    drop(stack);
    if pid <= 0 {
        return Err(clone_error);
    }
    assert!(pidfd >= 0, "clone(CLONE_PIDFD) gave no pidfd");
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let errno = args.errno.load(Ordering::Relaxed);
    if errno != 0 {
        // The child failed before exec and exited: reap it, report why.
        let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        return Err(io::Error::from_raw_os_error(errno));
    }
    // SAFETY: an OwnedFd's descriptor is valid and stays the same until it is dropped
    // (with the AsyncFd, or after `into_inner`).
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(Launched {
        pid: pid as u32,
        pidfd: Some(pidfd),
        status: None,
    })
}

/// A descriptor above 2: the one given, or a close-on-exec duplicate of it.
enum Above<'a> {
    Borrowed(BorrowedFd<'a>),
    Dup(OwnedFd),
}

impl Above<'_> {
    fn fd(&self) -> RawFd {
        match self {
            Above::Borrowed(fd) => fd.as_raw_fd(),
            Above::Dup(fd) => fd.as_raw_fd(),
        }
    }
}

fn above_stdio(fd: BorrowedFd<'_>) -> io::Result<Above<'_>> {
    if fd.as_raw_fd() > 2 {
        return Ok(Above::Borrowed(fd));
    }
    let dup = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl just created this descriptor; nothing else owns it.
    Ok(Above::Dup(unsafe { OwnedFd::from_raw_fd(dup) }))
}

/// A started process, reaped through its pidfd.
pub struct Launched {
    pid: u32,
    /// None once handed to the background reaper (drop).
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl Launched {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to end and reaps it (at most once; later calls return the
    /// same status).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pidfd = self.pidfd.as_ref().expect("pidfd kept until drop");
        loop {
            let mut ready = pidfd.readable().await?;
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
            match waitid(Id::PIDFd(pidfd.get_ref().as_fd()), flags).map_err(io::Error::from)? {
                WaitStatus::Exited(_, code) => {
                    return Ok(*self.status.insert(ExitStatus::from_raw((code & 0xff) << 8)));
                }
                WaitStatus::Signaled(_, signal, core) => {
                    let raw = signal as i32 | if core { 0x80 } else { 0 };
                    return Ok(*self.status.insert(ExitStatus::from_raw(raw)));
                }
                _ => ready.clear_ready(),
            }
        }
    }
}

impl Drop for Launched {
    /// A process dropped before it was reaped (its task was cancelled) is killed with its
    /// group and reaped by a thread, rather than left as a zombie.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        // Not reaped, so the pid is still this process's (a zombie at worst).
        crate::process::signal_group(self.pid, Signal::SIGKILL);
        let pidfd = pidfd.into_inner();
        std::thread::spawn(move || {
            let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn sh(script: &str) -> Prepared {
        Prepared::new(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        )
        .unwrap()
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[tokio::test]
    async fn the_socket_is_stdin_and_stdout_and_the_status_comes_back() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let (err_r, err_w) = pipe();
        let program = sh("read line; echo \"$GREETING $EXTRA $line\"; echo oops >&2; exit 3");
        let extra = [CString::new("EXTRA=x").unwrap()];
        let mut child = launch(
            &program,
            &extra,
            theirs.as_fd(),
            err_w.as_fd(),
            &Dispositions::current(),
        )
        .unwrap();
        drop((theirs, err_w));
        let mut mine = mine;
        mine.write_all(b"world\n").unwrap();
        let mut out = String::new();
        mine.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello x world\n");
        let mut err = String::new();
        std::fs::File::from(err_r).read_to_string(&mut err).unwrap();
        assert_eq!(err, "oops\n");
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            child.wait().await.unwrap(),
            status,
            "a second wait gives the same status"
        );
    }

    #[tokio::test]
    async fn the_child_has_default_signals_an_empty_mask_and_its_own_group() {
        // Rust ignores SIGPIPE; a caught signal too, to see both reset.
        let _caught =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).unwrap();
        let reset = Dispositions::current();
        assert!(reset.contains(libc::SIGPIPE) && reset.contains(libc::SIGUSR1));
        let (mine, theirs) = UnixStream::pair().unwrap();
        let (_err_r, err_w) = pipe();
        let program = sh(
            "grep -E '^Sig(Blk|Ign|Cgt)' /proc/self/status; echo \"$$ $(cut -d' ' -f5 /proc/self/stat)\"",
        );
        let mut child = launch(&program, &[], theirs.as_fd(), err_w.as_fd(), &reset).unwrap();
        drop((theirs, err_w));
        let mut out = String::new();
        let mut mine = mine;
        mine.read_to_string(&mut out).unwrap();
        assert!(child.wait().await.unwrap().success());
        // grep runs as the shell's child: its own mask and ignored set are the shell's.
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
        let last = out.lines().last().unwrap();
        let (pid, pgrp) = last.split_once(' ').unwrap();
        assert_eq!(pid, child.id().to_string());
        // cut runs in the shell's group: the group is led by the launched process.
        assert_eq!(pgrp, pid, "{out}");
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let program = Prepared::new(Path::new("/nonexistent/prog"), &[], &BTreeMap::new()).unwrap();
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let err = launch(
            &program,
            &[],
            theirs.as_fd(),
            w.as_fd(),
            &Dispositions::current(),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_killed_process_reports_its_signal_and_a_dropped_one_is_killed() {
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let reset = Dispositions::current();
        let mut child = launch(&sh("sleep 30"), &[], theirs.as_fd(), w.as_fd(), &reset).unwrap();
        crate::process::signal_group(child.id(), Signal::SIGKILL);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(crate::process::describe(status), "signal 9");

        let dropped = launch(&sh("sleep 30"), &[], theirs.as_fd(), w.as_fd(), &reset).unwrap();
        let pid = dropped.id();
        drop(dropped);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Killed and reaped: the pid no longer exists.
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "dropped process {pid} still there"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
