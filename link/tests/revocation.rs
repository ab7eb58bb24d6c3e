//! Revocation on loopback: a certificate listed in the TLS directory's `crl.pem` is refused at
//! the QUIC handshake by every peer that loaded the list, other certificates of the same CA
//! still connect, and a process cannot start with its own revoked certificate.
//!
//! The holder of a revoked certificate is modelled as a process that loaded its identity
//! before the revocation (or never got the new list): that is what a thief has.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use firetower_link::certs::{self, Reason, Revocation, RevocationList, CRL_FILE};
use firetower_link::{
    client_endpoint, make_endpoint, peer_role, Role, Security, TlsError, TlsIdentity, SERVER_NAME,
};

const LOCAL: &str = "127.0.0.1:0";
/// A refusal arrives within the handshake's round trips; this only bounds a failing test.
const REFUSAL_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A fresh TLS directory with a CA and a certificate for each of `roles`.
fn tls_dir(roles: &[Role]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("firetower-crl-{}", rand_suffix()));
    certs::ensure(&dir, "test", roles).unwrap();
    dir
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

fn load(dir: &Path, role: Role) -> Security {
    Security::Mutual(Arc::new(TlsIdentity::load(dir, &role).unwrap()))
}

fn revoke(dir: &Path, role: &Role) -> Revocation {
    let serial = certs::serial_of_role(dir, role).unwrap();
    certs::revoke(dir, &serial, Some(Reason::KeyCompromise)).unwrap()
}

/// Accepts connections on `server`, reporting for each the peer's role or the handshake error.
fn spawn_acceptor(
    server: quinn::Endpoint,
) -> tokio::sync::mpsc::UnboundedReceiver<Result<Role, String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let result = match incoming.await {
                Ok(conn) => {
                    let role = peer_role(&conn).map_err(|e| e.to_string());
                    // Keep the connection open for the client to use.
                    tokio::spawn(async move { conn.closed().await });
                    role
                }
                Err(e) => Err(e.to_string()),
            };
            if tx.send(result).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn a_revoked_gateway_is_refused_at_the_handshake_and_another_still_connects() {
    let dir = tls_dir(&[Role::Manager(1), Role::Gateway(1), Role::Gateway(2)]);
    // The thief's copy, loaded while the certificate was still good.
    let stolen = load(&dir, Role::Gateway(1));
    assert_eq!(
        revoke(&dir, &Role::Gateway(1)),
        Revocation::Added { number: 1 }
    );

    let server = make_endpoint(LOCAL.parse().unwrap(), &load(&dir, Role::Manager(1))).unwrap();
    let addr: SocketAddr = server.local_addr().unwrap();
    let mut accepted = spawn_acceptor(server);

    let thief = client_endpoint(LOCAL.parse().unwrap(), &stolen).unwrap();
    // TLS 1.3: the client may finish its side before the server's verdict arrives; the
    // server never admits it, and the connection dies with the server's alert.
    if let Ok(conn) = thief.connect(addr, SERVER_NAME).unwrap().await {
        let closed = tokio::time::timeout(REFUSAL_WITHIN, conn.accept_uni())
            .await
            .expect("the server kept the revoked gateway's connection open")
            .unwrap_err();
        assert!(
            closed.to_string().to_lowercase().contains("revoked")
                || closed.to_string().contains("certificate"),
            "{closed}"
        );
    }
    let refused = accepted.recv().await.unwrap().unwrap_err();
    assert!(refused.to_lowercase().contains("revoked"), "{refused}");

    let honest = client_endpoint(LOCAL.parse().unwrap(), &load(&dir, Role::Gateway(2))).unwrap();
    let conn = honest.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    assert_eq!(peer_role(&conn).unwrap(), Role::Manager(1));
    assert_eq!(accepted.recv().await.unwrap(), Ok(Role::Gateway(2)));
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_gateway_refuses_a_revoked_manager() {
    let dir = tls_dir(&[Role::Manager(1), Role::Manager(2), Role::Gateway(1)]);
    let stolen = load(&dir, Role::Manager(1));
    revoke(&dir, &Role::Manager(1));

    let rogue = make_endpoint(LOCAL.parse().unwrap(), &stolen).unwrap();
    let rogue_addr = rogue.local_addr().unwrap();
    let _rogue_accepts = spawn_acceptor(rogue);
    let good = make_endpoint(LOCAL.parse().unwrap(), &load(&dir, Role::Manager(2))).unwrap();
    let good_addr = good.local_addr().unwrap();
    let _good_accepts = spawn_acceptor(good);

    let gateway = client_endpoint(LOCAL.parse().unwrap(), &load(&dir, Role::Gateway(1))).unwrap();
    let error = gateway
        .connect(rogue_addr, SERVER_NAME)
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("revoked"),
        "{error}"
    );
    let conn = gateway
        .connect(good_addr, SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(peer_role(&conn).unwrap(), Role::Manager(2));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_process_with_a_revoked_certificate_refuses_to_start() {
    let dir = tls_dir(&[Role::Gateway(3), Role::Gateway(4)]);
    revoke(&dir, &Role::Gateway(3));
    let err = TlsIdentity::load(&dir, &Role::Gateway(3)).unwrap_err();
    assert!(matches!(err, TlsError::Revoked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("gateway-3.pem") && message.contains(CRL_FILE),
        "{message}"
    );
    // The list does not affect anyone else.
    TlsIdentity::load(&dir, &Role::Gateway(4)).unwrap();
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn crl_numbers_grow_and_revoking_twice_changes_nothing() {
    let roles = [Role::Gateway(1), Role::Gateway(2), Role::Manager(1)];
    let dir = tls_dir(&roles);
    assert_eq!(RevocationList::load(&dir).unwrap(), None);
    assert_eq!(revoke(&dir, &roles[0]), Revocation::Added { number: 1 });
    let first = fs::read(dir.join(CRL_FILE)).unwrap();
    assert_eq!(
        revoke(&dir, &roles[0]),
        Revocation::AlreadyRevoked { number: 1 }
    );
    assert_eq!(
        fs::read(dir.join(CRL_FILE)).unwrap(),
        first,
        "re-revoking rewrote the list"
    );
    assert_eq!(revoke(&dir, &roles[1]), Revocation::Added { number: 2 });
    assert_eq!(revoke(&dir, &roles[2]), Revocation::Added { number: 3 });
    let list = RevocationList::load(&dir).unwrap().unwrap();
    assert_eq!(list.number, 3);
    let serials: Vec<_> = roles
        .iter()
        .map(|role| certs::serial_of_role(&dir, role).unwrap())
        .collect();
    let listed: Vec<_> = list.revoked.iter().map(|e| e.serial.clone()).collect();
    assert_eq!(listed, serials);
    assert!(list
        .revoked
        .iter()
        .all(|e| e.reason == Some(Reason::KeyCompromise)));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_crl_is_a_clear_error_naming_the_file() {
    let dir = tls_dir(&[Role::Gateway(1)]);
    revoke(&dir, &Role::Gateway(1));
    let crl_path = dir.join(CRL_FILE);
    let good = fs::read_to_string(&crl_path).unwrap();
    let cases = [
        "garbage".to_owned(),
        String::new(),
        // A block of the right kind whose content is not a CRL.
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_owned(),
        // A flipped byte inside the signed content.
        flip_a_byte(&good),
    ];
    for damaged in cases {
        fs::write(&crl_path, &damaged).unwrap();
        let err = TlsIdentity::load(&dir, &Role::Gateway(1)).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TlsError::Crl { .. })
                && message.contains(&crl_path.display().to_string()),
            "{damaged:?}: {message}"
        );
        let err = certs::revoke(
            &dir,
            &certs::serial_of_role(&dir, &Role::Gateway(1)).unwrap(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("crl.pem"), "{err}");
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_crl_of_another_ca_is_refused() {
    let ours = tls_dir(&[Role::Gateway(1)]);
    let theirs = tls_dir(&[Role::Gateway(1)]);
    revoke(&theirs, &Role::Gateway(1));
    fs::copy(theirs.join(CRL_FILE), ours.join(CRL_FILE)).unwrap();
    // Both CAs have the same name, so only the signature tells the lists apart.
    let err = TlsIdentity::load(&ours, &Role::Gateway(1)).unwrap_err();
    assert!(matches!(err, TlsError::Crl { .. }), "{err:?}");
    assert!(RevocationList::load(&ours).is_err());
    let _ = fs::remove_dir_all(&ours);
    let _ = fs::remove_dir_all(&theirs);
}

/// The PEM text of `pem` with one byte of its DER body changed.
fn flip_a_byte(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateRevocationListDer;
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut bytes = der.to_vec();
    // Inside the issuer name, well past the headers: still parses, signature no longer holds.
    bytes[40] ^= 0x01;
    let body = base64(&bytes);
    format!("-----BEGIN X509 CRL-----\n{body}\n-----END X509 CRL-----\n")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}
