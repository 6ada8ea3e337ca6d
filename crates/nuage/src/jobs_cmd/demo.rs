//! `nuage jobs demo-auth`: the three-tier demo (client → application server →
//! authentication server) whose slow spots `nuage trace analyze` finds.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use nuage_jobs::config::{self, format_duration};
use nuage_jobs::trace;

use super::daemon::stop_on_signal;
use super::duration_arg;

#[derive(Subcommand, Debug)]
pub enum DemoCmd {
    /// The authentication server (users alice/wonderland and bob/builder)
    Auth {
        #[arg(long, default_value = "127.0.0.1:50061", value_name = "IP:PORT")]
        listen: SocketAddr,
        /// A slow spot: time spent in each check
        #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "DURATION")]
        slow: Duration,
        /// Record traces under this directory
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
    /// The application server, which asks the authentication server
    App {
        #[arg(long, default_value = "127.0.0.1:50062", value_name = "IP:PORT")]
        listen: SocketAddr,
        /// The authentication server
        #[arg(long, default_value = "http://127.0.0.1:50061", value_name = "URL")]
        auth: String,
        /// A slow spot: time spent in each login before asking the authentication server
        #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "DURATION")]
        slow: Duration,
        /// Record traces under this directory
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
    /// The client: log in N times through the application server and print the latency
    Client {
        /// The application server
        #[arg(long, default_value = "http://127.0.0.1:50062", value_name = "URL")]
        app: String,
        #[arg(long, default_value_t = 100, value_name = "N")]
        requests: u32,
        #[arg(long, default_value = "alice")]
        user: String,
        #[arg(long, default_value = "wonderland")]
        password: String,
        /// A slow spot: time spent before each call
        #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "DURATION")]
        slow: Duration,
        /// Record traces under this directory
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
}

pub async fn run(cmd: DemoCmd) -> anyhow::Result<()> {
    use nuage_jobs::demo;
    match cmd {
        DemoCmd::Auth {
            listen,
            slow,
            trace,
        } => {
            if let Some(dir) = &trace {
                trace::install(dir, "auth")?;
            }
            let shutdown = stop_on_signal()?;
            let listener = demo::bind(listen, "the demo authentication server").await?;
            println!("demo auth server listening on {}", listener.local_addr()?);
            std::io::stdout().flush()?;
            let r = demo::serve_auth(listener, slow, shutdown).await;
            trace::finish();
            r
        }
        DemoCmd::App {
            listen,
            auth,
            slow,
            trace,
        } => {
            if let Some(dir) = &trace {
                trace::install(dir, "app")?;
            }
            let shutdown = stop_on_signal()?;
            let listener = demo::bind(listen, "the demo application server").await?;
            println!("demo app server listening on {}", listener.local_addr()?);
            std::io::stdout().flush()?;
            let r = demo::serve_app(listener, &config::normalize_url(&auth)?, slow, shutdown).await;
            trace::finish();
            r
        }
        DemoCmd::Client {
            app,
            requests,
            user,
            password,
            slow,
            trace,
        } => {
            if let Some(dir) = &trace {
                trace::install(dir, "client")?;
            }
            let r = demo::run_client(
                &config::normalize_url(&app)?,
                &user,
                &password,
                requests,
                slow,
            )
            .await;
            trace::finish();
            let s = r?;
            println!(
                "{} login(s), {} accepted; latency p50 {} p99 {}",
                s.requests,
                s.accepted,
                format_duration(s.p50),
                format_duration(s.p99)
            );
            Ok(())
        }
    }
}
