//! Malformed and hostile input: each case gets the right error frame or close code, and a
//! bystander client subscribed to a topic keeps being served throughout.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use firetower_gateway::ws::Opcode;
use firetower_gateway::{GatewayHandle, Payload};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client subscribed to "calm" that must keep getting messages.
struct Bystander {
    ws: Ws,
    seq: u64,
}

impl Bystander {
    async fn new(gw: &GatewayHandle) -> Bystander {
        let mut ws = connect(gw.local_addr(), None).await;
        subscribe(&mut ws, "calm", 1).await;
        Bystander { ws, seq: 0 }
    }

    async fn still_served(&mut self, fake: &FakeUpstream) {
        self.seq = fake
            .deliver("calm", Payload::Json(Bytes::from_static(b"true")))
            .await;
        let m = recv(&mut self.ws).await.unwrap();
        assert_eq!(m["seq"], json!(self.seq));
        assert_alive(&mut self.ws).await;
    }
}

async fn error_for(ws: &mut Ws, frame: &str) -> serde_json::Value {
    send(ws, frame).await;
    let e = recv(ws).await.unwrap();
    assert_eq!(e["op"], "error", "{frame} -> {e}");
    e
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_survives() {
    let (gw, fake) = start(test_config()).await;
    let mut by = Bystander::new(&gw).await;
    let mut ws = connect(gw.local_addr(), None).await;
    let cases = [
        ("not json at all", None, "invalid_json"),
        ("[1,2]", None, "invalid_json"),
        (r#"{"op":"dance","id":1}"#, Some(1), "unknown_op"),
        (r#"{"id":2}"#, Some(2), "missing_field"),
        (r#"{"op":"subscribe","id":3}"#, Some(3), "missing_field"),
        (
            r#"{"op":"publish","topic":"t","id":4}"#,
            Some(4),
            "missing_field",
        ),
        (
            r#"{"op":"publish","data":1,"id":5}"#,
            Some(5),
            "missing_field",
        ),
        (
            r#"{"op":"subscribe","topics":[""],"id":6}"#,
            Some(6),
            "invalid_topic",
        ),
        (
            r#"{"op":"subscribe","topics":["a\u0000b"],"id":7}"#,
            Some(7),
            "invalid_topic",
        ),
        (
            r#"{"op":"subscribe","topics":["a b"],"id":8}"#,
            Some(8),
            "invalid_topic",
        ),
        (
            r#"{"op":"subscribe","topics":[42],"id":9}"#,
            Some(9),
            "invalid_field",
        ),
        (r#"{"op":"ping","id":"x"}"#, None, "invalid_field"),
    ];
    for (frame, id, code) in cases {
        let e = error_for(&mut ws, frame).await;
        assert_eq!(e["code"], code, "{frame}");
        assert_eq!(e.get("id").and_then(|v| v.as_u64()), id, "{frame}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long = "x".repeat(257);
    let e = error_for(
        &mut ws,
        &format!(r#"{{"op":"subscribe","topics":["{long}"],"id":10}}"#),
    )
    .await;
    assert_eq!(e["code"], "invalid_topic");
    assert_alive(&mut ws).await;
    by.still_served(&fake).await;
    assert!(gw.metrics().protocol_errors >= 13);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_one_mib_frame_is_refused_with_1009() {
    let (gw, fake) = start(test_config()).await;
    let mut by = Bystander::new(&gw).await;
    let mut ws = connect(gw.local_addr(), None).await;
    let big = format!(
        r#"{{"op":"publish","topic":"t","data":"{}","id":1}}"#,
        "a".repeat(1 << 20)
    );
    ws.send_text(&big).await.unwrap();
    let (code, before) = recv_close(&mut ws).await.unwrap();
    assert_eq!(code, 1009);
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["code"], "frame_too_large");
    by.still_served(&fake).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn binary_on_the_json_subprotocol_is_refused_with_1003() {
    let (gw, fake) = start(test_config()).await;
    let mut by = Bystander::new(&gw).await;
    let mut ws = connect(gw.local_addr(), Some("firetower.json")).await;
    ws.send_binary(&[1u8, 2, 3]).await.unwrap();
    let (code, before) = recv_close(&mut ws).await.unwrap();
    assert_eq!(code, 1003);
    assert_eq!(before[0]["code"], "binary_on_json");
    by.still_served(&fake).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_the_right_code() {
    let (gw, fake) = start(test_config()).await;
    let mut by = Bystander::new(&gw).await;

    // Unmasked client frame: 1002.
    let mut raw = RawWs::connect(gw.local_addr()).await;
    let unmasked =
        firetower_gateway::ws::encode_frame(true, Opcode::Text, br#"{"op":"ping","id":1}"#, None);
    raw.send_raw(&unmasked).await;
    assert_eq!(raw.recv_close().await.0, 1002);

    // Continuation without a start: 1002.
    let mut raw = RawWs::connect(gw.local_addr()).await;
    raw.send_frame(true, Opcode::Continuation, b"x").await;
    assert_eq!(raw.recv_close().await.0, 1002);

    // Text that is not UTF-8: 1007.
    let mut raw = RawWs::connect(gw.local_addr()).await;
    raw.send_frame(true, Opcode::Text, b"\xff\xfe").await;
    assert_eq!(raw.recv_close().await.0, 1007);

    // Fragments adding up past the limit: 1009.
    let mut raw = RawWs::connect(gw.local_addr()).await;
    let chunk = vec![b' '; 40 * 1024];
    raw.send_frame(false, Opcode::Text, &chunk).await;
    raw.send_frame(true, Opcode::Continuation, &chunk).await;
    assert_eq!(raw.recv_close().await.0, 1009);

    by.still_served(&fake).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn too_many_topics_on_one_connection() {
    let mut config = test_config();
    config.limits.max_topics = 5;
    let (gw, fake) = start(config).await;
    let mut by = Bystander::new(&gw).await;
    let mut ws = connect(gw.local_addr(), None).await;
    send(
        &mut ws,
        r#"{"op":"subscribe","topics":["a","b","c","d"],"id":1}"#,
    )
    .await;
    assert_eq!(recv(&mut ws).await.unwrap(), json!({"op":"ack","id":1}));
    let e = error_for(&mut ws, r#"{"op":"subscribe","topics":["e","f"],"id":2}"#).await;
    assert_eq!(e["code"], "too_many_topics");
    assert_eq!(e["id"], 2);
    subscribe(&mut ws, "e", 3).await; // exactly at the limit is fine
    by.still_served(&fake).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_subscribe_flood_is_rate_limited_then_closed() {
    let (gw, fake) = start(test_config()).await;
    let mut by = Bystander::new(&gw).await;
    let mut ws = connect(gw.local_addr(), None).await;
    // 10,000 subscribe requests as fast as the socket takes them (no reading in between).
    // Topics repeat so the topic limit is not what stops it.
    let flood = tokio::spawn(async move {
        for i in 0..10_000u32 {
            let frame = format!(
                r#"{{"op":"subscribe","topics":["flood.{}"],"id":{i}}}"#,
                i % 50
            );
            if ws.send_text(&frame).await.is_err() {
                break;
            }
        }
        ws
    });
    let mut ws = flood.await.unwrap();
    let (code, before) = recv_close(&mut ws).await.unwrap();
    assert_eq!(code, 1008);
    assert!(before.iter().any(|f| f["code"] == "rate_limited"));
    // Closed long before the 10,000th request: the burst (200) plus the strikes (100), and a
    // little refill.
    assert!(before.len() < 1_000, "{} replies", before.len());
    let m = gw.metrics();
    assert!(m.rate_limited >= 100 && m.rate_limited < 1_000, "{m:?}");
    by.still_served(&fake).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn connect_and_send_nothing_is_dropped_after_the_handshake_timeout() {
    let (gw, fake) = start(test_config()).await;
    let mut by = Bystander::new(&gw).await;
    let mut silent = TcpStream::connect(gw.local_addr()).await.unwrap();
    let mut half = TcpStream::connect(gw.local_addr()).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webso")
        .await
        .unwrap();
    for s in [&mut silent, &mut half] {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    assert!(gw.metrics().handshake_failures >= 2);
    by.still_served(&fake).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_upgrades_get_http_errors() {
    let (gw, _fake) = start(test_config()).await;
    let addr = gw.local_addr();
    let ask = |req: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let r = ask("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    let r = ask(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = ask("\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let big =
        Box::leak(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000)).into_boxed_str());
    let r = ask(big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    tokio::time::sleep(Duration::from_millis(1)).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_served_at_once() {
    // A client that does not wait for the 101 (RFC 6455 says it should) still gets its
    // pipelined frames answered, without having to send anything more.
    use firetower_gateway::{ws, Flavour};
    let (gw, _fake) = start(test_config()).await;
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let mut bytes = ws::upgrade_request("x", "/ws", &ws::client_key([7; 16]), Flavour::Json);
    bytes.extend_from_slice(&ws::encode_frame(
        true,
        Opcode::Text,
        br#"{"op":"ping","id":41}"#,
        Some([1, 2, 3, 4]),
    ));
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let pong = br#"{"op":"pong","id":41}"#;
    tokio::time::timeout(WAIT, async {
        while !got.windows(pong.len()).any(|w| w == pong) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the pong: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the pipelined ping is answered without more input");
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    gw.shutdown().await;
}
