//! A client that never reads is dropped from messages (counted), then disconnected by policy;
//! a fast subscriber of the same topic gets every message, in order.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use firetower_gateway::Payload;

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_others_are_unaffected() {
    let mut config = test_config();
    config.limits.send_queue_messages = 64;
    config.limits.slow_consumer_drops = 32;
    config.limits.slow_consumer_grace = Duration::from_secs(60);
    let (gw, fake) = start(config).await;

    let mut slow = RawWs::connect(gw.local_addr()).await;
    slow.send_frame(
        true,
        firetower_gateway::ws::Opcode::Text,
        br#"{"op":"subscribe","topics":["firehose"],"id":1}"#,
    )
    .await;
    assert_eq!(
        slow.recv_json().await,
        serde_json::json!({"op":"ack","id":1})
    );
    // From here on `slow` never reads again.

    let mut fast = connect(gw.local_addr(), None).await;
    subscribe(&mut fast, "firehose", 1).await;
    const TOTAL: u64 = 3_000;
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let reader = tokio::spawn(async move {
        for expected in 1..=TOTAL {
            let m = recv(&mut fast).await.unwrap();
            assert_eq!(m["seq"], expected, "fast subscriber saw a gap or a reorder");
            seen.store(expected, Ordering::SeqCst);
        }
        fast
    });

    let payload = Payload::Json(Bytes::from(format!("\"{}\"", "x".repeat(8 * 1024))));
    for sent in 1..=TOTAL {
        fake.deliver("firehose", payload.clone()).await;
        // Pace the producer by the fast client only: it must never be the one dropping.
        // (Well inside its 64-message queue.)
        while sent > progress.load(Ordering::SeqCst) + 32 && !reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut fast = tokio::time::timeout(WAIT * 3, reader)
        .await
        .unwrap()
        .unwrap();
    assert_alive(&mut fast).await;

    let m = gw.metrics();
    assert_eq!(m.slow_consumer_disconnects, 1, "{m:?}");
    assert!(m.messages_dropped >= 32, "{m:?}");
    eventually("slow consumer's connection closed", || {
        gw.metrics().connections_open == 1
    })
    .await;
    drop(slow);
    gw.shutdown().await;
}
