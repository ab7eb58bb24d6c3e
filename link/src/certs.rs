//! The cluster's certificate authority and the certificates it issues (`firetower certs`).
//!
//! A TLS directory holds, by convention (`--tls-dir DIR`):
//!
//! ```text
//!   DIR/ca.pem                 the cluster CA certificate: every process trusts exactly this
//!   DIR/ca-key.pem             the CA's private key (only where certificates are issued)
//!   DIR/<role>-<id>.pem        a certificate: manager-3.pem, gateway-7.pem, operator-admin.pem
//!   DIR/<role>-<id>-key.pem    its private key (mode 0600)
//! ```
//!
//! Keys are ECDSA P-256. The role is a URI subject alternative name (see [`crate::identity`]).
//! Manager certificates are valid for TLS server and client authentication and name
//! [`SERVER_NAME`](crate::SERVER_NAME), `localhost` and the `--host` names and addresses given;
//! gateway and operator certificates are for client authentication only, so none of them can
//! pose as a manager.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::identity::{Role, SERVER_NAME};

/// File name of the CA certificate in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a TLS directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Validity of a new CA, in days (ten years: rotating a CA means re-issuing everything).
pub const CA_DAYS: u32 = 3650;
/// Default validity of an issued certificate, in days.
pub const DEFAULT_DAYS: u32 = 365;
/// The operator certificate `certs init` issues and `cluster` presents by default.
pub const DEFAULT_OPERATOR: &str = "admin";
/// Certificates are dated this far back, so a peer whose clock is a little behind accepts a
/// certificate issued a moment ago.
const CLOCK_SKEW: time::Duration = time::Duration::hours(1);

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file that `certs` would create exists already; nothing was overwritten.
    #[error("{} exists already; refusing to overwrite it (remove it first to replace it)", .0.display())]
    Exists(PathBuf),
    /// The CA certificate or key is not what `certs init` wrote.
    #[error("{}: not a usable CA certificate or key: {detail}", .path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rcgen refused to make the certificate (an invalid host name, say).
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A `--host` is neither an IP address nor a DNS name.
    #[error("{0:?} is not a host name or IP address")]
    BadHost(String),
    /// `--days` of 0 or too many.
    #[error("validity of {0} days is out of range (1 to {CA_DAYS})")]
    BadDays(u32),
}

/// The cluster CA, loaded with its private key, able to issue certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Issued {
    /// The role written in the certificate.
    pub role: Role,
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA with a fresh key. `label` goes into its common name (the cluster's name, say).
    pub fn generate(label: &str) -> Result<CertificateAuthority, CertsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Firetower cluster CA {label}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Firetower");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_DAYS)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a TLS directory (`ca.pem` and `ca-key.pem`).
    pub fn load(dir: &Path) -> Result<CertificateAuthority, CertsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertsError::BadCa {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertsError::BadCa {
            path: cert_path,
            detail: e.to_string(),
        })?;
        Ok(CertificateAuthority { cert_pem, issuer })
    }

    /// The CA certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Write `ca.pem` and `ca-key.pem` (0600) into `dir`, creating it; refuses to overwrite.
    pub fn write(&self, dir: &Path) -> Result<(), CertsError> {
        create_dir(dir)?;
        write_new(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        write_new(
            &dir.join(CA_KEY_FILE),
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )
    }

    /// Issue a certificate for `role`, valid `days` days from now. `hosts` (IP addresses or DNS
    /// names) are added to a manager certificate's names, for clients that check host names.
    pub fn issue(&self, role: &Role, hosts: &[String], days: u32) -> Result<Issued, CertsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, role.file_stem());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Firetower");
        let uri = role.uri().try_into()?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role.is_server() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned()];
            names.extend(hosts.iter().cloned());
            names.dedup();
            for name in names {
                params.subject_alt_names.push(host_san(&name)?);
            }
        }
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days)?;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            role: role.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Write `<stem>.pem` and `<stem>-key.pem` (0600) into `dir`; refuses to overwrite.
    /// Returns the certificate's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, CertsError> {
        create_dir(dir)?;
        let (cert_path, key_path) = cert_paths(dir, &self.role);
        // Check both first, so that a refusal leaves neither file half-written.
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(CertsError::Exists(path.clone()));
            }
        }
        write_new(&cert_path, self.cert_pem.as_bytes(), 0o644)?;
        write_new(&key_path, self.key_pem.as_bytes(), 0o600)?;
        Ok(cert_path)
    }
}

/// Where `role`'s certificate and key live in the TLS directory `dir`.
pub fn cert_paths(dir: &Path, role: &Role) -> (PathBuf, PathBuf) {
    let stem = role.file_stem();
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    )
}

/// `firetower certs init`: a new CA in `dir` and the default operator certificate
/// (`operator-admin`). Refuses if `dir` already has a CA.
pub fn init(dir: &Path, label: &str) -> Result<CertificateAuthority, CertsError> {
    let ca_path = dir.join(CA_CERT_FILE);
    if ca_path.exists() {
        return Err(CertsError::Exists(ca_path));
    }
    let ca = CertificateAuthority::generate(label)?;
    ca.write(dir)?;
    ca.issue(
        &Role::Operator(DEFAULT_OPERATOR.to_owned()),
        &[],
        DEFAULT_DAYS,
    )?
    .write(dir)?;
    Ok(ca)
}

/// A TLS directory for tests and `firetower dev`: a CA and a certificate for each of `roles`,
/// created in `dir` if it has no CA yet, completed with the missing certificates otherwise.
pub fn ensure(dir: &Path, label: &str, roles: &[Role]) -> Result<(), CertsError> {
    let ca = if dir.join(CA_CERT_FILE).exists() {
        CertificateAuthority::load(dir)?
    } else {
        init(dir, label)?
    };
    for role in roles {
        if !cert_paths(dir, role).0.exists() {
            ca.issue(role, &[], DEFAULT_DAYS)?.write(dir)?;
        }
    }
    Ok(())
}

fn host_san(name: &str) -> Result<SanType, CertsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    if !valid {
        return Err(CertsError::BadHost(name.to_owned()));
    }
    Ok(SanType::DnsName(name.to_owned().try_into()?))
}

fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), CertsError> {
    if days == 0 || days > CA_DAYS {
        return Err(CertsError::BadDays(days));
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive DER integer: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Create `path` with `mode`, failing if it exists (no window where a key is world-readable).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CertsError::Exists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_role() {
        let ca = CertificateAuthority::generate("test").unwrap();
        for role in [
            Role::Manager(2),
            Role::Gateway(9),
            Role::Operator("admin".into()),
        ] {
            let issued = ca.issue(&role, &["10.0.0.1".into()], 30).unwrap();
            let der = rustls_pemfile_like(&issued.cert_pem);
            assert_eq!(Role::from_certificate(&der).unwrap(), role);
        }
    }

    #[test]
    fn init_refuses_to_overwrite_and_ca_reloads() {
        let dir = tempdir();
        init(&dir, "x").unwrap();
        assert!(matches!(init(&dir, "x"), Err(CertsError::Exists(_))));
        let ca = CertificateAuthority::load(&dir).unwrap();
        let issued = ca.issue(&Role::Gateway(1), &[], 1).unwrap();
        issued.write(&dir).unwrap();
        assert!(matches!(issued.write(&dir), Err(CertsError::Exists(_))));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("gateway-1-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.join("operator-admin.pem").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_hosts_and_days_are_refused() {
        let ca = CertificateAuthority::generate("t").unwrap();
        assert!(matches!(
            ca.issue(&Role::Manager(1), &["a b".into()], 1),
            Err(CertsError::BadHost(_))
        ));
        assert!(matches!(
            ca.issue(&Role::Manager(1), &[], 0),
            Err(CertsError::BadDays(0))
        ));
    }

    #[test]
    fn a_damaged_ca_is_a_clear_error() {
        let dir = tempdir();
        fs::write(dir.join(CA_CERT_FILE), "garbage").unwrap();
        fs::write(dir.join(CA_KEY_FILE), "garbage").unwrap();
        let err = CertificateAuthority::load(&dir).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("firetower-certs-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rustls_pemfile_like(pem: &str) -> Vec<u8> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
