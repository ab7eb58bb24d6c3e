//! `firetower dev`: a whole cluster on loopback in one process, for trying Firetower out.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use firetower_link::{Role, Security};
use firetower_manager::{connect_admin, Manager, ManagerConfig, RaftTuning, TlsSettings};
use firetower_proto::admin::{DescribeRequest, InitRequest, SetRuleRequest};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the managers keep their data.
    #[arg(long, default_value = ".firetower-dev")]
    data_dir: PathBuf,
    /// First port; the managers use it and the next eight (QUIC and admin for each, then
    /// one metrics port each).
    #[arg(long, default_value_t = 6666)]
    base_port: u16,
    /// The gateway's WebSocket, health and metrics address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Serve `wss://` and `https://` with a certificate for localhost and 127.0.0.1 from this
    /// directory (`server.pem`, `server-key.pem`, signed by `ca.pem`; all three are made on
    /// the first run). Clients trust `ca.pem`. SIGHUP reloads the certificate.
    #[arg(long)]
    client_tls_dir: Option<PathBuf>,
}

/// The demo page's topics: with history and presence in `firetower dev`.
const DEMO_TOPICS: &str = "demo.*";

/// The gateway `firetower dev` runs.
const DEV_GATEWAY: u64 = 1;
/// The HS256 secret the dev gateway verifies tokens with and signs the demo page's tokens
/// with; made on the first run, kept in the data directory.
const DEMO_SECRET_FILE: &str = "jwt-secret";

/// The dev gateway's HS256 secret file, made (32 random bytes, hex) when missing.
fn ensure_jwt_secret(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(DEMO_SECRET_FILE);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{hex}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Secure like a real cluster: a CA and certificates of its own, made on the first run.
    let tls_dir = args.data_dir.join("tls");
    let mut roles: Vec<Role> = (1..=3).map(Role::Manager).collect();
    roles.push(Role::Gateway(DEV_GATEWAY));
    firetower_link::certs::ensure(&tls_dir, "dev", &roles).with_context(|| {
        format!(
            "cannot create the dev cluster's certificates in {}",
            tls_dir.display()
        )
    })?;
    let operator = Security::from_flags(
        Some(&tls_dir),
        false,
        &Role::Operator(firetower_link::certs::DEFAULT_OPERATOR.into()),
    )?;
    let mut managers = Vec::new();
    for i in 0..3u16 {
        let id = u64::from(i) + 1;
        let port = args
            .base_port
            .checked_add(i * 2)
            .context("--base-port too high")?;
        let metrics_port = args
            .base_port
            .checked_add(6 + i)
            .context("--base-port too high")?;
        let config = ManagerConfig {
            id,
            quic: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 1)),
            data_dir: args.data_dir.join(format!("manager-{id}")),
            cluster_id: None,
            raft: RaftTuning::default(),
            metrics: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port))),
            unsafe_stale_reads: false,
            unsafe_stale_leadership: false,
            tls: TlsSettings {
                dir: Some(tls_dir.clone()),
                insecure: false,
            },
            unsafe_test_hooks: false,
        };
        managers.push(Manager::start(config).await?);
    }
    let admins: Vec<String> = managers.iter().map(|m| m.node().admin.clone()).collect();
    let mut first = connect_admin(&admins[0], &operator, Duration::from_secs(30))
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
    let leaderless = managers[0].wait_for_leaders(Duration::from_secs(10)).await;
    if !leaderless.is_empty() {
        anyhow::bail!("groups {leaderless:?} elected no leader; see the log above");
    }
    // The demo room keeps its last messages (reload shows them, reconnects recover) and
    // shows who is online.
    for (kind, size, ttl_ms) in [("history", 200, 24 * 3_600_000), ("presence", 0, 0)] {
        first
            .set_rule(SetRuleRequest {
                kind: kind.into(),
                pattern: DEMO_TOPICS.into(),
                size,
                ttl_ms,
                remove: false,
            })
            .await
            .map_err(crate::cluster::status)?;
    }
    let client_tls = match &args.client_tls_dir {
        Some(dir) => Some(crate::certs_cmd::ensure_client_tls(dir, &[])?),
        None => None,
    };
    // Anonymous clients may do everything; a client with a token is verified against this
    // secret, which also signs the demo page's tokens (POST /demo/token), so the page can
    // show who is online.
    let jwt_secret = ensure_jwt_secret(&args.data_dir)?;
    let gateway_args = crate::gateway_cmd::GatewayArgs {
        id: Some(DEV_GATEWAY),
        listen: Some(args.listen),
        managers: Some(admins.join(",")),
        allow_anonymous: true,
        demo_tokens: true,
        auth: Some(firetower_gateway::AuthConfig {
            hs256_secret_file: Some(jwt_secret.clone()),
            ..firetower_gateway::AuthConfig::default()
        }),
        client_tls_cert: client_tls.as_ref().map(|c| c.cert_file.clone()),
        client_tls_key: client_tls.as_ref().map(|c| c.key_file.clone()),
        tls: crate::tls_flags::TlsFlags {
            tls_dir: Some(tls_dir.clone()),
            insecure: false,
        },
        ..crate::gateway_cmd::GatewayArgs::default()
    };
    let (gateway, upstream) = crate::gateway_cmd::start(&gateway_args).await?;
    let addr = gateway.local_addr();
    let (ws, http) = if client_tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let url = format!("{ws}://{addr}/ws");
    println!("Firetower dev cluster is up: 3 managers and a gateway.");
    println!();
    println!("  WebSocket:  {url}   (subprotocol firetower.json)");
    println!(
        "  clients:    anonymous (--allow-anonymous): any client may subscribe and publish to \
         every topic;"
    );
    println!(
        "              a client with a token is verified (HS256, secret in {}; docs/gateway.md)",
        jwt_secret.display()
    );
    println!(
        "  demo page:  {http}://{addr}/  (a chat room on @firetower/client; its tokens come from \
         POST /demo/token, for trying Firetower out only)"
    );
    println!("  health:     {http}://{addr}/readyz   metrics: {http}://{addr}/metrics");
    if let Some(dir) = &args.client_tls_dir {
        println!(
            "  client TLS: clients trust {} (e.g. curl --cacert); SIGHUP reloads {}",
            dir.join(crate::certs_cmd::CLIENT_CA_FILE).display(),
            dir.join(crate::certs_cmd::CLIENT_CERT_FILE).display()
        );
    }
    println!(
        "  members:    firetower cluster --tls-dir {} members --admin {}",
        tls_dir.display(),
        admins[0]
    );
    println!(
        "  TLS:        managers and the gateway use mutual TLS with the CA in {} \
         (--tls-dir for the CLI)",
        tls_dir.display()
    );
    let metrics: Vec<String> = managers
        .iter()
        .filter_map(|m| m.metrics_addr())
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    println!("  managers' metrics: {}", metrics.join("  "));
    println!("  data:       {}", args.data_dir.display());
    println!();
    println!("Try it with any WebSocket client, for example `websocat {url}`, and send:");
    println!(r#"  {{"op":"subscribe","topics":["room.1"],"id":1}}"#);
    println!(r#"  {{"op":"publish","topic":"room.1","data":{{"text":"hello"}},"id":2}}"#);
    println!();
    println!("Ctrl-C stops it.");
    tokio::select! {
        () = crate::wait_for_shutdown_signal() => {}
        () = crate::gateway_cmd::reload_tls_on_sighup(&gateway) => {}
    }
    gateway.shutdown().await;
    upstream.close();
    for m in &managers {
        m.shutdown().await;
    }
    Ok(())
}
