//! Lifecycle hooks in the connection flow: a plain HTTP server on loopback plays the
//! application and decides connects, subscribes and publishes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use firetower_gateway::{GatewayConfig, HookEvent, HooksConfig, OnFailure};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// A keep-alive HTTP/1.1 server answering every POST with `handler(body)` as JSON.
struct HookServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl HookServer {
    async fn start(handler: impl Fn(&Value) -> Value + Send + Sync + 'static) -> HookServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (a, r) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, handler.clone(), r.clone()));
            }
        });
        HookServer {
            addr,
            accepted,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/firetower", self.addr)
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == event)
            .cloned()
            .collect()
    }
}

async fn serve(mut stream: TcpStream, handler: Handler, requests: Arc<Mutex<Vec<Value>>>) {
    let mut buf = Vec::new();
    loop {
        let (head, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0usize);
                break (head, len);
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head + len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value = serde_json::from_slice(&buf[head..head + len]).unwrap_or(Value::Null);
        buf.drain(..head + len);
        requests.lock().unwrap().push(body.clone());
        let answer = handler(&body).to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn hooked(url: String, events: Vec<HookEvent>, on_failure: OnFailure) -> GatewayConfig {
    let mut c = test_config();
    c.id = 7;
    let mut h = HooksConfig::new(url, events);
    h.on_failure = on_failure;
    h.timeout_ms = 500;
    h.disconnect_flush_ms = 50;
    c.hooks = Some(h);
    c
}

/// The application: every connection is user `u1` with `room.*` and its private topic; the
/// subscribe hook keeps `room.secret` for members; the publish hook masks a word and signs
/// the message.
fn app(body: &Value) -> Value {
    match body["event"].as_str() {
        Some("connect") => json!({"allow": true, "user": "u1",
                                  "subscribe": ["room.*", "private.{sub}"], "publish": ["room.*"]}),
        Some("subscribe") => {
            let denied = body["topics"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "room.secret"));
            if denied {
                json!({"allow": false, "code": "forbidden", "message": "members only"})
            } else {
                json!({"allow": true})
            }
        }
        Some("publish") => {
            let text = body["data"]["text"].as_str().unwrap_or_default();
            json!({"allow": true, "data": {"text": text.replace("darn", "****"), "by": body["user"]}})
        }
        _ => json!({"allow": true}),
    }
}

#[tokio::test]
async fn a_connect_hook_authenticates_and_the_other_hooks_decide() {
    let server = HookServer::start(app).await;
    let events = vec![
        HookEvent::Connect,
        HookEvent::Subscribe,
        HookEvent::Publish,
        HookEvent::Disconnect,
    ];
    let (gw, _fake) = start(hooked(server.url(), events, OnFailure::Deny)).await;
    let mut ws = connect(gw.local_addr(), None).await;
    subscribe(&mut ws, "room.1", 1).await;
    subscribe(&mut ws, "private.u1", 2).await;
    // Patterns from the connect answer: `chat.*` was not granted.
    send(&mut ws, r#"{"op":"subscribe","topics":["chat.1"],"id":3}"#).await;
    assert_eq!(recv(&mut ws).await.unwrap()["code"], "forbidden");
    // The subscribe hook says no.
    send(
        &mut ws,
        r#"{"op":"subscribe","topics":["room.secret"],"id":4}"#,
    )
    .await;
    let f = recv(&mut ws).await.unwrap();
    assert_eq!(
        (f["code"].as_str(), f["message"].as_str()),
        (Some("forbidden"), Some("members only"))
    );
    // The publish hook rewrites what subscribers get.
    let echoed = publish(&mut ws, "room.1", r#"{"text":"darn it"}"#, 5).await;
    let message = match echoed.first() {
        Some(m) => m.clone(),
        None => recv(&mut ws).await.unwrap(),
    };
    assert_eq!(message["data"], json!({"text": "**** it", "by": "u1"}));

    let connect = &server.events("connect")[0];
    assert_eq!(connect["gateway"], 7);
    assert!(connect["headers"]["upgrade"].is_string(), "{connect}");
    let sub = &server.events("subscribe")[0];
    assert_eq!(
        (sub["user"].as_str(), sub["topics"].clone()),
        (Some("u1"), json!(["room.1"]))
    );
    ws.close().await.unwrap();
    eventually("the disconnect event", || {
        !server.events("disconnect").is_empty()
    })
    .await;
    let d = &server.events("disconnect")[0];
    assert_eq!(d["disconnects"][0]["user"], "u1", "{d}");
}

#[tokio::test]
async fn a_denying_connect_hook_closes_with_4401() {
    let server = HookServer::start(|b| {
        if b["event"] == "connect" {
            json!({"allow": false, "code": "forbidden", "message": "who are you"})
        } else {
            json!({"allow": true})
        }
    })
    .await;
    let (gw, _fake) = start(hooked(
        server.url(),
        vec![HookEvent::Connect],
        OnFailure::Deny,
    ))
    .await;
    let mut ws = connect(gw.local_addr(), None).await;
    let (code, frames) = recv_close(&mut ws).await.unwrap();
    assert_eq!(code, 4401);
    assert_eq!(frames[0]["message"], "who are you");
}

#[tokio::test]
async fn a_hook_that_is_down_refuses_or_lets_through_by_policy() {
    // A port with nothing behind it.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{dead}/hook");
    let (deny, _f1) = start(hooked(
        url.clone(),
        vec![HookEvent::Connect, HookEvent::Subscribe],
        OnFailure::Deny,
    ))
    .await;
    let mut ws = connect(deny.local_addr(), None).await;
    let (code, frames) = recv_close(&mut ws).await.unwrap();
    assert_eq!(code, 4503);
    assert_eq!(frames[0]["code"], "hook_unavailable");

    let mut c = hooked(
        url,
        vec![HookEvent::Connect, HookEvent::Subscribe],
        OnFailure::Allow,
    );
    c.allow_anonymous = true;
    let (allow, _f2) = start(c).await;
    let mut ws = connect(allow.local_addr(), None).await;
    subscribe(&mut ws, "room.1", 1).await;
}

#[tokio::test]
async fn a_thousand_connects_through_the_hook_reuse_its_connections() {
    let server = HookServer::start(app).await;
    let (gw, _fake) = start(hooked(
        server.url(),
        vec![HookEvent::Connect],
        OnFailure::Deny,
    ))
    .await;
    let addr = gw.local_addr();
    let mut clients = Vec::new();
    for round in 0..10 {
        let batch: Vec<_> = (0..100)
            .map(|_| tokio::spawn(async move { connect(addr, None).await }))
            .collect();
        for task in batch {
            let mut ws = task.await.unwrap();
            if round == 9 {
                assert_alive(&mut ws).await;
            }
            clients.push(ws);
        }
    }
    assert_eq!(server.events("connect").len(), 1000);
    eventually("every client connected", || {
        gw.metrics().connections_open == 1000
    })
    .await;
    let accepted = server.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 200,
        "the hook saw {accepted} TCP connections for 1,000 calls"
    );
}
