//! Health, readiness, metrics and everything else on the client port.

mod common;

use std::sync::atomic::Ordering;

use common::*;

#[tokio::test]
async fn healthz_readyz_metrics_and_404() {
    let (gw, fake) = start(test_config()).await;
    let addr = gw.local_addr();
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    fake.ready.store(false, Ordering::SeqCst);
    assert_eq!(http_get(addr, "/readyz").await.0, 503);
    fake.ready.store(true, Ordering::SeqCst);
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    assert_eq!(
        http_get(addr, "/").await.0,
        200,
        "the demo page (tests/demo.rs)"
    );

    let mut ws = connect(addr, None).await;
    subscribe(&mut ws, "m", 1).await;
    publish(&mut ws, "m", "1", 2).await;
    recv(&mut ws).await.unwrap();
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "firetower_gateway_ready 1\n",
        "firetower_gateway_topics 1\n",
        "firetower_gateway_subscriptions 1\n",
        "firetower_gateway_publishes_in_total 1\n",
        "firetower_gateway_deliveries_in_total 1\n",
        "firetower_gateway_messages_out_total 1\n",
        "firetower_gateway_messages_dropped_total 0\n",
        "firetower_gateway_slow_consumer_disconnects_total 0\n",
        "firetower_gateway_publish_latency_seconds_count 1\n",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    // The /metrics request itself is an open connection while it is served.
    assert!(body.contains("firetower_gateway_connections "));
    assert_eq!(body, body.trim_end().to_string() + "\n");
    gw.shutdown().await;
}

#[tokio::test]
async fn other_methods_are_refused() {
    let (gw, _fake) = start(test_config()).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.local_addr())
        .await
        .unwrap();
    s.write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    gw.shutdown().await;
}
