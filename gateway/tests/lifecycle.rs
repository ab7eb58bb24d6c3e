//! Graceful drain, task isolation and idle connections.

mod common;

use std::time::Duration;

use common::*;
use firetower_gateway::ws::Opcode;
use serde_json::json;

#[tokio::test]
async fn shutdown_closes_with_1001_and_unsubscribes() {
    let (gw, fake) = start(test_config()).await;
    let mut a = connect(gw.local_addr(), None).await;
    let mut b = connect(gw.local_addr(), Some("firetower.proto")).await;
    subscribe(&mut a, "x", 1).await;
    subscribe(&mut a, "y", 2).await;
    let sub = firetower_gateway::ClientFrame::subscribe(1, vec!["y".into()]);
    b.send_binary(&sub.encode_proto()).await.unwrap();
    recv_binary(&mut b).await.unwrap();
    assert_eq!(fake.interest().len(), 2);

    let drained = {
        let shutdown = gw.shutdown();
        let clients = async {
            let (ca, _) = recv_close(&mut a).await.unwrap();
            let cb = loop {
                match b.next_event().await {
                    Ok(Some(firetower_client::Event::Close(Some((code, _))))) => break code,
                    Ok(Some(_)) => continue,
                    other => panic!("no close frame: {other:?}"),
                }
            };
            (ca, cb)
        };
        let (drained, codes) = tokio::join!(shutdown, clients);
        assert_eq!(codes, (1001, 1001));
        drained
    };
    assert!(drained, "drain finished in time");
    assert!(fake.interest().is_empty(), "{:?}", fake.interest());
    let mut unsubs = fake.unsubscribes();
    unsubs.sort();
    assert_eq!(unsubs, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(gw.metrics().connections_open, 0);
    assert_eq!(gw.metrics().topics, 0);
    // No longer accepting.
    let refused = tokio::net::TcpStream::connect(gw.local_addr()).await;
    if let Ok(mut s) = refused {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn a_panic_in_one_request_is_isolated() {
    let (gw, fake) = start(test_config()).await;
    let mut other = connect(gw.local_addr(), None).await;
    subscribe(&mut other, "fine", 1).await;
    let mut victim = connect(gw.local_addr(), None).await;
    send(
        &mut victim,
        r#"{"op":"publish","topic":"panic.now","data":1,"id":9}"#,
    )
    .await;
    let e = recv(&mut victim).await.unwrap();
    assert_eq!(e["code"], "internal_error");
    assert_eq!(e["id"], 9);
    assert_eq!(gw.metrics().panics, 1);
    // Both connections and the gateway keep working.
    assert_alive(&mut victim).await;
    publish(&mut victim, "fine", "2", 10).await;
    assert_eq!(recv(&mut other).await.unwrap()["data"], json!(2));
    let _ = fake;
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed_and_live_ones_stay() {
    let mut config = test_config();
    config.limits.idle_timeout = Duration::from_millis(200);
    config.limits.pong_timeout = Duration::from_millis(200);
    let (gw, _fake) = start(config).await;

    // The client answers pings while it is being read: it stays.
    let mut live = connect(gw.local_addr(), None).await;
    let keep_reading = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
        while let Ok(Ok(Some(_))) = tokio::time::timeout_at(deadline, live.next_event()).await {}
        live
    });

    let mut silent = RawWs::connect(gw.local_addr()).await;
    let ping = silent.recv_frame().await.unwrap();
    assert_eq!(ping.opcode, Opcode::Ping);
    let (code, _) = silent.recv_close().await;
    assert_eq!(code, 1001);

    let mut live = keep_reading.await.unwrap();
    assert_alive(&mut live).await;
    assert!(gw.metrics().idle_disconnects >= 1);
    gw.shutdown().await;
}
