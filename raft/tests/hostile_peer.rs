//! A peer that speaks the Raft wire but sends absurd values (terms and log ids near `u64::MAX`,
//! snapshot chunks far past what was received, bodies beyond their kind's limit), is not a
//! member of the group, pins streams, or never replies. Every case drives a real openraft group
//! through the QUIC server, expects a clear refusal, and then checks that the group still serves.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{raft_config, wait_leader, TestNode};
use firetower_raft::wire::{
    self, RaftReply, RaftRequest, ReplyBody, RequestBody, RequestHeader, RequestKind,
};
use firetower_raft::{
    client_config, Command, GroupId, ManagerId, ManagerNode, PeerConnections, QuicNetwork,
    QuicNetworkFactory, Rejection, TypeConfig, ALPN_RAFT, MAX_BODY_BYTES_IN_FLIGHT, MAX_FRAME_LEN,
    MAX_RPCS_IN_FLIGHT,
};
use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
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
/// unreachable peer (openraft backs off) or as a network error (a malformed request).
fn refusal<E: std::error::Error>(
    result: Result<impl std::fmt::Debug, RPCError<ManagerId, ManagerNode, E>>,
) -> String {
    match result {
        Err(RPCError::Unreachable(e)) => e.to_string(),
        Err(RPCError::Network(e)) => e.to_string(),
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

fn chunk(
    vote: Vote<ManagerId>,
    id: &str,
    offset: u64,
    data: Vec<u8>,
) -> InstallSnapshotRequest<TypeConfig> {
    let membership = Membership::new(
        vec![[STRANGER].into()],
        BTreeMap::from([(STRANGER, ManagerNode::default())]),
    );
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
            let RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)) = e.source
            else {
                unreachable!("matched above")
            };
            assert_eq!(
                (mismatch.expect.offset, mismatch.got.offset),
                (100, 1 << 40)
            );
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

/// A vote RPC for `group` from `network`'s client, as the server answered it.
async fn vote_for(
    peers: &PeerConnections,
    server: &TestNode,
    group: GroupId,
) -> Result<(), RPCError<ManagerId, ManagerNode, RaftError<ManagerId>>> {
    let mut network = QuicNetworkFactory::new(group, peers.clone())
        .new_client(server.id, &server.node())
        .await;
    network
        .vote(VoteRequest::new(Vote::new(1, STRANGER), None), option())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_peer_is_served_only_for_groups_it_is_a_member_of() -> anyhow::Result<()> {
    let groups = [GroupId(0), GroupId(1)];
    // Group 0 has members 1 and 3 (3 never answers); group 1 knows no membership yet.
    let members = |server: &TestNode| {
        BTreeMap::from([
            (1, server.node()),
            (
                3,
                ManagerNode {
                    quic: "127.0.0.1:9".into(),
                    admin: String::new(),
                },
            ),
        ])
    };
    let client = TestNode::start(STRANGER, CLUSTER);
    let peers = PeerConnections::new(client.endpoint.clone(), CLUSTER.into());

    // Connections to this server authenticate as manager 2, not a member of group 0.
    let mut server = TestNode::start_with_peer(1, CLUSTER, Some(STRANGER));
    server.start_groups(groups, raft_config()).await;
    server.raft(GROUP).initialize(members(&server)).await?;
    let error = refusal(vote_for(&peers, &server, GROUP).await);
    assert!(
        error.contains("manager 2 is not a member of group 0"),
        "{error}"
    );
    // A learner being added: the group has no membership here yet, so the leader is heard.
    vote_for(&peers, &server, GroupId(1)).await?;
    server.shutdown().await;

    // Connections to this server authenticate as manager 3, a member of group 0.
    let mut server = TestNode::start_with_peer(1, CLUSTER, Some(3));
    server.start_groups(groups, raft_config()).await;
    server.raft(GROUP).initialize(members(&server)).await?;
    vote_for(&peers, &server, GROUP).await?;
    vote_for(&peers, &server, GroupId(1)).await?;
    server.shutdown().await;

    // Manager 2 again, which this server's view of group 0 lacks, but which the group's other
    // member vouches for (as after a change this server missed while down): served.
    let mut server = TestNode::start_vouched(1, CLUSTER, Some(STRANGER), &[GROUP]);
    server.start_groups(groups, raft_config()).await;
    server.raft(GROUP).initialize(members(&server)).await?;
    vote_for(&peers, &server, GROUP).await?;
    server.shutdown().await;

    client.shutdown().await;
    Ok(())
}

/// Opens a raw Raft connection from `client` to `server`.
async fn raw_connection(client: &TestNode, server: &TestNode) -> anyhow::Result<quinn::Connection> {
    Ok(client
        .endpoint
        .connect_with(
            client_config(ALPN_RAFT, &firetower_link::Security::Insecure).unwrap(),
            server.addr,
            "firetower",
        )?
        .await?)
}

/// The refusal in a raw reply frame.
fn rejection(reply: &[u8]) -> anyhow::Result<Rejection> {
    let decoded: RaftReply = wire::decode_frame(reply)?;
    match decoded {
        Err(rejection) => Ok(rejection),
        Ok(body) => anyhow::bail!("expected a refusal, got {body:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_from_their_header_before_the_body_is_read() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    let conn = raw_connection(&client, &server).await?;
    let header = |cluster_id: &str, group, kind| RequestHeader {
        cluster_id: cluster_id.into(),
        group,
        kind,
    };
    let cases = [
        // A vote body announced at 5000 bytes: votes are at most 4 KiB.
        (
            header(CLUSTER, GROUP, RequestKind::Vote),
            5_000u32,
            Rejection::BodyTooLarge {
                kind: RequestKind::Vote,
                len: 5_000,
                limit: wire::MAX_VOTE_LEN as u64,
            },
        ),
        // A heartbeat announced at 60 MiB: an append of no entries has only its slack.
        (
            header(CLUSTER, GROUP, RequestKind::AppendEntries { entries: 0 }),
            60 << 20,
            Rejection::BodyTooLarge {
                kind: RequestKind::AppendEntries { entries: 0 },
                len: 60 << 20,
                limit: wire::APPEND_ENTRIES_SLACK as u64,
            },
        ),
        // Another cluster, a group not hosted: refused whatever the body.
        (
            header("another", GROUP, RequestKind::AppendEntries { entries: 64 }),
            60 << 20,
            Rejection::ClusterMismatch,
        ),
        (
            header(CLUSTER, GroupId(7), RequestKind::InstallSnapshot),
            60 << 20,
            Rejection::GroupNotHosted(GroupId(7)),
        ),
    ];
    for (header, announced, expected) in cases {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&wire::encode(&header)?).await?;
        // Only the length prefix of the body: the refusal must come without the body. A refusal
        // from the header alone may have stopped the stream already, failing this write.
        let _ = send.write_all(&announced.to_be_bytes()).await;
        let reply = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20)).await??;
        assert_eq!(rejection(&reply)?, expected);
    }
    assert!(conn.close_reason().is_none());
    // The group serves the next good request.
    network
        .vote(VoteRequest::new(Vote::new(1, STRANGER), None), option())
        .await?;
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_in_flight_on_one_connection_are_capped() -> anyhow::Result<()> {
    let (server, client, _network) = single_manager_group().await?;
    let conn = raw_connection(&client, &server).await?;
    // Fill every slot with a stream that sent one byte of a header and then nothing.
    let mut silent = Vec::new();
    for _ in 0..MAX_RPCS_IN_FLIGHT {
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&[0]).await?;
        silent.push((send, recv));
    }
    let request = RaftRequest {
        cluster_id: CLUSTER.into(),
        group: GROUP,
        body: RequestBody::Vote(VoteRequest::new(Vote::new(1, STRANGER), None)),
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&wire::encode_request(&request)?).await?;
    send.finish()?;
    let mut reply = Box::pin(recv.read_to_end(1 << 20));
    // Not served while every slot is taken...
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut reply)
            .await
            .is_err(),
        "served beyond the cap"
    );
    // ...and served once one of them ends.
    let (mut first, _) = silent.remove(0);
    first.reset(0u32.into())?;
    let reply = tokio::time::timeout(WAIT, reply).await??;
    let reply: RaftReply = wire::decode_frame(&reply)?;
    assert!(matches!(reply, Ok(ReplyBody::Vote(Ok(_)))), "{reply:?}");
    drop(silent);
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_refused_from_its_header_gets_the_refusal_not_a_write_error(
) -> anyhow::Result<()> {
    let (server, client, _network) = single_manager_group().await?;
    let peers = PeerConnections::new(client.endpoint.clone(), CLUSTER.into());
    let mut network = QuicNetworkFactory::new(GroupId(7), peers)
        .new_client(server.id, &server.node())
        .await;
    // About 6 MiB: more than the stream's flow-control window, so the client is still writing
    // when the server refuses from the header and stops reading.
    let entries = (1..=24)
        .map(|index| Entry::<TypeConfig> {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Command::SetMeta {
                key: "k".into(),
                value: vec![0; 256 * 1024],
            }),
        })
        .collect();
    let request = AppendEntriesRequest {
        vote: Vote::new_committed(1, STRANGER),
        prev_log_id: Some(log_id(1, 0)),
        entries,
        leader_commit: None,
    };
    let error = refusal(network.append_entries(request, option()).await);
    assert!(error.contains("group 7 is not hosted"), "{error}");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_buffered_per_connection_are_capped() -> anyhow::Result<()> {
    let (server, client, _network) = single_manager_group().await?;
    let conn = raw_connection(&client, &server).await?;
    // Streams that announce the largest body and send none of it, until the budget is taken.
    let header = RequestHeader {
        cluster_id: CLUSTER.into(),
        group: GROUP,
        kind: RequestKind::AppendEntries { entries: 64 },
    };
    let mut pending = Vec::new();
    for _ in 0..MAX_BODY_BYTES_IN_FLIGHT / MAX_FRAME_LEN {
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&wire::encode(&header)?).await?;
        send.write_all(&(MAX_FRAME_LEN as u32).to_be_bytes())
            .await?;
        pending.push((send, recv));
    }
    // Their tasks take their shares before the vote below arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = RaftRequest {
        cluster_id: CLUSTER.into(),
        group: GROUP,
        body: RequestBody::Vote(VoteRequest::new(Vote::new(1, STRANGER), None)),
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&wire::encode_request(&request)?).await?;
    send.finish()?;
    let mut reply = Box::pin(recv.read_to_end(1 << 20));
    // Even a small body waits while the budget is taken...
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut reply)
            .await
            .is_err(),
        "a body was read beyond the connection's byte budget"
    );
    // ...and is read once a share is given back.
    let (mut first, _) = pending.remove(0);
    first.reset(0u32.into())?;
    let reply = tokio::time::timeout(WAIT, reply).await??;
    let reply: RaftReply = wire::decode_frame(&reply)?;
    assert!(matches!(reply, Ok(ReplyBody::Vote(Ok(_)))), "{reply:?}");
    drop(pending);
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_snapshot_whose_data_does_not_decode_is_refused() -> anyhow::Result<()> {
    let (server, client, mut network) = single_manager_group().await?;
    let vote = Vote::new_committed(3, STRANGER);
    // A whole snapshot in one chunk, newer than anything the group has, of bytes that are not
    // a table: installing it fails in the state machine, which openraft takes as fatal.
    let last = chunk(vote, "bad-1", 0, vec![0xFF; 64]);
    let reply = network
        .install_snapshot(InstallSnapshotRequest { done: true, ..last }, option())
        .await;
    let error = refusal(reply);
    assert!(error.contains("snapshot"), "{error}");
    // The leader it came from has term 3 in its vote; the group's own leader is back once the
    // stranger stops (assert_still_serving waits for it).
    assert_still_serving(&server).await?;
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}
