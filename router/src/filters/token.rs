//! The pure half of JWT verification: reading a token's JOSE header, choosing and checking a
//! key, verifying signature and claims, and parsing JWKS documents. No I/O, no pingora, no
//! crate-internal imports: `fuzz/` compiles this file on its own (`#[path]`) so that the fuzz
//! build stays light, and the router's `jwt` module wraps it with the key cache and metrics.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use wharf_config::JwtFilter;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Largest bearer token looked at; longer ones are malformed without being decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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

/// The `alg` of a token's JOSE header, read without trusting anything else in it.
pub fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(v.get("alg")?.as_str()?.to_owned())
}

/// The algorithm a key may be used with, from its `alg` or its type and curve.
pub fn key_allows(jwk: &Jwk, alg: Algorithm) -> bool {
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

pub fn alg_name(alg: Algorithm) -> &'static str {
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

/// What the header of a token asks for, once its algorithm passed the filter's allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Read and check the JOSE header: the algorithm is checked against the allow-list before
/// anything else, so `none`, HMAC and unknown names are refused as such.
pub fn check_header(f: &JwtFilter, token: &str) -> Result<Header, Failure> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Failure::Malformed(format!(
            "the token is over {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let alg_claimed =
        raw_alg(token).ok_or_else(|| Failure::Malformed("no readable JOSE header".into()))?;
    if alg_claimed.starts_with("HS") || !f.algorithms.contains(&alg_claimed) {
        return Err(Failure::Algorithm(alg_claimed));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::InvalidAlgorithmName => Failure::Algorithm("(not an accepted name)".into()),
        _ => Failure::Malformed(e.to_string()),
    })?;
    let name = alg_name(header.alg);
    if name.starts_with("HS") || !f.algorithms.iter().any(|a| a == name) {
        return Err(Failure::Algorithm(name.into()));
    }
    Ok(Header {
        alg: header.alg,
        kid: header.kid,
    })
}

/// The key for `kid`; without a kid, the only key there is.
pub fn find_key<'a>(keys: &'a [Jwk], kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(k) => keys.iter().find(|j| j.common.key_id.as_deref() == Some(k)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
}

/// Verify signature and claims of `token` (whose header passed [`check_header`]) with `jwk`.
/// Returns the token's `exp` (Unix seconds) for the cache.
pub fn verify_with_key(
    f: &JwtFilter,
    token: &str,
    header: &Header,
    jwk: &Jwk,
) -> Result<u64, Failure> {
    let alg = header.alg;
    let name = alg_name(alg);
    if !key_allows(jwk, alg) {
        return Err(Failure::Algorithm(name.into()));
    }
    if !okp_key_is_whole(jwk) {
        return Err(Failure::UnknownKey);
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
    Ok(data.claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0))
}

/// An Ed25519 key must be 32 bytes: jsonwebtoken 10.4 slices `[..32]` and panics on a shorter
/// one (found by `fuzz/` target `jwt`), so a hostile or broken JWKS document could crash the
/// request. Other key types are checked by the crypto crates without panicking.
fn okp_key_is_whole(jwk: &Jwk) -> bool {
    use base64::Engine;
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.x.trim_end_matches('='))
            .is_ok_and(|x| x.len() == 32),
        _ => true,
    }
}

/// Parse a JWKS document (bounded in size).
pub fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS document over 1 MiB".into());
    }
    serde_json::from_slice::<JwkSet>(body).map_err(|e| format!("not a JWKS document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> JwtFilter {
        JwtFilter {
            name: "t".into(),
            jwks_uri: "https://issuer.example/jwks".into(),
            issuer: "https://issuer.example".into(),
            audiences: vec!["wharf".into()],
            leeway_secs: 30,
            jwks_ttl_secs: 300,
            algorithms: vec!["EdDSA".into()],
        }
    }

    /// Found by the `jwt` fuzz target: an Ed25519 key shorter than 32 bytes made jsonwebtoken
    /// panic while verifying. It is an unknown key now.
    #[test]
    fn short_ed25519_key_is_refused_not_a_panic() {
        let doc = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","use":"sig","x":"LbAfm2QC6hPM8KCcwk1eZMKzBzNb-BqfUCU"}]}"#;
        let keys = parse_jwks(doc).unwrap().keys;
        let token = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoid2hhcmYiLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6MTcwMDAwMDAwMCwic3ViIjoidXNlciJ9.TceKgLoZ-Sqdtg1Ubr7HvXbTcPRS0t5xmfM9aFJ6aUFpHkyAuybxudaq84vJ9XYZ2JAI_0JiMI07z02Z1l2iAQ";
        let f = filter();
        let header = check_header(&f, token).unwrap();
        let jwk = find_key(&keys, header.kid.as_deref()).unwrap();
        assert_eq!(
            verify_with_key(&f, token, &header, jwk),
            Err(Failure::UnknownKey)
        );
    }

    #[test]
    fn whole_ed25519_key_verifies() {
        let doc = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","use":"sig","x":"LbAfm2QwgqlRjGgC6hPM8KCcwk1eZMKzBzNb-BqfUCU"}]}"#;
        let keys = parse_jwks(doc).unwrap().keys;
        let token = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoid2hhcmYiLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6MTcwMDAwMDAwMCwic3ViIjoidXNlciJ9.TceKgLoZ-Sqdtg1Ubr7HvXbTcPRS0t5xmfM9aFJ6aUFpHkyAuybxudaq84vJ9XYZ2JAI_0JiMI07z02Z1l2iAQ";
        let f = filter();
        let header = check_header(&f, token).unwrap();
        let jwk = find_key(&keys, header.kid.as_deref()).unwrap();
        assert_eq!(verify_with_key(&f, token, &header, jwk), Ok(4_102_444_800));
    }
}
