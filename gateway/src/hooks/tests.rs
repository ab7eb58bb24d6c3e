//! Hook calls against a small HTTP/1.1 server on 127.0.0.1 that can answer well, badly, slowly
//! or hugely, and counts what it sees (connections accepted, requests, calls at once, bytes it
//! managed to write).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::*;

/// What the test server does with one request.
enum Reply {
    /// 200 with this JSON text.
    Json(String),
    /// This status, with a short JSON body.
    Status(u16),
    /// These bytes instead of an HTTP answer, then close.
    Raw(&'static [u8]),
    /// 200 after a pause.
    Delayed(Duration, String),
    /// Never answer; close once the client does.
    Hang,
    /// 200 with a body of `size` bytes, announced by `Content-Length` or sent chunked.
    Huge { size: usize, chunked: bool },
}

type Handler = Box<dyn Fn(&Value) -> Reply + Send + Sync>;

struct State {
    handler: Handler,
    accepted: AtomicUsize,
    /// Connections not yet closed.
    open: AtomicUsize,
    requests: Mutex<Vec<Value>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    /// Body bytes of a `Huge` answer written before the client went away.
    written: AtomicUsize,
    huge_done: Notify,
}

struct Server {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Server {
    async fn start(handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Server {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A fixed, small send buffer (accepted sockets inherit it) so that what the kernel
        // takes in for an unread answer stays far below 10 MB whatever the autotuning limits.
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            handler: Box::new(handler),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            written: AtomicUsize::new(0),
            huge_done: Notify::new(),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    serve(stream, Arc::clone(&state)).await;
                    state.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Server { addr, state }
    }

    /// Always `{"allow":true}`.
    async fn allowing() -> Server {
        Server::start(|_| Reply::Json(r#"{"allow":true}"#.into())).await
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

/// Serve HTTP/1.1 requests on one connection until the client closes it.
async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let (head, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0usize);
                break (head, length);
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        while buf.len() < head + length {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let body: Value = serde_json::from_slice(&buf[head..head + length]).unwrap_or(Value::Null);
        buf.drain(..head + length);
        state.requests.lock().unwrap().push(body.clone());
        let active = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_active.fetch_max(active, Ordering::SeqCst);
        let reply = (state.handler)(&body);
        let keep = answer(&mut stream, reply, &state).await;
        state.active.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Write `reply`; false when the connection is done.
async fn answer(stream: &mut TcpStream, reply: Reply, state: &State) -> bool {
    let ok = |status: u16, body: &str| {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match reply {
        Reply::Json(body) => stream.write_all(ok(200, &body).as_bytes()).await.is_ok(),
        Reply::Status(status) => stream
            .write_all(ok(status, r#"{"allow":true}"#).as_bytes())
            .await
            .is_ok(),
        Reply::Raw(bytes) => {
            let _ = stream.write_all(bytes).await;
            false
        }
        Reply::Delayed(pause, body) => {
            tokio::time::sleep(pause).await;
            stream.write_all(ok(200, &body).as_bytes()).await.is_ok()
        }
        Reply::Hang => {
            // Until the client closes its side.
            let mut byte = [0u8; 1];
            while matches!(stream.read(&mut byte).await, Ok(1..)) {}
            false
        }
        Reply::Huge { size, chunked } => {
            let head = if chunked {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")
            };
            let chunk = vec![b' '; 64 * 1024];
            let mut written = 0;
            if stream.write_all(head.as_bytes()).await.is_ok() {
                while written < size {
                    let result = if chunked {
                        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                        framed.extend_from_slice(&chunk);
                        framed.extend_from_slice(b"\r\n");
                        stream.write_all(&framed).await
                    } else {
                        stream.write_all(&chunk).await
                    };
                    if result.is_err() {
                        break;
                    }
                    written += chunk.len();
                }
            }
            state.written.store(written, Ordering::SeqCst);
            state.huge_done.notify_one();
            false
        }
    }
}

fn config(server: &Server, events: &[HookEvent]) -> HooksConfig {
    HooksConfig::new(server.url(), events.to_vec())
}

fn start(config: &HooksConfig) -> (Hooks, HookMetrics) {
    let metrics = HookMetrics::default();
    let hooks = Hooks::new(config, GatewayId(7), metrics.clone()).unwrap();
    (hooks, metrics)
}

fn who(conn: &str) -> Caller<'_> {
    Caller {
        conn,
        remote: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        user: Some("u1"),
    }
}

fn anonymous(conn: &str) -> Caller<'_> {
    Caller {
        user: None,
        ..who(conn)
    }
}

fn topics(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|t| Arc::from(*t)).collect()
}

/// The failure inside a denial, or a panic.
fn failure<T: std::fmt::Debug>(outcome: HookOutcome<T>) -> HookFailure {
    match outcome {
        HookOutcome::Deny(Denial {
            code,
            failure: Some(failure),
            ..
        }) => {
            assert_eq!(code, HOOK_UNAVAILABLE);
            failure
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

const ALL: [HookEvent; 4] = [
    HookEvent::Connect,
    HookEvent::Subscribe,
    HookEvent::Publish,
    HookEvent::Disconnect,
];

#[tokio::test]
async fn allow_deny_and_rewrite_with_the_documented_payloads() {
    let server =
        Server::start(|request| {
            Reply::Json(match request["event"].as_str() {
            Some("connect") => {
                r#"{"allow":true,"user":"u9","subscribe":["room.*"],"publish":["room.{sub}"]}"#
            }
            Some("subscribe") if request["topics"][1] == "secret" => {
                r#"{"allow":false,"code":"forbidden","message":"not in this room"}"#
            }
            Some("subscribe") => r#"{"allow":true}"#,
            _ => r#"{"allow":true,"data":{"text":"***","clean":true}}"#,
        }
        .into())
        })
        .await;
    let (hooks, metrics) = start(&config(&server, &ALL));

    let headers = vec![
        ("Cookie".to_string(), "a=1".to_string()),
        ("origin".to_string(), "https://app.example".to_string()),
        ("cookie".to_string(), "b=2".to_string()),
    ];
    let outcome = hooks.connect(anonymous("7-1"), &headers).await;
    assert_eq!(
        outcome,
        HookOutcome::Allow(ConnectGrant {
            user: Some("u9".into()),
            subscribe: Some(vec!["room.*".into()]),
            publish: Some(vec!["room.{sub}".into()]),
        })
    );
    assert_eq!(
        hooks.subscribe(who("7-1"), &topics(&["room.1"])).await,
        HookOutcome::Allow(())
    );
    assert_eq!(
        hooks
            .subscribe(who("7-1"), &topics(&["room.1", "secret"]))
            .await,
        HookOutcome::Deny(Denial {
            code: "forbidden".into(),
            message: "not in this room".into(),
            failure: None,
        })
    );
    let payload = Payload::Json(Bytes::from_static(br#"{"text":"darn", "n": 1.50}"#));
    let HookOutcome::Allow(Some(Payload::Json(data))) =
        hooks.publish(who("7-1"), "room.1", &payload).await
    else {
        panic!("expected rewritten data");
    };
    assert_eq!(&data[..], br#"{"text":"***","clean":true}"#);
    let binary = Payload::Binary(Bytes::from_static(&[0, 1, 2]));
    assert!(matches!(
        hooks.publish(who("7-1"), "room.1", &binary).await,
        HookOutcome::Allow(Some(_))
    ));

    let requests = server.requests();
    assert_eq!(
        requests[0],
        json!({"event": "connect", "gateway": 7, "conn": "7-1", "remote": "127.0.0.1:40000",
               "headers": {"cookie": "a=1; b=2", "origin": "https://app.example"}})
    );
    assert_eq!(
        requests[2],
        json!({"event": "subscribe", "gateway": 7, "conn": "7-1", "user": "u1",
               "remote": "127.0.0.1:40000", "topics": ["room.1", "secret"]})
    );
    assert_eq!(
        requests[3],
        json!({"event": "publish", "gateway": 7, "conn": "7-1", "user": "u1",
               "remote": "127.0.0.1:40000", "topic": "room.1", "data": {"text": "darn", "n": 1.5}})
    );
    assert_eq!(requests[4]["data"], "AAEC");
    assert_eq!(requests[4]["encoding"], "base64");

    assert_eq!(metrics.calls(HookEvent::Connect), 1);
    assert_eq!(metrics.calls(HookEvent::Subscribe), 2);
    assert_eq!(metrics.denials(HookEvent::Subscribe), 1);
    assert_eq!(metrics.calls(HookEvent::Publish), 2);
    for reason in FailureReason::ALL {
        assert_eq!(metrics.failures(HookEvent::Subscribe, reason), 0);
    }
}

#[tokio::test]
async fn events_not_configured_are_allowed_without_a_call() {
    let server = Server::allowing().await;
    let (hooks, metrics) = start(&config(&server, &[HookEvent::Subscribe]));
    assert!(hooks.wants(HookEvent::Subscribe));
    assert!(!hooks.wants(HookEvent::Connect));
    assert_eq!(
        hooks.connect(who("c"), &[]).await,
        HookOutcome::Allow(ConnectGrant::default())
    );
    let payload = Payload::Json(Bytes::from_static(b"1"));
    assert_eq!(
        hooks.publish(who("c"), "t", &payload).await,
        HookOutcome::Allow(None)
    );
    hooks.disconnect(who("c"), "client_closed");
    hooks.flush().await;
    assert!(server.requests().is_empty());
    assert_eq!(metrics.calls(HookEvent::Connect), 0);
}

#[tokio::test]
async fn a_hook_that_is_down_denies_or_allows_as_configured() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = HooksConfig::new(format!("http://127.0.0.1:{port}/"), ALL.to_vec());
    let (hooks_deny, metrics) = start(&config);
    let outcome = hooks_deny.subscribe(who("c"), &topics(&["t"])).await;
    let HookOutcome::Deny(denial) = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(denial.message.contains("(connect)"), "{}", denial.message);
    assert!(!denial.message.contains(&port.to_string()));
    assert!(matches!(failure(outcome), HookFailure::Connect(_)));
    assert!(matches!(
        failure(hooks_deny.connect(who("c"), &[]).await),
        HookFailure::Connect(_)
    ));
    assert_eq!(
        metrics.failures(HookEvent::Subscribe, FailureReason::Connect),
        1
    );
    assert_eq!(
        metrics.failures(HookEvent::Connect, FailureReason::Connect),
        1
    );

    config.on_failure = OnFailure::Allow;
    let (hooks_allow, metrics) = start(&config);
    assert_eq!(
        hooks_allow.connect(who("c"), &[]).await,
        HookOutcome::Allow(ConnectGrant::default())
    );
    assert_eq!(
        hooks_allow.subscribe(who("c"), &topics(&["t"])).await,
        HookOutcome::Allow(())
    );
    let payload = Payload::Json(Bytes::from_static(b"{}"));
    assert_eq!(
        hooks_allow.publish(who("c"), "t", &payload).await,
        HookOutcome::Allow(None)
    );
    assert_eq!(
        metrics.failures(HookEvent::Publish, FailureReason::Connect),
        1
    );
}

#[tokio::test]
async fn garbage_answers_fail_cleanly_and_the_next_call_works() {
    let calls = AtomicUsize::new(0);
    let server = Server::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::Raw(b"this is not HTTP\r\n\r\n"),
        1 => Reply::Json("<html>hello</html>".into()),
        2 => Reply::Status(500),
        3 => Reply::Json(r#"{"allow":"yes"}"#.into()),
        4 => Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"allow\":"),
        _ => Reply::Json(r#"{"allow":true}"#.into()),
    })
    .await;
    let (hooks, metrics) = start(&config(&server, &ALL));
    let call = || hooks.subscribe(who("c"), &[]);
    assert!(matches!(failure(call().await), HookFailure::Malformed(_)));
    assert!(matches!(
        failure(call().await),
        HookFailure::BadAnswer(answer::BadAnswer::Json(_))
    ));
    assert_eq!(failure(call().await), HookFailure::Status(500));
    let bad = failure(call().await);
    assert!(
        bad.to_string().contains("expected a boolean"),
        "a message that says what is wrong: {bad}"
    );
    assert!(matches!(failure(call().await), HookFailure::Malformed(_)));
    assert_eq!(call().await, HookOutcome::Allow(()));
    assert_eq!(
        metrics.failures(HookEvent::Subscribe, FailureReason::BadAnswer),
        4
    );
    assert_eq!(
        metrics.failures(HookEvent::Subscribe, FailureReason::Status),
        1
    );
}

#[tokio::test]
async fn a_slow_hook_times_out() {
    let server = Server::start(|_| Reply::Hang).await;
    let mut config = config(&server, &ALL);
    config.timeout_ms = 100;
    let (hooks, metrics) = start(&config);
    assert_eq!(
        failure(hooks.subscribe(who("c"), &[]).await),
        HookFailure::Timeout(100)
    );
    assert_eq!(
        metrics.failures(HookEvent::Subscribe, FailureReason::Timeout),
        1
    );
}

/// A call that times out closes its connection (an unanswered HTTP/1.1 connection cannot be
/// reused): a hook that hangs does not make the gateway pile up sockets.
#[tokio::test]
async fn timed_out_calls_do_not_leak_connections() {
    let server = Server::start(|_| Reply::Hang).await;
    let mut config = config(&server, &ALL);
    config.timeout_ms = 20;
    let (hooks, _) = start(&config);
    for _ in 0..50 {
        assert_eq!(
            failure(hooks.subscribe(who("c"), &[]).await),
            HookFailure::Timeout(20)
        );
    }
    assert_eq!(server.accepted(), 50, "no connection is reused while busy");
    // The server sees each close; wait (bounded) for the last ones to arrive.
    for _ in 0..500 {
        if server.state.open.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.state.open.load(Ordering::SeqCst), 0);
}

/// A 10 MB answer is refused as too large (not as a timeout: the deadline is far), and the
/// server could not write it all: the gateway stopped reading and closed the connection.
#[tokio::test]
async fn a_10_mb_answer_is_refused_without_reading_it() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    for chunked in [false, true] {
        let server = Server::start(move |_| Reply::Huge {
            size: TEN_MB,
            chunked,
        })
        .await;
        let mut config = config(&server, &ALL);
        config.timeout_ms = MAX_TIMEOUT_MS;
        let (hooks, metrics) = start(&config);
        assert_eq!(
            failure(hooks.subscribe(who("c"), &[]).await),
            HookFailure::TooLarge(DEFAULT_MAX_ANSWER_BYTES),
            "chunked: {chunked}"
        );
        assert_eq!(
            metrics.failures(HookEvent::Subscribe, FailureReason::TooLarge),
            1
        );
        tokio::time::timeout(Duration::from_secs(30), server.state.huge_done.notified())
            .await
            .expect("the server's writes end once the gateway closes");
        let written = server.state.written.load(Ordering::SeqCst);
        // The limit, the client's read buffer and the kernel's socket buffers: far from 10 MB.
        assert!(
            written < 2 * 1024 * 1024,
            "chunked: {chunked}: the server wrote {written} bytes of the answer"
        );
    }
}

#[tokio::test]
async fn an_answer_just_under_the_limit_is_read() {
    let padding = " ".repeat(2000);
    let server = Server::start(move |_| Reply::Json(format!("{{\"allow\":true}}{padding}"))).await;
    let mut config = config(&server, &ALL);
    config.max_answer_bytes = 2014;
    let (hooks, _) = start(&config);
    assert_eq!(hooks.subscribe(who("c"), &[]).await, HookOutcome::Allow(()));
    config.max_answer_bytes = 2013;
    let (hooks, _) = start(&config);
    assert_eq!(
        failure(hooks.subscribe(who("c"), &[]).await),
        HookFailure::TooLarge(2013)
    );
}

/// 2,000 calls, half one after another and half 64 at a time, open far fewer connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reuse_pooled_connections() {
    let server = Server::allowing().await;
    let mut config = config(&server, &ALL);
    config.max_concurrency = 64;
    let (hooks, metrics) = start(&config);
    for i in 0..1000 {
        let conn = format!("c{i}");
        assert_eq!(
            hooks.subscribe(who(&conn), &[]).await,
            HookOutcome::Allow(())
        );
    }
    let sequential = server.accepted();
    assert!(
        sequential <= 5,
        "{sequential} connections for 1,000 calls in a row"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let hooks = hooks.clone();
        tasks.spawn(async move {
            let conn = format!("d{i}");
            hooks.subscribe(who(&conn), &[]).await
        });
    }
    while let Some(outcome) = tasks.join_next().await {
        assert_eq!(outcome.unwrap(), HookOutcome::Allow(()));
    }
    let total = server.accepted();
    assert!(
        total <= 2 * 64 + sequential,
        "{total} connections for 2,000 calls, at most 64 at once"
    );
    assert_eq!(server.requests().len(), 2000);
    assert_eq!(metrics.calls(HookEvent::Subscribe), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_stay_within_max_concurrency() {
    let server =
        Server::start(|_| Reply::Delayed(Duration::from_millis(20), r#"{"allow":true}"#.into()))
            .await;
    let mut config = config(&server, &ALL);
    config.max_concurrency = 4;
    config.timeout_ms = MAX_TIMEOUT_MS;
    let (hooks, _) = start(&config);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let hooks = hooks.clone();
        tasks.spawn(async move { hooks.subscribe(who("c"), &[]).await });
    }
    while let Some(outcome) = tasks.join_next().await {
        assert_eq!(outcome.unwrap(), HookOutcome::Allow(()));
    }
    let max = server.state.max_active.load(Ordering::SeqCst);
    assert!((2..=4).contains(&max), "{max} calls at once");
    assert!(server.accepted() <= 8);
}

/// With every slot taken, a call waits for one until its deadline, then fails as overloaded
/// without reaching the hook.
#[tokio::test]
async fn past_the_bound_calls_fail_as_overloaded() {
    let server = Server::allowing().await;
    let mut config = config(&server, &ALL);
    config.max_concurrency = 2;
    config.timeout_ms = 50;
    let (hooks, metrics) = start(&config);
    let held = hooks.inner.transport.slots.acquire_many(2).await.unwrap();
    assert_eq!(
        failure(hooks.subscribe(who("c"), &[]).await),
        HookFailure::Overloaded(2)
    );
    assert_eq!(
        metrics.failures(HookEvent::Subscribe, FailureReason::Overloaded),
        1
    );
    assert!(server.requests().is_empty());
    drop(held);
    assert_eq!(hooks.subscribe(who("c"), &[]).await, HookOutcome::Allow(()));
}

#[tokio::test]
async fn disconnects_arrive_in_few_batches() {
    let server = Server::allowing().await;
    let mut config = config(&server, &[HookEvent::Disconnect]);
    config.disconnect_batch = 100;
    // Batches close by size or by flush(), never by the clock, so the count is exact.
    config.disconnect_flush_ms = MAX_TIMEOUT_MS;
    let (hooks, metrics) = start(&config);
    for i in 0..1050 {
        let conn = format!("7-{i}");
        let caller = if i % 2 == 0 {
            who(&conn)
        } else {
            anonymous(&conn)
        };
        hooks.disconnect(caller, "client_closed");
    }
    hooks.flush().await;
    let requests = server.requests();
    assert_eq!(requests.len(), 11, "10 full batches and the rest");
    let mut seen = Vec::new();
    for request in &requests {
        assert_eq!(request["event"], "disconnect");
        assert_eq!(request["gateway"], 7);
        for entry in request["disconnects"].as_array().unwrap() {
            seen.push(entry["conn"].as_str().unwrap().to_string());
            assert_eq!(entry["remote"], "127.0.0.1:40000");
            assert_eq!(entry["reason"], "client_closed");
        }
    }
    assert_eq!(
        requests[0]["disconnects"][0],
        json!({"conn": "7-0", "user": "u1", "remote": "127.0.0.1:40000", "reason": "client_closed"})
    );
    assert_eq!(
        requests[0]["disconnects"][1],
        json!({"conn": "7-1", "remote": "127.0.0.1:40000", "reason": "client_closed"})
    );
    let expected: Vec<String> = (0..1050).map(|i| format!("7-{i}")).collect();
    assert_eq!(seen, expected, "every event once, in order");
    assert_eq!(metrics.calls(HookEvent::Disconnect), 11);
    assert_eq!(metrics.disconnect_count(DisconnectOutcome::Sent), 1050);
}

#[tokio::test]
async fn a_batch_leaves_after_disconnect_flush_ms() {
    let server = Server::allowing().await;
    let mut config = config(&server, &[HookEvent::Disconnect]);
    config.disconnect_flush_ms = 10;
    let (hooks, metrics) = start(&config);
    hooks.disconnect(who("a"), "idle");
    hooks.disconnect(who("b"), "kicked");
    // No flush(): the batcher sends on its own once the batch is due.
    for _ in 0..500 {
        if metrics.disconnect_count(DisconnectOutcome::Sent) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.requests()[0]["disconnects"][1]["reason"], "kicked");
}

#[tokio::test]
async fn a_full_disconnect_queue_drops_and_counts() {
    let server = Server::allowing().await;
    let mut config = config(&server, &[HookEvent::Disconnect]);
    config.disconnect_batch = 10;
    config.disconnect_queue = 10;
    let (hooks, metrics) = start(&config);
    // The batcher cannot run between these (one-thread runtime, no await): 10 fit, 15 do not.
    for i in 0..25 {
        hooks.disconnect(who(&format!("c{i}")), "client_closed");
    }
    assert_eq!(metrics.disconnect_count(DisconnectOutcome::QueueFull), 15);
    hooks.flush().await;
    let entries: usize = server
        .requests()
        .iter()
        .map(|r| r["disconnects"].as_array().unwrap().len())
        .sum();
    assert_eq!(entries, 10);
    assert_eq!(metrics.disconnect_count(DisconnectOutcome::Sent), 10);
}

#[tokio::test]
async fn a_failed_disconnect_batch_is_counted_and_nothing_waits() {
    let server = Server::start(|_| Reply::Status(503)).await;
    let (hooks, metrics) = start(&config(&server, &ALL));
    hooks.disconnect(who("a"), "client_closed");
    hooks.flush().await;
    assert_eq!(metrics.disconnect_count(DisconnectOutcome::Failed), 1);
    assert_eq!(
        metrics.failures(HookEvent::Disconnect, FailureReason::Status),
        1
    );
}

#[test]
fn new_outside_a_runtime_is_an_error() {
    let config = HooksConfig::new("http://127.0.0.1:1/", ALL.to_vec());
    assert_eq!(
        Hooks::new(&config, GatewayId(1), HookMetrics::default()).unwrap_err(),
        HooksError::NoRuntime
    );
}

#[test]
fn the_toml_section_parses_with_defaults() {
    let config: HooksConfig = toml::from_str(
        r#"
        url = "http://127.0.0.1:8000/firetower"
        events = ["connect", "subscribe", "publish", "disconnect"]
        "#,
    )
    .unwrap();
    assert_eq!(
        config,
        HooksConfig::new("http://127.0.0.1:8000/firetower", ALL.to_vec())
    );
    config.validate().unwrap();

    let config: HooksConfig = toml::from_str(
        r#"
        url = "http://hooks.internal/fw"
        events = ["publish"]
        timeout_ms = 250
        on_failure = "allow"
        max_concurrency = 64
        headers = { Authorization = "Bearer s3cret" }
        "#,
    )
    .unwrap();
    assert_eq!(config.on_failure, OnFailure::Allow);
    let shown = format!("{config:?} {:?}", config.parse().unwrap());
    assert!(shown.contains("Authorization"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(config.timeout_ms, 250);
    config.validate().unwrap();

    for (text, needle) in [
        (
            r#"url = "http://a/"
               events = ["connect"]
               timeout = 5"#,
            "unknown field `timeout`",
        ),
        (r#"url = "http://a/""#, "missing field `events`"),
        (
            r#"url = "http://a/"
               events = ["open"]"#,
            "unknown variant `open`",
        ),
        (
            r#"url = "http://a/"
               events = ["connect"]
               on_failure = "retry""#,
            "unknown variant `retry`",
        ),
    ] {
        let error = toml::from_str::<HooksConfig>(text).unwrap_err().to_string();
        assert!(error.contains(needle), "{needle}: {error}");
    }
}

#[test]
fn validate_names_the_key_and_what_is_wrong() {
    let check = |edit: &dyn Fn(&mut HooksConfig)| {
        let mut config = HooksConfig::new("http://127.0.0.1:8000/hook", ALL.to_vec());
        edit(&mut config);
        config.validate().unwrap_err()
    };
    let https = check(&|c| c.url = "https://hooks.example/".into());
    assert_eq!(
        https,
        HooksConfigError::Https("https://hooks.example/".into())
    );
    assert!(https.to_string().starts_with("hooks.url: "));
    for url in [
        "ftp://a/",
        "127.0.0.1:8000",
        "/hook",
        "http://",
        "not a url",
        "http://user:pw@a/",
    ] {
        let error = check(&|c| c.url = url.into());
        assert!(
            matches!(error, HooksConfigError::BadUrl { .. }),
            "{url}: {error:?}"
        );
        assert!(error.to_string().starts_with("hooks.url: "), "{error}");
    }
    assert_eq!(check(&|c| c.events.clear()), HooksConfigError::NoEvents);
    for (key, edit) in [
        (
            "timeout_ms",
            &(|c: &mut HooksConfig| c.timeout_ms = 0) as &dyn Fn(&mut HooksConfig),
        ),
        ("timeout_ms", &|c| c.timeout_ms = 60_001),
        ("max_concurrency", &|c| c.max_concurrency = 0),
        ("max_answer_bytes", &|c| c.max_answer_bytes = 100),
        ("max_answer_bytes", &|c| c.max_answer_bytes = 1 << 30),
        ("disconnect_batch", &|c| c.disconnect_batch = 0),
        ("disconnect_flush_ms", &|c| c.disconnect_flush_ms = 0),
    ] {
        let error = check(edit);
        assert!(
            matches!(error, HooksConfigError::OutOfRange { key: k, .. } if k == key),
            "{key}: {error:?}"
        );
        assert!(error.to_string().starts_with(&format!("hooks.{key}: ")));
    }
    assert_eq!(
        check(&|c| {
            c.disconnect_batch = 100;
            c.disconnect_queue = 10;
        }),
        HooksConfigError::QueueBelowBatch {
            queue: 10,
            batch: 100
        }
    );
    for (name, value) in [("bad name", "x"), ("Host", "x"), ("x-secret", "a\nb")] {
        let error = check(&|c| {
            c.headers.insert(name.into(), value.into());
        });
        assert!(
            matches!(&error, HooksConfigError::BadHeader { name: n, .. } if n == name),
            "{name}: {error:?}"
        );
    }
}

/// The configured headers reach the hook, beside the gateway's own.
#[tokio::test]
async fn configured_headers_are_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = HooksConfig::new(
        format!("http://{}/h?x=1", listener.local_addr().unwrap()),
        ALL.to_vec(),
    );
    config
        .headers
        .insert("Authorization".into(), "Bearer s3cret".into());
    let (hooks, _) = start(&config);
    let head = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(read_more(&mut stream, &mut buf).await);
        }
        let body = r#"{"allow":true}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf).to_lowercase()
    });
    assert_eq!(hooks.subscribe(who("c"), &[]).await, HookOutcome::Allow(()));
    let head = head.await.unwrap();
    assert!(head.starts_with("post /h?x=1 http/1.1\r\n"), "{head}");
    assert!(
        head.contains("\r\nauthorization: bearer s3cret\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\ncontent-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nuser-agent: firetower-gateway/"),
        "{head}"
    );
}

/// What Python's `http.server` sends unless told otherwise: HTTP/1.0, no `Content-Length`, the
/// body ends with the connection. It works, one connection per call.
#[tokio::test]
async fn a_close_delimited_http_1_0_answer_works() {
    let server = Server::start(|_| {
        Reply::Raw(
            b"HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.12\r\n\
              Content-Type: application/json\r\n\r\n{\"allow\":false,\"code\":\"banned\"}",
        )
    })
    .await;
    let (hooks, _) = start(&config(&server, &ALL));
    for _ in 0..3 {
        let HookOutcome::Deny(denial) = hooks.subscribe(who("c"), &[]).await else {
            panic!("expected the application's denial");
        };
        assert_eq!((denial.code.as_str(), denial.failure), ("banned", None));
    }
    assert_eq!(server.accepted(), 3);
}
