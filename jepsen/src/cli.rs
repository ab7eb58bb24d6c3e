//! `firetower jepsen ...`.
//!
//! ```text
//! firetower jepsen run --workload subscriptions --nemesis partition,kill --time-limit 60 --seed 1
//! firetower jepsen check DIR            re-check DIR/history.jsonl, rewrite the verdict
//! ```
//!
//! Exit status: 0 when the history is valid; 1 when it is not (or the checker could not
//! decide, or the run failed).

use std::path::PathBuf;

use clap::Subcommand;

use crate::runner::RunConfig;
use crate::verdict::Validity;
use crate::JepsenError;

/// `firetower jepsen`.
#[derive(clap::Args, Debug)]
pub struct JepsenArgs {
    #[command(subcommand)]
    command: JepsenCommand,
}

#[derive(Subcommand, Debug)]
enum JepsenCommand {
    /// Run a workload under a nemesis schedule, check the history, write a report directory.
    Run(RunArgs),
    /// Check an existing run directory again (history.jsonl), rewriting verdict and plots.
    Check {
        /// The run directory.
        dir: PathBuf,
        /// The workload of that history (subscriptions, delivery or membership).
        #[arg(long, default_value = "subscriptions")]
        workload: String,
    },
    /// Internal: the client processes, run inside the client namespace.
    #[command(hide = true)]
    Worker {
        /// The worker configuration (JSON).
        #[arg(long)]
        config: String,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// subscriptions (linearizable gateway sets per topic), delivery (real gateways and
    /// WebSocket clients: exactly-once, ordered delivery of acknowledged publishes) or
    /// membership (subscriptions while managers are added and removed; the changes are
    /// checked too).
    #[arg(long, default_value = "subscriptions")]
    workload: String,
    /// Comma-separated faults: partition, partition-leader, bridge, one-way, kill, pause,
    /// restart, wipe, wal-corrupt, membership; or none.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// Seconds of client operations; the last --recovery seconds are fault-free.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of every random choice (clients, keys, faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Quiet seconds between faults.
    #[arg(long, default_value_t = 3.0)]
    quiet: f64,
    /// Seconds each fault is held before it is healed.
    #[arg(long, default_value_t = 6.0)]
    fault: f64,
    /// Fault-free seconds at the end of the run.
    #[arg(long, default_value_t = 6.0)]
    recovery: f64,
    /// Operations per topic before a fresh topic is used.
    #[arg(long, default_value_t = 80)]
    ops_per_key: usize,
    /// Run the managers with --unsafe-stale-reads (followers answer topic reads from their
    /// own copy). A correct harness reports the history as invalid.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Run the managers with --unsafe-stale-leadership (publishes stamped without a lease;
    /// followers stamp too). A correct delivery checker reports the history as invalid.
    #[arg(long)]
    unsafe_stale_leadership: bool,
    /// Report directory (default: jepsen-results/WORKLOAD-SEED-UNIXTIME).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run a `firetower jepsen` command. Ctrl-C and SIGTERM remove every test host first.
pub async fn run(args: JepsenArgs) -> Result<(), JepsenError> {
    match args.command {
        JepsenCommand::Worker { config } => {
            let config = serde_json::from_str(&config)
                .map_err(|e| JepsenError::Usage(format!("worker config: {e}")))?;
            run_worker(config).await
        }
        JepsenCommand::Check { dir, workload } => {
            let history = crate::history::read_jsonl(&dir.join("history.jsonl"))?;
            let verdict = crate::check::check(&workload, &history)?;
            crate::check::write_report(&dir, &history, &verdict, &workload)?;
            print!("{}", verdict.text());
            outcome(&dir, verdict.valid, verdict.anomalies.len())
        }
        JepsenCommand::Run(a) => {
            firetower_chaos::cli::spawn_signal_cleanup();
            let nemeses = crate::nemesis::parse_list(&a.nemesis)?;
            if !["subscriptions", "delivery", "membership"].contains(&a.workload.as_str()) {
                return Err(JepsenError::Usage(format!(
                    "unknown workload {:?}; expected subscriptions, delivery or membership",
                    a.workload
                )));
            }
            if a.concurrency == 0 {
                return Err(JepsenError::Usage(
                    "--concurrency must be at least 1".into(),
                ));
            }
            let out = a.out.unwrap_or_else(|| {
                PathBuf::from("jepsen-results").join(format!(
                    "{}-{}-{}",
                    a.workload,
                    a.seed,
                    firetower_chaos::unix_ms() as u64 / 1000
                ))
            });
            let config = RunConfig {
                workload: a.workload,
                nemeses,
                time_limit_secs: a.time_limit,
                seed: a.seed,
                concurrency: a.concurrency,
                quiet_secs: a.quiet,
                fault_secs: a.fault,
                recovery_secs: a.recovery,
                ops_per_key: a.ops_per_key,
                unsafe_stale_reads: a.unsafe_stale_reads,
                unsafe_stale_leadership: a.unsafe_stale_leadership,
                out: out.clone(),
                binary: firetower_chaos::cli::current_binary()?,
            };
            let verdict = tokio::task::spawn_blocking(move || crate::runner::run(&config))
                .await
                .map_err(|e| JepsenError::Worker(format!("run task: {e}")))??;
            print!("{}", verdict.text());
            println!("report: {}", out.display());
            outcome(&out, verdict.valid, verdict.anomalies.len())
        }
    }
}

fn outcome(dir: &std::path::Path, valid: Validity, anomalies: usize) -> Result<(), JepsenError> {
    match valid {
        Validity::Valid => Ok(()),
        Validity::Invalid => Err(JepsenError::Invalid {
            dir: dir.to_path_buf(),
            anomalies,
        }),
        Validity::Unknown => Err(JepsenError::Unknown {
            dir: dir.to_path_buf(),
        }),
    }
}

/// Run one worker process: print history lines until the time limit. The dispatch sits here,
/// above the workloads, so `worker` (shared worker plumbing and the subscriptions workload)
/// and `delivery` (which uses that plumbing) do not depend on each other both ways.
async fn run_worker(config: crate::worker::WorkerConfig) -> Result<(), JepsenError> {
    match config.workload.as_str() {
        "subscriptions" => crate::worker::run_subscriptions(config).await,
        "delivery" => crate::delivery::run_delivery_worker(config).await,
        other => Err(JepsenError::Usage(format!("unknown workload {other:?}"))),
    }
}
