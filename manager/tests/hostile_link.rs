//! The gateway link against peers that misbehave (a buggy gateway, or anyone who can reach the
//! QUIC port): three managers on the in-memory network (`common/mod.rs`), real gateways
//! (`ClusterUpstream`) next to raw link clients that send what a real gateway never would.
//!
//! ```text
//!   case                               hostile peer does                  what must hold
//!   ghost subscription                 Subscribe for a gateway id with    refused (no_session), nothing
//!                                      no session                         committed, publishes succeed
//!   sessionless gateway in the table   (committed straight through Raft,  its subscriptions are dropped
//!                                      as older managers allowed)         within a lease; publishes succeed
//!   session takeover                   OpenSession as a live gateway's    refused (invalid_epoch / stale_epoch);
//!                                      id, epoch u64::MAX / older         the real gateway keeps its
//!                                                                         subscriptions and deliveries
//!   session that stops reading         subscribes, then never reads       its session is closed; queued
//!                                      its deliveries                     bytes stay under the bound;
//!                                                                         other gateways keep receiving
//!   oversized and silent streams       a 100 KiB Subscribe; a stream      refused before the body; closed
//!                                      that sends nothing                 after the read deadline
//! ```

mod common;

use std::time::Duration;

use common::{gateway_addr, manager_addr, one_at_a_time, Cluster, MANAGERS};
use firetower_link::{
    decode_body, encode_frame, read_link_frame, LinkClient, LinkError, LinkOptions, LinkReply,
    LinkRequest, MAX_LINK_FRAME_BYTES,
};
use firetower_proto::link::{
    gateway_frame, gateway_reply, gateway_request, session_frame, GatewayFrame, GatewayReply,
    GatewayRequest, Heartbeat, SessionFrame, Subscribe,
};
use firetower_proto::{Epoch, GroupId};
use firetower_raft::Command;
use tokio::time::Instant;

/// Bound on any single step that needs at most an election and a reconnect.
const BOUND: Duration = Duration::from_secs(15);

/// A raw link client acting as gateway `id` (no session of its own unless a test opens one).
async fn raw_link(cluster: &Cluster, id: u64) -> LinkClient {
    let endpoint = cluster
        .net
        .client_endpoint(gateway_addr(id))
        .expect("a free virtual address");
    let options = LinkOptions {
        request_timeout: Duration::from_secs(8),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..LinkOptions::default()
    };
    LinkClient::connect_with_endpoint(
        endpoint,
        id,
        (1..=MANAGERS).map(manager_addr).collect(),
        options,
    )
    .await
    .expect("the raw client reaches the cluster")
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_micros() as u64
}

/// The leader of `topic`'s group.
async fn leader_of(cluster: &Cluster, topic: &str) -> u64 {
    cluster
        .agreed_leader(cluster.group_of(topic), &cluster.ids(), BOUND)
        .await
}

/// A session stream opened as `link`'s gateway at manager `at` with `epoch`; returns the
/// stream and the first frame the manager answered.
async fn open_session(
    link: &LinkClient,
    at: u64,
    epoch: u64,
) -> (quinn::SendStream, quinn::RecvStream, SessionFrame) {
    let (mut send, mut recv) = link
        .open_stream(manager_addr(at))
        .await
        .expect("a stream to the manager");
    let open = LinkRequest::OpenSession {
        epoch: Epoch(epoch),
        lease: Duration::from_secs(1),
    }
    .to_frame(link.gateway());
    send.write_all(&encode_frame(&open)).await.expect("sent");
    let first = tokio::time::timeout(BOUND, read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES))
        .await
        .expect("an answer in time")
        .expect("a readable answer")
        .expect("a frame");
    (send, recv, decode_body(&first).expect("a session frame"))
}

fn refusal_code(e: LinkError) -> String {
    match e {
        LinkError::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_for_a_gateway_without_a_session_is_refused() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let publisher = cluster.gateway(1).await;
    let ghost = raw_link(&cluster, 98).await;

    let started = Instant::now();
    let refused = ghost
        .subscribe("room.ghost")
        .await
        .expect_err("no session, no subscription");
    assert_eq!(refusal_code(refused), "no_session");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused in {:?}",
        started.elapsed()
    );
    // Naming an epoch does not help either.
    let refused = ghost
        .subscribe_in_session("room.ghost", Epoch(now_micros()))
        .await
        .expect_err("no session, no subscription");
    assert_eq!(refusal_code(refused), "no_session");
    for id in cluster.ids() {
        assert!(cluster.subscribers_on(id, "room.ghost").is_empty());
    }
    // Publishes to the topic are served at once (nobody subscribed: seq 0, no gateway).
    let started = Instant::now();
    let stamp = publisher
        .publish_within("room.ghost", b"hello", BOUND)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        stamp.seq, 0,
        "a publish that reaches nobody takes no number"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_a_gateway_without_a_session_are_dropped_within_a_lease() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let subscriber = cluster.gateway(1).await;
    let publisher = cluster.gateway(2).await;
    subscriber.subscribe_within("room.orphan", BOUND).await;
    // A subscription for gateway 99, which never had a session: committed straight through
    // Raft, as a manager before the session rule (or a buggy one) could have.
    let leader = leader_of(&cluster, "room.orphan").await;
    let raft = cluster
        .manager(leader)
        .raft(GroupId(0))
        .expect("group 0 runs");
    raft.client_write(Command::Subscribe {
        topic: "room.orphan".into(),
        gateway: 99,
    })
    .await
    .expect("committed");
    cluster
        .wait_subscribed_everywhere(&[(99, "room.orphan".to_string())], BOUND)
        .await;
    // While it is there, publishes to the topic cannot be delivered to it.
    let stuck = publisher
        .publish_at(manager_addr(leader), "room.orphan", b"stuck")
        .await
        .expect("a reply");
    assert!(
        matches!(&stuck, LinkReply::Failure { code, .. } if code == "unavailable"),
        "{stuck:?}"
    );

    let started = Instant::now();
    cluster
        .wait_unsubscribed_everywhere(99, &["room.orphan".to_string()], Duration::from_secs(12))
        .await;
    println!("sessionless gateway swept after {:?}", started.elapsed());
    // The real subscriber kept its subscription, and publishes reach it again.
    assert!(cluster.subscribers_on(leader, "room.orphan").contains(&1));
    publisher
        .publish_within("room.orphan", b"after", BOUND)
        .await;
    subscriber
        .wait_received("room.orphan", b"after", BOUND)
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_with_another_gateways_id_cannot_take_it_over() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let victim = cluster.gateway(1).await;
    let publisher = cluster.gateway(2).await;
    victim.subscribe_within("room.victim", BOUND).await;
    let leader = leader_of(&cluster, "room.victim").await;
    // A stranger claiming gateway 1's id, from its own address.
    let stranger = {
        let endpoint = cluster
            .net
            .client_endpoint(gateway_addr(50))
            .expect("a free virtual address");
        LinkClient::connect_with_endpoint(
            endpoint,
            victim.id,
            (1..=MANAGERS).map(manager_addr).collect(),
            LinkOptions::default(),
        )
        .await
        .expect("the stranger reaches the cluster")
    };
    for (epoch, code) in [
        (u64::MAX, "invalid_epoch"),
        (0, "invalid_epoch"),
        (1, "stale_epoch"),
    ] {
        let (_send, _recv, first) = open_session(&stranger, leader, epoch).await;
        match first.frame {
            Some(session_frame::Frame::Failure(f)) => assert_eq!(f.code, code, "epoch {epoch}"),
            other => panic!("epoch {epoch} was not refused: {other:?}"),
        }
    }
    // Nothing changed: the victim keeps its subscription and its deliveries.
    assert!(cluster
        .subscribers_on(leader, "room.victim")
        .contains(&victim.id));
    publisher
        .publish_within("room.victim", b"still mine", BOUND)
        .await;
    victim
        .wait_received("room.victim", b"still mine", BOUND)
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_reading_is_closed_and_others_keep_receiving() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let healthy = cluster.gateway(1).await;
    let publisher = cluster.gateway(2).await;
    let topic = "room.stall";
    healthy.subscribe_within(topic, BOUND).await;
    let leader = leader_of(&cluster, topic).await;

    // Gateway 60 opens a session, subscribes in it, heartbeats, and never reads again.
    let sleeper = raw_link(&cluster, 60).await;
    let epoch = now_micros();
    let (mut send, recv, first) = open_session(&sleeper, leader, epoch).await;
    assert!(
        matches!(first.frame, Some(session_frame::Frame::Opened(_))),
        "{first:?}"
    );
    let heartbeats = tokio::spawn(async move {
        let beat = GatewayFrame {
            frame: Some(gateway_frame::Frame::Heartbeat(Heartbeat::default())),
        };
        while send.write_all(&encode_frame(&beat)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    sleeper
        .subscribe_in_session(topic, Epoch(epoch))
        .await
        .expect("subscribed in its session");

    // A burst of large publishes, concurrently: each waits for the sleeper's ack in vain.
    let payload_len = 512 * 1024;
    let burst = 40usize;
    let sampler_cluster = &cluster;
    let sample = async move {
        let mut peak = 0f64;
        for _ in 0..600 {
            let queued = sampler_cluster
                .metric(leader, "firetower_manager_session_queued_bytes")
                .await
                .unwrap_or(0.0);
            peak = peak.max(queued);
            let closed = sampler_cluster
                .metric(leader, "firetower_manager_sessions_closed_stalled_total")
                .await
                .unwrap_or(0.0);
            if closed >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        peak
    };
    let publishes = futures::future::join_all((0..burst).map(|i| {
        let mut data = vec![b'x'; payload_len];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let publisher = &publisher;
        async move { publisher.publish(topic, &data).await }
    }));
    // Then a publish every 200 ms: the first that finds the queue full for over two seconds
    // closes the session.
    let trickle = async {
        // As large as the burst's: small ones would still fit the last free bytes.
        let data = vec![b't'; payload_len];
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..50 {
            let closed = sampler_cluster
                .metric(leader, "firetower_manager_sessions_closed_stalled_total")
                .await
                .unwrap_or(0.0);
            if closed >= 1.0 {
                break;
            }
            let _ = publisher
                .publish_at(manager_addr(leader), topic, &data)
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (results, peak, ()) = tokio::join!(publishes, sample, trickle);
    // Those queued while the sleeper had its session could not be acknowledged.
    assert!(
        results.iter().filter(|r| r.is_err()).count() >= 1,
        "every publish was acknowledged without the sleeper's acks"
    );
    let closed = cluster
        .metric(leader, "firetower_manager_sessions_closed_stalled_total")
        .await;
    assert_eq!(closed, Some(1.0), "the stalled session was not closed");
    // The gauge sums every session of the leader: two receive deliveries here (the sleeper
    // and the healthy gateway), each bounded by the per-session 8 MiB.
    let bound = 2.0 * 8.0 * 1024.0 * 1024.0;
    assert!(peak <= bound, "queued {peak} bytes, over the bound {bound}");
    println!(
        "stalled session: peak {peak} queued bytes sampled over 2 receiving sessions (bound \
         {bound}), closed after a burst of {burst} x {payload_len} B"
    );
    // The healthy gateway got every message that was queued for it before the close.
    let received = healthy.received(topic).len();
    assert!(received >= 1, "the healthy gateway received nothing");

    // The sleeper's stream was reset by the manager: reading it ends in an error.
    let mut recv = recv;
    let ended = tokio::time::timeout(BOUND, async {
        loop {
            match read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES).await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(
        ended.is_err(),
        "the session stream ended cleanly instead of being reset"
    );
    heartbeats.abort();

    // Once the sleeper's lease is over, publishes to the topic are acknowledged again and
    // the healthy gateway keeps receiving.
    publisher
        .publish_within(topic, b"after the stall", BOUND)
        .await;
    healthy
        .wait_received(topic, b"after the stall", BOUND)
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_silent_request_streams_are_refused_and_closed() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let gateway = cluster.gateway(1).await;
    let raw = raw_link(&cluster, 70).await;
    let at = leader_of(&cluster, "room.big").await;

    // A Subscribe of 100 KiB: refused from its first bytes, the rest never needed.
    let (mut send, mut recv) = raw.open_stream(manager_addr(at)).await.expect("a stream");
    let fat = GatewayRequest {
        gateway: 70,
        op: Some(gateway_request::Op::Subscribe(Subscribe {
            topic: "x".repeat(100 * 1024),
            epoch: 0,
        })),
    };
    let frame = encode_frame(&fat);
    send.write_all(&frame[..64]).await.expect("sent");
    let reply = tokio::time::timeout(BOUND, read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES))
        .await
        .expect("an answer before the body")
        .expect("readable")
        .expect("a reply");
    let reply: GatewayReply = decode_body(&reply).expect("a reply");
    match reply.result {
        Some(gateway_reply::Result::Failure(f)) => {
            assert_eq!(f.code, "bad_frame");
            assert!(f.message.contains("4096"), "{}", f.message);
            assert!(!f.message.contains(&cluster.manager(at).cluster_id()));
        }
        other => panic!("not refused: {other:?}"),
    }

    // A stream that opens and sends nothing is closed by the manager after its deadline.
    let (mut send, mut recv) = raw.open_stream(manager_addr(at)).await.expect("a stream");
    // A stream exists for the peer once something is sent on it: an empty write does not
    // count, so send one byte of a header and stop there.
    send.write_all(&[0]).await.expect("sent");
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES),
    )
    .await
    .expect("the manager closes a silent stream");
    let reply: GatewayReply = decode_body(&answer.expect("readable").expect("a reply")).unwrap();
    assert!(
        matches!(&reply.result, Some(gateway_reply::Result::Failure(f)) if f.code == "bad_frame"),
        "{reply:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed after {:?}",
        started.elapsed()
    );

    // The manager keeps serving everyone else.
    gateway.subscribe_within("room.big", BOUND).await;
    cluster.shutdown().await;
}
