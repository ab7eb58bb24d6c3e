//! `firetower dev`: a whole cluster on loopback in one process, for trying Firetower out.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use firetower_manager::{connect_admin, Manager, ManagerConfig, RaftTuning};
use firetower_proto::admin::{DescribeRequest, InitRequest};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the managers keep their data.
    #[arg(long, default_value = ".firetower-dev")]
    data_dir: PathBuf,
    /// First port; the managers use the next six (QUIC and admin for each).
    #[arg(long, default_value_t = 6666)]
    base_port: u16,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut managers = Vec::new();
    for i in 0..3u16 {
        let id = u64::from(i) + 1;
        let port = args
            .base_port
            .checked_add(i * 2)
            .context("--base-port too high")?;
        let config = ManagerConfig {
            id,
            quic: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 1)),
            data_dir: args.data_dir.join(format!("manager-{id}")),
            cluster_id: None,
            raft: RaftTuning::default(),
        };
        managers.push(Manager::start(config).await?);
    }
    let admins: Vec<String> = managers.iter().map(|m| m.node().admin.clone()).collect();
    let mut first = connect_admin(&admins[0], Duration::from_secs(30))
        .await
        .map_err(crate::cluster::status)?;
    let described = first
        .describe(DescribeRequest {})
        .await
        .map_err(crate::cluster::status)?
        .into_inner();
    if described.cluster_id.is_empty() {
        first
            .init(InitRequest {
                members: admins[1..].to_vec(),
                groups: 0,
            })
            .await
            .map_err(crate::cluster::status)?;
    }
    let quics: Vec<String> = managers.iter().map(|m| m.node().quic.clone()).collect();
    println!("Firetower dev cluster is up ({} managers).", managers.len());
    println!("  data:      {}", args.data_dir.display());
    println!(
        "  members:   firetower cluster members --admin {}",
        admins[0]
    );
    println!(
        "  subscribe: firetower link subscribe --managers {} --gateway 1 room.1",
        quics.join(",")
    );
    println!("Ctrl-C stops it.");
    crate::wait_for_shutdown_signal().await;
    for m in &managers {
        m.shutdown().await;
    }
    Ok(())
}
