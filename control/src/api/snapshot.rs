//! `GET /v1/snapshot?after=REVISION[&wait=SECS]`: the planes' HTTP feed. Answers the current
//! snapshot (with `Wharf-Revision`) as soon as its revision is past `after`; otherwise waits up
//! to `wait` seconds and answers `204` with the unchanged revision. Admin only: a snapshot
//! holds config vars and private keys.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

pub const REVISION_HEADER: &str = "wharf-revision";

fn param(q: Option<&str>, name: &str) -> ApiResult<Option<u64>> {
    let Some(q) = q else { return Ok(None) };
    for kv in q.split('&') {
        if let Some((k, v)) = kv.split_once('=')
            && k == name
        {
            return v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("`{name}` is a whole number")));
        }
    }
    Ok(None)
}

/// The current snapshot; long-polls with ?after=REVISION&wait=SECS (admin)
#[utoipa::path(get, path = "/v1/snapshot", tag = "snapshot", params(
        ("after" = Option<u64>, Query, description = "Answer only once the revision is past this one"),
        ("wait" = Option<u64>, Query, description = "Seconds to wait for a newer revision (capped)")),
    responses(
        (status = 200, description = "The snapshot: the whole desired state", body = Value,
            headers(("wharf-revision" = u64, description = "Its revision"))),
        (status = 204, description = "No newer snapshot within the wait",
            headers(("wharf-revision" = u64, description = "The unchanged revision")))))]
pub async fn poll(
    State(cp): State<ControlPlane>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let after = param(q.as_deref(), "after")?;
    let wait = param(q.as_deref(), "wait")?
        .unwrap_or(cp.settings().max_poll_secs)
        .min(cp.settings().max_poll_secs);
    let mut rx = cp.snapshots();
    if let Some(after) = after {
        let deadline = tokio::time::sleep(Duration::from_secs(wait));
        tokio::pin!(deadline);
        loop {
            if rx.borrow_and_update().revision > after {
                break;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = &mut deadline => {
                    let mut r = StatusCode::NO_CONTENT.into_response();
                    let rev = rx.borrow().revision;
                    r.headers_mut().insert(REVISION_HEADER, HeaderValue::from(rev));
                    return Ok(r);
                }
            }
        }
    }
    let snap = rx.borrow().clone();
    let body = wharf_config::to_json(&snap);
    let mut r = (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    r.headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(snap.revision));
    Ok(r)
}
