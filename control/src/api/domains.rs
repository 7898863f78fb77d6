//! Custom domains (`/apps/{app}/domains`). The app's own `{app}-{space}.{domain}` is listed
//! first with `kind: heroku`, as Heroku lists its default domain.

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
use crate::store::{AppRow, DomainRow, find_app, new_id, now_us};

/// A domain of an app: its default one (`kind: heroku`) or a custom one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Domain {
    pub id: String,
    pub hostname: String,
    /// `heroku` (the default domain) or `custom`.
    pub kind: String,
    /// Where a custom domain's CNAME points; none for the default domain.
    pub cname: Option<String>,
    pub status: String,
    pub app: Named,
    pub created_at: String,
    pub updated_at: String,
}

fn domain(
    a: &AppRow,
    id: &str,
    hostname: String,
    cname: Option<String>,
    (created_at, updated_at): (i64, i64),
) -> Domain {
    Domain {
        id: id.to_owned(),
        hostname,
        kind: if cname.is_some() { "custom" } else { "heroku" }.into(),
        cname,
        status: "succeeded".into(),
        app: Named::new(a.id.clone(), a.key()),
        created_at: time(created_at),
        updated_at: time(updated_at),
    }
}

fn domain_json(cp: &ControlPlane, a: &AppRow, d: &DomainRow) -> Domain {
    let cname = format!("{}.{}", a.key(), cp.settings().domain);
    domain(
        a,
        &d.id,
        d.hostname.clone(),
        Some(cname),
        (d.created_at, d.updated_at),
    )
}

/// List domains (the default one first)
#[utoipa::path(get, path = "/apps/{app}/domains", tag = "domains", responses((status = 200, body = [Domain])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let rows: Vec<DomainRow> = sqlx::query_as("SELECT * FROM domains WHERE app_id = $1")
        .bind(&a.id)
        .fetch_all(cp.store().pool())
        .await?;
    let hostname = format!("{}.{}", a.key(), cp.settings().domain);
    let mut items = vec![domain(
        &a,
        &a.id,
        hostname,
        None,
        (a.created_at, a.updated_at),
    )];
    items.extend(rows.iter().map(|d| domain_json(&cp, &a, d)));
    paginate(&headers, items, &["hostname", "id"])
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDomain {
    pub hostname: String,
}

/// Add a custom domain
#[utoipa::path(post, path = "/apps/{app}/domains", tag = "domains", request_body = CreateDomain, responses((status = 201, body = Domain)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<CreateDomain>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let host = body.hostname.trim_end_matches('.').to_ascii_lowercase();
    wharf_config::names::check_dns_name(&host).map_err(|e| ApiError::invalid("hostname", e))?;
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let taken: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE hostname = $1")
        .bind(&host)
        .fetch_one(&mut *w.tx)
        .await?;
    if taken > 0 {
        return Err(ApiError::Conflict(format!(
            "The domain {host} is already in use."
        )));
    }
    let now = now_us();
    let d = DomainRow {
        id: new_id(),
        app_id: a.id.clone(),
        hostname: host,
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO domains (id, app_id, hostname, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
        .bind(&d.id)
        .bind(&d.app_id)
        .bind(&d.hostname)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, domain_json(&cp, &a, &d)))
}

async fn find(cp: &ControlPlane, a: &AppRow, ident: &str) -> ApiResult<DomainRow> {
    find_one(
        cp,
        "SELECT * FROM domains WHERE app_id = $1 AND (id = $2 OR hostname = $2)",
        &[&a.id, &ident.to_ascii_lowercase()],
        "domain",
        ident,
    )
    .await
}

/// Show a domain
#[utoipa::path(get, path = "/apps/{app}/domains/{domain}", tag = "domains", responses((status = 200, body = Domain)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, domain)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    Ok(json(
        StatusCode::OK,
        domain_json(&cp, &a, &find(&cp, &a, &domain).await?),
    ))
}

/// Remove a custom domain
#[utoipa::path(delete, path = "/apps/{app}/domains/{domain}", tag = "domains", responses((status = 200, body = Domain)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, domain)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let d = find(&cp, &a, &domain).await?;
    delete_row(&cp, "domains", &d.id, false).await?;
    Ok(json(StatusCode::OK, domain_json(&cp, &a, &d)))
}
