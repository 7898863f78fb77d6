//! Sites (`/sites`): Akkeris' shared host names whose paths route to apps. Admin writes.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Named, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{SiteRow, find_site, new_id, now_us};

/// A site: a shared host name whose paths route to apps.
#[derive(Debug, Serialize, ToSchema)]
pub struct Site {
    pub id: String,
    pub domain: String,
    pub internal: bool,
    pub compliance: Vec<String>,
    pub description: String,
    pub region: Named,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) fn site_json(s: &SiteRow) -> Site {
    let internal = s.internal != 0;
    Site {
        id: s.id.clone(),
        domain: s.domain.clone(),
        internal,
        compliance: if internal {
            vec!["internal".into()]
        } else {
            Vec::new()
        },
        description: s.description.clone(),
        region: Named::new("local", "local"),
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSite {
    pub domain: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

/// Create a site (admin)
#[utoipa::path(post, path = "/sites", tag = "sites", request_body = CreateSite, responses((status = 201, body = Site)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateSite>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let domain = body.domain.trim_end_matches('.').to_ascii_lowercase();
    wharf_config::names::check_dns_name(&domain).map_err(|e| ApiError::invalid("domain", e))?;
    let mut w = cp.begin().await?;
    if find_site(&mut w.tx, &domain).await.is_ok() {
        return Err(ApiError::Conflict(format!(
            "The site {domain} already exists."
        )));
    }
    let now = now_us();
    let s = SiteRow {
        id: new_id(),
        domain,
        internal: i64::from(body.internal),
        description: body.description.unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO sites (id, domain, internal, description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(&s.id)
        .bind(&s.domain)
        .bind(s.internal)
        .bind(&s.description)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, site_json(&s)))
}

/// List sites
#[utoipa::path(get, path = "/sites", tag = "sites", responses((status = 200, body = [Site])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rows: Vec<SiteRow> = sqlx::query_as("SELECT * FROM sites")
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(site_json).collect(),
        &["domain", "id", "created_at"],
    )
}

/// Show a site
#[utoipa::path(get, path = "/sites/{site}", tag = "sites", responses((status = 200, body = Site)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    Path(site): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    Ok(json(
        StatusCode::OK,
        site_json(&find_site(&mut c, &site).await?),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSite {
    #[serde(default)]
    pub description: Option<String>,
}

/// Update a site (admin)
#[utoipa::path(patch, path = "/sites/{site}", tag = "sites", request_body = UpdateSite, responses((status = 200, body = Site)))]
pub async fn update(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(site): Path<String>,
    Body(body): Body<UpdateSite>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut w = cp.begin().await?;
    let mut s = find_site(&mut w.tx, &site).await?;
    if let Some(d) = body.description {
        s.description = d;
    }
    s.updated_at = now_us();
    sqlx::query("UPDATE sites SET description = $1, updated_at = $2 WHERE id = $3")
        .bind(&s.description)
        .bind(s.updated_at)
        .bind(&s.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, site_json(&s)))
}

/// Delete a site and its routes.
#[utoipa::path(delete, path = "/sites/{site}", tag = "sites", responses((status = 200, body = Site)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(site): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut w = cp.begin().await?;
    let s = find_site(&mut w.tx, &site).await?;
    sqlx::query("DELETE FROM routes WHERE site_id = $1")
        .bind(&s.id)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("DELETE FROM sites WHERE id = $1")
        .bind(&s.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, site_json(&s)))
}
