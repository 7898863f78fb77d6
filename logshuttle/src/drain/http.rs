//! HTTPS drains: `application/logplex-1` batches bounded by lines, bytes and time, with the
//! Logplex headers. 429, 408, 5xx, timeouts and connection errors are retried with back-off and
//! the same `Logplex-Frame-Id`; any other 4xx drops the batch (counted).

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use wharf_config::DrainKind;

use super::{Batch, DrainCtx};
use crate::wire;

const USER_AGENT: &str = concat!("Wharf-Logshuttle/", env!("CARGO_PKG_VERSION"));

enum Outcome {
    Delivered,
    Retry(String),
    Reject(u16),
}

async fn connect(ctx: &DrainCtx) -> Result<SendRequest<Full<Bytes>>, String> {
    let url = &ctx.target.url;
    let tcp = super::syslog::connect_tcp(&url.host, url.port, ctx.opts.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    if url.kind == DrainKind::Https {
        let name =
            rustls_pki_types::ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(ctx.tls.clone());
        let s = tokio::time::timeout(ctx.opts.connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        handshake(TokioIo::new(s)).await
    } else {
        handshake(TokioIo::new(tcp)).await
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// `Authorization` from the URL's user-info, if any.
fn basic_auth(raw: &str) -> Option<String> {
    let u = url_userinfo(raw)?;
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(u)
    ))
}

fn url_userinfo(raw: &str) -> Option<String> {
    let after = raw.split_once("://")?.1;
    let authority = after.split(['/', '?', '#']).next()?;
    let (info, _) = authority.rsplit_once('@')?;
    let (user, pass) = info.split_once(':').unwrap_or((info, ""));
    Some(format!("{}:{}", percent_decode(user), percent_decode(pass)))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn body_of(ctx: &DrainCtx, batch: &Batch, l10: Option<&wharf_config::LogLine>) -> (Bytes, usize) {
    let host = ctx.host();
    let mut out = Vec::new();
    let mut enc = wire::Encoder::default();
    let mut n = 0;
    for line in l10.into_iter().chain(batch.items.iter().map(|i| i.line())) {
        enc.octet_counted(&mut out, line, host);
        n += 1;
    }
    (Bytes::from(out), n)
}

async fn send(
    ctx: &DrainCtx,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: Bytes,
    count: usize,
    frame_id: &str,
    auth: Option<&str>,
) -> Outcome {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        match connect(ctx).await {
            Ok(c) => {
                ctx.metrics.connected.set(1);
                *conn = Some(c);
            }
            Err(e) => {
                ctx.metrics.connected.set(0);
                return Outcome::Retry(format!("connect: {e}"));
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return Outcome::Retry("no connection".into());
    };
    let url = &ctx.target.url;
    let host_header = match (url.kind, url.port) {
        (DrainKind::Https, 443) | (DrainKind::Http, 80) => url.host.clone(),
        _ => format!("{}:{}", url.host, url.port),
    };
    let mut req = http::Request::post(url.path.as_str())
        .header(http::header::HOST, host_header)
        .header(http::header::CONTENT_TYPE, "application/logplex-1")
        .header(http::header::USER_AGENT, USER_AGENT)
        .header("Logplex-Msg-Count", count.to_string())
        .header("Logplex-Frame-Id", frame_id)
        .header("Logplex-Drain-Token", ctx.host());
    if let Some(a) = auth {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let req = match req.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Outcome::Reject(400).log_bad(&e.to_string()),
    };
    let exchange = async {
        c.ready().await?;
        let resp = c.send_request(req).await?;
        let status = resp.status();
        // Read the body so the connection can be reused.
        let _ = resp.into_body().collect().await;
        Ok::<_, hyper::Error>(status)
    };
    match tokio::time::timeout(ctx.opts.http_timeout, exchange).await {
        Err(_) => {
            *conn = None;
            Outcome::Retry("timed out".into())
        }
        Ok(Err(e)) => {
            *conn = None;
            Outcome::Retry(e.to_string())
        }
        Ok(Ok(s)) if s.is_success() => Outcome::Delivered,
        Ok(Ok(s)) if s.as_u16() == 429 || s.as_u16() == 408 || s.is_server_error() => {
            Outcome::Retry(format!("status {s}"))
        }
        Ok(Ok(s)) => Outcome::Reject(s.as_u16()),
    }
}

impl Outcome {
    fn log_bad(self, e: &str) -> Outcome {
        tracing::warn!(error = %e, "cannot build the drain request");
        self
    }
}

/// `https://` and `http://`.
pub(crate) async fn run(ctx: DrainCtx) {
    let id = ctx.target.id.clone();
    let auth = basic_auth(&ctx.target.url.raw);
    let mut conn = None;
    let mut backoff = ctx.backoff();
    let max_lines = ctx.opts.http_batch_lines.max(1);
    while let Some(mut batch) = ctx.queue.next_batch(max_lines).await {
        if batch.items.len() < max_lines && !ctx.opts.http_linger.is_zero() {
            tokio::time::sleep(ctx.opts.http_linger).await;
            ctx.queue.take_more(&mut batch, max_lines);
        }
        // Keep the body within the byte bound: put the excess back in front is not possible
        // without reordering, so cut the batch into several requests instead.
        let l10 = ctx.l10(batch.dropped.take());
        let mut chunks: Vec<Batch> = Vec::new();
        let mut cur = Batch {
            items: Vec::new(),
            dropped: None,
        };
        let mut bytes = 0;
        for item in batch.items {
            let len = item.line().line.len() + 96;
            if !cur.items.is_empty() && bytes + len > ctx.opts.http_batch_bytes {
                chunks.push(std::mem::replace(
                    &mut cur,
                    Batch {
                        items: Vec::new(),
                        dropped: None,
                    },
                ));
                bytes = 0;
            }
            bytes += len;
            cur.items.push(item);
        }
        chunks.push(cur);
        let mut l10 = l10;
        for chunk in chunks {
            let (body, count) = body_of(&ctx, &chunk, l10.take().as_ref());
            if count == 0 {
                continue;
            }
            let frame_id = uuid::Uuid::new_v4().simple().to_string();
            let mut closed = false;
            loop {
                match send(
                    &ctx,
                    &mut conn,
                    body.clone(),
                    count,
                    &frame_id,
                    auth.as_deref(),
                )
                .await
                {
                    Outcome::Delivered => {
                        backoff.reset();
                        ctx.metrics.delivered.inc_by(count as u64);
                        break;
                    }
                    Outcome::Reject(status) => {
                        ctx.metrics.dropped.inc_by(count as u64);
                        tracing::warn!(drain = %id, status, lines = count, "drain rejected a batch; dropped");
                        break;
                    }
                    Outcome::Retry(why) => {
                        ctx.metrics.retried.inc_by(count as u64);
                        let d = backoff.next_delay();
                        tracing::warn!(drain = %id, reason = %why, frame_id = %frame_id, retry_in = ?d, "drain batch failed; will retry");
                        if !ctx.pause(d).await {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            for i in chunk.items {
                i.done();
            }
            if closed {
                return;
            }
        }
    }
    ctx.metrics.connected.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo() {
        assert_eq!(
            url_userinfo("https://u:p%40ss@h:1/x").as_deref(),
            Some("u:p@ss")
        );
        assert_eq!(url_userinfo("https://h/x@y"), None);
    }
}
