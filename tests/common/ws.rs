//! A small WebSocket client for the binary-level tests, on a standard client library
//! (tokio-tungstenite), speaking the JSON flavour of the client protocol.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One client connection.
pub struct Client {
    ws: Stream,
    next_id: u64,
    /// Frames received while waiting for something else (acks or messages).
    pub backlog: Vec<Value>,
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("valid URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "firetower.json".parse().expect("header value"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket connect");
        Client {
            ws,
            next_id: 1,
            backlog: Vec::new(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send frame");
    }

    /// Next JSON frame, or None on timeout or close.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Send a request and wait for its ack or error (other frames go to the backlog).
    pub async fn request(&mut self, mut v: Value, timeout: Duration) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send(v).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.recv(left).await else {
                return json!({"op": "timeout"});
            };
            if frame["id"] == json!(id) && (frame["op"] == "ack" || frame["op"] == "error") {
                return frame;
            }
            self.backlog.push(frame);
        }
    }

    pub async fn subscribe(&mut self, topics: &[String]) -> Value {
        self.request(
            json!({"op": "subscribe", "topics": topics}),
            Duration::from_secs(30),
        )
        .await
    }

    pub async fn publish(&mut self, topic: &str, data: Value, timeout: Duration) -> Value {
        self.request(
            json!({"op": "publish", "topic": topic, "data": data}),
            timeout,
        )
        .await
    }

    /// Collect `message` frames (backlog first) until `n` arrived or the timeout passed.
    pub async fn messages(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for f in std::mem::take(&mut self.backlog) {
            if f["op"] == "message" {
                out.push(f);
            } else {
                self.backlog.push(f);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv(left).await {
                Some(f) if f["op"] == "message" => out.push(f),
                Some(f) => self.backlog.push(f),
                None => break,
            }
        }
        out
    }
}
