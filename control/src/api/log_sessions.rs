//! Log sessions (`POST /apps/{app}/log-sessions`): a URL that streams the app's lines as
//! Server-Sent Events, carrying its own unguessable credential (only its hash is stored) that
//! expires; Heroku clients open it without an Authorization header.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::apps::load;
use super::{Body, json, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::logs::{LogQuery, format_line};
use crate::store::{LogSessionRow, new_id, new_secret, now_us, sha256_hex};

/// Most history lines one session may ask for.
pub const MAX_LINES: i64 = 1500;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSession {
    #[serde(default)]
    pub lines: Option<i64>,
    #[serde(default)]
    pub tail: Option<bool>,
    #[serde(default)]
    pub dyno: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// A log session: the URL streams the app's lines with its own credential.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogSession {
    pub id: String,
    pub logplex_url: String,
    pub created_at: String,
    pub updated_at: String,
}

fn base_url(cp: &ControlPlane, headers: &HeaderMap) -> String {
    if let Some(u) = &cp.settings().public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// Create a log session (a URL with its own credential)
#[utoipa::path(post, path = "/apps/{app}/log-sessions", tag = "log-sessions", request_body = CreateSession, responses((status = 201, body = LogSession)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    Body(body): Body<CreateSession>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let lines = body.lines.unwrap_or(100);
    if !(0..=MAX_LINES).contains(&lines) {
        return Err(ApiError::invalid("lines", format!("must be 0–{MAX_LINES}")));
    }
    if let Some(s) = &body.source
        && s != "app"
        && s != "heroku"
    {
        return Err(ApiError::invalid("source", "app or heroku"));
    }
    if let Some(d) = &body.dyno
        && !(wharf_config::validate::is_dyno_name(d) || wharf_config::names::check_name(d).is_ok())
    {
        return Err(ApiError::invalid(
            "dyno",
            "a dyno name (web.1) or a process type (web)",
        ));
    }
    let secret = new_secret();
    let now = now_us();
    let row = LogSessionRow {
        id: new_id(),
        app_id: a.id.clone(),
        secret_hash: sha256_hex(&secret),
        lines,
        tail: i64::from(body.tail.unwrap_or(false)),
        dyno: body.dyno,
        source: body.source,
        expires_at: now + (cp.settings().log_session_ttl_secs as i64) * 1_000_000,
        created_at: now,
    };
    sqlx::query("INSERT INTO log_sessions (id, app_id, secret_hash, lines, tail, dyno, source, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&row.id)
        .bind(&row.app_id)
        .bind(&row.secret_hash)
        .bind(row.lines)
        .bind(row.tail)
        .bind(&row.dyno)
        .bind(&row.source)
        .bind(row.expires_at)
        .bind(now)
        .execute(cp.store().pool())
        .await?;
    sqlx::query("DELETE FROM log_sessions WHERE expires_at < $1")
        .bind(now)
        .execute(cp.store().pool())
        .await?;
    let url = format!(
        "{}/log-sessions/{}?token={secret}",
        base_url(&cp, &headers),
        row.id
    );
    Ok(json(
        StatusCode::CREATED,
        LogSession {
            id: row.id,
            logplex_url: url,
            created_at: time(now),
            updated_at: time(now),
        },
    ))
}

fn token_of(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

/// Stream a log session (Server-Sent Events; credential in ?token=)
///
/// `GET /log-sessions/{id}?token=…`: the stream (history, then the tail when asked).
#[utoipa::path(get, path = "/log-sessions/{session}", tag = "log-sessions", security(()),
    params(("token" = String, Query, description = "The session's credential, from its logplex_url")),
    responses((status = 200, description = "`data:` lines in logplex text format", body = String, content_type = "text/event-stream")))]
pub async fn stream(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let denied = || ApiError::NotFound("No such log session, or it expired.".into());
    let token = token_of(query.as_deref())
        .ok_or_else(|| ApiError::Unauthorized("The log-session URL lacks its token.".into()))?;
    let row: LogSessionRow = sqlx::query_as("SELECT * FROM log_sessions WHERE id = $1")
        .bind(&id)
        .fetch_optional(cp.store().pool())
        .await?
        .ok_or_else(denied)?;
    if row.secret_hash != sha256_hex(&token) || row.expires_at < now_us() {
        return Err(denied());
    }
    let mut c = cp.store().pool().acquire().await?;
    let a = crate::store::find_app(&mut c, &row.app_id).await?;
    drop(c);
    let key = a.key();
    let q = LogQuery {
        lines: row.lines as usize,
        dyno: row.dyno.clone(),
        source: row.source.clone(),
    };
    let resumed = headers.contains_key("last-event-id");
    let src = cp.log_source().clone();
    let tail = (row.tail != 0).then(|| src.tail(&key, &q));
    let history = if resumed {
        Vec::new()
    } else {
        src.history(&key, &q).await
    };
    let first = futures::stream::iter([Event::default().retry(Duration::from_millis(1))]);
    let hist = futures::stream::iter(
        history
            .into_iter()
            .map(|l| Event::default().data(format_line(&l))),
    );
    let events: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>> = match tail {
        Some(t) => Box::pin(
            first
                .chain(hist)
                .chain(t.map(|l| Event::default().data(format_line(&l)))),
        ),
        None => Box::pin(first.chain(hist)),
    };
    let events = events.map(Ok::<Event, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
