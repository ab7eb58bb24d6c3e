//! `firetower cluster kick|ban|stats|connections`: operator controls over the admin API.
//! The JSON shapes printed here are contracts (docs/operations.md); they are typed structs,
//! never hand-built objects.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use firetower_proto::admin::admin_client::AdminClient;
use firetower_proto::admin::{
    add_ban_request, AddBanRequest, ConnectionsRequest, KickRequest, ListBansRequest,
    RemoveBanRequest, StatsReply, StatsRequest,
};
use firetower_proto::{Ban, BanTarget, Cidr};
use serde::Serialize;
use tonic::transport::Channel;

use crate::grpc_error::status;

/// How long an operator control waits for the cluster (a commit in group 0, or the gateways'
/// answers to a query, take about a second at most when the cluster is healthy).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

/// `cluster ban ...`.
#[derive(Subcommand, Debug)]
pub enum BanCommand {
    /// Ban a user, an IP range or a topic pattern on every gateway.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false).args(["user", "ip", "topic"])))]
    Add {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Refuse and close every connection of this user id.
        #[arg(long)]
        user: Option<String>,
        /// Refuse and close connections from this address or range (`203.0.113.7`,
        /// `10.0.0.0/8`, `2001:db8::/32`).
        #[arg(long)]
        ip: Option<String>,
        /// Refuse subscribes and publishes to topics matching this pattern (`spam.*`).
        #[arg(long)]
        topic: Option<String>,
        /// Lapse after this long: `30s`, `15m`, `2h`, `7d` (default: until removed).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Why, shown in `ban list` (at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
        /// Print the ban as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a ban by its id (see `ban list`).
    Remove {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// The ban's id.
        id: u64,
    },
    /// Show the bans in force.
    List {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Also the bans whose TTL lapsed (kept until the list fills up).
        #[arg(long)]
        all: bool,
        /// Print one JSON object: `{"bans":[...]}`.
        #[arg(long)]
        json: bool,
    },
}

/// Parse `30s`, `1m`, `2h`, `1d` or `500ms` into a duration above zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: give one of ms, s, m, h, d (say `30s`)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 2h or 7d"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; give one of ms, s, m, h, d"
            ))
        }
    };
    let ms = n
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if ms == 0 {
        return Err("the duration must be above zero".into());
    }
    Ok(Duration::from_millis(ms))
}

/// `cluster stats --json`.
#[derive(Debug, Serialize)]
pub struct StatsView {
    /// Every gateway with a session at the manager asked.
    pub gateways: Vec<GatewayView>,
    /// Every group.
    pub groups: Vec<GroupView>,
    /// Sums over the gateways and groups.
    pub totals: TotalsView,
}

/// One gateway of [`StatsView`].
#[derive(Debug, Serialize)]
pub struct GatewayView {
    /// The gateway's id.
    pub id: u64,
    /// Open client connections.
    pub connections: u64,
    /// (connection, topic) pairs.
    pub subscriptions: u64,
    /// Distinct topics held.
    pub topics: u64,
    /// Client frames received per second (over the last few seconds).
    pub messages_in_per_s: f64,
    /// Messages delivered to clients per second.
    pub messages_out_per_s: f64,
    /// Messages dropped for slow clients since the gateway started.
    pub dropped_total: u64,
}

/// One group of [`StatsView`].
#[derive(Debug, Serialize)]
pub struct GroupView {
    /// The group.
    pub id: u32,
    /// Topics with subscribers.
    pub topics: u64,
    /// Gateways with subscriptions.
    pub gateways: u64,
    /// Entries applied per second.
    pub commits_per_s: f64,
}

/// The `totals` of [`StatsView`].
#[derive(Debug, Serialize)]
pub struct TotalsView {
    /// Gateways reporting.
    pub gateways: u64,
    /// Connections over every gateway.
    pub connections: u64,
    /// Subscriptions over every gateway.
    pub subscriptions: u64,
    /// Topics with subscribers in the cluster (each topic is in one group).
    pub topics: u64,
    /// Client frames received per second, cluster-wide.
    pub messages_in_per_s: f64,
    /// Messages delivered per second, cluster-wide.
    pub messages_out_per_s: f64,
    /// Messages dropped for slow clients, cluster-wide.
    pub dropped_total: u64,
    /// Entries applied per second over every group.
    pub commits_per_s: f64,
}

impl From<&StatsReply> for StatsView {
    fn from(r: &StatsReply) -> Self {
        let gateways: Vec<GatewayView> = r
            .gateways
            .iter()
            .map(|g| GatewayView {
                id: g.id,
                connections: g.connections,
                subscriptions: g.subscriptions,
                topics: g.topics,
                messages_in_per_s: round2(g.messages_in_per_s),
                messages_out_per_s: round2(g.messages_out_per_s),
                dropped_total: g.dropped_total,
            })
            .collect();
        let groups: Vec<GroupView> = r
            .groups
            .iter()
            .map(|g| GroupView {
                id: g.id,
                topics: g.topics,
                gateways: g.gateways,
                commits_per_s: round2(g.commits_per_s),
            })
            .collect();
        let totals = TotalsView {
            gateways: gateways.len() as u64,
            connections: gateways.iter().map(|g| g.connections).sum(),
            subscriptions: gateways.iter().map(|g| g.subscriptions).sum(),
            topics: groups.iter().map(|g| g.topics).sum(),
            messages_in_per_s: round2(gateways.iter().map(|g| g.messages_in_per_s).sum()),
            messages_out_per_s: round2(gateways.iter().map(|g| g.messages_out_per_s).sum()),
            dropped_total: gateways.iter().map(|g| g.dropped_total).sum(),
            commits_per_s: round2(groups.iter().map(|g| g.commits_per_s).sum()),
        };
        StatsView {
            gateways,
            groups,
            totals,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `cluster connections --user U --json`.
#[derive(Debug, Serialize)]
pub struct ConnectionsView {
    /// The user asked about.
    pub user: String,
    /// Where the user is connected.
    pub connections: Vec<ConnectionView>,
    /// Gateways that did not answer in time (their connections are missing).
    pub unanswered: Vec<u64>,
    /// Gateways whose answer was cut short (the user has more connections there).
    pub truncated: Vec<u64>,
}

/// One connection of [`ConnectionsView`].
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    /// The gateway it is on.
    pub gateway: u64,
    /// The gateway's id of the connection.
    pub conn: String,
    /// The client's `ip:port`.
    pub remote: String,
    /// When it connected, Unix milliseconds.
    pub since: u64,
    /// Topics it holds.
    pub topics: Vec<String>,
}

/// `cluster ban list --json`.
#[derive(Debug, Serialize)]
pub struct BansView {
    /// The bans, by id, in `firetower_proto::Ban`'s JSON form.
    pub bans: Vec<Ban>,
}

pub(crate) async fn client(
    admin: &str,
    security: &firetower_link::Security,
) -> anyhow::Result<AdminClient<Channel>> {
    firetower_manager::connect_admin(admin, security, CONTROL_TIMEOUT)
        .await
        .map_err(status)
}

/// `cluster kick --user U`.
pub async fn kick(
    admin: &str,
    user: String,
    security: &firetower_link::Security,
) -> anyhow::Result<()> {
    check_user(&user)?;
    let reply = client(admin, security)
        .await?
        .kick(KickRequest {
            user: user.clone(),
            at_ms: 0,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "kicked {user:?}: every gateway closes its connections opened before {} (4403)",
        reply.at_ms
    );
    Ok(())
}

/// `cluster ban ...`.
pub async fn ban(command: BanCommand, security: &firetower_link::Security) -> anyhow::Result<()> {
    match command {
        BanCommand::Add {
            admin,
            user,
            ip,
            topic,
            ttl,
            reason,
            json,
        } => {
            // Checked here first, so that a mistake is named without a round trip (the
            // manager checks again: nothing bad is ever committed).
            let target = match (user, ip, topic) {
                (Some(u), None, None) => {
                    check_user(&u)?;
                    add_ban_request::Target::User(u)
                }
                (None, Some(ip), None) => {
                    Cidr::parse(&ip).map_err(|e| anyhow!("--ip: {e}"))?;
                    add_ban_request::Target::Ip(ip)
                }
                (None, None, Some(t)) => {
                    BanTarget::Topic(t.clone())
                        .validate()
                        .map_err(|e| anyhow!("--topic: {e}"))?;
                    add_ban_request::Target::Topic(t)
                }
                _ => return Err(anyhow!("give exactly one of --user, --ip, --topic")),
            };
            let ttl_ms = ttl.map(|t| t.as_millis() as u64).unwrap_or(0);
            let reply = client(&admin, security)
                .await?
                .add_ban(AddBanRequest {
                    target: Some(target),
                    ttl_ms,
                    reason,
                    created_ms: 0,
                })
                .await
                .map_err(status)?
                .into_inner();
            let ban: Ban = serde_json::from_str(&reply.ban).with_context(|| {
                format!("the manager answered an unreadable ban {:?}", reply.ban)
            })?;
            if json {
                println!("{}", serde_json::to_string(&ban)?);
            } else {
                println!("ban {} added: {}", ban.id, describe(&ban, now_ms()));
            }
        }
        BanCommand::Remove { admin, id } => {
            client(&admin, security)
                .await?
                .remove_ban(RemoveBanRequest { id })
                .await
                .map_err(status)?;
            println!("ban {id} removed");
        }
        BanCommand::List { admin, all, json } => {
            let reply = client(&admin, security)
                .await?
                .list_bans(ListBansRequest {
                    include_lapsed: all,
                })
                .await
                .map_err(status)?
                .into_inner();
            let bans = reply
                .bans
                .iter()
                .map(|b| {
                    serde_json::from_str::<Ban>(b)
                        .with_context(|| format!("the manager answered an unreadable ban {b:?}"))
                })
                .collect::<anyhow::Result<Vec<Ban>>>()?;
            if json {
                println!("{}", serde_json::to_string(&BansView { bans })?);
            } else if bans.is_empty() {
                println!("no bans");
            } else {
                let now = now_ms();
                for ban in &bans {
                    println!("{:>6}  {}", ban.id, describe(ban, now));
                }
            }
        }
    }
    Ok(())
}

/// `cluster stats`.
pub async fn stats(
    admin: &str,
    json: bool,
    security: &firetower_link::Security,
) -> anyhow::Result<()> {
    let reply = client(admin, security)
        .await?
        .stats(StatsRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let view = StatsView::from(&reply);
    if json {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(());
    }
    println!("as seen by manager {}", reply.manager);
    println!(
        "{:>8} {:>11} {:>13} {:>8} {:>10} {:>11} {:>9}",
        "gateway", "connections", "subscriptions", "topics", "in/s", "out/s", "dropped"
    );
    for g in &view.gateways {
        println!(
            "{:>8} {:>11} {:>13} {:>8} {:>10.1} {:>11.1} {:>9}",
            g.id,
            g.connections,
            g.subscriptions,
            g.topics,
            g.messages_in_per_s,
            g.messages_out_per_s,
            g.dropped_total
        );
    }
    let t = &view.totals;
    println!(
        "{:>8} {:>11} {:>13} {:>8} {:>10.1} {:>11.1} {:>9}",
        "total",
        t.connections,
        t.subscriptions,
        t.topics,
        t.messages_in_per_s,
        t.messages_out_per_s,
        t.dropped_total
    );
    println!();
    println!(
        "{:>5} {:>8} {:>8} {:>10}",
        "group", "topics", "gateways", "commits/s"
    );
    for g in &view.groups {
        println!(
            "{:>5} {:>8} {:>8} {:>10.1}",
            g.id, g.topics, g.gateways, g.commits_per_s
        );
    }
    Ok(())
}

/// `cluster connections --user U`.
pub async fn connections(
    admin: &str,
    user: String,
    json: bool,
    security: &firetower_link::Security,
) -> anyhow::Result<()> {
    check_user(&user)?;
    let reply = client(admin, security)
        .await?
        .connections(ConnectionsRequest { user: user.clone() })
        .await
        .map_err(status)?
        .into_inner();
    let view = ConnectionsView {
        user,
        connections: reply
            .connections
            .into_iter()
            .map(|c| ConnectionView {
                gateway: c.gateway,
                conn: c.conn,
                remote: c.remote,
                since: c.since_ms,
                topics: c.topics,
            })
            .collect(),
        unanswered: reply.unanswered,
        truncated: reply.truncated,
    };
    if json {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(());
    }
    if view.connections.is_empty() {
        println!(
            "{:?} is not connected to any gateway that answered",
            view.user
        );
    }
    let now = now_ms();
    for c in &view.connections {
        println!(
            "gateway {:>4}  {:<22} conn {:<12} for {:<8} topics {}",
            c.gateway,
            c.remote,
            c.conn,
            human_ms(now.saturating_sub(c.since)),
            c.topics.join(",")
        );
    }
    if !view.unanswered.is_empty() {
        println!("no answer in time from gateways {:?}", view.unanswered);
    }
    if !view.truncated.is_empty() {
        println!(
            "more connections than shown on gateways {:?}",
            view.truncated
        );
    }
    Ok(())
}

fn check_user(user: &str) -> anyhow::Result<()> {
    BanTarget::User(user.to_string())
        .validate()
        .map_err(|e| anyhow!("--user: {e}"))
}

fn describe(ban: &Ban, now: u64) -> String {
    let target = match &ban.target {
        BanTarget::User(u) => format!("user {u:?}"),
        BanTarget::Ip(c) => format!("ip {c}"),
        BanTarget::Topic(p) => format!("topic {p:?}"),
    };
    let until = match ban.expires_ms {
        None => "until removed".to_string(),
        Some(e) if e <= now => "lapsed".to_string(),
        Some(e) => format!("for {}", human_ms(e - now)),
    };
    if ban.reason.is_empty() {
        format!("{target}, {until}")
    } else {
        format!("{target}, {until}: {}", ban.reason)
    }
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "30",
            "0s",
            "s",
            "1w",
            "-1s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
