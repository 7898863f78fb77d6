//! Custom domains (`/apps/{app}/domains`). The app's own `{app}-{space}.{domain}` is listed
//! first with `kind: heroku`, as Heroku lists its default domain.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::apps::load;
use super::{Body, find_one, json, paginate, ts};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, DomainRow, find_app, new_id, now_us};

fn domain_json(cp: &ControlPlane, a: &AppRow, d: &DomainRow) -> Value {
    json!({
        "id": d.id,
        "hostname": d.hostname,
        "kind": "custom",
        "cname": format!("{}.{}", a.key(), cp.settings().domain),
        "status": "succeeded",
        "app": {"id": a.id, "name": a.key()},
        "created_at": ts(d.created_at),
        "updated_at": ts(d.updated_at),
    })
}

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
    let mut items = vec![json!({
        "id": a.id,
        "hostname": format!("{}.{}", a.key(), cp.settings().domain),
        "kind": "heroku",
        "cname": null,
        "status": "succeeded",
        "app": {"id": a.id, "name": a.key()},
        "created_at": ts(a.created_at),
        "updated_at": ts(a.updated_at),
    })];
    items.extend(rows.iter().map(|d| domain_json(&cp, &a, d)));
    paginate(&headers, items, &["hostname", "id"])
}

#[derive(Debug, Deserialize)]
pub struct CreateDomain {
    pub hostname: String,
}

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

pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, domain)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let d = find(&cp, &a, &domain).await?;
    let mut w = cp.begin().await?;
    sqlx::query("DELETE FROM domains WHERE id = $1")
        .bind(&d.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, domain_json(&cp, &a, &d)))
}
