//! `Client` against the in-test gateway of `common`: requests wait for their answers, frames
//! that arrive meanwhile are kept in order, errors are typed, pings are answered, close is
//! clean, in both flavours and over raw TCP.

mod common;

use std::time::Duration;

use common::Listen;
use firetower_client::ws::{close_code, Opcode};
use firetower_client::{Client, ClientError, Event, Flavour, Payload, ServerFrame};
use serde_json::json;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, f).await.expect("no answer in time")
}

#[tokio::test]
async fn subscribe_publish_and_receive_in_order_in_both_flavours() {
    let addr = common::start(Listen::WebSocket).await;
    for flavour in [Flavour::Json, Flavour::Proto] {
        let mut c = within(Client::connect(&format!("ws://{addr}/ws"), flavour))
            .await
            .unwrap();
        assert_eq!(c.flavour(), flavour);
        within(c.subscribe(&["room.1", "room.2"])).await.unwrap();
        within(c.publish("room.1", json!({"text": "hi"})))
            .await
            .unwrap();
        within(c.publish(
            "room.2",
            Payload::Binary(bytes::Bytes::from_static(b"\x00\xff")),
        ))
        .await
        .unwrap();
        within(c.publish("elsewhere", json!(1))).await.unwrap();
        within(c.ping()).await.unwrap();
        // The message sent before the subscribe ack, the pong report, then the two publishes.
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = within(c.next_message()).await.unwrap().unwrap();
            got.push((m.topic.to_string(), m.data, m.term, m.seq));
        }
        let binary = match flavour {
            // The JSON flavour cannot publish bytes: they go up as a JSON string of base64.
            Flavour::Json => Payload::Json(bytes::Bytes::from_static(b"\"AP8=\"")),
            Flavour::Proto => Payload::Binary(bytes::Bytes::from_static(b"\x00\xff")),
        };
        assert_eq!(
            got,
            vec![
                ("early".into(), Payload::from(json!(1)), 7, 1),
                ("pong.seen".into(), Payload::from(json!(true)), 7, 2),
                ("room.1".into(), Payload::from(json!({"text": "hi"})), 7, 3),
                ("room.2".into(), binary, 7, 4),
            ],
            "{flavour:?}"
        );
        within(c.close()).await.unwrap();
    }
}

#[tokio::test]
async fn refusals_carry_the_servers_code_and_message() {
    let addr = common::start(Listen::WebSocket).await;
    let mut c = within(Client::connect(&addr.to_string(), Flavour::Json))
        .await
        .unwrap();
    let err = within(c.subscribe(&["forbidden.x"])).await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
    assert!(
        matches!(&err, ClientError::Refused { id: 1, message, .. } if message == "not for you"),
        "{err:?}"
    );
    // The server's parse errors come back as frames too.
    c.send_text(r#"{"op":"fly","id":9}"#).await.unwrap();
    let e = within(c.reply_to(9)).await.unwrap_err();
    assert_eq!(e.code(), Some("unknown_op"));
    // The connection is still usable.
    within(c.ping()).await.unwrap();
}

#[tokio::test]
async fn low_level_frames_and_events() {
    let addr = common::start(Listen::WebSocket).await;
    let mut c = within(Client::connect(&addr.to_string(), Flavour::Json))
        .await
        .unwrap();
    // A fragmented request, sent frame by frame, is one request to the server.
    let text = br#"{"op":"ping","id":5}"#;
    c.send_frame(false, Opcode::Text, &text[..6]).await.unwrap();
    c.send_frame(true, Opcode::Continuation, &text[6..])
        .await
        .unwrap();
    let frame = within(c.next_frame()).await.unwrap().unwrap();
    assert!(frame.fin);
    assert_eq!(frame.opcode, Opcode::Text);
    assert_eq!(
        ServerFrame::parse_json(&frame.payload).unwrap(),
        ServerFrame::Pong { id: 5 }
    );
    c.send_ping(b"p").await.unwrap();
    assert_eq!(
        within(c.next_event()).await.unwrap(),
        Some(Event::Pong(bytes::Bytes::from_static(b"p")))
    );
    // The close handshake: our close, the server's answer, then the end of the stream.
    c.send_raw(&firetower_client::ws::encode_close_frame(
        close_code::NORMAL,
        "done",
        Some([1, 2, 3, 4]),
    ))
    .await
    .unwrap();
    assert_eq!(
        within(c.next_event()).await.unwrap(),
        Some(Event::Close(Some((1000, "bye".into()))))
    );
    assert_eq!(within(c.next_event()).await.unwrap(), None);
}

#[tokio::test]
async fn waiting_after_the_server_closed_reports_the_close() {
    let addr = common::start(Listen::WebSocket).await;
    let mut c = within(Client::connect(&addr.to_string(), Flavour::Json))
        .await
        .unwrap();
    c.send_raw(&firetower_client::ws::encode_close_frame(
        1000,
        "",
        Some([9; 4]),
    ))
    .await
    .unwrap();
    // Waiting for an answer that cannot come ends with the server's close, not a hang.
    let err = within(c.reply_to(1)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Closed(Some((1000, r))) if r == "bye"),
        "{err:?}"
    );
}

#[tokio::test]
async fn raw_tcp_flavour() {
    let addr = common::start(Listen::Tcp).await;
    let mut c = within(Client::connect_tcp(addr)).await.unwrap();
    assert_eq!(c.flavour(), Flavour::Proto);
    within(c.subscribe(&["dev.1"])).await.unwrap();
    within(c.publish("dev.1", json!({"on": true})))
        .await
        .unwrap();
    let err = within(c.subscribe(&["forbidden"])).await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
    let early = within(c.next_message()).await.unwrap().unwrap();
    assert_eq!(&*early.topic, "early");
    let m = within(c.next_message()).await.unwrap().unwrap();
    assert_eq!(
        (&*m.topic, m.data, m.seq),
        ("dev.1", Payload::from(json!({"on": true})), 2)
    );
    within(c.close()).await.unwrap();
}

#[tokio::test]
async fn refused_upgrades_and_addresses() {
    // A plain HTTP server that answers 404 to everything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let err = within(Client::connect(&addr.to_string(), Flavour::Json))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Upgrade(firetower_client::ws::UpgradeRefused::Status(404))
        ),
        "{err:?}"
    );
    let err = within(Client::connect("wss://127.0.0.1:1/ws", Flavour::Json))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Address { .. }), "{err:?}");
}
