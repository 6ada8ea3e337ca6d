//! Starting a child process with few system calls and without copying the parent, and
//! reaping it by pidfd. Used where a start is on the path of every request: spawn mode's
//! function processes (nuage-fn) and the job worker's tasks (nuage-jobs).
//!
//! Why not std's or tokio's `Command`: they start processes with glibc's `posix_spawn`,
//! vfork-like and cheap, but its child resets the disposition of *every* signal before it
//! execs (about 120 `rt_sigaction` calls per process); and any `pre_exec` hook (needed
//! for a death signal) makes std `fork` instead, which copies the parent's page tables
//! and leaves the parent a copy-on-write fault on every page it writes afterwards
//! (docs/jobs.md measured ~100 faults per task).
//!
//! [`launch`] does the job with what nuage knows about itself:
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`; then, in the child, only system calls:
//! its own process group, optionally a death signal tied to the parent, the signals
//! listed in a [`Dispositions`] set back to the default, the three descriptors on fds
//! 0–2, optionally a working directory, an empty signal mask, `execve`. The same `clone`
//! returns a pidfd, by which [`Launched::wait`] reaps the child (no SIGCHLD handling).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

pub mod standby;

/// Stack of the child between `clone` and `execve`, where it makes a few dozen system
/// calls through libc (glibc's own `posix_spawn` gives its child 36 KiB).
const CHILD_STACK: usize = 64 * 1024;

/// Highest signal number on Linux (x86_64 and aarch64: 64 signals).
const MAX_SIGNAL: c_int = 64;

/// Exit status of a child that failed before `execve` (as a shell's "cannot run").
const CHILD_FAILED: c_int = 127;

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

/// The signals the child sets back to the default disposition before it execs (ignored
/// dispositions survive `execve`; caught ones are reset by it, but a handler of the
/// parent must not run in the child before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispositions(Vec<c_int>);

impl Dispositions {
    /// The signals whose disposition in this process is not the default now (ignored,
    /// like SIGPIPE in every Rust program, or caught, like SIGINT and SIGTERM by the
    /// node): 64 system calls, so read once and reused, as inetd does for its servers.
    /// A handler installed later is not in the list; until its `execve` the child blocks
    /// every signal, and `execve` resets caught ones (see [`launch`] for the last window).
    pub fn current() -> Dispositions {
        let signals = Self::every()
            .0
            .into_iter()
            .filter(|&sig| {
                let mut old = KernelSigaction::default();
                // SAFETY: `act` is null (read only); `old` is a valid KernelSigaction.
                let rc = unsafe { rt_sigaction(sig, std::ptr::null(), &mut old) };
                rc == 0 && old.handler != libc::SIG_DFL
            })
            .collect();
        Dispositions(signals)
    }

    /// Every signal that has a disposition (all but SIGKILL and SIGSTOP): for a parent
    /// whose handlers change while it runs, at 62 system calls in each child.
    pub fn every() -> Dispositions {
        Dispositions(
            (1..=MAX_SIGNAL)
                .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
                .collect(),
        )
    }

    pub fn contains(&self, signal: c_int) -> bool {
        self.0.contains(&signal)
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in the command, its environment or its directory",
        )
    })
}

/// A program, its arguments (`argv[0]` included) and environment, ready for `execve`:
/// converted once, launched many times.
#[derive(Debug)]
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

impl Prepared {
    /// `path` is the file to run (as `execve` takes it: no `PATH` lookup); `env` holds
    /// `KEY=VALUE` entries. Fails on a NUL byte.
    pub fn new<A, E>(path: &[u8], argv: A, env: E) -> io::Result<Prepared>
    where
        A: IntoIterator,
        A::Item: AsRef<[u8]>,
        E: IntoIterator,
        E::Item: AsRef<[u8]>,
    {
        let argv: Vec<CString> = argv
            .into_iter()
            .map(|a| cstring(a.as_ref()))
            .collect::<io::Result<_>>()?;
        if argv.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty command line",
            ));
        }
        Ok(Prepared {
            path: cstring(path)?,
            argv,
            env: env
                .into_iter()
                .map(|e| cstring(e.as_ref()))
                .collect::<io::Result<_>>()?,
        })
    }
}

/// The child's descriptors 0, 1 and 2 (the same descriptor may be given twice, as spawn
/// mode gives its socket for stdin and stdout).
#[derive(Debug, Clone, Copy)]
pub struct Stdio<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// What varies between launches of one [`Prepared`] program.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// `KEY=VALUE` entries added to the program's environment for this launch.
    pub extra_env: &'a [CString],
    /// Directory to run in (default: the parent's).
    pub cwd: Option<&'a CStr>,
    /// SIGKILL the child when the thread that launched it ends (`PR_SET_PDEATHSIG`):
    /// give it only from a thread that lives as long as the process (a runtime worker).
    pub die_with_parent: bool,
}

/// What the child reads between `clone` and `execve`. It lives on the parent's stack:
/// with CLONE_VFORK the parent's thread is suspended until the child has exec'd or
/// exited, so it stays valid and unchanged while the child reads it.
struct ChildArgs<'a> {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    fds: [RawFd; 3],
    reset: &'a [c_int],
    /// The parent's pid when the child must die with it (else 0).
    parent: libc::pid_t,
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
        unsafe { libc::_exit(CHILD_FAILED) }
    };
    // SAFETY: plain system calls on the child's own process state (its signal handlers
    // are its own copy: no CLONE_SIGHAND); every pointer is valid (ChildArgs) or built
    // on this stack.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return fail();
        }
        if args.parent != 0 {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return fail();
            }
            // The parent died before the death signal was set: nobody will reap us.
            if libc::getppid() != args.parent {
                libc::_exit(CHILD_FAILED);
            }
        }
        let default = KernelSigaction::default();
        for &sig in args.reset {
            rt_sigaction(sig, &default, std::ptr::null_mut());
        }
        // dup2 clears close-on-exec on the new descriptors (every source is above 2).
        for (target, &fd) in args.fds.iter().enumerate() {
            if libc::dup2(fd, target as c_int) < 0 {
                return fail();
            }
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) != 0 {
            return fail();
        }
        let mut empty = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(args.path, args.argv, args.envp);
    }
    fail()
}

/// Starts `program` in a new process group (its pid is the group id) with `stdio` on
/// fds 0–2, every other descriptor closed (nuage opens all with close-on-exec).
///
/// Signals: the parent's thread blocks every signal around `clone`, so the child starts
/// with all blocked; it resets the listed dispositions, then unblocks just before
/// `execve`. A signal delivered in that last window would run the parent's handler in
/// the child: only one sent to the whole system or to nuage's process group can reach a
/// child nobody knows the pid of yet, and nuage receives that signal too.
///
/// Errors: the reason the child could not start (ENOENT, EACCES, … of `execve`, or of
/// `chdir`), after it has been reaped.
pub fn launch(
    program: &Prepared,
    stdio: Stdio<'_>,
    reset: &Dispositions,
    options: &Options<'_>,
) -> io::Result<Launched> {
    // Descriptors 0..=2 of nuage itself would be overwritten by the child's dup2s
    // before being read.
    let fds = [
        above_stdio(stdio.stdin)?,
        above_stdio(stdio.stdout)?,
        above_stdio(stdio.stderr)?,
    ];
    let mut argv: Vec<*const c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = program
        .env
        .iter()
        .chain(options.extra_env)
        .map(|e| e.as_ptr())
        .collect();
    envp.push(std::ptr::null());
    let args = ChildArgs {
        path: program.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: options.cwd.map_or(std::ptr::null(), CStr::as_ptr),
        fds: fds.each_ref().map(Above::fd),
        reset: &reset.0,
        // SAFETY: getpid has no preconditions.
        parent: if options.die_with_parent {
            unsafe { libc::getpid() }
        } else {
            0
        },
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
    drop(fds);
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
    Launched::adopt(pid, pidfd, None)
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

/// A started process (the leader of its own process group), reaped through its pidfd.
pub struct Launched {
    pid: u32,
    /// None once handed to the background reaper (drop).
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// For a process started ahead ([`standby`]): the errno its child leaves when it
    /// cannot exec (0 if it did), known once it has been reaped.
    start_errno: Option<Arc<AtomicI32>>,
}

impl Launched {
    /// Watches a child of this process by its pidfd (a tokio reactor must be running).
    fn adopt(
        pid: c_int,
        pidfd: OwnedFd,
        start_errno: Option<Arc<AtomicI32>>,
    ) -> io::Result<Launched> {
        // SAFETY: an OwnedFd's descriptor is valid and stays the same until it is dropped
        // (with the AsyncFd, or after `into_inner`).
        match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
            Ok(pidfd) => Ok(Launched {
                pid: pid as u32,
                pidfd: Some(pidfd),
                status: None,
                start_errno,
            }),
            Err(e) => {
                // No way to wait for it asynchronously: do not leave it running unwatched.
                let (pidfd, e) = e.into_parts();
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
                Err(e)
            }
        }
    }

    /// Why a process started ahead never ran its program (the `execve` error), once
    /// [`Launched::wait`] has returned; None if it ran it, or was started by [`launch`]
    /// (which reports that error itself).
    pub fn start_error(&self) -> Option<io::Error> {
        self.status?;
        let errno = self.start_errno.as_ref()?.load(Ordering::Acquire);
        (errno != 0).then(|| io::Error::from_raw_os_error(errno))
    }

    /// The pid, which is also the process group id.
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
    /// A process dropped before it was reaped (its task was cancelled, its owner is going
    /// away) is killed with its group and reaped by a thread, rather than left running or
    /// as a zombie.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        // Not reaped, so the pid (and group id) is still this child's.
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
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
    use std::time::{Duration, Instant};

    pub(super) fn sh(script: &str) -> Prepared {
        Prepared::new(b"/bin/sh", ["sh", "-c", script], ["GREETING=hello"]).unwrap()
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    fn io<'a>(both: &'a impl AsFd, stderr: &'a impl AsFd) -> Stdio<'a> {
        Stdio {
            stdin: both.as_fd(),
            stdout: both.as_fd(),
            stderr: stderr.as_fd(),
        }
    }

    /// Whether `pid` has ended (gone, or a zombie). Shared with standby's tests.
    pub(super) fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    }

    #[tokio::test]
    async fn stdio_environment_and_status_reach_the_child_and_back() {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let (err_r, err_w) = pipe();
        let program =
            sh("read line; echo \"$GREETING $EXTRA $line $(pwd)\"; echo oops >&2; exit 3");
        let extra = [CString::new("EXTRA=x").unwrap()];
        let options = Options {
            extra_env: &extra,
            cwd: Some(c"/tmp"),
            die_with_parent: false,
        };
        let mut child = launch(
            &program,
            io(&theirs, &err_w),
            &Dispositions::current(),
            &options,
        )
        .unwrap();
        drop((theirs, err_w));
        let mut mine = mine;
        mine.write_all(b"world\n").unwrap();
        let mut out = String::new();
        mine.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello x world /tmp\n");
        let mut err = String::new();
        std::fs::File::from(err_r).read_to_string(&mut err).unwrap();
        assert_eq!(err, "oops\n");
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.wait().await.unwrap(), status, "the status is kept");
    }

    #[tokio::test]
    async fn the_child_has_default_signals_an_empty_mask_and_its_own_group() {
        // Rust ignores SIGPIPE; a caught signal too, to see both reset.
        let _caught =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).unwrap();
        let reset = Dispositions::current();
        assert!(reset.contains(libc::SIGPIPE) && reset.contains(libc::SIGUSR1));
        assert!(!reset.contains(libc::SIGKILL) && Dispositions::every().contains(libc::SIGINT));
        for reset in [reset, Dispositions::every()] {
            let (mine, theirs) = UnixStream::pair().unwrap();
            let (_err_r, err_w) = pipe();
            let program = sh(
                "grep -E '^Sig(Blk|Ign|Cgt)' /proc/self/status; echo \"$$ $(cut -d' ' -f5 /proc/self/stat)\"",
            );
            let mut child =
                launch(&program, io(&theirs, &err_w), &reset, &Options::default()).unwrap();
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
    }

    #[tokio::test]
    async fn what_stops_a_start_is_an_error() {
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let reset = Dispositions::current();
        let missing = Prepared::new(b"/nonexistent/prog", ["prog"], [""; 0]).unwrap();
        let err = launch(&missing, io(&theirs, &w), &reset, &Options::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let options = Options {
            cwd: Some(c"/nonexistent/dir"),
            ..Options::default()
        };
        let err = launch(&sh("true"), io(&theirs, &w), &reset, &options)
            .err()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "chdir: {err}");
        assert!(Prepared::new(b"/bin/sh", ["sh", "a\0b"], [""; 0]).is_err());
        assert!(Prepared::new(b"/bin/sh", [""; 0], [""; 0]).is_err());
    }

    #[tokio::test]
    async fn a_killed_process_reports_its_signal_and_a_dropped_one_is_killed() {
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let reset = Dispositions::current();
        let no = Options::default();
        let mut child = launch(&sh("sleep 30"), io(&theirs, &w), &reset, &no).unwrap();
        killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));

        // The dropped process's whole group goes: the shell and the sleep it started.
        let (mut out_r, out_w) = UnixStream::pair().unwrap();
        let started = sh("sleep 30 & echo $!; wait");
        let dropped = launch(&started, io(&out_w, &w), &reset, &no).unwrap();
        drop(out_w);
        let mut line = [0u8; 16];
        let n = out_r.read(&mut line).unwrap();
        let sleeper: u32 = std::str::from_utf8(&line[..n])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = dropped.id();
        drop(dropped);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(gone(pid) && gone(sleeper)) {
            assert!(
                Instant::now() < deadline,
                "dropped process {pid} still there"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_child_told_to_die_with_its_parent_does() {
        // The parent is a thread of ours that ends: the death signal follows the thread
        // that called clone (hence the option's warning).
        let (mut out_r, out_w) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let program = sh("echo $$; exec sleep 30");
        let options = Options {
            die_with_parent: true,
            ..Options::default()
        };
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let parent = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            let _guard = rt.enter();
            let child = launch(&program, io(&out_w, &w), &Dispositions::every(), &options).unwrap();
            pid_tx.send(child.id()).unwrap();
            // Not dropped (that would kill it): only the thread's end may.
            std::mem::forget(child);
            let _ = end_rx.recv();
        });
        let launched = pid_rx.recv().unwrap();
        let mut line = [0u8; 16];
        let n = out_r.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap().trim(),
            launched.to_string()
        );
        assert!(!gone(launched), "alive while its parent thread is");
        drop(end_tx);
        parent.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(launched) {
            assert!(
                Instant::now() < deadline,
                "{launched} outlived its parent thread"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reap the zombie (it is our process's child).
        let _ = nix::sys::wait::waitpid(Pid::from_raw(launched as i32), None);
    }
}
