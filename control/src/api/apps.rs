//! Apps (`/apps`): Heroku's app resource, keyed `{app}-{space}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Body, check_name, json, paginate, ts};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    APP_SELECT, AppRow, current_release, find_app, find_space, new_id, new_secret, now_us,
};

pub(crate) fn app_json(cp: &ControlPlane, a: &AppRow, released_at: Option<i64>) -> Value {
    let key = a.key();
    let internal = a.compliance().iter().any(|c| c == "internal");
    json!({
        "id": a.id,
        "name": key,
        "key": key,
        "simple_name": a.name,
        "description": a.description,
        "space": {"id": a.space_id, "name": a.space_name, "compliance": a.compliance()},
        "owner": {"id": a.owner_email, "email": a.owner_email},
        "organization": null,
        "team": null,
        "region": {"id": "local", "name": "local"},
        "stack": {"id": "wharf", "name": "wharf"},
        "build_stack": {"id": "wharf", "name": "wharf"},
        "internal_routing": internal,
        "maintenance": false,
        "web_url": format!("https://{key}.{}/", cp.settings().domain),
        "git_url": null,
        "buildpack_provided_description": null,
        "repo_size": null,
        "slug_size": null,
        "acm": false,
        "archived_at": null,
        "created_at": ts(a.created_at),
        "updated_at": ts(a.updated_at),
        "released_at": released_at.map(ts),
    })
}

/// The app named in the path, checked against the caller's scope (404, then 403).
pub(crate) async fn load(cp: &ControlPlane, caller: &Caller, ident: &str) -> ApiResult<AppRow> {
    let mut c = cp.store().pool().acquire().await?;
    let a = find_app(&mut c, ident).await?;
    caller.require_app(&a)?;
    Ok(a)
}

#[derive(Debug, Deserialize)]
pub struct CreateApp {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub space: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateApp>,
) -> ApiResult<Response> {
    let name = match body.name {
        Some(n) => n.to_ascii_lowercase(),
        None => format!("app{}", &new_secret()[..8]),
    };
    check_name("name", &name)?;
    let space_name = body
        .space
        .unwrap_or_else(|| cp.settings().default_space.clone())
        .to_ascii_lowercase();
    caller.require_space(&space_name)?;
    let mut w = cp.begin().await?;
    let space = find_space(&mut w.tx, &space_name).await?;
    let exists: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM apps WHERE name = $1 AND space_id = $2")
            .bind(&name)
            .bind(&space.id)
            .fetch_one(&mut *w.tx)
            .await?;
    if exists > 0 {
        return Err(ApiError::Conflict(format!(
            "The app {name}-{} already exists.",
            space.name
        )));
    }
    let now = now_us();
    let app = AppRow {
        id: new_id(),
        name,
        space_id: space.id.clone(),
        space_name: space.name.clone(),
        space_compliance: space.compliance.clone(),
        description: body.description.unwrap_or_default(),
        owner_email: caller.email.clone(),
        log_token: new_secret(),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO apps (id, name, space_id, description, owner_email, log_token, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
        .bind(&app.id)
        .bind(&app.name)
        .bind(&app.space_id)
        .bind(&app.description)
        .bind(&app.owner_email)
        .bind(&app.log_token)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("INSERT INTO releases (id, app_id, version, description, artifact, build_id, config, status, user_email, created_at, updated_at) VALUES ($1, $2, 1, 'Initial release', NULL, NULL, '{}', 'succeeded', $3, $4, $4)")
        .bind(new_id())
        .bind(&app.id)
        .bind(&caller.email)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("INSERT INTO formation (id, app_id, type, quantity, size, command, port, health_check, created_at, updated_at) VALUES ($1, $2, 'web', 1, 'standard-1x', NULL, NULL, NULL, $3, $3)")
        .bind(new_id())
        .bind(&app.id)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, true).await?;
    tracing::info!(app = %app.key(), "app created");
    Ok(json(StatusCode::CREATED, app_json(&cp, &app, Some(now))))
}

pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rows: Vec<AppRow> = sqlx::query_as(APP_SELECT)
        .fetch_all(cp.store().pool())
        .await?;
    let items = rows
        .iter()
        .filter(|a| caller.can_app(a))
        .map(|a| app_json(&cp, a, None))
        .collect();
    paginate(&headers, items, &["name", "id", "created_at", "updated_at"])
}

pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let mut c = cp.store().pool().acquire().await?;
    let r = current_release(&mut c, &a.id).await?;
    Ok(json(
        StatusCode::OK,
        app_json(&cp, &a, r.map(|r| r.created_at)),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub maintenance: Option<bool>,
}

pub async fn update(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<UpdateApp>,
) -> ApiResult<Response> {
    let mut a = load(&cp, &caller, &app).await?;
    if let Some(n) = &body.name
        && *n != a.name
        && *n != a.key()
    {
        return Err(ApiError::invalid("name", "renaming apps is not supported"));
    }
    if body.maintenance == Some(true) {
        return Err(ApiError::invalid(
            "maintenance",
            "maintenance mode is not supported",
        ));
    }
    let mut w = cp.begin().await?;
    if let Some(d) = body.description {
        a.description = d;
    }
    a.updated_at = now_us();
    sqlx::query("UPDATE apps SET description = $1, updated_at = $2 WHERE id = $3")
        .bind(&a.description)
        .bind(a.updated_at)
        .bind(&a.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, app_json(&cp, &a, None)))
}

pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    if a.compliance().iter().any(|c| c == "prod") && !caller.scope.admin {
        return Err(ApiError::Forbidden(format!(
            "{} is in a prod space: only an admin token may destroy it.",
            a.key()
        )));
    }
    let mut w = cp.begin().await?;
    for table in [
        "log_sessions",
        "drains",
        "attachments",
        "routes",
        "domains",
        "formation",
        "builds",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE app_id = $1"))
            .bind(&a.id)
            .execute(&mut *w.tx)
            .await?;
    }
    sqlx::query("DELETE FROM release_statuses WHERE release_id IN (SELECT id FROM releases WHERE app_id = $1)")
        .bind(&a.id)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("DELETE FROM releases WHERE app_id = $1")
        .bind(&a.id)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(&a.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, true).await?;
    tracing::info!(app = %a.key(), "app destroyed");
    Ok(json(StatusCode::OK, app_json(&cp, &a, None)))
}
