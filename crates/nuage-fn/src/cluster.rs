//! The other machines as the functions service sees them: who they are (from the node's
//! [`PeerSource`], so a membership service can replace the static list), whether they
//! answer (health checks every [`HEALTH_INTERVAL`], each within [`HEALTH_TIMEOUT`]), where
//! their relay listens, and what they last reported.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nuage_core::client::ApiClient;
use nuage_core::config::{Peer, PeerAddr};
use nuage_core::peers::PeerSource;

use crate::types::NodeReport;

/// Time between two health checks of a machine.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// A health check unanswered after this long marks the machine down. With the
/// interval, a machine that stops answering is skipped within 1.5 s.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for a control call to a peer (check, list, logs).
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a peer to apply a change (a removal waits for its drain).
pub const PEER_APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What this machine knows of another one.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// Answered its last health check (and no relay to it failed since).
    pub healthy: bool,
    pub report: Option<NodeReport>,
    /// Why it is down.
    pub error: Option<String>,
}

pub struct Cluster {
    me: String,
    source: Arc<dyn PeerSource>,
    views: Mutex<BTreeMap<String, PeerView>>,
}

impl Cluster {
    pub fn new(me: String, source: Arc<dyn PeerSource>) -> Cluster {
        Cluster {
            me,
            source,
            views: Mutex::new(BTreeMap::new()),
        }
    }

    fn views(&self) -> MutexGuard<'_, BTreeMap<String, PeerView>> {
        self.views.lock().expect("cluster lock poisoned")
    }

    pub fn source(&self) -> &Arc<dyn PeerSource> {
        &self.source
    }

    /// The other machines now, sorted by name.
    pub fn peers(&self) -> Vec<Peer> {
        self.source.peers()
    }

    pub fn peer(&self, name: &str) -> Option<Peer> {
        self.peers().into_iter().find(|p| p.name.as_str() == name)
    }

    /// Every machine of the cluster, this one included, sorted by name.
    pub fn machines(&self) -> Vec<String> {
        let mut all: Vec<String> = self.peers().iter().map(|p| p.name.to_string()).collect();
        all.push(self.me.clone());
        all.sort();
        all
    }

    pub fn view(&self, name: &str) -> PeerView {
        self.views().get(name).cloned().unwrap_or_default()
    }

    /// `host:port` of a machine's relay if it is healthy.
    pub fn relay_of(&self, peer: &Peer) -> Option<(String, u16)> {
        let views = self.views();
        let view = views.get(peer.name.as_str())?;
        let report = view.report.as_ref()?;
        (view.healthy && report.relay_port != 0)
            .then(|| (peer.address.host.clone(), report.relay_port))
    }

    pub fn record_report(&self, name: &str, report: NodeReport) {
        let mut views = self.views();
        let view = views.entry(name.to_owned()).or_default();
        if !view.healthy {
            tracing::info!("machine {name} answers: placing connections on it");
        }
        view.healthy = true;
        view.error = None;
        view.report = Some(report);
    }

    /// Marks a machine down until its next successful health check.
    pub fn mark_down(&self, name: &str, why: &str) {
        let mut views = self.views();
        let view = views.entry(name.to_owned()).or_default();
        if view.healthy {
            tracing::warn!("machine {name} does not answer ({why}): skipping it");
        }
        view.healthy = false;
        view.error = Some(why.to_owned());
    }

    /// Forgets machines the peer source no longer lists.
    pub fn retain(&self, names: &[String]) {
        self.views().retain(|n, _| names.contains(n));
    }

    /// The highest registry version any machine reported.
    pub fn max_reported_version(&self) -> u64 {
        self.views()
            .values()
            .filter_map(|v| v.report.as_ref().map(|r| r.max_version))
            .max()
            .unwrap_or(0)
    }
}

/// A client of a peer's node API with `timeout` for the whole call.
pub fn client(address: &PeerAddr, timeout: Duration) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(&address.authority())?.with_timeout(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuage_core::config::NodeName;
    use nuage_core::peers::StaticPeers;

    fn report(relay_port: u16, max_version: u64) -> NodeReport {
        NodeReport {
            node: "n2".into(),
            relay_port,
            digest: String::new(),
            max_version,
            functions: vec![],
        }
    }

    #[test]
    fn health_follows_reports_and_failures() {
        let peer = Peer {
            name: NodeName::new("n2").unwrap(),
            address: PeerAddr::parse("10.0.0.2").unwrap(),
        };
        let c = Cluster::new("n1".into(), Arc::new(StaticPeers::new(vec![peer.clone()])));
        assert_eq!(c.machines(), ["n1", "n2"]);
        assert_eq!(c.relay_of(&peer), None, "unknown until it answers");
        c.record_report("n2", report(4000, 7));
        assert_eq!(c.relay_of(&peer), Some(("10.0.0.2".into(), 4000)));
        assert_eq!(c.max_reported_version(), 7);
        c.mark_down("n2", "connection refused");
        assert_eq!(c.relay_of(&peer), None);
        assert_eq!(c.view("n2").error.as_deref(), Some("connection refused"));
        c.record_report("n2", report(4001, 7));
        assert_eq!(c.relay_of(&peer), Some(("10.0.0.2".into(), 4001)));
    }
}
