//! `firetower gateway`: run a gateway connected to a manager cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use firetower_gateway::{
    ClientTlsConfig, ClusterOptions, ClusterUpstream, Gateway, GatewayFile, GatewayHandle,
};
use firetower_link::{Role, Security};
use firetower_proto::admin::DescribeRequest;

use crate::tls_flags::TlsFlags;

/// The client listener when neither the flags nor the file name one.
const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// The session lease when neither the flags nor the file set one.
const DEFAULT_LEASE_MS: u64 = 5_000;

#[derive(clap::Args, Debug, Default)]
pub struct GatewayArgs {
    /// The gateway's TOML configuration file (listeners, limits, [auth], [api], origins...:
    /// docs/gateway.md). Flags given here win over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This gateway's id (1 or more), unique among gateways, kept across restarts.
    #[arg(long)]
    pub id: Option<u64>,
    /// Address of the WebSocket, health, metrics and API listener [default: 127.0.0.1:9090].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Raw TCP listener for devices (length-prefixed protobuf frames); off when not given.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Admin (gRPC) addresses of managers, comma separated; the gateway learns every
    /// manager's QUIC address from them.
    #[arg(long)]
    pub managers: Option<String>,
    /// Managers drop this gateway's subscriptions after this many milliseconds of silence
    /// [default: 5000].
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Let clients without credentials subscribe and publish to every topic. Without it, a
    /// gateway with no [auth] and no connect hook refuses to start.
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Serve `POST /demo/token` for the demo page at `/` (`[demo] tokens = true`): it signs a
    /// 10-minute token for any name it is given (topics `demo.*` only) with the [auth] HS256
    /// secret. For trying Firetower out, never where real users connect.
    #[arg(long)]
    pub demo_tokens: bool,
    /// `[auth]` chosen by the caller (`firetower dev`), in place of the file's.
    #[arg(skip)]
    pub auth: Option<firetower_gateway::AuthConfig>,
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
    let file = match &args.config {
        Some(path) => GatewayFile::load(path)?,
        None => GatewayFile::default(),
    };
    let id = args
        .id
        .or(file.id)
        .ok_or_else(|| anyhow!("the gateway needs an id: --id N or `id = N` in --config"))?;
    if id == 0 {
        return Err(anyhow!("--id must be at least 1"));
    }
    let managers = match &args.managers {
        Some(m) => m.clone(),
        None if !file.managers.is_empty() => file.managers.join(","),
        None => {
            return Err(anyhow!(
                "the gateway needs the managers' admin addresses: --managers A,B or \
                 `managers = [..]` in --config"
            ))
        }
    };
    let mut config = file.to_config();
    config.id = id;
    if let Some(listen) = args.listen {
        config.listen = listen;
    } else if file.listen.is_none() {
        config.listen = DEFAULT_LISTEN.parse().context("default listen address")?;
    }
    if args.tcp.is_some() {
        config.tcp_listen = args.tcp;
    }
    if let Some(tls) = args.client_tls() {
        config.client_tls = Some(tls);
    }
    config.allow_anonymous |= args.allow_anonymous;
    config.demo_tokens |= args.demo_tokens;
    if let Some(auth) = &args.auth {
        config.auth = Some(auth.clone());
    }
    config.validate().context("invalid gateway configuration")?;
    config.require_authentication()?;
    if config.allow_anonymous {
        tracing::warn!(
            "--allow-anonymous: clients without credentials may subscribe and publish to \
             every topic"
        );
    }
    if config.demo_tokens {
        tracing::warn!(
            "demo tokens: POST /demo/token signs a token for any name (topics demo.*); for \
             trying Firetower out only"
        );
    }
    let mut tls = args.tls.clone();
    if tls.tls_dir.is_none() && !tls.insecure {
        tls.tls_dir = file.tls.dir.clone();
        tls.insecure = file.tls.insecure;
    }
    let lease_ms = args.lease_ms.or(file.lease_ms).unwrap_or(DEFAULT_LEASE_MS);
    let security = tls.security(&Role::Gateway(id))?;
    if !security.is_mutual() {
        tracing::warn!(
            "INSECURE: --insecure given: managers are not authenticated (anyone answering on \
             their addresses is believed); for experiments only"
        );
    }
    let managers = quic_addresses(&managers, &security).await?;
    let mut options = ClusterOptions {
        lease: Duration::from_millis(lease_ms),
        ..ClusterOptions::default()
    };
    options.link.security = security;

    let (upstream, deliveries) = ClusterUpstream::connect(id, managers, options)
        .await
        .context("cannot reach the manager cluster")?;
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
