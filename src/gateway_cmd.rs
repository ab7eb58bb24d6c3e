//! `firetower gateway`: run a gateway connected to a manager cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use firetower_gateway::{
    ClientTlsConfig, ClusterOptions, ClusterUpstream, Gateway, GatewayConfig, GatewayHandle,
};
use firetower_link::{Role, Security};
use firetower_proto::admin::DescribeRequest;

use crate::tls_flags::TlsFlags;

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// This gateway's id (1 or more), unique among gateways, kept across restarts.
    #[arg(long)]
    pub id: u64,
    /// Address of the WebSocket, health and metrics listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Raw TCP listener for devices (length-prefixed protobuf frames); off when not given.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Admin (gRPC) addresses of managers, comma separated; the gateway learns every
    /// manager's QUIC address from them.
    #[arg(long)]
    pub managers: String,
    /// Managers drop this gateway's subscriptions after this many milliseconds of silence.
    #[arg(long, default_value_t = 5_000)]
    pub lease_ms: u64,
    /// Serve TLS to clients (`wss://`, `https://`, and TLS on `--tcp`) with this PEM
    /// certificate chain (`[client_tls] cert_file`); SIGHUP reloads it.
    #[arg(long, requires = "client_tls_key")]
    pub client_tls_cert: Option<PathBuf>,
    /// The private key of `--client-tls-cert` (PEM: PKCS#8, RSA or SEC1).
    #[arg(long, requires = "client_tls_cert")]
    pub client_tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// Resolve admin addresses to QUIC addresses through `Describe`.
pub async fn quic_addresses(admins: &str, security: &Security) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for admin in admins.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let reply = async {
            let mut client =
                firetower_manager::connect_admin(admin, security, Duration::from_secs(3)).await?;
            let reply = client.describe(DescribeRequest {}).await?.into_inner();
            anyhow::Ok(reply)
        }
        .await;
        match reply {
            Ok(d) => {
                let quic: SocketAddr = d.quic.parse().with_context(|| {
                    format!("manager at {admin} reports QUIC address {:?}", d.quic)
                })?;
                if !out.contains(&quic) {
                    out.push(quic);
                }
            }
            Err(e) => errors.push(format!("{admin}: {e}")),
        }
    }
    if out.is_empty() {
        return Err(anyhow!(
            "no manager answered ({}); check --managers (admin addresses, host:port)",
            errors.join("; ")
        ));
    }
    Ok(out)
}

/// Start a gateway in this process.
pub async fn start(args: &GatewayArgs) -> anyhow::Result<(GatewayHandle, ClusterUpstream)> {
    if args.id == 0 {
        return Err(anyhow!("--id must be at least 1"));
    }
    let security = args.tls.security(&Role::Gateway(args.id))?;
    if !security.is_mutual() {
        tracing::warn!(
            "INSECURE: --insecure given: managers are not authenticated (anyone answering on \
             their addresses is believed); for experiments only"
        );
    }
    let managers = quic_addresses(&args.managers, &security).await?;
    let mut options = ClusterOptions {
        lease: Duration::from_millis(args.lease_ms),
        ..ClusterOptions::default()
    };
    options.link.security = security;

    let (upstream, deliveries) = ClusterUpstream::connect(args.id, managers, options)
        .await
        .context("cannot reach the manager cluster")?;
    let config = GatewayConfig {
        listen: args.listen,
        tcp_listen: args.tcp,
        client_tls: args.client_tls(),
        ..GatewayConfig::default()
    };
    let handle = Gateway::start(config, Arc::new(upstream.clone()), deliveries).await?;
    Ok((handle, upstream))
}

impl GatewayArgs {
    /// `[client_tls]` from `--client-tls-cert` and `--client-tls-key`.
    pub fn client_tls(&self) -> Option<ClientTlsConfig> {
        match (&self.client_tls_cert, &self.client_tls_key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            _ => None,
        }
    }
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let (handle, upstream) = start(&args).await?;
    tracing::info!(
        id = args.id,
        listen = %handle.local_addr(),
        client_tls = handle.serves_tls(),
        "gateway ready"
    );
    tokio::select! {
        () = crate::wait_for_shutdown_signal() => {}
        () = reload_tls_on_sighup(&handle) => {}
    }
    tracing::info!("draining");
    handle.shutdown().await;
    upstream.close();
    Ok(())
}

/// SIGHUP: read the client TLS certificate and key again (open connections keep theirs).
/// Never returns where SIGHUP can be caught.
pub async fn reload_tls_on_sighup(handle: &GatewayHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; client TLS reload is off");
                return std::future::pending().await;
            }
        };
        while hup.recv().await.is_some() {
            if !handle.serves_tls() {
                tracing::info!(
                    event = "tls_reload",
                    outcome = "skipped",
                    "SIGHUP: no client TLS to reload"
                );
                continue;
            }
            match handle.reload_tls() {
                Ok(()) => tracing::info!(
                    event = "tls_reload",
                    outcome = "ok",
                    "SIGHUP: client TLS certificate reloaded; new connections use it"
                ),
                Err(e) => tracing::error!(
                    event = "tls_reload",
                    outcome = "failed",
                    error = %e,
                    "SIGHUP: client TLS reload failed; the previous certificate stays in use"
                ),
            }
        }
    }
    std::future::pending().await
}
