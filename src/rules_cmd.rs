//! `cluster history ...` and `cluster presence ...`: the rules group 0 keeps for topic
//! patterns (docs/operators.md).

use std::time::Duration;

use anyhow::anyhow;
use clap::Subcommand;
use firetower_proto::admin::{ListRulesRequest, SetRuleRequest};
use serde::Serialize;

use crate::grpc_error::status;
use crate::operator_cmd::{client, parse_duration};

/// `cluster history ...`.
#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// Keep the last `--size` messages of every topic matching PATTERN, each for `--ttl`:
    /// publishes to them are stored by a quorum before they are acknowledged, and clients
    /// can recover what they missed.
    Set {
        /// A topic, or a prefix ending in `*` (`chat.*`).
        pattern: String,
        /// Messages kept per topic.
        #[arg(long)]
        size: u32,
        /// How long a message is kept: `30s`, `15m`, `2h`, `7d`.
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
    },
    /// The history rules.
    List {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Stop keeping history for PATTERN (messages kept so far age out).
    Remove {
        /// The rule's pattern.
        pattern: String,
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
    },
}

/// `cluster presence ...`.
#[derive(Subcommand, Debug)]
pub enum PresenceCommand {
    /// Track who is present on the topics matching PATTERN.
    Enable {
        /// A topic, or a prefix ending in `*`.
        pattern: String,
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
    },
    /// Stop tracking presence for PATTERN.
    Disable {
        /// The rule's pattern.
        pattern: String,
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
    },
    /// The presence patterns.
    List {
        /// Admin address of any manager of the cluster.
        #[arg(long)]
        admin: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `history list --json`.
#[derive(Serialize)]
struct HistoryView {
    history: Vec<HistoryRuleView>,
}

#[derive(Serialize)]
struct HistoryRuleView {
    pattern: String,
    size: u32,
    ttl_ms: u64,
}

/// `presence list --json`.
#[derive(Serialize)]
struct PresenceView {
    presence: Vec<String>,
}

async fn set(
    admin: &str,
    request: SetRuleRequest,
    security: &firetower_link::Security,
) -> anyhow::Result<u64> {
    firetower_proto::validate_pattern(&request.pattern)
        .map_err(|e| anyhow!("pattern {:?}: {e}", request.pattern))?;
    Ok(client(admin, security)
        .await?
        .set_rule(request)
        .await
        .map_err(status)?
        .into_inner()
        .index)
}

/// A rule without parameters: presence on or off, or a history rule removed.
async fn switch(
    admin: &str,
    kind: &str,
    pattern: &str,
    remove: bool,
    security: &firetower_link::Security,
) -> anyhow::Result<u64> {
    let request = SetRuleRequest {
        kind: kind.into(),
        pattern: pattern.into(),
        remove,
        ..SetRuleRequest::default()
    };
    set(admin, request, security).await
}

async fn list(
    admin: &str,
    security: &firetower_link::Security,
) -> anyhow::Result<firetower_proto::admin::ListRulesReply> {
    Ok(client(admin, security)
        .await?
        .list_rules(ListRulesRequest {})
        .await
        .map_err(status)?
        .into_inner())
}

pub async fn history(
    command: HistoryCommand,
    security: &firetower_link::Security,
) -> anyhow::Result<()> {
    match command {
        HistoryCommand::Set {
            pattern,
            size,
            ttl,
            admin,
        } => {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            if size == 0 || ttl_ms == 0 {
                return Err(anyhow!("--size and --ttl must be above zero"));
            }
            let request = SetRuleRequest {
                kind: "history".into(),
                pattern: pattern.clone(),
                size,
                ttl_ms,
                remove: false,
            };
            set(&admin, request, security).await?;
            println!("history for {pattern}: the last {size} messages, each for {ttl:?}");
        }
        HistoryCommand::Remove { pattern, admin } => {
            switch(&admin, "history", &pattern, true, security).await?;
            println!("history for {pattern} removed");
        }
        HistoryCommand::List { admin, json } => {
            let reply = list(&admin, security).await?;
            let history: Vec<HistoryRuleView> = reply
                .history
                .into_iter()
                .map(|r| HistoryRuleView {
                    pattern: r.pattern,
                    size: r.size,
                    ttl_ms: r.ttl_ms,
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string(&HistoryView { history })?);
            } else if history.is_empty() {
                println!("no history rules");
            } else {
                for r in &history {
                    println!(
                        "{}  size {}  ttl {:?}",
                        r.pattern,
                        r.size,
                        Duration::from_millis(r.ttl_ms)
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn presence(
    command: PresenceCommand,
    security: &firetower_link::Security,
) -> anyhow::Result<()> {
    match command {
        PresenceCommand::Enable { pattern, admin } => {
            switch(&admin, "presence", &pattern, false, security).await?;
            println!("presence on for {pattern}");
        }
        PresenceCommand::Disable { pattern, admin } => {
            switch(&admin, "presence", &pattern, true, security).await?;
            println!("presence off for {pattern}");
        }
        PresenceCommand::List { admin, json } => {
            let reply = list(&admin, security).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&PresenceView {
                        presence: reply.presence
                    })?
                );
            } else if reply.presence.is_empty() {
                println!("no presence patterns");
            } else {
                for p in &reply.presence {
                    println!("{p}");
                }
            }
        }
    }
    Ok(())
}
