//! Starting spawn mode's processes with few system calls, and reaping them by pidfd.
//!
//! std and tokio start processes with glibc's `posix_spawn`: vfork-like and cheap, but its
//! child resets the disposition of *every* signal before it execs (about 120
//! `rt_sigaction` calls per process), and the parent's thread waits until the child has
//! exec'd. [`launch`] does the same job with what nuage knows about itself, and without
//! the wait: `clone(CLONE_VM | CLONE_PIDFD)` on a stack of the child's own (no copy of
//! nuage's memory, as with vfork, but no CLONE_VFORK: the thread that accepted the
//! connection goes on at once, to the next connection, while the child execs). In the
//! child, with raw system calls only: its own process group, the few signals whose
//! disposition is not the default (listed once by [`Dispositions::current`]) set back to
//! the default, the socket on fds 0 and 1, the stderr pipe on fd 2, an empty signal mask,
//! `execve`. The same `clone` returns a pidfd, by which [`Launched::wait`] reaps the child
//! (no SIGCHLD handling involved); the child's stack and arguments are freed then, and a
//! failure before `execve` (written by the child into that memory) is reported then.

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::io::unix::AsyncFd;

/// Stack of the child between `clone` and `execve`, where it makes a handful of raw
/// system calls (a few hundred bytes; glibc's own `posix_spawn` gives its child 36 KiB).
/// Only the pages it touches are ever backed by memory.
const CHILD_STACK: usize = 64 * 1024;

/// Highest signal number on Linux (x86_64 and aarch64: 64 signals).
const MAX_SIGNAL: c_int = 64;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "launch.rs knows the kernel's sigaction layout and system calls of x86_64 and aarch64 only"
);

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

/// The memory the child uses between `clone` and `execve`: its stack and what it reads.
/// The child shares nuage's memory (CLONE_VM) but not its wait (no CLONE_VFORK): the
/// launching thread goes on at once while the child execs, so this block is owned by
/// the [`Launched`] and freed only once the process has been reaped, when the child can
/// no longer be reading it. The child writes nothing here but `errno`.
struct ChildMemory {
    stack: Box<[MaybeUninit<u8>]>,
    program: Arc<Prepared>,
    /// Pointers into `program` and `extra_env` (heap data that does not move).
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    #[expect(dead_code, reason = "never read: `envp` points into it")]
    extra_env: Vec<CString>,
    reset: Arc<Dispositions>,
    io: RawFd,
    stderr: RawFd,
    /// errno of the step that failed, written by the child before it exits (0: exec'd).
    errno: AtomicI32,
}

// SAFETY: the raw pointers point into `program` and `extra_env`, owned by the same
// block and never changed while it lives; moving the block between threads moves them.
unsafe impl Send for ChildMemory {}
// SAFETY: shared access only reads the block; `errno` is atomic.
unsafe impl Sync for ChildMemory {}

/// A system call without libc: the result, or `-errno`. The child must not go through
/// libc's wrappers: they set `errno`, a thread-local variable, and the child runs on the
/// thread pointer of the nuage thread that cloned it, which keeps running meanwhile.
///
/// # Safety
/// As the system call `n` with these arguments.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux system call convention; rcx and r11 are clobbered.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86_64 version.
///
/// # Safety
/// As the system call `n` with these arguments.
#[cfg(target_arch = "aarch64")]
unsafe fn raw_syscall(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 Linux system call convention (number in x8, svc 0).
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a as isize => ret,
            in("x1") b, in("x2") c, in("x3") d,
            options(nostack),
        );
    }
    ret
}

/// The child, between `clone` and `execve`. It shares nuage's memory while nuage's
/// threads keep running, so it makes raw system calls only: no libc (errno, locks), no
/// allocation, no unwinding, nothing written but its own stack and `errno` below.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildMemory` that `launch` passed to clone; it lives until
    // this process has been reaped (see `ChildMemory`).
    let mem = unsafe { &*(arg as *const ChildMemory) };
    let fail = |ret: isize| -> c_int {
        // ret is -errno (-4095..=-1).
        mem.errno
            .store((ret.wrapping_neg() as i32).max(1), Ordering::Relaxed);
        // SAFETY: ends this child (a thread group of its own) at once.
        unsafe { raw_syscall(libc::SYS_exit_group, 127, 0, 0, 0) };
        127
    };
    let default = KernelSigaction::default();
    let empty: u64 = 0;
    // SAFETY: system calls on the child's own process state; every pointer is to
    // `ChildMemory` or to this stack.
    unsafe {
        let ret = raw_syscall(libc::SYS_setpgid, 0, 0, 0, 0);
        if ret < 0 {
            return fail(ret);
        }
        for &sig in mem.reset.0.iter() {
            let act = &default as *const KernelSigaction as usize;
            raw_syscall(libc::SYS_rt_sigaction, sig as usize, act, 0, 8);
        }
        // dup3 clears close-on-exec on the new descriptors (both sources are above 2,
        // so never equal to their target, which dup3 refuses).
        for (from, to) in [(mem.io, 0), (mem.io, 1), (mem.stderr, 2)] {
            let ret = raw_syscall(libc::SYS_dup3, from as usize, to, 0, 0);
            if ret < 0 {
                return fail(ret);
            }
        }
        let mask = &empty as *const u64 as usize;
        raw_syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            mask,
            0,
            8,
        );
        let ret = raw_syscall(
            libc::SYS_execve,
            mem.program.path.as_ptr() as usize,
            mem.argv.as_ptr() as usize,
            mem.envp.as_ptr() as usize,
            0,
        );
        fail(ret)
    }
}

/// Starts `program` (plus the `extra` environment variables) in a new process group,
/// with `io` as its stdin and stdout and `stderr` as its stderr. Returns as soon as the
/// process exists, before it has exec'd: a failure to start (the program vanished since
/// deploy, say) shows when it is reaped, in [`Launched::start_error`].
///
/// Signals: the parent's thread blocks every signal around `clone`, so the child starts
/// with all blocked; it resets the listed dispositions, then unblocks just before
/// `execve`. A signal delivered in that last window would run the parent's handler in
/// the child: only one sent to the whole system or to nuage's process group can reach a
/// child nobody knows the pid of yet, and nuage receives that signal too.
pub fn launch(
    program: &Arc<Prepared>,
    extra_env: &[CString],
    io: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
    reset: &Arc<Dispositions>,
) -> io::Result<Launched> {
    // Descriptors 0..=2 of nuage itself would collide with the child's stdio. A
    // duplicate made here is in the child's copy of the descriptor table: the parent may
    // close it as soon as clone returns.
    let io = above_stdio(io)?;
    let stderr = above_stdio(stderr)?;
    let extra_env = extra_env.to_vec();
    let mut argv: Vec<*const c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = program
        .env
        .iter()
        .chain(&extra_env)
        .map(|e| e.as_ptr())
        .collect();
    envp.push(std::ptr::null());
    let mut memory = Box::new(ChildMemory {
        stack: Box::new_uninit_slice(CHILD_STACK),
        program: program.clone(),
        argv,
        envp,
        extra_env,
        reset: reset.clone(),
        io: io.fd(),
        stderr: stderr.fd(),
        errno: AtomicI32::new(0),
    });
    // The stack grows down from its end, 16-byte aligned as the ABI wants.
    let top = (memory.stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let arg = &*memory as *const ChildMemory as *mut c_void;
    let mut pidfd: c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: sigset_t values are initialized by sigfillset/pthread_sigmask before use.
    // `clone` runs `child_main` on the stack in `memory` with `memory` as argument; the
    // block is not touched by this side until the child is reaped; with CLONE_PIDFD the
    // kernel writes the pidfd into `pidfd`.
    let (pid, clone_error) = unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            arg,
            &mut pidfd as *mut c_int,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (pid, clone_error)
    };
    if pid <= 0 {
        return Err(clone_error);
    }
    assert!(pidfd >= 0, "clone(CLONE_PIDFD) gave no pidfd");
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut launched = Launched {
        pid: pid as u32,
        pidfd: None,
        memory: Some(memory),
        status: None,
        start_errno: 0,
    };
    // The process group exists when this returns, whoever of the two runs first (the
    // child's own setpgid and this one set the same group; this one fails, harmlessly,
    // once the child has exec'd). So signalling the group never misses the child.
    // SAFETY: a plain system call on our own child.
    unsafe { libc::setpgid(pid, pid) };
    // SAFETY: an OwnedFd's descriptor is valid and stays the same until it is dropped
    // (with the AsyncFd, or after `into_inner`).
    match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
        Ok(pidfd) => launched.pidfd = Some(pidfd),
        Err(e) => {
            // Nobody could watch it: it is killed and reaped in the background.
            let (pidfd, e) = e.into_parts();
            kill_and_reap(launched.pid, pidfd, launched.memory.take());
            return Err(e);
        }
    }
    Ok(launched)
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
    /// The child's stack and arguments, freed once it has been reaped.
    memory: Option<Box<ChildMemory>>,
    status: Option<ExitStatus>,
    /// errno of the child's failed start (0: it exec'd or is not reaped yet).
    start_errno: i32,
}

impl Launched {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to end and reaps it (at most once; later calls return the
    /// same status). A process that failed before its `execve` exits with status 127;
    /// [`Launched::start_error`] then says why.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pidfd = self.pidfd.as_ref().expect("pidfd kept until drop");
        loop {
            let mut ready = pidfd.readable().await?;
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
            let status =
                match waitid(Id::PIDFd(pidfd.get_ref().as_fd()), flags).map_err(io::Error::from)? {
                    WaitStatus::Exited(_, code) => ExitStatus::from_raw((code & 0xff) << 8),
                    WaitStatus::Signaled(_, signal, core) => {
                        ExitStatus::from_raw(signal as i32 | if core { 0x80 } else { 0 })
                    }
                    _ => {
                        ready.clear_ready();
                        continue;
                    }
                };
            // Reaped: the child no longer runs on its memory.
            let memory = self.memory.take().expect("memory kept until reaped");
            let errno = memory.errno.load(Ordering::Relaxed);
            if errno != 0 {
                self.start_errno = errno;
            }
            return Ok(*self.status.insert(status));
        }
    }

    /// Why the process never ran the program (set by [`Launched::wait`]): the error of
    /// the step that failed in the child (`setpgid`, `dup3` or `execve`).
    pub fn start_error(&self) -> Option<io::Error> {
        (self.start_errno != 0).then(|| io::Error::from_raw_os_error(self.start_errno))
    }
}

/// Kills a process that nobody will wait for, with its group, and reaps it on a thread
/// of its own (rather than leaving a zombie); its memory is freed after the reap.
fn kill_and_reap(pid: u32, pidfd: OwnedFd, memory: Option<Box<ChildMemory>>) {
    // Not reaped, so the pid is still this process's (a zombie at worst); the group
    // exists (see `launch`).
    crate::process::signal_group(pid, Signal::SIGKILL);
    std::thread::spawn(move || {
        let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        drop(memory);
    });
}

impl Drop for Launched {
    /// A process dropped before it was reaped (its task was cancelled) is killed with its
    /// group and reaped by a thread.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Some(pidfd) = self.pidfd.take() {
            kill_and_reap(self.pid, pidfd.into_inner(), self.memory.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn sh(script: &str) -> Arc<Prepared> {
        Arc::new(
            Prepared::new(
                Path::new("/bin/sh"),
                &["-c".into(), script.into()],
                &BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
            )
            .unwrap(),
        )
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
            &Arc::new(Dispositions::current()),
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
        let reset = Arc::new(Dispositions::current());
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
    async fn a_missing_program_is_a_start_error_once_reaped() {
        let program =
            Arc::new(Prepared::new(Path::new("/nonexistent/prog"), &[], &BTreeMap::new()).unwrap());
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let reset = Arc::new(Dispositions::current());
        let mut child = launch(&program, &[], theirs.as_fd(), w.as_fd(), &reset).unwrap();
        assert!(child.start_error().is_none(), "not known before the reap");
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(127));
        assert_eq!(child.start_error().unwrap().kind(), io::ErrorKind::NotFound);
        // A program that runs and exits 127 itself is not a start error.
        let mut child = launch(&sh("exit 127"), &[], theirs.as_fd(), w.as_fd(), &reset).unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(127));
        assert!(child.start_error().is_none());
    }

    #[test]
    fn many_starts_from_several_threads_at_once() {
        // The launching threads go on while their children exec; each child must still
        // get its own socket, arguments and environment.
        let reset = Arc::new(Dispositions::current());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let reset = reset.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let program = sh("echo \"$GREETING $EXTRA\"");
                        for i in 0..25 {
                            let (mut mine, theirs) = UnixStream::pair().unwrap();
                            let (_r, w) = pipe();
                            let extra = [CString::new(format!("EXTRA={t}-{i}")).unwrap()];
                            let mut child =
                                launch(&program, &extra, theirs.as_fd(), w.as_fd(), &reset)
                                    .unwrap();
                            drop(theirs);
                            let mut out = String::new();
                            mine.read_to_string(&mut out).unwrap();
                            assert_eq!(out, format!("hello {t}-{i}\n"));
                            assert!(child.wait().await.unwrap().success());
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[tokio::test]
    async fn a_killed_process_reports_its_signal_and_a_dropped_one_is_killed() {
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let reset = Arc::new(Dispositions::current());
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
