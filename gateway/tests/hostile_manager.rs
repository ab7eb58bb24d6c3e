//! The gateway against managers that send well-formed messages with absurd values (issue 11):
//! a real `ClusterUpstream` and `Gateway`, fake managers on the in-memory QUIC network that
//! speak the link protocol and push whatever a test tells them to on the session streams.
//! Clients must only ever see valid JSON frames of the topics they asked for; the gateway
//! keeps serving and counts what it refused.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, eventually, recv, subscribe, test_config, Ws};
use firetower_gateway::{ClusterOptions, ClusterUpstream, Gateway, GatewayHandle, LinkOptions};
use firetower_link::{decode_body, encode_frame, read_link_frame, MemNet, MAX_LINK_FRAME_BYTES};
use firetower_proto::link::{self as pb, gateway_frame, gateway_reply, gateway_request};
use firetower_proto::link::{session_frame, SessionFrame};
use tokio::sync::mpsc;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 6666))
}

const GATEWAY: u8 = 10;

/// The cluster's routing: one group, led by manager 1, managers 1 and 2.
fn routing() -> pb::Routing {
    pb::Routing {
        cluster_id: "c-1".into(),
        groups: 1,
        managers: [1, 2]
            .iter()
            .map(|&i| pb::ManagerAddr {
                id: i as u64,
                quic: addr(i).to_string(),
            })
            .collect(),
        leaders: vec![pb::GroupLeader {
            group: 0,
            leader_id: 1,
            leader_quic: addr(1).to_string(),
        }],
    }
}

/// A manager that answers requests like a real one (subscriptions succeed, the routing is
/// whatever `routing` holds) and, on each session stream, sends `SessionOpened` and its
/// routing, then whatever the test pushes.
#[derive(Clone)]
struct FakeManager {
    routing: Arc<Mutex<pb::Routing>>,
    /// Send sides of the open session streams (raw bytes, so a test can break the framing).
    sessions: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
    /// Every ack received on a session: (upto, superseded).
    acks: Arc<Mutex<Vec<Ack>>>,
    /// When false, sessions are never answered (no `SessionOpened`).
    answer_sessions: Arc<std::sync::atomic::AtomicBool>,
    _endpoint: quinn::Endpoint,
}

impl FakeManager {
    fn start(net: &MemNet, me: SocketAddr) -> FakeManager {
        let endpoint = net.endpoint(me).unwrap();
        let manager = FakeManager {
            routing: Arc::new(Mutex::new(routing())),
            sessions: Arc::default(),
            acks: Arc::default(),
            answer_sessions: Arc::new(true.into()),
            _endpoint: endpoint.clone(),
        };
        let m = manager.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let m = m.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(m.clone().serve(send, recv));
                    }
                });
            }
        });
        manager
    }

    async fn serve(self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Ok(Some(body)) = read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES).await else {
            return;
        };
        let request: pb::GatewayRequest = decode_body(&body).unwrap();
        let result = match request.op {
            Some(gateway_request::Op::OpenSession(_)) => return self.session(send, recv).await,
            Some(gateway_request::Op::GetRouting(_)) => {
                gateway_reply::Result::Routing(self.routing.lock().unwrap().clone())
            }
            Some(gateway_request::Op::Subscribe(_)) | Some(gateway_request::Op::Unsubscribe(_)) => {
                gateway_reply::Result::Done(pb::Done {
                    changed: true,
                    index: 1,
                })
            }
            _ => gateway_reply::Result::Failure(pb::Failure {
                code: "refused".into(),
                message: "not in this fake".into(),
            }),
        };
        let reply = pb::GatewayReply {
            result: Some(result),
        };
        let _ = send.write_all(&encode_frame(&reply)).await;
        let _ = send.finish();
    }

    async fn session(self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        if self
            .answer_sessions
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            let _ = tx.send(session(session_frame::Frame::Opened(pb::SessionOpened {
                epoch: 1,
            })));
            let routing = self.routing.lock().unwrap().clone();
            let _ = tx.send(session(session_frame::Frame::Routing(routing)));
            self.sessions.lock().unwrap().push(tx.clone());
        }
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if send.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        while let Ok(Some(body)) = read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES).await {
            let frame: pb::GatewayFrame = decode_body(&body).unwrap();
            if let Some(gateway_frame::Frame::Ack(a)) = frame.frame {
                self.acks.lock().unwrap().push((a.upto, a.superseded));
            }
        }
        drop(tx);
    }

    /// Push raw bytes on every open session stream.
    fn push_raw(&self, bytes: Vec<u8>) {
        for s in self.sessions.lock().unwrap().iter() {
            let _ = s.send(bytes.clone());
        }
    }

    fn push(&self, frame: session_frame::Frame) {
        self.push_raw(session(frame));
    }

    /// Push a delivery and wait for its ack; true when the gateway passed it on (not
    /// superseded).
    async fn deliver(&self, dseq: u64, topic: &str, term: u64, seq: u64, data: &[u8]) -> bool {
        self.push(session_frame::Frame::Delivery(pb::Delivery {
            topic: topic.into(),
            data: data.to_vec(),
            json: true,
            term,
            seq,
            dseq,
            ..pb::Delivery::default()
        }));
        let acks = self.acks.clone();
        let mut found = None;
        eventually(&format!("the ack of delivery {dseq}"), || {
            found = acks
                .lock()
                .unwrap()
                .iter()
                .find(|(upto, _)| *upto == dseq)
                .map(|(_, superseded)| !superseded.contains(&dseq));
            found.is_some()
        })
        .await;
        found.unwrap()
    }
}

/// An ack as received: `(upto, superseded)`.
type Ack = (u64, Vec<u64>);

fn session(frame: session_frame::Frame) -> Vec<u8> {
    encode_frame(&SessionFrame { frame: Some(frame) })
}

struct Setup {
    _net: MemNet,
    m1: FakeManager,
    m2: FakeManager,
    upstream: ClusterUpstream,
    gateway: GatewayHandle,
    ws: Ws,
}

async fn setup() -> Setup {
    let net = MemNet::new();
    let m1 = FakeManager::start(&net, addr(1));
    let m2 = FakeManager::start(&net, addr(2));
    let options = ClusterOptions {
        lease: Duration::from_secs(2),
        delivery_buffer: 1024,
        link: LinkOptions {
            request_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..LinkOptions::default()
        },
    };
    let endpoint = net.client_endpoint(addr(GATEWAY)).unwrap();
    let (upstream, deliveries) =
        ClusterUpstream::connect_with_endpoint(endpoint, 7, vec![addr(1)], options)
            .await
            .unwrap();
    let gateway = Gateway::start(test_config(), Arc::new(upstream.clone()), deliveries)
        .await
        .unwrap();
    let u = upstream.clone();
    eventually("sessions with both managers", || u.open_sessions() == 2).await;
    let mut ws = connect(gateway.local_addr(), None).await;
    subscribe(&mut ws, "room.1", 1).await;
    Setup {
        _net: net,
        m1,
        m2,
        upstream,
        gateway,
        ws,
    }
}

/// The next frame a client gets is the message `data` of room.1 at `(term, seq)`; `recv`
/// fails on anything that is not valid JSON.
async fn expect_message(ws: &mut Ws, data: serde_json::Value, term: u64, seq: u64) {
    let frame = recv(ws).await.expect("a valid JSON frame");
    assert_eq!(
        frame,
        serde_json::json!({"op":"message","topic":"room.1","data":data,"term":term,"seq":seq}),
    );
}

#[tokio::test]
async fn clients_never_see_invalid_json_absurd_stamps_or_a_non_leader() {
    let Setup {
        _net,
        m1,
        m2,
        upstream,
        gateway,
        mut ws,
    } = setup().await;

    assert!(m1.deliver(1, "room.1", 1, 1, br#"{"n":1}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":1}), 1, 1).await;

    // A payload that would splice another topic into the client's frame, invalid UTF-8,
    // trailing garbage.
    assert!(!m1.deliver(2, "room.1", 1, 2, br#"1,"topic":"other""#).await);
    assert!(!m1.deliver(3, "room.1", 1, 3, b"\"\xff\xfe\"").await);
    assert!(!m1.deliver(4, "room.1", 1, 4, br#"{"a":1}}"#).await);
    // A stamp that would wedge the topic for good.
    assert!(
        !m1.deliver(5, "room.1", u64::MAX, u64::MAX, br#"{"n":"max"}"#)
            .await
    );
    assert!(
        !m1.deliver(6, "room.1", 1, u64::MAX, br#"{"n":"max"}"#)
            .await
    );
    // The manager that does not lead the group, at the leader's term.
    assert!(!m2.deliver(1, "room.1", 1, 9, br#"{"n":"m2"}"#).await);
    // A topic no valid client could subscribe to.
    assert!(!m1.deliver(7, "", 1, 5, br#"{"n":"empty"}"#).await);

    // The topic is not wedged: the leader's next message arrives, and is the next frame.
    assert!(m1.deliver(8, "room.1", 1, 2, br#"{"n":2}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":2}), 1, 2).await;

    assert_eq!(upstream.rejected("delivery_invalid_json"), 3); // new-api
    assert_eq!(upstream.rejected("delivery_absurd_stamp"), 2); // new-api
    assert_eq!(upstream.rejected("delivery_not_leader"), 1); // new-api
    assert_eq!(upstream.rejected("delivery_invalid_topic"), 1); // new-api
    let text = gateway.metrics_text(); // new-api
    assert!(
        // new-api
        text.contains(
            // new-api
            "firetower_gateway_link_rejected_total{reason=\"delivery_invalid_json\"} 3\n" // new-api
        ), // new-api
        "{text}" // new-api
    ); // new-api
}

#[tokio::test]
async fn a_new_leader_is_believed_once_its_routing_says_so() {
    let Setup {
        _net,
        m1,
        m2,
        upstream: _upstream,
        gateway: _gateway,
        mut ws,
    } = setup().await;
    assert!(m1.deliver(1, "room.1", 3, 1, br#"{"n":1}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":1}), 3, 1).await;

    // Manager 2 is elected (term 4) and delivers before any routing push says so: the
    // gateway asks it, and its routing names itself.
    let mut elected = routing();
    elected.leaders[0].leader_id = 2;
    elected.leaders[0].leader_quic = addr(2).to_string();
    *m2.routing.lock().unwrap() = elected.clone();
    assert!(m2.deliver(1, "room.1", 4, 1, br#"{"n":2}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":2}), 4, 1).await;

    // Manager 1 has learnt of the election too.
    *m1.routing.lock().unwrap() = elected;
    // The deposed leader's late message is refused.
    assert!(!m1.deliver(2, "room.1", 3, 2, br#"{"n":"late"}"#).await);
    // A manager that claims a newer term without leading (its routing says manager 2 leads)
    // is refused too.
    assert!(!m1.deliver(3, "room.1", 5, 1, br#"{"n":"liar"}"#).await);
    assert!(m2.deliver(2, "room.1", 4, 2, br#"{"n":3}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":3}), 4, 2).await;
}

#[tokio::test]
async fn absurd_routing_is_refused_and_the_last_good_one_stays() {
    let Setup {
        _net,
        m1,
        m2,
        upstream,
        gateway,
        mut ws,
    } = setup().await;
    let link = upstream.link().clone();

    let mut huge = routing();
    huge.groups = u32::MAX;
    m1.push(session_frame::Frame::Routing(huge.clone()));
    let mut no_groups = routing();
    no_groups.groups = 0;
    m1.push(session_frame::Frame::Routing(no_groups));
    let mut bad_leader = routing();
    bad_leader.leaders[0].leader_quic = "nowhere".into();
    m1.push(session_frame::Frame::Routing(bad_leader));
    let mut many = routing();
    many.managers = (0..5000u32)
        .map(|i| pb::ManagerAddr {
            id: u64::from(i),
            quic: SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 6666)).to_string(),
        })
        .collect();
    m1.push(session_frame::Frame::Routing(many));
    let mut moved = routing();
    moved.leaders[0].leader_quic = "0.0.0.0:0".into();
    m1.push(session_frame::Frame::Routing(moved));
    // Every refusal is behind this delivery on the same stream.
    assert!(m1.deliver(1, "room.1", 1, 1, br#"{"n":1}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":1}), 1, 1).await;

    assert_eq!(link.groups(), 1);
    assert_eq!(link.managers(), vec![addr(1), addr(2)]);
    assert_eq!(link.cluster_id(), "c-1");
    assert!(link.all_leaders_known());
    assert_eq!(upstream.open_sessions(), 2);
    assert_eq!(upstream.rejected("routing_group_count"), 1); // new-api
    assert_eq!(upstream.rejected("routing_malformed"), 2); // new-api
    assert_eq!(upstream.rejected("routing_too_large"), 1); // new-api
    assert_eq!(upstream.rejected("routing_absurd_address"), 1); // new-api

    // A manager of another cluster: its routing is never merged and its session is closed.
    let mut foreign = routing();
    foreign.cluster_id = "c-2".into();
    foreign.leaders[0].leader_quic = addr(2).to_string();
    *m2.routing.lock().unwrap() = foreign.clone();
    m2.push(session_frame::Frame::Routing(foreign));
    let u = upstream.clone(); // new-api
    eventually("the foreign session closed", || {
        // new-api
        u.rejected("routing_foreign_cluster") >= 1 && u.open_sessions() == 1 // new-api
    }) // new-api
    .await; // new-api
    assert_eq!(link.cluster_id(), "c-1");
    assert_eq!(link.leader(0), Some(addr(1))); // new-api
    assert!(m1.deliver(2, "room.1", 1, 2, br#"{"n":2}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":2}), 1, 2).await;
    let text = gateway.metrics_text(); // new-api
    assert!(
        // new-api
        text.contains("firetower_gateway_link_rejected_total{reason=\"routing_group_count\"} 1\n"), // new-api
        "{text}" // new-api
    ); // new-api
}

#[tokio::test]
async fn oversized_session_frames_end_the_session_and_it_reopens() {
    let Setup {
        _net,
        m1,
        m2: _m2,
        upstream,
        gateway: _gateway,
        mut ws,
    } = setup().await;
    let open_before = m1.sessions.lock().unwrap().len();
    // A `SessionOpened` announcing 1000 bytes (at most 64 are allowed for it).
    let mut bytes = 1000u32.to_be_bytes().to_vec();
    bytes.push(0x0A);
    bytes.resize(4 + 1000, 0);
    m1.push_raw(bytes);
    let u = upstream.clone();
    eventually("the frame refused", || {
        u.rejected("session_frame_too_large") == 1
    })
    .await;
    let m = m1.clone();
    eventually("a new session", || {
        m.sessions.lock().unwrap().len() > open_before
    })
    .await;
    eventually("both sessions open", || u.open_sessions() == 2).await;
    m1.sessions.lock().unwrap().remove(0);
    assert!(m1.deliver(1, "room.1", 1, 1, br#"{"n":1}"#).await);
    expect_message(&mut ws, serde_json::json!({"n":1}), 1, 1).await;
}

/// A manager that falls silent (paused, or cut off: it acks nothing) is treated as gone
/// within the lease: the link's QUIC idle timeout (3 s) is shorter than the 5 s default.
#[tokio::test]
async fn a_silent_manager_is_gone_within_the_lease() {
    let Setup {
        _net: net,
        m1: _m1,
        m2: _m2,
        upstream,
        gateway: _gateway,
        ws: _ws,
    } = setup().await;
    net.cut(addr(GATEWAY), addr(2));
    let started = std::time::Instant::now();
    let u = upstream.clone();
    eventually("the silent manager's session ended", || {
        u.open_sessions() == 1
    })
    .await;
    assert!(
        started.elapsed() < ClusterOptions::default().lease,
        "noticed after {:?}",
        started.elapsed()
    );
    net.heal();
    eventually("the session back after the heal", || u.open_sessions() == 2).await;
}

/// A manager that never answers `OpenSession` is given the lease, then the session is
/// retried.
#[tokio::test]
async fn a_manager_that_never_opens_the_session_is_timed_out() {
    let net = MemNet::new();
    let _m1 = FakeManager::start(&net, addr(1));
    let m2 = FakeManager::start(&net, addr(2));
    m2.answer_sessions
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let options = ClusterOptions {
        lease: Duration::from_secs(1),
        ..ClusterOptions::default()
    };
    let endpoint = net.client_endpoint(addr(GATEWAY)).unwrap();
    let (upstream, _deliveries) =
        ClusterUpstream::connect_with_endpoint(endpoint, 7, vec![addr(1)], options)
            .await
            .unwrap();
    let u = upstream.clone();
    eventually("the open timed out", || {
        u.rejected("session_open_timeout") >= 1
    })
    .await;
    assert_eq!(upstream.open_sessions(), 1);
}
