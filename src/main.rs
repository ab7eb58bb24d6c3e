//! `firetower`: one binary for every role of a Firetower cluster.
//!
//! ```text
//! firetower manager ...            run a topic manager
//! firetower gateway ...            run a gateway
//! firetower cluster init|members|add|remove|transfer-leader|topic ...   operate a cluster
//! firetower link subscribe|unsubscribe|gateways ...   act as a gateway on the manager link
//! firetower bench commits ...      subscription commit throughput and latency
//! firetower dev                    a whole local cluster on loopback
//! ```
//!
//! Exit status: 0 on success, 1 when the operation failed (the message says why and what to
//! do), 2 for a usage error, 3 when a running manager stopped because it could not go on (its
//! write-ahead log failed: `FatalError::EXIT_CODE`).

mod certs_cmd;
mod cluster;
mod dev;
mod gateway_cmd;
mod grpc_error;
mod link_cmd;
mod operator_cmd;
mod rules_cmd;
mod tls_flags;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use firetower_manager::{FatalError, Manager, ManagerConfig, RaftTuning};

#[derive(Parser, Debug)]
#[command(
    name = "firetower",
    version,
    about = "Firetower: a distributed real-time push gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a topic manager (Raft groups, gateway link on QUIC, admin API on gRPC).
    Manager(ManagerArgs),
    /// Run a gateway: WebSocket/TCP clients, connected to the managers.
    Gateway(gateway_cmd::GatewayArgs),
    /// Operate a cluster through a manager's admin API.
    Cluster(cluster::ClusterArgs),
    /// Act as a gateway on the manager link (diagnostics and tests).
    Link(link_cmd::LinkArgs),
    /// Create the cluster CA and issue manager, gateway and operator certificates.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// Benchmarks of a running cluster.
    #[command(subcommand)]
    Bench(firetower_bench::BenchCommand),
    /// Start a whole local cluster on loopback, with data under ./.firetower-dev.
    Dev(dev::DevArgs),
    /// Jepsen-style runs: workloads under a nemesis, history checked (needs root, nftables).
    Jepsen(firetower_jepsen::cli::JepsenArgs),
    /// Fault injection on test hosts in network namespaces (needs root, nftables).
    #[command(subcommand)]
    Chaos(firetower_chaos::cli::ChaosCommand),
}

#[derive(clap::Args, Debug)]
struct ManagerArgs {
    /// TOML config file; flags given on the command line override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This manager's id (1 or more), unique in the cluster.
    #[arg(long)]
    id: Option<u64>,
    /// QUIC address (UDP) for Raft and gateways, for example 127.0.0.1:6666.
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// gRPC admin address (TCP), for example 127.0.0.1:6667.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Data directory (write-ahead log, state machine, snapshots).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Refuse to start unless the data directory belongs to this cluster.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) and `GET /healthz` over HTTP on this
    /// address, for example 127.0.0.1:9100. Off unless given (or `metrics` in the config).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Do not fdatasync the write-ahead log (loses acknowledged writes on power loss; tests only).
    #[arg(long)]
    no_fsync: bool,
    /// DELIBERATELY UNSAFE (Jepsen harness self-test only): answer topic reads from the local
    /// state machine without checking leadership, so reads can be stale; publishes look their
    /// subscribers up in a copy of the table up to 3 s old.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// DELIBERATELY UNSAFE (Jepsen harness self-test only): stamp publishes on the word of the
    /// last Raft metrics (no lease, no new term after a restart) and let followers stamp too.
    #[arg(long)]
    unsafe_stale_leadership: bool,
    /// Serve the admin calls that disturb the cluster on purpose (HoldHeartbeats, Campaign)
    /// to operators: for the chaos and Jepsen harnesses only.
    #[arg(long)]
    unsafe_test_hooks: bool,
    /// TLS directory with ca.pem and manager-<id>.pem (made by `firetower certs`).
    #[arg(long, env = "FIRETOWER_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// No certificates: the QUIC port trusts anyone who reaches it and the admin API is
    /// plaintext and open. For experiments only.
    #[arg(long)]
    insecure: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Manager(args) => run_manager(args).await,
            Command::Gateway(args) => gateway_cmd::run(args).await,
            Command::Cluster(cmd) => cluster::run(cmd).await,
            Command::Link(cmd) => link_cmd::run(cmd).await,
            Command::Certs(cmd) => certs_cmd::run(cmd),
            Command::Bench(cmd) => firetower_bench::run(cmd).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Jepsen(args) => firetower_jepsen::cli::run(args).await.map_err(Into::into),
            Command::Chaos(cmd) => firetower_chaos::cli::run(cmd).await.map_err(Into::into),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<FatalError>() {
                Some(_) => ExitCode::from(FatalError::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// What a terminal shows by default: our own `info` and up, and openraft only when it reports
/// an error. openraft warns about routine events of a healthy cluster (a vote that changed
/// while a message was in flight, dozens of times while groups elect their first leaders),
/// which a user cannot act on. `FIRETOWER_LOG` or `RUST_LOG` (an `EnvFilter` string) opens
/// anything, e.g. `RUST_LOG=debug`.
const DEFAULT_LOG_FILTER: &str = "info,openraft=error";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIRETOWER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // `FIRETOWER_LOG_FORMAT=json`: one JSON object per line, for harnesses and log shippers
    // (events that tools read carry a stable `event` field, e.g. the gateway's
    // `session_up` / `session_down`).
    let json = std::env::var("FIRETOWER_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn manager_config(args: ManagerArgs) -> anyhow::Result<ManagerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
            ManagerConfig::from_toml(&text)?
        }
        None => {
            let missing = |flag: &str| {
                anyhow::anyhow!("{flag} is required (or give --config FILE with that value)")
            };
            ManagerConfig {
                id: args.id.ok_or_else(|| missing("--id"))?,
                quic: args.quic.ok_or_else(|| missing("--quic"))?,
                admin: args.admin.ok_or_else(|| missing("--admin"))?,
                data_dir: args.data_dir.clone().ok_or_else(|| missing("--data-dir"))?,
                cluster_id: None,
                raft: RaftTuning::default(),
                metrics: None,
                unsafe_stale_reads: false,
                unsafe_stale_leadership: false,
                tls: Default::default(),
                unsafe_test_hooks: false,
            }
        }
    };
    if args.tls_dir.is_some() && args.insecure {
        anyhow::bail!("both --tls-dir and --insecure given: choose one");
    }
    if args.tls_dir.is_some() {
        config.tls.dir = args.tls_dir;
        config.tls.insecure = false;
    }
    if args.insecure {
        config.tls.insecure = true;
        config.tls.dir = None;
    }
    if args.unsafe_test_hooks {
        config.unsafe_test_hooks = true;
        tracing::warn!(
            "UNSAFE: --unsafe-test-hooks serves HoldHeartbeats and Campaign to operators"
        );
    }
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(quic) = args.quic {
        config.quic = quic;
    }
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.cluster_id.is_some() {
        config.cluster_id = args.cluster_id;
    }
    if args.metrics.is_some() {
        config.metrics = args.metrics;
    }
    if args.no_fsync {
        config.raft.fsync = false;
    }
    if args.unsafe_stale_reads {
        config.unsafe_stale_reads = true;
        tracing::warn!("UNSAFE: --unsafe-stale-reads serves stale topic reads (harness self-test)");
    }
    if args.unsafe_stale_leadership {
        config.unsafe_stale_leadership = true;
        tracing::warn!(
            "UNSAFE: --unsafe-stale-leadership stamps publishes without a lease (harness self-test)"
        );
    }
    config.validate()?;
    Ok(config)
}

/// How long a manager that cannot go on keeps answering health checks (NOT_SERVING, 503)
/// before it exits: long enough for a load balancer's or orchestrator's next probe.
const FATAL_GRACE: Duration = Duration::from_secs(1);
/// The shutdown after a fatal failure waits no longer than this for the Raft groups: on a
/// failing disk some may never answer.
const FATAL_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

async fn run_manager(args: ManagerArgs) -> anyhow::Result<()> {
    let config = manager_config(args)?;
    let manager = Manager::start(config).await?;
    tokio::select! {
        () = wait_for_shutdown_signal() => {
            tracing::info!("shutting down");
            manager.shutdown().await;
            Ok(())
        }
        fatal = manager.fatal() => {
            tokio::time::sleep(FATAL_GRACE).await;
            let _ = tokio::time::timeout(FATAL_SHUTDOWN_LIMIT, manager.shutdown()).await;
            Err(fatal.into())
        }
    }
}

/// Resolve on Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
