//! Gateway sessions on a manager: the long-lived stream each gateway keeps to each manager,
//! which carries deliveries (manager → gateway) and heartbeats and delivery acks back.
//!
//! ```text
//!  gateway ── OpenSession{epoch, lease} ──▶ manager: register SessionHandle, make sure every
//!          ◀── SessionOpened ───────────            group led here has the session in its
//!          ◀── Delivery{dseq} ...                   table (ExpireSession old epoch, then
//!          ── Heartbeat / DeliveryAck{upto} ──▶     OpenSession), Resync if it had none
//! ```
//!
//! Operator controls ride on the same stream (operators.rs): the writer sends group 0's ban
//! list when the session opens and whenever it changes (straight to the stream, in chunks,
//! not through the byte-bounded queue: a long list is shared by every session, not copied
//! into each queue), kicks and connection queries go through the queue, and heartbeats bring
//! the gateway's figures, `Connections` frames its answers.
//!
//! The lease task of each group leader drops (ExpireSession) the subscriptions of a gateway
//! that has not been heard from for its lease, and registers sessions of connected gateways
//! in groups it started to lead. A gateway told to `Resync` re-sends the topics it holds.

use std::time::{Duration, Instant};

use firetower_link::{
    decode_body, encode_frame, gateway_frame_limit, read_link_frame_limited, FrameError,
    ReadFrameError, MAX_CONNECTIONS_FRAME_BYTES,
};
use firetower_proto::link::{
    gateway_frame, session_frame, Failure, GatewayFrame, OpenSession, Resync, SessionFrame,
    SessionOpened,
};
use firetower_proto::{Epoch, GatewayId};
use firetower_raft::{Command, GroupId, Response};
use std::collections::{HashMap, HashSet};
use tokio::sync::watch;

use crate::controls::QueryAnswer;
use crate::leases::HeldSession;
use crate::node::Node;
use crate::session_table::{Outgoing, SessionHandle};

/// Shortest lease a gateway may ask for.
const MIN_LEASE: Duration = Duration::from_millis(1_000);
/// Longest lease a gateway may ask for.
const MAX_LEASE: Duration = Duration::from_secs(300);
/// How long subscriptions of a gateway without any session outlive their first sight by a
/// group leader: the gateways' default lease.
const ORPHAN_LEASE: Duration = Duration::from_secs(5);
/// How often the lease task looks at every group this manager leads.
const LEASE_TICK: Duration = Duration::from_millis(250);
/// How long a refused session's refusal may take to write (the peer may not read it).
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The QUIC application code of a session stream the manager closed (`STOP_SENDING`).
const SESSION_CLOSED_CODE: quinn::VarInt = quinn::VarInt::from_u32(1);

/// Serve one session stream until it closes.
pub(crate) async fn serve_session(
    node: Node,
    gateway: GatewayId,
    open: OpenSession,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let lease = Duration::from_millis(open.lease_ms).clamp(MIN_LEASE, MAX_LEASE);
    let epoch = Epoch(open.epoch);
    let sessions = node.sessions();
    let (acked_tx, acked_rx) = watch::channel(0u64);
    let opened = sessions.open(
        gateway,
        epoch,
        lease,
        recorded_epoch(&node, gateway),
        acked_rx,
    );
    let (handle, mut rx) = match opened {
        Ok(opened) => opened,
        Err(refusal) => {
            tracing::info!(
                gateway = gateway.get(),
                epoch = epoch.get(),
                error = %refusal,
                "gateway session refused"
            );
            let frame = SessionFrame {
                frame: Some(session_frame::Frame::Failure(Failure {
                    code: refusal.code().to_string(),
                    message: refusal.to_string(),
                })),
            };
            let _ =
                tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, send.write_all(&encode_frame(&frame)))
                    .await;
            let _ = send.finish();
            return;
        }
    };
    tracing::info!(
        gateway = gateway.get(),
        epoch = epoch.get(),
        ?lease,
        "gateway session opened"
    );

    // Register the session in every group led here before saying it is open, so the gateway
    // never subscribes in a group whose table would later expire an older epoch under it.
    let mut fresh = Vec::new();
    for group in node.led_groups() {
        if let Ok(true) = ensure_session(&node, group, &handle).await {
            fresh.push(group.get());
        }
    }
    handle.send_control(session_frame::Frame::Opened(SessionOpened {
        epoch: epoch.get(),
    }));
    if !fresh.is_empty() {
        handle.send_control(session_frame::Frame::Resync(Resync { groups: fresh }));
    }
    handle.send_control(routing_frame(&node));
    crate::operators::send_recent_kicks(&node, &handle);

    let writer_handle = handle.clone();
    let mut bans = node.ban_frames();
    // The current list goes out first thing (after what is queued above, if the select
    // picks the queue first; the gateway holds a list back until it trusts the routing).
    bans.mark_changed();
    let writer = tokio::spawn(async move {
        let mut bans_open = true;
        loop {
            let frame = tokio::select! {
                _ = writer_handle.closing() => break,
                f = rx.recv() => f,
                changed = bans.changed(), if bans_open => {
                    if changed.is_err() {
                        bans_open = false;
                        continue;
                    }
                    let list = bans.borrow_and_update().clone();
                    let Some(list) = list else { continue };
                    let mut failed = false;
                    for chunk in &list.frames {
                        let wrote = tokio::select! {
                            _ = writer_handle.closing() => Err(None),
                            w = send.write_all(chunk) => w.map_err(Some),
                        };
                        if wrote.is_err() {
                            failed = true;
                            break;
                        }
                        rx.progress();
                    }
                    if failed {
                        break;
                    }
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            let wrote = tokio::select! {
                _ = writer_handle.closing() => break,
                w = write_outgoing(&mut send, &frame) => w,
            };
            if wrote.is_err() {
                break;
            }
            rx.written(&frame);
        }
        // Closed by the manager (replaced, stalled) or by the gateway: either way the frames
        // still queued are dropped with `rx`, and the gateway sees its stream reset.
        let _ = send.reset(SESSION_CLOSED_CODE);
    });
    let mut routing_version = node.routing_version();
    let reader_sessions = node.clone();
    let routing_handle = handle.clone();
    let routing_node = node.clone();
    let routing_task = tokio::spawn(async move {
        while routing_version.changed().await.is_ok() {
            if !routing_handle.send_control(routing_frame(&routing_node)) {
                break;
            }
        }
    });
    loop {
        // A gateway heartbeats several times per lease: a stream silent for a whole lease is
        // dead or hostile, and is closed (its lease then runs as for any dropped stream).
        let read = tokio::select! {
            _ = handle.closing() => {
                tracing::info!(
                    gateway = gateway.get(),
                    epoch = epoch.get(),
                    queued = handle.queued_bytes(),
                    event = "session_closed_by_manager",
                    "closing the gateway session: replaced by a newer one, or not reading its \
                     deliveries"
                );
                break;
            }
            r = tokio::time::timeout(lease, read_gateway_frame(&mut recv)) => r,
        };
        match read {
            Ok(Ok(Some(frame))) => {
                reader_sessions.sessions().touch(gateway, epoch);
                match frame.frame {
                    Some(gateway_frame::Frame::Heartbeat(hb)) => {
                        if let Some(stats) = hb.stats {
                            reader_sessions.stats_book().record(gateway, stats);
                        }
                    }
                    Some(gateway_frame::Frame::Connections(answer)) => {
                        reader_sessions.queries().answer(
                            answer.query,
                            QueryAnswer {
                                gateway,
                                connections: answer.connections,
                                truncated: answer.truncated,
                            },
                        );
                    }
                    Some(gateway_frame::Frame::Ack(ack)) => {
                        // Recorded before the ack is published, so a waiter that sees the ack
                        // also sees whether its delivery was superseded.
                        if !ack.superseded.is_empty() {
                            handle.record_superseded(&ack.superseded);
                        }
                        acked_tx.send_if_modified(|v| {
                            if ack.upto > *v {
                                *v = ack.upto;
                                true
                            } else {
                                false
                            }
                        });
                    }
                    None => {}
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(
                    gateway = gateway.get(),
                    error = %e,
                    "gateway session stream failed"
                );
                break;
            }
            Err(_) => {
                tracing::info!(
                    gateway = gateway.get(),
                    ?lease,
                    "gateway session silent for a whole lease; closing it"
                );
                break;
            }
        }
    }
    // Closing the handle ends the writer, which resets the stream.
    sessions.close(&handle);
    if sessions.get(gateway).is_none() {
        node.stats_book().forget(gateway);
    }
    routing_task.abort();
    let _ = writer.await;
    let _ = recv.stop(SESSION_CLOSED_CODE);
    tracing::info!(gateway = gateway.get(), "gateway session closed");
}

async fn write_outgoing(
    send: &mut quinn::SendStream,
    frame: &Outgoing,
) -> Result<(), quinn::WriteError> {
    send.write_all(&frame.head).await?;
    if !frame.payload.is_empty() {
        send.write_all(&frame.payload).await?;
    }
    Ok(())
}

/// The newest epoch of `gateway` recorded in the tables of the groups led here.
fn recorded_epoch(node: &Node, gateway: GatewayId) -> Option<Epoch> {
    node.led_groups()
        .into_iter()
        .filter_map(|group| node.reader(group))
        .filter_map(|reader| reader.session(gateway.get()).ok().flatten())
        .map(|s| Epoch(s.epoch))
        .max()
}

fn routing_frame(node: &Node) -> session_frame::Frame {
    session_frame::Frame::Routing(crate::replies::routing(node))
}

/// Why the gateway's side of a session stream could not be read (the session ends).
#[derive(Debug, thiserror::Error)]
enum SessionReadError {
    /// The stream failed or broke the framing.
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    /// A frame is not a `GatewayFrame`.
    #[error(transparent)]
    Decode(#[from] FrameError),
}

async fn read_gateway_frame(
    recv: &mut quinn::RecvStream,
) -> Result<Option<GatewayFrame>, SessionReadError> {
    match read_link_frame_limited(recv, MAX_CONNECTIONS_FRAME_BYTES, gateway_frame_limit).await? {
        None => Ok(None),
        Some(body) => Ok(Some(decode_body(&body)?)),
    }
}

/// Why a session could not be registered or expired in a group (the lease task retries at
/// its next tick).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The group is not started on this manager (or stopped).
    #[error("group {0} is not running here")]
    GroupNotRunning(GroupId),
    /// The group's table could not be read.
    #[error("reading the session table: {0}")]
    Table(#[from] firetower_store::StoreError),
    /// The gateway reconnected with an epoch older than the one its table holds.
    #[error("gateway {gateway} came back with epoch {epoch} below the recorded {recorded}")]
    EpochBelowRecorded {
        /// The gateway.
        gateway: GatewayId,
        /// The epoch it came back with.
        epoch: Epoch,
        /// The epoch the table holds.
        recorded: Epoch,
    },
    /// The state machine refused the command.
    #[error("refused: {0}")]
    Refused(String),
    /// Raft did not take the command (not leader any more, stopping).
    #[error("{0}")]
    Raft(String),
    /// No commit within the proposal timeout.
    #[error("proposal timed out")]
    Timeout,
}

/// Make sure group `group` (led here) records this session's epoch. Returns true when it had
/// to register it (the gateway had no session with this epoch there: its subscriptions in the
/// group, if any, were dropped with the old epoch and must be re-sent).
async fn ensure_session(
    node: &Node,
    group: GroupId,
    handle: &SessionHandle,
) -> Result<bool, SessionError> {
    let reader = node
        .reader(group)
        .ok_or(SessionError::GroupNotRunning(group))?;
    let raft = node
        .raft(group)
        .ok_or(SessionError::GroupNotRunning(group))?;
    // The store keeps raw numbers: converted here, at its edge.
    let stored = reader
        .session(handle.gateway.get())?
        .map(|s| Epoch(s.epoch));
    if stored == Some(handle.epoch) {
        return Ok(false);
    }
    if let Some(old) = stored {
        if old > handle.epoch {
            return Err(SessionError::EpochBelowRecorded {
                gateway: handle.gateway,
                epoch: handle.epoch,
                recorded: old,
            });
        }
        propose(&raft, expire_session(handle.gateway, old)).await?;
    }
    propose(
        &raft,
        Command::OpenSession {
            gateway: handle.gateway.get(),
            epoch: handle.epoch.get(),
            lease_ms: handle.lease.as_millis() as u64,
        },
    )
    .await?;
    Ok(true)
}

/// The command that drops `gateway`'s session `epoch` and its subscriptions from a group.
pub(crate) fn expire_session(gateway: GatewayId, epoch: Epoch) -> Command {
    Command::ExpireSession {
        gateway: gateway.get(),
        epoch: epoch.get(),
    }
}

/// The command that drops every subscription of `gateway` in a group if, when it applies, the
/// group holds no session of it: registering epoch 0 succeeds only when no session is
/// recorded (any real epoch is higher), and expiring epoch 0 then removes it with every
/// subscription; a session registered meanwhile refuses the first and ignores the second.
fn drop_orphan(gateway: GatewayId) -> Command {
    Command::Batch(vec![
        Command::OpenSession {
            gateway: gateway.get(),
            epoch: 0,
            lease_ms: ORPHAN_LEASE.as_millis() as u64,
        },
        expire_session(gateway, Epoch(0)),
    ])
}

async fn propose(raft: &firetower_raft::Raft, command: Command) -> Result<(), SessionError> {
    match tokio::time::timeout(Duration::from_secs(5), raft.client_write(command)).await {
        Ok(Ok(r)) => match r.data {
            Response::Refused { reason } => Err(SessionError::Refused(reason)),
            _ => Ok(()),
        },
        Ok(Err(e)) => Err(SessionError::Raft(e.to_string())),
        Err(_) => Err(SessionError::Timeout),
    }
}

/// The lease task: runs for the life of the manager.
pub(crate) fn spawn_lease_task(node: Node) {
    tokio::spawn(async move {
        let shutdown = node.shutdown_token();
        let mut leader_since: HashMap<GroupId, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(LEASE_TICK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let led = node.led_groups();
            leader_since.retain(|g, _| led.contains(g));
            for group in led {
                let since = *leader_since.entry(group).or_insert_with(Instant::now);
                if let Err(e) = lease_round(&node, group, since).await {
                    tracing::debug!(group = group.get(), error = %e, "lease round");
                }
            }
        }
    });
}

async fn lease_round(node: &Node, group: GroupId, since: Instant) -> Result<(), SessionError> {
    let reader = node
        .reader(group)
        .ok_or(SessionError::GroupNotRunning(group))?;
    let raft = node
        .raft(group)
        .ok_or(SessionError::GroupNotRunning(group))?;
    let sessions = node.sessions();
    let now = Instant::now();
    // Expire sessions not heard from within their lease (see leases.rs for when a lease
    // starts to run).
    let table: Vec<HeldSession> = reader
        .sessions()?
        .into_iter()
        .map(|(gateway, session)| HeldSession {
            gateway: GatewayId(gateway),
            epoch: Epoch(session.epoch),
            lease: Duration::from_millis(session.lease_ms),
        })
        .collect();
    for due in sessions.due(since, &table, now) {
        tracing::info!(
            group = group.get(),
            gateway = due.gateway.get(),
            epoch = due.epoch.get(),
            "gateway lease expired"
        );
        propose(&raft, expire_session(due.gateway, due.epoch)).await?;
        sessions.expired(due.gateway, due.epoch);
    }
    // Drop the subscriptions of gateways with no session in the table and none here.
    let recorded: HashSet<u64> = table.iter().map(|s| s.gateway.get()).collect();
    let orphans: Vec<GatewayId> = reader
        .subscribed_gateways()?
        .into_iter()
        .filter(|g| !recorded.contains(g))
        .map(GatewayId)
        .filter(|g| sessions.get(*g).is_none())
        .collect();
    for orphan in sessions.orphans_due(group, since, &orphans, ORPHAN_LEASE, now) {
        tracing::info!(
            group = group.get(),
            gateway = orphan.get(),
            event = "orphan_subscriptions_dropped",
            "dropping the subscriptions of a gateway without a session"
        );
        propose(&raft, drop_orphan(orphan)).await?;
    }
    // Register connected gateways that this group does not know with their epoch.
    for handle in sessions.live() {
        if ensure_session(node, group, &handle).await? {
            handle.send_control(session_frame::Frame::Resync(Resync {
                groups: vec![group.get()],
            }));
        }
    }
    Ok(())
}
