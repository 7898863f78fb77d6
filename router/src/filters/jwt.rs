//! JWT verification: the algorithm comes from the JWK and an explicit allow-list (never `none`,
//! never HMAC), `exp`/`nbf`/`iss`/`aud` checked, verified tokens cached until their `exp`.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use wharf_config::JwtFilter;

use super::FilterResponse;
use crate::shared::Shared;

use super::token as jose;
pub use super::token::Failure;

/// 401 with `WWW-Authenticate: Bearer error="invalid_token"` and a JSON body naming the check.
pub fn unauthorized(f: &Failure) -> FilterResponse {
    let body = serde_json::json!({
        "id": "unauthorized",
        "error": "invalid_token",
        "check": f.check(),
        "message": f.message(),
    });
    FilterResponse {
        status: 401,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "www-authenticate".into(),
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    f.check()
                ),
            ),
        ],
        body: Bytes::from(body.to_string() + "\n"),
    }
}

const CACHE_MAX: usize = 10_000;

/// Verified tokens by hash of (filter, token) → `exp` (Unix seconds).
static VERIFIED: LazyLock<Mutex<HashMap<[u8; 32], u64>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cache_key(f: &JwtFilter, token: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(f.name.as_bytes())
        .chain_update([0])
        .chain_update(f.jwks_uri.as_bytes())
        .chain_update([0])
        .chain_update(token.as_bytes())
        .finalize()
        .into()
}

fn bearer(req: &RequestHeader) -> Option<&str> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Verify the request's bearer token against filter `f`.
pub async fn verify(shared: &Shared, f: &JwtFilter, req: &RequestHeader) -> Result<(), Failure> {
    let result = verify_inner(shared, f, req).await;
    let label = match &result {
        Ok(()) => "ok",
        Err(e) => e.check(),
    };
    shared
        .metrics
        .jwt_verdicts
        .with_label_values(&[label])
        .inc();
    result
}

async fn verify_inner(shared: &Shared, f: &JwtFilter, req: &RequestHeader) -> Result<(), Failure> {
    let token = bearer(req).ok_or(Failure::Missing)?;
    let key = cache_key(f, token);
    let now = now_s();
    if VERIFIED.lock().get(&key).is_some_and(|exp| *exp > now) {
        return Ok(());
    }
    let header = jose::check_header(f, token)?;
    let kid = header.kid.as_deref();
    let mut set = shared
        .jwks
        .get_or_wait(&f.jwks_uri)
        .await
        .ok_or(Failure::UnknownKey)?;
    if set.find(kid).is_none()
        && let Some(fresh) = shared.jwks.refresh_for_unknown_kid(&f.jwks_uri).await
    {
        set = fresh;
    }
    let jwk = set.find(kid).ok_or(Failure::UnknownKey)?;
    let exp = jose::verify_with_key(f, token, &header, jwk)?;
    let mut cache = VERIFIED.lock();
    if cache.len() >= CACHE_MAX {
        cache.retain(|_, e| *e > now);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
    }
    cache.insert(key, exp);
    Ok(())
}
