//! Starting a task's process without copying the worker, through
//! [`nuage_core::launch`] (`clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, then only system
//! calls in the child): its own process group, a death signal (SIGKILL when the worker
//! dies), every signal disposition and the mask back to the defaults, `/dev/null` and the
//! two capture pipes on fds 0–2, the working directory, `execve`; reaped by pidfd.
//!
//! Why not std's `Command` with a `pre_exec` hook (what this replaced): any hook makes
//! std `fork` instead of using `posix_spawn`, so every task paid a copy of the worker's
//! page tables and the worker then took a copy-on-write fault on each page it wrote
//! (about 100 page faults per task; docs/jobs.md, "Benchmark"). Here the child borrows
//! the worker's memory until it execs and the worker's thread waits meanwhile, as
//! glibc's `posix_spawn` does, but with the death signal that `posix_spawn` cannot set.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nuage_core::launch::{self, Dispositions, Launched, Options, Prepared};
use tokio::net::unix::pipe;

/// A task's command line and environment, ready for `execve`.
#[derive(Debug)]
pub struct TaskCommand {
    /// The program as found (a name without `/` is looked up in `PATH`), its arguments
    /// and environment.
    program: Prepared,
    cwd: Option<CString>,
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
            env.push([key, b"=", v.as_bytes()].concat());
        }
        for (k, v) in set {
            env.push(format!("{k}={v}").into_bytes());
        }
        let no_nul = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "NUL byte in the command, its environment or its directory",
            )
        };
        Ok(TaskCommand {
            program: Prepared::new(
                path.as_os_str().as_bytes(),
                argv.iter().map(|a| a.as_bytes()),
                env,
            )?,
            cwd: cwd
                .map(|d| CString::new(d.as_os_str().as_bytes()).map_err(|_| no_nul()))
                .transpose()?,
        })
    }
}

/// Starts `cmd` in its own process group, stdin `/dev/null`, stdout and stderr piped.
pub fn spawn(cmd: &TaskCommand) -> io::Result<TaskProcess> {
    let stdin = std::fs::File::open("/dev/null")?; // std opens with O_CLOEXEC
    let (out_r, out_w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let stdio = launch::Stdio {
        stdin: stdin.as_fd(),
        stdout: out_w.as_fd(),
        stderr: err_w.as_fd(),
    };
    let options = Options {
        cwd: cmd.cwd.as_deref(),
        // A task must not outlive its worker: the manager would give it to another one.
        // (The signal follows the thread that launches: a runtime worker thread, which
        // lives as long as the worker.)
        die_with_parent: true,
        ..Options::default()
    };
    // Every disposition, not a list read once: the worker's handlers may change as it
    // runs, and a task's start is not as hot as a function's.
    let launched = launch::launch(&cmd.program, stdio, &Dispositions::every(), &options)?;
    // The child has its copies: the worker keeps only the read ends. From here on, a
    // failure drops `launched`, which kills and reaps the task.
    drop((stdin, out_w, err_w));
    Ok(TaskProcess {
        stdout: Some(pipe::Receiver::from_owned_fd(out_r)?),
        stderr: Some(pipe::Receiver::from_owned_fd(err_r)?),
        process: launched,
    })
}

/// A started task process (the leader of its own process group), reaped by its pidfd;
/// dropped before it ended, it is killed with its group.
pub struct TaskProcess {
    process: Launched,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl TaskProcess {
    /// The pid, which is also the process group id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Waits for the process to end and reaps it (once; later calls return the same
    /// status).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.process.wait().await
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
