//! Partitions and heals of a three-manager cluster over the in-memory network
//! (`firetower_link::MemNet`): managers run in this process with [`Manager::start_on`] on
//! virtual addresses, gateways are the real `firetower_gateway::ClusterUpstream` (requests and
//! sessions) on the same network, and the switch cuts, isolates, partitions and delays links
//! between them. No root, no namespaces, no packet on the OS network. The fixture is in
//! `common/mod.rs`.
//!
//! ```text
//!   case                          fault                              what must hold
//!   isolated leader               isolate(leader)                    majority elects; gateway
//!                                                                    writes and publishes
//!                                                                    resume; after heal the old
//!                                                                    leader follows and holds
//!                                                                    every acked subscription
//!   minority side                 partition({leader, gw1},           the minority acks nothing
//!                                           {2 managers, gw2})       (write, read, publish);
//!                                                                    the majority serves; after
//!                                                                    heal nothing acked is lost
//!   gateway cut                   isolate(gateway)                   its sessions end, its lease
//!                                                                    expires, no publish counts
//!                                                                    it as delivered; after heal
//!                                                                    sessions reopen, held topics
//!                                                                    are resynced, deliveries
//!                                                                    resume
//!   delayed links                 delay(manager, manager, 20 ms;     commits and publishes work
//!                                       50 ms with a 250 ms          (and take the round trip)
//!                                       heartbeat)
//!   one cut link                  cut(leader, follower)              the cluster stays available
//! ```
//!
//! Each case starts its own cluster and the cases run one at a time (see
//! `common::one_at_a_time`). Waits poll against deadlines; the bounds are generous multiples of
//! the default Raft timing (election 400–800 ms, QUIC idle timeout 3 s) so that a busy machine
//! does not make them flake. `FIRETOWER_TEST_LOG=info,openraft=warn` shows the managers' logs.

mod common;

use std::time::Duration;

use common::{gateway_addr, manager_addr, one_at_a_time, Cluster, TestGateway};
use firetower_link::LinkReply;
use firetower_manager::{Manager, RaftTuning};
use firetower_proto::GroupId;
use tokio::time::Instant;

/// Bound on any single step that needs at most an election and a reconnect.
const BOUND: Duration = Duration::from_secs(15);

/// Wait until `manager`'s replica of `group` is a follower.
async fn wait_following(manager: &Manager, group: GroupId) {
    common::eventually(
        BOUND,
        &format!("manager {} follows in group {group}", manager.id()),
        || async move {
            let (_, replica) = manager.group_status(group).await?;
            (replica.state == "follower").then_some(())
        },
    )
    .await;
}

fn pairs(gateway: &TestGateway, topics: &[&str]) -> Vec<(u64, String)> {
    topics
        .iter()
        .map(|t| (gateway.id, (*t).to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_follows_after_heal() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let subscriber = cluster.gateway(1).await;
    let publisher = cluster.gateway(2).await;
    subscriber.subscribe_within("before", BOUND).await;
    publisher.publish_within("before", b"m0", BOUND).await;
    subscriber.wait_received("before", b"m0", BOUND).await;

    let old = cluster
        .agreed_leader(GroupId(0), &cluster.ids(), BOUND)
        .await;
    let old_term = cluster
        .manager(old)
        .group_status(GroupId(0))
        .await
        .expect("group 0")
        .0
        .term;
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    let isolated_at = Instant::now();
    cluster.net.isolate(manager_addr(old));

    let new = cluster.agreed_leader(GroupId(0), &rest, BOUND).await;
    assert_ne!(
        new, old,
        "the isolated manager cannot stay the majority's leader"
    );
    let (status, _) = cluster
        .manager(new)
        .group_status(GroupId(0))
        .await
        .expect("group 0");
    assert!(
        status.term > old_term,
        "a new leader is elected in a new term"
    );

    // Through the gateways: a new subscription commits, and publishes reach the subscriber,
    // on the new topic and on the one subscribed before the fault.
    subscriber.subscribe_within("during", BOUND).await;
    publisher.publish_within("during", b"m1", BOUND).await;
    subscriber.wait_received("during", b"m1", BOUND).await;
    publisher.publish_within("before", b"m2", BOUND).await;
    let m2 = subscriber.wait_received("before", b"m2", BOUND).await;
    // A message is delivered by the leader that stamped it, in its term: one stamped at or
    // after the new leader's term did not come from the isolated manager.
    assert!(
        m2.term >= status.term,
        "the isolated manager delivers nothing: {m2:?} (new leader's term {})",
        status.term
    );
    let recovered = isolated_at.elapsed();
    assert!(
        recovered < BOUND,
        "the gateway path took {recovered:?} to come back"
    );
    // The isolation held: the old leader never saw the subscription made without it.
    assert!(!cluster
        .subscribers_on(old, "during")
        .contains(&subscriber.id));

    cluster.net.heal();
    let leader = cluster
        .agreed_leader(GroupId(0), &cluster.ids(), BOUND)
        .await;
    assert_ne!(leader, old, "the old leader lacks the majority's entries");
    wait_following(cluster.manager(old), GroupId(0)).await;
    let acked = pairs(&subscriber, &["before", "during"]);
    cluster.wait_subscribed_everywhere(&acked, BOUND).await;
    for (gateway, topic) in &acked {
        let read = publisher
            .topic_gateways(topic)
            .await
            .expect("a leader read");
        assert!(read.contains(gateway), "{topic}: {read:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minority_side_acknowledges_nothing_and_nothing_acknowledged_is_lost() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let stranded = cluster.gateway(1).await;
    let served = cluster.gateway(2).await;
    stranded.subscribe_within("held", BOUND).await;
    served.subscribe_within("held", BOUND).await;

    let old = cluster
        .agreed_leader(GroupId(0), &cluster.ids(), BOUND)
        .await;
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    let mut majority_side: Vec<_> = majority.iter().map(|id| manager_addr(*id)).collect();
    majority_side.push(served.addr);
    cluster
        .net
        .partition(&[manager_addr(old), stranded.addr], &majority_side);

    // The old leader still believes it leads, but it can neither commit a write, nor confirm
    // a read with a quorum, nor hold the lease its stamps need.
    let minority = async {
        tokio::join!(
            stranded.subscribe("minority.write"),
            stranded.topic_gateways("held"),
            stranded.publish("held", b"from the minority"),
        )
    };
    let majority_work = async {
        let new = cluster.agreed_leader(GroupId(0), &majority, BOUND).await;
        served.subscribe_within("majority.write", BOUND).await;
        served
            .publish_within("majority.write", b"from the majority", BOUND)
            .await;
        served
            .wait_received("majority.write", b"from the majority", BOUND)
            .await;
        new
    };
    let ((write, read, publish), new) = tokio::join!(minority, majority_work);
    assert!(
        write.is_err(),
        "a write on the minority side was acknowledged: {write:?}"
    );
    assert!(
        read.is_err(),
        "a read on the minority side was answered: {read:?}"
    );
    assert!(
        publish.is_err(),
        "a publish on the minority side was acknowledged: {publish:?}"
    );
    assert_ne!(new, old);

    cluster.net.heal();
    let leader = cluster
        .agreed_leader(GroupId(0), &cluster.ids(), BOUND)
        .await;
    assert_ne!(leader, old, "the old leader lacks the majority's entries");
    wait_following(cluster.manager(old), GroupId(0)).await;
    // Every acknowledged subscription is on every manager. The stranded gateway's lease ran
    // out on the majority side, which dropped its subscription; its sessions come back after
    // the heal and re-send what it holds.
    stranded.wait_sessions(3, BOUND).await;
    let mut acked = pairs(&stranded, &["held"]);
    acked.extend(pairs(&served, &["held", "majority.write"]));
    cluster.wait_subscribed_everywhere(&acked, BOUND).await;
    assert_eq!(stranded.resync_failures(), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_gateway_loses_its_lease_and_is_resynced_after_heal() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(3).await;
    let cut = cluster.gateway(1).await;
    let publisher = cluster.gateway(2).await;
    // One topic in every group, so that every manager leads one of them and each expires and
    // resyncs its own.
    let topics = cluster.topic_per_group("cut");
    for topic in &topics {
        cut.subscribe_within(topic, BOUND).await;
        publisher.publish_within(topic, b"before", BOUND).await;
        cut.wait_received(topic, b"before", BOUND).await;
    }
    let mut leaders = Vec::new();
    for topic in &topics {
        let group = cluster.group_of(topic);
        leaders.push(cluster.agreed_leader(group, &cluster.ids(), BOUND).await);
    }
    let resyncs_before = cut.resyncs();

    cluster.net.isolate(gateway_addr(cut.id));

    // Until its lease runs out, a publish to its topics waits for it and fails (no ack from
    // it, then no session with it); after that, the topics have no subscriber left. A
    // publish is never acknowledged as delivered to the cut gateway.
    let deadline = Instant::now() + BOUND;
    let mut round = 0;
    loop {
        let replies = futures::future::join_all(
            topics
                .iter()
                .zip(&leaders)
                .map(|(topic, leader)| publisher.publish_at(manager_addr(*leader), topic, b"cut")),
        )
        .await;
        for (topic, reply) in topics.iter().zip(replies) {
            match reply {
                Ok(LinkReply::Published(p)) => {
                    assert_eq!(
                        p.gateways, 0,
                        "{topic}: acknowledged as delivered to a cut gateway"
                    );
                    assert!(round > 0, "{topic}: the subscription vanished at once");
                }
                Ok(LinkReply::Failure { .. } | LinkReply::NotLeader { .. }) | Err(_) => {}
                Ok(other) => panic!("{topic}: unexpected reply {other:?}"),
            }
        }
        let expired_everywhere = topics.iter().all(|topic| {
            cluster
                .ids()
                .into_iter()
                .all(|id| !cluster.subscribers_on(id, topic).contains(&cut.id))
        });
        if expired_everywhere && cut.open_sessions() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cut gateway's lease did not expire everywhere within {BOUND:?} \
             ({} sessions still open)",
            cut.open_sessions()
        );
        round += 1;
    }
    // With the subscriptions gone, publishes to these topics no longer wait for anybody.
    for topic in &topics {
        let group = cluster.group_of(topic);
        let leader = cluster.agreed_leader(group, &cluster.ids(), BOUND).await;
        match publisher
            .publish_at(manager_addr(leader), topic, b"nobody")
            .await
        {
            Ok(LinkReply::Published(p)) => assert_eq!(p.gateways, 0),
            other => panic!("{topic}: a publish without subscribers failed: {other:?}"),
        }
    }

    cluster.net.heal();
    cut.wait_sessions(3, BOUND).await;
    let held: Vec<(u64, String)> = topics.iter().map(|t| (cut.id, t.clone())).collect();
    cluster.wait_subscribed_everywhere(&held, BOUND).await;
    assert!(
        cut.resyncs() > resyncs_before,
        "the leaders registered the session anew and asked for the held topics"
    );
    assert_eq!(cut.resync_failures(), 0);
    for topic in &topics {
        publisher.publish_within(topic, b"after heal", BOUND).await;
        cut.wait_received(topic, b"after heal", BOUND).await;
    }
    cluster.shutdown().await;
}

/// Delay every link between managers by `delay` each way, then check that subscriptions
/// commit (no faster than a round trip to a follower) and publishes are delivered.
async fn commits_over_delayed_links(cluster: Cluster, delay: Duration) {
    let gateway = cluster.gateway(1).await;
    for a in cluster.ids() {
        for b in cluster.ids().into_iter().filter(|b| *b > a) {
            cluster.net.delay(manager_addr(a), manager_addr(b), delay);
        }
    }

    let topics = cluster.topic_per_group("slow");
    for topic in &topics {
        let started = Instant::now();
        gateway
            .subscribe(topic)
            .await
            .unwrap_or_else(|e| panic!("{topic}: a subscribe over delayed links failed: {e}"));
        let took = started.elapsed();
        assert!(
            took >= 2 * delay,
            "{topic}: committed in {took:?}, faster than one round trip to a follower"
        );
        gateway
            .publish(topic, b"slow")
            .await
            .unwrap_or_else(|e| panic!("{topic}: a publish over delayed links failed: {e}"));
        gateway.wait_received(topic, b"slow", BOUND).await;
    }
    let held: Vec<(u64, String)> = topics.iter().map(|t| (gateway.id, t.clone())).collect();
    cluster.wait_subscribed_everywhere(&held, BOUND).await;
    cluster.shutdown().await;
}

/// With the default timing, a round trip between managers must stay well below the
/// heartbeat interval (100 ms): openraft gives each AppendEntries RPC one heartbeat interval
/// to complete, so at a round trip of 100 ms (50 ms each way) replication RPCs time out at
/// random and a commit can stall until the proposal times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_links_between_managers_still_commit() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(3).await;
    commits_over_delayed_links(cluster, Duration::from_millis(20)).await;
}

/// A 100 ms round trip between managers (a WAN), with the heartbeat raised above it and the
/// election timeouts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wan_round_trip_commits_with_a_heartbeat_above_it() {
    let _serial = one_at_a_time().await;
    let tuning = RaftTuning {
        heartbeat_ms: 250,
        election_timeout_min_ms: 1_000,
        election_timeout_max_ms: 2_000,
        ..RaftTuning::default()
    };
    let cluster = Cluster::start_tuned(3, tuning).await;
    commits_over_delayed_links(cluster, Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cut_link_between_managers_keeps_the_cluster_available() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::start(1).await;
    let gateway = cluster.gateway(1).await;
    let leader = cluster
        .agreed_leader(GroupId(0), &cluster.ids(), BOUND)
        .await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("three managers");
    cluster
        .net
        .cut(manager_addr(leader), manager_addr(follower));

    // For several election timeouts (the cut follower stands for election again and again),
    // every request is served at the first call.
    let until = Instant::now() + Duration::from_secs(3);
    let mut acked = Vec::new();
    while Instant::now() < until || acked.len() < 5 {
        let topic = format!("cut.link.{}", acked.len());
        gateway
            .subscribe(&topic)
            .await
            .unwrap_or_else(|e| panic!("{topic}: subscribe failed with one link cut: {e}"));
        gateway
            .publish(&topic, b"through")
            .await
            .unwrap_or_else(|e| panic!("{topic}: publish failed with one link cut: {e}"));
        gateway.wait_received(&topic, b"through", BOUND).await;
        acked.push((gateway.id, topic));
    }

    cluster.net.heal();
    cluster
        .agreed_leader(GroupId(0), &cluster.ids(), BOUND)
        .await;
    cluster.wait_subscribed_everywhere(&acked, BOUND).await;
    cluster.shutdown().await;
}
