//! Spaces (`/spaces`): Akkeris' unit of isolation, with an immutable compliance set.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use wharf_config::Compliance;

use super::{Body, Named, check_name, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{SpaceRow, find_space, new_id, now_us};

/// A space: Akkeris' unit of isolation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Space {
    pub id: String,
    pub name: String,
    pub description: String,
    pub compliance: Vec<String>,
    /// How many apps it holds.
    pub apps: i64,
    pub state: String,
    pub region: Named,
    pub stack: Named,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) fn space_json(s: &SpaceRow, apps: i64) -> Space {
    Space {
        id: s.id.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        compliance: s.compliance(),
        apps,
        state: "allocated".into(),
        region: Named::new("local", "local"),
        stack: Named::new("wharf", "wharf"),
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
    }
}

/// Create `name` (no compliance) unless it exists.
pub(crate) async fn ensure_space(cp: &ControlPlane, name: &str) -> ApiResult<()> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spaces WHERE name = $1")
        .bind(name)
        .fetch_one(cp.store().pool())
        .await?;
    if n > 0 {
        return Ok(());
    }
    let mut w = cp.begin().await?;
    let now = now_us();
    sqlx::query("INSERT INTO spaces (id, name, description, compliance, created_at, updated_at) VALUES ($1, $2, '', '[]', $3, $3)")
        .bind(new_id())
        .bind(name)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpace {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub compliance: Vec<String>,
    #[serde(default)]
    pub stack: Option<String>,
}

/// Create a space (admin)
#[utoipa::path(post, path = "/spaces", tag = "spaces", request_body = CreateSpace, responses((status = 201, body = Space)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateSpace>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let name = body.name.to_ascii_lowercase();
    check_name("name", &name)?;
    let mut set = BTreeSet::new();
    for c in &body.compliance {
        let parsed: Compliance =
            serde_json::from_value(Value::String(c.clone())).map_err(|_| {
                ApiError::invalid(
                    "compliance",
                    format!("{c:?} is not one of internal, prod, socs"),
                )
            })?;
        set.insert(parsed);
    }
    let mut w = cp.begin().await?;
    if find_space(&mut w.tx, &name).await.is_ok() {
        return Err(ApiError::Conflict(format!(
            "The space {name:?} already exists."
        )));
    }
    let now = now_us();
    let row = SpaceRow {
        id: new_id(),
        name,
        description: body.description.unwrap_or_default(),
        compliance: serde_json::to_string(&set).map_err(|e| ApiError::Internal(e.to_string()))?,
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO spaces (id, name, description, compliance, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.description)
        .bind(&row.compliance)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, space_json(&row, 0)))
}

async fn app_count(cp: &ControlPlane, space_id: &str) -> ApiResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM apps WHERE space_id = $1")
            .bind(space_id)
            .fetch_one(cp.store().pool())
            .await?,
    )
}

/// List spaces
#[utoipa::path(get, path = "/spaces", tag = "spaces", responses((status = 200, body = [Space])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rows: Vec<SpaceRow> = sqlx::query_as("SELECT * FROM spaces")
        .fetch_all(cp.store().pool())
        .await?;
    let mut items = Vec::new();
    for s in rows.iter().filter(|s| caller.can_space(&s.name)) {
        items.push(space_json(s, app_count(&cp, &s.id).await?));
    }
    paginate(&headers, items, &["name", "id", "created_at"])
}

/// Show a space
#[utoipa::path(get, path = "/spaces/{space}", tag = "spaces", responses((status = 200, body = Space)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(space): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let s = find_space(&mut c, &space).await?;
    drop(c);
    caller.require_space(&s.name)?;
    Ok(json(
        StatusCode::OK,
        space_json(&s, app_count(&cp, &s.id).await?),
    ))
}

/// Delete an empty space (admin)
#[utoipa::path(delete, path = "/spaces/{space}", tag = "spaces", responses((status = 200, body = Space)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(space): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut w = cp.begin().await?;
    let s = find_space(&mut w.tx, &space).await?;
    let apps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM apps WHERE space_id = $1")
        .bind(&s.id)
        .fetch_one(&mut *w.tx)
        .await?;
    if apps > 0 {
        return Err(ApiError::Conflict(format!(
            "The space {:?} still has {apps} apps.",
            s.name
        )));
    }
    sqlx::query("DELETE FROM spaces WHERE id = $1")
        .bind(&s.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, space_json(&s, 0)))
}
