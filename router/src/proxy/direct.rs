//! The router's own HTTP/1 path for the request most traffic is made of: an HTTP/1.1 request
//! without a body (GET, HEAD, DELETE, …) to a routed app without filters, sent to a dyno over a
//! kept-alive connection from a per-thread pool and answered with a Content-Length, chunked or
//! close-delimited body that is relayed as it comes. pingora's proxy path costs several times
//! nginx's CPU per request for this (BENCHMARKS.md); this one does one parse, one write and one
//! read each way.
//!
//! Anything else goes to pingora untouched — request bodies, upgrades, `Expect`, h2, filters,
//! more than 64 headers, and every answer the router gives itself (redirects, 400, 404, 414,
//! 421, 431, H10/H14): the head is handed over as it was read and pingora checks everything
//! again in its usual order. Only the request limits (per-IP and per-app rate, requests in
//! flight) are answered here, since taking a token is not undone. Heroku's codes, timeouts,
//! retries, passive health, headers and router lines are the same on both paths.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wharf_config::names::normalize_host;
use wharf_config::paths;

use super::{
    Ctx, Edge, Kind, choose_side, error_body, for_backend, hsts_value, may_try_another, refusal,
    sticky_side,
};
use crate::chunked::ChunkScan;
use crate::headers;
use crate::live::{Live, now_ms};
use crate::logline::HCode;
use crate::tls::Sni;

/// Request heads with more headers than this go to pingora.
const MAX_HEADERS: usize = 64;
/// A dyno's response head may have this many headers (more → H25, as pingora answers).
const MAX_RESPONSE_HEADERS: usize = 256;
/// A dyno's response head larger than this → H25.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bytes a client may send ahead (pipelined) while its request is with a dyno.
const MAX_PIPELINED: usize = 64 * 1024;
/// Idle dyno connections are kept this long, at most [`IDLE_PER_DYNO`] per dyno and thread.
const IDLE_FOR: Duration = Duration::from_secs(60);
const IDLE_PER_DYNO: usize = 128;

/// What every request of one client connection shares.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    peer: Option<IpAddr>,
    port: Option<u16>,
    sni: Option<String>,
    tls_version: Option<&'static str>,
}

impl ConnInfo {
    pub(crate) fn of(stream: &Stream) -> ConnInfo {
        let sock = pingora::protocols::GetSocketDigest::get_socket_digest(&**stream);
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let ssl = pingora::protocols::Ssl::get_ssl_digest(&**stream);
        ConnInfo {
            peer: sock
                .as_ref()
                .and_then(|d| inet(d.peer_addr()))
                .map(|a| a.ip()),
            port: sock
                .as_ref()
                .and_then(|d| inet(d.local_addr()))
                .map(|a| a.port()),
            sni: ssl
                .as_ref()
                .and_then(|d| d.extension.get::<Sni>())
                .map(|s| s.0.clone()),
            tls_version: ssl
                .as_ref()
                .map(|d| crate::tls::version_name(d.version.as_ref())),
        }
    }
}

/// How a request left the direct path.
pub(crate) enum Outcome {
    /// Not one for this path: pingora serves it from the same bytes.
    Pingora(Stream, BytesMut),
    /// Served; the connection goes on with the bytes the client sent after the request.
    Served(Stream, BytesMut),
    /// Served (or the client went away); the connection is over.
    Closed,
}

enum Decision {
    Pingora,
    /// The router answers (a request limit, with `Retry-After: 1`): status and body.
    Answer((u16, &'static str)),
    Proxy(Plan),
}

/// A request on its way to a dyno.
struct Plan {
    /// The request head for the dyno, whole.
    head: Vec<u8>,
    idempotent: bool,
    /// A HEAD request: the response has no body whatever it says.
    head_only: bool,
    /// The client asked to close after this request.
    client_close: bool,
}

/// How a dyno's response body ends.
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked(ChunkScan),
    /// At the dyno's close: the client connection closes after it too.
    Close,
}

thread_local! {
    /// Idle dyno connections of this thread, most recently used last. Each pingora worker
    /// thread runs a runtime of its own, so a connection is only used where it was made.
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

#[derive(Default)]
struct Idle {
    by_dyno: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    puts: u32,
}

fn take_idle(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.by_dyno.get_mut(&addr)?;
        while let Some((c, since)) = conns.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(c);
            }
        }
        None
    })
}

fn put_idle(addr: SocketAddr, conn: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let now = Instant::now();
        idle.puts = idle.puts.wrapping_add(1);
        if idle.puts % 4096 == 0 {
            // Dynos that went away (or were not used for a while) leave nothing behind.
            idle.by_dyno.retain(|_, conns| {
                conns.retain(|(_, since)| now.duration_since(*since) < IDLE_FOR);
                !conns.is_empty()
            });
        }
        let conns = idle.by_dyno.entry(addr).or_default();
        if conns
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_FOR)
        {
            conns.retain(|(_, since)| now.duration_since(*since) < IDLE_FOR);
        }
        if conns.len() < IDLE_PER_DYNO {
            conns.push((conn, now));
        }
    })
}

/// An idle connection the dyno has not closed (and sent nothing on).
fn still_open(conn: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn hop_by_hop(name: &str) -> bool {
    headers::HOP_BY_HOP.iter().any(|n| eq(n, name))
}

/// Request headers never passed on: hop-by-hop ones (RFC 9110 §7.6.1; Transfer-Encoding and
/// Upgrade never reach this path) and those the router sets itself.
fn dropped_request_header(name: &str) -> bool {
    const SET_HERE: &[&str] = &[
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-request-start",
        "x-request-id",
    ];
    hop_by_hop(name) || SET_HERE.iter().any(|n| eq(n, name))
}

/// Response headers never passed on; Transfer-Encoding is, since the body is relayed as it
/// is framed.
fn dropped_response_header(name: &str) -> bool {
    (hop_by_hop(name) && !eq(name, "transfer-encoding")) || eq(name, "x-request-id")
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Decide, from the head alone, whether this path serves the request, and fill `ctx` when it
/// does.
fn plan(edge: &Edge, live: &Arc<Live>, raw: &[u8], conn: &ConnInfo, ctx: &mut Ctx) -> Decision {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
        _ => return Decision::Pingora,
    }
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Decision::Pingora;
    };
    if method == "CONNECT" || !target.starts_with('/') || target.len() > 8192 {
        return Decision::Pingora;
    }
    let mut host = None;
    let mut client_close = false;
    let mut request_id = None;
    let mut xff = None;
    let mut named = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        if name.len() + h.value.len() > 8192 {
            return Decision::Pingora;
        }
        if eq(name, "host") {
            if host.is_some() {
                return Decision::Pingora;
            }
            host = Some(h.value);
        } else if eq(name, "content-length") {
            if h.value != b"0" {
                return Decision::Pingora;
            }
        } else if eq(name, "transfer-encoding") || eq(name, "upgrade") || eq(name, "expect") {
            return Decision::Pingora;
        } else if eq(name, "connection") {
            for t in tokens(h.value) {
                if eq(t, "close") {
                    client_close = true;
                } else if eq(t, "upgrade") {
                    return Decision::Pingora;
                } else if !eq(t, "keep-alive") {
                    named.push(t);
                }
            }
        } else if eq(name, "x-request-id") {
            request_id.get_or_insert(h.value);
        } else if eq(name, "x-forwarded-for") {
            xff.get_or_insert(h.value);
        }
    }
    let Some(host) = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(normalize_host)
    else {
        return Decision::Pingora;
    };
    // The Host must be served by the certificate the client's SNI chose (else 421, pingora's).
    if edge.kind == Kind::PublicHttps
        && let Some(sni) = &conn.sni
        && *sni != host
    {
        let same = match (live.certs.lookup(sni), live.certs.lookup(&host)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            return Decision::Pingora;
        }
    }
    let Ok(normalized) = paths::normalize(target) else {
        return Decision::Pingora;
    };
    let Ok(found) = live
        .table
        .find(&host, &normalized, edge.kind == Kind::Internal)
    else {
        return Decision::Pingora;
    };
    let app = &live.table.apps[found.app];
    let app_live = &live.apps[found.app];
    let has_canary = app_live.canary.as_ref().is_some_and(|c| !c.pool.is_empty());
    if !app.filters.is_empty() || (app_live.stable.is_empty() && !has_canary) {
        return Decision::Pingora;
    }

    // Served here from now on.
    ctx.live = Some(live.clone());
    ctx.method.push_str(method);
    ctx.path.push_str(target);
    ctx.host = host;
    ctx.request_id = match request_id {
        Some(id) if headers::valid_request_id(id) => String::from_utf8_lossy(id).into_owned(),
        _ => uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string(),
    };
    if let Some(ip) = conn.peer {
        ctx.fwd = ip.to_string();
    }
    ctx.tls_version = conn.tls_version;
    let limiter = &edge.shared.limits;
    if let Some(ip) = conn.peer
        && let Err(refused) = limiter.request_from(ip, &live.table.settings.limits)
    {
        // Refused before routing, as on pingora's path: no app's request.
        return Decision::Answer(refusal(refused));
    }
    ctx.app = Some(found.app);
    match limiter.request_to(&app.key, &app.limits) {
        Ok(slot) => ctx.in_flight = slot,
        Err(refused) => return Decision::Answer(refusal(refused)),
    }
    let (side, set_sticky) = choose_side(live, found.app, || {
        sticky_side(
            req.headers
                .iter()
                .filter(|h| eq(h.name, "cookie"))
                .map(|h| h.value),
        )
    });
    ctx.side = Some(side);
    ctx.set_sticky = set_sticky;

    let upstream_path = match found.route {
        Some((route, len)) => Some(paths::rewrite(&route.target_path, &normalized, len)),
        None if normalized != target => Some(normalized.into_owned()),
        None => None,
    };
    let mut head = Vec::with_capacity(raw.len() + 256);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(upstream_path.as_deref().unwrap_or(target).as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let forwarded_path = upstream_path.as_deref().is_some_and(|p| p != target);
    for h in req.headers.iter() {
        if dropped_request_header(h.name)
            || named.iter().any(|n| eq(n, h.name))
            || (forwarded_path && eq(h.name, "x-forwarded-path"))
        {
            continue;
        }
        push_header(&mut head, h.name, h.value);
    }
    if forwarded_path {
        let original = target.split('?').next().unwrap_or("/");
        push_header(&mut head, "x-forwarded-path", original.as_bytes());
    }
    match (xff, ctx.fwd.is_empty()) {
        (Some(prev), false) => {
            let mut v = prev.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(ctx.fwd.as_bytes());
            push_header(&mut head, "x-forwarded-for", &v);
        }
        (Some(prev), true) => push_header(&mut head, "x-forwarded-for", prev),
        (None, false) => push_header(&mut head, "x-forwarded-for", ctx.fwd.as_bytes()),
        (None, true) => {}
    }
    push_header(&mut head, "x-forwarded-proto", edge.protocol().as_bytes());
    if let Some(port) = conn.port {
        push_header(&mut head, "x-forwarded-port", port.to_string().as_bytes());
    }
    push_header(
        &mut head,
        "x-request-start",
        ctx.start_ms.to_string().as_bytes(),
    );
    push_header(&mut head, "x-request-id", ctx.request_id.as_bytes());
    head.extend_from_slice(b"via: 1.1 wharf\r\n\r\n");
    Decision::Proxy(Plan {
        head,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ),
        head_only: method == "HEAD",
        client_close,
    })
}

/// A response of the router's own: plain text, the request id, HSTS on HTTPS.
fn own_response(
    status: u16,
    body: &[u8],
    ctx: &Ctx,
    hsts: Option<&str>,
    extra: Option<(&str, &str)>,
    close: bool,
) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    push_header(&mut out, "content-type", b"text/plain; charset=utf-8");
    push_header(
        &mut out,
        "content-length",
        body.len().to_string().as_bytes(),
    );
    push_header(&mut out, "x-request-id", ctx.request_id.as_bytes());
    if let Some((k, v)) = extra {
        push_header(&mut out, k, v.as_bytes());
    }
    if let Some(v) = hsts {
        push_header(&mut out, "strict-transport-security", v.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A dyno's response head made ready for the client.
struct Rewritten {
    status: u16,
    /// The head for the client, whole; the body follows it in the same buffer.
    out: Vec<u8>,
    framing: Framing,
    /// The dyno connection may carry another request after this response.
    reusable: bool,
    close_client_after: bool,
}

/// Check and rewrite a dyno's response head (`head`: up to and with its blank line); `None`: it
/// is malformed (H25). Hop-by-hop headers and those the router sets are replaced; the body's
/// framing is kept as the dyno chose it.
fn rewrite_response(
    head: &[u8],
    plan: &Plan,
    ctx: &Ctx,
    hsts: Option<&str>,
    closing: bool,
) -> Option<Rewritten> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let status = resp.code?;
    let mut reusable = resp.version == Some(1);
    let mut length = None;
    let mut chunked = None;
    let mut named: Vec<&str> = Vec::new();
    for h in resp.headers.iter() {
        if eq(h.name, "content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return None,
            }
        } else if eq(h.name, "transfer-encoding") {
            let last = tokens(h.value).last().unwrap_or("");
            chunked = Some(eq(last, "chunked"));
        } else if eq(h.name, "connection") {
            for t in tokens(h.value) {
                if eq(t, "close") {
                    reusable = false;
                } else if !eq(t, "keep-alive") {
                    named.push(t);
                }
            }
        }
    }
    let framing = if plan.head_only || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(ChunkScan::default()),
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let close_client_after = plan.client_close || closing || matches!(framing, Framing::Close);
    let mut out = Vec::with_capacity(head.len() + 256);
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes exactly three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if dropped_response_header(h.name)
            || named.iter().any(|n| eq(n, h.name))
            || (hsts.is_some() && eq(h.name, "strict-transport-security"))
            || (matches!(framing, Framing::Chunked(_)) && eq(h.name, "content-length"))
        {
            continue;
        }
        push_header(&mut out, h.name, h.value);
    }
    push_header(&mut out, "x-request-id", ctx.request_id.as_bytes());
    out.extend_from_slice(b"via: 1.1 wharf\r\n");
    if let Some(v) = hsts {
        push_header(&mut out, "strict-transport-security", v.as_bytes());
    }
    if ctx.set_sticky
        && let Some(side) = ctx.side
    {
        let cookie = format!(
            "wharf-canary={}; Path=/; HttpOnly; Secure; SameSite=Lax",
            side.as_str()
        );
        push_header(&mut out, "set-cookie", cookie.as_bytes());
    }
    if close_client_after {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(Rewritten {
        status,
        out,
        framing,
        reusable,
        close_client_after,
    })
}

async fn write_client(stream: &mut Stream, bytes: &[u8], within: Duration) -> bool {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    matches!(tokio::time::timeout(within, write).await, Ok(Ok(())))
}

async fn close_client(mut stream: Stream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Why an attempt at a dyno ended without a response head.
enum Failed {
    /// A kept-alive connection the dyno had closed: try again on a new one.
    Stale,
    Code(HCode),
    ClientGone,
}

impl Edge {
    /// Serve the request whose head is `buf[..end]` when it is one for this path; `closing`:
    /// the server is shutting down (the connection closes after the response).
    pub(crate) async fn serve_direct(
        &self,
        stream: Stream,
        mut buf: BytesMut,
        end: usize,
        conn: &ConnInfo,
        closing: bool,
    ) -> Outcome {
        let live = self.shared.live.load_full();
        let mut ctx = <Edge as pingora::proxy::ProxyHttp>::new_ctx(self);
        let decision = plan(self, &live, &buf[..end], conn, &mut ctx);
        if matches!(decision, Decision::Pingora) {
            return Outcome::Pingora(stream, buf);
        }
        let m = &self.shared.metrics;
        m.in_flight.inc();
        m.direct_requests.inc();
        let pending = buf.split_off(end);
        let hsts = if self.kind == Kind::PublicHttps {
            hsts_value(&live.table.settings)
        } else {
            None
        };
        let idle = Duration::from_millis(live.table.settings.idle_timeout_ms);
        match decision {
            Decision::Pingora => unreachable!("handed over above"),
            Decision::Answer((status, body)) => {
                ctx.status = status;
                let out = own_response(
                    status,
                    body.as_bytes(),
                    &ctx,
                    hsts.as_deref(),
                    Some(("retry-after", "1")),
                    closing,
                );
                let mut stream = stream;
                let written = write_client(&mut stream, &out, idle).await;
                self.record(&ctx, status, body.len() as u64);
                if written && !closing {
                    Outcome::Served(stream, pending)
                } else {
                    close_client(stream).await;
                    Outcome::Closed
                }
            }
            Decision::Proxy(plan) => {
                self.proxy_direct(stream, pending, plan, &live, ctx, hsts, closing)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn proxy_direct(
        &self,
        mut stream: Stream,
        mut pending: BytesMut,
        plan: Plan,
        live: &Arc<Live>,
        mut ctx: Ctx,
        hsts: Option<String>,
        closing: bool,
    ) -> Outcome {
        let s = &live.table.settings;
        let idle = Duration::from_millis(s.idle_timeout_ms);
        let app_idx = ctx.app.expect("planned requests are routed");
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut addr = None;
        let mut fresh_only = false;
        // One dyno after another (a second only when connecting to the first failed), and on
        // one dyno a new connection when a kept-alive one turned out closed.
        let (mut dyno, dyno_addr, head_len) = loop {
            let a = match addr {
                Some(a) => a,
                None => {
                    let pool = live.apps[app_idx].pool(ctx.side);
                    let Some(b) = pool.pick(now_ms(), &ctx.tried) else {
                        let code = ctx.code.unwrap_or(HCode::H21);
                        return self.fail(stream, ctx, code, hsts).await;
                    };
                    ctx.tried.push(b.address);
                    ctx.dyno.clear();
                    ctx.dyno.push_str(&b.process);
                    addr = Some(b.address);
                    b.address
                }
            };
            let pooled = if fresh_only { None } else { take_idle(a) };
            let pooled = pooled.filter(|c| plan.idempotent || still_open(c));
            let reused = pooled.is_some();
            let mut dyno = match pooled {
                Some(c) => {
                    ctx.connect_ms = Some(0);
                    c
                }
                None => match self.connect(&mut ctx, live, a).await {
                    Ok(c) => c,
                    Err(code) => {
                        ctx.code = Some(code);
                        if may_try_another(live, &ctx) {
                            addr = None;
                            continue;
                        }
                        return self.fail(stream, ctx, code, hsts).await;
                    }
                },
            };
            for_backend(live, ctx.app, a, |b| b.mark_up());
            ctx.code = None;
            rbuf.clear();
            let exchange = self
                .exchange(&mut stream, &mut pending, &mut dyno, &plan, &mut rbuf, live)
                .await;
            match exchange {
                Ok(head_len) => break (dyno, a, head_len),
                Err(Failed::Stale) if reused && plan.idempotent => fresh_only = true,
                Err(Failed::Stale) => return self.fail(stream, ctx, HCode::H13, hsts).await,
                Err(Failed::Code(code)) => return self.fail(stream, ctx, code, hsts).await,
                Err(Failed::ClientGone) => {
                    ctx.code = Some(HCode::H27);
                    ctx.status = 499;
                    self.record(&ctx, 499, 0);
                    return Outcome::Closed;
                }
            }
        };

        // The response head, checked and rewritten.
        let Some(Rewritten {
            status,
            mut out,
            mut framing,
            mut reusable,
            close_client_after,
        }) = rewrite_response(&rbuf[..head_len], &plan, &ctx, hsts.as_deref(), closing)
        else {
            return self.fail(stream, ctx, HCode::H25, hsts).await;
        };
        ctx.status = status;
        ctx.response_started = true;
        rbuf.advance(head_len);

        // The body, relayed as it comes.
        let mut sent = 0u64;
        loop {
            let (take, done) = match &mut framing {
                Framing::Empty => (0, true),
                Framing::Length(left) => {
                    let take = (*left).min(rbuf.len() as u64);
                    *left -= take;
                    (take as usize, *left == 0)
                }
                Framing::Chunked(scan) => match scan.feed(&rbuf) {
                    Ok(Some(n)) => (n, true),
                    Ok(None) => (rbuf.len(), false),
                    Err(_) => {
                        ctx.code = Some(HCode::H25);
                        break;
                    }
                },
                Framing::Close => (rbuf.len(), false),
            };
            if take < rbuf.len() {
                // Bytes past the end of the response: this connection is not to be trusted.
                reusable = false;
            }
            out.extend_from_slice(&rbuf[..take]);
            sent += take as u64;
            rbuf.clear();
            if !out.is_empty() {
                if !write_client(&mut stream, &out, idle).await {
                    ctx.code = Some(HCode::H27);
                    ctx.status = 499;
                    break;
                }
                out.clear();
            }
            if done {
                if reusable {
                    put_idle(dyno_addr, dyno);
                }
                self.record(&ctx, status, sent);
                if close_client_after {
                    close_client(stream).await;
                    return Outcome::Closed;
                }
                return Outcome::Served(stream, pending);
            }
            match tokio::time::timeout(idle, dyno.read_buf(&mut rbuf)).await {
                Err(_) => {
                    ctx.code = Some(HCode::H15);
                    break;
                }
                Ok(Ok(0)) if matches!(framing, Framing::Close) => {
                    self.record(&ctx, status, sent);
                    close_client(stream).await;
                    return Outcome::Closed;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    ctx.code = Some(HCode::H13);
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
        // Cut mid-response: the client sees the connection close.
        let status = if ctx.code == Some(HCode::H27) {
            499
        } else {
            status
        };
        self.record(&ctx, status, sent);
        close_client(stream).await;
        Outcome::Closed
    }

    /// Send the request and read the response head into `rbuf` (its length); while the dyno
    /// works, the client's further bytes are kept and its going away noticed (H27).
    async fn exchange(
        &self,
        stream: &mut Stream,
        pending: &mut BytesMut,
        dyno: &mut TcpStream,
        plan: &Plan,
        rbuf: &mut BytesMut,
        live: &Live,
    ) -> Result<usize, Failed> {
        let s = &live.table.settings;
        let idle = Duration::from_millis(s.idle_timeout_ms);
        match tokio::time::timeout(idle, dyno.write_all(&plan.head)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Failed::Stale),
            Err(_) => return Err(Failed::Code(HCode::H12)),
        }
        let first_byte = tokio::time::sleep(Duration::from_millis(s.first_byte_timeout_ms));
        tokio::pin!(first_byte);
        loop {
            tokio::select! {
                biased;
                r = dyno.read_buf(rbuf) => match r {
                    Ok(0) | Err(_) if rbuf.is_empty() => return Err(Failed::Stale),
                    Ok(0) | Err(_) => return Err(Failed::Code(HCode::H13)),
                    Ok(_) => {
                        let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                        let mut resp = httparse::Response::new(&mut slots);
                        match resp.parse(rbuf) {
                            Ok(httparse::Status::Complete(n)) => match resp.code {
                                // Informational answers (100, 102, 103) are not passed on.
                                Some(c) if (100..200).contains(&c) && c != 101 => {
                                    rbuf.advance(n);
                                }
                                Some(101) | None => return Err(Failed::Code(HCode::H25)),
                                Some(_) => return Ok(n),
                            },
                            Ok(httparse::Status::Partial) if rbuf.len() <= MAX_RESPONSE_HEAD => {}
                            _ => return Err(Failed::Code(HCode::H25)),
                        }
                    }
                },
                _ = &mut first_byte => return Err(Failed::Code(HCode::H12)),
                r = stream.read_buf(pending), if pending.len() < MAX_PIPELINED => {
                    match r {
                        Ok(0) | Err(_) => return Err(Failed::ClientGone),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    /// A proxy failure before any of the response went out: Heroku's answer for `code`, then
    /// the connection closes (as pingora does after a failure).
    async fn fail(
        &self,
        mut stream: Stream,
        mut ctx: Ctx,
        code: HCode,
        hsts: Option<String>,
    ) -> Outcome {
        ctx.code = Some(code);
        let status = code.status();
        ctx.status = status;
        let body = error_body(Some(code), status);
        let out = own_response(status, body, &ctx, hsts.as_deref(), None, true);
        let idle = ctx.live.as_ref().map_or(Duration::from_secs(55), |l| {
            Duration::from_millis(l.table.settings.idle_timeout_ms)
        });
        let _ = write_client(&mut stream, &out, idle).await;
        self.record(&ctx, status, body.len() as u64);
        close_client(stream).await;
        Outcome::Closed
    }
}
