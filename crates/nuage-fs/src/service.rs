//! The storage service of `nuage up`: volume management and this node's brick servers.

use nuage_core::service::{BoxFuture, Endpoint, Service, ServiceContext, Started};

use crate::mgmt::{Mgmt, api};

/// The `[storage]` table of nuage.toml (nothing to set yet; kept strict so typos fail).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {}

pub struct StorageService;

impl Service for StorageService {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn start(self: Box<Self>, ctx: ServiceContext) -> BoxFuture<anyhow::Result<Started>> {
        Box::pin(async move {
            let _cfg: StorageConfig = ctx.config.section("storage")?;
            let api_port = ctx.config.listen.api.port();
            let mgmt = Mgmt::open(
                &ctx.data_dir,
                &ctx.config.address,
                api_port,
                ctx.shutdown.clone(),
            )?;
            // Bricks of started volumes come back with the node.
            mgmt.reconcile().await;
            let endpoints = mgmt
                .local_bricks()
                .await
                .iter()
                .map(|b| {
                    Endpoint::new(
                        "tcp",
                        format!("0.0.0.0:{} (brick {} of {})", b.port, b.id, b.volume),
                    )
                })
                .collect();
            let routes = api::router(mgmt.clone());
            let shutdown = ctx.shutdown.clone();
            let shd = tokio::spawn(mgmt.clone().self_heal_daemon(ctx.shutdown.clone()));
            let task = tokio::spawn(async move {
                shutdown.cancelled().await;
                let _ = shd.await;
                mgmt.stop_all().await;
                Ok(())
            });
            Ok(Started {
                endpoints,
                routes: Some(routes),
                task,
            })
        })
    }
}
