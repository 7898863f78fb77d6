//! HTTP/2 connections from clients, served by the router's own accept loop (pingora's, plus a
//! flood guard) so that an abusive connection can be told `GOAWAY ENHANCE_YOUR_CALM` and closed.
//!
//! The h2 crate bounds what it holds (streams in flight: 100, header lists: 64 KiB, streams
//! reset before they were accepted: 20, CONTINUATION runs), but not work that stays within those
//! bounds: a client that opens a stream and resets it at once (CVE-2023-44487, "rapid reset")
//! never has more than one stream open, yet each one becomes a request the router starts; a
//! client that sends SETTINGS or PING frames without end gets every one answered. The guard
//! reads the client's frame headers as they pass (no copy, no decoding) and keeps a token
//! bucket per connection for client resets and one for SETTINGS/PING; a connection over
//! either, or with [`MAX_REJECTED`] malformed requests, gets GOAWAY with ENHANCE_YOUR_CALM and
//! is closed within [`GOAWAY_GRACE`], counted in `wharf_router_limited_total{limit="h2_flood"}`.
//! A connection with no stream open for `client_h2_idle_timeout_ms` gets GOAWAY with NO_ERROR
//! and is closed the same way (pingora's own `h2_idle_timeout` is not used by this loop).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{self as h2server, H2Accept, HttpSession};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest,
    Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wharf_config::Rate;

use crate::limits::{Bucket, Limit, Limiter};

/// Streams a client may reset at once, and per second after that.
const RESETS: Rate = Rate {
    per_sec: 50,
    burst: 200,
};
/// SETTINGS and PING frames (not acknowledgements) a client may send at once, and per second.
const CONTROL: Rate = Rate {
    per_sec: 5,
    burst: 50,
};
/// Requests pingora refused while accepting them (bad authority, forbidden bytes) before the
/// connection goes: pingora's own per-connection budget, which its public accept call does
/// not keep across calls.
const MAX_REJECTED: usize = 32;
/// How long an abusive connection gets to take its GOAWAY before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// Streams in flight per connection (pingora's default, said here).
const MAX_CONCURRENT_STREAMS: u32 = 100;

const PREFACE_LEN: usize = 24;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// What the guard decided about a connection.
#[derive(Debug, Default)]
struct Verdict {
    abusive: AtomicBool,
    notify: tokio::sync::Notify,
    /// The router sent GOAWAY to end the connection (abusive or idle): close it lingering.
    closing: AtomicBool,
}

/// The streams of a connection being served, and a wake-up when the last one ends.
#[derive(Debug, Default)]
struct Open {
    streams: AtomicUsize,
    none: tokio::sync::Notify,
}

/// One stream being served; its drop ends it.
struct Served(Arc<Open>);

impl Served {
    fn start(open: &Arc<Open>) -> Served {
        open.streams.fetch_add(1, Ordering::AcqRel);
        Served(open.clone())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_one();
        }
    }
}

/// The client's frame headers, read from the bytes h2 reads.
#[derive(Debug)]
struct FrameReader {
    /// Preface bytes still to skip.
    preface: usize,
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
    resets: Bucket,
    control: Bucket,
}

impl FrameReader {
    fn new(now: Instant) -> FrameReader {
        FrameReader {
            preface: PREFACE_LEN,
            head: [0; 9],
            head_len: 0,
            payload: 0,
            resets: Bucket::full(RESETS, now),
            control: Bucket::full(CONTROL, now),
        }
    }

    /// Feed bytes read from the client; `Some(what)` once the connection is over a budget.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<&'static str> {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    let h = self.head;
                    self.payload =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    if let Some(what) = self.frame(h[3], h[4]) {
                        return Some(what);
                    }
                }
            }
        }
        None
    }

    fn frame(&mut self, kind: u8, flags: u8) -> Option<&'static str> {
        let now = Instant::now();
        match kind {
            RST_STREAM if !self.resets.take(RESETS, now) => Some("rapid_reset"),
            SETTINGS | PING if flags & ACK == 0 && !self.control.take(CONTROL, now) => {
                Some(if kind == SETTINGS {
                    "settings_flood"
                } else {
                    "ping_flood"
                })
            }
            _ => None,
        }
    }
}

/// The client connection as h2 sees it: every byte passes through unchanged, and the frame
/// headers are counted on the way.
struct Watched {
    /// Taken only when dropped (see `Drop`).
    inner: Option<Stream>,
    frames: FrameReader,
    verdict: Arc<Verdict>,
    reason: Arc<parking_lot::Mutex<Option<&'static str>>>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Watched {
    fn io(&mut self) -> &mut Stream {
        self.inner.as_mut().expect("taken only on drop")
    }

    fn io_ref(&self) -> &Stream {
        self.inner.as_ref().expect("taken only on drop")
    }
}

/// How long, and for how many bytes, a connection the router ended with GOAWAY is read and
/// discarded before it is closed (nginx's lingering close). Closing a socket with unread input
/// makes the kernel reset the connection and drop what it had not sent yet: the GOAWAY, when a
/// client's full receive window held it back, and the client never learns why it was cut off.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.verdict.closing.load(Ordering::Acquire) {
            return;
        }
        let (Some(io), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(linger(io));
    }
}

/// Read and discard what the client still sends, until it closes, [`LINGER`] passes or
/// [`LINGER_BYTES`] were read; then close.
async fn linger(mut io: Stream) {
    use tokio::io::AsyncReadExt as _;
    let by = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(by, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(self.io()).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && !self.verdict.abusive.load(Ordering::Relaxed)
        {
            let this = &mut *self;
            if let Some(what) = this.frames.feed(&buf.filled()[before..]) {
                *this.reason.lock() = Some(what);
                this.verdict.abusive.store(true, Ordering::Release);
                this.verdict.notify.notify_one();
            }
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io_ref().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.io().shutdown().await
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.io_ref().id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.io_ref().get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.io_ref().get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.io_ref().selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io_ref().get_timing_digest()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io_ref().get_socket_digest()
    }
}

#[async_trait]
impl Peek for Watched {}

/// The h2 settings the router serves clients with.
fn options() -> h2server::H2Options {
    let mut o = h2server::default_h2_options();
    o.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    o
}

/// Serve one client h2 connection: accept its streams and hand each to `app` on a task of its
/// own, as pingora does, until the client is done, the server shuts down, or the guard finds
/// the connection abusive or idle. The client's preface and first SETTINGS must be in by
/// `handshake_by`; a connection with no stream open for `idle` gets GOAWAY NO_ERROR.
pub async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    limiter: &Limiter,
    handshake_by: Instant,
    idle: Duration,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let peer = digest
        .socket_digest
        .as_ref()
        .and_then(|d| d.peer_addr().cloned());
    let verdict = Arc::new(Verdict::default());
    let reason = Arc::new(parking_lot::Mutex::new(None));
    let watched: Stream = Box::new(Watched {
        inner: Some(stream),
        frames: FrameReader::new(Instant::now()),
        verdict: verdict.clone(),
        reason: reason.clone(),
    });
    let handshake = h2server::handshake(watched, Some(options()));
    let mut conn = match tokio::time::timeout_at(handshake_by.into(), handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(_)) => return,
        Err(_) => {
            limiter.refused(Limit::HeaderTimeout);
            tracing::info!(peer = ?peer, "h2 preface not in within the header timeout: closed");
            return;
        }
    };
    let mut shutdown = shutdown.clone();
    let mut shutting_down = false;
    let mut rejected = 0usize;
    let mut closing_by: Option<Instant> = None;
    let open = Arc::new(Open::default());
    // When the connection last had no stream open; `None` while one is.
    let mut idle_since = Some(Instant::now());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed(), if !shutting_down => {
                conn.graceful_shutdown();
                shutting_down = true;
                continue;
            }
            _ = verdict.notify.notified(), if closing_by.is_none() => {
                let what = reason.lock().unwrap_or("malformed_requests");
                tracing::warn!(peer = ?peer, what, "h2 client abusive: GOAWAY ENHANCE_YOUR_CALM, closing");
                limiter.refused(Limit::H2Flood);
                verdict.closing.store(true, Ordering::Release);
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                closing_by = Some(Instant::now() + GOAWAY_GRACE);
                continue;
            }
            _ = tokio::time::sleep_until(closing_by.unwrap_or_else(Instant::now).into()), if closing_by.is_some() => {
                return;
            }
            _ = open.none.notified(), if idle_since.is_none() => {
                if open.streams.load(Ordering::Acquire) == 0 {
                    idle_since = Some(Instant::now());
                }
                continue;
            }
            _ = tokio::time::sleep_until(idle_since.map_or_else(Instant::now, |t| t + idle).into()),
                if idle_since.is_some() && closing_by.is_none() =>
            {
                tracing::debug!(peer = ?peer, "h2 connection idle: GOAWAY NO_ERROR, closing");
                verdict.closing.store(true, Ordering::Release);
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                closing_by = Some(Instant::now() + GOAWAY_GRACE);
                continue;
            }
            a = HttpSession::from_h2_conn(&mut conn, digest.clone()) => a,
        };
        match accepted {
            Err(_) | Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                rejected += 1;
                if rejected >= MAX_REJECTED && closing_by.is_none() {
                    verdict.abusive.store(true, Ordering::Release);
                    verdict.notify.notify_one();
                }
            }
            // After the GOAWAY, streams the client still opens are not served.
            Ok(Some(H2Accept::Session(_))) if closing_by.is_some() => {}
            Ok(Some(H2Accept::Session(session))) => {
                let app = app.clone();
                let shutdown = shutdown.clone();
                let served = Served::start(&open);
                idle_since = None;
                tokio::spawn(async move {
                    app.process_new_http(ServerSession::new_http2(session), &shutdown)
                        .await;
                    drop(served);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn resets_over_the_budget_are_a_flood_however_the_bytes_are_cut() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, &[0; 6]));
        for _ in 0..RESETS.burst + 5 {
            bytes.extend(frame(0x1, 0x5, &[0x82, 0x84, 0x87]));
            bytes.extend(frame(RST_STREAM, 0, &[0, 0, 0, 8]));
        }
        for cut in [1, 7, 9, 4096] {
            let mut r = FrameReader::new(Instant::now());
            let found = bytes.chunks(cut).find_map(|c| r.feed(c));
            assert_eq!(found, Some("rapid_reset"), "cut {cut}");
        }
        // Under the budget: nothing.
        let mut r = FrameReader::new(Instant::now());
        let few: Vec<u8> = (0..10)
            .flat_map(|_| frame(RST_STREAM, 0, &[0, 0, 0, 8]))
            .collect();
        assert_eq!(r.feed(&bytes[..PREFACE_LEN]), None);
        assert_eq!(r.feed(&few), None);
    }

    #[test]
    fn settings_acks_are_free_and_settings_are_not() {
        let mut r = FrameReader::new(Instant::now());
        assert_eq!(r.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        let acks: Vec<u8> = (0..1000).flat_map(|_| frame(SETTINGS, ACK, &[])).collect();
        assert_eq!(r.feed(&acks), None);
        let floods: Vec<u8> = (0..100).flat_map(|_| frame(SETTINGS, 0, &[])).collect();
        assert_eq!(r.feed(&floods), Some("settings_flood"));
    }
}
