//! A process started ahead of the connection it will serve: the `clone`, the new process
//! group and the signal resets happen while nothing waits, so when a connection comes,
//! only handing over its descriptors (one `sendmsg`) and the `execve` remain on its path.
//! Spawn mode keeps one such process per function (the inetd model with one start made
//! early, as pre-forking servers do); when it is taken, a thread of its own makes the next.
//!
//! How. A thread, [`Standby`]'s, clones a child with `CLONE_VM | CLONE_PIDFD` (no
//! `CLONE_VFORK`: the thread must not sleep uninterruptibly, which would count in the load
//! average, while the child waits for a connection). The child runs beside nuage in its
//! memory, on a stack of its own, so it makes system calls with the `syscall` instruction
//! only (no libc: libc's wrappers write `errno`, which lives in the cloning thread's
//! thread-local storage): its own process group, the default signal dispositions, every
//! descriptor closed but two (nuage's other descriptors — sockets of other connections —
//! must not stay open in it), then `recvmsg` on a Unix socket pair. [`Standby::take`]
//! sends it the connection's three descriptors (`SCM_RIGHTS`) and one environment entry;
//! the child puts them on fds 0–2 and in its environment, unblocks signals and execs. The
//! thread knows the child has left its memory when a close-on-exec pipe the child holds
//! reaches end of file (at the `execve`, or at its exit), then frees its stack and makes
//! the next one. A child that cannot exec leaves the errno where its [`Launched`] finds it
//! after the reap ([`Launched::start_error`]).

use std::ffi::{c_char, c_int, c_long, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, waitid};

use super::{CHILD_FAILED, CHILD_STACK, Dispositions, KernelSigaction, Launched, Prepared, Stdio};

/// Longest environment entry (`KEY=VALUE`) a connection may hand its process.
pub const EXTRA_ENV_MAX: usize = 256;

/// Wait before the next process after one ended without serving (killed from outside) or
/// could not be made: at most ten starts a second, whatever goes wrong.
const RETRY: Duration = Duration::from_millis(100);

/// Room for the control message of three descriptors (CMSG_SPACE(12) is 32 on 64-bit
/// Linux), as u64s for its alignment.
const CONTROL_WORDS: usize = 8;

/// System calls without libc, for the child: the result is the kernel's (negative errno
/// on failure) and nothing else is touched.
mod sys {
    use std::ffi::c_long;

    /// # Safety
    /// As the system call `n` with these arguments.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn call(n: c_long, a: usize, b: usize, c: usize, d: usize) -> c_long {
        let ret: c_long;
        // SAFETY: the Linux x86_64 system call convention; rcx and r11 are clobbered.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret
    }

    /// # Safety
    /// As the system call `n` with these arguments.
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn call(n: c_long, a: usize, b: usize, c: usize, d: usize) -> c_long {
        let ret: c_long;
        // SAFETY: the Linux aarch64 system call convention.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a => ret,
                in("x1") b,
                in("x2") c,
                in("x3") d,
                options(nostack)
            );
        }
        ret
    }
}

/// What the waiting child reads. Boxed by the thread, alive until the child has exec'd
/// or exited (the notify pipe's end of file).
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    reset: *const c_int,
    reset_len: usize,
    /// The child's end of the socket pair.
    channel: RawFd,
    /// The write end of the notify pipe (close-on-exec).
    notify: RawFd,
    /// The connection's environment entry, NUL-terminated by the child; `envp` points here.
    extra: std::cell::UnsafeCell<[u8; EXTRA_ENV_MAX + 1]>,
    /// Where the child leaves the errno of what failed (0: exec'd).
    errno: *const AtomicI32,
}

/// Ends the child with `errno` left for its reaper.
///
/// # Safety
/// `args` is the child's `ChildArgs`.
unsafe fn child_fail(args: &ChildArgs, errno: c_long) -> ! {
    // SAFETY: `errno` points into an Arc the thread and the taker keep alive.
    unsafe { (*args.errno).store((errno as c_int).max(1), Ordering::Release) };
    child_exit(CHILD_FAILED)
}

fn child_exit(code: c_int) -> ! {
    loop {
        // SAFETY: exit_group ends the child's (own) thread group; it does not return.
        unsafe { sys::call(libc::SYS_exit_group, code as usize, 0, 0, 0) };
    }
}

/// The waiting child. Only `sys::call`, reads of `ChildArgs`, and its own stack.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the thread's boxed ChildArgs, alive until this child has exec'd or
    // exited; every pointer in it is valid for as long.
    unsafe {
        let args = &*(arg as *const ChildArgs);
        let rc = sys::call(libc::SYS_setpgid, 0, 0, 0, 0);
        if rc < 0 {
            child_fail(args, -rc);
        }
        let default = KernelSigaction::default();
        for i in 0..args.reset_len {
            let sig = *args.reset.add(i);
            sys::call(
                libc::SYS_rt_sigaction,
                sig as usize,
                &default as *const KernelSigaction as usize,
                0,
                8,
            );
        }
        // Keep 0–2, the channel and the notify pipe; close the rest (nuage's sockets).
        let (lo, hi) = (args.channel.min(args.notify), args.channel.max(args.notify));
        for (first, last) in [(3, lo - 1), (lo + 1, hi - 1), (hi + 1, c_int::MAX)] {
            if first <= last {
                sys::call(libc::SYS_close_range, first as usize, last as usize, 0, 0);
            }
        }

        let mut iov = libc::iovec {
            iov_base: args.extra.get() as *mut c_void,
            iov_len: EXTRA_ENV_MAX,
        };
        let mut control = [0u64; CONTROL_WORDS];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = loop {
            let n = sys::call(
                libc::SYS_recvmsg,
                args.channel as usize,
                &mut msg as *mut libc::msghdr as usize,
                libc::MSG_CMSG_CLOEXEC as usize,
                0,
            );
            if n != -(libc::EINTR as c_long) {
                break n;
            }
        };
        if n == 0 {
            child_exit(0); // nuage closed the channel: the function stops
        }
        if n < 0 {
            child_fail(args, -n);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            child_fail(args, libc::EMSGSIZE as c_long);
        }
        (*args.extra.get())[n as usize] = 0;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || (*cmsg).cmsg_len as usize != libc::CMSG_LEN(3 * 4) as usize
        {
            child_fail(args, libc::EPROTO as c_long);
        }
        let data = libc::CMSG_DATA(cmsg) as *const c_int;
        let mut fds = [0 as c_int; 3];
        for (i, fd) in fds.iter_mut().enumerate() {
            *fd = std::ptr::read_unaligned(data.add(i));
        }
        // A descriptor that landed on 0–2 (nuage's own were closed) would be overwritten
        // by the first dup3s: move it up first.
        for fd in fds.iter_mut() {
            if *fd <= 2 {
                let up = sys::call(
                    libc::SYS_fcntl,
                    *fd as usize,
                    libc::F_DUPFD_CLOEXEC as usize,
                    3,
                    0,
                );
                if up < 0 {
                    child_fail(args, -up);
                }
                *fd = up as c_int;
            }
        }
        for (target, &fd) in fds.iter().enumerate() {
            let rc = sys::call(libc::SYS_dup3, fd as usize, target, 0, 0);
            if rc < 0 {
                child_fail(args, -rc);
            }
        }
        let empty: u64 = 0;
        sys::call(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &empty as *const u64 as usize,
            0,
            8,
        );
        let rc = sys::call(
            libc::SYS_execve,
            args.path as usize,
            args.argv as usize,
            args.envp as usize,
            0,
        );
        child_fail(args, -rc)
    }
}

/// A child waiting for its connection, as the slot holds it.
struct Ready {
    channel: OwnedFd,
    pid: c_int,
    pidfd: OwnedFd,
    errno: Arc<AtomicI32>,
}

#[derive(Default)]
struct SlotState {
    ready: Option<Ready>,
    /// The Standby was dropped: make no more processes.
    closed: bool,
}

#[derive(Default)]
struct Slot(Mutex<SlotState>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps one process of a program started and waiting for a connection (see the module
/// documentation). Dropping it ends the waiting process; processes already handed a
/// connection are their [`Launched`]'s.
pub struct Standby {
    slot: Arc<Slot>,
}

impl Standby {
    /// Starts the thread that keeps a process of `program` ready, with the signals of
    /// `reset` set back to the default in it.
    pub fn start(program: Arc<Prepared>, reset: Dispositions) -> io::Result<Standby> {
        let slot = Arc::new(Slot::default());
        let kept = slot.clone();
        std::thread::Builder::new()
            .name("standby".into())
            .spawn(move || keep_one_ready(&program, &reset, &kept))?;
        Ok(Standby { slot })
    }

    /// The waiting process's pid, if one is waiting now.
    pub fn waiting(&self) -> Option<u32> {
        self.slot.lock().ready.as_ref().map(|r| r.pid as u32)
    }

    /// Hands `stdio` and the environment entry `extra_env` (`KEY=VALUE`, 1 to
    /// [`EXTRA_ENV_MAX`] bytes) to the waiting process, which then execs the program.
    /// None if no process is waiting (one is being made) or it could not be reached: the
    /// caller starts one itself ([`super::launch`]). Needs a tokio reactor (the pidfd).
    pub fn take(&self, stdio: Stdio<'_>, extra_env: &[u8]) -> Option<Launched> {
        if extra_env.is_empty() || extra_env.len() > EXTRA_ENV_MAX || extra_env.contains(&0) {
            return None;
        }
        let ready = {
            let mut state = self.slot.lock();
            if state.closed {
                return None;
            }
            state.ready.take()?
        };
        let fds = [
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ];
        let sent = send_connection(&ready.channel, fds, extra_env);
        let launched = Launched::adopt(ready.pid, ready.pidfd, Some(ready.errno)).ok()?;
        match sent {
            Ok(()) => Some(launched),
            // Gone before it got the connection (killed from outside): dropping its
            // Launched kills and reaps what is left; the caller starts one itself.
            _ => None,
        }
    }
}

impl Standby {
    /// Ends the waiting process and makes no more ([`Standby::take`] then gives None).
    pub fn close(&self) {
        let mut state = self.slot.lock();
        state.closed = true;
        if let Some(ready) = &state.ready {
            // End of file in the child's recvmsg: it exits, and the thread reaps it.
            hang_up(&ready.channel);
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.close();
    }
}

/// One datagram: the environment entry, with the three descriptors (`SCM_RIGHTS`).
fn send_connection(channel: &OwnedFd, fds: [RawFd; 3], extra_env: &[u8]) -> io::Result<()> {
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: msghdr and the control buffer are built per cmsg(3): the buffer is aligned
    // and large enough for CMSG_SPACE of three ints (asserted); the iovec points to
    // `extra_env`, which outlives the call.
    let sent = unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) as usize;
        assert!(space <= std::mem::size_of_val(&control));
        let mut iov = libc::iovec {
            iov_base: extra_env.as_ptr() as *mut c_void,
            iov_len: extra_env.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg) as *mut RawFd, fds.len());
        libc::sendmsg(channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != extra_env.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
    }
    Ok(())
}

/// End of file in the waiting child's `recvmsg`: it exits.
fn hang_up(channel: &OwnedFd) {
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(channel.as_raw_fd(), libc::SHUT_RDWR) };
}

/// The thread: one waiting process at a time, the next as soon as the last has exec'd.
fn keep_one_ready(program: &Prepared, reset: &Dispositions, slot: &Slot) {
    // Every signal stays blocked in this thread: the children start with all blocked.
    // SAFETY: sigset_t initialised by sigfillset before use.
    unsafe {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    loop {
        if slot.lock().closed {
            return;
        }
        let Child {
            ready,
            notify,
            args,
        } = match Child::start(program, reset) {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(program = ?program.path, "cannot start a process ahead: {e}");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        let pid = ready.pid;
        {
            let mut state = slot.lock();
            if state.closed {
                hang_up(&ready.channel); // dropped meanwhile: it exits, and is reaped below
            }
            state.ready = Some(ready);
        }
        wait_for_eof(&notify);
        // The child has exec'd or exited: it no longer runs in our memory.
        drop(args);
        let unused = {
            let mut state = slot.lock();
            if state.ready.as_ref().is_some_and(|r| r.pid == pid) {
                state.ready.take()
            } else {
                None // taken: its Launched reaps it
            }
        };
        if let Some(ready) = unused {
            // Ended without a connection: closed by us, or killed from outside.
            let _ = waitid(
                Id::PIDFd(std::os::fd::AsFd::as_fd(&ready.pidfd)),
                WaitPidFlag::WEXITED,
            );
            if !slot.lock().closed {
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// Reads until end of file (all write ends closed).
fn wait_for_eof(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // Cannot happen on a pipe we own; waiting on would be forever.
                panic!("standby notify pipe: {e}");
            }
        }
    }
}

/// What the thread keeps for the child until it has left our memory.
struct Args {
    _args: Box<ChildArgs>,
    _argv: Vec<*const c_char>,
    _envp: Vec<*const c_char>,
    _stack: Box<[std::mem::MaybeUninit<u8>]>,
}

struct Child {
    ready: Ready,
    notify: OwnedFd,
    args: Args,
}

impl Child {
    fn start(program: &Prepared, reset: &Dispositions) -> io::Result<Child> {
        let mut pair = [0 as c_int; 2];
        // SAFETY: socketpair writes two descriptors into `pair` on success.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nothing else.
        let (channel, child_channel) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let (notify, child_notify) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let errno = Arc::new(AtomicI32::new(0));
        let mut args = Box::new(ChildArgs {
            path: program.path.as_ptr(),
            argv: std::ptr::null(),
            envp: std::ptr::null(),
            reset: reset.0.as_ptr(),
            reset_len: reset.0.len(),
            channel: child_channel.as_raw_fd(),
            notify: child_notify.as_raw_fd(),
            extra: std::cell::UnsafeCell::new([0; EXTRA_ENV_MAX + 1]),
            errno: Arc::as_ptr(&errno),
        });
        let mut argv: Vec<*const c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const c_char> = program.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(args.extra.get() as *const c_char);
        envp.push(std::ptr::null());
        args.argv = argv.as_ptr();
        args.envp = envp.as_ptr();
        let mut stack = Box::<[u8]>::new_uninit_slice(CHILD_STACK);
        let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
        let mut pidfd: c_int = -1;
        let flags = libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD;
        // SAFETY: the child runs `child_main` on `stack` with `args`, both kept by the
        // returned Child until the notify pipe says the child left our memory; with
        // CLONE_PIDFD the kernel writes the pidfd into `pidfd`.
        let pid = unsafe {
            libc::clone(
                child_main,
                top as *mut c_void,
                flags,
                &*args as *const ChildArgs as *mut c_void,
                &mut pidfd as *mut c_int,
            )
        };
        if pid <= 0 {
            return Err(io::Error::last_os_error());
        }
        assert!(pidfd >= 0, "clone(CLONE_PIDFD) gave no pidfd");
        drop((child_channel, child_notify));
        Ok(Child {
            ready: Ready {
                channel,
                pid,
                // SAFETY: the kernel just created this descriptor for us.
                pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
                errno,
            },
            notify,
            args: Args {
                _args: args,
                _argv: argv,
                _envp: envp,
                _stack: stack,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use super::super::tests::gone;

    fn sh(script: &str) -> Arc<Prepared> {
        Arc::new(super::super::tests::sh(script))
    }

    fn waiting(standby: &Standby) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = standby.waiting() {
                return pid;
            }
            assert!(Instant::now() < deadline, "no process waiting");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stdio<'a>(both: &'a UnixStream, err: &'a OwnedFd) -> Stdio<'a> {
        Stdio {
            stdin: both.as_fd(),
            stdout: both.as_fd(),
            stderr: err.as_fd(),
        }
    }

    #[tokio::test]
    async fn each_connection_gets_a_fresh_waiting_process_with_its_stdio_and_environment() {
        let program = sh(
            "read line; echo \"$GREETING $NUAGE_CLIENT $line $$ $(cut -d' ' -f5 /proc/self/stat)\"; \
             grep -E '^Sig(Blk|Ign)' /proc/self/status; echo oops >&2; exit 3",
        );
        let standby = Standby::start(program, Dispositions::current()).unwrap();
        let mut pids = Vec::new();
        for i in 0..3 {
            let pid = waiting(&standby);
            assert!(!pids.contains(&pid), "a fresh process each time");
            let (mine, theirs) = UnixStream::pair().unwrap();
            let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let env = format!("NUAGE_CLIENT=10.0.0.{i}:99");
            let mut child = standby
                .take(stdio(&theirs, &err_w), env.as_bytes())
                .unwrap();
            assert_eq!(child.id(), pid);
            drop((theirs, err_w));
            let mut mine = mine;
            mine.write_all(b"world\n").unwrap();
            let mut out = String::new();
            mine.read_to_string(&mut out).unwrap();
            let first = out.lines().next().unwrap();
            // Its own group, led by itself (cut runs in the shell's group).
            assert_eq!(
                first,
                format!("hello 10.0.0.{i}:99 world {pid} {pid}"),
                "{out}"
            );
            assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
            assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
            let mut err = String::new();
            std::fs::File::from(err_r).read_to_string(&mut err).unwrap();
            assert_eq!(err, "oops\n");
            let status = child.wait().await.unwrap();
            assert_eq!(status.code(), Some(3));
            assert!(child.start_error().is_none());
            pids.push(pid);
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_run_is_reported_at_the_reap() {
        let missing = Arc::new(Prepared::new(b"/nonexistent/prog", ["prog"], [""; 0]).unwrap());
        let standby = Standby::start(missing, Dispositions::current()).unwrap();
        waiting(&standby);
        let (_mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut child = standby.take(stdio(&theirs, &w), b"A=1").unwrap();
        assert!(child.start_error().is_none(), "unknown before the reap");
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(CHILD_FAILED));
        let err = child.start_error().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        // Bad entries are refused before anything is taken.
        assert!(standby.take(stdio(&theirs, &w), b"").is_none());
        assert!(standby.take(stdio(&theirs, &w), b"A=\0").is_none());
        assert!(
            standby
                .take(stdio(&theirs, &w), &[b'a'; EXTRA_ENV_MAX + 1])
                .is_none()
        );
    }

    #[test]
    fn the_waiting_process_holds_no_other_descriptor_and_ends_with_its_standby() {
        // A pipe open in nuage while the process is made: if the waiting process kept its
        // write end, the reader would never see end of file (a connection's socket kept
        // open the same way would never close for its client).
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let standby = Standby::start(sh("exit 0"), Dispositions::current()).unwrap();
        let pid = waiting(&standby);
        drop(write_end);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = std::fs::File::from(read_end).read_to_end(&mut rest);
            let _ = done_tx.send(rest);
        });
        let rest = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("end of file: the waiting process must not hold the pipe");
        assert!(rest.is_empty());
        assert!(!gone(pid));
        drop(standby);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            assert!(Instant::now() < deadline, "{pid} outlived its standby");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn a_waiting_process_killed_from_outside_is_replaced() {
        let standby = Standby::start(sh("cat"), Dispositions::current()).unwrap();
        let first = waiting(&standby);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let second = loop {
            match standby.waiting() {
                Some(pid) if pid != first => break pid,
                _ => {}
            }
            assert!(Instant::now() < deadline, "not replaced");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(gone(first), "the killed one was reaped");
        let (mine, theirs) = UnixStream::pair().unwrap();
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut child = standby.take(stdio(&theirs, &w), b"X=1").unwrap();
        assert_eq!(child.id(), second);
        drop(theirs);
        let mut mine = mine;
        mine.write_all(b"echo\n").unwrap();
        mine.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        mine.read_to_string(&mut out).unwrap();
        assert_eq!(out, "echo\n");
        assert!(child.wait().await.unwrap().success());
    }
}
