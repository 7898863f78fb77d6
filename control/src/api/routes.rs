//! Routes (`/routes`): a site's path prefix → an app and its target path. Creating one needs
//! access to the app; the site must exist. Path rules are the config crate's.

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
use crate::store::{AppRow, ROUTE_SELECT, RouteRow, find_app, find_site, new_id, now_us};

/// A route: a site's path prefix → an app and its target path.
#[derive(Debug, Serialize, ToSchema)]
pub struct Route {
    pub id: String,
    pub app: Named,
    pub space: RouteSpace,
    pub site: RouteSite,
    pub source_path: String,
    pub target_path: String,
    pub pending: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// The space of a route's app.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteSpace {
    pub name: String,
}

/// The site of a route.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteSite {
    pub id: String,
    pub domain: String,
}

fn route_json(r: &RouteRow) -> Route {
    Route {
        id: r.id.clone(),
        app: Named::new(r.app_id.clone(), format!("{}-{}", r.app_name, r.space_name)),
        space: RouteSpace {
            name: r.space_name.clone(),
        },
        site: RouteSite {
            id: r.site_id.clone(),
            domain: r.site_domain.clone(),
        },
        source_path: r.source_path.clone(),
        target_path: r.target_path.clone(),
        pending: false,
        created_at: time(r.created_at),
        updated_at: time(r.updated_at),
    }
}

async fn visible(
    cp: &ControlPlane,
    caller: &Caller,
    filter: &str,
    bind: &str,
) -> ApiResult<Vec<Route>> {
    let q = format!("{ROUTE_SELECT}{filter}");
    let mut query = sqlx::query_as::<_, RouteRow>(&q);
    if !filter.is_empty() {
        query = query.bind(bind);
    }
    let rows = query.fetch_all(cp.store().pool()).await?;
    Ok(rows
        .iter()
        .filter(|r| {
            caller.scope.admin
                || caller.can_space(&r.space_name)
                || caller
                    .scope
                    .apps
                    .iter()
                    .any(|a| *a == format!("{}-{}", r.app_name, r.space_name))
        })
        .map(route_json)
        .collect())
}

const FIELDS: &[&str] = &["source_path", "id", "created_at"];

/// List routes
#[utoipa::path(get, path = "/routes", tag = "routes", responses((status = 200, body = [Route])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    paginate(&headers, visible(&cp, &caller, "", "").await?, FIELDS)
}

/// Routes of a site
#[utoipa::path(get, path = "/sites/{site}/routes", tag = "routes", responses((status = 200, body = [Route])))]
pub async fn list_for_site(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(site): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let s = find_site(&mut c, &site).await?;
    drop(c);
    paginate(
        &headers,
        visible(&cp, &caller, " WHERE r.site_id = $1", &s.id).await?,
        FIELDS,
    )
}

/// Routes to an app
#[utoipa::path(get, path = "/apps/{app}/routes", tag = "routes", responses((status = 200, body = [Route])))]
pub async fn list_for_app(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a: AppRow = load(&cp, &caller, &app).await?;
    paginate(
        &headers,
        visible(&cp, &caller, " WHERE r.app_id = $1", &a.id).await?,
        FIELDS,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoute {
    pub site: String,
    pub app: String,
    pub source_path: String,
    #[serde(default)]
    pub target_path: Option<String>,
}

/// Route a site's path prefix to an app
#[utoipa::path(post, path = "/routes", tag = "routes", request_body = CreateRoute, responses((status = 201, body = Route)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateRoute>,
) -> ApiResult<Response> {
    load(&cp, &caller, &body.app).await?;
    let target = body.target_path.unwrap_or_else(|| "/".into());
    for (field, v) in [("source_path", &body.source_path), ("target_path", &target)] {
        wharf_config::paths::check_prefix(v).map_err(|e| ApiError::invalid(field, e))?;
    }
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &body.app).await?;
    let s = find_site(&mut w.tx, &body.site).await?;
    let norm = format!("/{}", body.source_path.trim_matches('/'));
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT source_path FROM routes WHERE site_id = $1")
            .bind(&s.id)
            .fetch_all(&mut *w.tx)
            .await?;
    if existing
        .iter()
        .any(|p| format!("/{}", p.trim_matches('/')) == norm)
    {
        return Err(ApiError::Conflict(format!(
            "The site {} already routes {}.",
            s.domain, body.source_path
        )));
    }
    let now = now_us();
    let r = RouteRow {
        id: new_id(),
        site_id: s.id.clone(),
        site_domain: s.domain.clone(),
        app_id: a.id.clone(),
        app_name: a.name.clone(),
        space_name: a.space_name.clone(),
        source_path: body.source_path,
        target_path: target,
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO routes (id, site_id, app_id, source_path, target_path, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)")
        .bind(&r.id)
        .bind(&r.site_id)
        .bind(&r.app_id)
        .bind(&r.source_path)
        .bind(&r.target_path)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, route_json(&r)))
}

async fn find(cp: &ControlPlane, caller: &Caller, id: &str) -> ApiResult<RouteRow> {
    let r: RouteRow = find_one(
        cp,
        &format!("{ROUTE_SELECT} WHERE r.id = $1"),
        &[id],
        "route",
        id,
    )
    .await?;
    load(cp, caller, &r.app_id).await?;
    Ok(r)
}

/// Show a route
#[utoipa::path(get, path = "/routes/{route}", tag = "routes", responses((status = 200, body = Route)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(route): Path<String>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        route_json(&find(&cp, &caller, &route).await?),
    ))
}

/// Remove a route
#[utoipa::path(delete, path = "/routes/{route}", tag = "routes", responses((status = 200, body = Route)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(route): Path<String>,
) -> ApiResult<Response> {
    let r = find(&cp, &caller, &route).await?;
    delete_row(&cp, "routes", &r.id, false).await?;
    Ok(json(StatusCode::OK, route_json(&r)))
}
