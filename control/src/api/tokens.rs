//! Tokens (`/tokens`, admin only) and the caller's own account (`/account`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, find_one, json, paginate, time};
use crate::ControlPlane;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ApiResult};
use crate::store::{TokenRow, new_id, new_secret, now_us, sha256_hex};

/// A token; its secret only in the answer that creates it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub description: String,
    pub email: String,
    pub scope: Scope,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn token_json(t: &TokenRow) -> Token {
    Token {
        id: t.id.clone(),
        description: t.description.clone(),
        email: t.email.clone(),
        scope: serde_json::from_str(&t.scope).unwrap_or_default(),
        created_at: time(t.created_at),
        updated_at: time(t.created_at),
        token: None,
    }
}

/// Who a token belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub name: String,
    pub scope: Scope,
    pub verified: bool,
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

/// The token's account
///
/// Who the token belongs to (Heroku clients ask for it).
#[utoipa::path(get, path = "/account", tag = "tokens", responses((status = 200, body = Account)))]
pub async fn account(caller: Caller) -> Response {
    json(
        StatusCode::OK,
        Account {
            id: caller.token_id,
            name: caller.email.clone(),
            email: caller.email,
            scope: caller.scope,
            verified: true,
        },
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// Create a token (admin); the secret is returned once
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = Token)))]
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
    let v = Token {
        token: Some(secret),
        ..token_json(&row)
    };
    Ok(json(StatusCode::CREATED, v))
}

/// List tokens (admin)
#[utoipa::path(get, path = "/tokens", tag = "tokens", responses((status = 200, body = [Token])))]
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
        rows.iter().map(token_json).collect::<Vec<_>>(),
        &["id", "created_at"],
    )
}

async fn find(cp: &ControlPlane, id: &str) -> ApiResult<TokenRow> {
    find_one(cp, "SELECT * FROM tokens WHERE id = $1", &[id], "token", id).await
}

/// Show a token (admin)
#[utoipa::path(get, path = "/tokens/{token}", tag = "tokens", responses((status = 200, body = Token)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    Ok(json(StatusCode::OK, token_json(&find(&cp, &id).await?)))
}

/// Revoke a token (admin)
#[utoipa::path(delete, path = "/tokens/{token}", tag = "tokens", responses((status = 200, body = Token)))]
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
