//! The JSON documents of the functions API (see docs/functions.md), shared by the node,
//! its peers and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::logs::LogLine;
use crate::registry::Entry;
use crate::spec::FunctionSpec;

/// A function on one machine, as that machine sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    pub name: String,
    /// `running`, `failing` (crash loop, backed off), `failed` (could not start: see
    /// `error`), `draining` (being removed).
    pub state: String,
    pub error: Option<String>,
    /// The program this machine runs.
    pub program: Option<String>,
    pub instances: u64,
    pub in_flight: u64,
    pub connections: u64,
    pub served: u64,
    pub errors: u64,
    pub cold_starts: u64,
}

/// `GET /v1/functions/_peer/state`: what a machine tells its peers (health check,
/// registry digest, relay port, and its functions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub relay_port: u16,
    pub digest: String,
    pub max_version: u64,
    pub functions: Vec<LocalStatus>,
}

/// A function on one machine, as `nuage fn ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub machine: String,
    /// False if the machine did not answer.
    pub reachable: bool,
    /// `None` on a reachable machine: the function does not run there (yet).
    pub status: Option<LocalStatus>,
}

impl MachineStatus {
    /// One word for the state column.
    pub fn state(&self) -> String {
        match (&self.status, self.reachable) {
            (_, false) => "unreachable".into(),
            (Some(s), true) => s.state.clone(),
            (None, true) => "starting".into(),
        }
    }
}

/// A deployed function and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionView {
    pub spec: FunctionSpec,
    pub version: u64,
    /// Node that made this version.
    pub origin: String,
    /// Unix seconds.
    pub updated_at: f64,
    pub machines: Vec<MachineStatus>,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

/// What happened on one machine for a deploy, scale or removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineOutcome {
    pub machine: String,
    pub ok: bool,
    pub message: String,
}

/// The answer to a deploy, scale or removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub version: u64,
    pub machines: Vec<MachineOutcome>,
}

impl Outcome {
    pub fn all_ok(&self) -> bool {
        self.machines.iter().all(|m| m.ok)
    }
}

/// `POST /v1/functions/{name}/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// `POST /v1/functions/_peer/check`: may this machine run the spec?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReply {
    pub max_version: u64,
    pub error: Option<String>,
}

/// `POST /v1/functions/_peer/apply`: the entries a peer should merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub entries: Vec<Entry>,
}

/// Per function name, the error of starting it on the machine (if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyReply {
    pub errors: BTreeMap<String, String>,
}

/// `GET /v1/functions/_peer/logs/{name}?after=N`: one machine's lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub last_seq: u64,
}

/// A log line with its machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineLogLine {
    pub machine: String,
    #[serde(flatten)]
    pub line: LogLine,
}

/// `GET /v1/functions/{name}/logs?since=n1:5,n2:0`: lines of every machine, oldest first,
/// and where to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsReply {
    pub lines: Vec<MachineLogLine>,
    /// Per machine, the last line number seen: pass them back as `since`.
    pub cursors: BTreeMap<String, u64>,
    pub unreachable: Vec<String>,
}

/// Parses `n1:5,n2:0` into cursors.
pub fn parse_cursors(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (machine, seq) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not machine:number"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("`{part}` is not machine:number"))?;
        out.insert(machine.to_owned(), seq);
    }
    Ok(out)
}

/// Formats cursors as `n1:5,n2:0`.
pub fn format_cursors(cursors: &BTreeMap<String, u64>) -> String {
    cursors
        .iter()
        .map(|(m, s)| format!("{m}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = parse_cursors("n1:5,n2:0").unwrap();
        assert_eq!(c["n1"], 5);
        assert_eq!(format_cursors(&c), "n1:5,n2:0");
        assert!(parse_cursors("n1").is_err());
        assert!(parse_cursors("n1:x").is_err());
        assert!(parse_cursors("").unwrap().is_empty());
    }
}
