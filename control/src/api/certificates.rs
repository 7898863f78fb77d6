//! Certificates (`/certificates`, admin only): PEM chains and keys the router serves by SNI.
//! Private keys are accepted and stored, never returned.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, check_name, delete_row, find_one, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{CertRow, new_id, now_us};

/// A certificate chain the router serves by SNI (its key is never returned).
#[derive(Debug, Serialize, ToSchema)]
pub struct Certificate {
    pub id: String,
    pub name: String,
    /// The host names it serves.
    pub names: Vec<String>,
    pub certificate_chain: String,
    pub default: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn cert_json(c: &CertRow) -> Certificate {
    Certificate {
        id: c.id.clone(),
        name: c.name.clone(),
        names: serde_json::from_str(&c.names).unwrap_or_default(),
        certificate_chain: c.cert_pem.clone(),
        default: c.is_default != 0,
        created_at: time(c.created_at),
        updated_at: time(c.updated_at),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCert {
    pub name: String,
    #[serde(default)]
    pub names: Vec<String>,
    pub certificate_chain: String,
    pub private_key: String,
    #[serde(default)]
    pub default: bool,
}

/// Add a certificate and its key (admin); the key is never returned
#[utoipa::path(post, path = "/certificates", tag = "certificates", request_body = CreateCert, responses((status = 201, body = Certificate)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateCert>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    check_name("name", &body.name)?;
    for n in &body.names {
        wharf_config::names::check_cert_name(n).map_err(|e| ApiError::invalid("names", e))?;
    }
    let mut w = cp.begin().await?;
    let dup: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates WHERE name = $1")
        .bind(&body.name)
        .fetch_one(&mut *w.tx)
        .await?;
    if dup > 0 {
        return Err(ApiError::Conflict(format!(
            "The certificate {} already exists.",
            body.name
        )));
    }
    let now = now_us();
    let c = CertRow {
        id: new_id(),
        name: body.name,
        names: serde_json::json!(body.names).to_string(),
        cert_pem: body.certificate_chain,
        key_pem: body.private_key,
        is_default: i64::from(body.default),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO certificates (id, name, names, cert_pem, key_pem, is_default, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
        .bind(&c.id)
        .bind(&c.name)
        .bind(&c.names)
        .bind(&c.cert_pem)
        .bind(&c.key_pem)
        .bind(c.is_default)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, cert_json(&c)))
}

/// List certificates (admin)
#[utoipa::path(get, path = "/certificates", tag = "certificates", responses((status = 200, body = [Certificate])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let rows: Vec<CertRow> = sqlx::query_as("SELECT * FROM certificates")
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(cert_json).collect(),
        &["name", "id", "created_at"],
    )
}

async fn find(cp: &ControlPlane, ident: &str) -> ApiResult<CertRow> {
    find_one(
        cp,
        "SELECT * FROM certificates WHERE id = $1 OR name = $1",
        &[ident],
        "certificate",
        ident,
    )
    .await
}

/// Show a certificate (admin)
#[utoipa::path(get, path = "/certificates/{cert}", tag = "certificates", responses((status = 200, body = Certificate)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(cert): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    Ok(json(StatusCode::OK, cert_json(&find(&cp, &cert).await?)))
}

/// Remove a certificate (admin)
#[utoipa::path(delete, path = "/certificates/{cert}", tag = "certificates", responses((status = 200, body = Certificate)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(cert): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let c = find(&cp, &cert).await?;
    delete_row(&cp, "certificates", &c.id, false).await?;
    Ok(json(StatusCode::OK, cert_json(&c)))
}
