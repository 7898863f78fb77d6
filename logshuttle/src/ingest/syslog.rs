//! Syslog ingest over TCP (octet-counted or newline framing, RFC 6587) and UDP (one message per
//! datagram). Each message names its app by a `token="…"` structured-data parameter, or the
//! listener is bound to one app's token. Bad framing closes that one connection; a bad message
//! is skipped; both are logged and counted, and nothing else is affected.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use wharf_config::LogLine;

use crate::wire::{self, FrameDecoder};
use crate::{Error, Handle};

/// Largest syslog frame accepted on TCP.
pub const MAX_FRAME: usize = 64 * 1024;

/// A running syslog listener; stops when dropped.
#[derive(Debug)]
pub struct SyslogListener {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SyslogListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SyslogListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn line_of(
    handle: &Handle,
    frame: &[u8],
    listener_token: Option<&str>,
) -> Result<LogLine, (&'static str, String)> {
    let m = wire::parse_message(frame).map_err(|e| ("syslog", e))?;
    let token = m
        .token
        .as_deref()
        .or(listener_token)
        .ok_or_else(|| ("token", "no token: put token=\"…\" in the structured data or bind the listener to an app's token".to_owned()))?;
    let (app, space) = handle
        .app_for_token(token)
        .ok_or_else(|| ("token", "unknown log token".to_owned()))?;
    Ok(m.to_line(&app, &space))
}

/// Listen for syslog over TCP on `addr` (`127.0.0.1:0` for an ephemeral port).
pub async fn bind_tcp(
    handle: Handle,
    addr: SocketAddr,
    token: Option<String>,
) -> Result<SyslogListener, Error> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, peer)) => {
                    tokio::spawn(serve_tcp(handle.clone(), sock, peer, token.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "syslog accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(SyslogListener { addr, task })
}

async fn serve_tcp(handle: Handle, mut sock: TcpStream, peer: SocketAddr, token: Option<String>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut dec = FrameDecoder { max: MAX_FRAME };
    let metrics = handle.metrics().clone();
    let mut lines = Vec::with_capacity(256);
    loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => match line_of(&handle, &frame, token.as_deref()) {
                    Ok(l) => lines.push(l),
                    Err((reason, e)) => {
                        metrics
                            .ingest_errors
                            .with_label_values(&["syslog-tcp", reason])
                            .inc();
                        tracing::warn!(%peer, error = %e, "syslog message skipped");
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    metrics
                        .ingest_errors
                        .with_label_values(&["syslog-tcp", "framing"])
                        .inc();
                    tracing::warn!(%peer, error = %e, "bad syslog framing; closing the connection");
                    handle.ingest_all(&mut lines).await;
                    return;
                }
            }
        }
        handle.ingest_all(&mut lines).await;
        match sock.read_buf(&mut buf).await {
            Ok(0) => {
                if !buf.is_empty() {
                    metrics
                        .ingest_errors
                        .with_label_values(&["syslog-tcp", "framing"])
                        .inc();
                    tracing::warn!(%peer, bytes = buf.len(), "connection closed inside a frame");
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "syslog connection error");
                return;
            }
        }
    }
}

/// Listen for syslog over UDP on `addr`.
pub async fn bind_udp(
    handle: Handle,
    addr: SocketAddr,
    token: Option<String>,
) -> Result<SyslogListener, Error> {
    let sock = UdpSocket::bind(addr).await?;
    let addr = sock.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let metrics = handle.metrics().clone();
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "syslog UDP receive error");
                    continue;
                }
            };
            match line_of(&handle, &buf[..n], token.as_deref()) {
                Ok(l) => handle.sink().send(l),
                Err((reason, e)) => {
                    metrics
                        .ingest_errors
                        .with_label_values(&["syslog-udp", reason])
                        .inc();
                    tracing::warn!(%peer, error = %e, "syslog datagram skipped");
                }
            }
        }
    });
    Ok(SyslogListener { addr, task })
}
