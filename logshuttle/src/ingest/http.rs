//! Logplex-compatible `POST /logs`: `Content-Type: application/logplex-1`, octet-counted frames,
//! `Logplex-Msg-Count` checked, Basic auth whose password is the app's log token. A request is
//! taken whole or refused whole, with the reason in the body; `204` is sent only once the lines
//! are on the bus (with Kafka: acknowledged by the broker), `503` if the bus failed them or did
//! not acknowledge them within `Options::ingest_ack_timeout` (a broker that is away).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;

use crate::Handle;
use crate::wire;

/// The router to mount (all-in-one binary) or serve alone (`wharf logshuttle`).
pub fn router(handle: Handle) -> Router {
    Router::new().route("/logs", post(logs)).with_state(handle)
}

fn refuse(handle: &Handle, status: StatusCode, reason: &str, msg: String) -> Response {
    handle
        .metrics()
        .ingest_errors
        .with_label_values(&["http", reason])
        .inc();
    tracing::debug!(%status, reason, detail = %msg, "logplex POST refused");
    let mut r = (status, format!("{msg}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"logs\""),
        );
    }
    r
}

fn token_of(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, pass) = text.split_once(':')?;
    Some(pass.to_owned())
}

async fn logs(State(handle): State<Handle>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = token_of(&headers) else {
        return refuse(
            &handle,
            StatusCode::UNAUTHORIZED,
            "auth",
            "Basic authentication with the app's log token as password is required".into(),
        );
    };
    let Some((app, space)) = handle.app_for_token(&token) else {
        return refuse(
            &handle,
            StatusCode::UNAUTHORIZED,
            "auth",
            "unknown log token".into(),
        );
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.split(';').next().map(str::trim) != Some("application/logplex-1") {
        return refuse(
            &handle,
            StatusCode::BAD_REQUEST,
            "content-type",
            format!("Content-Type must be application/logplex-1, not {ctype:?}"),
        );
    }
    let count: Option<usize> = headers
        .get("logplex-msg-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let Some(count) = count else {
        return refuse(
            &handle,
            StatusCode::BAD_REQUEST,
            "msg-count",
            "Logplex-Msg-Count header is missing or not a number".into(),
        );
    };
    let frames = match wire::split_logplex_body(&body) {
        Ok(f) => f,
        Err(e) => return refuse(&handle, StatusCode::BAD_REQUEST, "framing", e),
    };
    if frames.len() != count {
        return refuse(
            &handle,
            StatusCode::BAD_REQUEST,
            "msg-count",
            format!(
                "Logplex-Msg-Count is {count} but the body holds {} frames",
                frames.len()
            ),
        );
    }
    // Gathered in the bus's own form (Kafka records as they are parsed); nothing is sent
    // unless every frame parses.
    let mut lines = handle.gather();
    let rates = handle.rates();
    for (i, f) in frames.iter().enumerate() {
        match wire::parse_message(f) {
            Ok(m) => {
                if handle.within_rate(&rates, &app, &space) {
                    lines.push(m.line_ref(&app, &space));
                }
            }
            Err(e) => {
                return refuse(
                    &handle,
                    StatusCode::BAD_REQUEST,
                    "syslog",
                    format!("frame {}: {e}", i + 1),
                );
            }
        }
    }
    // Accepted means durable: answer only once the bus holds the lines (Kafka: the broker
    // acknowledged them), so a client that saw 204 never needs to send them again.
    let n = lines.len();
    let wait = handle.options().ingest_ack_timeout;
    let durable = async { handle.send_gathered(&mut lines).await?.await };
    match tokio::time::timeout(wait, durable).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => {
            tracing::warn!(app = %app, lines = n, wait = ?wait, "logplex POST: the bus did not acknowledge the lines in time");
            refuse(
                &handle,
                StatusCode::SERVICE_UNAVAILABLE,
                "bus_timeout",
                format!(
                    "the log bus did not acknowledge these {n} lines within {} s (Kafka unreachable?); send them again",
                    wait.as_secs_f32()
                ),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(app = %app, lines = n, error = %e, "logplex POST: the bus did not store the lines");
            refuse(
                &handle,
                StatusCode::SERVICE_UNAVAILABLE,
                "bus",
                format!("the log bus did not store these {n} lines ({e}); send them again"),
            )
        }
    }
}
