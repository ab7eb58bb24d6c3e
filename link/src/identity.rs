//! Who a peer is: the [`Role`] written into its certificate by `firetower certs issue`.
//!
//! Every certificate the cluster CA issues carries exactly one subject alternative name of the
//! form `urn:firetower:<role>:<id>`:
//!
//! | certificate | URI SAN | may |
//! | --- | --- | --- |
//! | manager 3 | `urn:firetower:manager:3` | send Raft RPCs for groups whose membership holds 3, make the internal admin calls, serve both ports |
//! | gateway 7 | `urn:firetower:gateway:7` | use the link as gateway 7 only, read `Describe` / `Members` |
//! | operator `admin` | `urn:firetower:operator:admin` | call every admin RPC |
//!
//! The role is read from the certificate only after rustls has verified the chain against the
//! cluster CA, so it is as trustworthy as the CA's key. A name, an IP address or the cluster id
//! a peer claims proves nothing; the certificate does.

use std::fmt;
use std::str::FromStr;

/// Server name clients put in the TLS handshake; every manager certificate names it (and
/// every endpoint's self-signed certificate in insecure mode).
pub const SERVER_NAME: &str = "firetower";

/// Prefix of the URI subject alternative name that carries a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:firetower:";

/// Longest operator name, so that names fit file names and log lines.
const MAX_OPERATOR_NAME: usize = 64;

/// What a certificate allows its holder to be.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A topic manager with this id.
    Manager(u64),
    /// A gateway with this id.
    Gateway(u64),
    /// A person or tool administering the cluster, by name (`admin` for `operator-admin`).
    Operator(String),
}

/// Why a certificate or a role name does not name a Firetower role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The peer presented no certificate (it connected without client authentication).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate is not valid DER X.509.
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The certificate carries no `urn:firetower:` name: it was not issued by `firetower certs`.
    #[error(
        "the certificate names no Firetower role (no urn:firetower: subject alternative name)"
    )]
    NoRole,
    /// The certificate carries more than one role.
    #[error("the certificate names more than one Firetower role")]
    SeveralRoles,
    /// The role name is not one of `manager:<id>`, `gateway:<id>`, `operator:<name>`.
    #[error(
        "{0:?} is not a Firetower role (expected manager:<id>, gateway:<id> or operator:<name>)"
    )]
    BadRole(String),
}

impl Role {
    /// The URI subject alternative name carrying this role.
    pub fn uri(&self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.spec())
    }

    /// `manager:3`, `gateway:7` or `operator:admin`: the part of the URI after the prefix.
    pub fn spec(&self) -> String {
        match self {
            Role::Manager(id) => format!("manager:{id}"),
            Role::Gateway(id) => format!("gateway:{id}"),
            Role::Operator(name) => format!("operator:{name}"),
        }
    }

    /// File name stem of this role's certificate in a TLS directory: `manager-3` for
    /// `manager-3.pem` and `manager-3-key.pem`.
    pub fn file_stem(&self) -> String {
        match self {
            Role::Manager(id) => format!("manager-{id}"),
            Role::Gateway(id) => format!("gateway-{id}"),
            Role::Operator(name) => format!("operator-{name}"),
        }
    }

    /// A manager certificate also serves (QUIC and admin gRPC); the others are clients only.
    pub fn is_server(&self) -> bool {
        matches!(self, Role::Manager(_))
    }

    /// The role named by a URI subject alternative name, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Result<Role, IdentityError>> {
        uri.strip_prefix(ROLE_URI_PREFIX).map(Role::from_str)
    }

    /// The role a DER certificate carries. The caller must have verified the certificate
    /// against the cluster CA first: this only reads it.
    pub fn from_certificate(der: &[u8]) -> Result<Role, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?
            .ok_or(IdentityError::NoRole)?;
        let mut found = None;
        for name in &names.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(role) = Role::from_uri(uri) {
                    if found.is_some() {
                        return Err(IdentityError::SeveralRoles);
                    }
                    found = Some(role?);
                }
            }
        }
        found.ok_or(IdentityError::NoRole)
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    /// Parses `manager:<id>`, `gateway:<id>` or `operator:<name>` (ids are non-zero).
    fn from_str(spec: &str) -> Result<Role, IdentityError> {
        let bad = || IdentityError::BadRole(spec.to_owned());
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        let id = || -> Result<u64, IdentityError> {
            match rest.parse::<u64>() {
                Ok(0) | Err(_) => Err(bad()),
                // Only the canonical spelling: "007" would give two names for one id.
                Ok(id) if id.to_string() != rest => Err(bad()),
                Ok(id) => Ok(id),
            }
        };
        match kind {
            "manager" => Ok(Role::Manager(id()?)),
            "gateway" => Ok(Role::Gateway(id()?)),
            "operator" if valid_operator_name(rest) => Ok(Role::Operator(rest.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Manager(id) => write!(f, "manager {id}"),
            Role::Gateway(id) => write!(f, "gateway {id}"),
            Role::Operator(name) => write!(f, "operator {name}"),
        }
    }
}

/// Operator names: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit, so that
/// `operator-<name>.pem` is a plain file name.
pub fn valid_operator_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_OPERATOR_NAME
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_uri() {
        for role in [
            Role::Manager(3),
            Role::Gateway(u64::MAX),
            Role::Operator("admin".into()),
            Role::Operator("ci-bot.2".into()),
        ] {
            let uri = role.uri();
            assert_eq!(Role::from_uri(&uri), Some(Ok(role.clone())), "{uri}");
        }
        assert_eq!(Role::Manager(3).uri(), "urn:firetower:manager:3");
        assert_eq!(Role::Operator("admin".into()).file_stem(), "operator-admin");
    }

    #[test]
    fn bad_role_names_are_refused() {
        for spec in [
            "manager",
            "manager:",
            "manager:0",
            "manager:007",
            "manager:-1",
            "manager:18446744073709551616",
            "gateway:x",
            "operator:",
            "operator:Admin",
            "operator:../x",
            "operator:a/b",
            "root:1",
        ] {
            assert!(spec.parse::<Role>().is_err(), "{spec} should be refused");
        }
        let long = format!("operator:{}", "a".repeat(65));
        assert!(long.parse::<Role>().is_err());
        assert_eq!(Role::from_uri("https://example.com"), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            Role::from_certificate(b"not a certificate"),
            Err(IdentityError::Unparsable(_))
        ));
        assert!(matches!(
            Role::from_certificate(&[]),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
