//! Deadlines for slow clients. A connection is admitted (connection caps) before anything is
//! read from it; then the TLS handshake, done here rather than by pingora's listener so that
//! handshakes in progress hold a connection slot, and the first request head must be in within
//! `client_header_timeout_ms` of the accept (a later head: within that of its first byte). An
//! HTTP/1 request body gets `client_body_timeout_ms`, plus one second per
//! `client_body_min_rate` bytes received (Apache's `mod_reqtimeout` rule), so a body trickled
//! a byte at a time is cut while a large upload at a reasonable rate is not; an h2 request
//! body gets the same deadline, kept by the proxy's upstream timer. Each expiry is
//! counted in `wharf_router_limited_total` (`header_timeout`, `body_timeout`) and logged.

use std::time::{Duration, Instant};

use pingora::listeners::tls::Acceptor;
use pingora::protocols::Stream;
use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncWriteExt;
use wharf_config::RouterSettings;

use crate::limits::{Limit, Limiter};

/// The TLS handshake of an admitted connection, done by `by`; `None` (the connection closes)
/// when it fails or is late.
pub async fn tls_handshake(
    acceptor: &Acceptor,
    stream: Stream,
    by: Instant,
    limiter: &Limiter,
) -> Option<Stream> {
    let peer = peer(&stream);
    let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    match tokio::time::timeout_at(by.into(), acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            limiter.refused(Limit::HeaderTimeout);
            tracing::info!(
                ?peer,
                "TLS handshake not done within the header timeout: closed"
            );
            None
        }
    }
}

/// A request head did not come in time: 408 when part of it came, then the connection closes.
pub async fn head_timed_out(mut stream: Stream, partial: usize, limiter: &Limiter) {
    limiter.refused(Limit::HeaderTimeout);
    tracing::info!(peer = ?peer(&stream), bytes = partial,
        "request head not complete within the header timeout: closed");
    if partial > 0 {
        let _ = stream.write_all(REQUEST_TIMEOUT).await;
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
}

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\nconnection: close\r\n\r\n\
Request Timeout\n";

fn peer(stream: &Stream) -> Option<std::net::SocketAddr> {
    pingora::protocols::GetSocketDigest::get_socket_digest(&**stream)
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// When the request head must be complete: by the connection's deadline, or sooner when this
/// head's first byte came early enough for `header` to end first.
pub fn head_deadline(first_byte_by: Instant, first_byte_at: Instant, header: Duration) -> Instant {
    first_byte_by.min(first_byte_at + header)
}

/// The deadline of one request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    started: Instant,
    base: Duration,
    min_rate: u64,
}

impl BodyDeadline {
    pub fn start(settings: &RouterSettings) -> BodyDeadline {
        BodyDeadline {
            started: Instant::now(),
            base: Duration::from_millis(settings.client_body_timeout_ms),
            min_rate: settings.client_body_min_rate,
        }
    }

    /// How long the next read may wait, `bytes` having come so far (at least 1 ms).
    pub fn next_read(&self, bytes: u64, now: Instant) -> Duration {
        self.remaining(bytes, now)
            .unwrap_or_default()
            .max(Duration::from_millis(1))
    }

    /// How long until the deadline, `bytes` having come so far; `None` once it has passed.
    pub fn remaining(&self, bytes: u64, now: Instant) -> Option<Duration> {
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
        };
        (self.started + self.base + earned)
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_deadline_grows_with_the_bytes_received() {
        let s = RouterSettings {
            client_body_timeout_ms: 2_000,
            client_body_min_rate: 500,
            ..RouterSettings::default()
        };
        let d = BodyDeadline::start(&s);
        let t = d.started;
        assert_eq!(d.next_read(0, t), Duration::from_secs(2));
        assert_eq!(
            d.next_read(1_000, t + Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        // A byte a second: the deadline passes, whatever it sends.
        assert_eq!(
            d.next_read(10, t + Duration::from_secs(10)),
            Duration::from_millis(1)
        );
        assert_eq!(d.remaining(10, t + Duration::from_secs(10)), None);
        assert_eq!(
            d.remaining(1_000, t + Duration::from_secs(3)),
            Some(Duration::from_secs(1))
        );
        let none = BodyDeadline { min_rate: 0, ..d };
        assert_eq!(
            none.next_read(1 << 30, t + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_later_head_gets_the_header_timeout_from_its_first_byte() {
        let now = Instant::now();
        let h = Duration::from_secs(20);
        // Fresh connection: the accept deadline holds.
        assert_eq!(
            head_deadline(now + h, now + Duration::from_secs(5), h),
            now + h
        );
        // Reused connection: 60 s for the first byte, then 20 s.
        let first = now + Duration::from_secs(30);
        assert_eq!(
            head_deadline(now + Duration::from_secs(60), first, h),
            first + h
        );
    }
}
