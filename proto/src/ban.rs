//! Operator bans (`cluster ban add`): who or what is refused, and until when. Committed in
//! group 0 by the managers, enforced by every gateway. Shared so that both sides parse and
//! match a ban the same way.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::pattern::{pattern_matches, validate_pattern};

/// What a ban refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum BanTarget {
    /// Every connection of this user id.
    User(String),
    /// Every connection from an address in this range.
    Ip(Cidr),
    /// Every subscribe and publish to a topic matching this pattern.
    Topic(String),
}

/// One ban as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// Assigned by the cluster when the ban is committed; `ban remove ID` names it.
    pub id: u64,
    /// What is refused.
    pub target: BanTarget,
    /// The operator's reason, shown in `ban list` and to the closed client.
    pub reason: String,
    /// When it was added, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it lapses, milliseconds since the Unix epoch; `None`: until removed.
    pub expires_ms: Option<u64>,
}

impl Ban {
    /// True while the ban is in force at `now_ms` (Unix milliseconds).
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// True when this ban refuses `user`.
    pub fn bans_user(&self, user: &str) -> bool {
        matches!(&self.target, BanTarget::User(u) if u == user)
    }

    /// True when this ban refuses connections from `ip`.
    pub fn bans_ip(&self, ip: IpAddr) -> bool {
        matches!(&self.target, BanTarget::Ip(c) if c.contains(ip))
    }

    /// True when this ban refuses `topic`.
    pub fn bans_topic(&self, topic: &str) -> bool {
        matches!(&self.target, BanTarget::Topic(p) if pattern_matches(p, topic))
    }
}

impl BanTarget {
    /// Check operator input: a non-empty user id, or a valid topic pattern (a CIDR is checked
    /// when parsed).
    pub fn validate(&self) -> Result<(), BanError> {
        match self {
            BanTarget::User(u) if u.is_empty() => Err(BanError::EmptyUser),
            BanTarget::User(u) if u.len() > 256 => Err(BanError::UserTooLong(u.len())),
            BanTarget::User(_) | BanTarget::Ip(_) => Ok(()),
            BanTarget::Topic(p) => {
                validate_pattern(p).map_err(|e| BanError::BadPattern(e.to_string()))
            }
        }
    }
}

/// Why a ban cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    /// Not `ADDRESS` or `ADDRESS/PREFIX`.
    #[error("{0:?} is not an IP address range (expected ADDRESS or ADDRESS/PREFIX, such as 203.0.113.0/24 or 2001:db8::/32)")]
    BadCidr(String),
    /// A prefix longer than the address.
    #[error("{text:?}: prefix /{prefix} is longer than the address ({max} bits)")]
    PrefixTooLong {
        /// What was given.
        text: String,
        /// The prefix.
        prefix: u8,
        /// Bits in the address.
        max: u8,
    },
    /// The empty user id.
    #[error("the user id is empty")]
    EmptyUser,
    /// A user id longer than 256 bytes.
    #[error("the user id is {0} bytes long; the limit is 256")]
    UserTooLong(usize),
    /// A topic pattern that is not one.
    #[error("{0}")]
    BadPattern(String),
}

/// An IP address range: an address and a prefix length. Host bits are cleared on parse, so
/// `10.1.2.3/8` is `10.0.0.0/8`. An IPv4 range also matches IPv4-mapped IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDRESS` (a single host) or `ADDRESS/PREFIX`.
    pub fn parse(text: &str) -> Result<Cidr, BanError> {
        let bad = || BanError::BadCidr(text.to_string());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = text.trim().parse().map_err(|_| bad())?;
                let full = if addr.is_ipv4() { 32 } else { 128 };
                (addr, full)
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(BanError::PrefixTooLong {
                text: text.to_string(),
                prefix,
                max,
            });
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// True when `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = BanError;
    fn try_from(s: String) -> Result<Self, BanError> {
        Cidr::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "300.0.0.1",
            "10.0.0.0/-1",
            "a/8",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bans_match_and_lapse() {
        let ban = Ban {
            id: 1,
            target: BanTarget::Topic("spam.*".into()),
            reason: String::new(),
            created_ms: 0,
            expires_ms: Some(1_000),
        };
        assert!(ban.bans_topic("spam.x"));
        assert!(!ban.bans_topic("room.x"));
        assert!(!ban.bans_user("spam.x"));
        assert!(ban.is_active(999));
        assert!(!ban.is_active(1_000));
        let json = serde_json::to_string(&Ban {
            target: BanTarget::Ip(Cidr::parse("10.0.0.0/8").unwrap()),
            ..ban
        })
        .unwrap();
        assert!(
            json.contains(r#""target":{"kind":"ip","value":"10.0.0.0/8"}"#),
            "{json}"
        );
        let back: Ban = serde_json::from_str(&json).unwrap();
        assert!(back.bans_ip("10.1.1.1".parse().unwrap()));
    }
}
