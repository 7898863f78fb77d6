//! Syslog ingest over TCP (octet-counted or newline framing, RFC 6587) and UDP (one message per
//! datagram). Each message names its app by a `token="…"` structured-data parameter, or the
//! listener is bound to one app's token. Bad framing closes that one connection; a bad message
//! is skipped; both are logged and counted, and nothing else is affected.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use wharf_config::LogLine;

use crate::bus::{Gathered, Receipt};
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

type Tokens = HashMap<String, (String, String)>;

/// Log token → (app, space), remembering the last token found: a connection's lines mostly
/// carry one token, and comparing it costs less than hashing it again for every line.
struct Apps<'a> {
    tokens: &'a Tokens,
    last: Option<(&'a str, &'a (String, String))>,
}

impl<'a> Apps<'a> {
    fn new(tokens: &'a Tokens) -> Apps<'a> {
        Apps { tokens, last: None }
    }

    fn get(&mut self, token: &str) -> Option<&'a (String, String)> {
        if let Some((t, found)) = self.last
            && t == token
        {
            return Some(found);
        }
        let (t, found) = self.tokens.get_key_value(token)?;
        self.last = Some((t.as_str(), found));
        Some(found)
    }
}

/// The (app, space) a message's token (or the listener's) names.
fn app_of<'a>(
    apps: &mut Apps<'a>,
    m: &wire::Message<'_>,
    listener_token: Option<&str>,
) -> Result<&'a (String, String), (&'static str, String)> {
    let token = m
        .token
        .as_deref()
        .or(listener_token)
        .ok_or_else(|| ("token", "no token: put token=\"…\" in the structured data or bind the listener to an app's token".to_owned()))?;
    apps.get(token)
        .ok_or_else(|| ("token", "unknown log token".to_owned()))
}

fn line_of(
    apps: &mut Apps<'_>,
    frame: &[u8],
    listener_token: Option<&str>,
) -> Result<LogLine, (&'static str, String)> {
    let m = wire::parse_message(frame).map_err(|e| ("syslog", e))?;
    let (app, space) = app_of(apps, &m, listener_token)?;
    Ok(m.to_line(app, space))
}

/// Parse `frame` and gather its line, unless it is over its app's ingest rate (counted
/// there); an error says why the frame was skipped.
fn gather_frame(
    handle: &Handle,
    rates: &Rates,
    apps: &mut Apps<'_>,
    frame: &[u8],
    listener_token: Option<&str>,
    into: &mut Gathered,
) -> Result<(), (&'static str, String)> {
    let m = wire::parse_message(frame).map_err(|e| ("syslog", e))?;
    let (app, space) = app_of(apps, &m, listener_token)?;
    if handle.within_rate(rates, app, space) {
        into.push(m.line_ref(app, space));
    }
    Ok(())
}

type Rates = HashMap<String, wharf_config::Rate>;

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

/// Batches of one connection handed to the bus and not yet durable. Syslog over TCP has no
/// acknowledgement of its own (RFC 6587): what the kernel took is all a sender knows. So the
/// connection reads on while up to `Options::syslog_window_bytes` of frames are on their way
/// into Kafka, and waits for the oldest batches before reading more: a crash can lose at most
/// that window of lines the sender already wrote, as it loses what the kernel's receive buffer
/// holds (`tcp_rmem`). The Logplex `POST /logs` answers only once its lines are durable. 32 MiB
/// by default: with 512 KiB, 2 MiB, then 8 MiB, one busy connection still waited on Kafka's
/// round trips (BENCHMARKS.md).
/// One hand-over to the bus takes what the socket already holds, up to this many bytes of
/// frames: on Kafka each hand-over is one record per app, and the broker's work goes by
/// records and requests far more than by bytes (BENCHMARKS.md), so a busy connection makes few
/// large records; a quiet one still hands over each read at once.
const HANDOVER_BYTES: usize = 256 * 1024;
/// Free space kept in the read buffer before each read.
const READ_ROOM: usize = 64 * 1024;

struct InFlight {
    /// Receipt, lines, bytes of frames.
    receipts: VecDeque<(Receipt, usize, usize)>,
    bytes: usize,
    /// `wharf_logshuttle_syslog_inflight_bytes`: this connection's `bytes` are part of it.
    gauge: prometheus::IntGauge,
}

impl InFlight {
    fn new(metrics: &crate::Metrics) -> InFlight {
        InFlight {
            receipts: VecDeque::new(),
            bytes: 0,
            gauge: metrics.syslog_inflight_bytes.clone(),
        }
    }

    fn push(&mut self, receipt: Receipt, lines: usize, bytes: usize) {
        self.receipts.push_back((receipt, lines, bytes));
        self.bytes += bytes;
        self.gauge.add(bytes as i64);
    }

    /// Wait for the oldest batch to be durable (or lost, and counted). Its bytes stay in the
    /// window, and in the gauge, until then: they are what a crash would lose meanwhile.
    async fn settle_one(&mut self, metrics: &crate::Metrics, peer: SocketAddr) {
        let Some((r, _, _)) = self.receipts.front_mut() else {
            return;
        };
        let got = r.await;
        if let Some((_, n, bytes)) = self.receipts.pop_front() {
            self.bytes -= bytes;
            self.gauge.sub(bytes as i64);
            if let Err(e) = got {
                metrics
                    .ingest_lost
                    .with_label_values(&["syslog-tcp"])
                    .inc_by(n as u64);
                tracing::error!(%peer, error = %e, lines = n, "the bus did not store lines taken from a syslog connection");
            }
        }
    }

    async fn settle_all(&mut self, metrics: &crate::Metrics, peer: SocketAddr) {
        while !self.receipts.is_empty() {
            self.settle_one(metrics, peer).await;
        }
    }
}

impl Drop for InFlight {
    /// A connection's task ended without settling (the shuttle stopping): its bytes leave
    /// the gauge with it.
    fn drop(&mut self) {
        self.gauge.sub(self.bytes as i64);
    }
}

/// Hand the lines of one or more reads (`bytes` of frames) to the bus; `false` when the bus is
/// gone.
async fn hand_over(
    handle: &Handle,
    lines: &mut Gathered,
    bytes: &mut usize,
    inflight: &mut InFlight,
    peer: SocketAddr,
) -> bool {
    let taken = std::mem::take(bytes);
    if lines.is_empty() {
        return true;
    }
    let n = lines.len();
    let metrics = handle.metrics();
    match handle.send_gathered(lines).await {
        Ok(r) => {
            inflight.push(r, n, taken);
            let window = handle.options().syslog_window_bytes;
            while inflight.bytes > window && inflight.receipts.len() > 1 {
                inflight.settle_one(metrics, peer).await;
            }
            true
        }
        Err(e) => {
            metrics
                .ingest_lost
                .with_label_values(&["syslog-tcp"])
                .inc_by(n as u64);
            tracing::error!(%peer, error = %e, lines = n, "the bus refused lines from a syslog connection");
            *lines = handle.gather();
            !matches!(e, Error::Closed)
        }
    }
}

/// How a read ended.
enum Read {
    More,
    /// Nothing waiting now (only from a read that does not wait).
    Empty,
    Eof,
    Failed(std::io::Error),
}

fn reserve_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM / 4 {
        buf.reserve(READ_ROOM);
    }
}

async fn serve_tcp(handle: Handle, mut sock: TcpStream, peer: SocketAddr, token: Option<String>) {
    let mut buf = BytesMut::with_capacity(READ_ROOM);
    let mut dec = FrameDecoder { max: MAX_FRAME };
    let metrics = handle.metrics().clone();
    let mut lines = handle.gather();
    // Bytes of the frames in `lines`.
    let mut taken = 0usize;
    let mut inflight = InFlight::new(&metrics);
    loop {
        let tokens = handle.tokens();
        let rates = handle.rates();
        let mut apps = Apps::new(&tokens);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    taken += frame.len();
                    match gather_frame(
                        &handle,
                        &rates,
                        &mut apps,
                        &frame,
                        token.as_deref(),
                        &mut lines,
                    ) {
                        Ok(()) => {}
                        Err((reason, e)) => {
                            metrics
                                .ingest_errors
                                .with_label_values(&["syslog-tcp", reason])
                                .inc();
                            tracing::warn!(%peer, error = %e, "syslog message skipped");
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    metrics
                        .ingest_errors
                        .with_label_values(&["syslog-tcp", "framing"])
                        .inc();
                    tracing::warn!(%peer, error = %e, "bad syslog framing; closing the connection");
                    hand_over(&handle, &mut lines, &mut taken, &mut inflight, peer).await;
                    inflight.settle_all(&metrics, peer).await;
                    return;
                }
            }
        }
        reserve_room(&mut buf);
        // What the socket holds already joins this hand-over (never waits for more).
        let mut read = if taken < HANDOVER_BYTES {
            match sock.try_read_buf(&mut buf) {
                Ok(0) => Read::Eof,
                Ok(_) => Read::More,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::Empty,
                Err(e) => Read::Failed(e),
            }
        } else {
            Read::Empty
        };
        if matches!(read, Read::More) {
            continue;
        }
        if !hand_over(&handle, &mut lines, &mut taken, &mut inflight, peer).await {
            return;
        }
        if matches!(read, Read::Empty) {
            reserve_room(&mut buf);
            read = match sock.read_buf(&mut buf).await {
                Ok(0) => Read::Eof,
                Ok(_) => Read::More,
                Err(e) => Read::Failed(e),
            };
        }
        match read {
            Read::More | Read::Empty => {}
            Read::Eof => {
                if !buf.is_empty() {
                    metrics
                        .ingest_errors
                        .with_label_values(&["syslog-tcp", "framing"])
                        .inc();
                    tracing::warn!(%peer, bytes = buf.len(), "connection closed inside a frame");
                }
                inflight.settle_all(&metrics, peer).await;
                return;
            }
            Read::Failed(e) => {
                tracing::debug!(%peer, error = %e, "syslog connection error");
                inflight.settle_all(&metrics, peer).await;
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
            match line_of(
                &mut Apps::new(&handle.tokens()),
                &buf[..n],
                token.as_deref(),
            ) {
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
