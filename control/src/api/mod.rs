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
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::store::rfc3339;
use crate::{ControlPlane, audit, canary, openapi};

/// Every operation of the API, each mounted and documented in one act: `routes!` takes the
/// method and path from the handler's `#[utoipa::path]`, so the router and the OpenAPI document
/// cannot drift. Nothing is mounted with a bare `route` (a test reads the source for it).
pub fn routes(cp: Option<&ControlPlane>) -> OpenApiRouter<ControlPlane> {
    let audited = audited();
    let audited = match cp {
        Some(cp) => audited.route_layer(axum::middleware::from_fn_with_state(
            cp.clone(),
            crate::audit::layer,
        )),
        None => audited,
    };
    audited.merge(
        OpenApiRouter::new()
            .routes(routes!(snapshot::poll))
            .routes(routes!(openapi::serve))
            .routes(routes!(metrics)),
    )
}

/// The operations the audit layer watches (every one but the snapshot, the document and metrics).
fn audited() -> OpenApiRouter<ControlPlane> {
    OpenApiRouter::new()
        .routes(routes!(tokens::account))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::info, tokens::delete))
        .routes(routes!(spaces::list, spaces::create))
        .routes(routes!(spaces::info, spaces::delete))
        .routes(routes!(apps::list, apps::create))
        .routes(routes!(apps::list_for_user))
        .routes(routes!(apps::info, apps::update, apps::delete))
        .routes(routes!(config_vars::get_vars, config_vars::patch_vars))
        .routes(routes!(releases::list, releases::create))
        .routes(routes!(releases::info))
        .routes(routes!(releases::list_statuses, releases::create_status))
        .routes(routes!(formation::list, formation::batch))
        .routes(routes!(
            formation::info,
            formation::update,
            formation::delete
        ))
        .routes(routes!(dynos::list, dynos::create, dynos::restart_all))
        .routes(routes!(dynos::info, dynos::restart))
        .routes(routes!(builds::list, builds::create))
        .routes(routes!(builds::info))
        .routes(routes!(build_output::create))
        .routes(routes!(domains::list, domains::create))
        .routes(routes!(domains::info, domains::delete))
        .routes(routes!(drains::list, drains::create))
        .routes(routes!(drains::info, drains::delete))
        .routes(routes!(log_sessions::create))
        .routes(routes!(log_sessions::stream))
        .routes(routes!(routes::list_for_app))
        .routes(routes!(filters::list_attachments, filters::attach))
        .routes(routes!(
            filters::attachment_info,
            filters::update_attachment,
            filters::detach
        ))
        .routes(routes!(sites::list, sites::create))
        .routes(routes!(sites::info, sites::update, sites::delete))
        .routes(routes!(routes::list_for_site))
        .routes(routes!(routes::list, routes::create))
        .routes(routes!(routes::info, routes::delete))
        .routes(routes!(filters::list, filters::create))
        .routes(routes!(filters::info, filters::update, filters::delete))
        .routes(routes!(certificates::list, certificates::create))
        .routes(routes!(certificates::info, certificates::delete))
        .routes(routes!(pipelines::list, pipelines::create))
        .routes(routes!(
            pipelines::info,
            pipelines::update,
            pipelines::delete
        ))
        .routes(routes!(pipelines::list_couplings))
        .routes(routes!(pipelines::list_promotions))
        .routes(routes!(pipelines::couple))
        .routes(routes!(pipelines::coupling_info, pipelines::uncouple))
        .routes(routes!(pipelines::promote))
        .routes(routes!(pipelines::promotion_info))
        .routes(routes!(canary::get_settings, canary::put_settings))
        .routes(routes!(canary::info))
        .routes(routes!(canary::promote))
        .routes(routes!(canary::abort))
        .routes(routes!(audit::list))
}

/// The API with its document at `/openapi.json`, the JSON fallbacks and the NUL check.
pub fn router(cp: ControlPlane) -> Router {
    let (router, doc) = routes(Some(&cp)).split_for_parts();
    let doc = std::sync::Arc::new(openapi::finish(doc));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(doc))
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
#[utoipa::path(get, path = "/metrics", tag = "meta", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
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
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorBody::new("method_not_allowed", "Method not allowed on this endpoint."),
    )
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

/// Delete the row `id` of `table` in one write (the snapshot follows; `converge` tells the
/// runtime to converge too).
pub(crate) async fn delete_row(
    cp: &ControlPlane,
    table: &str,
    id: &str,
    converge: bool,
) -> ApiResult<()> {
    let mut w = cp.begin().await?;
    sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, converge).await
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

pub fn json(status: StatusCode, v: impl Serialize) -> Response {
    (status, axum::Json(v)).into_response()
}

/// A store timestamp (microseconds) as the RFC 3339 text the API answers with.
pub fn time(us: i64) -> String {
    rfc3339(us)
}

/// An empty object: the answer of an accepted request with nothing to tell.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Empty {}

/// The `{id}` of a related resource.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Id {
    pub id: String,
}

/// The `{id, name}` a resource gives of a related one (its app, space, pipeline, …).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Named {
    pub id: String,
    pub name: String,
}

impl Named {
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Named {
            id: id.into(),
            name: name.into(),
        }
    }
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
pub fn paginate<T: Serialize>(
    headers: &HeaderMap,
    items: Vec<T>,
    fields: &[&str],
) -> ApiResult<Response> {
    let mut items = items
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
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
