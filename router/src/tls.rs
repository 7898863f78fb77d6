//! Certificates chosen per SNI: exact name, then a one-label wildcard, then the default. The
//! store is part of the live table, so certificates rotate with a config swap.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use wharf_config::router_table::CertSpec;

use crate::live::Live;

/// Certificates by name, built off the request path.
#[derive(Default, Clone)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertStore {
    /// Parse every certificate and key; any failure names the certificate and rejects all.
    pub fn build(specs: &[CertSpec]) -> Result<CertStore, Vec<String>> {
        let mut store = CertStore::default();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match certified_key(spec) {
                Ok(ck) => {
                    let ck = Arc::new(ck);
                    for name in &spec.names {
                        match name.strip_prefix("*.") {
                            Some(suffix) => store.wildcard.insert(suffix.to_owned(), ck.clone()),
                            None => store.exact.insert(name.clone(), ck.clone()),
                        };
                    }
                    if spec.default {
                        store.default = Some(ck);
                    }
                }
                Err(e) => errors.push(format!("certificates[{i}] ({}): {e}", spec.name)),
            }
        }
        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors)
        }
    }

    /// The certificate for a (lowercase) name: exact → wildcard of one label → default.
    pub fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        if let Some(ck) = self.exact.get(name) {
            return Some(ck);
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(ck) = self.wildcard.get(parent)
        {
            return Some(ck);
        }
        self.default.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }
}

fn certified_key(spec: &CertSpec) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(spec.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in cert_pem".into());
    }
    let key = PrivateKeyDer::from_pem_slice(spec.key_pem.as_bytes())
        .map_err(|e| format!("private key PEM: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("key does not match certificate: {e}"))?;
    Ok(ck)
}

/// rustls asks this during each handshake; it reads the live table, so a swap rotates
/// certificates for the next handshake with no restart.
pub struct SniResolver {
    pub(crate) live: Arc<ArcSwap<Live>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let live = self.live.load();
        let name = hello.server_name().unwrap_or("").to_ascii_lowercase();
        live.certs.lookup(&name).cloned()
    }
}

/// The SNI a client sent, kept with the connection for the Host/SNI check (421).
#[derive(Debug, Clone)]
pub struct Sni(pub String);

/// `TLSv1.3` / `TLSv1.2` whatever spelling the TLS layer reports.
pub fn version_name(v: &str) -> &'static str {
    match v {
        "TLSv1.3" | "TLSv1_3" | "TLS13" => "TLSv1.3",
        "TLSv1.2" | "TLSv1_2" | "TLS12" => "TLSv1.2",
        _ => "unknown",
    }
}
