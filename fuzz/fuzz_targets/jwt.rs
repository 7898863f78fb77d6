//! JWTs and JWKS documents. The first byte picks what the rest is:
//! - even: a bearer token, checked against a fixed key set (one Ed25519 key, kid `k1`) and a
//!   filter that accepts every asymmetric algorithm, through the same functions the router's
//!   JWT filter calls (header → key → signature and claims);
//! - odd: a JWKS document; every key in it is tried with every algorithm against a fixed token.
//!
//! Never panics; never accepts HMAC or `none`; no token verifies but one signed by the fixed key.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wharf_config::JwtFilter;
use wharf_fuzz::token::{check_header, find_key, key_allows, parse_jwks, verify_with_key};

const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","use":"sig","x":"LbAfm2QwgqlRjGgC6hPM8KCcwk1eZMKzBzNb-BqfUCU"}]}"#;
/// Signed by the key above: EdDSA, iss https://issuer.example, aud wharf, exp 2100-01-01.
const TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoid2hhcmYiLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6MTcwMDAwMDAwMCwic3ViIjoidXNlciJ9.TceKgLoZ-Sqdtg1Ubr7HvXbTcPRS0t5xmfM9aFJ6aUFpHkyAuybxudaq84vJ9XYZ2JAI_0JiMI07z02Z1l2iAQ";

static KEYS: LazyLock<Vec<jsonwebtoken::jwk::Jwk>> =
    LazyLock::new(|| parse_jwks(JWKS.as_bytes()).expect("fixed JWKS").keys);

fn filter() -> JwtFilter {
    JwtFilter {
        name: "fuzz".into(),
        jwks_uri: "https://issuer.example/jwks".into(),
        issuer: "https://issuer.example".into(),
        audiences: vec!["wharf".into()],
        leeway_secs: 30,
        jwks_ttl_secs: 300,
        algorithms: [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    }
}

const ALGS: [jsonwebtoken::Algorithm; 12] = {
    use jsonwebtoken::Algorithm::*;
    [
        HS256, HS384, HS512, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA,
    ]
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = filter();
    if mode & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let Ok(header) = check_header(&f, token) else {
            return;
        };
        assert!(!wharf_fuzz::token::alg_name(header.alg).starts_with("HS"));
        let Some(jwk) = find_key(&KEYS, header.kid.as_deref()) else {
            return;
        };
        if verify_with_key(&f, token, &header, jwk).is_ok() {
            // Header and payload are the signing input: only the fixed token's can verify.
            assert_eq!(
                token.rsplit_once('.').map(|(s, _)| s),
                TOKEN.rsplit_once('.').map(|(s, _)| s),
                "a forged token verified"
            );
        }
    } else {
        let Ok(set) = parse_jwks(rest) else {
            return;
        };
        let header = check_header(&f, TOKEN).expect("fixed token header");
        for jwk in &set.keys {
            for alg in ALGS {
                let _ = key_allows(jwk, alg);
            }
            let _ = jsonwebtoken::DecodingKey::from_jwk(jwk);
            let _ = verify_with_key(&f, TOKEN, &header, jwk);
        }
        let _ = find_key(&set.keys, Some("k1"));
        let _ = find_key(&set.keys, None);
    }
});
