//! `firetower cluster ...`: operator commands over the admin gRPC API.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use firetower_link::Role;
use firetower_proto::admin::{
    AddManagerRequest, InitRequest, MembersReply, MembersRequest, RemoveManagerRequest,
    TopicInfoRequest, TransferLeaderRequest,
};
use firetower_proto::MembersView;
use serde_json::json;

use crate::tls_flags::TlsFlags;

/// How long an operator command waits for the cluster. Adding a manager waits for it to
/// catch up in every group, which can take a while on a big table.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// `firetower cluster [--tls-dir DIR] [--operator NAME] <command>`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    tls: TlsFlags,
    /// The operator certificate to present: DIR/operator-NAME.pem.
    #[arg(long, global = true, default_value = firetower_link::certs::DEFAULT_OPERATOR)]
    operator: String,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Form a new cluster from running managers that belong to none.
    Init {
        /// Admin address of the manager that runs the init (it becomes a member).
        #[arg(long)]
        admin: String,
        /// Admin address of another manager to include (repeat the flag).
        #[arg(long = "member")]
        members: Vec<String>,
        /// Number of Raft groups the topic space is split into, fixed for the cluster's life.
        #[arg(long, default_value_t = firetower_manager::DEFAULT_GROUPS)]
        groups: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the managers and, per group, the leader, term, voters, learners and progress.
    Members {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Add a running manager that belongs to no cluster: learner in every group, then voter.
    Add {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Admin address of the manager to add.
        #[arg(long = "new")]
        new_admin: String,
    },
    /// Remove a manager from every group. Stop its process afterwards.
    Remove {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Id of the manager to remove.
        #[arg(long)]
        id: u64,
    },
    /// Move the leadership of a group to another voter.
    TransferLeader {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// The group.
        #[arg(long)]
        group: u32,
        /// Id of the manager that should lead it.
        #[arg(long)]
        to: u64,
    },
    /// Close every connection of a user on every gateway (code 4403), within a second.
    Kick {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
    },
    /// Ban users, IP ranges or topic patterns on every gateway (committed in group 0).
    Ban {
        #[command(subcommand)]
        command: crate::operator_cmd::BanCommand,
    },
    /// History rules: which topics keep their last messages for recovery (group 0).
    History {
        #[command(subcommand)]
        command: crate::rules_cmd::HistoryCommand,
    },
    /// Presence rules: on which topics the cluster tracks who is present (group 0).
    Presence {
        #[command(subcommand)]
        command: crate::rules_cmd::PresenceCommand,
    },
    /// Connections, subscriptions and message rates per gateway; topics and commit rates
    /// per group.
    Stats {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Where a user is connected: gateway, remote address, since when, topics.
    Connections {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show the gateways subscribed to a topic (a linearizable read).
    Topic {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// The topic.
        topic: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    if !firetower_link::identity::valid_operator_name(&args.operator) {
        return Err(anyhow!(
            "--operator {:?} is not an operator name",
            args.operator
        ));
    }
    let security = args.tls.security(&Role::Operator(args.operator.clone()))?;
    let connect_admin = |admin: &str, timeout: Duration| {
        let admin = admin.to_owned();
        let security = security.clone();
        async move { firetower_manager::connect_admin(&admin, &security, timeout).await }
    };
    match args.command {
        ClusterCommand::Kick { admin, user } => {
            crate::operator_cmd::kick(&admin, user, &security).await?;
        }
        ClusterCommand::Ban { command } => {
            crate::operator_cmd::ban(command, &security).await?;
        }
        ClusterCommand::History { command } => {
            crate::rules_cmd::history(command, &security).await?;
        }
        ClusterCommand::Presence { command } => {
            crate::rules_cmd::presence(command, &security).await?;
        }
        ClusterCommand::Stats { admin, json } => {
            crate::operator_cmd::stats(&admin, json, &security).await?;
        }
        ClusterCommand::Connections { admin, user, json } => {
            crate::operator_cmd::connections(&admin, user, json, &security).await?;
        }
        ClusterCommand::Init {
            admin,
            members,
            groups,
            json,
        } => {
            if groups == 0 || groups > firetower_manager::MAX_GROUPS {
                return Err(anyhow!(
                    "--groups must be within 1..={}",
                    firetower_manager::MAX_GROUPS
                ));
            }
            let mut client = connect_admin(&admin, CALL_TIMEOUT).await.map_err(status)?;
            let reply = client
                .init(InitRequest { members, groups })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                let managers: Vec<_> = reply
                    .managers
                    .iter()
                    .map(|m| json!({"id": m.id, "quic": m.quic, "admin": m.admin}))
                    .collect();
                println!(
                    "{}",
                    json!({"cluster_id": reply.cluster_id, "groups": reply.groups, "managers": managers})
                );
            } else {
                println!(
                    "cluster {} formed: {} managers, {} groups",
                    reply.cluster_id,
                    reply.managers.len(),
                    reply.groups
                );
                for m in &reply.managers {
                    println!("  manager {} quic={} admin={}", m.id, m.quic, m.admin);
                }
            }
        }
        ClusterCommand::Members { admin, json } => {
            let mut client = connect_admin(&admin, Duration::from_secs(10))
                .await
                .map_err(status)?;
            let reply = client
                .members(MembersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!("{}", members_json(&reply));
            } else {
                print_members(&reply);
            }
        }
        ClusterCommand::Add { admin, new_admin } => {
            let mut client = connect_admin(&admin, CALL_TIMEOUT).await.map_err(status)?;
            let reply = client
                .add_manager(AddManagerRequest {
                    admin: new_admin.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let m = reply
                .manager
                .ok_or_else(|| anyhow!("the manager answered without the added member"))?;
            println!(
                "manager {} ({}) is now a voter in every group",
                m.id, m.admin
            );
        }
        ClusterCommand::Remove { admin, id } => {
            let mut client = connect_admin(&admin, CALL_TIMEOUT).await.map_err(status)?;
            client
                .remove_manager(RemoveManagerRequest { id })
                .await
                .map_err(status)?;
            println!("manager {id} removed from every group; stop its process now");
        }
        ClusterCommand::TransferLeader { admin, group, to } => {
            let mut client = connect_admin(&admin, CALL_TIMEOUT).await.map_err(status)?;
            let reply = client
                .transfer_leader(TransferLeaderRequest { group, to })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "group {group} is led by manager {} (term {})",
                reply.leader, reply.term
            );
        }
        ClusterCommand::Topic { admin, topic, json } => {
            let mut client = connect_admin(&admin, Duration::from_secs(30))
                .await
                .map_err(status)?;
            let reply = client
                .topic_info(TopicInfoRequest { topic })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"topic": reply.topic, "group": reply.group, "leader": reply.leader, "gateways": reply.gateways})
                );
            } else {
                println!(
                    "topic {:?}: group {}, leader {}, gateways {:?}",
                    reply.topic, reply.group, reply.leader, reply.gateways
                );
            }
        }
    }
    Ok(())
}

pub use crate::grpc_error::status;

/// The `cluster members --json` object (see docs/operations.md for the fields).
pub fn members_json(reply: &MembersReply) -> serde_json::Value {
    serde_json::to_value(MembersView::from(reply)).expect("a MembersView always serialises")
}

fn print_members(reply: &MembersReply) {
    println!("cluster {}", reply.cluster_id);
    println!("{:>4}  {:<22} {:<22} reachable", "id", "quic", "admin");
    for m in &reply.managers {
        println!(
            "{:>4}  {:<22} {:<22} {}",
            m.id,
            m.quic,
            m.admin,
            if m.reachable { "yes" } else { "NO" }
        );
    }
    println!();
    println!(
        "{:>5} {:>6} {:>6} {:<12} {:<10} {:>10} {:>10}",
        "group", "leader", "term", "voters", "learners", "committed", "applied"
    );
    for g in &reply.groups {
        let leader = if g.leader == 0 {
            "-".to_string()
        } else {
            g.leader.to_string()
        };
        println!(
            "{:>5} {:>6} {:>6} {:<12} {:<10} {:>10} {:>10}",
            g.id,
            leader,
            g.term,
            join(&g.voters),
            join(&g.learners),
            g.committed,
            g.applied
        );
    }
}

fn join(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse `a,b,c` into addresses, with a message naming the bad one.
pub fn parse_addr_list(list: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("{s:?} is not an address like 127.0.0.1:6666"))
        })
        .collect()
}
