//! A spawn-mode process's stderr pipe, read only once there is something to read.
//!
//! Most processes write nothing on stderr, yet handing each pipe to tokio (a `fcntl`, two
//! `epoll_ctl`, a first `read` that finds it empty, the reader's buffer and its future)
//! cost about 20 µs of nuage's CPU per connection, a fifth of nuage's share (measured,
//! docs/functions.md). So the pipe is only looked at with a `poll` of timeout 0: at each
//! watch tick of the connection, and when the process ends. From the first look that
//! finds bytes (or the process gone while a descendant still holds stderr open), it is
//! read by [`collect_stderr`] to its end.
//!
//! The price: a process that fills the pipe (64 KiB) before the first tick waits for it
//! (at most one watch period, 500 ms), and its first lines reach `nuage fn logs` up to
//! that much later. The lines, their order and their pid tags are as before.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;

use crate::logs::{LogRing, collect_stderr};

type Reading = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The read end of one process's stderr pipe.
pub enum ProcessStderr {
    /// Not read yet: it was empty and still open at the last look.
    Unread {
        pipe: OwnedFd,
        ring: Arc<LogRing>,
        pid: u32,
    },
    /// Read by the connection's task until its end of file.
    Reading(Reading),
    /// Read to its end, or given up on an error (logged).
    Done,
}

impl ProcessStderr {
    /// `pipe` is the blocking read end (the process holds the write end); its lines go to
    /// `ring`, tagged with `pid`.
    pub fn new(pipe: OwnedFd, ring: Arc<LogRing>, pid: u32) -> ProcessStderr {
        ProcessStderr::Unread { pipe, ring, pid }
    }

    /// Starts reading if the pipe has bytes or no writer left (a connection's watch tick).
    pub fn look(&mut self) {
        let ProcessStderr::Unread { pipe, pid, .. } = self else {
            return;
        };
        match poll_now(pipe) {
            Ok(0) => {}
            Ok(revents) if revents & libc::POLLIN != 0 => {
                if let ProcessStderr::Unread { pipe, ring, pid } =
                    std::mem::replace(self, ProcessStderr::Done)
                    && let Some(reading) = start_reading(pipe, ring, pid)
                {
                    *self = ProcessStderr::Reading(reading);
                }
            }
            // Closed by every writer, empty: nothing to read, ever.
            Ok(_) => *self = ProcessStderr::Done,
            Err(e) => {
                tracing::warn!(pid = *pid, "cannot look at a process's stderr: {e}");
                *self = ProcessStderr::Done;
            }
        }
    }

    /// While it is being read: the reading, to await until the end of file.
    pub fn reading(&mut self) -> Option<&mut Reading> {
        match self {
            ProcessStderr::Reading(reading) => Some(reading),
            _ => None,
        }
    }

    /// The process ended: what it wrote is read now, and what a descendant still holding
    /// stderr writes later is read by a task of its own.
    pub fn finish(self) {
        let mut rest = match self {
            ProcessStderr::Unread { pipe, ring, pid } => match poll_now(&pipe) {
                // Every writer is gone: what is in the pipe is all there will be, and
                // reading it cannot block. Usually it is empty, and this `poll` and the
                // `close` are all the pipe cost.
                Ok(revents) if revents & libc::POLLHUP != 0 => {
                    if revents & libc::POLLIN != 0 {
                        read_to_end_now(pipe, &ring, pid);
                    }
                    return;
                }
                Ok(_) => match start_reading(pipe, ring, pid) {
                    Some(reading) => reading,
                    None => return,
                },
                Err(e) => {
                    tracing::warn!(pid, "cannot look at a process's stderr: {e}");
                    return;
                }
            },
            ProcessStderr::Reading(reading) => reading,
            ProcessStderr::Done => return,
        };
        // Its end of file usually came with the exit; if not (a descendant still holds
        // stderr, or the event is late), the rest is read by a task of its own.
        if ready_now(&mut rest).is_none() {
            drop(tokio::spawn(rest));
        }
    }
}

/// The reading of a pipe by tokio, or `None` (logged) if the pipe cannot be watched.
fn start_reading(pipe: OwnedFd, ring: Arc<LogRing>, pid: u32) -> Option<Reading> {
    match async_reader(pipe) {
        Ok(reader) => Some(Box::pin(collect_stderr(ring, pid, reader))),
        Err(e) => {
            tracing::warn!(pid, "cannot read a process's stderr: {e}");
            None
        }
    }
}

/// Reads a pipe no process writes to any more, into `ring`. The pipe holds at most its
/// buffer (64 KiB unless a writer enlarged it, at most `/proc/sys/fs/pipe-max-size`).
fn read_to_end_now(pipe: OwnedFd, ring: &Arc<LogRing>, pid: u32) {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Err(e) = std::fs::File::from(pipe).read_to_end(&mut bytes) {
        tracing::warn!(pid, "cannot read a process's stderr: {e}");
    }
    let mut lines = Box::pin(collect_stderr(ring.clone(), pid, bytes.as_slice()));
    assert!(
        ready_now(&mut lines).is_some(),
        "lines in memory are collected at once"
    );
}

/// `poll` with timeout 0 for input: the events (0 when the pipe is empty and open).
fn poll_now(fd: &impl AsFd) -> std::io::Result<libc::c_short> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor this process owns; timeout 0.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    match ready {
        0 => Ok(0),
        1 => Ok(pollfd.revents),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The read end for tokio (the process's end stays blocking: `O_NONBLOCK` belongs to each
/// end's open file, not to the pipe).
fn async_reader(fd: OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)
}

/// Polls `future` once: its output if it is ready now.
fn ready_now<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match Pin::new(future).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (r, std::fs::File::from(w))
    }

    fn texts(ring: &LogRing) -> Vec<String> {
        ring.after(0).0.into_iter().map(|l| l.text).collect()
    }

    #[tokio::test]
    async fn an_empty_open_pipe_is_not_read_and_a_written_one_is() {
        let ring = Arc::new(LogRing::default());
        let (r, mut w) = pipe();
        let mut stderr = ProcessStderr::new(r, ring.clone(), 7);
        stderr.look();
        assert!(stderr.reading().is_none(), "empty and open: left alone");
        w.write_all(b"one\ntwo\n").unwrap();
        stderr.look();
        let reading = stderr.reading().expect("bytes: read from now on");
        drop(w);
        reading.await;
        assert_eq!(texts(&ring), ["one", "two"]);
    }

    #[tokio::test]
    async fn at_the_end_what_was_written_is_kept_and_a_descendant_is_read_later() {
        let ring = Arc::new(LogRing::default());
        // Written, then closed, never looked at before the end.
        let (r, mut w) = pipe();
        w.write_all(b"last words").unwrap();
        drop(w);
        ProcessStderr::new(r, ring.clone(), 1).finish();
        assert_eq!(texts(&ring), ["last words"]);
        // Closed without a byte: nothing to do.
        let (r, w) = pipe();
        drop(w);
        ProcessStderr::new(r, ring.clone(), 2).finish();
        // Still held open (a descendant): read by a task of its own.
        let (r, mut w) = pipe();
        ProcessStderr::new(r, ring.clone(), 3).finish();
        w.write_all(b"late\n").unwrap();
        drop(w);
        for _ in 0..200 {
            if texts(&ring).len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines = ring.after(0).0;
        assert_eq!(texts(&ring), ["last words", "late"]);
        assert_eq!((lines[0].pid, lines[1].pid), (1, 3));
    }
}
