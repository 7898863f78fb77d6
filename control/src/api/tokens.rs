//! Tokens (`/tokens`, admin only) and the caller's own account (`/account`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Body, find_one, json, paginate, ts};
use crate::ControlPlane;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ApiResult};
use crate::store::{TokenRow, new_id, new_secret, now_us, sha256_hex};

fn token_json(t: &TokenRow) -> Value {
    let scope: Value = serde_json::from_str(&t.scope).unwrap_or(Value::Null);
    json!({
        "id": t.id,
        "description": t.description,
        "email": t.email,
        "scope": scope,
        "created_at": ts(t.created_at),
        "updated_at": ts(t.created_at),
    })
}

pub(crate) async fn insert(
    cp: &ControlPlane,
    scope: &Scope,
    description: &str,
    email: &str,
) -> ApiResult<(TokenRow, String)> {
    let secret = format!("wharf_{}", new_secret());
    let row = TokenRow {
        id: new_id(),
        hash: sha256_hex(&secret),
        description: description.to_owned(),
        email: email.to_owned(),
        scope: serde_json::to_string(scope).map_err(|e| ApiError::Internal(e.to_string()))?,
        created_at: now_us(),
    };
    sqlx::query("INSERT INTO tokens (id, hash, description, email, scope, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&row.id)
        .bind(&row.hash)
        .bind(&row.description)
        .bind(&row.email)
        .bind(&row.scope)
        .bind(row.created_at)
        .execute(cp.store().pool())
        .await?;
    Ok((row, secret))
}

pub(crate) async fn ensure(
    cp: &ControlPlane,
    secret: &str,
    scope: &Scope,
    description: &str,
) -> ApiResult<()> {
    let hash = sha256_hex(secret);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE hash = $1")
        .bind(&hash)
        .fetch_one(cp.store().pool())
        .await?;
    if n == 0 {
        sqlx::query("INSERT INTO tokens (id, hash, description, email, scope, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(new_id())
            .bind(&hash)
            .bind(description)
            .bind("admin@wharf.localhost")
            .bind(serde_json::to_string(scope).map_err(|e| ApiError::Internal(e.to_string()))?)
            .bind(now_us())
            .execute(cp.store().pool())
            .await?;
    }
    Ok(())
}

/// `GET /account`: who the token belongs to (Heroku clients ask for it).
pub async fn account(caller: Caller) -> Response {
    json(
        StatusCode::OK,
        json!({
            "id": caller.token_id,
            "email": caller.email,
            "name": caller.email,
            "scope": caller.scope,
            "verified": true,
        }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub scope: Option<Scope>,
}

pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateToken>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let scope = body.scope.unwrap_or_default();
    if !scope.admin && scope.spaces.is_empty() && scope.apps.is_empty() {
        return Err(ApiError::invalid(
            "scope",
            "a token needs admin, or at least one space or app",
        ));
    }
    let email = body.email.unwrap_or_else(|| caller.email.clone());
    let (row, secret) = insert(
        &cp,
        &scope,
        body.description.as_deref().unwrap_or(""),
        &email,
    )
    .await?;
    let mut v = token_json(&row);
    v["token"] = Value::String(secret);
    Ok(json(StatusCode::CREATED, v))
}

pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let rows: Vec<TokenRow> = sqlx::query_as("SELECT * FROM tokens")
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(token_json).collect(),
        &["id", "created_at"],
    )
}

async fn find(cp: &ControlPlane, id: &str) -> ApiResult<TokenRow> {
    find_one(cp, "SELECT * FROM tokens WHERE id = $1", &[id], "token", id).await
}

pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    Ok(json(StatusCode::OK, token_json(&find(&cp, &id).await?)))
}

pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let row = find(&cp, &id).await?;
    sqlx::query("DELETE FROM tokens WHERE id = $1")
        .bind(&row.id)
        .execute(cp.store().pool())
        .await?;
    Ok(json(StatusCode::OK, token_json(&row)))
}
