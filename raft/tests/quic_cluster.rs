//! Raft over the QUIC transport, end to end on loopback: three managers replicating two groups
//! over one connection per peer, leader failover when a manager's endpoint goes away, snapshot
//! streaming to a new learner, and the refusals of the server side (cluster id, group, frames).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::{raft_config, wait_leader, TestNode};
use firetower_raft::wire::{self, RequestHeader, RequestKind};
use firetower_raft::{
    client_config, Command, GroupId, ManagerId, ManagerNode, PeerConnections, QuicNetworkFactory,
    Rejection, ALPN_RAFT,
};
use openraft::error::{RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{LogId, Vote};

const CLUSTER: &str = "cluster-test";
const GROUPS: [GroupId; 2] = [GroupId(0), GroupId(1)];
const WAIT: Duration = Duration::from_secs(15);

fn members(nodes: &[TestNode]) -> BTreeMap<ManagerId, ManagerNode> {
    nodes.iter().map(|n| (n.id, n.node())).collect()
}

fn node(nodes: &[TestNode], id: ManagerId) -> &TestNode {
    nodes.iter().find(|n| n.id == id).expect("known node")
}

/// Writes through the current leader of `group` as seen by the `live` nodes, retrying while
/// leadership moves. Returns the index of the entry.
async fn write(
    nodes: &[TestNode],
    live: &[ManagerId],
    group: GroupId,
    command: Command,
) -> anyhow::Result<u64> {
    let mut last_error = None;
    for _ in 0..100 {
        let observer = node(nodes, live[0]).raft(group);
        let leader = observer.metrics().borrow().current_leader;
        if let Some(leader) = leader.filter(|l| live.contains(l)) {
            match node(nodes, leader)
                .raft(group)
                .client_write(command.clone())
                .await
            {
                Ok(response) => return Ok(response.log_id.index),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no leader accepted the write to group {group}: {last_error:?}")
}

/// Waits until every node in `live` has applied `index` of `group`.
async fn wait_applied(
    nodes: &[TestNode],
    live: &[ManagerId],
    group: GroupId,
    index: u64,
) -> anyhow::Result<()> {
    for id in live {
        node(nodes, *id)
            .raft(group)
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "entry replicated")
            .await
            .with_context(|| format!("manager {id} group {group} did not apply {index}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_two_groups_and_fail_over() -> anyhow::Result<()> {
    let config = raft_config();
    let mut nodes: Vec<TestNode> = (1..=3).map(|id| TestNode::start(id, CLUSTER)).collect();
    for n in &mut nodes {
        n.start_groups(GROUPS, config.clone()).await;
    }
    let members = members(&nodes);
    // Different managers initialize different groups, as `cluster init` may.
    for group in GROUPS {
        nodes[group.get() as usize % nodes.len()]
            .raft(group)
            .initialize(members.clone())
            .await?;
    }
    let all: Vec<ManagerId> = vec![1, 2, 3];
    for group in GROUPS {
        wait_leader(&nodes[0].raft(group), |_| true, WAIT).await?;
    }

    // Writes reach every replica of every group over the shared connections.
    for group in GROUPS {
        let topic = format!("room.{group}");
        let mut index = 0;
        for gateway in 1..=3 {
            let command = Command::Subscribe {
                topic: topic.clone(),
                gateway,
            };
            index = write(&nodes, &all, group, command).await?;
        }
        wait_applied(&nodes, &all, group, index).await?;
        for n in &nodes {
            assert_eq!(
                n.subscribers(group, &topic),
                BTreeSet::from([1, 2, 3]),
                "manager {}",
                n.id
            );
        }
    }

    // The leader of group 0 loses its endpoint: the other two elect a new leader and go on.
    let old = wait_leader(&nodes[0].raft(GroupId(0)), |_| true, WAIT).await?;
    node(&nodes, old).close_endpoint();
    let survivors: Vec<ManagerId> = all.iter().copied().filter(|id| *id != old).collect();
    for group in GROUPS {
        let new = wait_leader(
            &node(&nodes, survivors[0]).raft(group),
            move |l| l != old,
            WAIT,
        )
        .await?;
        assert_ne!(new, old);
        let topic = format!("room.{group}");
        let index = write(
            &nodes,
            &survivors,
            group,
            Command::Subscribe {
                topic: topic.clone(),
                gateway: 4,
            },
        )
        .await?;
        wait_applied(&nodes, &survivors, group, index).await?;
        for id in &survivors {
            assert_eq!(
                node(&nodes, *id).subscribers(group, &topic),
                BTreeSet::from([1, 2, 3, 4]),
                "manager {id}"
            );
        }
    }

    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_streamed_in_chunks_to_a_new_learner() -> anyhow::Result<()> {
    let config = openraft::Config {
        // Many small chunks, so the chunked install_snapshot path is really exercised.
        snapshot_max_chunk_size: 256,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..(*raft_config()).clone()
    };
    let config = Arc::new(config.validate()?);
    let mut nodes: Vec<TestNode> = (1..=2).map(|id| TestNode::start(id, CLUSTER)).collect();
    nodes[0].start_groups([GroupId(0)], config.clone()).await;
    let leader = nodes[0].raft(GroupId(0));
    leader
        .initialize(BTreeMap::from([(1, nodes[0].node())]))
        .await?;
    wait_leader(&leader, |l| l == 1, WAIT).await?;
    let mut last = 0;
    for gateway in 0..40 {
        let response = leader
            .client_write(Command::Subscribe {
                topic: format!("topic.{gateway}"),
                gateway,
            })
            .await?;
        last = response.log_id.index;
    }
    leader.trigger().snapshot().await?;
    leader
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p: LogId<ManagerId>| p.index >= last),
            "snapshot taken and log purged",
        )
        .await?;

    // The learner can only catch up through the snapshot: the log before it is gone.
    nodes[1].start_groups([GroupId(0)], config.clone()).await;
    leader.add_learner(2, nodes[1].node(), true).await?;
    let learner = nodes[1].raft(GroupId(0));
    learner
        .wait(Some(WAIT))
        .applied_index_at_least(Some(last), "learner caught up")
        .await?;
    assert!(
        learner.metrics().borrow().snapshot.is_some(),
        "caught up without a snapshot"
    );
    for gateway in 0..40 {
        assert_eq!(
            nodes[1].subscribers(GroupId(0), &format!("topic.{gateway}")),
            BTreeSet::from([gateway])
        );
    }

    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// How a test vote RPC failed.
#[derive(Debug, thiserror::Error)]
enum VoteError {
    /// The peer could not be reached, or refused the request before openraft saw it.
    #[error("unreachable: {0}")]
    Unreachable(Unreachable),
    /// Any other RPC failure.
    #[error("other: {0}")]
    Other(RPCError<ManagerId, ManagerNode, RaftError<ManagerId>>),
}

/// A vote RPC from a `client` manager to group 0 of `server`, through the real network factory.
async fn vote(
    client: &PeerConnections,
    server: &TestNode,
    group: GroupId,
) -> Result<(), VoteError> {
    let mut factory = QuicNetworkFactory::new(group, client.clone());
    let mut network = factory.new_client(server.id, &server.node()).await;
    let request = VoteRequest::new(Vote::new(1, 99), None);
    match network.vote(request, RPCOption::new(WAIT)).await {
        Ok(_) => Ok(()),
        Err(RPCError::Unreachable(e)) => Err(VoteError::Unreachable(e)),
        Err(e) => Err(VoteError::Other(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_cluster_are_refused() -> anyhow::Result<()> {
    let config = raft_config();
    let mut server = TestNode::start(1, "");
    server.start_groups([GroupId(0)], config).await;
    let client_node = TestNode::start(99, "alpha");
    // Refusals come back on a working connection, so they never put the peer in backoff.
    let peers = PeerConnections::new(client_node.endpoint.clone(), "alpha".into());

    // Not in a cluster yet: everything is refused.
    let error = vote(&peers, &server, GroupId(0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("unreachable") && error.contains("not joined a cluster"),
        "{error}"
    );

    // In another cluster: refused, without saying which cluster the server is in.
    server.cluster_id.send_replace("beta".into());
    let error = vote(&peers, &server, GroupId(0))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("unreachable"), "{error}");
    assert!(error.contains("belongs to another cluster"), "{error}");
    assert!(!error.contains("beta"), "the cluster id leaked: {error}");

    // Same cluster, but a group the server does not host.
    server.cluster_id.send_replace("alpha".into());
    let error = vote(&peers, &server, GroupId(7))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("group 7 is not hosted"), "{error}");

    // Same cluster, hosted group: served by openraft.
    vote(&peers, &server, GroupId(0)).await?;

    client_node.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// The refusal in a raw reply frame. The reply is `Result<_, Rejection>`; an `Err` decodes the
/// same whatever the `Ok` type.
fn rejection(reply: &[u8]) -> anyhow::Result<Rejection> {
    let decoded: Result<(), Rejection> = wire::decode_frame(reply)?;
    decoded.err().context("expected a refusal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_fail_only_their_own_stream() -> anyhow::Result<()> {
    let mut server = TestNode::start(1, CLUSTER);
    server.start_groups([GroupId(0)], raft_config()).await;
    let client_node = TestNode::start(2, CLUSTER);
    let conn = client_node
        .endpoint
        .connect_with(
            client_config(ALPN_RAFT, &firetower_link::Security::Insecure).unwrap(),
            server.addr,
            "firetower",
        )?
        .await?;

    // A header length prefix beyond the limit: refused, nothing is allocated.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&u32::MAX.to_be_bytes()).await?;
    send.finish()?;
    let reply = recv.read_to_end(1 << 20).await?;
    assert_eq!(
        rejection(&reply)?,
        Rejection::HeaderTooLarge {
            len: u32::MAX.into()
        }
    );

    // A well-framed header that is not a header: refused with an explanation.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[0, 0, 0, 3, 0xFF, 0xFF, 0xFF]).await?;
    send.finish()?;
    let reply = recv.read_to_end(1 << 20).await?;
    assert!(
        matches!(rejection(&reply)?, Rejection::BadRequest(_)),
        "{reply:?}"
    );

    // A header without a body: the stream is reset.
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = RequestHeader {
        cluster_id: CLUSTER.into(),
        group: GroupId(0),
        kind: RequestKind::Vote,
    };
    send.write_all(&wire::encode(&header)?).await?;
    send.finish()?;
    assert!(
        recv.read_to_end(1 << 20).await.is_err(),
        "a request without a body must reset the stream"
    );

    // A stream closed without a request gets no answer.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.finish()?;
    assert!(recv
        .read_to_end(1 << 20)
        .await
        .map(|b| b.is_empty())
        .unwrap_or(true));

    // The connection and the server are unharmed.
    let peers = PeerConnections::new(client_node.endpoint.clone(), CLUSTER.into());
    vote(&peers, &server, GroupId(0)).await?;
    assert!(conn.close_reason().is_none());

    client_node.shutdown().await;
    server.shutdown().await;
    Ok(())
}
