//! `nuage trace …`: read the traces that `--trace DIR` recorded and find where the
//! time goes.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use nuage_jobs::trace::{analyze, read};

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(subcommand)]
    pub cmd: TraceCmd,
}

#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// Merge the traces under DIR… (every process and machine) and print, per request and
    /// aggregated (p50, p99), the own time of each component, the bottleneck and the
    /// critical path
    Analyze {
        /// Trace directories (as given to --trace) or files
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Requests shown one by one (the slowest)
        #[arg(long, default_value_t = analyze::DEFAULT_SHOWN, value_name = "N")]
        requests: usize,
        /// Also write every span into one Trace Event JSON file (for Perfetto UI)
        #[arg(long, value_name = "FILE")]
        merge_json: Option<PathBuf>,
    },
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    match args.cmd {
        TraceCmd::Analyze {
            dirs,
            requests,
            merge_json,
        } => {
            let set = read::read_dirs(&dirs)?;
            for w in &set.warnings {
                eprintln!("nuage: warning: {w}");
            }
            let processes: Vec<String> = set
                .processes
                .iter()
                .map(|p| format!("{}@{}[{}]", p.role, p.hostname, p.pid))
                .collect();
            println!(
                "{} span(s) from {} process(es): {}\n",
                set.spans.len(),
                processes.len(),
                processes.join(" ")
            );
            print!(
                "{}",
                analyze::render(&analyze::analyze(&set.spans), requests)
            );
            if let Some(out) = merge_json {
                read::write_merged_json(&set, &out)?;
                eprintln!(
                    "nuage: wrote {} (open it in https://ui.perfetto.dev)",
                    out.display()
                );
            }
            Ok(())
        }
    }
}
