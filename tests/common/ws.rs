//! A small WebSocket client for the binary-level tests, on `firetower_client::Client`,
//! speaking the JSON flavour of the client protocol and handing frames back as JSON values.

use std::time::Duration;

use firetower_client::{Event, Flavour};
use serde_json::{json, Value};

/// One client connection.
pub struct Client {
    ws: firetower_client::Client,
    next_id: u64,
    /// Frames received while waiting for something else (acks or messages).
    pub backlog: Vec<Value>,
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        let ws = firetower_client::Client::connect(&format!("ws://{addr}/ws"), Flavour::Json)
            .await
            .expect("WebSocket connect");
        Client {
            ws,
            next_id: 1,
            backlog: Vec::new(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send_text(&v.to_string()).await.expect("send frame");
    }

    /// Next JSON frame, or None on timeout or close.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let event = tokio::time::timeout(timeout, self.ws.next_event())
                .await
                .ok()?
                .ok()??;
            match event {
                Event::Text(t) => return serde_json::from_slice(&t).ok(),
                Event::Close(_) => return None,
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
