//! A peer that speaks the Raft wire but sends absurd values: terms and log ids near `u64::MAX`,
//! snapshot chunks far past what was received. Every case drives a real openraft group through
//! the QUIC server, expects a clear refusal, and then checks that the group still serves.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{raft_config, wait_leader, TestNode};
use firetower_raft::{
    Command, GroupId, ManagerId, ManagerNode, PeerConnections, QuicNetwork, QuicNetworkFactory,
    TypeConfig,
};
use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership,
    Vote,
};

const CLUSTER: &str = "cluster-hostile";
const GROUP: GroupId = GroupId(0);
const WAIT: Duration = Duration::from_secs(15);
/// The id the hostile peer claims; not a member of the group.
const STRANGER: ManagerId = 2;

fn log_id(term: u64, index: u64) -> LogId<ManagerId> {
    LogId::new(CommittedLeaderId::new(term, STRANGER), index)
}

/// A one-manager group that has elected itself, and a client of it from another endpoint.
async fn single_manager_group() -> anyhow::Result<(TestNode, TestNode, QuicNetwork)> {
    let mut server = TestNode::start(1, CLUSTER);
    server.start_groups([GROUP], raft_config()).await;
    server
        .raft(GROUP)
        .initialize(BTreeMap::from([(1, server.node())]))
        .await?;
    wait_leader(&server.raft(GROUP), |l| l == 1, WAIT).await?;
    let client = TestNode::start(STRANGER, CLUSTER);
    let peers = PeerConnections::new(client.endpoint.clone(), CLUSTER.into());
    let network = QuicNetworkFactory::new(GROUP, peers)
        .new_client(server.id, &server.node())
        .await;
    Ok((server, client, network))
}

fn option() -> RPCOption {
    RPCOption::new(WAIT)
}

/// The group survived: it runs, leads again within a few election timeouts, and commits.
async fn assert_still_serving(server: &TestNode) -> anyhow::Result<()> {
    // Give a broken group the time to run into its next election.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let raft = server.raft(GROUP);
    let metrics = raft.metrics().borrow().clone();
    assert!(
        metrics.running_state.is_ok(),
        "the group's Raft task died: {:?}",
        metrics.running_state
    );
    assert!(
        metrics.current_term < u64::MAX / 2,
        "term {}",
        metrics.current_term
    );
    wait_leader(&raft, |l| l == 1, WAIT).await?;
    raft.client_write(Command::Subscribe {
        topic: "after.refusal".into(),
        gateway: 1,
    })
    .await?;
    Ok(())
}

fn heartbeat(vote: Vote<ManagerId>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }
}

/// The text of a refusal: the server's [`firetower_raft::Rejection`] comes back as an
/// unreachable peer (openraft backs off).
fn refusal<E: std::error::Error>(result: Result<impl std::fmt::Debug, RPCError<ManagerId, ManagerNode, E>>) -> String {
    match result {
        Err(RPCError::Unreachable(e)) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_entries_with_a_leader_term_of_u64_max_is_refused() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    let reply = network
        .append_entries(heartbeat(Vote::new_committed(u64::MAX, STRANGER)), option())
        .await;
    let error = refusal(reply);
    assert!(error.contains("term"), "{error}");
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_of_term_u64_max_is_refused() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    let request = VoteRequest::new(
        Vote::new(u64::MAX, STRANGER),
        Some(log_id(u64::MAX, u64::MAX)),
    );
    let error = refusal(network.vote(request, option()).await);
    assert!(error.contains("term"), "{error}");
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_far_beyond_the_current_one_is_refused() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    // Below u64::MAX / 2, but 2^40 elections away from the group's term.
    let error = refusal(
        network
            .append_entries(heartbeat(Vote::new_committed(1 << 40, STRANGER)), option())
            .await,
    );
    assert!(error.contains("term"), "{error}");
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_ids_with_absurd_terms_or_indexes_are_refused() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    let vote = Vote::new_committed(5, STRANGER);
    let blank = |log_id| Entry::<TypeConfig> {
        log_id,
        payload: EntryPayload::Blank,
    };
    let requests = [
        AppendEntriesRequest {
            prev_log_id: Some(log_id(1, u64::MAX)),
            ..heartbeat(vote)
        },
        AppendEntriesRequest {
            prev_log_id: Some(log_id(u64::MAX, 1)),
            ..heartbeat(vote)
        },
        AppendEntriesRequest {
            leader_commit: Some(log_id(1, u64::MAX)),
            ..heartbeat(vote)
        },
        AppendEntriesRequest {
            entries: vec![blank(log_id(5, u64::MAX))],
            prev_log_id: Some(log_id(5, u64::MAX - 1)),
            ..heartbeat(vote)
        },
        AppendEntriesRequest {
            entries: vec![blank(log_id(u64::MAX, 1))],
            ..heartbeat(vote)
        },
        // Not consecutive: a hole after the first entry.
        AppendEntriesRequest {
            entries: vec![blank(log_id(5, 1)), blank(log_id(5, 3))],
            prev_log_id: Some(log_id(5, 0)),
            ..heartbeat(vote)
        },
        // An entry of a term after the sender's own vote.
        AppendEntriesRequest {
            entries: vec![blank(log_id(6, 1))],
            prev_log_id: Some(log_id(5, 0)),
            ..heartbeat(vote)
        },
    ];
    for request in requests {
        let shown = format!("{request:?}");
        let error = refusal(network.append_entries(request, option()).await);
        assert!(error.contains("implausible"), "{shown}: {error}");
    }
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

fn chunk(vote: Vote<ManagerId>, id: &str, offset: u64, data: Vec<u8>) -> InstallSnapshotRequest<TypeConfig> {
    let membership = Membership::new(vec![[STRANGER].into()], BTreeMap::from([(STRANGER, ManagerNode::default())]));
    InstallSnapshotRequest {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(log_id(2, 10)),
            last_membership: StoredMembership::new(Some(log_id(2, 1)), membership),
            snapshot_id: id.into(),
        },
        offset,
        data,
        done: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunk_past_what_was_received_is_refused() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    // A vote at least the group's own: openraft takes the chunks.
    let vote = Vote::new_committed(3, STRANGER);
    network
        .install_snapshot(chunk(vote, "s-1", 0, vec![7; 100]), option())
        .await?;
    // 1 TiB past the end of the 100 bytes received: the cursor would zero-fill up to it.
    let reply = network
        .install_snapshot(chunk(vote, "s-1", 1 << 40, vec![7; 100]), option())
        .await;
    match reply {
        Err(RPCError::RemoteError(e)) => {
            assert!(
                matches!(
                    e.source,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(_))
                ),
                "{e}"
            );
            assert!(e.to_string().contains("offset"), "{e}");
        }
        other => panic!("expected a snapshot mismatch, got {other:?}"),
    }
    // A chunk of another snapshot that does not start at 0 is refused too.
    assert!(network
        .install_snapshot(chunk(vote, "s-2", 100, vec![7; 100]), option())
        .await
        .is_err());
    // The contiguous next chunk is taken, and offset 0 starts over.
    network
        .install_snapshot(chunk(vote, "s-1", 100, vec![7; 100]), option())
        .await?;
    network
        .install_snapshot(chunk(vote, "s-3", 0, vec![7; 100]), option())
        .await?;
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_replies_does_not_hold_the_rpc_past_its_deadline() -> anyhow::Result<()> {
    // A server that accepts every stream, reads the request and never answers.
    let silent = TestNode::start(1, CLUSTER);
    silent.accept_abort();
    let endpoint = silent.endpoint.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            while let Ok(stream) = conn.accept_bi().await {
                held.push(stream);
            }
        }
    });
    let client = TestNode::start(STRANGER, CLUSTER);
    let peers = PeerConnections::new(client.endpoint.clone(), CLUSTER.into());
    let mut network = QuicNetworkFactory::new(GROUP, peers)
        .new_client(silent.id, &silent.node())
        .await;
    let request = VoteRequest::new(Vote::new(1, STRANGER), None);
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        network.vote(request, RPCOption::new(Duration::from_millis(500))),
    )
    .await;
    assert!(
        matches!(outcome, Ok(Err(RPCError::Network(_)))),
        "expected the RPC to fail at its deadline, got {outcome:?}"
    );
    holder.abort();
    client.shutdown().await;
    silent.shutdown().await;
    Ok(())
}
