//! Firetower's load generator and the peer systems it is measured against, behind
//! `firetower bench ...`. The binary parses [`BenchCommand`] and hands it to [`run`]; nothing
//! else is public.
//!
//! ```text
//!   bench commits     subscription commits through the manager link (QUIC), fsync on
//!   bench etcd-puts   the same shape of write against etcd over gRPC (the etcd-client crate)
//!   bench fanout      one topic, N WebSocket subscribers, one publisher
//!   bench latency     the same at a steady deliveries/s rate, percentiles
//!   bench topics      many topics, one subscriber connection each
//!   bench idle        N idle connections, resident memory per connection
//! ```
//!
//! Modules: `commits` (the control-plane run against Firetower managers), `loadgen` (the
//! WebSocket scenarios, the peers `--system nats|redis|node-ws`, and etcd).
//!
//! What it does not do: start or stop any server (scripts/bench/compare.sh does), or assert on
//! timing. Numbers it prints are measurements for docs/benchmarks.md. It drives the built
//! binary's servers from outside, over the network, and links no server crate (manager, raft,
//! store).

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod commits;
mod link_flood;
mod loadgen;

use clap::Subcommand;

/// `firetower bench ...`: benchmarks against a running cluster (or a peer system).
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Subscription commits through the manager link: throughput and commit latency for each
    /// number of concurrent writers.
    Commits(commits::CommitsArgs),
    /// WebSocket fan-out through a gateway: one topic, N subscribers, one publisher;
    /// deliveries per second, publish→deliver latency, server CPU and RSS.
    Fanout(loadgen::FanoutArgs),
    /// Publish→deliver latency percentiles at a steady deliveries/s rate.
    Latency(loadgen::LatencyArgs),
    /// Idle WebSocket connections over one or more gateways: resident memory per connection.
    Idle(loadgen::IdleArgs),
    /// Many small topics: one subscriber connection per topic, a closed loop per topic;
    /// deliveries per second, latency, server CPU and RSS.
    Topics(loadgen::TopicsArgs),
    /// etcd puts over gRPC (the etcd-client crate), the control-plane peer of `commits`:
    /// puts/s and put latency for each number of concurrent writers, and how long writing
    /// stopped.
    EtcdPuts(loadgen::EtcdPutsArgs),
    /// Hostile load on the managers over the link, their resident memory sampled throughout:
    /// one publish to each of many distinct topics, and gateway sessions that stop reading
    /// while publishes to their topics keep coming.
    LinkFlood(link_flood::LinkFloodArgs),
}

/// Run one `firetower bench` subcommand to completion, printing its results on stdout.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Commits(args) => commits::commits(args).await,
        BenchCommand::Fanout(args) => loadgen::fanout(args).await,
        BenchCommand::Latency(args) => loadgen::latency(args).await,
        BenchCommand::Idle(args) => loadgen::idle(args).await,
        BenchCommand::Topics(args) => loadgen::topics(args).await,
        BenchCommand::EtcdPuts(args) => loadgen::etcd_puts(args).await,
        BenchCommand::LinkFlood(args) => link_flood::link_flood(args).await,
    }
}
