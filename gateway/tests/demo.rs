//! The demo page at `GET /` and its token endpoint (`[demo] tokens`), against a gateway on
//! loopback with an in-memory upstream. The page itself runs in a browser in
//! `clients/typescript/e2e`.

mod common;

use std::net::SocketAddr;

use common::*;
use firetower_client::{Client, Flavour};
use firetower_gateway::{AuthConfig, GatewayConfig};
use serde_json::json;

async fn post_token(addr: SocketAddr, body: &str) -> (u16, serde_json::Value) {
    let request = format!(
        "POST /demo/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http_exchange(addr, &request).await;
    (status, serde_json::from_str(&body).unwrap_or(json!(null)))
}

/// Anonymous clients allowed, tokens verified with an HS256 secret, demo tokens on: what
/// `firetower dev` runs.
fn dev_like(dir: &std::path::Path) -> GatewayConfig {
    let secret = dir.join("secret");
    std::fs::write(&secret, "demo-test-secret-0123456789abcdef\n").unwrap();
    let mut c = test_config();
    c.allow_anonymous = true;
    c.demo_tokens = true;
    c.auth = Some(AuthConfig {
        hs256_secret_file: Some(secret),
        ..AuthConfig::default()
    });
    c
}

#[tokio::test]
async fn the_page_is_served_and_tokens_are_off_by_default() {
    let (gw, _fake) = start(test_config()).await;
    let addr = gw.local_addr();
    let (status, body) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("Firetower demo chat"), "{body}");
    let (status, body) = http_get(addr, "/firetower/index.js").await;
    assert_eq!(status, 200);
    assert!(body.contains("FiretowerClient"));
    let (status, body) = post_token(addr, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
    let (status, _) = http_exchange(addr, "POST / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_demo_token_names_the_user_and_only_opens_demo_topics() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _fake) = start(dev_like(dir.path())).await;
    let addr = gw.local_addr();
    let (status, body) = post_token(addr, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();

    let mut ws = tokio::time::timeout(
        WAIT,
        Client::connect(&format!("{addr}/ws?token={token}"), Flavour::Json),
    )
    .await
    .unwrap()
    .unwrap();
    subscribe(&mut ws, "demo.lobby", 1).await;
    send(&mut ws, r#"{"op":"subscribe","topics":["room.1"],"id":2}"#).await;
    let refused = recv(&mut ws).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // Anonymous clients are still let in, with every topic.
    let mut anonymous = connect(addr, None).await;
    subscribe(&mut anonymous, "room.1", 1).await;

    for (body, code) in [
        ("{}", "invalid_json"),
        (r#"{"user":""}"#, "invalid_field"),
        (r#"{"user":"a\nb"}"#, "invalid_field"),
    ] {
        let (status, answer) = post_token(addr, body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, _) = http_exchange(
        addr,
        "POST /demo/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "a token request is small");
}
