//! Log drains (`/apps/{app}/log-drains`): where the shuttle forwards an app's lines.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::apps::load;
use super::{Body, Named, delete_row, find_one, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, DrainRow, find_app, new_id, now_us};

/// A log drain: where the shuttle forwards an app's lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct Drain {
    pub id: String,
    pub url: String,
    pub token: String,
    pub addon: Option<Named>,
    pub app: Named,
    pub created_at: String,
    pub updated_at: String,
}

fn drain_json(a: &AppRow, d: &DrainRow) -> Drain {
    Drain {
        id: d.id.clone(),
        url: d.url.clone(),
        token: d.token.clone(),
        addon: None,
        app: Named::new(a.id.clone(), a.key()),
        created_at: time(d.created_at),
        updated_at: time(d.updated_at),
    }
}

/// List log drains
#[utoipa::path(get, path = "/apps/{app}/log-drains", tag = "log-drains", responses((status = 200, body = [Drain])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let rows: Vec<DrainRow> = sqlx::query_as("SELECT * FROM drains WHERE app_id = $1")
        .bind(&a.id)
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(|d| drain_json(&a, d)).collect(),
        &["id", "url", "created_at"],
    )
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDrain {
    pub url: String,
}

/// Add a log drain (syslog+tls, syslog, https or http URL)
#[utoipa::path(post, path = "/apps/{app}/log-drains", tag = "log-drains", request_body = CreateDrain, responses((status = 201, body = Drain)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<CreateDrain>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let parsed =
        wharf_config::DrainUrl::parse(&body.url).map_err(|e| ApiError::invalid("url", e))?;
    if parsed.kind == wharf_config::DrainKind::Http && !cp.settings().logs.allow_http_drains {
        return Err(ApiError::invalid(
            "url",
            "http:// drains are off here; use https:// or syslog+tls://",
        ));
    }
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let dup: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM drains WHERE app_id = $1 AND LOWER(url) = LOWER($2)",
    )
    .bind(&a.id)
    .bind(&body.url)
    .fetch_one(&mut *w.tx)
    .await?;
    if dup > 0 {
        return Err(ApiError::Conflict(
            "This app already drains to that URL.".into(),
        ));
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM drains WHERE app_id = $1")
        .bind(&a.id)
        .fetch_one(&mut *w.tx)
        .await?;
    if n as usize >= cp.settings().logs.max_drains_per_app {
        return Err(ApiError::Conflict(format!(
            "This app already has {n} drains (the most allowed)."
        )));
    }
    let now = now_us();
    let d = DrainRow {
        id: new_id(),
        app_id: a.id.clone(),
        url: body.url,
        token: format!("d.{}", new_id()),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO drains (id, app_id, url, token, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(&d.id)
        .bind(&d.app_id)
        .bind(&d.url)
        .bind(&d.token)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    tracing::info!(app = %a.key(), drain = %parsed.redacted(), "drain added");
    Ok(json(StatusCode::CREATED, drain_json(&a, &d)))
}

async fn find(cp: &ControlPlane, a: &AppRow, ident: &str) -> ApiResult<DrainRow> {
    find_one(
        cp,
        "SELECT * FROM drains WHERE app_id = $1 AND (id = $2 OR url = $2 OR token = $2)",
        &[&a.id, ident],
        "drain",
        ident,
    )
    .await
}

/// Show a log drain
#[utoipa::path(get, path = "/apps/{app}/log-drains/{drain}", tag = "log-drains", responses((status = 200, body = Drain)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, drain)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    Ok(json(
        StatusCode::OK,
        drain_json(&a, &find(&cp, &a, &drain).await?),
    ))
}

/// Remove a log drain
#[utoipa::path(delete, path = "/apps/{app}/log-drains/{drain}", tag = "log-drains", responses((status = 200, body = Drain)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, drain)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let d = find(&cp, &a, &drain).await?;
    delete_row(&cp, "drains", &d.id, false).await?;
    Ok(json(StatusCode::OK, drain_json(&a, &d)))
}
