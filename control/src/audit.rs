//! The audit trail: every change — who (email), with which token, what (method and route),
//! on which app and space, the resource before and after (secrets redacted), when.
//!
//! Changes made through the API are recorded by one layer ([`layer`]) around every mutating
//! route, so a new endpoint is audited without code of its own: before the handler runs it
//! reads the resource (`GET` on the same path, for `PATCH`/`PUT`/`DELETE`), after a 2xx answer
//! it records the answer as the after-state. Changes the control plane makes on its own
//! (a promotion resumed at start, a canary promoted by its timer or aborted by the router)
//! are recorded with [`record`] and the actor `system`. Each entry is also published on
//! [`crate::ControlPlane::events`]. Entries are listed by `GET /audit` (filter by app, space,
//! action, actor), admin tokens see all, other tokens the apps and spaces in their scope.

use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::Uri;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::FromRow;
use tower::ServiceExt;

use crate::ControlPlane;
use crate::api::{Id, paginate, time};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{find_app, new_id, now_us};

/// Largest answer the layer keeps as an after-state; bigger ones are recorded as a note.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub token_id: Option<String>,
    pub action: String,
    pub resource: String,
    pub app: Option<String>,
    pub space: Option<String>,
    pub status: i64,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One entry as the API and the event stream show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    /// Microseconds since the epoch (the default sort key).
    pub at: i64,
    pub created_at: String,
    pub actor: String,
    pub token_id: Option<String>,
    pub action: String,
    pub resource: String,
    pub app: Option<String>,
    pub space: Option<String>,
    pub status: i64,
    pub before: Value,
    pub after: Value,
}

impl AuditRow {
    pub fn entry(&self) -> AuditEntry {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null)
        };
        AuditEntry {
            id: self.id.clone(),
            at: self.at,
            created_at: crate::store::rfc3339(self.at),
            actor: self.actor.clone(),
            token_id: self.token_id.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            app: self.app.clone(),
            space: self.space.clone(),
            status: self.status,
            before: parse(&self.before),
            after: parse(&self.after),
        }
    }
}

/// Who made a change.
#[derive(Debug, Clone)]
pub struct Actor {
    pub email: String,
    pub token_id: Option<String>,
}

impl Actor {
    /// The control plane itself (timers, router events, resumed work).
    pub fn system() -> Actor {
        Actor {
            email: "system".into(),
            token_id: None,
        }
    }
}

impl From<&Caller> for Actor {
    fn from(c: &Caller) -> Actor {
        Actor {
            email: c.email.clone(),
            token_id: Some(c.token_id.clone()),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub action: String,
    pub resource: String,
    pub app: Option<String>,
    pub space: Option<String>,
    pub status: u16,
    pub before: Value,
    pub after: Value,
}

/// Record one change (redacting both states) and publish it as an event.
pub async fn record(cp: &ControlPlane, actor: &Actor, change: Change) -> ApiResult<AuditEntry> {
    let secrets = cp.secrets();
    let before = secrets.json(&change.before);
    let after = secrets.json(&change.after);
    let to_text = |v: &Value| (!v.is_null()).then(|| v.to_string());
    let row = AuditRow {
        id: new_id(),
        at: now_us(),
        actor: actor.email.clone(),
        token_id: actor.token_id.clone(),
        action: change.action,
        resource: change.resource,
        app: change.app,
        space: change.space,
        status: i64::from(change.status),
        before: to_text(&before),
        after: to_text(&after),
    };
    sqlx::query("INSERT INTO audit (id, at, actor, token_id, action, resource, app, space, status, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(&row.id)
        .bind(row.at)
        .bind(&row.actor)
        .bind(&row.token_id)
        .bind(&row.action)
        .bind(&row.resource)
        .bind(&row.app)
        .bind(&row.space)
        .bind(row.status)
        .bind(&row.before)
        .bind(&row.after)
        .execute(cp.store().pool())
        .await?;
    cp.metrics().audit_entries.inc();
    tracing::info!(actor = %row.actor, action = %row.action, resource = %row.resource,
        app = row.app.as_deref().unwrap_or("-"), "audit");
    let entry = row.entry();
    cp.publish(crate::ControlEvent::Audit(entry.clone()));
    Ok(entry)
}

/// The value of `{name}` in a route template, read from the concrete path.
fn path_param(template: &str, path: &str, name: &str) -> Option<String> {
    let want = format!("{{{name}}}");
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == want)
        .map(|(_, p)| p.to_owned())
}

/// The audit layer (mounted as a route layer, so the matched route template is known).
pub async fn layer(State(cp): State<ControlPlane>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    // Opening a log session reads; it changes nothing worth a trail.
    if template.is_empty() || template == "/apps/{app}/log-sessions" {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let auth = req.headers().get(header::AUTHORIZATION).cloned();
    let (mut parts, body) = req.into_parts();
    let caller =
        match <Caller as axum::extract::FromRequestParts<ControlPlane>>::from_request_parts(
            &mut parts, &cp,
        )
        .await
        {
            Ok(c) => c,
            // No valid token: the handler answers 401 and changes nothing.
            Err(_) => return next.run(Request::from_parts(parts, body)).await,
        };
    let req = Request::from_parts(parts, body);

    let mut app_key = None;
    let mut space = path_param(&template, &path, "space");
    if let Some(ident) = path_param(&template, &path, "app")
        && let Ok(mut c) = cp.store().pool().acquire().await
        && let Ok(a) = find_app(&mut c, &ident).await
    {
        app_key = Some(a.key());
        space = Some(a.space_name.clone());
    }
    let before = if matches!(method, Method::PATCH | Method::PUT | Method::DELETE) {
        read_back(&cp, &path, auth.as_ref()).await
    } else {
        Value::Null
    };

    let resp = next.run(req).await;
    let status = resp.status();
    if !status.is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, resource = %path, "audit: cannot read the answer");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let after: Value = if method == Method::DELETE {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let from_body = |v: &Value| -> (Option<String>, Option<String>) {
        let app = v["app"]["name"].as_str().map(str::to_owned);
        let space = v["space"]["name"].as_str().map(str::to_owned);
        (app, space)
    };
    let (body_app, body_space) = from_body(&after);
    if app_key.is_none() {
        app_key = if template == "/apps" {
            after["name"].as_str().map(str::to_owned)
        } else {
            body_app
        };
    }
    if space.is_none() {
        space = if template == "/spaces" {
            after["name"].as_str().map(str::to_owned)
        } else {
            body_space
        };
    }
    let change = Change {
        action: format!("{method} {template}"),
        resource: path.clone(),
        app: app_key,
        space,
        status: status.as_u16(),
        before,
        after,
    };
    if let Err(e) = record(&cp, &Actor::from(&caller), change).await {
        cp.metrics().audit_failures.inc();
        tracing::error!(error = %e, resource = %path, "audit: the change is made but its entry could not be stored");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The resource at `path` as the caller can see it now, or null.
async fn read_back(cp: &ControlPlane, path: &str, auth: Option<&header::HeaderValue>) -> Value {
    let mut req = Request::get(path);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let Ok(req) = req.body(Body::empty()) else {
        return Value::Null;
    };
    let Ok(resp) = crate::api::router(cp.clone()).oneshot(req).await;
    if !resp.status().is_success() {
        return Value::Null;
    }
    match axum::body::to_bytes(resp.into_body(), MAX_BODY).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// One audit entry as `/audit` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditItem {
    pub id: String,
    /// Microseconds since the epoch (the default sort key).
    pub at: i64,
    pub created_at: String,
    pub actor: AuditActor,
    pub token: Option<Id>,
    /// `METHOD /route/template`, or the system's own action.
    pub action: String,
    pub resource: String,
    pub app: Option<NameOnly>,
    pub space: Option<NameOnly>,
    pub status: i64,
    /// The resource before the change (secrets redacted).
    pub before: Value,
    /// The answer after the change (secrets redacted).
    pub after: Value,
}

/// Who acted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditActor {
    pub email: String,
}

/// A resource named by name alone.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NameOnly {
    pub name: String,
}

impl From<AuditEntry> for AuditItem {
    fn from(e: AuditEntry) -> Self {
        AuditItem {
            id: e.id,
            at: e.at,
            created_at: time(e.at),
            actor: AuditActor { email: e.actor },
            token: e.token_id.map(|id| Id { id }),
            action: e.action,
            resource: e.resource,
            app: e.app.map(|name| NameOnly { name }),
            space: e.space.map(|name| NameOnly { name }),
            status: e.status,
            before: e.before,
            after: e.after,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// App key `{app}-{space}` (or a bare name when only one space has it).
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub space: Option<String>,
    /// A prefix of the action, e.g. `PATCH` or `POST /pipeline-promotions`.
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
}

/// The audit trail (?app=&space=&action=&actor=); secrets redacted
///
/// `GET /audit?app=&space=&action=&actor=`.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = [AuditItem])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(q) = Query::<AuditQuery>::try_from_uri(&uri)
        .map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let mut app_key = None;
    if let Some(ident) = &q.app {
        let mut c = cp.store().pool().acquire().await?;
        app_key = Some(match find_app(&mut c, ident).await {
            Ok(a) => {
                caller.require_app(&a)?;
                a.key()
            }
            // A destroyed app keeps its trail: match the key as given.
            Err(ApiError::NotFound(_)) => ident.clone(),
            Err(e) => return Err(e),
        });
    }
    if let Some(s) = &q.space {
        caller.require_space(s)?;
    }
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT * FROM audit WHERE ($1 = '' OR app = $1) AND ($2 = '' OR space = $2) \
         AND ($3 = '' OR actor = $3) ORDER BY at",
    )
    .bind(app_key.clone().unwrap_or_default())
    .bind(q.space.clone().unwrap_or_default())
    .bind(q.actor.clone().unwrap_or_default())
    .fetch_all(cp.store().pool())
    .await?;
    let visible = |r: &AuditRow| {
        caller.scope.admin
            || r.space.as_deref().is_some_and(|s| caller.can_space(s))
            || r.app
                .as_deref()
                .is_some_and(|a| caller.scope.apps.iter().any(|x| x == a))
    };
    let items = rows
        .iter()
        .filter(|r| visible(r))
        .filter(|r| q.action.as_deref().is_none_or(|p| r.action.starts_with(p)))
        .map(|r| AuditItem::from(r.entry()))
        .collect::<Vec<_>>();
    paginate(&headers, items, &["at", "id"])
}
