//! `firetower chaos ...`: the command-line face of this crate.
//!
//! ```text
//! firetower chaos run leader-kill-loop [--cycles 5]   availability under repeated faults
//! firetower chaos run rolling-restart
//! firetower chaos run reconnect-storm [--clients 2000] [--topics 50] [--faults 3]
//! firetower chaos up [--hold-secs S]                  a cluster on test hosts, until Ctrl-C
//! firetower chaos cleanup                             remove leftovers of crashed runs
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::cluster::{Cluster, ClusterSpec};
use crate::net::HostSpec;
use crate::report::{Scenario, ScenarioOptions};
use crate::scenario::run_scenario;
use crate::storm::{StormConfig, DEFAULT_CLIENTS, DEFAULT_TOPICS};
use crate::ChaosError;

/// `firetower chaos` subcommands.
#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// Run a named availability scenario and report how long each fault made subscribing
    /// and publishing unavailable (median over the faults). reconnect-storm also reports how
    /// long the crashed gateway's clients took to come back, and fails (status 1, after the
    /// report) when a client did not come back or missed a message.
    Run {
        /// The scenario.
        #[arg(value_enum)]
        scenario: Scenario,
        /// How many faults (leader-kill-loop: 5, reconnect-storm: 3) or rounds
        /// (rolling-restart: 5).
        #[arg(long, visible_alias = "faults")]
        cycles: Option<usize>,
        /// WebSocket clients, spread over both gateways (reconnect-storm).
        #[arg(long, default_value_t = DEFAULT_CLIENTS)]
        clients: usize,
        /// Topics, one per client, each with clients on both gateways (reconnect-storm).
        #[arg(long, default_value_t = DEFAULT_TOPICS)]
        topics: usize,
        /// Quiet time after each fault, in milliseconds.
        #[arg(long, default_value_t = 2_000)]
        settle_ms: u64,
        /// Directory for logs and report.json (default: chaos-results/SCENARIO-UNIXTIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Run the cluster without certificates (every process with `--insecure`), to compare
        /// with the default mutual-TLS run.
        #[arg(long)]
        insecure: bool,
    },
    /// Start a cluster on test hosts (namespaces) and keep it until Ctrl-C or --hold-secs.
    Up {
        /// Managers.
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Stop after this many seconds (0: until Ctrl-C or SIGTERM).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
        /// Data and logs (default: a fresh directory under the system temp dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove namespaces and processes left by crashed runs (their pid is dead).
    Cleanup,
    /// Internal: the availability probe, run inside the client namespace.
    #[command(hide = true)]
    Probe {
        /// QUIC addresses of the managers, comma separated.
        #[arg(long)]
        managers: String,
        /// The topic to write and publish to.
        #[arg(long)]
        topic: String,
        /// The gateway id to act as.
        #[arg(long, default_value_t = 900)]
        gateway: u64,
        /// The cluster's TLS directory (`gateway-<id>.pem`).
        #[arg(long, conflicts_with = "insecure")]
        tls_dir: Option<std::path::PathBuf>,
        /// Against an `--insecure` cluster (also when no `--tls-dir` is given).
        #[arg(long)]
        insecure: bool,
        /// Pause between operations, ms.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// The harness's t0 (ms since the Unix epoch), so times line up.
        #[arg(long)]
        t0_unix_ms: f64,
    },
    /// Internal: the reconnect-storm clients, run inside the client namespace.
    #[command(hide = true)]
    Storm {
        /// WebSocket addresses of the gateways, comma separated (the last one carries the
        /// probe publisher and the post-storm check).
        #[arg(long)]
        gateways: String,
        /// Clients.
        #[arg(long, default_value_t = DEFAULT_CLIENTS)]
        clients: usize,
        /// Topics.
        #[arg(long, default_value_t = DEFAULT_TOPICS)]
        topics: usize,
        /// Pause between probe publishes, ms.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Seed of the reconnect jitter.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The harness's t0 (ms since the Unix epoch), so times line up.
        #[arg(long)]
        t0_unix_ms: f64,
    },
}

/// Run a `firetower chaos` command. Ctrl-C and SIGTERM tear down every test host first.
pub async fn run(command: ChaosCommand) -> Result<(), ChaosError> {
    match command {
        ChaosCommand::Probe {
            managers,
            topic,
            gateway,
            interval_ms,
            t0_unix_ms,
            tls_dir,
            insecure,
        } => {
            let managers = parse_addrs(&managers)?;
            let security = firetower_link::Security::from_flags(
                tls_dir.as_deref(),
                insecure || tls_dir.is_none(),
                &firetower_link::Role::Gateway(gateway),
            )
            .map_err(crate::probe::ProbeError::Tls)?;
            crate::probe::run_probe(
                managers,
                topic,
                gateway,
                security,
                Duration::from_millis(interval_ms),
                t0_unix_ms,
            )
            .await
            .map_err(ChaosError::from)
        }
        ChaosCommand::Storm {
            gateways,
            clients,
            topics,
            interval_ms,
            seed,
            t0_unix_ms,
        } => {
            let config = StormConfig {
                gateways: parse_addrs(&gateways)?,
                clients,
                topics,
                interval: Duration::from_millis(interval_ms),
                t0_unix_ms,
                seed,
            };
            crate::storm::run_worker(config)
                .await
                .map_err(ChaosError::from)
        }
        ChaosCommand::Cleanup => {
            let removed = crate::net::remove_leftovers();
            println!("removed {} leftover run(s): {removed:?}", removed.len());
            Ok(())
        }
        ChaosCommand::Run {
            scenario,
            cycles,
            clients,
            topics,
            settle_ms,
            out,
            json,
            insecure,
        } => {
            spawn_signal_cleanup();
            let run_dir = out.unwrap_or_else(|| {
                PathBuf::from("chaos-results").join(format!(
                    "{}-{}",
                    scenario_name(scenario),
                    crate::probe::unix_ms() as u64 / 1000
                ))
            });
            let options = ScenarioOptions {
                binary: current_binary()?,
                run_dir: run_dir.clone(),
                cycles: cycles.unwrap_or_else(|| scenario.default_cycles()),
                settle: Duration::from_millis(settle_ms),
                clients,
                topics,
                insecure,
            };
            let report = tokio::task::spawn_blocking(move || run_scenario(scenario, &options))
                .await
                .map_err(|e| ChaosError::InvalidFault(format!("scenario task: {e}")))??;
            let _ = std::fs::remove_dir_all(run_dir.join("data"));
            let text = serde_json::to_string_pretty(&report).unwrap_or_default();
            let path = run_dir.join("report.json");
            std::fs::write(&path, &text).map_err(|e| ChaosError::io(&path, e))?;
            if json {
                println!("{text}");
            } else {
                print!("{}", report.table());
                println!("report: {}", path.display());
            }
            match report.storm.as_ref().map(|s| s.errors.len()) {
                Some(n) if n > 0 => Err(ChaosError::CheckFailed(format!(
                    "{n} error(s); see the errors in {}",
                    path.display()
                ))),
                _ => Ok(()),
            }
        }
        ChaosCommand::Up {
            managers,
            hold_secs,
            out,
        } => {
            spawn_signal_cleanup();
            let run_dir = out.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("firetower-chaos-up-{}", std::process::id()))
            });
            let mut spec = ClusterSpec::new(current_binary()?, run_dir.clone());
            spec.hosts = HostSpec {
                managers,
                gateways: 0,
                clients: 1,
            };
            spec.initial_managers = managers;
            let cluster = tokio::task::spawn_blocking(move || Cluster::start(spec))
                .await
                .map_err(|e| ChaosError::InvalidFault(format!("start task: {e}")))??;
            println!("prefix {}", cluster.net().run_id().prefix());
            for h in cluster.net().hosts() {
                println!("{} {} {}", h.name, h.ns, h.ip);
            }
            println!("ready");
            if hold_secs == 0 {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(Duration::from_secs(hold_secs)).await;
            }
            drop(cluster);
            let _ = std::fs::remove_dir_all(&run_dir);
            Ok(())
        }
    }
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::LeaderKillLoop => "leader-kill-loop",
        Scenario::RollingRestart => "rolling-restart",
        Scenario::ReconnectStorm => "reconnect-storm",
    }
}

/// The running `firetower` binary (the harness drives the same build it is part of).
pub fn current_binary() -> Result<PathBuf, ChaosError> {
    std::env::current_exe().map_err(|e| ChaosError::io("/proc/self/exe", e))
}

/// Parse `a:p,b:q`.
pub fn parse_addrs(list: &str) -> Result<Vec<SocketAddr>, ChaosError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| ChaosError::Parse {
                command: "address list".into(),
                message: format!("{s:?} is not host:port"),
            })
        })
        .collect()
}

/// On Ctrl-C or SIGTERM: kill every process and delete every namespace of this process's
/// runs, then exit with status 130. Needs a tokio runtime.
pub fn spawn_signal_cleanup() {
    tokio::spawn(async {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
        eprintln!("interrupted: removing the test hosts of this run");
        crate::net::cleanup_active_runs();
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: ChaosCommand,
    }

    /// The probe takes the flags `Cluster::tls_args` gives every process, secure or not.
    #[test]
    fn the_probe_takes_either_tls_flag_a_cluster_passes() {
        for tls in [vec!["--tls-dir", "/tmp/tls"], vec!["--insecure"]] {
            let mut args = vec![
                "chaos",
                "probe",
                "--managers",
                "10.0.0.1:6666",
                "--topic",
                "t",
                "--t0-unix-ms",
                "1",
            ];
            args.extend(&tls);
            let parsed = Cli::try_parse_from(&args);
            assert!(parsed.is_ok(), "{tls:?}: {:?}", parsed.err());
        }
        let both = Cli::try_parse_from([
            "chaos",
            "probe",
            "--managers",
            "10.0.0.1:6666",
            "--topic",
            "t",
            "--t0-unix-ms",
            "1",
            "--insecure",
            "--tls-dir",
            "/tmp/tls",
        ]);
        assert!(both.is_err(), "both flags at once are refused");
    }

    #[test]
    fn run_takes_insecure() {
        let parsed = Cli::try_parse_from(["chaos", "run", "leader-kill-loop", "--insecure"]);
        assert!(
            matches!(
                parsed,
                Ok(Cli {
                    command: ChaosCommand::Run { insecure: true, .. }
                })
            ),
            "{parsed:?}"
        );
    }
}
