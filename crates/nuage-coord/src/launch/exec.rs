//! `nuage launch -- PROGRAM ARGS…`: every launched process runs a program; the launcher
//! follows them and can stop them all.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Launched;
use super::proto::{ToLauncher, ToProcess};
use crate::frame::{FrameReader, write_frame};

/// How long a stopped program has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The agent's side: run the program, report its pid, then its end; on `stop` (or the
/// launcher going away) terminate it.
pub async fn run_program(
    index: u32,
    n: u32,
    program: &str,
    args: &[String],
    from_launcher: &mut FrameReader<OwnedReadHalf, ToProcess>,
    to_launcher: &mut OwnedWriteHalf,
) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("NUAGE_LAUNCH_INDEX", index.to_string())
        .env("NUAGE_LAUNCH_SIZE", n.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run `{program}`"))?;
    let pid = child.id().context("the program vanished at once")?;
    tracing::info!("process {index}: `{program}` runs as pid {pid}");
    write_frame(to_launcher, &ToLauncher::Running { pid }).await?;
    let (status, stopped) = tokio::select! {
        status = child.wait() => (status?, false),
        _ = from_launcher.read() => {
            // `stop`, anything else, or the launcher is gone: end the program.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(s) => s?,
                Err(_) => {
                    child.kill().await?;
                    child.wait().await?
                }
            };
            (status, true)
        }
    };
    tracing::info!("process {index}: `{program}` ended: {status}");
    write_frame(
        to_launcher,
        &ToLauncher::Exited {
            code: status.code(),
            signal: status.signal(),
            stopped,
        },
    )
    .await?;
    Ok(())
}

/// One program's fate, as the launcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stopped: bool,
}

impl Fate {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal, self.stopped) {
            (_, _, true) => write!(f, "stopped"),
            (Some(c), _, _) => write!(f, "exit {c}"),
            (None, Some(s), _) => write!(f, "killed by signal {s}"),
            (None, None, _) => write!(f, "ended"),
        }
    }
}

/// The launcher's side: start the program everywhere, give the pids to `on_running` once
/// all have started, and wait until every program ends, or `stop` fires (Ctrl-C, a time limit): then stop
/// them all. Returns each process's fate, in launch order.
pub async fn run_everywhere(
    launched: &mut Launched,
    program: &str,
    args: &[String],
    on_running: impl FnOnce(&[u32]),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Vec<Fate>> {
    let n = launched.members.len();
    let result = async {
        for i in 0..n as u32 {
            let order = ToProcess::Exec {
                n: n as u32,
                program: program.to_owned(),
                args: args.to_vec(),
            };
            launched.send(i, &order).await?;
        }
        let mut pids = vec![0u32; n];
        let mut running = 0;
        let mut on_running = Some(on_running);
        let mut fates: Vec<Option<Fate>> = vec![None; n];
        let mut ended = 0;
        tokio::pin!(stop);
        let mut stopping = false;
        while ended < n {
            // Every program must start within REPORT_TIMEOUT; then there is no time limit
            // of our own: programs run as long as they run, unless `stop` fires.
            let limit = if running < n {
                super::REPORT_TIMEOUT
            } else {
                Duration::from_secs(24 * 3600)
            };
            let heard = tokio::select! {
                h = launched.hear_raw(limit) => h?,
                () = &mut stop, if !stopping => {
                    stopping = true;
                    launched.stop_all().await;
                    continue;
                }
            };
            match heard {
                (i, Some(ToLauncher::Running { pid })) if pids[i as usize] == 0 => {
                    pids[i as usize] = pid;
                    running += 1;
                    if running == n {
                        if let Some(f) = on_running.take() {
                            f(&pids);
                        }
                    }
                }
                // A process whose program ended may exit once told to stop.
                (i, None) if fates[i as usize].is_some() => {}
                (i, None) => {
                    let m = &launched.members[i as usize];
                    bail!(
                        "process {i} on {} (line {}) died while its program ran; see {}",
                        m.host,
                        m.line,
                        m.log.display()
                    );
                }
                (i, Some(ToLauncher::Failed { error })) => bail!("process {i} failed: {error}"),
                (
                    i,
                    Some(ToLauncher::Exited {
                        code,
                        signal,
                        stopped,
                    }),
                ) => {
                    fates[i as usize] = Some(Fate {
                        pid: pids[i as usize],
                        code,
                        signal,
                        stopped,
                    });
                    ended += 1;
                }
                (i, Some(other)) => bail!("process {i} said {other:?} while its program ran"),
            }
        }
        Ok(fates.into_iter().map(Option::unwrap).collect())
    }
    .await;
    launched.stop_all().await;
    result
}
