//! Dynos (`/apps/{app}/dynos`): what the runtime reports running; `DELETE` restarts.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use wharf_runtime::DynoStatus;
use wharf_runtime::RunRequest;

use super::apps::load;
use super::{Body, json, paginate, ts};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, FormationRow, new_id, new_secret, now_us, sha256_hex};

fn dyno_json(a: &AppRow, d: &DynoStatus, f: Option<&FormationRow>) -> Value {
    let state = serde_json::to_value(d.state).unwrap_or(Value::Null);
    json!({
        "id": &sha256_hex(&format!("{}/{}/{}", a.id, d.name, d.release))[..32],
        "name": d.name,
        "type": d.process_type,
        "state": state,
        "command": f.and_then(|f| f.command.clone()).unwrap_or_default(),
        "size": f.map(|f| f.size.clone()).unwrap_or_else(|| "standard-1x".into()),
        "release": {"version": d.release},
        "app": {"id": a.id, "name": a.key()},
        "address": d.address.map(|x| x.to_string()),
        "attach_url": null,
        "created_at": ts(d.updated_at_us),
        "updated_at": ts(d.updated_at_us),
    })
}

async fn dynos_of(cp: &ControlPlane, a: &AppRow) -> ApiResult<Vec<Value>> {
    let formation: Vec<FormationRow> = sqlx::query_as("SELECT * FROM formation WHERE app_id = $1")
        .bind(&a.id)
        .fetch_all(cp.store().pool())
        .await?;
    let key = a.key();
    Ok(cp
        .runtime()
        .dynos()
        .iter()
        .filter(|d| d.app == key)
        .map(|d| {
            let f = formation.iter().find(|f| f.process_type == d.process_type);
            dyno_json(a, d, f)
        })
        .collect())
}

pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    paginate(&headers, dynos_of(&cp, &a).await?, &["name", "id"])
}

pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    dynos_of(&cp, &a)
        .await?
        .into_iter()
        .find(|d| d["name"] == dyno.as_str() || d["id"] == dyno.as_str())
        .map(|d| json(StatusCode::OK, d))
        .ok_or_else(|| ApiError::not_found("dyno", &dyno))
}

pub async fn restart_all(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    cp.runtime()
        .restart(&a.key(), None)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok(json(StatusCode::ACCEPTED, json!({})))
}

/// Restart one dyno (`web.1`) or every dyno of a process type (`web`).
pub async fn restart(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let ok = wharf_config::validate::is_dyno_name(&dyno)
        || wharf_config::names::check_name(&dyno).is_ok();
    if !ok {
        return Err(ApiError::invalid(
            "dyno",
            "a dyno name (web.1) or a process type (web)",
        ));
    }
    cp.runtime()
        .restart(&a.key(), Some(&dyno))
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok(json(StatusCode::ACCEPTED, json!({})))
}

#[derive(Debug, Deserialize)]
pub struct RunDyno {
    pub command: String,
    #[serde(default)]
    pub attach: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub size: Option<String>,
}

/// `POST /apps/{app}/dynos`: a one-off dyno on the current release. Attached, its output is
/// served once at the returned `attach_url` (the rendezvous socket).
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<RunDyno>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    if body.command.trim().is_empty() || body.command.contains('\0') {
        return Err(ApiError::invalid("command", "must not be empty"));
    }
    if body.attach && cp.rendezvous().is_none() {
        return Err(ApiError::invalid(
            "attach",
            "this control plane has no rendezvous socket configured",
        ));
    }
    let handle = cp
        .runtime()
        .run(
            &a.key(),
            RunRequest {
                command: body.command.clone(),
                env: body.env,
                size: body.size.clone(),
            },
        )
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let name = handle.dyno.clone();
    let attach_url = match cp.rendezvous() {
        Some(r) if body.attach => Some(r.register(&new_secret(), handle)),
        _ => {
            let mut h = handle;
            tokio::spawn(async move { while h.output.recv().await.is_some() {} });
            None
        }
    };
    tracing::info!(app = %a.key(), dyno = %name, "one-off dyno started");
    let now = now_us();
    Ok(json(
        StatusCode::CREATED,
        json!({
            "id": new_id(),
            "name": name,
            "type": "run",
            "command": body.command,
            "attach_url": attach_url,
            "size": body.size.unwrap_or_else(|| "standard-1x".into()),
            "state": "starting",
            "app": {"id": a.id, "name": a.key()},
            "release": null,
            "created_at": ts(now),
            "updated_at": ts(now),
        }),
    ))
}
