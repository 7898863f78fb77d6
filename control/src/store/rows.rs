//! Rows as stored, and the look-ups every resource shares (by id or by name).

use sqlx::{AnyConnection, FromRow};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub hash: String,
    pub description: String,
    pub email: String,
    pub scope: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct SpaceRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub compliance: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl SpaceRow {
    pub fn compliance(&self) -> Vec<String> {
        serde_json::from_str(&self.compliance).unwrap_or_default()
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct AppRow {
    pub id: String,
    pub name: String,
    pub space_id: String,
    pub space_name: String,
    pub space_compliance: String,
    pub description: String,
    pub owner_email: String,
    pub log_token: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AppRow {
    /// `{app}-{space}`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.name, self.space_name)
    }
    pub fn compliance(&self) -> Vec<String> {
        serde_json::from_str(&self.space_compliance).unwrap_or_default()
    }
    pub fn is_socs(&self) -> bool {
        self.compliance().iter().any(|c| c == "socs")
    }
}

pub const APP_SELECT: &str = "SELECT a.id, a.name, a.space_id, s.name AS space_name, \
     s.compliance AS space_compliance, a.description, a.owner_email, a.log_token, a.created_at, \
     a.updated_at FROM apps a JOIN spaces s ON s.id = a.space_id";

#[derive(Debug, Clone, FromRow)]
pub struct ReleaseRow {
    pub id: String,
    pub app_id: String,
    pub version: i64,
    pub description: String,
    pub artifact: Option<String>,
    pub build_id: Option<String>,
    pub config: String,
    pub status: String,
    pub user_email: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Why a canary ended as it did: `{"reason", "figures"}` (JSON).
    pub outcome: Option<String>,
}

impl ReleaseRow {
    pub fn config(&self) -> std::collections::BTreeMap<String, String> {
        serde_json::from_str(&self.config).unwrap_or_default()
    }
    pub fn artifact(&self) -> Option<wharf_config::Artifact> {
        self.artifact
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct StatusRow {
    pub id: String,
    pub release_id: String,
    pub context: String,
    pub state: String,
    pub description: String,
    pub target_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct FormationRow {
    pub id: String,
    pub app_id: String,
    #[sqlx(rename = "type")]
    pub process_type: String,
    pub quantity: i64,
    pub size: String,
    pub command: Option<String>,
    pub port: Option<i64>,
    pub health_check: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct BuildRow {
    pub id: String,
    pub app_id: String,
    pub source_url: String,
    pub artifact: String,
    pub status: String,
    pub user_email: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct DomainRow {
    pub id: String,
    pub app_id: String,
    pub hostname: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct SiteRow {
    pub id: String,
    pub domain: String,
    pub internal: i64,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct RouteRow {
    pub id: String,
    pub site_id: String,
    pub site_domain: String,
    pub app_id: String,
    pub app_name: String,
    pub space_name: String,
    pub source_path: String,
    pub target_path: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const ROUTE_SELECT: &str = "SELECT r.id, r.site_id, si.domain AS site_domain, r.app_id, \
     a.name AS app_name, sp.name AS space_name, r.source_path, r.target_path, r.created_at, \
     r.updated_at FROM routes r JOIN sites si ON si.id = r.site_id JOIN apps a ON a.id = r.app_id \
     JOIN spaces sp ON sp.id = a.space_id";

#[derive(Debug, Clone, FromRow)]
pub struct FilterRow {
    pub id: String,
    pub name: String,
    #[sqlx(rename = "type")]
    pub filter_type: String,
    pub description: String,
    pub options: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct AttachmentRow {
    pub id: String,
    pub app_id: String,
    pub filter_id: String,
    pub filter_name: String,
    pub includes: String,
    pub excludes: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const ATTACHMENT_SELECT: &str = "SELECT t.id, t.app_id, t.filter_id, f.name AS filter_name, \
     t.includes, t.excludes, t.created_at, t.updated_at FROM attachments t \
     JOIN filters f ON f.id = t.filter_id";

#[derive(Debug, Clone, FromRow)]
pub struct CertRow {
    pub id: String,
    pub name: String,
    pub names: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub is_default: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct DrainRow {
    pub id: String,
    pub app_id: String,
    pub url: String,
    pub token: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct LogSessionRow {
    pub id: String,
    pub app_id: String,
    pub secret_hash: String,
    pub lines: i64,
    pub tail: i64,
    pub dyno: Option<String>,
    pub source: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
}

/// An app by id, by key `{app}-{space}`, or by bare name when only one space has it.
pub async fn find_app(c: &mut AnyConnection, ident: &str) -> ApiResult<AppRow> {
    let q =
        format!("{APP_SELECT} WHERE a.id = $1 OR (a.name || '-' || s.name) = $1 OR a.name = $1");
    let rows: Vec<AppRow> = sqlx::query_as(&q).bind(ident).fetch_all(&mut *c).await?;
    if let Some(r) = rows.iter().find(|r| r.id == ident || r.key() == ident) {
        return Ok(r.clone());
    }
    match rows.len() {
        0 => Err(ApiError::not_found("app", ident)),
        1 => Ok(rows.into_iter().next().expect("one row")),
        _ => Err(ApiError::Conflict(format!(
            "{ident:?} names apps in several spaces: use {{app}}-{{space}}."
        ))),
    }
}

pub async fn find_space(c: &mut AnyConnection, ident: &str) -> ApiResult<SpaceRow> {
    sqlx::query_as("SELECT * FROM spaces WHERE id = $1 OR name = $1")
        .bind(ident)
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("space", ident))
}

pub async fn find_site(c: &mut AnyConnection, ident: &str) -> ApiResult<SiteRow> {
    sqlx::query_as("SELECT * FROM sites WHERE id = $1 OR domain = $1")
        .bind(ident.to_ascii_lowercase())
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("site", ident))
}

pub async fn find_filter(c: &mut AnyConnection, ident: &str) -> ApiResult<FilterRow> {
    sqlx::query_as("SELECT * FROM filters WHERE id = $1 OR name = $1")
        .bind(ident)
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("filter", ident))
}

/// The newest `succeeded` release of an app: the current one (rollbacks are new releases; a
/// running canary, a socs build waiting for its checks and an aborted release are not).
pub async fn current_release(c: &mut AnyConnection, app_id: &str) -> ApiResult<Option<ReleaseRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM releases WHERE app_id = $1 AND status = 'succeeded' ORDER BY version DESC LIMIT 1")
            .bind(app_id)
            .fetch_optional(&mut *c)
            .await?,
    )
}

/// A release by id, by version number, or `vN`.
pub async fn find_release(
    c: &mut AnyConnection,
    app_id: &str,
    ident: &str,
) -> ApiResult<ReleaseRow> {
    let version: i64 = ident.trim_start_matches(['v', 'V']).parse().unwrap_or(-1);
    sqlx::query_as("SELECT * FROM releases WHERE app_id = $1 AND (id = $2 OR version = $3)")
        .bind(app_id)
        .bind(ident)
        .bind(version)
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("release", ident))
}
