//! The lock client: hold a session, wait for the grant, run a command, release.

use std::process::ExitStatus;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{Reply, Request};
use crate::frame::{FrameReader, write_frame};

/// A granted lock; [`Holder::release`] gives it back (dropping it closes the session,
/// which also releases it).
pub struct Holder {
    pub ticket: u64,
    reader: FrameReader<OwnedReadHalf, Reply>,
    write: OwnedWriteHalf,
}

impl Holder {
    pub async fn release(mut self) -> anyhow::Result<()> {
        write_frame(&mut self.write, &Request::Release).await?;
        // Wait for the server to close, so the release is recorded before we return.
        let _ = self.reader.read().await;
        Ok(())
    }
}

/// Connects to `host:port` and waits (without limit: the queue may be long) for the lock.
/// `on_queued` is told the ticket and how many are ahead.
pub async fn acquire(
    host: &str,
    port: u16,
    name: &str,
    on_queued: impl FnOnce(u64, usize),
) -> anyhow::Result<Holder> {
    let stream: TcpStream = crate::net::connect_tcp(host, port).await?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::<_, Reply>::new(read);
    write_frame(
        &mut write,
        &Request::Acquire {
            name: name.to_owned(),
        },
    )
    .await?;
    let mut queued = Some(on_queued);
    loop {
        match reader.read().await.context("lock server")? {
            None => bail!("the lock server closed the connection before granting the lock"),
            Some(Reply::Queued { ticket, ahead }) => {
                if let Some(f) = queued.take() {
                    f(ticket, ahead);
                }
            }
            Some(Reply::Granted { ticket }) => {
                return Ok(Holder {
                    ticket,
                    reader,
                    write,
                });
            }
            Some(Reply::Refused { reason }) => bail!("the lock server refused: {reason}"),
        }
    }
}

/// Acquires the lock, runs `program args…` (no shell) while holding it, releases it, and
/// returns the program's exit status. The program is killed if this process dies (so it
/// can never run on without the lock).
pub async fn run_locked(
    host: &str,
    port: u16,
    name: &str,
    program: &str,
    args: &[String],
) -> anyhow::Result<ExitStatus> {
    let holder = acquire(host, port, name, |_, _| {}).await?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the lock holder died"));
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .await
        .with_context(|| format!("cannot run `{program}`"))?;
    holder.release().await?;
    Ok(status)
}
