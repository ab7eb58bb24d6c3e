//! Client TLS (`[client_tls]`): `wss://`, `https://` and TLS on the raw TCP port, hostile
//! handshakes, and certificate reload without dropping connections.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use firetower_client::{tls::client_config_from_ca_pem, Client, Flavour, Payload};
use firetower_gateway::{ClientTlsConfig, Gateway, GatewayConfig, GatewayError, GatewayHandle};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA of the test's own that issues server certificates into a directory.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate the CA issued: its files and its DER (to compare with what is served).
struct Issued {
    files: ClientTlsConfig,
    der: Vec<u8>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, written as `<stem>.pem` and
    /// `<stem>-key.pem` in `dir`.
    fn issue(&self, dir: &Path, stem: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = ClientTlsConfig {
            cert_file: dir.join(format!("{stem}.pem")),
            key_file: dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        Issued {
            files,
            der: cert.der().to_vec(),
        }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_from_ca_pem(self.pem.as_bytes(), "test CA").unwrap()
    }
}

fn tls_config(files: &ClientTlsConfig) -> GatewayConfig {
    GatewayConfig {
        client_tls: Some(files.clone()),
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..test_config()
    }
}

fn wss_url(gw: &GatewayHandle) -> String {
    format!("wss://127.0.0.1:{}/ws", gw.local_addr().port())
}

async fn connect_wss(gw: &GatewayHandle, ca: &TestCa) -> Client {
    tokio::time::timeout(
        WAIT,
        Client::connect_tls(&wss_url(gw), Flavour::Json, ca.client_config()),
    )
    .await
    .expect("wss connect timed out")
    .expect("wss connect failed")
}

/// A bare TLS connection to the client port: the certificate it was served and the stream.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &TestCa,
) -> std::io::Result<(Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(name, tcp)
        .await?;
    let served: &CertificateDer<'_> = &stream.get_ref().1.peer_certificates().unwrap()[0];
    Ok((served.to_vec(), stream))
}

/// The leaf certificate the client port serves now.
async fn served_cert(gw: &GatewayHandle, ca: &TestCa) -> Vec<u8> {
    tls_connect(gw.local_addr(), ca).await.unwrap().0
}

/// Publish on `ws` and see it come back on `ws` (subscribed to `topic`).
async fn round_trip(ws: &mut Client, topic: &str, data: &str, id: u64) {
    let mut seen = publish(ws, topic, data, id).await;
    if seen.is_empty() {
        seen.push(recv(ws).await.unwrap());
    }
    assert_eq!(seen[0]["op"], "message", "{seen:?}");
    assert_eq!(seen[0]["topic"], topic);
    assert_eq!(
        seen[0]["data"],
        serde_json::from_str::<serde_json::Value>(data).unwrap()
    );
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn wss_subscribe_and_publish() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let cert = ca.issue(dir.path(), "server");
    let (gw, fake) = start(tls_config(&cert.files)).await;
    assert!(gw.serves_tls());

    let mut a = connect_wss(&gw, &ca).await;
    let mut b = connect_wss(&gw, &ca).await;
    subscribe(&mut a, "room.1", 1).await;
    subscribe(&mut b, "room.1", 1).await;
    assert!(fake.interest().contains("room.1"));
    // Larger than one TLS record, so the message spans several.
    let big = format!("\"{}\"", "x".repeat(40_000));
    for (i, data) in [r#"{"text":"hello"}"#, big.as_str()]
        .into_iter()
        .enumerate()
    {
        round_trip(&mut a, "room.1", data, 10 + i as u64).await;
        let m = recv(&mut b).await.unwrap();
        assert_eq!(m["op"], "message");
        assert_eq!(
            m["data"],
            serde_json::from_str::<serde_json::Value>(data).unwrap()
        );
    }
    a.close().await.unwrap();
    assert_alive(&mut b).await;
    assert_eq!(gw.metrics().tls_handshake_failures, 0);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn plain_websocket_is_refused_by_a_tls_port_and_tls_by_a_plain_one() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let cert = ca.issue(dir.path(), "server");
    let (tls_gw, _fake) = start(tls_config(&cert.files)).await;
    let plain = tokio::time::timeout(
        WAIT,
        Client::connect(&tls_gw.local_addr().to_string(), Flavour::Json),
    )
    .await
    .expect("a plaintext upgrade to the TLS port must end, not hang");
    assert!(plain.is_err());
    eventually("the failed handshake is counted", || {
        tls_gw.metrics().tls_handshake_failures == 1
    })
    .await;

    let (plain_gw, _fake) = start(test_config()).await;
    assert!(!plain_gw.serves_tls());
    let tls = tokio::time::timeout(
        WAIT,
        Client::connect_tls(
            &format!("wss://127.0.0.1:{}/ws", plain_gw.local_addr().port()),
            Flavour::Json,
            ca.client_config(),
        ),
    )
    .await
    .expect("TLS to a plaintext port must end, not hang");
    assert!(tls.is_err());
    assert!(plain_gw.reload_tls().is_err(), "nothing to reload");
}

#[tokio::test]
async fn tcp_port_serves_tls() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let cert = ca.issue(dir.path(), "server");
    let (gw, _fake) = start(tls_config(&cert.files)).await;
    let tcp = gw.tcp_local_addr().unwrap();
    let mut device = tokio::time::timeout(
        WAIT,
        Client::connect_tcp_tls(&format!("127.0.0.1:{}", tcp.port()), ca.client_config()),
    )
    .await
    .unwrap()
    .unwrap();
    device.subscribe(&["dev.1"]).await.unwrap();
    device
        .publish("dev.1", Payload::Binary(bytes::Bytes::from_static(b"on")))
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, device.next_message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&*m.topic, "dev.1");

    // Plaintext device framing to the TLS port: refused, and the port keeps serving.
    let mut raw = TcpStream::connect(tcp).await.unwrap();
    raw.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest))
        .await
        .expect("closed, not left hanging");
    eventually("counted", || gw.metrics().tls_handshake_failures == 1).await;
    device.ping().await.unwrap();
}

#[tokio::test]
async fn https_healthz_and_metrics() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let cert = ca.issue(dir.path(), "server");
    let (gw, _fake) = start(tls_config(&cert.files)).await;
    for (path, expect) in [
        ("/healthz", "ok\n"),
        (
            "/metrics",
            "firetower_gateway_tls_handshake_failures_total 0\n",
        ),
    ] {
        let (served, mut stream) = tls_connect(gw.local_addr(), &ca).await.unwrap();
        assert_eq!(served, cert.der);
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        // The gateway closes after the answer (close_notify, then FIN).
        tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(expect), "{path}: {text}");
    }
}

#[tokio::test]
async fn hostile_handshakes_are_closed_and_counted() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let cert = ca.issue(dir.path(), "server");
    let (gw, _fake) = start(tls_config(&cert.files)).await;
    let addr = gw.local_addr();
    let hostile: [&[u8]; 4] = [
        // Plain HTTP to the TLS port.
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        // A handshake record whose ClientHello is garbage.
        &[
            0x16, 0x03, 0x01, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3,
            4,
        ],
        // A record header announcing more than TLS allows.
        &[0x16, 0x03, 0x03, 0xff, 0xff, 0x01],
        // Random bytes.
        &[0xff; 64],
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("hostile input {i} left the connection open"));
        // Whatever came back is a TLS alert at most, never an HTTP answer.
        assert!(!out.starts_with(b"HTTP"), "{i}: {out:?}");
    }
    // A client that connects and says nothing: closed at the handshake timeout (500 ms).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out))
        .await
        .expect("a silent client is dropped at the handshake timeout")
        .unwrap();
    // A client that leaves in the middle of its ClientHello.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    drop(half);
    let expected = hostile.len() as u64 + 2;
    eventually("every failed handshake counted", || {
        gw.metrics().tls_handshake_failures == expected
    })
    .await;
    assert_eq!(gw.metrics().panics, 0);
    // Still serving.
    let mut ws = connect_wss(&gw, &ca).await;
    assert_alive(&mut ws).await;
    let (status, body) = (
        gw.metrics_text().contains(&format!(
            "firetower_gateway_tls_handshake_failures_total {expected}\n"
        )),
        gw.metrics_text(),
    );
    assert!(status, "{body}");
}

/// Copy `from`'s files over the gateway's configured paths (what an operator's renewal does).
fn install(from: &Issued, to: &ClientTlsConfig) {
    std::fs::copy(&from.files.cert_file, &to.cert_file).unwrap();
    std::fs::copy(&from.files.key_file, &to.key_file).unwrap();
}

#[tokio::test]
async fn reload_changes_new_handshakes_and_keeps_open_connections() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let first = ca.issue(dir.path(), "first");
    let second = ca.issue(dir.path(), "second");
    let live = ClientTlsConfig {
        cert_file: dir.path().join("live.pem"),
        key_file: dir.path().join("live-key.pem"),
    };
    install(&first, &live);
    let (gw, _fake) = start(tls_config(&live)).await;
    assert_eq!(served_cert(&gw, &ca).await, first.der);

    let mut old = connect_wss(&gw, &ca).await;
    subscribe(&mut old, "r", 1).await;

    install(&second, &live);
    gw.reload_tls().unwrap();
    assert_eq!(served_cert(&gw, &ca).await, second.der);
    // The connection made before the reload goes on.
    round_trip(&mut old, "r", "1", 2).await;
    let mut new = connect_wss(&gw, &ca).await;
    subscribe(&mut new, "r", 1).await;
    round_trip(&mut new, "r", "2", 2).await;
    recv(&mut old).await.unwrap();

    // A certificate from another CA: loads (the gateway cannot know), clients of the old CA
    // now refuse it; the point here is that reload really swaps.
    let other_ca = TestCa::new("other CA");
    let foreign = other_ca.issue(dir.path(), "foreign");
    install(&foreign, &live);
    gw.reload_tls().unwrap();
    assert!(tls_connect(gw.local_addr(), &ca).await.is_err());
    assert_eq!(served_cert(&gw, &other_ca).await, foreign.der);
    assert_alive(&mut old).await;
}

#[tokio::test]
async fn a_failed_reload_keeps_the_certificate_and_says_why() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let good = ca.issue(dir.path(), "good");
    let other = ca.issue(dir.path(), "other");
    let live = ClientTlsConfig {
        cert_file: dir.path().join("live.pem"),
        key_file: dir.path().join("live-key.pem"),
    };
    install(&good, &live);
    let (gw, _fake) = start(tls_config(&live)).await;
    let mut open = connect_wss(&gw, &ca).await;

    type BreakIt<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, BreakIt<'_>); 4] = [
        (
            "no PEM CERTIFICATE",
            Box::new(|| std::fs::write(&live.cert_file, "garbage").unwrap()),
        ),
        (
            "does not match the certificate",
            Box::new(|| {
                std::fs::copy(&good.files.cert_file, &live.cert_file).unwrap();
                std::fs::copy(&other.files.key_file, &live.key_file).unwrap();
            }),
        ),
        (
            "no PEM private key",
            Box::new(|| std::fs::write(&live.key_file, "").unwrap()),
        ),
        (
            "cannot read",
            Box::new(|| std::fs::remove_file(&live.cert_file).unwrap()),
        ),
    ];
    for (expect, break_it) in cases {
        install(&good, &live);
        break_it();
        let err = gw.reload_tls().unwrap_err().to_string();
        assert!(err.contains(expect), "{expect:?} not in {err:?}");
        assert!(err.contains("live"), "the error names the file: {err}");
        assert_eq!(served_cert(&gw, &ca).await, good.der, "after {expect}");
    }
    assert_alive(&mut open).await;
}

#[tokio::test]
async fn start_refuses_unusable_material_naming_the_file() {
    let dir = temp_dir();
    let ca = TestCa::new("test CA");
    let a = ca.issue(dir.path(), "a");
    let b = ca.issue(dir.path(), "b");
    let missing = ClientTlsConfig {
        cert_file: PathBuf::from("/nonexistent/cert.pem"),
        key_file: a.files.key_file.clone(),
    };
    let mismatched = ClientTlsConfig {
        cert_file: a.files.cert_file.clone(),
        key_file: b.files.key_file.clone(),
    };
    let cert_as_key = ClientTlsConfig {
        cert_file: a.files.cert_file.clone(),
        key_file: a.files.cert_file.clone(),
    };
    for (files, expect) in [
        (missing, "cannot read /nonexistent/cert.pem"),
        (mismatched, "b-key.pem does not match the certificate in"),
        (cert_as_key, "a.pem: no PEM private key"),
    ] {
        let (fake, rx) = FakeUpstream::new();
        let err = Gateway::start(tls_config(&files), fake, rx)
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::ClientTls(_)), "{err:?}");
        assert!(err.to_string().contains(expect), "{expect:?} not in {err}");
    }
}

#[test]
fn client_tls_section_parses_and_refuses_unknown_keys() {
    let parsed: ClientTlsConfig =
        toml::from_str("cert_file = \"/etc/ft/cert.pem\"\nkey_file = \"/etc/ft/key.pem\"\n")
            .unwrap();
    assert_eq!(parsed.cert_file, PathBuf::from("/etc/ft/cert.pem"));
    let err = toml::from_str::<ClientTlsConfig>(
        "cert_file = \"a\"\nkey_file = \"b\"\nkey_flie = \"c\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("key_flie"), "{err}");
}
