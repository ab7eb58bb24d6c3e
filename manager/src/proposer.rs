//! Batching of proposals: the concurrent subscription writes of one group become one Raft
//! entry (`Command::Batch`), so one replication round trip and one fsync on each replica serve
//! them all.
//!
//! ```text
//!   link requests ─▶ mpsc ─▶ proposer task: take one, drain what else is waiting (≤ MAX_BATCH)
//!                                  │  up to MAX_IN_FLIGHT batches in Raft at once
//!                                  ▼
//!                      client_write(Batch[..]) ─▶ responses split back to each caller
//! ```
//!
//! With few writers a batch holds one command and adds no delay; under load batches grow by
//! themselves while earlier ones are in flight.
//!
//! Fast path: when nothing waits in the queue and a batch slot is free, the caller proposes
//! its command itself, in its own task, saving the hops through the proposer task (three task
//! wake-ups, a measurable share of a commit's latency when a group is quiet). Under load the
//! slots are taken or the queue is not empty, and proposals batch as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firetower_raft::{Command, GroupId, ManagerNode, Raft, Response};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::ManagerMetrics;

/// Most commands in one entry. Keeps an entry well below the Raft frame limit.
const MAX_BATCH: usize = 1_024;
/// Batches of one group in Raft at once; more pending proposals wait and batch up.
const MAX_IN_FLIGHT: usize = 8;
/// Proposals waiting for a batch before callers are pushed back.
const QUEUE: usize = 65_536;

/// Why a proposal did not commit.
#[derive(Debug, Clone)]
pub(crate) enum ProposeError {
    /// This manager does not lead the group; the leader, if known.
    NotLeader(Option<(u64, ManagerNode)>),
    /// No commit within the timeout: the write may or may not take effect.
    Timeout,
    /// The group is stopped or failed.
    Unavailable(String),
}

/// A committed proposal: its response and log index.
pub(crate) type Committed = (Response, u64);

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Committed, ProposeError>>,
}

/// The proposal queue of one group.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<Pending>,
    writer: EntryWriter,
    in_flight: Arc<Semaphore>,
}

/// Writes one entry of a group and counts it in the metrics.
#[derive(Clone)]
struct EntryWriter {
    group: GroupId,
    raft: Raft,
    timeout: Duration,
    metrics: Arc<ManagerMetrics>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer")
            .field("queued", &(QUEUE - self.tx.capacity()))
            .field("group", &self.writer.group.get())
            .field("free_slots", &self.in_flight.available_permits())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Proposer {
    /// Start the proposer task of a group.
    pub(crate) fn spawn(
        group: GroupId,
        raft: Raft,
        timeout: Duration,
        metrics: Arc<ManagerMetrics>,
    ) -> Proposer {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let writer = EntryWriter {
            group,
            raft,
            timeout,
            metrics,
        };
        let proposer = Proposer {
            tx,
            writer: writer.clone(),
            in_flight: in_flight.clone(),
        };
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a slot first: proposals arriving meanwhile join this batch.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let writer = writer.clone();
                tokio::spawn(async move {
                    commit_batch(&writer, batch).await;
                    drop(permit);
                });
            }
        });
        proposer
    }

    /// Propose one command and wait for it to commit and apply.
    pub(crate) async fn propose(&self, command: Command) -> Result<Committed, ProposeError> {
        if self.tx.capacity() == QUEUE {
            if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
                let result = self.writer.write(command, 1).await;
                drop(permit);
                return result;
            }
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| ProposeError::Unavailable("the group's proposer stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Unavailable("the group's proposer stopped".into()))?
    }
}

impl EntryWriter {
    /// One Raft entry carrying `commands` callers' commands: write it and wait for it to be
    /// applied.
    async fn write(&self, command: Command, commands: u64) -> Result<Committed, ProposeError> {
        self.metrics.proposed(self.group, commands);
        let started = Instant::now();
        let result = write(&self.raft, command, self.timeout).await;
        if result.is_ok() {
            self.metrics
                .committed(self.group, commands, started.elapsed());
        }
        result
    }
}

/// One Raft entry: write it and wait for it to be applied.
async fn write(
    raft: &Raft,
    command: Command,
    timeout: Duration,
) -> Result<Committed, ProposeError> {
    match tokio::time::timeout(timeout, raft.client_write(command)).await {
        Err(_) => Err(ProposeError::Timeout),
        Ok(Ok(r)) => Ok((r.data, r.log_id.index)),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ProposeError::NotLeader(f.leader_id.zip(f.leader_node)))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ProposeError::Unavailable(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(ProposeError::Unavailable(e.to_string())),
    }
}

async fn commit_batch(writer: &EntryWriter, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let single = commands.len() == 1;
    let count = commands.len() as u64;
    let command = if single {
        // One element: a batch of one would only add framing.
        commands
            .into_iter()
            .next()
            .unwrap_or(Command::Batch(Vec::new()))
    } else {
        Command::Batch(commands)
    };
    let outcome = writer.write(command, count).await;
    match outcome {
        Ok((Response::Batch(responses), index)) if !single && responses.len() == replies.len() => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok((response, index)));
            }
        }
        Ok((response, index)) if single => {
            for reply in replies {
                let _ = reply.send(Ok((response.clone(), index)));
            }
        }
        Ok((other, _)) => {
            let e = ProposeError::Unavailable(format!("unexpected response {other:?}"));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
