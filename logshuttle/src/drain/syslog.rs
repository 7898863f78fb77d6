//! Syslog drains: TCP and TLS with RFC 6587 octet counting, reconnecting with jittered
//! back-off and keeping what was not written; UDP with one message per datagram.

use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use wharf_config::DrainKind;

use super::{Batch, DrainCtx};
use crate::wire;

/// Lines written at once.
const BATCH: usize = 512;

trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// TCP connect with keep-alive, to any of the host's addresses.
pub(crate) async fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let sock = socket2::SockRef::from(&tcp);
    sock.set_tcp_keepalive(&ka)?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A connection and a duplicate of its socket to peek at (is the peer still there?).
struct Link {
    io: Pin<Box<dyn Conn>>,
    peek: std::net::TcpStream,
}

async fn connect(ctx: &DrainCtx) -> std::io::Result<Link> {
    let url = &ctx.target.url;
    let tcp = connect_tcp(&url.host, url.port, ctx.opts.connect_timeout).await?;
    let std = tcp.into_std()?;
    let peek = std.try_clone()?;
    let tcp = TcpStream::from_std(std)?;
    let io = connect_io(ctx, tcp).await?;
    Ok(Link { io, peek })
}

async fn connect_io(ctx: &DrainCtx, tcp: TcpStream) -> std::io::Result<Pin<Box<dyn Conn>>> {
    let url = &ctx.target.url;
    if url.kind == DrainKind::SyslogTls {
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(ctx.tls.clone());
        let s = tokio::time::timeout(ctx.opts.connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        Ok(Box::pin(s))
    } else {
        Ok(Box::pin(tcp))
    }
}

/// True when the peer has closed or reset the connection. Syslog receivers never send, so a
/// readable socket means end of stream (or TLS records, which the TLS reader takes).
fn peer_gone(link: &mut Link) -> bool {
    let mut b = [0u8; 1];
    match link.peek.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => {
            // Data (TLS alerts, session tickets): let the TLS layer consume it.
            let mut buf = [0u8; 512];
            matches!(
                link.io.read(&mut buf).now_or_never(),
                Some(Ok(0)) | Some(Err(_))
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn encode(ctx: &DrainCtx, enc: &mut wire::Encoder, batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    let host = ctx.host();
    if let Some(l10) = ctx.l10(batch.dropped) {
        enc.octet_counted(out, &l10, host);
    }
    for i in &batch.items {
        enc.octet_counted(out, &i.line, host);
    }
}

/// `syslog://`, `syslog+tcp://`, `syslog+tls://`.
pub(crate) async fn run_stream(ctx: DrainCtx) {
    let id = ctx.target.id.clone();
    let mut backoff = ctx.backoff();
    let mut conn: Option<Link> = None;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut enc = wire::Encoder::default();
    let mut pending: Option<Batch> = None;
    loop {
        if pending.is_none() {
            match ctx.queue.next_batch(BATCH).await {
                Some(b) => {
                    encode(&ctx, &mut enc, &b, &mut out);
                    pending = Some(b);
                }
                None => break,
            }
        }
        if let Some(c) = conn.as_mut()
            && peer_gone(c)
        {
            tracing::info!(drain = %id, "drain peer closed the connection; reconnecting");
            conn = None;
            ctx.metrics.connected.set(0);
        }
        if conn.is_none() {
            match connect(&ctx).await {
                Ok(c) => {
                    tracing::info!(drain = %id, url = %ctx.target.url, "drain connected");
                    ctx.metrics.connected.set(1);
                    conn = Some(c);
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::warn!(drain = %id, url = %ctx.target.url, error = %e, retry_in = ?d, "drain connect failed");
                    if !ctx.pause(d).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let write = async {
            c.io.write_all(&out).await?;
            c.io.flush().await
        };
        match tokio::time::timeout(ctx.opts.write_timeout, write).await {
            Ok(Ok(())) => {
                backoff.reset();
                if let Some(b) = pending.take() {
                    ctx.metrics.delivered.inc_by(b.items.len() as u64);
                    for i in b.items {
                        i.ack.done();
                    }
                }
            }
            res => {
                let err = match res {
                    Ok(Err(e)) => e.to_string(),
                    _ => "write timed out".to_owned(),
                };
                conn = None;
                ctx.metrics.connected.set(0);
                if let Some(b) = &pending {
                    ctx.metrics.retried.inc_by(b.items.len() as u64);
                }
                let d = backoff.next_delay();
                tracing::warn!(drain = %id, error = %err, retry_in = ?d, "drain write failed; will send the batch again");
                if !ctx.pause(d).await {
                    break;
                }
            }
        }
    }
    if let Some(b) = pending.take() {
        for i in b.items {
            i.ack.done();
        }
    }
    ctx.metrics.connected.set(0);
}

/// The message for a datagram of at most `max` bytes; cut lines end with ` [truncated]`.
pub(crate) fn fit_datagram(msg: String, max: usize) -> (String, bool) {
    const MARK: &str = " [truncated]";
    if msg.len() <= max {
        return (msg, false);
    }
    let mut cut = max.saturating_sub(MARK.len());
    while cut > 0 && !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut s = msg[..cut].to_owned();
    s.push_str(MARK);
    (s, true)
}

/// `syslog+udp://`: one message per datagram, best effort.
pub(crate) async fn run_udp(ctx: DrainCtx) {
    let id = ctx.target.id.clone();
    let mut backoff = ctx.backoff();
    let url = ctx.target.url.clone();
    let sock = loop {
        let attempt = async {
            let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            let bind = if addr.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = UdpSocket::bind(bind).await?;
            s.connect(addr).await?;
            Ok::<_, std::io::Error>(s)
        };
        match attempt.await {
            Ok(s) => break s,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(drain = %id, error = %e, "UDP drain cannot resolve or bind");
                if !ctx.pause(d).await {
                    return;
                }
            }
        }
    };
    ctx.metrics.connected.set(1);
    let max = ctx.opts.udp_max_bytes;
    while let Some(batch) = ctx.queue.next_batch(BATCH).await {
        let host = ctx.host().to_owned();
        let l10 = ctx.l10(batch.dropped);
        let lines = l10.iter().chain(batch.items.iter().map(|i| &*i.line));
        for line in lines {
            let (msg, truncated) = fit_datagram(wire::encode_message(line, &host), max);
            if truncated {
                tracing::debug!(drain = %id, "line truncated to the datagram limit");
            }
            match sock.send(msg.as_bytes()).await {
                Ok(_) => ctx.metrics.delivered.inc(),
                Err(e) => {
                    ctx.metrics.dropped.inc();
                    tracing::debug!(drain = %id, error = %e, "UDP send failed; line dropped");
                }
            }
        }
        for i in batch.items {
            i.ack.done();
        }
    }
    ctx.metrics.connected.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_truncation_is_marked() {
        assert_eq!(fit_datagram("short".into(), 100), ("short".into(), false));
        let (s, t) = fit_datagram("é".repeat(100), 50);
        assert!(t && s.len() <= 50 && s.ends_with(" [truncated]"));
    }
}
