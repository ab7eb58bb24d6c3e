//! Operator controls on a gateway: the ban list and kicks the cluster pushes, the connection
//! queries it asks, and the figures the gateway reports for `cluster stats`.
//!
//! ```text
//!   ControlEvent::Bans   ─▶ Shared::bans replaced; every open connection of a banned user or
//!                            address closed with 4403; subscriptions to banned topics dropped
//!   ControlEvent::Kick   ─▶ the user's connections opened before the kick closed with 4403
//!   ControlEvent::Connections ─▶ where the user is connected here
//!   every second         ─▶ Upstream::report_stats(GatewayStats)
//! ```
//!
//! Bans and kicks reach open connections through their send queues
//! ([`crate::queue::SendQueue::request_close`]), so the connection task closes with the right
//! code whatever it was doing. New connections, subscribes and publishes check the ban list
//! themselves (`connection.rs`), so a ban is in force from the moment it arrives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use firetower_client::ServerFrame;
use firetower_proto::Ban;

use crate::control::{ConnectionInfo, ControlEvent, ControlReceiver, GatewayStats};
use crate::index::ConnId;
use crate::locks::lock;
use crate::metrics::inc;
use crate::session::CLOSE_FORBIDDEN;
use crate::shared::{apply, unix_ms, Shared};

/// How often the gateway reports its figures (and re-checks bans for lapses it must not
/// act on: lapsed bans are simply no longer matched).
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Apply the cluster's control events until the gateway stops.
pub(crate) async fn control_loop(shared: Arc<Shared>, mut controls: ControlReceiver) {
    loop {
        let event = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            e = controls.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        match event {
            ControlEvent::Bans(bans) => apply_bans(&shared, bans),
            ControlEvent::Kick { user, at_ms } => kick(&shared, &user, at_ms),
            ControlEvent::Connections { user, reply } => {
                let _ = reply.send(connections_of(&shared, &user));
            }
            ControlEvent::Presence {
                topic,
                user,
                joined,
            } => crate::shared::presence_event(&shared, &topic, user, joined),
        }
    }
}

/// Take the new ban list and enforce it on open connections.
pub(crate) fn apply_bans(shared: &Arc<Shared>, bans: Arc<Vec<Ban>>) {
    *lock(&shared.bans) = bans.clone();
    let now = unix_ms();
    let active: Vec<&Ban> = bans.iter().filter(|b| b.is_active(now)).collect();
    if active.is_empty() {
        return;
    }
    let mut state = lock(&shared.state);
    let mut drop_topics: Vec<(ConnId, Vec<Arc<str>>)> = Vec::new();
    for (id, ctx) in &state.conns {
        let user = ctx.user.get();
        let banned = active
            .iter()
            .any(|b| b.bans_ip(ctx.remote.ip()) || user.is_some_and(|u| b.bans_user(u)));
        if banned {
            inc(&shared.metrics.operator_closes);
            ctx.queue.request_close(CLOSE_FORBIDDEN, "banned");
            continue;
        }
        let topics: Vec<Arc<str>> = state
            .index
            .topic_names_of(*id)
            .into_iter()
            .filter(|t| active.iter().any(|b| b.bans_topic(t)))
            .collect();
        if !topics.is_empty() {
            drop_topics.push((*id, topics));
        }
    }
    for (id, topics) in drop_topics {
        let effects = state.index.unsubscribe(id, &topics);
        apply(shared, &mut state, effects);
        if let Some(ctx) = state.conns.get(&id) {
            for t in &topics {
                ctx.reply(&ServerFrame::error(
                    None,
                    "forbidden",
                    format!("topic {t:?} was banned by an operator; the subscription is dropped"),
                ));
            }
            ctx.queue.wake();
        }
    }
}

/// Close the connections of `user` that opened before `at_ms`.
pub(crate) fn kick(shared: &Shared, user: &str, at_ms: u64) {
    let state = lock(&shared.state);
    for ctx in state.conns.values() {
        if ctx.user.get().is_some_and(|u| &**u == user) && ctx.since_ms <= at_ms {
            inc(&shared.metrics.operator_closes);
            ctx.queue.request_close(CLOSE_FORBIDDEN, "kicked");
        }
    }
}

/// Where `user` is connected on this gateway.
pub(crate) fn connections_of(shared: &Shared, user: &str) -> Vec<ConnectionInfo> {
    let state = lock(&shared.state);
    let mut out: Vec<ConnectionInfo> = state
        .conns
        .iter()
        .filter(|(_, ctx)| ctx.user.get().is_some_and(|u| &**u == user))
        .map(|(id, ctx)| {
            let mut topics: Vec<String> = state
                .index
                .topic_names_of(*id)
                .iter()
                .map(|t| t.to_string())
                .collect();
            topics.sort();
            ConnectionInfo {
                conn: id.0.to_string(),
                remote: ctx.remote.to_string(),
                since_ms: ctx.since_ms,
                topics,
            }
        })
        .collect();
    out.sort_by(|a, b| a.since_ms.cmp(&b.since_ms).then(a.conn.cmp(&b.conn)));
    out
}

/// The figures of this gateway now.
pub(crate) fn stats(shared: &Shared) -> GatewayStats {
    let m = &shared.metrics;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    GatewayStats {
        connections: g(&m.connections_open),
        subscriptions: g(&m.subscriptions),
        topics: g(&m.topics),
        messages_in_total: g(&m.publishes_in),
        messages_out_total: g(&m.messages_out),
        dropped_total: g(&m.messages_dropped),
    }
}

/// Report the gateway's figures to the upstream every second.
pub(crate) async fn stats_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => shared.upstream.report_stats(stats(&shared)),
        }
    }
}
