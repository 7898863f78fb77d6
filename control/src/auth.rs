//! Bearer tokens: random secrets shown once, kept at rest only as SHA-256 hashes, each with a
//! scope — admin, or limited to some spaces and apps. Every handler asks the [`Caller`] for the
//! resource it touches: no token is 401, a token whose scope does not cover it is 403. Nothing
//! is trusted from other headers.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, TokenRow, sha256_hex};

/// What a token may touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Scope {
    /// Everything, including spaces, sites, filters, certificates and tokens.
    #[serde(default)]
    pub admin: bool,
    /// Every app in these spaces (and creating apps there).
    #[serde(default)]
    pub spaces: Vec<String>,
    /// These apps, by key `{app}-{space}`.
    #[serde(default)]
    pub apps: Vec<String>,
}

impl Scope {
    pub fn admin() -> Scope {
        Scope {
            admin: true,
            ..Scope::default()
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub email: String,
    pub scope: Scope,
}

impl Caller {
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.scope.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "This token is not an admin token.".into(),
            ))
        }
    }

    pub fn can_space(&self, space: &str) -> bool {
        self.scope.admin || self.scope.spaces.iter().any(|s| s == space)
    }

    pub fn require_space(&self, space: &str) -> ApiResult<()> {
        if self.can_space(space) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This token has no access to space {space:?}."
            )))
        }
    }

    pub fn can_app(&self, app: &AppRow) -> bool {
        self.can_space(&app.space_name) || self.scope.apps.iter().any(|a| *a == app.key())
    }

    pub fn require_app(&self, app: &AppRow) -> ApiResult<()> {
        if self.can_app(app) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This token has no access to app {:?}.",
                app.key()
            )))
        }
    }
}

/// The token in `Authorization: Bearer …` (or the password of Basic auth, as netrc clients send).
pub fn bearer(parts: &Parts) -> Option<String> {
    let v = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (kind, rest) = v.split_once(' ')?;
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    None
}

impl FromRequestParts<ControlPlane> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &ControlPlane) -> ApiResult<Caller> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("Missing `Authorization: Bearer <token>`.".into())
        })?;
        let row: Option<TokenRow> = sqlx::query_as("SELECT * FROM tokens WHERE hash = $1")
            .bind(sha256_hex(&token))
            .fetch_optional(cp.store().pool())
            .await?;
        let row =
            row.ok_or_else(|| ApiError::Unauthorized("Invalid credentials provided.".into()))?;
        let scope: Scope = serde_json::from_str(&row.scope)
            .map_err(|e| ApiError::Internal(format!("token {} scope: {e}", row.id)))?;
        Ok(Caller {
            token_id: row.id,
            email: row.email,
            scope,
        })
    }
}
