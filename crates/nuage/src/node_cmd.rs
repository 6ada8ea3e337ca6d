//! `nuage node …`: ask a running node about itself through its HTTP API.

use std::time::Duration;

use clap::{Args, Subcommand};
use nuage_core::client::ApiClient;
use nuage_core::time::human_duration;
use nuage_node::NodeInfo;

/// How to reach the node API; shared by every command that talks to a node.
#[derive(Args, Debug, Clone)]
pub struct ApiArg {
    /// Node API to talk to (http://host:port or host:port)
    #[arg(long, env = "NUAGE_API", global = true, value_name = "URL")]
    pub api: Option<String>,
}

impl ApiArg {
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::from_flag_or_env(self.api.as_deref())
    }
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Show the node's name, version, uptime, services and peers
    Info {
        /// Print the raw JSON of GET /v1/node
        #[arg(long)]
        json: bool,
    },
    /// Print the node's metrics (Prometheus text format, GET /metrics)
    Metrics,
}

pub async fn run(cmd: NodeCmd, api: ApiArg) -> anyhow::Result<()> {
    let client = api.client()?;
    match cmd {
        NodeCmd::Info { json: true } => {
            let info: serde_json::Value = client.get("/v1/node").await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        NodeCmd::Info { json: false } => print!(
            "{}",
            render_info(&client.get::<NodeInfo>("/v1/node").await?)
        ),
        NodeCmd::Metrics => print!("{}", client.get_text("/metrics").await?),
    }
    Ok(())
}

fn render_info(info: &NodeInfo) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9} {v}\n"));
    line("name", info.name.clone());
    line("id", info.id.clone());
    line("version", info.version.clone());
    line("address", info.address.clone());
    line(
        "started",
        format!(
            "{} (up {}, run {})",
            info.started_at,
            human_duration(Duration::from_secs_f64(info.uptime_seconds)),
            info.runs
        ),
    );
    line("data", info.data_dir.clone());
    for (i, s) in info.services.iter().enumerate() {
        let endpoints: Vec<String> = s.endpoints.iter().map(ToString::to_string).collect();
        line(
            if i == 0 { "services" } else { "" },
            format!("{:<10} {}", s.name, endpoints.join(", ")),
        );
    }
    if info.peers.is_empty() {
        line("peers", "none (single node)".into());
    }
    for (i, p) in info.peers.iter().enumerate() {
        line(
            if i == 0 { "peers" } else { "" },
            format!("{:<10} {}", p.name, p.address),
        );
    }
    out
}
