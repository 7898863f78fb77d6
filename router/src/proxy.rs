//! The one `ProxyHttp` implementation: phases used as pingora intends. `request_filter`
//! answers what never reaches a dyno (redirects, 4xx, 404, H10/H14, filters), `upstream_peer`
//! picks the side and the dyno, the header filters add and strip headers, `fail_to_proxy` maps
//! every failure to a Heroku code in one place, and `logging` writes the router line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::ErrorType;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use wharf_config::names::normalize_host;
use wharf_config::paths::{self, PathError};
use wharf_config::router_table::NotFound;
use wharf_config::{LogLine, Source};

use crate::canary::{Side, goes_to_canary};
use crate::filters::{self, FilterOutcome};
use crate::headers;
use crate::live::{Live, now_ms};
use crate::logline::{self, HCode};
use crate::shared::Shared;
use crate::tls::Sni;

mod direct;
pub(crate) use direct::{ConnInfo, Outcome};

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Public HTTPS: every public app and site.
    PublicHttps,
    /// Public plain HTTP: redirects to HTTPS, nothing else.
    PublicHttp,
    /// Internal: apps in internal spaces and internal sites only.
    Internal,
}

#[derive(Debug, Clone)]
pub struct Edge {
    pub kind: Kind,
    pub shared: Arc<Shared>,
}

/// Per-request state.
#[derive(Debug)]
pub struct Ctx {
    start: Instant,
    start_ms: u64,
    live: Option<Arc<Live>>,
    host: String,
    method: String,
    path: String,
    request_id: String,
    fwd: String,
    app: Option<usize>,
    side: Option<Side>,
    upstream_path: Option<String>,
    tried: Vec<SocketAddr>,
    dyno: String,
    connect_started: Option<Instant>,
    connect_ms: Option<u64>,
    code: Option<HCode>,
    status: u16,
    response_started: bool,
    upgrade: bool,
    tls_version: Option<&'static str>,
    cors: Option<filters::CorsMatch>,
    set_sticky: bool,
    body_bytes: u64,
    max_body: u64,
    upstream_timer: Option<UpstreamTimer>,
    /// Requests on their way to a dyno: when the body must be in (408 H28 beyond); for
    /// HTTP/1 kept by the downstream read timeout, for h2 by the upstream timer.
    body_deadline: Option<crate::client::BodyDeadline>,
    /// The request's slot among its app's requests in flight, given back when the context
    /// drops.
    in_flight: Option<crate::limits::InFlightGuard>,
}

/// The deadlines of one request on its way to a dyno, kept by one task per attempt: first the
/// request body's (h2 only: an HTTP/1 body has the downstream read timeout, which pingora does
/// not apply to h2 streams), then the first byte's (H12), which starts once the whole request
/// is with the dyno (Heroku's countdown "begins when the request leaves the router") and only
/// when it is shorter than the idle one (H15), pingora having one read timeout per upstream
/// connection, set to the idle timeout between response chunks. When a deadline passes, the
/// upstream socket is shut down so pingora's wait on it ends at once, and [`UpstreamTimer::fired`]
/// says which.
#[derive(Debug)]
struct UpstreamTimer {
    state: Arc<TimerState>,
    task: tokio::task::JoinHandle<()>,
    /// Whether the task keeps a body deadline, and so wants every chunk's progress; without
    /// one it waits only for the body's end.
    body_deadline: bool,
}

#[derive(Debug, Default)]
struct TimerState {
    /// Request body bytes received so far; [`BODY_DONE`] once the body is complete.
    body: AtomicU64,
    body_progress: tokio::sync::Notify,
    /// [`FIRED_FIRST_BYTE`] or [`FIRED_BODY`] once a deadline passed.
    fired: AtomicU8,
}

const BODY_DONE: u64 = u64::MAX;
const FIRED_FIRST_BYTE: u8 = 1;
const FIRED_BODY: u8 = 2;

/// Which of an upstream attempt's deadlines passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fired {
    FirstByte,
    Body,
}

impl UpstreamTimer {
    /// `None` when the request has neither deadline to keep.
    fn arm(
        fd: std::os::unix::io::RawFd,
        first_byte: Option<Duration>,
        body: Option<crate::client::BodyDeadline>,
        body_bytes: u64,
        body_done: bool,
    ) -> Option<UpstreamTimer> {
        if first_byte.is_none() && (body.is_none() || body_done) {
            return None;
        }
        let state = Arc::new(TimerState {
            body: AtomicU64::new(if body_done { BODY_DONE } else { body_bytes }),
            ..TimerState::default()
        });
        let s = state.clone();
        let body_deadline = body.is_some();
        let task = tokio::spawn(async move {
            let fire = |what: u8| {
                s.fired.store(what, Ordering::Release);
                // The socket is still this request's: the timer is cancelled as soon as the
                // response head arrives or the request ends, before the connection is pooled
                // or closed.
                let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            };
            loop {
                let bytes = s.body.load(Ordering::Acquire);
                if bytes == BODY_DONE {
                    break;
                }
                let wait = match &body {
                    Some(d) => match d.remaining(bytes, Instant::now()) {
                        Some(wait) => Some(wait),
                        None => return fire(FIRED_BODY),
                    },
                    None => None,
                };
                match wait {
                    Some(wait) => {
                        let _ = pingora::prelude::timeout(wait, s.body_progress.notified()).await;
                    }
                    None => s.body_progress.notified().await,
                }
            }
            let Some(after) = first_byte else { return };
            pingora::prelude::sleep(after).await;
            fire(FIRED_FIRST_BYTE);
        });
        Some(UpstreamTimer {
            state,
            task,
            body_deadline,
        })
    }

    /// The request body got this far (`done`: all of it).
    fn body(&self, bytes: u64, done: bool) {
        if !done && !self.body_deadline {
            return;
        }
        let v = if done { BODY_DONE } else { bytes };
        if self.state.body.swap(v, Ordering::AcqRel) != v {
            self.state.body_progress.notify_one();
        }
    }

    fn fired(&self) -> Option<Fired> {
        match self.state.fired.load(Ordering::Acquire) {
            FIRED_FIRST_BYTE => Some(Fired::FirstByte),
            FIRED_BODY => Some(Fired::Body),
            _ => None,
        }
    }
}

impl Drop for UpstreamTimer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ctx {
    /// Stop the upstream timer (the response head arrived, or the attempt is over); which
    /// deadline had passed, if one had.
    fn disarm_upstream_timer(&mut self) -> Option<Fired> {
        self.upstream_timer.take().and_then(|t| {
            t.task.abort();
            t.fired()
        })
    }
}

/// The upstream read timeout pingora applies to every read, and the first-byte deadline the
/// router keeps itself when that one is shorter.
fn upstream_timeouts(first_byte_ms: u64, idle_ms: u64) -> (Duration, Option<Duration>) {
    let read = first_byte_ms.max(idle_ms);
    let first = (first_byte_ms < read).then(|| Duration::from_millis(first_byte_ms));
    (Duration::from_millis(read), first)
}

impl Edge {
    fn protocol(&self) -> &'static str {
        match self.kind {
            Kind::PublicHttps => "https",
            Kind::PublicHttp | Kind::Internal => "http",
        }
    }

    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: &'static str,
        extra: &[(&'static str, String)],
    ) -> Result<bool> {
        let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        for (k, v) in extra {
            resp.insert_header(*k, v.as_str())?;
        }
        self.add_hsts(&mut resp, ctx)?;
        ctx.status = status;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
        Ok(true)
    }

    async fn respond_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        code: HCode,
    ) -> Result<bool> {
        ctx.code = Some(code);
        let body = match code {
            HCode::H14 => "No web processes running\n",
            HCode::H10 => "Application error: the app crashed\n",
            HCode::H31 => "Misdirected Request: the host does not match the TLS server name\n",
            _ => "Application error\n",
        };
        self.respond(session, ctx, code.status(), body, &[]).await
    }

    /// HTTP/1.1 Upgrade (websockets) is proxied here, not by pingora: pingora 0.9.1 ends an
    /// upgraded session when it reads the dyno's 101 before it has handed over the request's
    /// (empty) body end — both are ready at once when the dyno answers quickly, and its
    /// `select!` then picks one at random. The client saw EOF right after the 101.
    async fn proxy_upgrade(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = ctx.live.clone().expect("request_filter ran");
        let s = &live.table.settings;
        let first_byte = Duration::from_millis(s.first_byte_timeout_ms);
        let idle = Duration::from_millis(s.idle_timeout_ms);
        let mut dyno = None;
        while dyno.is_none() && ctx.tried.len() < 2 {
            if self.upstream_peer(session, ctx).await.is_err() {
                break;
            }
            let addr = *ctx.tried.last().expect("upstream_peer tried one");
            match self.connect(ctx, &live, addr).await {
                Ok(conn) => {
                    for_backend(&live, ctx.app, addr, |b| b.mark_up());
                    dyno = Some(conn);
                }
                Err(code) => ctx.code = Some(code),
            }
        }
        let Some(mut dyno) = dyno else {
            let code = ctx.code.unwrap_or(HCode::H21);
            return self.respond_error(session, ctx, code).await;
        };
        ctx.code = None;

        let mut req = session.req_header().clone();
        self.upstream_request_filter(session, &mut req, ctx).await?;
        let mut head = Vec::with_capacity(1024);
        head.extend_from_slice(req.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (k, v) in req.headers.iter() {
            head.extend_from_slice(k.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        if dyno.write_all(&head).await.is_err() {
            return self.respond_error(session, ctx, HCode::H13).await;
        }

        // The dyno's answer: its head within the first-byte deadline.
        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            match tokio::time::timeout(first_byte, dyno.read_buf(&mut buf)).await {
                Err(_) => return self.respond_error(session, ctx, HCode::H12).await,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return self.respond_error(session, ctx, HCode::H13).await;
                }
                Ok(Ok(_)) => {
                    if let Some(end) = crate::server::head_end(&buf) {
                        break end;
                    }
                    if buf.len() > 64 * 1024 {
                        return self.respond_error(session, ctx, HCode::H25).await;
                    }
                }
            }
        };
        let rest = buf.split_off(end);
        let Some(mut resp) = parse_response_head(&buf) else {
            return self.respond_error(session, ctx, HCode::H25).await;
        };
        self.response_filter(session, &mut resp, ctx).await?;
        let switching = resp.status.as_u16() == 101;
        let declared = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if !switching {
            // A refused upgrade: only a Content-Length body is relayed (the dyno's answer to
            // a websocket request is a short error); anything else ends with the head.
            if declared.is_none() {
                resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
                resp.remove_header(&http::header::TRANSFER_ENCODING);
            }
        }
        session.write_response_header(Box::new(resp), false).await?;
        if !switching {
            let mut left = declared.unwrap_or(0);
            let mut chunk = rest.freeze();
            loop {
                let take = (chunk.len() as u64).min(left) as usize;
                if take > 0 {
                    left -= take as u64;
                    session
                        .write_response_body(Some(chunk.split_to(take)), left == 0)
                        .await?;
                }
                if left == 0 {
                    break;
                }
                let mut more = BytesMut::with_capacity(16 * 1024);
                match tokio::time::timeout(idle, dyno.read_buf(&mut more)).await {
                    Ok(Ok(n)) if n > 0 => chunk = more.freeze(),
                    _ => {
                        ctx.code = Some(HCode::H15);
                        return Ok(true);
                    }
                }
            }
            if declared.is_none() {
                session.write_response_body(None, true).await?;
            }
            return Ok(true);
        }

        // Switched: bytes both ways until either side closes or both idle past the deadline.
        if !rest.is_empty() {
            session
                .write_response_body(Some(rest.freeze()), false)
                .await?;
        }
        let (mut from_dyno, mut to_dyno) = dyno.into_split();
        let mut b = BytesMut::with_capacity(16 * 1024);
        enum Step {
            Client(Result<Option<Bytes>>),
            Dyno(std::io::Result<usize>),
        }
        loop {
            // Heroku's rule for websockets too: 55 s with no byte either way ends it (H15).
            let step = tokio::time::timeout(idle, async {
                tokio::select! {
                    r = session.read_request_body() => Step::Client(r),
                    r = from_dyno.read_buf(&mut b) => Step::Dyno(r),
                }
            })
            .await;
            match step {
                Err(_) => {
                    ctx.code = Some(HCode::H15);
                    break;
                }
                Ok(Step::Client(Ok(Some(data)))) => {
                    if to_dyno.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(Step::Client(_)) => {
                    let _ = to_dyno.shutdown().await;
                    break;
                }
                Ok(Step::Dyno(Ok(n))) if n > 0 => {
                    session
                        .write_response_body(Some(b.split().freeze()), false)
                        .await?;
                    b.reserve(16 * 1024);
                }
                Ok(Step::Dyno(_)) => break,
            }
        }
        let _ = session.write_response_body(None, true).await;
        Ok(true)
    }

    /// Headers the head guard parked past pingora's parser limit go back on the request,
    /// after the ones pingora parsed, before anything reads it.
    fn unpark_headers(&self, session: &mut Session) {
        let Some(conn) = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .map(|d| Arc::as_ptr(d) as usize)
        else {
            return;
        };
        let Some(parked) = self.shared.parked.take(conn) else {
            return;
        };
        let req = session.req_header_mut();
        for (name, value) in parked {
            let _ = req.append_header(name, value);
        }
    }

    fn add_hsts(&self, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
        if self.kind != Kind::PublicHttps {
            return Ok(());
        }
        if let Some(v) = ctx
            .live
            .as_ref()
            .and_then(|l| hsts_value(&l.table.settings))
        {
            resp.insert_header("strict-transport-security", v)?;
        }
        Ok(())
    }
}

/// The `Strict-Transport-Security` value of HTTPS responses, when HSTS is on.
fn hsts_value(s: &wharf_config::RouterSettings) -> Option<String> {
    let h = &s.hsts;
    h.enabled.then(|| {
        if h.include_subdomains {
            format!("max-age={}; includeSubDomains", h.max_age)
        } else {
            format!("max-age={}", h.max_age)
        }
    })
}

/// The answer to a request a limit refused: per-IP or per-app rate → 429, the app's requests
/// in flight → 503 (Heroku's H11 text). Both come with `Retry-After: 1`.
fn refusal(limit: crate::limits::Limit) -> (u16, &'static str) {
    match limit {
        crate::limits::Limit::AppRate => {
            (429, "Too Many Requests: this app's request rate limit\n")
        }
        crate::limits::Limit::AppConcurrency => (
            503,
            "Service Unavailable: too many requests in flight for this app (H11)\n",
        ),
        _ => (429, "Too Many Requests: slow down\n"),
    }
}

/// Whether a request whose connect failed may try once more: at most two dynos a request,
/// and only when one of its side is left untried.
fn may_try_another(live: &Live, ctx: &Ctx) -> bool {
    let others = ctx.app.is_some_and(|i| {
        live.apps[i]
            .pool(ctx.side)
            .backends
            .iter()
            .any(|b| !ctx.tried.contains(&b.address))
    });
    ctx.tried.len() < 2 && others
}

/// The body of the router's own answer for a proxy failure with `code` (or plain `status`).
fn error_body(code: Option<HCode>, status: u16) -> &'static [u8] {
    match code {
        Some(HCode::H12) => b"Application error: request timeout\n",
        Some(HCode::H19) | Some(HCode::H21) => b"Application error: dyno unreachable\n",
        Some(HCode::H13) => b"Application error: connection closed without response\n",
        Some(HCode::H25) => b"Bad Gateway: invalid response from the app\n",
        Some(HCode::H28) => b"Request Timeout: the request body came too slowly\n",
        _ if status == 400 => b"Bad Request\n",
        _ => b"Application error\n",
    }
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    if let Some(h) = req.uri.host() {
        return Some(h);
    }
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
}

/// CL+TE, or Content-Length values that disagree: a smuggling attempt → 400.
fn smuggling(session: &Session) -> bool {
    let req = session.req_header();
    let mut cls = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(first) = cls.next()
        && cls.any(|v| v != first)
    {
        return true;
    }
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        if req.headers.contains_key(http::header::CONTENT_LENGTH) {
            return true;
        }
        // pingora drops Content-Length when Transfer-Encoding is present; look at the raw bytes.
        if let pingora::protocols::http::ServerSession::H1(h1) = session.as_downstream() {
            let raw = h1.get_headers_raw_bytes();
            let lower = raw.to_ascii_lowercase();
            return lower.windows(16).any(|w| w == b"\ncontent-length:");
        }
    }
    false
}

/// Header and request-line limits: 414 for a request target over 8 KiB, 431 for a header over
/// 8 KiB or more than 1000 headers.
fn limits(req: &RequestHeader) -> Option<u16> {
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > 8192 {
        return Some(414);
    }
    if req.headers.len() > 1000 {
        return Some(431);
    }
    if req
        .headers
        .iter()
        .any(|(k, v)| k.as_str().len() + v.len() > 8192)
    {
        return Some(431);
    }
    None
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            start_ms: now_ms(),
            live: None,
            host: String::new(),
            method: String::new(),
            path: String::new(),
            request_id: String::new(),
            fwd: String::new(),
            app: None,
            side: None,
            upstream_path: None,
            tried: Vec::new(),
            dyno: String::new(),
            connect_started: None,
            connect_ms: None,
            code: None,
            status: 0,
            response_started: false,
            upgrade: false,
            tls_version: None,
            cors: None,
            set_sticky: false,
            body_bytes: 0,
            max_body: 0,
            upstream_timer: None,
            body_deadline: None,
            in_flight: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.start_ms = now_ms();
        self.shared.metrics.in_flight.inc();
        let live = self.shared.live.load_full();
        ctx.live = Some(live.clone());
        self.unpark_headers(session);

        let req = session.req_header();
        ctx.method.push_str(req.method.as_str());
        ctx.path
            .push_str(req.uri.path_and_query().map_or("/", |p| p.as_str()));
        let raw_host = request_host(req).map(str::to_owned);
        let id = req.headers.get("x-request-id").map(|v| v.as_bytes());
        ctx.request_id = match id {
            Some(id) if headers::valid_request_id(id) => String::from_utf8_lossy(id).into_owned(),
            _ => uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string(),
        };
        ctx.upgrade = headers::is_upgrade(req);
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            ctx.fwd = addr.ip().to_string();
        }
        if let Some(d) = session.digest().and_then(|d| d.ssl_digest.as_ref()) {
            ctx.tls_version = Some(crate::tls::version_name(d.version.as_ref()));
        }

        let Some(host) = raw_host.as_deref().and_then(normalize_host) else {
            return self
                .respond(
                    session,
                    ctx,
                    400,
                    "Bad Request: missing or invalid Host\n",
                    &[],
                )
                .await;
        };
        ctx.host = host;

        if self.kind == Kind::PublicHttp {
            let m = &session.req_header().method;
            if m == http::Method::GET || m == http::Method::HEAD {
                let location = format!("https://{}{}", ctx.host, ctx.path);
                return self
                    .respond(
                        session,
                        ctx,
                        308,
                        "Permanent Redirect: use HTTPS\n",
                        &[("location", location)],
                    )
                    .await;
            }
            return self
                .respond(session, ctx, 400, "Bad Request: this listener only redirects GET and HEAD to HTTPS; send other methods over HTTPS\n", &[])
                .await;
        }

        if smuggling(session) {
            return self
                .respond(
                    session,
                    ctx,
                    400,
                    "Bad Request: conflicting Content-Length / Transfer-Encoding\n",
                    &[],
                )
                .await;
        }
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet())
            && let Err(refused) = self
                .shared
                .limits
                .request_from(addr.ip(), &live.table.settings.limits)
        {
            let (status, body) = refusal(refused);
            return self
                .respond(session, ctx, status, body, &[("retry-after", "1".into())])
                .await;
        }
        if let Some(status) = limits(session.req_header()) {
            let body = if status == 414 {
                "URI Too Long\n"
            } else {
                "Request Header Fields Too Large\n"
            };
            return self.respond(session, ctx, status, body, &[]).await;
        }
        let normalized = match paths::normalize(&ctx.path) {
            Ok(p) => p.into_owned(),
            Err(PathError::AboveRoot | PathError::NotAbsolute | PathError::BadEscape) => {
                return self
                    .respond(session, ctx, 400, "Bad Request: invalid path\n", &[])
                    .await;
            }
        };

        // The Host must be served by the certificate the client's SNI chose (H31 → 421).
        if self.kind == Kind::PublicHttps
            && let Some(sni) = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|d| d.extension.get::<Sni>())
        {
            let sni = sni.0.as_str();
            if sni != ctx.host {
                let a = live.certs.lookup(sni);
                let b = live.certs.lookup(&ctx.host);
                let same = match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                if !same {
                    return self.respond_error(session, ctx, HCode::H31).await;
                }
            }
        }

        let internal = self.kind == Kind::Internal;
        let found = match live.table.find(&ctx.host, &normalized, internal) {
            Ok(f) => f,
            Err(NotFound::Host) => {
                tracing::info!(host = %ctx.host, path = %ctx.path, "unknown host");
                return self
                    .respond(
                        session,
                        ctx,
                        404,
                        "Not Found: no app or site at this host\n",
                        &[],
                    )
                    .await;
            }
            Err(NotFound::Route) => {
                return self
                    .respond(
                        session,
                        ctx,
                        404,
                        "Not Found: no route for this path\n",
                        &[],
                    )
                    .await;
            }
        };
        ctx.app = Some(found.app);
        let app_target = &live.table.apps[found.app];
        match self
            .shared
            .limits
            .request_to(&app_target.key, &app_target.limits)
        {
            Ok(slot) => ctx.in_flight = slot,
            Err(refused) => {
                let (status, body) = refusal(refused);
                return self
                    .respond(session, ctx, status, body, &[("retry-after", "1".into())])
                    .await;
            }
        }
        ctx.max_body = match app_target.limits.max_body_bytes {
            0 => live.table.settings.max_body_bytes,
            n => n,
        };
        if ctx.max_body > 0 {
            let declared = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > ctx.max_body) {
                return self
                    .respond(session, ctx, 413, "Payload Too Large\n", &[])
                    .await;
            }
        }
        if let Some((route, len)) = found.route {
            ctx.upstream_path = Some(paths::rewrite(&route.target_path, &normalized, len));
        } else if normalized != ctx.path {
            ctx.upstream_path = Some(normalized.clone());
        }

        // Filters (CORS preflight, JWT) answer here, before any dyno is involved.
        let app = &live.table.apps[found.app];
        if !app.filters.is_empty() {
            match filters::check(
                &self.shared,
                &live,
                found.app,
                &normalized,
                session.req_header(),
            )
            .await
            {
                FilterOutcome::Continue { cors } => ctx.cors = cors,
                FilterOutcome::Respond(resp) => {
                    ctx.status = resp.status;
                    let mut header =
                        ResponseHeader::build(resp.status, Some(resp.headers.len() + 3))?;
                    for (k, v) in &resp.headers {
                        header.insert_header(k.clone(), v.as_str())?;
                    }
                    header.insert_header("content-length", resp.body.len().to_string())?;
                    header.insert_header("x-request-id", ctx.request_id.as_str())?;
                    self.add_hsts(&mut header, ctx)?;
                    session
                        .write_response_header(Box::new(header), false)
                        .await?;
                    session.write_response_body(Some(resp.body), true).await?;
                    return Ok(true);
                }
            }
        }

        let app_live = &live.apps[found.app];
        let has_canary = app_live.canary.as_ref().is_some_and(|c| !c.pool.is_empty());
        if app_live.stable.is_empty() && !has_canary {
            let code = if app.crashed > 0 {
                HCode::H10
            } else {
                HCode::H14
            };
            return self.respond_error(session, ctx, code).await;
        }
        if ctx.upgrade && !session.is_http2() {
            return self.proxy_upgrade(session, ctx).await;
        }
        let d = crate::client::BodyDeadline::start(&live.table.settings);
        if !session.is_http2() {
            session.set_read_timeout(Some(d.next_read(0, Instant::now())));
        }
        ctx.body_deadline = Some(d);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if let Some(t) = &ctx.upstream_timer {
            t.body(ctx.body_bytes, end_of_stream);
        }
        if body.is_some() {
            if let Some(d) = &ctx.body_deadline
                && !session.is_http2()
            {
                session.set_read_timeout(Some(d.next_read(ctx.body_bytes, Instant::now())));
            }
            if ctx.max_body > 0 && ctx.body_bytes > ctx.max_body {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the limit",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let live = ctx.live.clone().expect("request_filter ran");
        let app_idx = ctx.app.expect("routed");
        let app = &live.apps[app_idx];
        if ctx.side.is_none() {
            let cookies = session
                .req_header()
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes());
            let (side, set_sticky) = choose_side(&live, app_idx, || sticky_side(cookies));
            ctx.side = Some(side);
            ctx.set_sticky = set_sticky;
        }
        let side = ctx.side.unwrap_or(Side::Stable);
        let pool = app.pool(Some(side));
        let now = now_ms();
        let Some(b) = pool.pick(now, &ctx.tried) else {
            return Err(Error::explain(
                ErrorType::ConnectRefused,
                "no dyno left to try",
            ));
        };
        ctx.tried.push(b.address);
        ctx.dyno.clear();
        ctx.dyno.push_str(&b.process);
        ctx.connect_started = Some(Instant::now());
        let s = &live.table.settings;
        let mut peer = HttpPeer::new(b.address, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_millis(s.connect_timeout_ms));
        let (read, _) = upstream_timeouts(s.first_byte_timeout_ms, s.idle_timeout_ms);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(Duration::from_millis(s.idle_timeout_ms));
        peer.options.idle_timeout = Some(Duration::from_secs(90));
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(live) = &ctx.live {
            let s = &live.table.settings;
            let (_, first) = upstream_timeouts(s.first_byte_timeout_ms, s.idle_timeout_ms);
            let h2_body = ctx.body_deadline.filter(|_| session.is_http2());
            let done = session.is_body_done();
            ctx.upstream_timer = UpstreamTimer::arm(fd, first, h2_body, ctx.body_bytes, done);
        }
        if let Some(t) = ctx.connect_started {
            let d = t.elapsed();
            ctx.connect_ms = Some(d.as_millis() as u64);
            self.shared.metrics.connect.observe(d.as_secs_f64());
        }
        if let (Some(live), Some(addr)) = (&ctx.live, ctx.tried.last()) {
            for_backend(live, ctx.app, *addr, |b| b.mark_up());
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let live = ctx.live.clone().expect("request_filter ran");
        let down_for = live.table.settings.dyno_down_ms;
        if let Some(addr) = ctx.tried.last() {
            for_backend(&live, ctx.app, *addr, |b| b.mark_down(now_ms() + down_for));
            self.shared.metrics.dynos_marked_down.inc();
        }
        ctx.code = Some(if matches!(e.etype(), ErrorType::ConnectTimedout) {
            HCode::H19
        } else {
            HCode::H21
        });
        // A connect failure never reached a dyno: try once more, on another dyno if any.
        if may_try_another(&live, ctx) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        // The connection is done with: its timer must not outlive it.
        let fired = ctx.disarm_upstream_timer();
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(fired) = fired {
            // H12: the dyno had the request for the whole deadline; H28: the client's body
            // was too slow. Never retried.
            ctx.code = Some(match fired {
                Fired::FirstByte => HCode::H12,
                Fired::Body => HCode::H28,
            });
            e.set_retry(false);
        } else if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::strip_request_hop_by_hop(upstream, ctx.upgrade);
        if let Some(path) = &ctx.upstream_path {
            let uri: http::Uri = path.parse().map_err(|_| {
                Error::explain(ErrorType::InternalError, "rewritten path is not a URI")
            })?;
            if ctx.upstream_path.as_deref() != Some(ctx.path.as_str()) {
                let original = ctx.path.split('?').next().unwrap_or("/").to_owned();
                upstream.insert_header("x-forwarded-path", original)?;
            }
            upstream.set_uri(uri);
        }
        let xff = match session
            .req_header()
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !ctx.fwd.is_empty() => format!("{prev}, {}", ctx.fwd),
            Some(prev) => prev.to_owned(),
            None => ctx.fwd.clone(),
        };
        if !xff.is_empty() {
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", self.protocol())?;
        if let Some(port) = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port())
        {
            upstream.insert_header("x-forwarded-port", port.to_string())?;
        }
        upstream.insert_header("x-request-start", ctx.start_ms.to_string())?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        upstream.append_header("via", "1.1 wharf")?;
        // h2 clients send :authority; dynos speak HTTP/1.1 and need Host.
        if !upstream.headers.contains_key(http::header::HOST) {
            upstream.insert_header(http::header::HOST, ctx.host.as_str())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.disarm_upstream_timer();
        ctx.response_started = true;
        ctx.status = resp.status.as_u16();
        headers::strip_response_hop_by_hop(resp, ctx.upgrade);
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        resp.append_header("via", "1.1 wharf")?;
        self.add_hsts(resp, ctx)?;
        if let Some(cors) = &ctx.cors {
            filters::apply_cors(resp, cors)?;
        }
        if ctx.set_sticky
            && let Some(side) = ctx.side
        {
            resp.append_header(
                "set-cookie",
                format!(
                    "wharf-canary={}; Path=/; HttpOnly; Secure; SameSite=Lax",
                    side.as_str()
                ),
            )?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let downstream = matches!(e.esource(), pingora::ErrorSource::Downstream);
        let fired = ctx.disarm_upstream_timer();
        let first_byte_timeout = fired == Some(Fired::FirstByte) || ctx.code == Some(HCode::H12);
        let body_timeout = fired == Some(Fired::Body) || ctx.code == Some(HCode::H28);
        if let ErrorType::HTTPStatus(status) = e.etype() {
            let status = *status;
            ctx.status = status;
            if !ctx.response_started {
                let _ = session.respond_error(status).await;
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            _ if first_byte_timeout && !ctx.response_started => Some(HCode::H12),
            _ if (body_timeout || matches!(e.etype(), ErrorType::ReadTimedout) && downstream)
                && ctx.body_deadline.is_some() =>
            {
                self.shared
                    .limits
                    .refused(crate::limits::Limit::BodyTimeout);
                tracing::info!(host = %ctx.host, path = %ctx.path, bytes = ctx.body_bytes,
                    "request body slower than the body deadline: 408 H28, closed");
                Some(HCode::H28)
            }
            _ if downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                    Some(HCode::H27)
                }
                _ => None,
            },
            ErrorType::ConnectTimedout => Some(HCode::H19),
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::SocketError => Some(ctx.code.unwrap_or(HCode::H21)),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(if ctx.response_started {
                HCode::H15
            } else {
                HCode::H12
            }),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                Some(HCode::H13)
            }
            ErrorType::InvalidHTTPHeader
            | ErrorType::H1Error
            | ErrorType::H2Error
            | ErrorType::InvalidH2 => Some(HCode::H25),
            _ => None,
        };
        let status = match code {
            Some(HCode::H27) => {
                ctx.code = Some(HCode::H27);
                ctx.status = 499;
                0
            }
            Some(c) => {
                ctx.code = Some(c);
                c.status()
            }
            None if downstream => 400,
            None => 502,
        };
        if status > 0 && !ctx.response_started {
            ctx.status = status;
            let body = Bytes::from_static(error_body(code, status));
            let _ = session.respond_error_with_body(status, body).await;
        } else if ctx.response_started && code.is_none() {
            ctx.code = Some(HCode::H13);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .filter(|s| *s != 0 && ctx.code != Some(HCode::H27))
            .unwrap_or(ctx.status);
        self.record(ctx, status, session.body_bytes_sent() as u64);
    }
}

impl Edge {
    /// A new connection to the dyno at `addr`; on failure the dyno is marked down for the
    /// back-off and the code says how it failed (H19 timeout, H21 refused).
    async fn connect(
        &self,
        ctx: &mut Ctx,
        live: &Live,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, HCode> {
        let s = &live.table.settings;
        let started = Instant::now();
        ctx.connect_started = Some(started);
        let within = Duration::from_millis(s.connect_timeout_ms);
        match tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(c)) => {
                let d = started.elapsed();
                ctx.connect_ms = Some(d.as_millis() as u64);
                self.shared.metrics.connect.observe(d.as_secs_f64());
                let _ = c.set_nodelay(true);
                Ok(c)
            }
            failed => {
                for_backend(live, ctx.app, addr, |b| {
                    b.mark_down(now_ms() + s.dyno_down_ms)
                });
                self.shared.metrics.dynos_marked_down.inc();
                Err(if failed.is_err() {
                    HCode::H19
                } else {
                    HCode::H21
                })
            }
        }
    }

    /// The end of every request, whichever path served it: metrics, canary statistics (and
    /// the abort), and the router log line. `bytes`: response body bytes sent.
    fn record(&self, ctx: &Ctx, status: u16, bytes: u64) {
        let m = &self.shared.metrics;
        m.in_flight.dec();
        let elapsed = ctx.start.elapsed();
        if let Some(code) = ctx.code {
            m.errors.with_label_values(&[code.as_str()]).inc();
        }
        let Some(live) = &ctx.live else { return };
        let Some(app_idx) = ctx.app else {
            m.requests
                .with_label_values(&["", crate::metrics::class(status)])
                .inc();
            return;
        };
        let app = &live.table.apps[app_idx];
        let app_live = &live.apps[app_idx];
        let class = crate::metrics::class(status);
        app_live.requests[crate::metrics::class_index(status)]
            .get_or_init(|| m.requests.with_label_values(&[app.key.as_str(), class]))
            .inc();
        app_live
            .duration
            .get_or_init(|| m.duration.with_label_values(&[app.key.as_str()]))
            .observe(elapsed.as_secs_f64());
        if let (Some(side), Some(c)) = (ctx.side, &live.apps[app_idx].canary) {
            m.canary_requests
                .with_label_values(&[
                    app.key.as_str(),
                    side.as_str(),
                    crate::metrics::class(status),
                ])
                .inc();
            let now_s = ctx.start_ms / 1000;
            c.stats.record(side, status, now_s);
            if side == Side::Canary
                && status >= 500
                && let Some(verdict) = c.stats.check(now_s)
            {
                c.weight.store(0, std::sync::atomic::Ordering::Relaxed);
                m.canary_aborts.with_label_values(&[app.key.as_str()]).inc();
                let release = app.canary.as_ref().map_or(0, |t| t.release);
                tracing::warn!(app = %app.key, release, z = verdict.z, canary_5xx = verdict.canary.errors_5xx,
                    canary_requests = verdict.canary.requests, stable_5xx = verdict.stable.errors_5xx,
                    stable_requests = verdict.stable.requests, "canary aborted: weight set to 0");
                let _ = self
                    .shared
                    .events
                    .send(wharf_config::RouterEvent::CanaryAborted {
                        app: app.key.clone(),
                        canary_release: release,
                        stable: verdict.stable,
                        canary: verdict.canary,
                        z: verdict.z,
                        reason: format!(
                            "canary 5xx rate {:.3} vs stable {:.3} (z = {:.2})",
                            rate(verdict.canary),
                            rate(verdict.stable),
                            verdict.z
                        ),
                    });
            }
        }
        let line = logline::format(&logline::Fields {
            code: ctx.code,
            method: &ctx.method,
            path: &ctx.path,
            host: &ctx.host,
            request_id: &ctx.request_id,
            fwd: &ctx.fwd,
            dyno: &ctx.dyno,
            connect_ms: ctx.connect_ms,
            service_ms: elapsed.as_millis() as u64,
            status,
            bytes,
            protocol: self.protocol(),
            tls_version: ctx.tls_version,
        });
        self.shared.sink.send(LogLine {
            app: app.key.as_str().into(),
            space: app.space.as_str().into(),
            source: Source::Heroku,
            process: "router".into(),
            timestamp_us: (ctx.start_ms as i64) * 1000,
            line,
        });
    }
}

/// A dyno's response head (status line and headers); `None` when it is not HTTP/1.x.
fn parse_response_head(head: &[u8]) -> Option<ResponseHeader> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut status = lines.next()?.splitn(3, ' ');
    if !status.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = status.next()?.parse().ok()?;
    let mut resp = ResponseHeader::build(code, None).ok()?;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        resp.append_header(k.trim().to_owned(), v.trim()).ok()?;
    }
    Some(resp)
}

fn rate(f: wharf_config::SideFigures) -> f64 {
    if f.requests == 0 {
        0.0
    } else {
        f.errors_5xx as f64 / f.requests as f64
    }
}

/// The side a request goes to, and whether the response sets the sticky cookie: the cookie's
/// side when the canary is sticky (stable once the canary is aborted), else the exact split.
fn choose_side(live: &Live, app_idx: usize, cookie: impl FnOnce() -> Option<Side>) -> (Side, bool) {
    let app = &live.apps[app_idx];
    let Some(c) = app.canary.as_ref().filter(|c| !c.pool.is_empty()) else {
        return (Side::Stable, false);
    };
    let weight = c.weight.load(Ordering::Relaxed);
    let sticky = live.table.apps[app_idx]
        .canary
        .as_ref()
        .is_some_and(|t| t.sticky);
    if sticky && let Some(side) = cookie() {
        let side = if side == Side::Canary && weight == 0 {
            Side::Stable
        } else {
            side
        };
        return (side, false);
    }
    let n = c.counter.fetch_add(1, Ordering::Relaxed);
    let side = if app.stable.is_empty() || goes_to_canary(n, weight) {
        Side::Canary
    } else {
        Side::Stable
    };
    (side, sticky)
}

/// The side named by a `wharf-canary` cookie among the request's `Cookie` header values.
fn sticky_side<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Side> {
    for v in values {
        let s = std::str::from_utf8(v).ok()?;
        for pair in s.split(';') {
            match pair.trim() {
                "wharf-canary=canary" => return Some(Side::Canary),
                "wharf-canary=stable" => return Some(Side::Stable),
                _ => {}
            }
        }
    }
    None
}

fn for_backend(
    live: &Live,
    app: Option<usize>,
    addr: SocketAddr,
    f: impl Fn(&crate::live::BackendLive),
) {
    let Some(a) = app.map(|i| &live.apps[i]) else {
        return;
    };
    let pools = std::iter::once(&a.stable).chain(a.canary.as_ref().map(|c| &c.pool));
    for pool in pools {
        for b in &pool.backends {
            if b.address == addr {
                f(b);
            }
        }
    }
}
