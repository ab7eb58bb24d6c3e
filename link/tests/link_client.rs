//! The link client against fake managers on the in-memory network: it follows `NotLeader`
//! hints, a partition from the leader stops requests until it heals, and routing replies
//! with absurd values or of another cluster are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use firetower_link::{
    decode_body, encode_frame, read_link_frame, LinkClient, LinkError, LinkOptions, LinkRequest,
    MemNet, RoutingRejectReason, MAX_LINK_FRAME_BYTES,
};
use firetower_proto::link::{self as pb, gateway_reply};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 6666))
}

/// The routing every fake manager reports: one group, led by `leader`.
fn routing(leader: SocketAddr) -> pb::Routing {
    pb::Routing {
        cluster_id: "memnet".into(),
        groups: 1,
        managers: [addr(1), addr(2)]
            .iter()
            .enumerate()
            .map(|(i, a)| pb::ManagerAddr {
                id: i as u64 + 1,
                quic: a.to_string(),
            })
            .collect(),
        leaders: vec![pb::GroupLeader {
            group: 0,
            leader_id: 2,
            leader_quic: leader.to_string(),
        }],
    }
}

/// A manager at `me`; group 0 is led by `leader`, which answers writes, the others answer
/// `NotLeader`.
fn fake_manager(net: &MemNet, me: SocketAddr, leader: SocketAddr) -> quinn::Endpoint {
    let endpoint = net.endpoint(me).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(Some(body)) = read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES).await
                        else {
                            return;
                        };
                        let frame: pb::GatewayRequest = decode_body(&body).unwrap();
                        let (_, request) = LinkRequest::from_frame(frame).unwrap();
                        let result = match request {
                            LinkRequest::GetRouting => {
                                gateway_reply::Result::Routing(routing(leader))
                            }
                            _ if me != leader => gateway_reply::Result::NotLeader(pb::NotLeader {
                                group: 0,
                                leader_id: 2,
                                leader_quic: leader.to_string(),
                            }),
                            LinkRequest::Subscribe { .. } => {
                                gateway_reply::Result::Done(pb::Done {
                                    changed: true,
                                    index: 42,
                                })
                            }
                            other => gateway_reply::Result::Failure(pb::Failure {
                                code: "refused".into(),
                                message: format!("the fake manager does not do {other:?}"),
                            }),
                        };
                        let reply = pb::GatewayReply {
                            result: Some(result),
                        };
                        let _ = send.write_all(&encode_frame(&reply)).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    endpoint
}

fn options() -> LinkOptions {
    LinkOptions {
        request_timeout: Duration::from_secs(1),
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..LinkOptions::default()
    }
}

#[tokio::test]
async fn follows_not_leader_to_the_leader() {
    let net = MemNet::new();
    let _m1 = fake_manager(&net, addr(1), addr(2));
    let _m2 = fake_manager(&net, addr(2), addr(2));
    let endpoint = net.client_endpoint(addr(10)).unwrap();
    // Only the follower is given: the routing it returns names the leader.
    let link = LinkClient::connect_with_endpoint(endpoint, 7, vec![addr(1)], options())
        .await
        .unwrap();
    assert_eq!(link.cluster_id(), "memnet");
    assert_eq!(link.groups(), 1);
    assert_eq!(link.managers(), vec![addr(1), addr(2)]);
    assert!(link.all_leaders_known());
    let written = link.subscribe("room.1").await.unwrap();
    assert_eq!(written.index, 42);
    assert!(written.changed);
    // A reply of the wrong kind is a refusal, not a panic.
    assert!(matches!(
        link.topic_gateways("room.1").await,
        Err(LinkError::Refused { .. })
    ));
}

#[tokio::test]
async fn a_partition_from_the_leader_stops_requests_until_healed() {
    let net = MemNet::new();
    let _m1 = fake_manager(&net, addr(1), addr(2));
    let _m2 = fake_manager(&net, addr(2), addr(2));
    let endpoint = net.client_endpoint(addr(10)).unwrap();
    let link = Arc::new(
        LinkClient::connect_with_endpoint(endpoint, 7, vec![addr(1), addr(2)], options())
            .await
            .unwrap(),
    );
    link.subscribe("room.1").await.unwrap();

    net.cut(addr(10), addr(2));
    let cut = link.subscribe("room.1").await;
    assert!(
        matches!(cut, Err(LinkError::Timeout(..))),
        "a gateway cut from the only leader cannot write: {cut:?}"
    );

    net.heal();
    let healed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(w) = link.subscribe("room.1").await {
                return w;
            }
        }
    })
    .await
    .expect("writes resume once the partition heals");
    assert_eq!(healed.index, 42);
}

/// A manager that answers every `GetRouting` with what `routing` holds now.
fn routing_manager(
    net: &MemNet,
    me: SocketAddr,
    routing: Arc<std::sync::Mutex<pb::Routing>>,
) -> quinn::Endpoint {
    let endpoint = net.endpoint(me).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let routing = routing.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let table = routing.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let Ok(Some(_)) = read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES).await
                        else {
                            return;
                        };
                        let reply = pb::GatewayReply {
                            result: Some(gateway_reply::Result::Routing(table)),
                        };
                        let _ = send.write_all(&encode_frame(&reply)).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    endpoint
}

/// Issue 11: a routing reply with absurd values is refused and the last good routing stays;
/// the cluster id joined is pinned. `groups = u32::MAX` used to abort the process.
#[tokio::test]
async fn absurd_and_foreign_routing_replies_are_refused() {
    let net = MemNet::new();
    let table = Arc::new(std::sync::Mutex::new(routing(addr(1))));
    let _m1 = routing_manager(&net, addr(1), table.clone());
    let endpoint = net.client_endpoint(addr(10)).unwrap();
    let link = LinkClient::connect_with_endpoint(endpoint, 7, vec![addr(1)], options())
        .await
        .unwrap();
    assert_eq!(link.groups(), 1);

    let mut huge = routing(addr(1));
    huge.groups = u32::MAX;
    let mut foreign = routing(addr(2));
    foreign.cluster_id = "another".into();
    let mut unparsable = routing(addr(1));
    unparsable.leaders[0].leader_quic = "not an address".into();
    let mut many = routing(addr(1));
    many.managers = (0..2000u32)
        .map(|i| pb::ManagerAddr {
            id: u64::from(i),
            quic: SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 6666)).to_string(),
        })
        .collect();
    for (bad, reason) in [
        (huge, RoutingRejectReason::GroupCount),
        (foreign, RoutingRejectReason::ForeignCluster),
        (unparsable, RoutingRejectReason::Malformed),
        (many, RoutingRejectReason::TooLarge),
    ] {
        *table.lock().unwrap() = bad;
        let before = link.routing_rejections().get(reason);
        assert!(
            link.refresh_routing().await.is_err(),
            "no acceptable routing"
        );
        assert!(link.routing_rejections().get(reason) > before, "{reason:?}");
        assert_eq!(link.groups(), 1);
        assert_eq!(link.cluster_id(), "memnet");
        assert_eq!(link.managers(), vec![addr(1), addr(2)]);
        assert_eq!(link.leader(0), Some(addr(1)));
    }
    // A good table of the same cluster is taken in again.
    *table.lock().unwrap() = routing(addr(2));
    link.refresh_routing().await.unwrap();
    assert_eq!(link.leader(0), Some(addr(2)));
}
