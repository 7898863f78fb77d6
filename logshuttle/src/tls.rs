//! The TLS client configuration drains use: the web PKI roots, or a CA bundle the operator
//! names (then only that bundle), with server names verified either way.

use std::path::Path;
use std::sync::Arc;

use crate::Error;

/// A client config trusting `ca_file` (PEM) if given, else the web PKI roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Tls(format!("cannot read CA bundle {}: {e}", path.display()))
            })?;
            add_pem(&mut roots, &pem)
                .map_err(|e| Error::Tls(format!("CA bundle {}: {e}", path.display())))?;
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(config_with(roots))
}

/// A client config trusting exactly the certificates in `pem`.
pub fn client_config_from_pem(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    add_pem(&mut roots, pem).map_err(Error::Tls)?;
    Ok(config_with(roots))
}

fn add_pem(roots: &mut rustls::RootCertStore, pem: &[u8]) -> Result<(), String> {
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no certificates found".to_owned());
    }
    Ok(())
}

fn config_with(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}
