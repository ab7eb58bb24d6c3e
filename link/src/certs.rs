//! The cluster's certificate authority and the certificates it issues (`firetower certs`).
//!
//! A TLS directory holds, by convention (`--tls-dir DIR`):
//!
//! ```text
//!   DIR/ca.pem                 the cluster CA certificate: every process trusts exactly this
//!   DIR/ca-key.pem             the CA's private key (only where certificates are issued)
//!   DIR/<role>-<id>.pem        a certificate: manager-3.pem, gateway-7.pem, operator-admin.pem
//!   DIR/<role>-<id>-key.pem    its private key (mode 0600)
//!   DIR/crl.pem                the CA's revocation list (`certs revoke`; absent: none revoked)
//! ```
//!
//! Keys are ECDSA P-256. The role is a URI subject alternative name (see [`crate::identity`]).
//! Manager certificates are valid for TLS server and client authentication and name
//! [`SERVER_NAME`], `localhost` and the `--host` names and addresses given;
//! gateway and operator certificates are for client authentication only, so none of them can
//! pose as a manager.
//!
//! Revocation ([`revoke`]): `crl.pem` is a CRL signed by the CA. Each revocation re-signs the
//! whole list with a CRL number one higher than the last, so a newer list is told from an
//! older one; its next update is the CA's expiry, as the list is only ever replaced by hand.
//! Processes read it once, at start ([`crate::tls::TlsIdentity::load`]).
//!
//! ```text
//!   certs revoke --gateway 7 ─▶ serial of gateway-7.pem ─▶ crl.pem (number n) + serial
//!                                                          └─▶ crl.pem (number n+1), CA-signed
//! ```

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::fmt;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use crate::identity::{Role, SERVER_NAME};

/// File name of the CA certificate in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a TLS directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the certificate revocation list in a TLS directory.
pub const CRL_FILE: &str = "crl.pem";
/// Longest serial number a certificate may have (RFC 5280, section 4.1.2.2).
const MAX_SERIAL_BYTES: usize = 20;
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
    /// A certificate file cannot be read as an X.509 certificate.
    #[error("{}: not a usable certificate: {detail}", .path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `crl.pem` is damaged, or not a list signed by this directory's CA.
    #[error("{}: not a usable revocation list: {detail} (restore it from a copy; removing it un-revokes every certificate)", .path.display())]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The certificate to revoke was issued by another CA than the directory's.
    #[error("{} was not issued by the CA in {}: revoking it here would change nothing", .path.display(), .ca.display())]
    ForeignCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The CA file.
        ca: PathBuf,
    },
    /// A `--serial` that is not a certificate serial number in hex.
    #[error("{0:?} is not a serial number (1 to 20 bytes in hex, as `certs list` prints them)")]
    BadSerial(String),
    /// A `--reason` that is not one of the CRL's reason codes.
    #[error("{reason:?} is not a revocation reason; use one of: {}", Reason::NAMES.join(", "))]
    BadReason {
        /// What was given.
        reason: String,
    },
    /// The CA has expired, so no list it signs can be trusted.
    #[error("the CA in {} expired at {expiry}: a new CA is needed (`certs init` in a new directory)", .path.display())]
    CaExpired {
        /// The CA file.
        path: PathBuf,
        /// When it expired.
        expiry: OffsetDateTime,
    },
    /// The CRL number cannot grow any further.
    #[error("{}: the CRL number cannot grow past {}", .0.display(), u64::MAX)]
    CrlNumberExhausted(PathBuf),
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
    /// Sign `list` as a CRL: issued now, next update at the CA's expiry (the list is replaced
    /// by hand, never fetched, so it must not go stale while the CA lives). `ca_path` only
    /// names the CA in errors.
    pub fn sign_crl(&self, list: &RevocationList, ca_path: &Path) -> Result<String, CertsError> {
        let ca = CaCertificate::from_pem(&self.cert_pem, ca_path)?;
        let bad = |detail: String| CertsError::BadCa {
            path: ca_path.to_owned(),
            detail,
        };
        let (_, cert) =
            x509_parser::parse_x509_certificate(&ca.der).map_err(|e| bad(e.to_string()))?;
        let expiry = cert.validity().not_after.to_datetime();
        let now = OffsetDateTime::now_utc();
        if expiry <= now {
            return Err(CertsError::CaExpired {
                path: ca_path.to_owned(),
                expiry,
            });
        }
        // The list's authority key identifier must be the CA's subject key identifier.
        let key_identifier_method = cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: expiry,
            crl_number: SerialNumber::from_slice(&list.number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: list
                .revoked
                .iter()
                .map(|entry| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(entry.serial.as_bytes()),
                    revocation_time: entry.revoked_at,
                    reason_code: entry.reason.map(Reason::rcgen),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
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

/// A certificate's serial number as the CRL holds it and `certs list` prints it: hex, most
/// significant byte first, without leading zero bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// The serial number whose big-endian bytes (a DER integer's content) are `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Serial {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Serial(bytes[start..].to_vec())
    }

    /// The big-endian bytes, without leading zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for Serial {
    type Err = CertsError;

    /// Hex digits, in either case, optionally separated by `:` (as other tools print serials).
    fn from_str(text: &str) -> Result<Serial, CertsError> {
        let bad = || CertsError::BadSerial(text.to_owned());
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() || digits.len() > 2 * MAX_SERIAL_BYTES + 2 {
            return Err(bad());
        }
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        let bytes = (0..padded.len())
            .step_by(2)
            .map(|i| {
                padded
                    .get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        let serial = Serial::from_bytes(&bytes);
        if serial.0.is_empty() || serial.0.len() > MAX_SERIAL_BYTES {
            return Err(bad());
        }
        Ok(serial)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("00");
        }
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// Why a certificate was revoked: the reason codes of RFC 5280, section 5.3.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The certificate's private key was exposed (a stolen host, a leaked file).
    KeyCompromise,
    /// The CA's key was exposed.
    CaCompromise,
    /// The holder's name or role changed.
    AffiliationChanged,
    /// A new certificate replaces this one.
    Superseded,
    /// The holder is gone for good (a decommissioned gateway or manager).
    CessationOfOperation,
    /// Put on hold.
    CertificateHold,
    /// Taken off a list (delta lists only; kept so that any code reads back).
    RemoveFromCrl,
    /// The holder may no longer do what the certificate allows.
    PrivilegeWithdrawn,
    /// An attribute authority's key was exposed.
    AaCompromise,
}

impl Reason {
    /// The names `--reason` takes, in the order of their codes.
    pub const NAMES: [&'static str; 10] = [
        "unspecified",
        "key-compromise",
        "ca-compromise",
        "affiliation-changed",
        "superseded",
        "cessation-of-operation",
        "certificate-hold",
        "remove-from-crl",
        "privilege-withdrawn",
        "aa-compromise",
    ];
    const ALL: [Reason; 10] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::CertificateHold,
        Reason::RemoveFromCrl,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];

    /// The reason with this code (7 is unassigned).
    pub fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Its code in a CRL entry.
    pub fn code(self) -> u8 {
        self.rcgen() as u8
    }

    /// Its `--reason` name.
    pub fn name(self) -> &'static str {
        let index = Reason::ALL.iter().position(|r| *r == self).unwrap_or(0);
        Reason::NAMES[index]
    }

    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::CertificateHold => RevocationReason::CertificateHold,
            Reason::RemoveFromCrl => RevocationReason::RemoveFromCrl,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
            Reason::AaCompromise => RevocationReason::AaCompromise,
        }
    }
}

impl FromStr for Reason {
    type Err = CertsError;

    fn from_str(text: &str) -> Result<Reason, CertsError> {
        let wanted = text.trim().to_ascii_lowercase().replace('_', "-");
        Reason::NAMES
            .iter()
            .position(|name| *name == wanted)
            .map(|index| Reason::ALL[index])
            .ok_or_else(|| CertsError::BadReason {
                reason: text.to_owned(),
            })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of a revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// The revoked certificate's serial number.
    pub serial: Serial,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why, if a reason was given.
    pub reason: Option<Reason>,
}

/// The content of `crl.pem`, checked against the CA that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// The CRL number: one higher at every change, so the newest list is the highest.
    pub number: u64,
    /// The revoked certificates, oldest first.
    pub revoked: Vec<RevokedCertificate>,
}

impl RevocationList {
    /// The list in `dir/crl.pem`, its signature checked against `dir/ca.pem`; `None` when the
    /// directory has no list (nothing is revoked).
    pub fn load(dir: &Path) -> Result<Option<RevocationList>, CertsError> {
        let crl_path = dir.join(CRL_FILE);
        if !crl_path.exists() {
            return Ok(None);
        }
        let ca = CaCertificate::load(&dir.join(CA_CERT_FILE))?;
        let pem = read(&crl_path)?;
        RevocationList::parse(&pem, &ca, &crl_path).map(Some)
    }

    /// The entry for `serial`, if it is revoked.
    pub fn find(&self, serial: &Serial) -> Option<&RevokedCertificate> {
        self.revoked.iter().find(|entry| &entry.serial == serial)
    }

    fn parse(pem: &str, ca: &CaCertificate, path: &Path) -> Result<RevocationList, CertsError> {
        let bad = |detail: String| CertsError::BadCrl {
            path: path.to_owned(),
            detail,
        };
        let der = single_crl(pem.as_bytes()).map_err(bad)?;
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| bad(e.to_string()))?;
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der)
            .map_err(|e| bad(format!("the CA certificate cannot be parsed: {e}")))?;
        crl.verify_signature(ca_cert.public_key())
            .map_err(|e| bad(format!("not signed by the CA in {CA_CERT_FILE} ({e})")))?;
        let number = crl
            .crl_number()
            .ok_or_else(|| bad("it has no CRL number".into()))?;
        let digits = number.to_u64_digits();
        let number = match digits.as_slice() {
            [] => 0,
            [n] => *n,
            _ => return Err(bad("its CRL number is larger than 64 bits".into())),
        };
        let revoked = crl
            .iter_revoked_certificates()
            .map(|entry| RevokedCertificate {
                serial: Serial::from_bytes(entry.raw_serial()),
                revoked_at: entry.revocation_date.to_datetime(),
                reason: entry
                    .reason_code()
                    .and_then(|(_, code)| Reason::from_code(code.0)),
            })
            .collect();
        Ok(RevocationList { number, revoked })
    }
}

/// What [`revoke`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The serial was added; `crl.pem` now has this CRL number.
    Added {
        /// The new list's number.
        number: u64,
    },
    /// The serial was already in the list, which was left as it was.
    AlreadyRevoked {
        /// The unchanged list's number.
        number: u64,
    },
}

/// `firetower certs revoke`: add `serial` to `dir/crl.pem`, re-signed by the CA of `dir` with
/// the next CRL number (the first list is number 1). Revoking a serial that is already listed
/// changes nothing.
pub fn revoke(
    dir: &Path,
    serial: &Serial,
    reason: Option<Reason>,
) -> Result<Revocation, CertsError> {
    let ca = CertificateAuthority::load(dir)?;
    let crl_path = dir.join(CRL_FILE);
    let mut list = RevocationList::load(dir)?.unwrap_or(RevocationList {
        number: 0,
        revoked: Vec::new(),
    });
    if list.find(serial).is_some() {
        return Ok(Revocation::AlreadyRevoked {
            number: list.number,
        });
    }
    list.number = list
        .number
        .checked_add(1)
        .ok_or_else(|| CertsError::CrlNumberExhausted(crl_path.clone()))?;
    list.revoked.push(RevokedCertificate {
        serial: serial.clone(),
        revoked_at: OffsetDateTime::now_utc(),
        reason,
    });
    let pem = ca.sign_crl(&list, &dir.join(CA_CERT_FILE))?;
    write_replace(&crl_path, pem.as_bytes(), 0o644)?;
    Ok(Revocation::Added {
        number: list.number,
    })
}

/// The serial number of `role`'s certificate in `dir`, after checking that the CA of `dir`
/// issued it.
pub fn serial_of_role(dir: &Path, role: &Role) -> Result<Serial, CertsError> {
    let (cert_path, _) = cert_paths(dir, role);
    let ca_path = dir.join(CA_CERT_FILE);
    let ca = CaCertificate::load(&ca_path)?;
    let info = CertificateInfo::read(&cert_path, &ca, None)?;
    if !info.issued_by_ca {
        return Err(CertsError::ForeignCertificate {
            path: cert_path,
            ca: ca_path,
        });
    }
    Ok(info.serial)
}

/// What `certs list` shows of one certificate file.
#[derive(Clone, Debug)]
pub struct CertificateInfo {
    /// The file.
    pub file: PathBuf,
    /// The role it carries; `None` for the CA or a certificate without one.
    pub role: Option<Role>,
    /// Whether this is the CA certificate itself.
    pub is_ca: bool,
    /// Whether the directory's CA signed it (true for the CA itself).
    pub issued_by_ca: bool,
    /// Its serial number.
    pub serial: Serial,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// Its entry in `crl.pem`, if it is revoked.
    pub revoked: Option<RevokedCertificate>,
}

impl CertificateInfo {
    fn read(
        path: &Path,
        ca: &CaCertificate,
        list: Option<&RevocationList>,
    ) -> Result<CertificateInfo, CertsError> {
        let bad = |detail: String| CertsError::BadCertificate {
            path: path.to_owned(),
            detail,
        };
        let pem = read(path)?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad(format!("no PEM certificate: {e}")))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der)
            .map_err(|e| bad(format!("the CA certificate cannot be parsed: {e}")))?;
        let is_ca = der.as_ref() == ca.der.as_slice();
        let serial = Serial::from_bytes(cert.raw_serial());
        // The CA's own serial is never in its list; only what it issued is.
        let revoked = match (is_ca, list) {
            (false, Some(list)) => list.find(&serial).cloned(),
            _ => None,
        };
        Ok(CertificateInfo {
            file: path.to_owned(),
            role: if is_ca {
                None
            } else {
                Role::from_certificate(&der).ok()
            },
            is_ca,
            issued_by_ca: is_ca || cert.verify_signature(Some(ca_cert.public_key())).is_ok(),
            serial,
            not_after: cert.validity().not_after.to_datetime(),
            revoked,
        })
    }
}

/// `firetower certs list`: the revocation list of `dir`, if any, and every certificate file
/// in it (`*.pem` but keys and `crl.pem`), the CA first, then by file name.
pub fn list(dir: &Path) -> Result<(Option<RevocationList>, Vec<CertificateInfo>), CertsError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca = CaCertificate::load(&ca_path)?;
    let revocations = RevocationList::load(dir)?;
    let entries = fs::read_dir(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CertsError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pem")
            && !name.ends_with("-key.pem")
            && name != CRL_FILE
            && name != CA_KEY_FILE
            && name != CA_CERT_FILE
        {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut infos = vec![CertificateInfo::read(&ca_path, &ca, None)?];
    for file in files {
        infos.push(CertificateInfo::read(&file, &ca, revocations.as_ref())?);
    }
    Ok((revocations, infos))
}

/// The CA certificate of a TLS directory, without its key (enough to check a list).
struct CaCertificate {
    der: Vec<u8>,
}

impl CaCertificate {
    fn load(path: &Path) -> Result<CaCertificate, CertsError> {
        let pem = read(path)?;
        CaCertificate::from_pem(&pem, path)
    }

    fn from_pem(pem: &str, path: &Path) -> Result<CaCertificate, CertsError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertsError::BadCa {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(CaCertificate { der: der.to_vec() })
    }
}

/// The one CRL in PEM text.
pub(crate) fn single_crl(pem: &[u8]) -> Result<CertificateRevocationListDer<'static>, String> {
    let mut crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("damaged PEM: {e}"))?;
    match crls.len() {
        0 => Err("no X509 CRL block in the file".into()),
        1 => Ok(crls.remove(0)),
        n => Err(format!("{n} CRLs in one file; expected one")),
    }
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

/// Replace `path` with `contents` atomically: readers see the old file or the new one, never
/// half of it.
fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover from an interrupted run is ours to replace.
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| CertsError::Io {
        path: path.to_owned(),
        source,
    })?;
    if let Some(parent) = path.parent() {
        // Make the rename durable; a directory that cannot be opened leaves it to the kernel.
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
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

    #[test]
    fn serials_parse_as_list_prints_them() {
        let serial: Serial = "00:7F:0a".parse().unwrap();
        assert_eq!(serial.as_bytes(), &[0x7f, 0x0a]);
        assert_eq!(serial.to_string(), "7f0a");
        assert_eq!("abc".parse::<Serial>().unwrap().as_bytes(), &[0x0a, 0xbc]);
        assert_eq!(serial.to_string().parse::<Serial>().unwrap(), serial);
        for bad in ["", ":", "00", "xyz", "12 34", &"ab".repeat(21), "é1"] {
            assert!(
                matches!(bad.parse::<Serial>(), Err(CertsError::BadSerial(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reasons_round_trip_through_names_and_codes() {
        for (i, name) in Reason::NAMES.iter().enumerate() {
            let reason: Reason = name.parse().unwrap();
            assert_eq!(reason.name(), *name);
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
            assert_eq!(Reason::ALL[i], reason);
        }
        assert_eq!(
            "Key_Compromise".parse::<Reason>().unwrap(),
            Reason::KeyCompromise
        );
        assert_eq!(Reason::from_code(7), None);
        let err = "stolen".parse::<Reason>().unwrap_err().to_string();
        assert!(err.contains("key-compromise"), "{err}");
    }

    #[test]
    fn revoking_a_certificate_of_another_ca_is_refused() {
        let dir = tempdir();
        init(&dir, "ours").unwrap();
        let other = CertificateAuthority::generate("theirs").unwrap();
        other
            .issue(&Role::Gateway(5), &[], 1)
            .unwrap()
            .write(&dir)
            .unwrap();
        assert!(matches!(
            serial_of_role(&dir, &Role::Gateway(5)),
            Err(CertsError::ForeignCertificate { .. })
        ));
        let err = serial_of_role(&dir, &Role::Gateway(6))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway-6.pem"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn list_shows_roles_serials_and_revocations() {
        let dir = tempdir();
        ensure(&dir, "x", &[Role::Gateway(1), Role::Manager(2)]).unwrap();
        let gateway = serial_of_role(&dir, &Role::Gateway(1)).unwrap();
        revoke(&dir, &gateway, Some(Reason::Superseded)).unwrap();
        let (crl, infos) = list(&dir).unwrap();
        assert_eq!(crl.unwrap().number, 1);
        let roles: Vec<_> = infos.iter().map(|i| (i.is_ca, i.role.clone())).collect();
        assert_eq!(
            roles,
            vec![
                (true, None),
                (false, Some(Role::Gateway(1))),
                (false, Some(Role::Manager(2))),
                (false, Some(Role::Operator(DEFAULT_OPERATOR.into()))),
            ]
        );
        let revoked: Vec<_> = infos.iter().map(|i| i.revoked.is_some()).collect();
        assert_eq!(revoked, vec![false, true, false, false]);
        assert_eq!(infos[1].serial, gateway);
        assert_eq!(
            infos[1].revoked.as_ref().unwrap().reason,
            Some(Reason::Superseded)
        );
        assert!(infos.iter().all(|i| i.issued_by_ca));
        assert!(infos[0].not_after > infos[1].not_after);
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
