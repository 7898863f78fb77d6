//! Apps (`/apps`): Heroku's app resource, keyed `{app}-{space}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Named, check_name, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    APP_SELECT, AppRow, current_release, find_app, find_space, new_id, new_secret, now_us,
};

/// An app, keyed `{app}-{space}`, in Heroku's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct App {
    pub id: String,
    /// The key `{app}-{space}`.
    pub name: String,
    pub key: String,
    pub simple_name: String,
    pub description: String,
    pub space: AppSpace,
    pub owner: Owner,
    pub organization: Option<Named>,
    pub team: Option<Named>,
    pub region: Named,
    pub stack: Named,
    pub build_stack: Named,
    pub internal_routing: bool,
    pub maintenance: bool,
    pub web_url: String,
    pub git_url: Option<String>,
    pub buildpack_provided_description: Option<String>,
    pub repo_size: Option<i64>,
    pub slug_size: Option<i64>,
    pub acm: bool,
    pub archived_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub released_at: Option<String>,
}

/// The space of an app.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppSpace {
    pub id: String,
    pub name: String,
    pub compliance: Vec<String>,
}

/// Who created an app.
#[derive(Debug, Serialize, ToSchema)]
pub struct Owner {
    pub id: String,
    pub email: String,
}

pub(crate) fn app_json(cp: &ControlPlane, a: &AppRow, released_at: Option<i64>) -> App {
    let key = a.key();
    let compliance = a.compliance();
    let wharf = || Named::new("wharf", "wharf");
    App {
        id: a.id.clone(),
        name: key.clone(),
        key: key.clone(),
        simple_name: a.name.clone(),
        description: a.description.clone(),
        internal_routing: compliance.iter().any(|c| c == "internal"),
        space: AppSpace {
            id: a.space_id.clone(),
            name: a.space_name.clone(),
            compliance,
        },
        owner: Owner {
            id: a.owner_email.clone(),
            email: a.owner_email.clone(),
        },
        organization: None,
        team: None,
        region: Named::new("local", "local"),
        stack: wharf(),
        build_stack: wharf(),
        maintenance: false,
        web_url: format!("https://{key}.{}/", cp.settings().domain),
        git_url: None,
        buildpack_provided_description: None,
        repo_size: None,
        slug_size: None,
        acm: false,
        archived_at: None,
        created_at: time(a.created_at),
        updated_at: time(a.updated_at),
        released_at: released_at.map(time),
    }
}

/// The app named in the path, checked against the caller's scope (404, then 403).
pub(crate) async fn load(cp: &ControlPlane, caller: &Caller, ident: &str) -> ApiResult<AppRow> {
    let mut c = cp.store().pool().acquire().await?;
    let a = find_app(&mut c, ident).await?;
    caller.require_app(&a)?;
    Ok(a)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateApp {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub space: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Create an app
#[utoipa::path(post, path = "/apps", tag = "apps", request_body = CreateApp,
    responses((status = 201, body = App)))]
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

/// List apps
#[utoipa::path(get, path = "/apps", tag = "apps", responses((status = 200, body = [App])))]
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
        .collect::<Vec<_>>();
    paginate(&headers, items, &["name", "id", "created_at", "updated_at"])
}

/// List apps (Heroku clients)
///
/// The apps the token may see, whoever `{user}` is.
#[utoipa::path(get, path = "/users/{user}/apps", tag = "apps", responses((status = 200, body = [App])))]
pub async fn list_for_user(
    state: State<ControlPlane>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    list(state, caller, headers).await
}

/// Show an app
#[utoipa::path(get, path = "/apps/{app}", tag = "apps", responses((status = 200, body = App)))]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub maintenance: Option<bool>,
}

/// Update an app
#[utoipa::path(patch, path = "/apps/{app}", tag = "apps", request_body = UpdateApp,
    responses((status = 200, body = App)))]
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

/// Destroy an app
#[utoipa::path(delete, path = "/apps/{app}", tag = "apps", responses((status = 200, body = App)))]
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
