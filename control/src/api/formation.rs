//! Formation (`/apps/{app}/formation`): per process type quantity, size, command, port and
//! health check. Scaling makes no release; the runtime converges to it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use utoipa::ToSchema;
use wharf_config::{DYNO_SIZES, HealthCheck};

use super::apps::load;
use super::{Body, Named, check_name, delete_row, find_one, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, FormationRow, find_app, new_id, now_us};

/// Most dynos of one process type.
pub const MAX_QUANTITY: i64 = 100;

/// A process type of an app: how many dynos of which size run which command.
#[derive(Debug, Serialize, ToSchema)]
pub struct Formation {
    pub id: String,
    pub app: Named,
    #[serde(rename = "type")]
    pub process_type: String,
    pub quantity: i64,
    pub size: String,
    pub command: Option<String>,
    pub port: Option<i64>,
    /// The HTTP check's path, `tcp`, or none.
    pub healthcheck: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) fn formation_json(a: &AppRow, f: &FormationRow) -> Formation {
    let hc: Option<HealthCheck> = f
        .health_check
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok());
    Formation {
        id: f.id.clone(),
        app: Named::new(a.id.clone(), a.key()),
        process_type: f.process_type.clone(),
        quantity: f.quantity,
        size: f.size.clone(),
        command: f.command.clone(),
        port: f.port,
        healthcheck: hc.map(|hc| match hc {
            HealthCheck::Http { path } => path,
            HealthCheck::Tcp => "tcp".into(),
        }),
        created_at: time(f.created_at),
        updated_at: time(f.updated_at),
    }
}

/// One formation change. `quantity` may be a number or a string (the Heroku CLI sends "2").
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FormationUpdate {
    #[serde(default, rename = "type")]
    pub process_type: Option<String>,
    /// A whole number, or one as a string.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub quantity: Option<Value>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    /// A path (`/health`) for an HTTP check, `tcp`, or `""` to remove it.
    #[serde(default)]
    pub healthcheck: Option<String>,
}

fn quantity(v: &Value) -> ApiResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (0..=MAX_QUANTITY).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(
            "quantity",
            format!("must be a whole number 0–{MAX_QUANTITY}"),
        )),
    }
}

/// In a `prod` space only an admin token may take a process type to zero dynos.
fn check_prod_zero(caller: &Caller, a: &AppRow, ptype: &str) -> ApiResult<()> {
    if a.compliance().iter().any(|c| c == "prod") && !caller.scope.admin {
        return Err(ApiError::Forbidden(format!(
            "{} is in a prod space: only an admin token may scale {ptype} to zero.",
            a.key()
        )));
    }
    Ok(())
}

/// Apply one update to `app`'s process type (created when missing).
async fn apply(
    c: &mut AnyConnection,
    caller: &Caller,
    a: &AppRow,
    ptype: &str,
    u: &FormationUpdate,
) -> ApiResult<FormationRow> {
    check_name("type", ptype)?;
    let q = u.quantity.as_ref().map(quantity).transpose()?;
    if q == Some(0) {
        check_prod_zero(caller, a, ptype)?;
    }
    if let Some(size) = &u.size
        && !DYNO_SIZES.iter().any(|(n, _)| n.eq_ignore_ascii_case(size))
    {
        return Err(ApiError::invalid(
            "size",
            format!(
                "unknown size {size:?} (one of {})",
                DYNO_SIZES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if let Some(p) = u.port {
        if !(1..=65535).contains(&p) {
            return Err(ApiError::invalid("port", "must be 1–65535"));
        }
        if ptype != "web" {
            return Err(ApiError::invalid("port", "only web dynos have a port"));
        }
    }
    let hc = match u.healthcheck.as_deref() {
        None => None,
        Some("") => Some(None),
        Some("tcp") => Some(Some(HealthCheck::Tcp)),
        Some(p) if p.starts_with('/') => Some(Some(HealthCheck::Http { path: p.to_owned() })),
        Some(_) => {
            return Err(ApiError::invalid(
                "healthcheck",
                "a path starting with '/', or \"tcp\"",
            ));
        }
    };
    let existing: Option<FormationRow> =
        sqlx::query_as("SELECT * FROM formation WHERE app_id = $1 AND type = $2")
            .bind(&a.id)
            .bind(ptype)
            .fetch_optional(&mut *c)
            .await?;
    let now = now_us();
    let mut f = existing.clone().unwrap_or(FormationRow {
        id: new_id(),
        app_id: a.id.clone(),
        process_type: ptype.to_owned(),
        quantity: 1,
        size: "standard-1x".into(),
        command: None,
        port: None,
        health_check: None,
        created_at: now,
        updated_at: now,
    });
    if let Some(q) = q {
        f.quantity = q;
    }
    if let Some(s) = &u.size {
        f.size = s.to_ascii_lowercase();
    }
    if let Some(cmd) = &u.command {
        f.command = (!cmd.is_empty()).then(|| cmd.clone());
    }
    if u.port.is_some() {
        f.port = u.port;
    }
    if let Some(hc) = hc {
        f.health_check = hc
            .map(|h| serde_json::to_string(&h))
            .transpose()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    f.updated_at = now;
    if existing.is_some() {
        sqlx::query("UPDATE formation SET quantity = $1, size = $2, command = $3, port = $4, health_check = $5, updated_at = $6 WHERE id = $7")
            .bind(f.quantity)
            .bind(&f.size)
            .bind(&f.command)
            .bind(f.port)
            .bind(&f.health_check)
            .bind(now)
            .bind(&f.id)
            .execute(&mut *c)
            .await?;
    } else {
        sqlx::query("INSERT INTO formation (id, app_id, type, quantity, size, command, port, health_check, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)")
            .bind(&f.id)
            .bind(&f.app_id)
            .bind(&f.process_type)
            .bind(f.quantity)
            .bind(&f.size)
            .bind(&f.command)
            .bind(f.port)
            .bind(&f.health_check)
            .bind(now)
            .execute(&mut *c)
            .await?;
    }
    Ok(f)
}

/// List process types
#[utoipa::path(get, path = "/apps/{app}/formation", tag = "formation", responses((status = 200, body = [Formation])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let rows: Vec<FormationRow> = sqlx::query_as("SELECT * FROM formation WHERE app_id = $1")
        .bind(&a.id)
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(|f| formation_json(&a, f)).collect(),
        &["type", "id"],
    )
}

async fn find(cp: &ControlPlane, a: &AppRow, ptype: &str) -> ApiResult<FormationRow> {
    find_one(
        cp,
        "SELECT * FROM formation WHERE app_id = $1 AND (type = $2 OR id = $2)",
        &[&a.id, ptype],
        "process type",
        ptype,
    )
    .await
}

/// Show a process type
#[utoipa::path(get, path = "/apps/{app}/formation/{ptype}", tag = "formation", responses((status = 200, body = Formation)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, ptype)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    Ok(json(
        StatusCode::OK,
        formation_json(&a, &find(&cp, &a, &ptype).await?),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub updates: Vec<FormationUpdate>,
}

/// Batch update process types
#[utoipa::path(patch, path = "/apps/{app}/formation", tag = "formation", request_body = Batch, responses((status = 200, body = [Formation])))]
pub async fn batch(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<Batch>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let mut out = Vec::new();
    for u in &body.updates {
        let ptype = u
            .process_type
            .clone()
            .ok_or_else(|| ApiError::invalid("updates.type", "every update names its type"))?;
        out.push(apply(&mut w.tx, &caller, &a, &ptype, u).await?);
    }
    cp.commit(w, true).await?;
    Ok(json(
        StatusCode::OK,
        out.iter()
            .map(|f| formation_json(&a, f))
            .collect::<Vec<_>>(),
    ))
}

/// Scale or change a process type (created when missing)
#[utoipa::path(patch, path = "/apps/{app}/formation/{ptype}", tag = "formation", request_body = FormationUpdate, responses((status = 200, body = Formation)))]
pub async fn update(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, ptype)): Path<(String, String)>,
    Body(body): Body<FormationUpdate>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let f = apply(&mut w.tx, &caller, &a, &ptype, &body).await?;
    cp.commit(w, true).await?;
    Ok(json(StatusCode::OK, formation_json(&a, &f)))
}

/// Remove a process type
#[utoipa::path(delete, path = "/apps/{app}/formation/{ptype}", tag = "formation", responses((status = 200, body = Formation)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, ptype)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let f = find(&cp, &a, &ptype).await?;
    check_prod_zero(&caller, &a, &f.process_type)?;
    delete_row(&cp, "formation", &f.id, true).await?;
    Ok(json(StatusCode::OK, formation_json(&a, &f)))
}
