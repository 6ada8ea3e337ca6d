//! `nuage fn …`: deploy functions and talk to them through the node API (see
//! docs/functions.md).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::BodyExt;
use hyper::Method;
use nuage_core::api::ErrorBody;
use nuage_core::client::ApiClient;
use nuage_fn::spec::{Balance, DeployRequest, Mode};
use nuage_fn::types::{
    FunctionList, FunctionView, LogsReply, MachineStatus, Outcome, ScaleRequest, format_cursors,
};

use crate::node_cmd::ApiArg;
use crate::table::Table;

/// Requests `nuage fn invoke` keeps in flight at once.
const INVOKE_PARALLEL: usize = 16;
/// How often `nuage fn logs --follow` asks for new lines.
const FOLLOW_PERIOD: Duration = Duration::from_secs(1);
/// How long a deploy, scale or removal may take (a removal waits for the drain).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Subcommand, Debug)]
pub enum FnCmd {
    /// Deploy a function on the cluster (or the --on machines): it listens on --port
    Deploy(DeployArgs),
    /// List the functions: port, mode, machines, instances, requests, state
    Ls,
    /// Show one function: its command, limits and state on each machine
    Show { name: String },
    /// Remove a function: its ports close, requests in flight finish, processes stop
    Rm { name: String },
    /// Change the warm instances of a pool-mode function
    Scale {
        name: String,
        /// Instances kept warm even when idle
        #[arg(long)]
        min: Option<u32>,
        /// Most instances at once
        #[arg(long)]
        max: Option<u32>,
    },
    /// Send requests to a function (HTTP gateway): one per argument, else per stdin line
    Invoke {
        name: String,
        /// The request lines (read from stdin when none is given)
        text: Vec<String>,
    },
    /// Print what the function's processes wrote on stderr, tagged by machine and pid
    Logs {
        name: String,
        /// Keep printing new lines until interrupted
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// A fresh process per connection, the socket as its stdin and stdout (inetd)
    Spawn,
    /// Warm long-lived instances; each request line goes to an idle one
    Pool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BalanceArg {
    RoundRobin,
    LeastConns,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Function name (lowercase letters, digits, '-', '_'); also the command if none is given
    pub name: String,
    /// TCP port the function listens on, on every machine that runs it
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum, default_value = "spawn")]
    pub mode: ModeArg,
    /// Pool mode: instances kept warm even when idle [default: 0]
    #[arg(long)]
    pub min: Option<u32>,
    /// Pool mode: most instances at once [default: 4]
    #[arg(long)]
    pub max: Option<u32>,
    /// Pool mode: seconds an instance above --min may stay idle [default: 60]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Seconds a request may take before `ERR timeout after Ns` [default: 30]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Connections at once per machine; more get a one-line refusal [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_conns: Option<u32>,
    /// Connections at once from one client address [default: --max-conns]
    #[arg(long, value_name = "N")]
    pub per_source: Option<u32>,
    /// Machines that run it (comma-separated) [default: every machine]
    #[arg(long, value_delimiter = ',', value_name = "MACHINES")]
    pub on: Vec<String>,
    /// How each machine places new connections over the machines running it
    #[arg(long, value_enum, default_value = "round-robin")]
    pub balance: BalanceArg,
    /// Environment variable for the function's processes (repeatable); a bare KEY passes
    /// this command's own value of KEY
    #[arg(long = "env", short = 'e', value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// The command and its arguments (default: the function's name, looked up on each machine)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn run(cmd: FnCmd, api: ApiArg) -> anyhow::Result<()> {
    let client = api.client()?;
    match cmd {
        FnCmd::Deploy(args) => deploy(&client, args).await,
        FnCmd::Ls => {
            let list: FunctionList = client.get("/v1/functions").await?;
            print!("{}", render_list(&list));
            Ok(())
        }
        FnCmd::Show { name } => {
            let view: FunctionView = client.get(&format!("/v1/functions/{name}")).await?;
            print!("{}", render_show(&view));
            Ok(())
        }
        FnCmd::Rm { name } => {
            let outcome: Outcome = client
                .with_timeout(CHANGE_TIMEOUT)
                .delete(&format!("/v1/functions/{name}"))
                .await?;
            report("removed", &outcome)
        }
        FnCmd::Scale { name, min, max } => {
            let outcome: Outcome = client
                .with_timeout(CHANGE_TIMEOUT)
                .post(
                    &format!("/v1/functions/{name}/scale"),
                    &ScaleRequest { min, max },
                )
                .await?;
            report("scaled", &outcome)
        }
        FnCmd::Invoke { name, text } => invoke(&client, &name, text).await,
        FnCmd::Logs { name, follow } => logs(&client, &name, follow).await,
    }
}

async fn deploy(client: &ApiClient, args: DeployArgs) -> anyhow::Result<()> {
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            // `-e LANG`: this command's value, like `docker run -e LANG`.
            None => {
                let v = std::env::var(kv).with_context(|| {
                    format!("--env {kv}: {kv} is not set here; write KEY=VALUE")
                })?;
                (kv.clone(), v)
            }
        };
        env.insert(k, v);
    }
    let mut command = args.command;
    // A relative path is the caller's: make it absolute (the node may run elsewhere).
    if let Some(program) = command.first_mut() {
        if program.contains('/') && !program.starts_with('/') {
            let abs = std::path::absolute(Path::new(program))
                .with_context(|| format!("cannot resolve {program}"))?;
            *program = abs.display().to_string();
        }
    }
    let req = DeployRequest {
        name: args.name,
        port: args.port,
        mode: match args.mode {
            ModeArg::Spawn => Mode::Spawn,
            ModeArg::Pool => Mode::Pool,
        },
        command,
        env,
        on: args.on,
        balance: match args.balance {
            BalanceArg::RoundRobin => Balance::RoundRobin,
            BalanceArg::LeastConns => Balance::LeastConns,
        },
        min: args.min,
        max: args.max,
        idle_timeout: args.idle_timeout,
        timeout: args.timeout,
        max_conns: args.max_conns,
        per_source: args.per_source,
    };
    // Refuse what the node would refuse, without a round trip.
    req.to_spec().map_err(anyhow::Error::msg)?;
    let outcome: Outcome = client
        .clone()
        .with_timeout(CHANGE_TIMEOUT)
        .post("/v1/functions", &req)
        .await?;
    report("deployed", &outcome)
}

/// Prints what each machine made of a change; an error if one failed.
fn report(what: &str, outcome: &Outcome) -> anyhow::Result<()> {
    println!("{what} {} (version {})", outcome.name, outcome.version);
    for m in &outcome.machines {
        println!(
            "  {:<10} {} {}",
            m.machine,
            if m.ok { "ok " } else { "ERR" },
            m.message
        );
    }
    let failed: Vec<&str> = outcome
        .machines
        .iter()
        .filter(|m| !m.ok)
        .map(|m| m.machine.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("{} not {what} on {}", outcome.name, failed.join(", "));
    }
    Ok(())
}

fn render_list(list: &FunctionList) -> String {
    if list.functions.is_empty() {
        return "no functions (deploy one with `nuage fn deploy NAME --port PORT -- CMD`)\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "PORT",
        "MODE",
        "MACHINES",
        "INSTANCES",
        "IN-FLIGHT",
        "SERVED",
        "ERRORS",
        "STATE",
    ]);
    for f in &list.functions {
        let sum = |get: fn(&nuage_fn::types::LocalStatus) -> u64| -> u64 {
            f.machines
                .iter()
                .filter_map(|m| m.status.as_ref())
                .map(get)
                .sum()
        };
        let instances = if f.machines.len() > 1 {
            f.machines
                .iter()
                .map(|m| {
                    format!(
                        "{}:{}",
                        m.machine,
                        m.status.as_ref().map_or(0, |s| s.instances)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            sum(|s| s.instances).to_string()
        };
        t.row(vec![
            f.spec.name.clone(),
            f.spec.port.to_string(),
            f.spec.mode.to_string(),
            f.machines
                .iter()
                .map(|m| m.machine.as_str())
                .collect::<Vec<_>>()
                .join(","),
            instances,
            sum(|s| s.in_flight).to_string(),
            sum(|s| s.served).to_string(),
            sum(|s| s.errors).to_string(),
            state_summary(&f.machines),
        ]);
    }
    t.render()
}

/// `running` when every machine agrees, else each state with its machines.
fn state_summary(machines: &[MachineStatus]) -> String {
    let mut by_state: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for m in machines {
        by_state.entry(m.state()).or_default().push(&m.machine);
    }
    if by_state.len() == 1 {
        return by_state.into_keys().next().unwrap_or_default();
    }
    by_state
        .iter()
        .map(|(state, ms)| format!("{state}({})", ms.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_show(v: &FunctionView) -> String {
    let s = &v.spec;
    let l = &s.limits;
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<13} {val}\n"));
    line("name", s.name.clone());
    line("port", s.port.to_string());
    line("mode", s.mode.to_string());
    line("command", s.command.join(" "));
    if !s.env.is_empty() {
        let env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line("env", env.join(" "));
    }
    line(
        "on",
        if s.on.is_empty() {
            "every machine".into()
        } else {
            s.on.join(",")
        },
    );
    line("balance", s.balance.to_string());
    if s.mode == Mode::Pool {
        line("instances", format!("min {}, max {}", l.min, l.max));
        line("idle timeout", format!("{}s", l.idle_timeout_secs));
    }
    line("timeout", format!("{}s", l.timeout_secs));
    line(
        "max conns",
        format!("{} (per source {})", l.max_conns, l.per_source),
    );
    line(
        "version",
        format!(
            "{} by {} at {}",
            v.version,
            v.origin,
            nuage_core::time::rfc3339(v.updated_at)
        ),
    );
    let mut t = Table::new(&[
        "MACHINE",
        "STATE",
        "INSTANCES",
        "IN-FLIGHT",
        "CONNS",
        "SERVED",
        "ERRORS",
        "COLD",
        "NOTE",
    ]);
    for m in &v.machines {
        let st = m.status.as_ref();
        let n = |get: fn(&nuage_fn::types::LocalStatus) -> u64| {
            st.map_or("-".into(), |s| get(s).to_string())
        };
        t.row(vec![
            m.machine.clone(),
            m.state(),
            n(|s| s.instances),
            n(|s| s.in_flight),
            n(|s| s.connections),
            n(|s| s.served),
            n(|s| s.errors),
            n(|s| s.cold_starts),
            st.and_then(|s| s.error.clone()).unwrap_or_default(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

/// One gateway request: the answer lines, or the error message.
async fn invoke_one(client: ApiClient, name: String, line: String) -> Result<String, String> {
    let mut body = line.into_bytes();
    body.push(b'\n');
    let resp = client
        .send(Method::POST, &format!("/function/{name}"), Some(body))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => b.error.message,
        Err(_) => format!("HTTP {status}"),
    })
}

/// Sends each argument (or stdin line) as its own request, a few at a time, and prints the
/// answers in order. Failed requests print `ERR …` on stderr; the status is then 1.
async fn invoke(client: &ApiClient, name: &str, text: Vec<String>) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(INVOKE_PARALLEL);
    let reader = if text.is_empty() {
        // Lines from stdin, read on a blocking thread as they come.
        tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        })
    } else {
        tokio::spawn(async move {
            for line in text {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut pending = VecDeque::new();
    let mut failed = 0usize;
    let mut print = |r: Result<String, String>| match r {
        Ok(answer) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(answer.as_bytes());
            let _ = out.flush();
        }
        Err(e) => {
            eprintln!("ERR {e}");
            failed += 1;
        }
    };
    while let Some(line) = rx.recv().await {
        pending.push_back(tokio::spawn(invoke_one(
            client.clone(),
            name.to_owned(),
            line,
        )));
        if pending.len() >= INVOKE_PARALLEL {
            let h: tokio::task::JoinHandle<_> = pending.pop_front().expect("not empty");
            print(h.await?);
        }
    }
    for h in pending {
        print(h.await?);
    }
    let _ = reader.await;
    if failed > 0 {
        bail!("{failed} requests to `{name}` failed");
    }
    Ok(())
}

async fn logs(client: &ApiClient, name: &str, follow: bool) -> anyhow::Result<()> {
    let mut cursors = BTreeMap::new();
    let mut warned = BTreeSet::new();
    loop {
        let path = format!(
            "/v1/functions/{name}/logs?since={}",
            format_cursors(&cursors)
        );
        let reply: LogsReply = client.get(&path).await?;
        for m in &reply.unreachable {
            if warned.insert(m.clone()) {
                eprintln!("nuage: warning: {m} does not answer; its lines are missing");
            }
        }
        let mut out = std::io::stdout().lock();
        for l in &reply.lines {
            let _ = writeln!(
                out,
                "{} {} {} {}: {}",
                nuage_core::time::rfc3339(l.line.time),
                l.machine,
                l.line.pid,
                l.line.source,
                l.line.text
            );
        }
        let _ = out.flush();
        cursors = reply.cursors;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_PERIOD).await;
    }
}
