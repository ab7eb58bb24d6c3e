//! Shared fixtures: an in-memory upstream that loops publishes back as deliveries, a gateway on
//! loopback, and small clients (`firetower_client::Client` for WebSocket, raw sockets for
//! plain HTTP).

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use firetower_client::{Client, Event, Flavour};
use firetower_gateway::{
    BoxFuture, ControlEvent, ControlReceiver, Delivery, Gateway, GatewayConfig, GatewayHandle,
    GatewayStats, Payload, Stamp, Upstream, UpstreamError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

pub const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket client connection (it answers pings and echoes the server's close itself).
pub type Ws = Client;

/// An in-memory cluster serving one gateway: interest is a set; a publish to a topic of
/// interest becomes a delivery with the next seq of that topic (term 1). Topics starting with
/// `fail.` cannot be subscribed; publishing to `panic.*` panics inside the gateway's task.
pub struct FakeUpstream {
    deliveries: mpsc::Sender<Delivery>,
    pub state: Arc<Mutex<FakeState>>,
    pub ready: AtomicBool,
    /// While set, subscribes wait for `release` before committing.
    pub hold_subscribes: AtomicBool,
    pub release: Arc<Notify>,
    /// Operator controls as the cluster would push them (`control.send(..)`).
    pub control: mpsc::Sender<ControlEvent>,
    controls: Mutex<Option<ControlReceiver>>,
    /// Every figure the gateway reported.
    pub stats: Mutex<Vec<GatewayStats>>,
}

#[derive(Default)]
pub struct FakeState {
    pub interest: BTreeSet<String>,
    pub seqs: HashMap<String, u64>,
    pub subscribes: Vec<String>,
    pub unsubscribes: Vec<String>,
}

impl FakeUpstream {
    pub fn new() -> (Arc<FakeUpstream>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(4096);
        let (control, controls) = mpsc::channel(64);
        let fake = Arc::new(FakeUpstream {
            deliveries: tx,
            state: Arc::default(),
            ready: AtomicBool::new(true),
            hold_subscribes: AtomicBool::new(false),
            release: Arc::new(Notify::new()),
            control,
            controls: Mutex::new(Some(controls)),
            stats: Mutex::new(Vec::new()),
        });
        (fake, rx)
    }

    pub fn interest(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().interest.clone()
    }

    pub fn unsubscribes(&self) -> Vec<String> {
        self.state.lock().unwrap().unsubscribes.clone()
    }

    pub fn subscribes(&self) -> Vec<String> {
        self.state.lock().unwrap().subscribes.clone()
    }

    /// Push a delivery as if published elsewhere in the cluster.
    pub async fn deliver(&self, topic: &str, payload: Payload) -> u64 {
        let seq = {
            let mut s = self.state.lock().unwrap();
            let seq = s.seqs.entry(topic.to_string()).or_insert(0);
            *seq += 1;
            *seq
        };
        self.deliveries
            .send(Delivery {
                topic: Arc::from(topic),
                payload,
                term: 1,
                seq,
                position: None,
            })
            .await
            .unwrap();
        seq
    }
}

impl Upstream for FakeUpstream {
    fn subscribe(&self, topic: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let topic = topic.to_string();
        let hold = self.hold_subscribes.load(Ordering::SeqCst);
        let state = self.state.clone();
        let release = self.release.clone();
        Box::pin(async move {
            if hold {
                release.notified().await;
            }
            let mut s = state.lock().unwrap();
            s.subscribes.push(topic.clone());
            if topic.starts_with("fail.") {
                return Err(UpstreamError::Unavailable(
                    "no leader for the topic's group".into(),
                ));
            }
            s.interest.insert(topic);
            Ok(())
        })
    }

    fn unsubscribe(&self, topic: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let mut s = self.state.lock().unwrap();
        s.unsubscribes.push(topic.to_string());
        s.interest.remove(topic);
        Box::pin(async { Ok(()) })
    }

    fn publish(
        &self,
        topic: &str,
        payload: Payload,
    ) -> BoxFuture<'static, Result<Stamp, UpstreamError>> {
        let mut s = self.state.lock().unwrap();
        let seq = s.seqs.entry(topic.to_string()).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let interested = s.interest.contains(topic);
        drop(s);
        let tx = self.deliveries.clone();
        let topic: Arc<str> = Arc::from(topic);
        Box::pin(async move {
            if topic.starts_with("panic.") {
                panic!("fake upstream asked to panic on {topic}");
            }
            if interested {
                tx.send(Delivery {
                    topic,
                    payload,
                    term: 1,
                    seq,
                    position: None,
                })
                .await
                .map_err(|_| UpstreamError::Unavailable("gateway gone".into()))?;
            }
            Ok(Stamp {
                term: 1,
                seq,
                position: None,
            })
        })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn take_controls(&self) -> Option<ControlReceiver> {
        self.controls.lock().unwrap().take()
    }

    fn report_stats(&self, stats: GatewayStats) {
        self.stats.lock().unwrap().push(stats);
    }
}

/// A configuration for tests: loopback, ephemeral ports, short timeouts.
pub fn test_config() -> GatewayConfig {
    let mut c = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..GatewayConfig::default()
    };
    c.limits.handshake_timeout = Duration::from_millis(500);
    c.limits.close_timeout = Duration::from_millis(500);
    c.drain_timeout = Duration::from_secs(5);
    c
}

pub async fn start(config: GatewayConfig) -> (GatewayHandle, Arc<FakeUpstream>) {
    let (fake, rx) = FakeUpstream::new();
    let handle = Gateway::start(config, fake.clone(), rx).await.unwrap();
    (handle, fake)
}

/// Connect a WebSocket client, optionally naming a subprotocol (`firetower.json` without one).
pub async fn connect(addr: SocketAddr, subprotocol: Option<&str>) -> Ws {
    let flavour = subprotocol.map_or(Flavour::Json, |p| {
        Flavour::from_subprotocol(p).expect("a firetower subprotocol")
    });
    tokio::time::timeout(WAIT, Client::connect(&addr.to_string(), flavour))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send_text(text).await.unwrap();
}

/// The next whole message (pings answered, pongs skipped); an error when none comes in time.
async fn next_event(ws: &mut Ws, what: &'static str) -> anyhow::Result<Event> {
    loop {
        let event = tokio::time::timeout(WAIT, ws.next_event())
            .await
            .context(what)??
            .ok_or_else(|| anyhow!("stream ended"))?;
        if !matches!(event, Event::Pong(_)) {
            return Ok(event);
        }
    }
}

/// The next JSON frame (skipping pings/pongs).
pub async fn recv(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    match next_event(ws, "no frame in time").await? {
        Event::Text(t) => Ok(serde_json::from_slice(&t)?),
        other => bail!("unexpected {other:?}"),
    }
}

/// The next binary frame (skipping pings/pongs).
pub async fn recv_binary(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    match next_event(ws, "no frame in time").await? {
        Event::Binary(b) => Ok(b.to_vec()),
        other => bail!("unexpected {other:?}"),
    }
}

/// Read until the server's close frame; its code. Data frames before it are returned too.
pub async fn recv_close(ws: &mut Ws) -> anyhow::Result<(u16, Vec<serde_json::Value>)> {
    let mut before = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, ws.next_event())
            .await
            .context("no close in time")??
            .ok_or_else(|| anyhow!("stream ended without a close frame"))?;
        match event {
            Event::Close(Some((code, _))) => return Ok((code, before)),
            Event::Close(None) => bail!("close frame without a code"),
            Event::Text(t) => before.push(serde_json::from_slice(&t)?),
            _ => {}
        }
    }
}

/// Subscribe and wait for the ack.
pub async fn subscribe(ws: &mut Ws, topic: &str, id: u64) {
    send(
        ws,
        &format!(r#"{{"op":"subscribe","topics":["{topic}"],"id":{id}}}"#),
    )
    .await;
    let ack = recv(ws).await.unwrap();
    assert_eq!(
        ack,
        serde_json::json!({"op":"ack","id":id}),
        "subscribe {topic}"
    );
}

/// Publish and wait for the ack (skipping messages that arrive meanwhile).
pub async fn publish(ws: &mut Ws, topic: &str, data: &str, id: u64) -> Vec<serde_json::Value> {
    send(
        ws,
        &format!(r#"{{"op":"publish","topic":"{topic}","data":{data},"id":{id}}}"#),
    )
    .await;
    let mut others = Vec::new();
    loop {
        let f = recv(ws).await.unwrap();
        if f["op"] == "ack" && f["id"] == id {
            return others;
        }
        assert_ne!(f["op"], "error", "publish failed: {f}");
        others.push(f);
    }
}

/// Proof of service: ping/pong round trip.
pub async fn assert_alive(ws: &mut Ws) {
    send(ws, r#"{"op":"ping","id":424242}"#).await;
    loop {
        let f = recv(ws).await.unwrap();
        if f == serde_json::json!({"op":"pong","id":424242}) {
            return;
        }
    }
}

/// One HTTP GET on a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")).await
}

/// Send `request` on a fresh connection and read until the server closes: (status, body).
pub async fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Wait until `f` holds (polling), or fail after WAIT.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WebSocket client driven frame by frame, for what a well-behaved client never sends
/// (unmasked frames, odd fragmentation) and for clients that misbehave on purpose: it never
/// answers pings on its own.
pub struct RawWs {
    client: Client,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr) -> RawWs {
        RawWs {
            client: connect(addr, None).await,
        }
    }

    /// Send one masked frame.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: firetower_gateway::ws::Opcode,
        payload: &[u8],
    ) {
        self.client.send_frame(fin, opcode, payload).await.unwrap();
    }

    /// Write bytes to the socket as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.client.send_raw(bytes).await.unwrap();
    }

    /// The next frame from the server; None on EOF.
    pub async fn recv_frame(&mut self) -> Option<firetower_gateway::ws::Frame> {
        tokio::time::timeout(WAIT, self.client.next_frame())
            .await
            .expect("no frame in time")
            .unwrap()
    }

    /// Read frames until the close frame; its code and the text frames before it.
    pub async fn recv_close(&mut self) -> (u16, Vec<serde_json::Value>) {
        use firetower_gateway::ws::Opcode;
        let mut before = Vec::new();
        while let Some(f) = self.recv_frame().await {
            match f.opcode {
                Opcode::Close => return (u16::from_be_bytes([f.payload[0], f.payload[1]]), before),
                Opcode::Text => before.push(serde_json::from_slice(&f.payload).unwrap()),
                _ => {}
            }
        }
        panic!("EOF without a close frame");
    }

    pub async fn recv_json(&mut self) -> serde_json::Value {
        use firetower_gateway::ws::Opcode;
        loop {
            let f = self.recv_frame().await.expect("EOF");
            if f.opcode == Opcode::Text {
                return serde_json::from_slice(&f.payload).unwrap();
            }
        }
    }
}
