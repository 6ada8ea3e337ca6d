//! Where a service learns the other nodes of its cluster.
//!
//! Today the peers come from the static configuration (`[peers]` in nuage.toml); a later
//! source (group membership) will implement the same trait, so services depend only on
//! [`PeerSource`] and react to changes through [`PeerSource::watch`].

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, Peer};

/// The current peers of this node (never including itself), and their changes.
pub trait PeerSource: Send + Sync + 'static {
    /// The peers now, sorted by name.
    fn peers(&self) -> Vec<Peer> {
        self.watch().borrow().clone()
    }
    /// A receiver that sees every change of the peer list.
    fn watch(&self) -> watch::Receiver<Vec<Peer>>;
}

/// The peers named in the configuration; they never change while the node runs.
pub struct StaticPeers {
    tx: watch::Sender<Vec<Peer>>,
}

impl StaticPeers {
    pub fn new(peers: Vec<Peer>) -> Self {
        StaticPeers {
            tx: watch::Sender::new(peers),
        }
    }

    pub fn from_config(config: &Config) -> Arc<dyn PeerSource> {
        Arc::new(Self::new(config.peers.clone()))
    }
}

impl PeerSource for StaticPeers {
    fn watch(&self) -> watch::Receiver<Vec<Peer>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeName, PeerAddr};

    #[test]
    fn static_peers_are_the_configured_ones() {
        let peer = Peer {
            name: NodeName::new("n2").unwrap(),
            address: PeerAddr::parse("10.0.0.2").unwrap(),
        };
        let source: Arc<dyn PeerSource> = Arc::new(StaticPeers::new(vec![peer.clone()]));
        assert_eq!(source.peers(), vec![peer]);
        assert!(!source.watch().has_changed().unwrap());
    }
}
