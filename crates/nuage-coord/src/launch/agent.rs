//! The launched side: report in, then obey the launcher until it says stop or goes away.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use super::proto::{ToLauncher, ToProcess};
use crate::frame::{FrameReader, write_frame};
use crate::ring;

/// How long a process waits for its orders after reporting in.
pub const ORDERS_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs process `index` for the launcher at `launcher`; returns when told to stop or when
/// the launcher is gone. Errors are also sent to the launcher.
pub async fn run(launcher: SocketAddr, index: u32) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(
        crate::net::CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(launcher),
    )
    .await
    .with_context(|| format!("launcher {launcher} does not answer"))?
    .with_context(|| format!("cannot reach the launcher at {launcher}"))?;
    let _ = stream.set_nodelay(true);
    // Ring peers reach this process on the address it reaches the launcher from.
    let own_ip = stream.local_addr()?.ip();
    let listener = TcpListener::bind(SocketAddr::new(own_ip, 0))
        .await
        .context("cannot open this process's ring port")?;
    let own = listener.local_addr()?;
    let (read, mut write) = stream.into_split();
    let mut from_launcher = FrameReader::<_, ToProcess>::new(read);
    write_frame(
        &mut write,
        &ToLauncher::Hello {
            index,
            pid: std::process::id(),
            host: crate::net::hostname().unwrap_or_else(|_| "?".into()),
            port: own.port(),
        },
    )
    .await?;
    tracing::info!("process {index} reported in to {launcher}; ring port {own}");
    let order = tokio::time::timeout(ORDERS_TIMEOUT, from_launcher.read())
        .await
        .context("no orders from the launcher")??;
    let outcome = match order {
        None | Some(ToProcess::Stop) => return Ok(()),
        Some(ToProcess::Go) => bail!("`go` before any task"),
        Some(ToProcess::Detect {
            members,
            period_ms,
            threshold,
        }) => {
            crate::detector::run_member(
                index,
                members,
                std::time::Duration::from_millis(period_ms),
                threshold,
                listener,
                &mut from_launcher,
                &mut write,
            )
            .await
        }
        Some(ToProcess::Snapshots {
            members,
            mode,
            max_delay_us,
            dir,
        }) => {
            let setup = crate::snapshot::run::Setup {
                index,
                members,
                mode,
                max_delay: std::time::Duration::from_micros(max_delay_us),
                dir,
            };
            crate::snapshot::run_member(setup, listener, &mut from_launcher, &mut write).await
        }
        Some(ToProcess::SnapshotStart { .. }) => bail!("snapshot start before the setup"),
        Some(ToProcess::Exec { n, program, args }) => {
            drop(listener);
            super::exec::run_program(index, n, &program, &args, &mut from_launcher, &mut write)
                .await
        }
        Some(ToProcess::Ring {
            n,
            bootstrap,
            contact,
            algorithm,
        }) => {
            let task = ring::Task {
                index,
                n,
                bootstrap,
                contact,
                algorithm,
                own,
            };
            ring::run_member(task, listener, &mut from_launcher, &mut write).await
        }
    };
    if let Err(e) = &outcome {
        tracing::error!("process {index}: {e:#}");
        let _ = write_frame(
            &mut write,
            &ToLauncher::Failed {
                error: format!("{e:#}"),
            },
        )
        .await;
        return outcome;
    }
    // Done: wait for stop (or the launcher going away), then exit.
    let _ = from_launcher.read().await;
    Ok(())
}
