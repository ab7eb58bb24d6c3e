//! Who a client is and what it may do: JWT verification (`[auth]`) and topic permissions.
//!
//! ```text
//!   token (?token=, Authorization: Bearer, or {"op":"auth"}) ─▶ Verifier::verify
//!        ─▶ Principal { user, subscribe: [patterns], publish: [patterns], expires }
//!   subscribe / publish ─▶ Principal::may(Op, topic) ─▶ allowed | `forbidden`
//! ```
//!
//! Claims: `sub` (the user id, required), `exp` (required), optional `iss`/`aud` checked
//! against the configuration, and `firetower`: `{"subscribe":[..],"publish":[..]}`. A pattern
//! is a topic or a prefix ending in `*`; `{sub}` stands for the user id. No claim: no topic.
//! Keys: an HS256 secret file, an RS256/ES256 public key (PEM), or a JWKS file (keys chosen by
//! the token's `kid`). Keys are read once at start; a file that cannot be read or parsed
//! stops the gateway with a message naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firetower_proto::{expand_user, pattern_matches, validate_pattern};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The longest user id accepted from a token or a hook, in bytes.
pub(crate) const MAX_USER_BYTES: usize = 256;
/// Most patterns per operation in one token or hook answer.
pub(crate) const MAX_PATTERNS: usize = 256;
/// Largest key or JWKS file read, in bytes.
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// `[auth]` of the gateway configuration: how client tokens are verified. Exactly one of
/// `hs256_secret_file`, `public_key_file` and `jwks_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the HS256 shared secret (its bytes, a trailing newline stripped).
    pub hs256_secret_file: Option<PathBuf>,
    /// A PEM public key: RSA (RS256) or EC P-256 (ES256).
    pub public_key_file: Option<PathBuf>,
    /// A JWKS file (`{"keys":[...]}`): RSA and EC P-256 keys, picked by the token's `kid`.
    pub jwks_file: Option<PathBuf>,
    /// If set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// If set, a token's `aud` must contain it.
    pub audience: Option<String>,
    /// Seconds of clock difference tolerated when checking `exp` at connect (the connection
    /// is still closed at `exp` itself). Default 0.
    pub leeway_s: u64,
}

/// Why `[auth]` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// None or several key sources.
    #[error("[auth] needs exactly one of `hs256_secret_file`, `public_key_file` and `jwks_file` (found {0})")]
    KeySources(usize),
    /// A file could not be read.
    #[error("[auth] `{key}` = {path}: cannot read it: {reason}")]
    Unreadable {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file was read but holds no usable key.
    #[error("[auth] `{key}` = {path}: {reason}")]
    BadKey {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// `leeway_s` above an hour.
    #[error("[auth] `leeway_s` is {0}; at most 3600")]
    Leeway(u64),
}

/// Why a token was refused (the connection is closed with 4401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No token where one is needed.
    #[error(
        "authentication required: send a token (?token=, Authorization: Bearer, or an auth frame)"
    )]
    Missing,
    /// Signature, format, algorithm, `iss` or `aud` wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// A refresh for another user.
    #[error("the new token is for another user")]
    OtherUser,
}

impl AuthError {
    /// The close reason sent with 4401 (WebSocket close reasons must be short and static).
    pub(crate) fn close_reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "authentication required",
            AuthError::Invalid(_) => "invalid token",
            AuthError::Expired => "token expired",
            AuthError::OtherUser => "token for another user",
        }
    }
}

/// Checks tokens against the configured keys.
pub(crate) struct Verifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

enum Keys {
    /// One key, one algorithm.
    Single(DecodingKey, Algorithm),
    /// Keys by `kid`.
    Jwks(HashMap<String, (DecodingKey, Algorithm)>),
}

/// The `firetower` claim.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FiretowerClaim {
    subscribe: Vec<String>,
    publish: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    firetower: Option<FiretowerClaim>,
}

fn read_limited(key: &'static str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    let unreadable = |reason: String| AuthConfigError::Unreadable {
        key,
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(unreadable(format!(
            "{} bytes; a key file is at most {MAX_KEY_FILE}",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| unreadable(e.to_string()))
}

/// The HS256 secret in `path` (`[auth] hs256_secret_file`): its bytes, a trailing newline
/// stripped, at least 16 of them. Verification and the demo's token endpoint both use it.
pub(crate) fn read_hs256_secret(path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    let key = "hs256_secret_file";
    let mut secret = read_limited(key, path)?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.len() < 16 {
        return Err(AuthConfigError::BadKey {
            key,
            path: path.display().to_string(),
            reason: format!(
                "the secret is {} bytes; use at least 16 (32 random bytes is usual)",
                secret.len()
            ),
        });
    }
    Ok(secret)
}

impl Verifier {
    /// Read the keys `config` names.
    pub(crate) fn load(config: &AuthConfig) -> Result<Verifier, AuthConfigError> {
        let sources = [
            config.hs256_secret_file.is_some(),
            config.public_key_file.is_some(),
            config.jwks_file.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            return Err(AuthConfigError::KeySources(sources));
        }
        if config.leeway_s > 3600 {
            return Err(AuthConfigError::Leeway(config.leeway_s));
        }
        let keys = if let Some(path) = &config.hs256_secret_file {
            let secret = read_hs256_secret(path)?;
            Keys::Single(DecodingKey::from_secret(&secret), Algorithm::HS256)
        } else if let Some(path) = &config.public_key_file {
            let key = "public_key_file";
            let pem = read_limited(key, path)?;
            public_key(&pem).map_err(|reason| AuthConfigError::BadKey {
                key,
                path: path.display().to_string(),
                reason,
            })?
        } else if let Some(path) = &config.jwks_file {
            let key = "jwks_file";
            let text = read_limited(key, path)?;
            jwks(&text).map_err(|reason| AuthConfigError::BadKey {
                key,
                path: path.display().to_string(),
                reason,
            })?
        } else {
            return Err(AuthConfigError::KeySources(0));
        };
        Ok(Verifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
        })
    }

    /// Verify `token` at `now` and read who it names and what it allows.
    pub(crate) fn verify(&self, token: &str, now: SystemTime) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (key, alg) = match &self.keys {
            Keys::Single(key, alg) => (key, *alg),
            Keys::Jwks(keys) => {
                let kid = header.kid.as_deref().ok_or_else(|| {
                    AuthError::Invalid("the token has no `kid` and the keys are a JWKS".into())
                })?;
                let (key, alg) = keys.get(kid).ok_or_else(|| {
                    AuthError::Invalid(format!(
                        "no key with kid {:?} in the JWKS",
                        kid.chars().take(64).collect::<String>()
                    ))
                })?;
                (key, *alg)
            }
        };
        if header.alg != alg {
            return Err(AuthError::Invalid(format!(
                "the token is signed with {:?}; this gateway expects {alg:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(alg);
        // `exp` is checked below against the caller's clock, so tests can move it.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims.exp.saturating_add(self.leeway_s) <= now_s {
            return Err(AuthError::Expired);
        }
        let expires = UNIX_EPOCH + Duration::from_secs(claims.exp);
        let grant = claims.firetower.unwrap_or_default();
        Principal::new(
            &claims.sub,
            Some(grant.subscribe),
            Some(grant.publish),
            Some(expires),
        )
        .map_err(AuthError::Invalid)
    }
}

fn public_key(pem: &[u8]) -> Result<Keys, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_string())?;
    if !text.contains("-----BEGIN") {
        return Err("not a PEM file (no -----BEGIN line)".into());
    }
    // Each constructor checks the key type in the PEM: an EC key is not taken as RSA.
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Keys::Single(key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Keys::Single(key, Algorithm::ES256));
    }
    Err("holds no RSA or EC P-256 public key".into())
}

fn jwks(text: &[u8]) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| format!("key {i} has no `kid`"))?;
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(_), None | Some(KeyAlgorithm::ES256)) => {
                Algorithm::ES256
            }
            (_, alg) => {
                return Err(format!(
                    "key {kid:?}: only RS256 (RSA) and ES256 (EC P-256) keys are supported, not {alg:?}"
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
        keys.insert(kid, (key, alg));
    }
    if keys.is_empty() {
        return Err("the JWKS holds no keys".into());
    }
    Ok(Keys::Jwks(keys))
}

/// What a connection may do with topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Subscribe.
    Subscribe,
    /// Publish.
    Publish,
}

/// Who a connection acts as, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The user id; `None` for an anonymous connection.
    pub(crate) user: Option<Arc<str>>,
    /// Subscribe patterns (`{sub}` already replaced); `None`: not limited by patterns.
    subscribe: Option<Vec<String>>,
    /// Publish patterns; `None`: not limited by patterns.
    publish: Option<Vec<String>>,
    /// When the token lapses: the connection is closed with 4401 then.
    pub(crate) expires: Option<SystemTime>,
    /// `--allow-anonymous`: an op without patterns is allowed. Otherwise an op without
    /// patterns is left to that op's hook, and refused when there is none.
    open: bool,
}

impl Principal {
    /// `--allow-anonymous`: no user, every topic.
    pub(crate) fn anonymous() -> Principal {
        Principal {
            user: None,
            subscribe: None,
            publish: None,
            expires: None,
            open: true,
        }
    }

    /// A connection a connect hook let in without naming a user, with the patterns it gave.
    pub(crate) fn unnamed(
        subscribe: Option<Vec<String>>,
        publish: Option<Vec<String>>,
    ) -> Result<Principal, String> {
        let mut p = Principal::new("-", subscribe, publish, None)?;
        p.user = None;
        Ok(p)
    }

    /// A user with these patterns (`None`: not limited by patterns). Checks the user id and
    /// every pattern.
    pub(crate) fn new(
        user: &str,
        subscribe: Option<Vec<String>>,
        publish: Option<Vec<String>>,
        expires: Option<SystemTime>,
    ) -> Result<Principal, String> {
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(format!(
                "the user id must be 1 to {MAX_USER_BYTES} bytes, not {}",
                user.len()
            ));
        }
        if user.chars().any(|c| c.is_control()) {
            return Err("the user id holds a control character".into());
        }
        let expand = |list: Option<Vec<String>>, what: &str| -> Result<_, String> {
            let Some(list) = list else { return Ok(None) };
            if list.len() > MAX_PATTERNS {
                return Err(format!(
                    "{} {what} patterns; at most {MAX_PATTERNS}",
                    list.len()
                ));
            }
            list.iter()
                .map(|p| {
                    let p = expand_user(p, user);
                    validate_pattern(&p).map_err(|e| format!("{what} pattern: {e}"))?;
                    Ok(p)
                })
                .collect::<Result<Vec<_>, String>>()
                .map(Some)
        };
        Ok(Principal {
            user: Some(Arc::from(user)),
            subscribe: expand(subscribe, "subscribe")?,
            publish: expand(publish, "publish")?,
            expires,
            open: false,
        })
    }

    /// Whether `op` on `topic` is allowed: by a matching pattern when patterns are given
    /// (no pattern: no topic); without patterns, when the connection is open
    /// (`--allow-anonymous`) or a hook for `op` will decide (`hook_decides`).
    pub(crate) fn may(&self, op: Op, topic: &str, hook_decides: bool) -> bool {
        let patterns = match op {
            Op::Subscribe => &self.subscribe,
            Op::Publish => &self.publish,
        };
        match patterns {
            None => self.open || hook_decides,
            Some(list) => list.iter().any(|p| pattern_matches(p, topic)),
        }
    }

    /// Replace the patterns of the ops a hook answer names.
    pub(crate) fn with_patterns(
        mut self,
        subscribe: Option<Vec<String>>,
        publish: Option<Vec<String>>,
    ) -> Result<Principal, String> {
        let user = self.user.clone().unwrap_or_else(|| Arc::from("-"));
        let fresh = Principal::new(&user, subscribe.clone(), publish.clone(), None)?;
        if subscribe.is_some() {
            self.subscribe = fresh.subscribe;
        }
        if publish.is_some() {
            self.publish = fresh.publish;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn hs_verifier(dir: &Path, aud: Option<&str>, iss: Option<&str>) -> Verifier {
        let path = dir.join("secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        Verifier::load(&AuthConfig {
            hs256_secret_file: Some(path),
            audience: aud.map(String::from),
            issuer: iss.map(String::from),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_valid_token_names_the_user_and_its_patterns() {
        let dir = tmp();
        let v = hs_verifier(dir.path(), None, None);
        let t = token(serde_json::json!({
            "sub": "u1", "exp": 1_800_000_100u64,
            "firetower": {"subscribe": ["room.*", "user.{sub}"], "publish": ["room.1"]}
        }));
        let p = v.verify(&t, now()).unwrap();
        assert_eq!(p.user.as_deref(), Some("u1"));
        assert!(p.may(Op::Subscribe, "room.9", false));
        assert!(p.may(Op::Subscribe, "user.u1", false));
        assert!(!p.may(Op::Subscribe, "user.u2", false));
        assert!(!p.may(Op::Subscribe, "chat.1", false));
        assert!(p.may(Op::Publish, "room.1", false));
        assert!(!p.may(Op::Publish, "room.2", false));
        assert_eq!(
            p.expires,
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_100))
        );
    }

    #[test]
    fn no_claim_is_no_topic() {
        let dir = tmp();
        let v = hs_verifier(dir.path(), None, None);
        let p = v
            .verify(
                &token(serde_json::json!({"sub": "u1", "exp": 1_800_000_100u64})),
                now(),
            )
            .unwrap();
        assert!(!p.may(Op::Subscribe, "room.1", false));
        assert!(!p.may(Op::Publish, "room.1", false));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let dir = tmp();
        let v = hs_verifier(dir.path(), Some("app"), Some("issuer-1"));
        let good = serde_json::json!({"sub": "u1", "exp": 1_800_000_100u64, "aud": "app", "iss": "issuer-1"});
        v.verify(&token(good.clone()), now()).unwrap();
        let mut expired = good.clone();
        expired["exp"] = 1_799_999_999u64.into();
        assert_eq!(v.verify(&token(expired), now()), Err(AuthError::Expired));
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = "other".into();
        assert!(matches!(
            v.verify(&token(wrong_aud), now()),
            Err(AuthError::Invalid(_))
        ));
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = "other".into();
        assert!(matches!(
            v.verify(&token(wrong_iss), now()),
            Err(AuthError::Invalid(_))
        ));
        let mut no_sub = good.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        assert!(matches!(
            v.verify(&token(no_sub), now()),
            Err(AuthError::Invalid(_))
        ));
        let other_key = encode(
            &Header::default(),
            &good,
            &EncodingKey::from_secret(b"another secret of enough bytes!!"),
        )
        .unwrap();
        assert!(matches!(
            v.verify(&other_key, now()),
            Err(AuthError::Invalid(_))
        ));
        for garbage in ["", "a.b.c", "not a token", "eyJhbGciOiJub25lIn0.e30."] {
            assert!(
                matches!(v.verify(garbage, now()), Err(AuthError::Invalid(_))),
                "{garbage}"
            );
        }
        let mut bad_pattern = good;
        bad_pattern["firetower"] = serde_json::json!({"subscribe": ["a*b"]});
        assert!(matches!(
            v.verify(&token(bad_pattern), now()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn bad_configurations_name_the_key() {
        let dir = tmp();
        assert_eq!(
            Verifier::load(&AuthConfig::default()).unwrap_err(),
            AuthConfigError::KeySources(0)
        );
        let missing = Verifier::load(&AuthConfig {
            jwks_file: Some(dir.path().join("nope.json")),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(missing.to_string().contains("`jwks_file`"), "{missing}");
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let e = Verifier::load(&AuthConfig {
            hs256_secret_file: Some(short.clone()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        let e = Verifier::load(&AuthConfig {
            public_key_file: Some(short.clone()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("PEM"), "{e}");
        let e = Verifier::load(&AuthConfig {
            jwks_file: Some(short),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("JWKS"), "{e}");
    }

    #[test]
    fn principals_check_users_and_patterns() {
        assert!(Principal::new("", None, None, None).is_err());
        assert!(Principal::new(&"x".repeat(300), None, None, None).is_err());
        assert!(Principal::new("u\u{0}", None, None, None).is_err());
        let p = Principal::new("u", None, None, None).unwrap();
        assert!(!p.may(Op::Publish, "anything", false));
        assert!(p.may(Op::Publish, "anything", true));
        let p = p.with_patterns(Some(vec!["a.*".into()]), None).unwrap();
        assert!(!p.may(Op::Subscribe, "b", true));
        assert!(p.may(Op::Subscribe, "a.b", false));
        assert!(p.may(Op::Publish, "b", true));
        assert!(Principal::anonymous().may(Op::Subscribe, "x", false));
        let unnamed = Principal::unnamed(Some(vec!["{sub}.x".into()]), None).unwrap();
        assert_eq!(unnamed.user, None);
    }
}
