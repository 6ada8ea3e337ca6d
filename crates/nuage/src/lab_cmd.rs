//! `nuage lab …`: several machines on this host, with faults on demand. Synchronous on
//! purpose: `exec` replaces this process after entering the machine's namespaces.

use std::os::unix::process::CommandExt;

use anyhow::Context;
use clap::{Args, Subcommand};
use nuage_lab::{Lab, plan};

use crate::table::Table;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Lab to act on
    #[arg(long, short = 'n', env = "NUAGE_LAB", default_value = plan::DEFAULT_LAB, global = true)]
    pub name: String,
    #[command(subcommand)]
    pub cmd: LabCmd,
}

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Create machines n1…nN (network + UTS namespaces on a bridge, 10.213.K.0/24)
    Up {
        /// Number of machines (1 to 253)
        machines: usize,
        /// Also run `nuage up` on every machine, each knowing the others as peers
        #[arg(long)]
        start: bool,
    },
    /// List labs, machines, addresses and running processes
    Ls,
    /// Run a command inside a machine (its network and hostname); exit status passes through
    Exec {
        machine: String,
        /// The command and its arguments (after `--`)
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Remove the lab: processes, namespaces, interfaces, nftables table, route, files
    Down {
        /// Remove every lab
        #[arg(long)]
        all: bool,
    },
    /// Cut the lab into sides that cannot talk to each other, e.g. `partition n1,n2 n3`
    Partition {
        /// Two or more sides, each a comma-separated list of machines
        #[arg(required = true, num_args = 2.., value_name = "SIDE")]
        sides: Vec<String>,
    },
    /// End any partition
    Heal,
    /// SIGKILL every process running in a machine (a crash)
    Kill { machine: String },
    /// SIGSTOP every process running in a machine (a hang)
    Pause { machine: String },
    /// SIGCONT every process of a paused machine
    Resume { machine: String },
    /// Kill every process of a machine, then start its node again
    Restart { machine: String },
    /// Start the node of the given machines (all if none)
    Start { machines: Vec<String> },
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    let name = args.name;
    match args.cmd {
        LabCmd::Up { machines, start } => up(&name, machines, start),
        LabCmd::Ls => ls(),
        LabCmd::Exec { machine, command } => exec(&name, &machine, &command),
        LabCmd::Down { all } => down(&name, all),
        LabCmd::Partition { sides } => {
            let mut lab = Lab::open(&name)?;
            let sides: Vec<Vec<&str>> = sides.iter().map(|s| s.split(',').collect()).collect();
            lab.partition(&sides)?;
            println!(
                "lab {name}: partitioned {}",
                describe_sides(lab.partition_sides().unwrap_or_default())
            );
            Ok(())
        }
        LabCmd::Heal => {
            Lab::open(&name)?.heal()?;
            println!("lab {name}: healed; every machine reaches every other");
            Ok(())
        }
        LabCmd::Kill { machine } => {
            let n = Lab::open(&name)?.kill(&machine)?;
            println!("{machine}: killed {}", processes(n));
            Ok(())
        }
        LabCmd::Pause { machine } => {
            let n = Lab::open(&name)?.pause(&machine)?;
            println!("{machine}: paused {}", processes(n));
            Ok(())
        }
        LabCmd::Resume { machine } => {
            let n = Lab::open(&name)?.resume(&machine)?;
            println!("{machine}: resumed {}", processes(n));
            Ok(())
        }
        LabCmd::Restart { machine } => {
            let lab = Lab::open(&name)?;
            lab.restart(&machine, &nuage_binary()?)?;
            println!(
                "{machine}: node restarted at {}",
                lab.machine(&machine)?.api_url()
            );
            Ok(())
        }
        LabCmd::Start { machines } => {
            let lab = Lab::open(&name)?;
            let names: Vec<String> = if machines.is_empty() {
                lab.machines().iter().map(|m| m.name.clone()).collect()
            } else {
                machines
            };
            let bin = nuage_binary()?;
            for m in &names {
                lab.start_node(m, &bin)?;
            }
            for m in &names {
                lab.wait_node(m, nuage_lab::NODE_READY_TIMEOUT)?;
                println!("{m}: node up at {}", lab.machine(m)?.api_url());
            }
            Ok(())
        }
    }
}

fn nuage_binary() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the nuage binary to run on the machines")
}

fn up(name: &str, machines: usize, start: bool) -> anyhow::Result<()> {
    let lab = Lab::create(name, machines)?;
    println!(
        "lab {name}: {machines} machines on {} (bridge {}, host {})",
        lab.subnet(),
        lab.bridge(),
        lab.host_addr()
    );
    if start {
        let result = lab.start_nodes(&nuage_binary()?);
        let mut table = Table::new(&["MACHINE", "ADDRESS", "NODE API"]);
        for m in lab.machines() {
            table.row(vec![m.name.clone(), m.addr.to_string(), m.api_url()]);
        }
        print!("{}", table.render());
        lab.keep();
        return result.with_context(|| format!("the lab stands; see `nuage lab ls --name {name}`, remove it with `nuage lab down --name {name}`"));
    }
    let mut table = Table::new(&["MACHINE", "ADDRESS"]);
    for m in lab.machines() {
        table.row(vec![m.name.clone(), m.addr.to_string()]);
    }
    print!("{}", table.render());
    lab.keep();
    Ok(())
}

fn ls() -> anyhow::Result<()> {
    let labs = Lab::list()?;
    if labs.is_empty() {
        println!("no labs; create one with `nuage lab up N`");
        return Ok(());
    }
    let mut table = Table::new(&["LAB", "SUBNET", "MACHINE", "ADDRESS", "PROCESSES"]);
    for lab in &labs {
        for (i, m) in lab.machines().iter().enumerate() {
            let procs = lab.processes(&m.name).unwrap_or_default();
            let shown: Vec<String> = procs
                .iter()
                .map(|p| {
                    format!(
                        "{}[{}]{}",
                        p.command,
                        p.pid,
                        if p.stopped { " (paused)" } else { "" }
                    )
                })
                .collect();
            let first = i == 0;
            table.row(vec![
                if first {
                    lab.name().to_owned()
                } else {
                    String::new()
                },
                if first { lab.subnet() } else { String::new() },
                m.name.clone(),
                m.addr.to_string(),
                if shown.is_empty() {
                    "-".into()
                } else {
                    shown.join(" ")
                },
            ]);
        }
    }
    print!("{}", table.render());
    for lab in &labs {
        if let Some(sides) = lab.partition_sides() {
            println!(
                "lab {} is partitioned: {}",
                lab.name(),
                describe_sides(sides)
            );
        }
    }
    Ok(())
}

fn exec(name: &str, machine: &str, command: &[String]) -> anyhow::Result<()> {
    let lab = Lab::open(name)?;
    let (program, args) = command.split_first().expect("clap requires a command");
    let mut cmd = lab.command(machine, program)?;
    cmd.args(args);
    // Only returns on failure; on success the command replaces this process, so its
    // stdin, stdout, stderr and exit status are the caller's.
    let err = cmd.exec();
    Err(anyhow::anyhow!(
        "cannot run `{program}` in {machine}: {err}"
    ))
}

fn down(name: &str, all: bool) -> anyhow::Result<()> {
    let names: Vec<String> = if all {
        Lab::list()?.iter().map(|l| l.name().to_owned()).collect()
    } else {
        vec![name.to_owned()]
    };
    for n in names {
        if Lab::destroy(&n)? {
            println!("lab {n}: removed");
        } else {
            println!("lab {n}: nothing to remove");
        }
    }
    Ok(())
}

fn processes(n: usize) -> String {
    if n == 1 {
        "1 process".into()
    } else {
        format!("{n} processes")
    }
}

fn describe_sides(sides: &[Vec<String>]) -> String {
    sides
        .iter()
        .map(|s| format!("{{{}}}", s.join(",")))
        .collect::<Vec<_>>()
        .join(" | ")
}
