//! `firetower link ...`: act as a gateway on the manager link. Operators use it to inspect a
//! topic the way a gateway sees it; tests use it to write subscriptions and to check that
//! every acknowledged one survived a fault.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use firetower_link::{LinkClient, LinkOptions, Role};

use crate::cluster::parse_addr_list;
use crate::tls_flags::TlsFlags;

/// `firetower link [--tls-dir DIR] <command>`: presents `gateway-<id>` for the `--gateway` it
/// acts as.
#[derive(clap::Args, Debug)]
pub struct LinkArgs {
    #[command(flatten)]
    tls: TlsFlags,
    #[command(subcommand)]
    command: LinkCommand,
}

#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Subscribe a gateway to topics; prints each committed log index.
    Subscribe {
        #[command(flatten)]
        target: Target,
        /// Topics.
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Unsubscribe a gateway from topics.
    Unsubscribe {
        #[command(flatten)]
        target: Target,
        /// Topics.
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Print the gateways subscribed to a topic (linearizable read).
    Gateways {
        #[command(flatten)]
        target: Target,
        /// The topic.
        topic: String,
    },
    /// Check that the gateway is subscribed to every topic listed in FILE (one per line, as
    /// written by `bench commits --record`). Exits non-zero if any is missing.
    Verify {
        #[command(flatten)]
        target: Target,
        /// The file of acknowledged topics.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// QUIC addresses of managers, comma separated (any one that answers is enough).
    #[arg(long)]
    managers: String,
    /// The gateway id to act as.
    #[arg(long, default_value_t = 1)]
    gateway: u64,
    /// `subscribe` opens this gateway's session (a fresh run of the gateway: its earlier
    /// subscriptions go) with this lease; the managers keep the subscriptions this long after
    /// the command ends.
    #[arg(long, default_value_t = 60_000)]
    lease_ms: u64,
}

impl Target {
    async fn connect(&self, tls: &TlsFlags) -> anyhow::Result<LinkClient> {
        let managers = parse_addr_list(&self.managers)?;
        if managers.is_empty() {
            return Err(anyhow!("--managers lists no address"));
        }
        if self.gateway == 0 {
            return Err(anyhow!("--gateway 0 is reserved; use 1 or more"));
        }
        let options = LinkOptions {
            security: tls.security(&Role::Gateway(self.gateway))?,
            ..LinkOptions::default()
        };
        LinkClient::connect(self.gateway, managers, options)
            .await
            .context("cannot reach the cluster")
    }
}

pub async fn run(args: LinkArgs) -> anyhow::Result<()> {
    let tls = &args.tls;
    match args.command {
        LinkCommand::Subscribe { target, topics } => {
            let link = target.connect(tls).await?;
            let _sessions = link
                .hold_sessions(
                    std::time::Duration::from_millis(target.lease_ms),
                    std::time::Duration::from_secs(15),
                )
                .await
                .context("cannot open the gateway session")?;
            for t in topics {
                let w = link.subscribe(&t).await?;
                println!("subscribed {t} (index {}, changed {})", w.index, w.changed);
            }
        }
        LinkCommand::Unsubscribe { target, topics } => {
            let link = target.connect(tls).await?;
            for t in topics {
                let w = link.unsubscribe(&t).await?;
                println!(
                    "unsubscribed {t} (index {}, changed {})",
                    w.index, w.changed
                );
            }
        }
        LinkCommand::Gateways { target, topic } => {
            let link = target.connect(tls).await?;
            let gateways = link.topic_gateways(&topic).await?;
            println!(
                "{}",
                serde_json::json!({"topic": topic, "gateways": gateways})
            );
        }
        LinkCommand::Verify { target, file } => {
            let link = target.connect(tls).await?;
            let f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut checked = 0u64;
            let mut missing = Vec::new();
            for line in std::io::BufReader::new(f).lines() {
                let topic = line?;
                let topic = topic.trim();
                if topic.is_empty() {
                    continue;
                }
                checked += 1;
                let gateways = link.topic_gateways(topic).await?;
                if !gateways.contains(&target.gateway) {
                    missing.push(topic.to_string());
                }
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{}",
                serde_json::json!({"checked": checked, "missing": missing.len(), "missing_topics": missing.iter().take(20).collect::<Vec<_>>()})
            )?;
            if !missing.is_empty() {
                return Err(anyhow!(
                    "{} of {checked} acknowledged subscriptions are missing",
                    missing.len()
                ));
            }
        }
    }
    Ok(())
}
