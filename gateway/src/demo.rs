//! The demo chat page the client port serves at `GET /`, and the token endpoint it uses.
//! For trying Firetower out: the page is static and harmless, but `POST /demo/token` signs a
//! token for any name it is given, so it is off unless asked for (`[demo] tokens = true`,
//! `--demo-tokens`; `firetower dev` turns it on).
//!
//! ```text
//!   GET /                 ─▶ index.html     ┐ embedded in the binary; CSP: scripts, styles
//!   GET /demo.js, .css    ─▶ the page       │ and WebSockets from this origin only
//!   GET /firetower/*.js   ─▶ @firetower/client, compiled (clients/typescript/dist)
//!   POST /demo/token {"user":"alice"} ─▶ {"token":"<JWT: sub alice, demo.* only, 10 min>"}
//! ```
//!
//! No I/O here: `connection.rs` reads the request and writes what these functions return.
//! The compiled client under `demo/firetower/` is a copy (`npm run sync-demo` in
//! `clients/typescript`); a test there fails when it differs from a fresh build.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, AuthConfigError};
use crate::http;

/// The token endpoint.
pub(crate) const TOKEN_PATH: &str = "/demo/token";
/// Demo tokens are short-lived: the page refreshes them through the same endpoint, which
/// shows the client's token refresh at work.
const TOKEN_TTL: Duration = Duration::from_secs(600);
/// The only topics a demo token may use; the page's rooms are `demo.<room>`.
const DEMO_TOPICS: &str = "demo.*";
/// Longest demo user name, in characters.
const MAX_NAME_CHARS: usize = 32;
/// Largest token request body.
pub(crate) const MAX_TOKEN_REQUEST: usize = 1024;

/// Scripts, styles and WebSockets from this origin only; nothing inline, no frames, no forms
/// posting elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// One embedded file of the page.
pub(crate) struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page and the compiled client, by path.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_str!("demo/index.html"),
    },
    Asset {
        path: "/demo.js",
        content_type: JS,
        body: include_str!("demo/demo.js"),
    },
    Asset {
        path: "/demo.css",
        content_type: CSS,
        body: include_str!("demo/demo.css"),
    },
    Asset {
        path: "/firetower/index.js",
        content_type: JS,
        body: include_str!("demo/firetower/index.js"),
    },
    Asset {
        path: "/firetower/client.js",
        content_type: JS,
        body: include_str!("demo/firetower/client.js"),
    },
    Asset {
        path: "/firetower/backoff.js",
        content_type: JS,
        body: include_str!("demo/firetower/backoff.js"),
    },
    Asset {
        path: "/firetower/emitter.js",
        content_type: JS,
        body: include_str!("demo/firetower/emitter.js"),
    },
    Asset {
        path: "/firetower/errors.js",
        content_type: JS,
        body: include_str!("demo/firetower/errors.js"),
    },
    Asset {
        path: "/firetower/protocol.js",
        content_type: JS,
        body: include_str!("demo/firetower/protocol.js"),
    },
    Asset {
        path: "/firetower/token.js",
        content_type: JS,
        body: include_str!("demo/firetower/token.js"),
    },
];

/// What a demo path asks for.
pub(crate) enum Route {
    /// A file of the page.
    Asset(&'static Asset),
    /// `POST /demo/token`.
    Token,
}

/// The demo route for `path` (query string ignored), if it is one.
pub(crate) fn route(path: &str) -> Option<Route> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path == TOKEN_PATH {
        return Some(Route::Token);
    }
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path).map(Route::Asset)
}

/// The response carrying `asset`, with the page's security headers.
pub(crate) fn asset_response(asset: &Asset) -> Vec<u8> {
    http::response_with_headers(
        200,
        asset.content_type,
        &security_headers(),
        asset.body.as_bytes(),
    )
}

/// A JSON response of the token endpoint.
pub(crate) fn json_response(status: u16, body: &str) -> Vec<u8> {
    http::response_with_headers(
        status,
        "application/json",
        "Cache-Control: no-store\r\n",
        body.as_bytes(),
    )
}

fn security_headers() -> String {
    format!(
        "Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nCache-Control: no-cache\r\n"
    )
}

/// Why a token request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenRequestError {
    /// Not `{"user":"..."}`.
    #[error("send {{\"user\":\"<name>\"}}: {0}")]
    InvalidJson(String),
    /// A name that is empty, too long or has characters other than letters, digits, space, `-`, `_`, `.`.
    #[error("the name must be 1 to {MAX_NAME_CHARS} letters, digits, spaces, '-', '_' or '.'")]
    InvalidName,
    /// The token could not be signed.
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

impl TokenRequestError {
    /// The HTTP status and the error code of the answer.
    pub(crate) fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            TokenRequestError::InvalidJson(_) => (400, "invalid_json"),
            TokenRequestError::InvalidName => (400, "invalid_field"),
            TokenRequestError::Signing(_) => (500, "internal_error"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    firetower: Patterns,
}

#[derive(Serialize)]
struct Patterns {
    subscribe: [&'static str; 1],
    publish: [&'static str; 1],
}

/// Signs demo tokens with the `[auth]` HS256 secret, with the issuer and audience the
/// gateway checks, so its own verifier accepts them.
pub(crate) struct DemoTokens {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for DemoTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoTokens").finish_non_exhaustive()
    }
}

impl DemoTokens {
    /// Read the secret `auth` names (`validate()` made sure it has one).
    pub(crate) fn load(
        auth: &AuthConfig,
        secret_file: &Path,
    ) -> Result<DemoTokens, AuthConfigError> {
        let secret = crate::auth::read_hs256_secret(secret_file)?;
        Ok(DemoTokens {
            key: EncodingKey::from_secret(&secret),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        })
    }

    /// Answer a token request body: `{"token":..,"user":..,"exp":..}`.
    pub(crate) fn answer(&self, body: &[u8], now: SystemTime) -> Result<String, TokenRequestError> {
        let request: TokenRequest = serde_json::from_slice(body)
            .map_err(|e| TokenRequestError::InvalidJson(e.to_string()))?;
        let user = request.user.trim();
        let chars = user.chars().count();
        if chars == 0
            || chars > MAX_NAME_CHARS
            || !user
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
        {
            return Err(TokenRequestError::InvalidName);
        }
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = iat + TOKEN_TTL.as_secs();
        let claims = Claims {
            sub: user,
            iat,
            exp,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            firetower: Patterns {
                subscribe: [DEMO_TOPICS],
                publish: [DEMO_TOPICS],
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| TokenRequestError::Signing(e.to_string()))?;
        Ok(serde_json::json!({"token": token, "user": user, "exp": exp}).to_string())
    }
}

/// The answer to a token request when demo tokens are off.
pub(crate) fn tokens_off() -> Vec<u8> {
    json_response(
        404,
        &serde_json::json!({
            "code": "not_found",
            "message": "demo tokens are off on this gateway: [demo] tokens = true (or --demo-tokens) \
                        with an [auth] HS256 secret; `firetower dev` has them on",
        })
        .to_string(),
    )
}

/// The answer to a refused token request.
pub(crate) fn refusal(status: u16, code: &str, message: &str) -> Vec<u8> {
    json_response(
        status,
        &serde_json::json!({"code": code, "message": message}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn tokens(dir: &Path, audience: Option<&str>) -> (DemoTokens, crate::auth::Verifier) {
        let secret = dir.join("secret");
        std::fs::write(&secret, "demo-secret-0123456789abcdef\n").unwrap();
        let auth = AuthConfig {
            hs256_secret_file: Some(secret.clone()),
            audience: audience.map(String::from),
            ..AuthConfig::default()
        };
        (
            DemoTokens::load(&auth, &secret).unwrap(),
            crate::auth::Verifier::load(&auth).unwrap(),
        )
    }

    #[test]
    fn demo_tokens_verify_and_are_limited_to_demo_topics() {
        let dir = tempfile::tempdir().unwrap();
        let (demo, verifier) = tokens(dir.path(), Some("app"));
        let now = SystemTime::now();
        let answer: serde_json::Value =
            serde_json::from_str(&demo.answer(br#"{"user":" alice "}"#, now).unwrap()).unwrap();
        assert_eq!(answer["user"], "alice");
        let token = answer["token"].as_str().unwrap();
        let p = verifier.verify(token, now).unwrap();
        assert_eq!(p.user.as_deref(), Some("alice"));
        use crate::auth::Op;
        assert!(p.may(Op::Subscribe, "demo.lobby", false));
        assert!(p.may(Op::Publish, "demo.lobby", false));
        assert!(!p.may(Op::Subscribe, "room.1", false));
        assert!(!p.may(Op::Publish, "orders", false));
        let exp = answer["exp"].as_u64().unwrap();
        let iat = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(exp - iat, TOKEN_TTL.as_secs());
        assert!(verifier
            .verify(token, now + TOKEN_TTL + Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn token_requests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (demo, _) = tokens(dir.path(), None);
        let now = SystemTime::now();
        for (body, code) in [
            (&b"not json"[..], "invalid_json"),
            (br#"{"name":"x"}"#, "invalid_json"),
            (br#"{"user":""}"#, "invalid_field"),
            (br#"{"user":"   "}"#, "invalid_field"),
            (br#"{"user":"a<script>"}"#, "invalid_field"),
            (
                br#"{"user":"0123456789012345678901234567890123"}"#,
                "invalid_field",
            ),
        ] {
            let e = demo.answer(body, now).unwrap_err();
            assert_eq!(
                e.status_and_code().1,
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        demo.answer(r#"{"user":"Zoë the 2nd"}"#.as_bytes(), now)
            .unwrap();
    }

    #[test]
    fn routes_and_headers() {
        assert!(matches!(route("/"), Some(Route::Asset(a)) if a.content_type == HTML));
        assert!(matches!(route("/?room=x"), Some(Route::Asset(_))));
        assert!(matches!(route("/index.html"), Some(Route::Asset(_))));
        assert!(
            matches!(route("/firetower/index.js"), Some(Route::Asset(a)) if a.content_type == JS)
        );
        assert!(matches!(route(TOKEN_PATH), Some(Route::Token)));
        assert!(route("/firetower/../secret").is_none());
        assert!(route("/nope").is_none());
        let Some(Route::Asset(page)) = route("/") else {
            panic!("no page")
        };
        let text = String::from_utf8(asset_response(page)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(text.contains("Content-Security-Policy: default-src 'none'; script-src 'self';"));
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", page.body.len())));
        // The page loads nothing inline: the CSP would block it.
        assert!(!page.body.contains("<script>") && !page.body.contains("style="));
    }

    /// Every module the page's client imports is served.
    #[test]
    fn every_client_module_is_served() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for line in asset.body.lines() {
                let Some(rest) = line
                    .trim()
                    .strip_prefix("export ")
                    .or(line.trim().strip_prefix("import "))
                else {
                    continue;
                };
                if let Some((_, from)) = rest.rsplit_once(" from \"") {
                    let module = from.trim_end_matches("\";");
                    let path = match module.strip_prefix("./") {
                        Some(m) => format!("/firetower/{m}"),
                        None => module.to_string(),
                    };
                    assert!(
                        route(&path).is_some(),
                        "{} imports {module}, not served",
                        asset.path
                    );
                }
            }
        }
    }
}
