//! The HTTP API: Heroku Platform API v3 shapes where Heroku has the resource, Akkeris' for
//! spaces, sites, routes and filters. One module per resource; shared plumbing here: the JSON
//! body extractor (400 for malformed JSON, 422 for wrong shapes), `Range`/`Next-Range`
//! pagination, and the fallbacks that keep every answer JSON.

pub mod apps;
pub mod build_output;
pub mod builds;
pub mod certificates;
pub mod config_vars;
pub mod domains;
pub mod drains;
pub mod dynos;
pub mod filters;
pub mod formation;
pub mod log_sessions;
pub mod pipelines;
pub mod releases;
pub mod routes;
pub mod sites;
pub mod snapshot;
pub mod spaces;
pub mod tokens;

use std::cmp::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ControlPlane;
use crate::error::{ApiError, ApiResult};
use crate::store::rfc3339;

/// Every route of the API.
pub fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/account", get(tokens::account))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{token}", get(tokens::info).delete(tokens::delete))
        .route("/spaces", get(spaces::list).post(spaces::create))
        .route("/spaces/{space}", get(spaces::info).delete(spaces::delete))
        .route("/apps", get(apps::list).post(apps::create))
        .route("/users/{user}/apps", get(apps::list))
        .route(
            "/apps/{app}",
            get(apps::info).patch(apps::update).delete(apps::delete),
        )
        .route(
            "/apps/{app}/config-vars",
            get(config_vars::get_vars).patch(config_vars::patch_vars),
        )
        .route(
            "/apps/{app}/releases",
            get(releases::list).post(releases::create),
        )
        .route("/apps/{app}/releases/{release}", get(releases::info))
        .route(
            "/apps/{app}/releases/{release}/statuses",
            get(releases::list_statuses).post(releases::create_status),
        )
        .route(
            "/apps/{app}/formation",
            get(formation::list).patch(formation::batch),
        )
        .route(
            "/apps/{app}/formation/{ptype}",
            get(formation::info)
                .patch(formation::update)
                .delete(formation::delete),
        )
        .route(
            "/apps/{app}/dynos",
            get(dynos::list)
                .post(dynos::create)
                .delete(dynos::restart_all),
        )
        .route(
            "/apps/{app}/dynos/{dyno}",
            get(dynos::info).delete(dynos::restart),
        )
        .route("/apps/{app}/builds", get(builds::list).post(builds::create))
        .route("/apps/{app}/builds/{build}", get(builds::info))
        .route("/apps/{app}/build-output", post(build_output::create))
        .route(
            "/apps/{app}/domains",
            get(domains::list).post(domains::create),
        )
        .route(
            "/apps/{app}/domains/{domain}",
            get(domains::info).delete(domains::delete),
        )
        .route(
            "/apps/{app}/log-drains",
            get(drains::list).post(drains::create),
        )
        .route(
            "/apps/{app}/log-drains/{drain}",
            get(drains::info).delete(drains::delete),
        )
        .route("/apps/{app}/log-sessions", post(log_sessions::create))
        .route("/log-sessions/{session}", get(log_sessions::stream))
        .route("/apps/{app}/routes", get(routes::list_for_app))
        .route(
            "/apps/{app}/filters",
            get(filters::list_attachments).post(filters::attach),
        )
        .route(
            "/apps/{app}/filters/{attachment}",
            get(filters::attachment_info)
                .put(filters::update_attachment)
                .delete(filters::detach),
        )
        .route("/sites", get(sites::list).post(sites::create))
        .route(
            "/sites/{site}",
            get(sites::info).patch(sites::update).delete(sites::delete),
        )
        .route("/sites/{site}/routes", get(routes::list_for_site))
        .route("/routes", get(routes::list).post(routes::create))
        .route("/routes/{route}", get(routes::info).delete(routes::delete))
        .route("/filters", get(filters::list).post(filters::create))
        .route(
            "/filters/{filter}",
            get(filters::info)
                .put(filters::update)
                .delete(filters::delete),
        )
        .route(
            "/certificates",
            get(certificates::list).post(certificates::create),
        )
        .route(
            "/certificates/{cert}",
            get(certificates::info).delete(certificates::delete),
        )
        .route("/pipelines", get(pipelines::list).post(pipelines::create))
        .route(
            "/pipelines/{pipeline}",
            get(pipelines::info)
                .patch(pipelines::update)
                .delete(pipelines::delete),
        )
        .route(
            "/pipelines/{pipeline}/pipeline-couplings",
            get(pipelines::list_couplings),
        )
        .route(
            "/pipelines/{pipeline}/promotions",
            get(pipelines::list_promotions),
        )
        .route("/pipeline-couplings", post(pipelines::couple))
        .route(
            "/pipeline-couplings/{coupling}",
            get(pipelines::coupling_info).delete(pipelines::uncouple),
        )
        .route("/pipeline-promotions", post(pipelines::promote))
        .route(
            "/pipeline-promotions/{promotion}",
            get(pipelines::promotion_info),
        )
        .route(
            "/apps/{app}/canary-settings",
            get(crate::canary::get_settings).put(crate::canary::put_settings),
        )
        .route("/apps/{app}/canary", get(crate::canary::info))
        .route("/apps/{app}/canary/promote", post(crate::canary::promote))
        .route("/apps/{app}/canary/abort", post(crate::canary::abort))
        .route("/audit", get(crate::audit::list))
        .route_layer(axum::middleware::from_fn_with_state(
            cp.clone(),
            crate::audit::layer,
        ))
        .route("/v1/snapshot", get(snapshot::poll))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(reject_nul))
        .with_state(cp)
}

/// No identifier may hold a NUL byte (PostgreSQL text cannot): 400 before any handler runs.
async fn reject_nul(req: Request, next: axum::middleware::Next) -> Response {
    let raw = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    if raw.to_ascii_lowercase().contains("%00") {
        return ApiError::BadRequest("NUL bytes are not allowed in paths or queries.".into())
            .into_response();
    }
    next.run(req).await
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Prometheus text exposition of the control plane's metrics (no token: scrapers have none).
async fn metrics(axum::extract::State(cp): axum::extract::State<ControlPlane>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        cp.metrics().render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("No such endpoint.".into())
}

async fn method_not_allowed() -> Response {
    let body = serde_json::json!({"id": "method_not_allowed", "message": "Method not allowed on this endpoint."});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// A JSON request body: malformed JSON is 400, a wrong shape 422. An empty body reads as `{}`.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
        if has_nul(&value) {
            return Err(ApiError::invalid("body", "strings may not hold NUL bytes"));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::invalid("body", e.to_string()))
    }
}

/// `200` (or `201`) with a JSON body.
/// The one row `sql` selects with `binds` as `$1`, `$2`, …, or a 404 naming `what` and `ident`.
pub async fn find_one<T>(
    cp: &ControlPlane,
    sql: &str,
    binds: &[&str],
    what: &str,
    ident: &str,
) -> ApiResult<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let mut q = sqlx::query_as::<_, T>(sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.fetch_optional(cp.store().pool())
        .await?
        .ok_or_else(|| ApiError::not_found(what, ident))
}

pub fn json(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

pub fn ts(us: i64) -> Value {
    Value::String(rfc3339(us))
}

/// A parsed `Range: <field> [\]]<start>..[<end>][; max=N[, order=asc|desc]]`.
#[derive(Debug, Clone, PartialEq)]
struct Range {
    field: String,
    start: Option<String>,
    start_exclusive: bool,
    end: Option<String>,
    max: usize,
    desc: bool,
}

const DEFAULT_MAX: usize = 200;
const MAX_MAX: usize = 1000;

fn parse_range(raw: &str, fields: &[&str]) -> ApiResult<Range> {
    let bad = || ApiError::BadRequest(format!("Invalid Range header {raw:?}."));
    let (head, params) = match raw.split_once(';') {
        Some((h, p)) => (h.trim(), p.trim()),
        None => (raw.trim(), ""),
    };
    let (field, span) = match head.split_once(' ') {
        Some((f, s)) => (f.trim(), s.trim()),
        None => (head, ".."),
    };
    if !fields.contains(&field) {
        return Err(ApiError::BadRequest(format!(
            "Cannot sort by {field:?}; use one of {}.",
            fields.join(", ")
        )));
    }
    let (start, end) = span.split_once("..").ok_or_else(bad)?;
    let (start, start_exclusive) = match start.strip_prefix(']') {
        Some(s) => (s, true),
        None => (start, false),
    };
    let mut r = Range {
        field: field.to_owned(),
        start: (!start.is_empty()).then(|| start.to_owned()),
        start_exclusive,
        end: (!end.is_empty()).then(|| end.to_owned()),
        max: DEFAULT_MAX,
        desc: false,
    };
    for p in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').ok_or_else(bad)?;
        match (k.trim(), v.trim()) {
            ("max", n) => {
                r.max = n.parse::<usize>().map_err(|_| bad())?.clamp(1, MAX_MAX);
            }
            ("order", "asc") => r.desc = false,
            ("order", "desc") => r.desc = true,
            _ => return Err(bad()),
        }
    }
    Ok(r)
}

fn key_of(v: &Value, field: &str) -> Value {
    v.get(field).cloned().unwrap_or(Value::Null)
}

fn cmp_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        _ => value_text(a).cmp(&value_text(b)),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Compare an item's key with a bound given as text in the Range header.
fn cmp_bound(v: &Value, bound: &str) -> Ordering {
    match v {
        Value::Number(n) => match bound.parse::<f64>() {
            Ok(b) => n
                .as_f64()
                .unwrap_or(0.0)
                .partial_cmp(&b)
                .unwrap_or(Ordering::Equal),
            Err(_) => value_text(v).as_str().cmp(bound),
        },
        _ => value_text(v).as_str().cmp(bound),
    }
}

/// Answer a list the way Heroku does: sorted by the Range field, at most `max` items, `206` and
/// `Next-Range` only when more remain.
pub fn paginate(
    headers: &HeaderMap,
    mut items: Vec<Value>,
    fields: &[&str],
) -> ApiResult<Response> {
    let range = match headers.get(header::RANGE) {
        Some(v) => parse_range(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Invalid Range header.".into()))?,
            fields,
        )?,
        None => parse_range(fields[0], fields)?,
    };
    let f = range.field.as_str();
    items.sort_by(|a, b| {
        let o = cmp_values(&key_of(a, f), &key_of(b, f));
        if range.desc { o.reverse() } else { o }
    });
    let in_range = |v: &Value| {
        let k = key_of(v, f);
        let after_start = match &range.start {
            None => true,
            Some(s) => {
                let o = cmp_bound(&k, s);
                let o = if range.desc { o.reverse() } else { o };
                if range.start_exclusive {
                    o == Ordering::Greater
                } else {
                    o != Ordering::Less
                }
            }
        };
        let before_end = match &range.end {
            None => true,
            Some(e) => {
                let o = cmp_bound(&k, e);
                let o = if range.desc { o.reverse() } else { o };
                o != Ordering::Greater
            }
        };
        after_start && before_end
    };
    let selected: Vec<Value> = items.into_iter().filter(in_range).collect();
    let more = selected.len() > range.max;
    let page: Vec<Value> = selected.into_iter().take(range.max).collect();
    let mut resp = json(
        if more {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        },
        Value::Array(page.clone()),
    );
    let h = resp.headers_mut();
    h.insert(
        header::ACCEPT_RANGES,
        HeaderValue::from_str(&fields.join(", ")).unwrap_or(HeaderValue::from_static("id")),
    );
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let cr = format!(
            "{f} {}..{}; max={}",
            value_text(&key_of(first, f)),
            value_text(&key_of(last, f)),
            range.max
        );
        if let Ok(v) = HeaderValue::from_str(&cr) {
            h.insert(header::CONTENT_RANGE, v);
        }
        if more {
            let next = format!(
                "{f} ]{}..; max={}{}",
                value_text(&key_of(last, f)),
                range.max,
                if range.desc { ", order=desc" } else { "" }
            );
            if let Ok(v) = HeaderValue::from_str(&next) {
                h.insert("next-range", v);
            }
        }
    }
    Ok(resp)
}

/// A name in the platform's rules (`[a-z][a-z0-9-]*`), or 422 naming the field.
pub fn check_name(field: &str, name: &str) -> ApiResult<()> {
    wharf_config::names::check_name(name).map_err(|e| ApiError::invalid(field, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parses_heroku_forms() {
        let r = parse_range("version ..; max=15, order=desc", &["id", "version"]).unwrap();
        assert_eq!(r.max, 15);
        assert!(r.desc);
        let r = parse_range("id ]abc..; max=2", &["id"]).unwrap();
        assert_eq!(r.start.as_deref(), Some("abc"));
        assert!(r.start_exclusive);
        assert!(parse_range("nope ..", &["id"]).is_err());
        assert!(parse_range("id ..; max=x", &["id"]).is_err());
    }
}
