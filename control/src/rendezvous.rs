//! The rendezvous socket for attached one-off dynos (`heroku run`): `POST /apps/{app}/dynos`
//! with `attach: true` answers `attach_url = rendezvous://HOST:PORT/SECRET`; the client opens
//! TLS there, sends `SECRET\r\n`, gets one line back, then the dyno's output until it ends.
//! Each secret opens once and expires.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use wharf_runtime::RunHandle;

/// Where and with which certificate the rendezvous socket listens.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    pub listen: SocketAddr,
    /// Host clients connect to (in `attach_url`); the certificate must name it.
    pub public_host: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("rendezvous certificate: {0}")]
    Tls(String),
    #[error("rendezvous listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Pending attach sessions by secret.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    url_base: String,
    pending: Arc<Mutex<HashMap<String, (Instant, RunHandle)>>>,
}

const TTL: Duration = Duration::from_secs(60);

impl Rendezvous {
    /// Bind and serve in the background.
    pub async fn start(cfg: &RendezvousConfig) -> Result<Rendezvous, RendezvousError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cfg.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| RendezvousError::Tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes())
            .map_err(|e| RendezvousError::Tls(format!("private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RendezvousError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| RendezvousError::Tls(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind(cfg.listen).await?;
        let port = listener.local_addr()?.port();
        let r = Rendezvous {
            url_base: format!("rendezvous://{}:{port}", cfg.public_host),
            pending: Arc::default(),
        };
        let pending = r.pending.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let pending = pending.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(acceptor, tcp, pending).await {
                        tracing::debug!(%peer, error = %e, "rendezvous session ended");
                    }
                });
            }
        });
        Ok(r)
    }

    /// Register a running one-off; returns its `attach_url`.
    pub fn register(&self, secret: &str, handle: RunHandle) -> String {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, (t, _)| t.elapsed() < TTL);
            p.insert(secret.to_owned(), (Instant::now(), handle));
        }
        format!("{}/{secret}", self.url_base)
    }
}

async fn session(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    pending: Arc<Mutex<HashMap<String, (Instant, RunHandle)>>>,
) -> std::io::Result<()> {
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await??;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line)).await??;
    let secret = line.trim().to_owned();
    let found = pending.lock().ok().and_then(|mut p| p.remove(&secret));
    let Some((created, mut handle)) = found.filter(|(t, _)| t.elapsed() < TTL) else {
        wr.write_all(b"denied\r\n").await?;
        return wr.shutdown().await;
    };
    let _ = created;
    wr.write_all(b"rendezvous\r\n").await?;
    // The client's stdin is read and dropped (one-offs here take no input), so that closing
    // does not reset a connection with unread data.
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 || buf[..n].contains(&4) {
                break;
            }
        }
    });
    while let Some(l) = handle.output.recv().await {
        wr.write_all(l.as_bytes()).await?;
        wr.write_all(b"\r\n").await?;
    }
    let _ = handle.exit.await;
    wr.flush().await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    wr.shutdown().await
}
