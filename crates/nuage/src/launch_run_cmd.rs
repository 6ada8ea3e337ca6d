//! `nuage launch --hosts FILE [--via …] -- PROGRAM ARGS…`: one program per hosts-file line,
//! followed until all end; Ctrl-C or `--timeout` stops them all
//! (library: nuage_coord::launch::exec).

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use nuage_coord::launch::exec;

use crate::launch_cmd::{self, LaunchArgs};

#[derive(Args, Debug)]
pub struct LaunchRunArgs {
    #[command(flatten)]
    launch: LaunchArgs,
    /// Stop every program after this many seconds
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// The program and its arguments (run directly on each host, not through a shell)
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

pub async fn run(args: LaunchRunArgs) -> anyhow::Result<()> {
    let (program, rest) = args.command.split_first().expect("required by clap");
    let signal = crate::net_cmd::stop_on_signal()?;
    let mut launched = launch_cmd::launch(&args.launch).await?;
    let limit = args.timeout;
    let stop = async move {
        match limit {
            Some(s) => {
                tokio::select! {
                    _ = signal.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(s)) => {}
                }
            }
            None => signal.cancelled().await,
        }
    };
    let members = launched.members.clone();
    let fates = exec::run_everywhere(
        &mut launched,
        program,
        rest,
        |pids| {
            let line: Vec<String> = members
                .iter()
                .zip(pids)
                .map(|(m, p)| format!("{}:{}[{p}]", m.index, m.host))
                .collect();
            println!("running `{program}`: {}", line.join(" "));
        },
        stop,
    )
    .await?;
    let mut t = crate::table::Table::new(&["PROCESS", "HOST", "PID", "RESULT", "LOG"]);
    for (m, f) in members.iter().zip(&fates) {
        t.row(vec![
            m.index.to_string(),
            m.host.clone(),
            f.pid.to_string(),
            f.to_string(),
            m.log.display().to_string(),
        ]);
    }
    print!("{}", t.render());
    let stopped = fates.iter().filter(|f| f.stopped).count();
    let failed = fates.iter().filter(|f| !f.stopped && !f.success()).count();
    match (failed, stopped) {
        (0, 0) => Ok(()),
        (0, s) => bail!(
            "{s} of {} programs were stopped before they ended",
            fates.len()
        ),
        (f, _) => bail!("{f} of {} programs did not exit with status 0", fates.len()),
    }
}
