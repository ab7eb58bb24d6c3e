//! The manager's metrics endpoint: a single-manager cluster in this process on loopback,
//! scraped with raw HTTP GETs as Prometheus would, before and after a subscription commits
//! through the gateway link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use firetower_link::{
    decode_body, decode_frame, encode_frame, read_link_frame, MAX_LINK_FRAME_BYTES,
};
use firetower_manager::{connect_admin, Manager, ManagerConfig, RaftTuning};
use firetower_proto::admin::InitRequest;
use firetower_proto::link::{
    gateway_reply, gateway_request, session_frame, GatewayReply, GatewayRequest, OpenSession,
    SessionFrame, Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free TCP port")
            .port()
    }
}

async fn start_single(dir: &std::path::Path) -> Manager {
    let config = ManagerConfig {
        id: 1,
        quic: SocketAddr::from(([127, 0, 0, 1], free_port(true))),
        admin: SocketAddr::from(([127, 0, 0, 1], free_port(false))),
        data_dir: dir.to_path_buf(),
        cluster_id: None,
        raft: RaftTuning::default(),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        unsafe_stale_reads: false,
        unsafe_stale_leadership: false,
        tls: firetower_manager::TlsSettings {
            dir: None,
            insecure: true,
        },
        unsafe_test_hooks: false,
    };
    let manager = Manager::start(config).await.expect("manager starts");
    let mut admin = connect_admin(
        &manager.node().admin,
        &firetower_link::Security::Insecure,
        Duration::from_secs(10),
    )
    .await
    .expect("admin API answers");
    admin
        .init(InitRequest {
            members: Vec::new(),
            groups: 1,
        })
        .await
        .expect("cluster init");
    assert!(
        manager
            .wait_for_leaders(Duration::from_secs(10))
            .await
            .is_empty(),
        "group 0 elected no leader"
    );
    manager
}

/// A raw HTTP/1.1 request; returns the status code and the body.
async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(response).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .await
}

/// Every sample of the scrape, keyed by the series (name and labels).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in the scrape: {samples:?}"))
}

/// Subscribe `topic` for gateway `gateway` over the link, as a gateway does: in a session
/// opened first on the same connection (a manager commits no subscription without one).
async fn subscribe(manager: &Manager, gateway: u64, topic: &str) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        firetower_raft::client_config(
            firetower_raft::ALPN_LINK,
            &firetower_link::Security::Insecure,
        )
        .unwrap(),
    );
    let conn = endpoint
        // The name the managers' self-signed certificates carry (firetower_raft::quic).
        .connect(manager.quic_addr(), "firetower")
        .unwrap()
        .await
        .expect("QUIC handshake");
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let (mut session_send, mut session_recv) = conn.open_bi().await.unwrap();
    let open = GatewayRequest {
        gateway,
        op: Some(gateway_request::Op::OpenSession(OpenSession {
            epoch,
            lease_ms: 5_000,
        })),
    };
    session_send.write_all(&encode_frame(&open)).await.unwrap();
    let opened = read_link_frame(&mut session_recv, MAX_LINK_FRAME_BYTES)
        .await
        .unwrap()
        .expect("a session frame");
    let opened: SessionFrame = decode_body(&opened).unwrap();
    assert!(
        matches!(opened.frame, Some(session_frame::Frame::Opened(_))),
        "{opened:?}"
    );
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let request = GatewayRequest {
        gateway,
        op: Some(gateway_request::Op::Subscribe(Subscribe {
            topic: topic.to_string(),
            epoch,
        })),
    };
    send.write_all(&encode_frame(&request)).await.unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(1 << 20).await.unwrap();
    let reply: GatewayReply = decode_frame(&bytes).unwrap();
    match reply.result {
        Some(gateway_reply::Result::Done(done)) => assert!(done.changed, "{done:?}"),
        other => panic!("subscribe was not committed: {other:?}"),
    }
    conn.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_the_manager_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let manager = start_single(dir.path()).await;
    let addr = manager.metrics_addr().expect("metrics are served");

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");

    let (status, before) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "firetower_manager_role",
        "firetower_manager_term",
        "firetower_manager_commit_index",
        "firetower_manager_apply_index",
        "firetower_manager_proposals",
        "firetower_manager_commits",
        "firetower_manager_commit_latency_seconds",
        "firetower_manager_wal_fsync_seconds",
        "firetower_manager_gateway_sessions",
        "firetower_manager_publishes",
        "firetower_manager_deliveries",
        "firetower_manager_stamp_map_topics",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} missing in\n{before}"
        );
    }
    let before = samples(&before);
    assert_eq!(
        value(
            &before,
            "firetower_manager_role{group=\"0\",role=\"leader\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &before,
            "firetower_manager_role{group=\"0\",role=\"follower\"}"
        ),
        0.0
    );
    assert!(value(&before, "firetower_manager_term{group=\"0\"}") >= 1.0);
    assert_eq!(value(&before, "firetower_manager_gateway_sessions"), 0.0);
    // Init wrote votes and entries: the log was synced at least once.
    assert!(value(&before, "firetower_manager_wal_fsync_seconds_count") >= 1.0);
    let committed_before = value(&before, "firetower_manager_commit_index{group=\"0\"}");

    subscribe(&manager, 7, "metrics.topic").await;

    let (status, after) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let after = samples(&after);
    assert!(
        value(&after, "firetower_manager_commit_index{group=\"0\"}") > committed_before,
        "commit index did not grow"
    );
    assert!(
        value(&after, "firetower_manager_apply_index{group=\"0\"}")
            >= value(&after, "firetower_manager_commit_index{group=\"0\"}") - 1.0
    );
    assert!(value(&after, "firetower_manager_proposals_total{group=\"0\"}") >= 1.0);
    assert!(value(&after, "firetower_manager_commits_total{group=\"0\"}") >= 1.0);
    assert!(
        value(
            &after,
            "firetower_manager_commit_latency_seconds_count{group=\"0\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "firetower_manager_commit_latency_seconds_sum{group=\"0\"}"
        ) > 0.0
    );
    assert!(
        value(&after, "firetower_manager_wal_fsync_seconds_count")
            > value(&before, "firetower_manager_wal_fsync_seconds_count")
    );

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_an_error_and_the_endpoint_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let manager = start_single(dir.path()).await;
    let addr = manager.metrics_addr().expect("metrics are served");

    assert_eq!(http(addr, b"\x00\x01\x02 nonsense\r\n\r\n").await.0, 400);
    assert_eq!(get(addr, "/nothing-here").await.0, 404);
    assert_eq!(
        http(addr, b"POST /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .0,
        405
    );
    // A head that does not end within the 8 KiB limit (sent whole, so that the server reads
    // everything before it answers and closes).
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(8 * 1024, b'a');
    assert_eq!(http(addr, &huge).await.0, 431);
    assert_eq!(get(addr, "/healthz").await.0, 200);

    manager.shutdown().await;
}
