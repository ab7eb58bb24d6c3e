//! Subscribe, publish and receive, across flavours and wires.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use firetower_gateway::{ClientFrame, Payload, ServerFrame};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn subscribe_ack_publish_message() {
    let (gw, fake) = start(test_config()).await;
    let mut sub = connect(gw.local_addr(), None).await;
    let mut publisher = connect(gw.local_addr(), Some("firetower.json")).await;
    subscribe(&mut sub, "room.1", 1).await;
    assert!(fake.interest().contains("room.1"));
    publish(
        &mut publisher,
        "room.1",
        r#"{"text": "hi", "n": [1, 2]}"#,
        7,
    )
    .await;
    let m = recv(&mut sub).await.unwrap();
    assert_eq!(
        m,
        json!({"op":"message","topic":"room.1","data":{"text":"hi","n":[1,2]},"term":1,"seq":1})
    );
    // The publisher is not subscribed: it gets nothing but its ack.
    assert_alive(&mut publisher).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn many_subscribers_get_each_message_once_in_order() {
    let (gw, _fake) = start(test_config()).await;
    let mut subs = Vec::new();
    for i in 0..20 {
        let mut ws = connect(gw.local_addr(), None).await;
        subscribe(&mut ws, "live", i).await;
        subs.push(ws);
    }
    let mut publisher = connect(gw.local_addr(), None).await;
    for n in 0..50 {
        publish(&mut publisher, "live", &n.to_string(), 1000 + n).await;
    }
    for ws in &mut subs {
        for n in 0..50u64 {
            let m = recv(ws).await.unwrap();
            assert_eq!(m["data"], json!(n));
            assert_eq!(m["seq"], json!(n + 1));
        }
        assert_alive(ws).await; // and nothing more queued before the pong
    }
    assert_eq!(gw.metrics().messages_out, 20 * 50);
    assert_eq!(gw.metrics().topics, 1);
    assert_eq!(gw.metrics().subscriptions, 20);
    gw.shutdown().await;
}

#[tokio::test]
async fn ack_waits_for_the_cluster_commit() {
    let (gw, fake) = start(test_config()).await;
    fake.hold_subscribes.store(true, Ordering::SeqCst);
    let mut a = connect(gw.local_addr(), None).await;
    let mut b = connect(gw.local_addr(), None).await;
    send(&mut a, r#"{"op":"subscribe","topics":["slow"],"id":1}"#).await;
    eventually("first subscriber registered", || {
        gw.metrics().subscriptions == 1
    })
    .await;
    send(&mut b, r#"{"op":"subscribe","topics":["slow"],"id":2}"#).await;
    eventually("second subscriber registered", || {
        gw.metrics().subscriptions == 2
    })
    .await;
    // Neither is acked before the commit: a ping sent after is answered first.
    send(&mut a, r#"{"op":"ping","id":9}"#).await;
    assert_eq!(recv(&mut a).await.unwrap(), json!({"op":"pong","id":9}));
    fake.hold_subscribes.store(false, Ordering::SeqCst);
    fake.release.notify_one();
    assert_eq!(recv(&mut a).await.unwrap(), json!({"op":"ack","id":1}));
    assert_eq!(recv(&mut b).await.unwrap(), json!({"op":"ack","id":2}));
    // One upstream subscribe for both.
    assert_eq!(fake.subscribes(), vec!["slow".to_string()]);
    // A third is acked at once.
    let mut c = connect(gw.local_addr(), None).await;
    subscribe(&mut c, "slow", 3).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_subscribe_is_reported_with_the_cluster_code() {
    let (gw, _fake) = start(test_config()).await;
    let mut a = connect(gw.local_addr(), None).await;
    send(&mut a, r#"{"op":"subscribe","topics":["fail.x"],"id":5}"#).await;
    let e = recv(&mut a).await.unwrap();
    assert_eq!(e["op"], "error");
    assert_eq!(e["id"], 5);
    assert_eq!(e["code"], "unavailable");
    eventually("topic forgotten", || gw.metrics().topics == 0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_of_the_last_subscriber_leaves_the_topic() {
    let (gw, fake) = start(test_config()).await;
    let mut a = connect(gw.local_addr(), None).await;
    let mut b = connect(gw.local_addr(), None).await;
    subscribe(&mut a, "t", 1).await;
    subscribe(&mut b, "t", 1).await;
    send(&mut a, r#"{"op":"unsubscribe","topics":["t"],"id":2}"#).await;
    assert_eq!(recv(&mut a).await.unwrap(), json!({"op":"ack","id":2}));
    assert!(fake.unsubscribes().is_empty());
    drop(b); // disconnecting leaves too
    eventually("upstream unsubscribe", || {
        fake.unsubscribes() == vec!["t".to_string()]
    })
    .await;
    eventually("index empty", || gw.metrics().topics == 0).await;
    // a no longer receives messages for t.
    fake.deliver("t", Payload::Json(Bytes::from_static(b"1")))
        .await;
    assert_alive(&mut a).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn proto_and_json_clients_share_topics() {
    let (gw, _fake) = start(test_config()).await;
    let mut json_sub = connect(gw.local_addr(), None).await;
    let mut proto = connect(gw.local_addr(), Some("firetower.proto")).await;
    subscribe(&mut json_sub, "mixed", 1).await;
    let sub = ClientFrame::subscribe(1, vec!["mixed".into()]);
    proto.send_binary(&sub.encode_proto()).await.unwrap();
    assert_eq!(
        ServerFrame::parse_proto(&recv_binary(&mut proto).await.unwrap()).unwrap(),
        ServerFrame::Ack { id: 1 }
    );

    // Binary from the proto client: JSON subscribers get base64.
    let p = ClientFrame::Publish {
        id: 2,
        topic: "mixed".into(),
        payload: Payload::Binary(Bytes::from_static(b"\x00\xff")),
    };
    proto.send_binary(&p.encode_proto()).await.unwrap();
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match ServerFrame::parse_proto(&recv_binary(&mut proto).await.unwrap()).unwrap() {
            ServerFrame::Ack { id: 2 } => got_ack = true,
            ServerFrame::Message {
                payload, seq: 1, ..
            } => {
                assert_eq!(payload, Payload::Binary(Bytes::from_static(b"\x00\xff")));
                got_msg = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        recv(&mut json_sub).await.unwrap(),
        json!({"op":"message","topic":"mixed","data":"AP8=","encoding":"base64","term":1,"seq":1})
    );

    // JSON from the JSON client: proto subscribers get the JSON text, marked as JSON.
    publish(&mut json_sub, "mixed", r#"{"a":1}"#, 3).await;
    loop {
        if let ServerFrame::Message {
            payload, seq: 2, ..
        } = ServerFrame::parse_proto(&recv_binary(&mut proto).await.unwrap()).unwrap()
        {
            assert_eq!(payload, Payload::Json(Bytes::from_static(br#"{"a":1}"#)));
            break;
        }
    }
    gw.shutdown().await;
}

async fn tcp_send(s: &mut tokio::net::TcpStream, frame: &ClientFrame) {
    let body = frame.encode_proto();
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
}

async fn tcp_recv(s: &mut tokio::net::TcpStream) -> ServerFrame {
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    ServerFrame::parse_proto(&body).unwrap()
}

#[tokio::test]
async fn raw_tcp_devices_subscribe_and_receive() {
    let mut config = test_config();
    config.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    let (gw, _fake) = start(config).await;
    let mut device = tokio::net::TcpStream::connect(gw.tcp_local_addr().unwrap())
        .await
        .unwrap();
    tcp_send(
        &mut device,
        &ClientFrame::subscribe(1, vec!["cmd.42".into()]),
    )
    .await;
    assert_eq!(tcp_recv(&mut device).await, ServerFrame::Ack { id: 1 });
    tcp_send(&mut device, &ClientFrame::Ping { id: 2 }).await;
    assert_eq!(tcp_recv(&mut device).await, ServerFrame::Pong { id: 2 });
    let mut ws = connect(gw.local_addr(), None).await;
    publish(&mut ws, "cmd.42", r#""reboot""#, 1).await;
    match tcp_recv(&mut device).await {
        ServerFrame::Message {
            topic,
            payload,
            term: 1,
            seq: 1,
            position: None,
        } => {
            assert_eq!(&*topic, "cmd.42");
            assert_eq!(payload, Payload::Json(Bytes::from_static(b"\"reboot\"")));
        }
        other => panic!("unexpected {other:?}"),
    }
    // An oversized TCP frame: error frame, then the socket closes.
    device.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    match tcp_recv(&mut device).await {
        ServerFrame::Error { code, .. } => assert_eq!(code, "frame_too_large"),
        other => panic!("unexpected {other:?}"),
    }
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, device.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn fragmented_messages_and_interleaved_pings_are_handled() {
    use firetower_gateway::ws::Opcode;
    let (gw, _fake) = start(test_config()).await;
    let mut raw = RawWs::connect(gw.local_addr()).await;
    let text = br#"{"op":"subscribe","topics":["frag"],"id":11}"#;
    raw.send_frame(false, Opcode::Text, &text[..10]).await;
    raw.send_frame(true, Opcode::Ping, b"p1").await;
    raw.send_frame(false, Opcode::Continuation, &text[10..20])
        .await;
    raw.send_frame(true, Opcode::Continuation, &text[20..])
        .await;
    let pong = raw.recv_frame().await.unwrap();
    assert_eq!((pong.opcode, &pong.payload[..]), (Opcode::Pong, &b"p1"[..]));
    assert_eq!(raw.recv_json().await, json!({"op":"ack","id":11}));
    // A clean close from the client is echoed.
    raw.send_frame(true, Opcode::Close, &1000u16.to_be_bytes())
        .await;
    assert_eq!(raw.recv_close().await.0, 1000);
    eventually("connection gone", || gw.metrics().connections_open == 0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn client_pings_are_answered() {
    let (gw, _fake) = start(test_config()).await;
    let mut ws = connect(gw.local_addr(), None).await;
    ws.send_ping(b"hello").await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next_event())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let firetower_client::Event::Pong(p) = msg {
            assert_eq!(&p[..], b"hello");
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_alive(&mut ws).await;
    gw.shutdown().await;
}
