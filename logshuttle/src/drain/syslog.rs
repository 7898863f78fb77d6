//! Syslog drains: TCP and TLS with RFC 6587 octet counting, reconnecting with jittered
//! back-off, keeping what was not written and sending again what a connection reset before it
//! was confirmed; UDP with one message per datagram.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use wharf_config::DrainKind;

use super::{Batch, DrainCtx, Item};
use crate::wire;

/// Lines written at once.
const BATCH: usize = 512;
/// `SO_SNDBUF` of a stream drain's socket (the kernel doubles it).
const SEND_BUFFER: usize = 256 * 1024;

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
    since: Instant,
}

async fn connect(ctx: &DrainCtx) -> std::io::Result<Link> {
    let url = &ctx.target.url;
    let tcp = connect_tcp(&url.host, url.port, ctx.opts.connect_timeout).await?;
    // A fixed send buffer (no autotuning to megabytes): what a receiver that stops reading
    // can swallow before our writes block and time out stays small.
    socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER)?;
    let std = tcp.into_std()?;
    let peek = std.try_clone()?;
    let tcp = TcpStream::from_std(std)?;
    let io = connect_io(ctx, tcp).await?;
    Ok(Link {
        io,
        peek,
        since: Instant::now(),
    })
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

/// What a look at an open connection finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Up,
    /// Closed in order (FIN, or a TLS close): the receiver read everything before closing.
    Closed,
    /// Reset, or closed with our bytes unread: what it was last sent may be lost.
    Reset,
}

/// Syslog receivers never send, so a readable socket means end of stream or an error (or TLS
/// records, which the TLS reader takes). A pending socket error (`SO_ERROR`) after an orderly
/// close means the receiver reset the connection on bytes that arrived after it.
fn peer_state(link: &mut Link) -> Peer {
    let mut b = [0u8; 1];
    let closed = || match link.peek.take_error() {
        Ok(None) => Peer::Closed,
        _ => Peer::Reset,
    };
    match link.peek.peek(&mut b) {
        Ok(0) => closed(),
        Ok(_) => {
            // Data (TLS alerts, session tickets): let the TLS layer consume it.
            let mut buf = [0u8; 512];
            match link.io.read(&mut buf).now_or_never() {
                Some(Ok(0)) => closed(),
                Some(Err(_)) => Peer::Reset,
                _ => Peer::Up,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Peer::Up,
        Err(_) => Peer::Reset,
    }
}

fn encode(ctx: &DrainCtx, enc: &mut wire::Encoder, batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    let host = ctx.host();
    if let Some(l10) = ctx.l10(batch.dropped) {
        enc.octet_counted(out, &l10, host);
    }
    for i in &batch.items {
        enc.octet_counted(out, i.line(), host);
    }
}

/// Syslog over TCP has no acknowledgement: a batch the kernel took is only known to have
/// reached the receiver once the connection is seen still up this long after the write (or
/// closed in order). A receiver that resets the connection before that gets the batch again.
const CONFIRM_AFTER: Duration = Duration::from_millis(500);
/// Written lines waiting for that confirmation, at most. A connection up for `CONFIRM_AFTER`
/// has shown it stays: beyond this the oldest count as delivered (a fast stream is confirmed
/// by volume, not only by time). A younger one gets no more until it has shown that.
const UNCONFIRMED_LINES: usize = 8 * BATCH;
/// How often an idle drain looks at its connection (so `connected` tells the truth and
/// written lines get confirmed without more traffic), and a young one that used its allowance.
const IDLE_CHECK: Duration = Duration::from_millis(250);
const PROBE: Duration = Duration::from_millis(50);

/// Bytes written and the lines they carry, not yet confirmed.
struct Written {
    at: Instant,
    bytes: Vec<u8>,
    items: Vec<Item>,
}

/// What a stream drain holds outside its buffer.
struct Held {
    /// Encoded and not yet written (the first write, or a retry after a failure).
    out: Vec<u8>,
    items: Vec<Item>,
    /// Written on the current connection and not yet confirmed, oldest first.
    written: VecDeque<Written>,
    written_lines: usize,
}

impl Held {
    /// Count as delivered the written batches, oldest first, until `keep` holds one back;
    /// the number of lines confirmed.
    fn confirm(&mut self, ctx: &DrainCtx, mut keep: impl FnMut(&Written, usize) -> bool) -> usize {
        let mut n = 0;
        while let Some(w) = self.written.front() {
            if keep(w, self.written_lines) {
                break;
            }
            let w = self.written.pop_front().expect("front");
            self.written_lines -= w.items.len();
            n += w.items.len();
            ctx.metrics.delivered.inc_by(w.items.len() as u64);
            for i in w.items {
                i.done();
            }
        }
        n
    }

    /// The connection is gone without confirming what was written: send it again, first.
    fn resend_written(&mut self, ctx: &DrainCtx) {
        if self.written.is_empty() {
            return;
        }
        let mut out = Vec::new();
        let mut items = Vec::new();
        for w in self.written.drain(..) {
            out.extend_from_slice(&w.bytes);
            items.extend(w.items);
        }
        self.written_lines = 0;
        ctx.metrics.retried.inc_by(items.len() as u64);
        out.extend_from_slice(&self.out);
        items.append(&mut self.items);
        self.out = out;
        self.items = items;
    }
}

/// `syslog://`, `syslog+tcp://`, `syslog+tls://`.
pub(crate) async fn run_stream(ctx: DrainCtx) {
    let id = ctx.target.id.clone();
    let mut backoff = ctx.backoff();
    let mut conn: Option<Link> = None;
    let mut enc = wire::Encoder::default();
    let mut held = Held {
        out: Vec::with_capacity(64 * 1024),
        items: Vec::new(),
        written: VecDeque::new(),
        written_lines: 0,
    };
    let lost = |conn: &mut Option<Link>| {
        *conn = None;
        ctx.metrics.connected.set(0);
        ctx.metrics.reconnects.inc();
    };
    loop {
        if let Some(c) = conn.as_mut() {
            match peer_state(c) {
                Peer::Up => {
                    let now = Instant::now();
                    let proven = now.duration_since(c.since) >= CONFIRM_AFTER;
                    let young = |w: &Written, lines: usize| {
                        now.duration_since(w.at) < CONFIRM_AFTER
                            && (!proven || lines <= UNCONFIRMED_LINES)
                    };
                    if held.confirm(&ctx, young) > 0 {
                        backoff.reset();
                    }
                }
                Peer::Closed => {
                    tracing::info!(drain = %id, "drain peer closed the connection; reconnecting");
                    if held.confirm(&ctx, |_, _| false) > 0 {
                        backoff.reset();
                    }
                    lost(&mut conn);
                }
                Peer::Reset if held.written.is_empty() => {
                    // Nothing unconfirmed (an idle connection cut by a middlebox, say).
                    tracing::info!(drain = %id, "drain peer reset an idle connection; reconnecting");
                    lost(&mut conn);
                }
                Peer::Reset => {
                    let n = held.written_lines;
                    held.resend_written(&ctx);
                    lost(&mut conn);
                    let d = backoff.next_delay();
                    tracing::warn!(drain = %id, resend = n, retry_in = ?d, "drain peer reset the connection; will send the unconfirmed lines again");
                    if !ctx.pause(d).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let young = conn
            .as_ref()
            .is_some_and(|c| c.since.elapsed() < CONFIRM_AFTER);
        if young && held.written_lines >= UNCONFIRMED_LINES {
            // A young connection used its allowance: no more until it has shown it stays up.
            if !ctx.pause(PROBE).await {
                break;
            }
            continue;
        }
        if held.out.is_empty() {
            // With a connection, wake now and then to look at it (`next_batch` is cancel safe).
            let wait = if conn.is_some() {
                IDLE_CHECK
            } else {
                Duration::MAX
            };
            match tokio::time::timeout(wait, ctx.queue.next_batch(BATCH)).await {
                Ok(Some(b)) => {
                    encode(&ctx, &mut enc, &b, &mut held.out);
                    held.items = b.items;
                }
                Ok(None) => break,
                Err(_idle) => {}
            }
            // Look at the connection once more right before writing.
            continue;
        }
        if conn.is_none() {
            match connect(&ctx).await {
                Ok(c) => {
                    tracing::info!(drain = %id, url = %ctx.target.url, "drain connected");
                    ctx.metrics.connected.set(1);
                    conn = Some(c);
                }
                Err(e) => {
                    ctx.metrics.reconnects.inc();
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
            c.io.write_all(&held.out).await?;
            c.io.flush().await
        };
        match tokio::time::timeout(ctx.opts.write_timeout, write).await {
            Ok(Ok(())) => {
                let bytes = std::mem::replace(&mut held.out, Vec::with_capacity(64 * 1024));
                let items = std::mem::take(&mut held.items);
                held.written_lines += items.len();
                held.written.push_back(Written {
                    at: Instant::now(),
                    bytes,
                    items,
                });
            }
            res => {
                let err = match res {
                    Ok(Err(e)) => e.to_string(),
                    _ => "write timed out".to_owned(),
                };
                lost(&mut conn);
                ctx.metrics.retried.inc_by(held.items.len() as u64);
                held.resend_written(&ctx);
                let d = backoff.next_delay();
                tracing::warn!(drain = %id, error = %err, retry_in = ?d, "drain write failed; will send the batch again");
                if !ctx.pause(d).await {
                    break;
                }
            }
        }
    }
    // Closed: the drain is gone; what it holds is accounted for.
    for i in held
        .written
        .drain(..)
        .flat_map(|w| w.items)
        .chain(held.items.drain(..))
    {
        i.done();
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
        let lines = l10.iter().chain(batch.items.iter().map(|i| i.line()));
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
            i.done();
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
