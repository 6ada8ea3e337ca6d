//! Starting a task's process without copying the worker: `clone(CLONE_VM | CLONE_VFORK |
//! CLONE_PIDFD)`, then in the child only system calls: its own process group, a death
//! signal (SIGKILL when the worker dies), signal dispositions and mask back to the
//! defaults, `/dev/null` and the two capture pipes on fds 0–2, the working directory,
//! `execve`. The process is reaped through the pidfd the same `clone` returns.
//!
//! Why not std's `Command` with a `pre_exec` hook (what this replaced): any hook makes
//! std `fork` instead of using `posix_spawn`, so every task paid a copy of the worker's
//! page tables and the worker then took a copy-on-write fault on each page it wrote
//! (about 100 page faults per task; docs/jobs.md, "Benchmark"). Here the child borrows
//! the worker's memory until it execs and the worker's thread waits meanwhile, as
//! glibc's `posix_spawn` does, but with the death signal that `posix_spawn` cannot set.
//! (crates/nuage-fn/src/launch.rs does the same for function processes.)

use std::ffi::{CString, OsStr, c_char, c_int, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Stack of the child between `clone` and `execve`, where it makes a few dozen system
/// calls through libc (glibc's own `posix_spawn` gives its child 36 KiB).
const CHILD_STACK: usize = 64 * 1024;
/// Highest signal number on Linux (x86_64 and aarch64).
const MAX_SIGNAL: c_int = 64;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("spawn.rs knows the kernel's sigaction layout of x86_64 and aarch64 only");

/// The kernel's `struct sigaction` on x86_64 and aarch64; all zeroes is SIG_DFL.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// A task's command line and environment, ready for `execve`.
#[derive(Debug)]
pub struct TaskCommand {
    /// The program as found (a name without `/` is looked up in `PATH`).
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in the command, its environment or its directory",
        )
    })
}

/// The file `execvp` would run for `program`: itself if it names a path, else the first
/// executable regular file of that name in `path_var`'s directories.
fn find_program(program: &OsStr, path_var: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let dirs = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(dirs) {
        let candidate = dir.join(program);
        let Ok(c) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        let is_file = std::fs::metadata(&candidate).is_ok_and(|m| m.is_file());
        // SAFETY: `c` is a valid NUL-terminated path.
        if is_file && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(candidate);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

impl TaskCommand {
    /// `argv[0]` with the rest of `argv`, the worker's environment with `remove` taken
    /// out and `set` added (or replaced), run in `cwd` if given.
    pub fn new(
        argv: &[&OsStr],
        set: &[(&str, &str)],
        remove: &[&str],
        cwd: Option<&Path>,
    ) -> io::Result<TaskCommand> {
        let program = argv.first().copied().unwrap_or_default();
        let path = find_program(program, std::env::var_os("PATH").as_deref())?;
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let key = k.as_bytes();
            if set.iter().any(|(s, _)| s.as_bytes() == key)
                || remove.iter().any(|r| r.as_bytes() == key)
            {
                continue;
            }
            env.push(cstring(&[key, b"=", v.as_bytes()].concat())?);
        }
        for (k, v) in set {
            env.push(cstring(format!("{k}={v}").as_bytes())?);
        }
        Ok(TaskCommand {
            path: cstring(path.as_os_str().as_bytes())?,
            argv: argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<io::Result<_>>()?,
            env,
            cwd: cwd.map(|d| cstring(d.as_os_str().as_bytes())).transpose()?,
        })
    }
}

/// What the child reads between `clone` and `execve`. It lives on the parent's stack:
/// with CLONE_VFORK the parent's thread is suspended until the child has exec'd or
/// exited, so it stays valid and unchanged while the child reads it.
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The worker's pid: if the child's parent is already someone else, the worker died
    /// before the death signal was set.
    worker: libc::pid_t,
    /// errno of the step that failed, written by the child before it exits (0: exec'd).
    errno: AtomicI32,
}

/// The child, between `clone` and `execve`. It shares the worker's memory (CLONE_VM), so
/// it only makes system calls: no allocation, no lock, no unwinding.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed to clone; it outlives the
    // child's use of it (see `ChildArgs`).
    let args = unsafe { &*(arg as *const ChildArgs) };
    let fail = || -> c_int {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        args.errno.store(errno.max(1), Ordering::Relaxed);
        // SAFETY: ends this child at once; no destructor or atexit handler runs.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on the child's own process state (its signal handlers
    // are its own copy: no CLONE_SIGHAND); every pointer is valid (ChildArgs).
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return fail();
        }
        // If the worker dies, so does the task: no orphan keeps running a task the
        // manager will give to someone else. (Linux ties the signal to the thread that
        // called clone: a runtime worker thread, which lives as long as the worker.)
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return fail();
        }
        if libc::getppid() != args.worker {
            libc::_exit(127);
        }
        // Every disposition back to the default (SIGPIPE is ignored in every Rust
        // program, and ignored signals survive execve), through the raw system call:
        // glibc's wrapper refuses its own internal signals.
        let default = KernelSigaction::default();
        for sig in 1..=MAX_SIGNAL {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &default as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        // dup2 clears close-on-exec on the new descriptors (every source is above 2).
        if libc::dup2(args.stdin, 0) < 0
            || libc::dup2(args.stdout, 1) < 0
            || libc::dup2(args.stderr, 2) < 0
        {
            return fail();
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

/// A close-on-exec pipe: (read end, write end).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// `fd` itself if above 2, else a close-on-exec duplicate that is (the worker's own
/// fds 0–2 could be closed, and the child's dup2 onto 0–2 must not clobber a source).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let dup = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl just created this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Starts `cmd` in its own process group, stdin `/dev/null`, stdout and stderr piped.
pub fn spawn(cmd: &TaskCommand) -> io::Result<TaskProcess> {
    let stdin = above_stdio(OwnedFd::from(
        std::fs::File::open("/dev/null")?, // std opens with O_CLOEXEC
    ))?;
    let (out_r, out_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    let (out_w, err_w) = (above_stdio(out_w)?, above_stdio(err_w)?);
    let mut argv: Vec<*const c_char> = cmd.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = cmd.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let args = ChildArgs {
        path: cmd.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cmd.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdin: stdin.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        // SAFETY: getpid has no preconditions.
        worker: unsafe { libc::getpid() },
        errno: AtomicI32::new(0),
    };
    let mut stack = Box::<[u8]>::new_uninit_slice(CHILD_STACK);
    // The stack grows down from its end, 16-byte aligned as the ABI wants.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: the sigsets are initialized by sigfillset/pthread_sigmask before use.
    // `clone` runs `child_main` on `stack` (used by no one else and alive until clone
    // returns, which with CLONE_VFORK is after the child exec'd or exited) with `args`;
    // with CLONE_PIDFD the kernel writes the pidfd into `pidfd`. Every signal is blocked
    // around clone so that no handler of the worker runs in the child on shared memory.
    let (pid, clone_error) = unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            &args as *const ChildArgs as *mut c_void,
            &mut pidfd as *mut c_int,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (pid, clone_error)
    };
    drop(stack);
    // The child has its copies (or is gone): the worker keeps only the read ends.
    drop((stdin, out_w, err_w));
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
    let mut process = TaskProcess {
        pid: pid as u32,
        pidfd: None,
        status: None,
        stdout: None,
        stderr: None,
    };
    // From here on, a failure drops `process`, which kills and reaps the child.
    // SAFETY: an OwnedFd's descriptor is valid and stays the same until it is dropped
    // (with the AsyncFd, or after `into_inner`).
    match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
        Ok(fd) => process.pidfd = Some(fd),
        Err(e) => {
            let (pidfd, e) = e.into_parts();
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
            return Err(e);
        }
    }
    process.stdout = Some(pipe::Receiver::from_owned_fd(out_r)?);
    process.stderr = Some(pipe::Receiver::from_owned_fd(err_r)?);
    Ok(process)
}

/// A started task process (the leader of its own process group), reaped by its pidfd.
pub struct TaskProcess {
    pid: u32,
    /// None once handed to the background reaper (drop).
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl TaskProcess {
    /// The pid, which is also the process group id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to end and reaps it (once; later calls return the same
    /// status).
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

impl Drop for TaskProcess {
    /// A process dropped before it was reaped (the worker is going away) is killed with
    /// its group and reaped by a thread, rather than left running or as a zombie.
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
    use tokio::io::AsyncReadExt;

    fn command(argv: &[&str]) -> io::Result<TaskCommand> {
        let argv: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
        TaskCommand::new(&argv, &[("SPAWN_SET", "yes")], &["HOME"], None)
    }

    async fn read_all(mut r: pipe::Receiver) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        s
    }

    #[tokio::test]
    async fn runs_in_its_own_group_with_defaults_pipes_and_environment() {
        // The task's blocked and ignored signals (/proc/PID/status): none, although the
        // worker ignores SIGPIPE (every Rust program does). The pgid from /proc/PID/stat.
        let cmd = command(&[
            "sh",
            "-c",
            "echo pgid $(cut -d' ' -f5 /proc/$$/stat) pid $$; echo env ${SPAWN_SET:-unset} ${HOME:-nohome}; \
             grep -E '^Sig(Blk|Ign)' /proc/$$/status; read x; echo stdin $?; echo err >&2; exit 4",
        ])
        .unwrap();
        let mut p = spawn(&cmd).unwrap();
        let out = tokio::spawn(read_all(p.stdout.take().unwrap()));
        let err = tokio::spawn(read_all(p.stderr.take().unwrap()));
        let status = p.wait().await.unwrap();
        assert_eq!(status.code(), Some(4));
        let out = out.await.unwrap();
        let mut words = out.split_whitespace();
        assert_eq!(words.next(), Some("pgid"));
        let (pgid, _, pid) = (words.next(), words.next(), words.next());
        assert_eq!(pgid, pid, "{out}");
        assert_eq!(pid, Some(p.id().to_string().as_str()), "{out}");
        assert!(out.contains("env yes nohome"), "{out}");
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
        assert!(out.contains("stdin 1"), "end of file on stdin: {out}");
        assert_eq!(err.await.unwrap(), "err\n");
        // Reaped once; the status is kept.
        assert_eq!(p.wait().await.unwrap().code(), Some(4));
    }

    #[tokio::test]
    async fn errors_before_exec_are_reported() {
        let e = command(&["/nonexistent/prog"]).map(|c| spawn(&c).map(|_| ()));
        let e = e.and_then(|r| r).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let e = command(&["no-such-program-anywhere"]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let argv = [OsStr::new("true")];
        let c = TaskCommand::new(&argv, &[], &[], Some(Path::new("/nonexistent/dir"))).unwrap();
        let e = spawn(&c).err().expect("chdir fails");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        assert!(command(&["sh", "a\0b"]).is_err(), "NUL byte");
    }

    #[tokio::test]
    async fn a_dropped_process_is_killed_with_its_group() {
        let mut p = spawn(&command(&["sh", "-c", "sleep 60 & echo $!; wait"]).unwrap()).unwrap();
        let mut out = p.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {
            line.push(b[0]);
        }
        let sleeper: i32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
        let pid = p.id() as i32;
        drop(p);
        for _ in 0..200 {
            let gone = |pid: i32| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map_or(true, |s| s.contains(") Z "))
            };
            if gone(pid) && gone(sleeper) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the task's group outlived its drop");
    }
}
