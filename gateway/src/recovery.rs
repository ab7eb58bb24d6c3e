//! Recovery on subscribe and the `history` op: what a client missed of a history topic,
//! read from the topic's leader and delivered in offset order before anything newer.
//!
//! ```text
//!  subscribe{topics, recover{t: (epoch, offset)}} ─▶ index: subscribe (committed in the cluster)
//!     index acks ─▶ (instead of the ack) every (conn, t) gets a RecoveryBuffer: from now on
//!                   fan-out puts t's live messages for conn there, not in its queue
//!     task: FetchHistory(t, after offset) pages from the leader (read index)
//!           recovered = same epoch and the window still starts at or before offset + 1
//!           ack {recovered} ─▶ queue; recovered pages ─▶ queue, waiting for room
//!     under the state lock: live messages from the buffer with offsets above the last
//!     recovered one ─▶ queue; buffer removed (fan-out writes the queue again)
//! ```
//!
//! Why nothing is lost or doubled: the subscription is committed before the first fetch, so
//! every message appended after that point of the log is delivered live (into the buffer), and
//! every message before it is in what the read index returns; the two overlap, and offsets
//! dedupe the overlap. A buffer holds at most
//! [`crate::shared::RECOVERY_BUFFER_MESSAGES`]; when it overflows its oldest
//! messages go, and the task reads the history again after its last offset before flushing,
//! so the dropped ones (all older than the kept ones, and committed before that read) come
//! from there. After [`MAX_ROUNDS`] such rounds the client is told of a `gap`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firetower_client::{HistoryItem, Position, ServerFrame};

use crate::index::ConnId;
use crate::locks::lock;
use crate::queue::PushOutcome;
use crate::shared::{spawn_guarded, ConnCtx, RecoveryBuffer, Shared, State};
use crate::upstream::{HistoryPage, UpstreamError};

/// Read-again rounds after a buffer overflowed, before a `gap` is reported instead.
const MAX_ROUNDS: usize = 4;
/// How long recovery waits for a connection's queue to have room, in all.
const ROOM_WAIT: Duration = Duration::from_secs(30);
/// `history` op: messages answered when the request names no limit, and at most.
const HISTORY_DEFAULT: u32 = 100;
const HISTORY_MAX: u32 = 1_000;

/// Start recovering `recover` for `conn`'s subscribe request `id`, whose topics just committed
/// (called under the state lock, in place of the ack).
pub(crate) fn start(
    shared: &Arc<Shared>,
    state: &mut State,
    conn: ConnId,
    id: u64,
    recover: Vec<(Arc<str>, Position)>,
) {
    for (topic, _) in &recover {
        state
            .recovering
            .insert((conn, topic.clone()), RecoveryBuffer::default());
    }
    let s = shared.clone();
    let topics: Vec<Arc<str>> = recover.iter().map(|(t, _)| t.clone()).collect();
    let on_panic = {
        let s = shared.clone();
        move || {
            let mut state = lock(&s.state);
            for t in &topics {
                state.recovering.remove(&(conn, t.clone()));
            }
        }
    };
    spawn_guarded(shared, run(s, conn, id, recover), on_panic);
}

/// The recovery task of one subscribe request.
async fn run(shared: Arc<Shared>, conn: ConnId, id: u64, recover: Vec<(Arc<str>, Position)>) {
    let Some(ctx) = lock(&shared.state).conns.get(&conn).cloned() else {
        abandon(&shared, conn, &recover);
        return;
    };
    // First pages of every topic, to answer `recovered` before any message.
    let mut firsts = Vec::with_capacity(recover.len());
    for (topic, at) in &recover {
        let page = fetch(&shared, topic, at.offset).await;
        let recovered = match &page {
            Ok(p) => covers(p, at),
            Err(_) => false,
        };
        firsts.push((page.ok(), recovered));
    }
    let answer: Vec<(Arc<str>, bool)> = recover
        .iter()
        .zip(&firsts)
        .map(|((t, _), (_, ok))| (t.clone(), *ok))
        .collect();
    ctx.reply(&ServerFrame::Subscribed {
        id,
        recovered: answer,
    });
    for ((topic, at), (page, recovered)) in recover.iter().zip(firsts) {
        let mut last = at.offset;
        let mut page = if recovered { page } else { None };
        let mut rounds = 0;
        loop {
            // Deliver what was read, then read on while the leader says more follow.
            while let Some(p) = page.take() {
                last = deliver(&shared, &ctx, topic, &p, last).await;
                if p.truncated {
                    page = fetch(&shared, topic, last).await.ok();
                }
            }
            let key = (conn, topic.clone());
            let overflowed = lock(&shared.state)
                .recovering
                .get_mut(&key)
                .map(|b| std::mem::take(&mut b.overflowed))
                .unwrap_or(0);
            if overflowed > 0 && recovered && rounds < MAX_ROUNDS {
                rounds += 1;
                page = fetch(&shared, topic, last).await.ok();
                continue;
            }
            flush(&shared, &ctx, topic, recovered, last, overflowed);
            break;
        }
    }
}

/// Queue the live messages held for `topic` above `last` and let fan-out write the queue
/// again; one `gap` for what the buffer dropped (`lost`, and any drop since).
fn flush(shared: &Shared, ctx: &ConnCtx, topic: &Arc<str>, recovered: bool, last: u64, lost: u64) {
    let mut state = lock(&shared.state);
    let buffer = state
        .recovering
        .remove(&(ctx.id, topic.clone()))
        .unwrap_or_default();
    let dropped = lost + buffer.overflowed;
    if dropped > 0 {
        ctx.reply(&ServerFrame::Gap {
            topic: topic.clone(),
            dropped,
        });
    }
    let now = Instant::now();
    for (offset, frame) in buffer.frames {
        // Offsets at or below the last recovered one were delivered from the history.
        if recovered && offset != 0 && offset <= last {
            continue;
        }
        if ctx.queue.push_message(frame, now) != PushOutcome::Queued {
            state.note_gap(ctx.id, topic);
        }
    }
}

/// Drops the buffers of a request whose connection is gone.
fn abandon(shared: &Shared, conn: ConnId, recover: &[(Arc<str>, Position)]) {
    let mut state = lock(&shared.state);
    for (t, _) in recover {
        state.recovering.remove(&(conn, t.clone()));
    }
}

/// True when `page` holds everything after `at`: the same epoch, and the window still starts
/// at or before the next offset.
fn covers(page: &HistoryPage, at: &Position) -> bool {
    page.enabled
        && !page.epoch.is_empty()
        && page.epoch == at.epoch
        && at.offset <= page.last
        && at.offset.saturating_add(1) >= page.first
}

async fn fetch(shared: &Shared, topic: &str, after: u64) -> Result<HistoryPage, UpstreamError> {
    match tokio::time::timeout(
        shared.config.request_timeout,
        shared.upstream.fetch_history(topic, after, 0),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

/// Queue the page's messages above `last` for `ctx`, waiting for room; the last offset queued.
async fn deliver(
    shared: &Shared,
    ctx: &Arc<ConnCtx>,
    topic: &Arc<str>,
    page: &HistoryPage,
    mut last: u64,
) -> u64 {
    let deadline = Instant::now() + ROOM_WAIT;
    for (offset, term, payload) in &page.messages {
        if *offset <= last {
            continue;
        }
        while ctx.queue.free_messages() == 0 && Instant::now() < deadline {
            if ctx.queue.is_closed() {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let frame = ServerFrame::Message {
            topic: topic.clone(),
            payload: payload.clone(),
            term: *term,
            seq: *offset,
            position: Some(Position {
                epoch: page.epoch.clone(),
                offset: *offset,
            }),
        };
        if ctx
            .queue
            .push_message(ctx.wire.encode(&frame), Instant::now())
            != PushOutcome::Queued
        {
            lock(&shared.state).note_gap(ctx.id, topic);
        }
        last = *offset;
    }
    last
}

/// The `history` op: the newest `limit` kept messages of `topic`, answered on `ctx`.
pub(crate) fn answer_history(
    shared: &Arc<Shared>,
    ctx: Arc<ConnCtx>,
    id: u64,
    topic: Arc<str>,
    limit: u32,
) {
    let s = shared.clone();
    let c = ctx.clone();
    spawn_guarded(
        shared,
        async move {
            let frame = match history(&s, id, &topic, limit).await {
                Ok(f) => f.unwrap_or_else(|| {
                    ServerFrame::error(
                        Some(id),
                        "no_history",
                        format!("no history rule covers {topic:?} (`cluster history set`)"),
                    )
                }),
                Err(e) => ServerFrame::error(Some(id), e.code(), e.to_string()),
            };
            c.reply(&frame);
        },
        move || {
            ctx.reply(&ServerFrame::error(
                Some(id),
                "internal_error",
                "the gateway failed while reading the history; retry",
            ))
        },
    );
}

async fn history(
    shared: &Shared,
    id: u64,
    topic: &Arc<str>,
    limit: u32,
) -> Result<Option<ServerFrame>, UpstreamError> {
    let limit = match limit {
        0 => HISTORY_DEFAULT,
        n => n.min(HISTORY_MAX),
    };
    // Where the window ends first (no messages: after the last possible offset).
    let head = fetch(shared, topic, u64::MAX - 1).await?;
    if !head.enabled {
        return Ok(None);
    }
    let mut after = head
        .last
        .saturating_sub(u64::from(limit))
        .max(head.first.saturating_sub(1));
    let mut messages = Vec::new();
    loop {
        let page = fetch(shared, topic, after).await?;
        let epoch = page.epoch.clone();
        for (offset, term, payload) in page.messages {
            if offset > after && messages.len() < limit as usize {
                after = offset;
                messages.push(HistoryItem {
                    payload,
                    term,
                    offset,
                });
            }
        }
        if !page.truncated || messages.len() >= limit as usize {
            return Ok(Some(ServerFrame::History {
                id,
                topic: topic.clone(),
                epoch,
                offset: page.last,
                messages,
            }));
        }
    }
}
