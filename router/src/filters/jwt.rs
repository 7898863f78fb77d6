//! JWT verification: the algorithm comes from the JWK and an explicit allow-list (never `none`,
//! never HMAC), `exp`/`nbf`/`iss`/`aud` checked, verified tokens cached until their `exp`.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use wharf_config::JwtFilter;

use super::FilterResponse;
use crate::shared::Shared;

/// Which check a token failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed(String),
    Algorithm(String),
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim(String),
}

impl Failure {
    pub fn check(&self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed(_) => "malformed",
            Failure::Algorithm(_) => "algorithm",
            Failure::UnknownKey => "unknown_key",
            Failure::Signature => "signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::Issuer => "issuer",
            Failure::Audience => "audience",
            Failure::MissingClaim(_) => "missing_claim",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Missing => "no bearer token in the Authorization header".into(),
            Failure::Malformed(e) => format!("the token is malformed: {e}"),
            Failure::Algorithm(a) => format!("algorithm {a} is not accepted here"),
            Failure::UnknownKey => "the token's key (kid) is not in the issuer's key set".into(),
            Failure::Signature => "the signature does not verify".into(),
            Failure::Expired => "the token has expired".into(),
            Failure::NotYetValid => "the token is not valid yet (nbf)".into(),
            Failure::Issuer => "the token's issuer is not accepted".into(),
            Failure::Audience => "the token's audience is not accepted".into(),
            Failure::MissingClaim(c) => format!("the token has no {c} claim"),
        }
    }
}

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

/// The `alg` of a token's JOSE header, read without trusting anything else in it.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(v.get("alg")?.as_str()?.to_owned())
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

/// The algorithm a key may be used with, from its `alg` or its type and curve.
fn key_allows(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(ka) = &jwk.common.key_algorithm {
        let same = matches!(
            (ka, alg),
            (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::RS384, Algorithm::RS384)
                | (KeyAlgorithm::RS512, Algorithm::RS512)
                | (KeyAlgorithm::PS256, Algorithm::PS256)
                | (KeyAlgorithm::PS384, Algorithm::PS384)
                | (KeyAlgorithm::PS512, Algorithm::PS512)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::ES384, Algorithm::ES384)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        );
        if !same {
            return false;
        }
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        // Symmetric keys never verify: a public key set must not hand out HMAC secrets.
        AlgorithmParameters::OctetKey(_) => false,
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
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
    // The algorithm is checked against the allow-list before anything else: `none`, HMAC and
    // unknown names are refused as such.
    let alg_claimed =
        raw_alg(token).ok_or_else(|| Failure::Malformed("no readable JOSE header".into()))?;
    if alg_claimed.starts_with("HS") || !f.algorithms.contains(&alg_claimed) {
        return Err(Failure::Algorithm(alg_claimed));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::InvalidAlgorithmName => Failure::Algorithm("(not an accepted name)".into()),
        _ => Failure::Malformed(e.to_string()),
    })?;
    let alg = header.alg;
    let name = alg_name(alg);
    if name.starts_with("HS") || !f.algorithms.iter().any(|a| a == name) {
        return Err(Failure::Algorithm(name.into()));
    }
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
    if !key_allows(jwk, alg) {
        return Err(Failure::Algorithm(name.into()));
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(|_| Failure::UnknownKey)?;
    let mut v = Validation::new(alg);
    v.leeway = f.leeway_secs;
    v.validate_nbf = true;
    v.set_issuer(&[f.issuer.as_str()]);
    if f.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&f.audiences);
    }
    v.required_spec_claims = ["exp", "iss"].iter().map(|s| (*s).to_owned()).collect();
    if !f.audiences.is_empty() {
        v.required_spec_claims.insert("aud".into());
    }
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &v).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => Failure::Expired,
                ErrorKind::ImmatureSignature => Failure::NotYetValid,
                ErrorKind::InvalidIssuer => Failure::Issuer,
                ErrorKind::InvalidAudience => Failure::Audience,
                ErrorKind::InvalidSignature => Failure::Signature,
                ErrorKind::MissingRequiredClaim(c) => Failure::MissingClaim(c.clone()),
                ErrorKind::InvalidAlgorithm => Failure::Algorithm(name.into()),
                _ => Failure::Malformed(e.to_string()),
            }
        })?;
    let exp = data.claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
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
