//! Client authentication, permissions, limits, operator controls and the backend API, against
//! a gateway on loopback with an in-memory upstream.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use firetower_client::{Client, Flavour};
use firetower_gateway::{ApiConfig, AuthConfig, ControlEvent, GatewayConfig};
use firetower_proto::{Ban, BanTarget, Cidr};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"test-secret-of-32-bytes-long!!!!";
const API_KEY: &str = "backend-key-0123456789";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_token(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A token for `user` allowed `subscribe`/`publish`, expiring in `ttl_s` seconds.
fn token(user: &str, subscribe: &[&str], publish: &[&str], ttl_s: u64) -> String {
    hs_token(json!({
        "sub": user, "exp": unix_now() + ttl_s, "aud": "app",
        "firetower": {"subscribe": subscribe, "publish": publish}
    }))
}

fn hs_config(dir: &Path) -> GatewayConfig {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let keys = dir.join("api-keys");
    std::fs::write(&keys, format!("# keys\n{API_KEY}\n")).unwrap();
    let mut c = test_config();
    c.auth = Some(AuthConfig {
        hs256_secret_file: Some(secret),
        audience: Some("app".into()),
        ..AuthConfig::default()
    });
    c.api = Some(ApiConfig { keys_file: keys });
    c
}

async fn connect_path(addr: SocketAddr, path: &str) -> Client {
    tokio::time::timeout(
        WAIT,
        Client::connect(&format!("{addr}{path}"), Flavour::Json),
    )
    .await
    .expect("connect timed out")
    .expect("connect failed")
}

async fn connect_token(addr: SocketAddr, token: &str) -> Client {
    connect_path(addr, &format!("/ws?token={token}")).await
}

/// The close code the server sends next, skipping data frames.
async fn close_code(ws: &mut Client) -> u16 {
    recv_close(ws).await.unwrap().0
}

#[tokio::test]
async fn missing_bad_expired_and_wrong_audience_tokens_are_closed_with_4401() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _fake) = start(hs_config(dir.path())).await;
    let addr = gw.local_addr();

    // No token: the first frame must be `auth`; a subscribe instead closes at once.
    let mut ws = connect(addr, None).await;
    send(&mut ws, r#"{"op":"subscribe","topics":["room.1"],"id":1}"#).await;
    let (code, frames) = recv_close(&mut ws).await.unwrap();
    assert_eq!(code, 4401);
    assert_eq!(frames[0]["code"], "unauthorized", "{frames:?}");
    // No token and silence: closed when the handshake time is up.
    let mut ws = connect(addr, None).await;
    assert_eq!(close_code(&mut ws).await, 4401);

    let other = encode(
        &Header::default(),
        &json!({"sub": "u1", "exp": unix_now() + 60, "aud": "app"}),
        &EncodingKey::from_secret(b"some other secret, 32 bytes long"),
    )
    .unwrap();
    let expired = hs_token(json!({"sub": "u1", "exp": unix_now() - 5, "aud": "app"}));
    let wrong_aud = hs_token(json!({"sub": "u1", "exp": unix_now() + 60, "aud": "other"}));
    for bad in [other.as_str(), &expired, &wrong_aud, "garbage"] {
        let mut ws = connect_token(addr, bad).await;
        assert_eq!(close_code(&mut ws).await, 4401, "{bad}");
    }
    assert!(gw.metrics().auth_failures >= 6);
}

#[tokio::test]
async fn permissions_decide_topics_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _fake) = start(hs_config(dir.path())).await;
    let t = token("u1", &["room.*", "user.{sub}"], &["room.1"], 60);
    let mut ws = connect_token(gw.local_addr(), &t).await;
    subscribe(&mut ws, "room.1", 1).await;
    subscribe(&mut ws, "user.u1", 2).await;
    for (id, frame) in [
        (3, r#"{"op":"subscribe","topics":["chat.1"],"id":3}"#),
        (4, r#"{"op":"subscribe","topics":["user.u2"],"id":4}"#),
        (5, r#"{"op":"publish","topic":"room.2","data":1,"id":5}"#),
    ] {
        send(&mut ws, frame).await;
        let f = recv(&mut ws).await.unwrap();
        assert_eq!(f["op"], "error", "{f}");
        assert_eq!(f["code"], "forbidden", "{f}");
        assert_eq!(f["id"], id);
    }
    let echoed = publish(&mut ws, "room.1", r#"{"hi":1}"#, 6).await;
    assert!(echoed.is_empty() || echoed[0]["topic"] == "room.1");
    assert_alive(&mut ws).await;
    assert_eq!(gw.metrics().forbidden, 3);
}

#[tokio::test]
async fn the_token_can_come_as_a_header_or_the_first_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _fake) = start(hs_config(dir.path())).await;
    let addr = gw.local_addr();
    // First frame.
    let mut ws = connect(addr, None).await;
    let t = token("u7", &["a.*"], &[], 60);
    send(&mut ws, &format!(r#"{{"op":"auth","token":"{t}","id":1}}"#)).await;
    assert_eq!(
        recv(&mut ws).await.unwrap(),
        json!({"op":"ack","id":1,"user":"u7"})
    );
    subscribe(&mut ws, "a.1", 2).await;

    // Authorization: Bearer, on a raw upgrade request.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {t}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // Authenticated: it is not closed at the end of the handshake time (500 ms here).
    tokio::time::sleep(Duration::from_millis(900)).await;
    let ping = firetower_gateway::ws::encode_frame(
        true,
        firetower_gateway::ws::Opcode::Text,
        br#"{"op":"ping","id":9}"#,
        Some([1, 2, 3, 4]),
    );
    s.write_all(&ping).await.unwrap();
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains(r#"{"op":"pong","id":9}"#), "{text}");
}

#[tokio::test]
async fn an_expiring_token_closes_at_expiry_unless_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _fake) = start(hs_config(dir.path())).await;
    let addr = gw.local_addr();
    // JWT `exp` has one-second resolution: 3 s from now is at least 2 s away.
    let short = token("u1", &["room.*"], &[], 3);
    let mut lapsing = connect_token(addr, &short).await;
    let mut refreshed = connect_token(addr, &short).await;
    subscribe(&mut lapsing, "room.1", 1).await;
    assert_alive(&mut lapsing).await;
    let fresh = token("u1", &["room.*"], &[], 60);
    send(
        &mut refreshed,
        &format!(r#"{{"op":"auth","token":"{fresh}","id":5}}"#),
    )
    .await;
    assert_eq!(
        recv(&mut refreshed).await.unwrap(),
        json!({"op":"ack","id":5,"user":"u1"})
    );
    let (code, _) = recv_close(&mut lapsing).await.unwrap();
    assert_eq!(code, 4401);
    // The refreshed one outlived the first token.
    assert_alive(&mut refreshed).await;
    // A refresh naming another user closes.
    let other = token("u2", &[], &[], 60);
    send(
        &mut refreshed,
        &format!(r#"{{"op":"auth","token":"{other}","id":6}}"#),
    )
    .await;
    assert_eq!(close_code(&mut refreshed).await, 4401);
}

/// An EC P-256 key pair from rcgen: (private PKCS#8 PEM, public SPKI PEM, raw public point).
fn ec_key() -> (String, String, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (
        kp.serialize_pem(),
        kp.public_key_pem(),
        kp.public_key_raw().to_vec(),
    )
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn es256_public_keys_and_jwks_files_verify_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public, raw) = ec_key();
    let claims =
        json!({"sub": "u1", "exp": unix_now() + 60, "firetower": {"subscribe": ["room.*"]}});
    let signer = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();

    // A PEM public key.
    let pem = dir.path().join("public.pem");
    std::fs::write(&pem, &public).unwrap();
    let mut c = test_config();
    c.auth = Some(AuthConfig {
        public_key_file: Some(pem),
        ..AuthConfig::default()
    });
    let (gw, _fake) = start(c).await;
    let t = encode(&Header::new(Algorithm::ES256), &claims, &signer).unwrap();
    let mut ws = connect_token(gw.local_addr(), &t).await;
    subscribe(&mut ws, "room.1", 1).await;
    // An HS256 token against an ES256 key is refused.
    let mut ws = connect_token(gw.local_addr(), &hs_token(claims.clone())).await;
    assert_eq!(close_code(&mut ws).await, 4401);

    // A JWKS file: the key is found by `kid`; a token naming another kid is refused.
    let jwks = dir.path().join("jwks.json");
    let (x, y) = (&raw[1..33], &raw[33..65]);
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
                          "x": b64url(x), "y": b64url(y)}]})
        .to_string(),
    )
    .unwrap();
    let mut c = test_config();
    c.auth = Some(AuthConfig {
        jwks_file: Some(jwks),
        ..AuthConfig::default()
    });
    let (gw, _fake) = start(c).await;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let t = encode(&header, &claims, &signer).unwrap();
    let mut ws = connect_token(gw.local_addr(), &t).await;
    subscribe(&mut ws, "room.1", 1).await;
    header.kid = Some("k2".into());
    let t = encode(&header, &claims, &signer).unwrap();
    let mut ws = connect_token(gw.local_addr(), &t).await;
    assert_eq!(close_code(&mut ws).await, 4401);
}

#[tokio::test]
async fn unusable_key_files_stop_the_gateway_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, "{not json").unwrap();
    for auth in [
        AuthConfig {
            jwks_file: Some(jwks.clone()),
            ..AuthConfig::default()
        },
        AuthConfig {
            hs256_secret_file: Some(dir.path().join("missing")),
            ..AuthConfig::default()
        },
    ] {
        let mut c = test_config();
        c.auth = Some(auth);
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let (fake, _) = FakeUpstream::new();
        let e = firetower_gateway::Gateway::start(c, fake, rx)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("[auth]"), "{e}");
    }
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused() {
    let mut c = test_config();
    c.allowed_origins = vec!["https://app.example.com".into()];
    let (gw, _fake) = start(c).await;
    let upgrade = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n"
        )
    };
    for (origin, status) in [
        ("https://app.example.com", "101"),
        ("https://evil.example.net", "403"),
    ] {
        let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
        s.write_all(upgrade(origin).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{origin}: {text}"
        );
    }
}

#[tokio::test]
async fn publish_rates_and_connections_per_user_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = hs_config(dir.path());
    c.limits.publish_rate = 3;
    c.limits.publish_burst = 3;
    c.limits.max_connections_per_user = 2;
    let (gw, _fake) = start(c).await;
    let addr = gw.local_addr();
    let t = token("u1", &[], &["room.*"], 60);
    let mut a = connect_token(addr, &t).await;
    let _b = connect_token(addr, &t).await;
    let mut third = connect_token(addr, &t).await;
    assert_eq!(close_code(&mut third).await, 4429);
    for id in 1..=3 {
        publish(&mut a, "room.1", "1", id).await;
    }
    send(
        &mut a,
        r#"{"op":"publish","topic":"room.1","data":1,"id":4}"#,
    )
    .await;
    let f = recv(&mut a).await.unwrap();
    assert_eq!(
        (f["code"].as_str(), f["id"].as_u64()),
        (Some("rate_limited"), Some(4))
    );
    // Another user is not affected by u1's connections.
    let mut other = connect_token(addr, &token("u2", &[], &[], 60)).await;
    assert_alive(&mut other).await;
}

#[tokio::test]
async fn a_per_user_publish_rate_spans_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = hs_config(dir.path());
    c.limits.user_publish_rate = 2;
    c.limits.user_publish_burst = 2;
    let (gw, _fake) = start(c).await;
    let t = token("u1", &[], &["room.*"], 60);
    let mut a = connect_token(gw.local_addr(), &t).await;
    let mut b = connect_token(gw.local_addr(), &t).await;
    publish(&mut a, "room.1", "1", 1).await;
    publish(&mut b, "room.1", "1", 1).await;
    send(
        &mut a,
        r#"{"op":"publish","topic":"room.1","data":1,"id":2}"#,
    )
    .await;
    assert_eq!(recv(&mut a).await.unwrap()["code"], "rate_limited");
}

fn ban(id: u64, target: BanTarget) -> Ban {
    Ban {
        id,
        target,
        reason: "abuse".into(),
        created_ms: 0,
        expires_ms: None,
    }
}

#[tokio::test]
async fn kicks_and_bans_close_open_connections_with_4403() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, fake) = start(hs_config(dir.path())).await;
    let addr = gw.local_addr();
    let mut u1 = connect_token(addr, &token("u1", &["room.*"], &[], 60)).await;
    let mut u2 = connect_token(addr, &token("u2", &["room.*", "spam.*"], &[], 60)).await;
    let mut u3 = connect_token(addr, &token("u3", &["room.*"], &[], 60)).await;
    assert_alive(&mut u1).await;
    assert_alive(&mut u3).await;
    subscribe(&mut u2, "spam.1", 1).await;

    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    fake.control
        .send(ControlEvent::Kick {
            user: "u1".into(),
            at_ms,
        })
        .await
        .unwrap();
    assert_eq!(close_code(&mut u1).await, 4403);
    // A kick is not a ban: u1 comes back.
    let mut u1 = connect_token(addr, &token("u1", &["room.*"], &[], 60)).await;
    assert_alive(&mut u1).await;

    // A topic ban drops the subscription (with an error) and refuses new subscribes.
    fake.control
        .send(ControlEvent::Bans(Arc::new(vec![ban(
            1,
            BanTarget::Topic("spam.*".into()),
        )])))
        .await
        .unwrap();
    let f = recv(&mut u2).await.unwrap();
    assert_eq!(f["code"], "forbidden", "{f}");
    send(&mut u2, r#"{"op":"subscribe","topics":["spam.2"],"id":2}"#).await;
    assert_eq!(recv(&mut u2).await.unwrap()["code"], "forbidden");

    // A user ban closes the user's connections and refuses new ones.
    fake.control
        .send(ControlEvent::Bans(Arc::new(vec![ban(
            2,
            BanTarget::User("u2".into()),
        )])))
        .await
        .unwrap();
    assert_eq!(close_code(&mut u2).await, 4403);
    let mut again = connect_token(addr, &token("u2", &[], &[], 60)).await;
    assert_eq!(close_code(&mut again).await, 4403);
    assert_alive(&mut u3).await;

    // A lapsed ban is not enforced.
    let mut lapsed = ban(3, BanTarget::User("u3".into()));
    lapsed.expires_ms = Some(1);
    fake.control
        .send(ControlEvent::Bans(Arc::new(vec![lapsed])))
        .await
        .unwrap();
    let mut u3b = connect_token(addr, &token("u3", &[], &[], 60)).await;
    assert_alive(&mut u3b).await;

    // An address ban closes everyone from it (here: every client, on loopback).
    fake.control
        .send(ControlEvent::Bans(Arc::new(vec![ban(
            4,
            BanTarget::Ip(Cidr::parse("127.0.0.0/8").unwrap()),
        )])))
        .await
        .unwrap();
    assert_eq!(close_code(&mut u3).await, 4403);
    assert_eq!(close_code(&mut u1).await, 4403);
}

#[tokio::test]
async fn connection_queries_and_stats_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, fake) = start(hs_config(dir.path())).await;
    let mut ws = connect_token(gw.local_addr(), &token("u1", &["room.*"], &["room.*"], 60)).await;
    subscribe(&mut ws, "room.1", 1).await;
    publish(&mut ws, "room.1", "1", 2).await;
    let (reply, answer) = tokio::sync::oneshot::channel();
    fake.control
        .send(ControlEvent::Connections {
            user: "u1".into(),
            reply,
        })
        .await
        .unwrap();
    let conns = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].topics, vec!["room.1".to_string()]);
    assert_eq!(
        conns[0].remote,
        ws.local_addr().unwrap().to_string(),
        "{conns:?}"
    );
    eventually("stats with the connection and the publish", || {
        fake.stats
            .lock()
            .unwrap()
            .last()
            .is_some_and(|s| s.connections == 1 && s.messages_in_total == 1 && s.topics == 1)
    })
    .await;
}

/// One HTTP request with a body on a fresh connection: (status, body).
async fn http_post(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http_exchange(addr, &request).await;
    (status, serde_json::from_str(&body).unwrap_or(json!(null)))
}

#[tokio::test]
async fn the_backend_api_publishes_with_an_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _fake) = start(hs_config(dir.path())).await;
    let addr = gw.local_addr();
    let mut ws = connect_token(addr, &token("u1", &["room.*"], &[], 60)).await;
    subscribe(&mut ws, "room.1", 1).await;
    let key = format!("apikey {API_KEY}");
    let (status, body) = http_post(
        addr,
        "/api/publish",
        Some(&key),
        r#"{"topic":"room.1","data":{"a":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m = recv(&mut ws).await.unwrap();
    assert_eq!(m["data"], json!({"a":1}));
    assert_eq!(
        (m["term"].clone(), m["seq"].clone()),
        (body["term"].clone(), body["seq"].clone())
    );

    let (status, body) = http_post(
        addr,
        "/api/publish",
        Some("apikey wrong-key-0123456789"),
        r#"{"topic":"room.1","data":1}"#,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = http_post(addr, "/api/publish", None, r#"{"topic":"room.1","data":1}"#).await;
    assert_eq!(status, 401);
    let (status, body) = http_post(
        addr,
        "/api/publish",
        Some(&key),
        r#"{"topic":"room 1","data":1}"#,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_topic"))
    );
    let (status, body) = http_post(addr, "/api/publish", Some(&key), "{nope").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")));
    let big = format!(r#"{{"topic":"room.1","data":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, _) = http_post(addr, "/api/publish", Some(&key), &big).await;
    assert_eq!(status, 413);

    let (status, body) = http_post(
        addr,
        "/api/broadcast",
        Some(&key),
        r#"{"topics":["room.1","room.2"],"data":[1]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert!(body["results"][0]["seq"].is_u64(), "{body}");
    assert_eq!(recv(&mut ws).await.unwrap()["data"], json!([1]));
    assert_alive(&mut ws).await;

    // Without [api] the paths do not exist.
    let (gw2, _f) = start(test_config()).await;
    let (status, _) = http_post(gw2.local_addr(), "/api/publish", Some(&key), "{}").await;
    assert_eq!(status, 404);
}
