//! Dynos (`/apps/{app}/dynos`): what the runtime reports running; `DELETE` restarts.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use wharf_runtime::DynoStatus;
use wharf_runtime::RunRequest;

use super::apps::load;
use super::releases::ReleaseRef;
use super::{Body, Empty, Named, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, FormationRow, new_id, new_secret, now_us, sha256_hex};

/// A dyno: one process of a release, as the runtime reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dyno {
    pub id: String,
    /// `web.1`, `run.1234`, …
    pub name: String,
    #[serde(rename = "type")]
    pub process_type: String,
    /// `starting`, `up`, `down`, `crashed`, …
    pub state: String,
    pub command: String,
    pub size: String,
    /// The release it runs (none for a one-off dyno just started).
    pub release: Option<ReleaseRef>,
    pub app: Named,
    /// Where it listens (web dynos).
    pub address: Option<String>,
    /// Where an attached one-off dyno's output is served once.
    pub attach_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn dyno_json(a: &AppRow, d: &DynoStatus, f: Option<&FormationRow>) -> Dyno {
    let state = serde_json::to_value(d.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Dyno {
        id: sha256_hex(&format!("{}/{}/{}", a.id, d.name, d.release))[..32].to_owned(),
        name: d.name.clone(),
        process_type: d.process_type.clone(),
        state,
        command: f.and_then(|f| f.command.clone()).unwrap_or_default(),
        size: f
            .map(|f| f.size.clone())
            .unwrap_or_else(|| "standard-1x".into()),
        release: Some(ReleaseRef {
            id: None,
            version: i64::from(d.release),
        }),
        app: Named::new(a.id.clone(), a.key()),
        address: d.address.map(|x| x.to_string()),
        attach_url: None,
        created_at: time(d.updated_at_us),
        updated_at: time(d.updated_at_us),
    }
}

async fn dynos_of(cp: &ControlPlane, a: &AppRow) -> ApiResult<Vec<Dyno>> {
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

/// List dynos (what the runtime reports)
#[utoipa::path(get, path = "/apps/{app}/dynos", tag = "dynos", responses((status = 200, body = [Dyno])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    paginate(&headers, dynos_of(&cp, &a).await?, &["name", "id"])
}

/// Show a dyno (by name or id)
#[utoipa::path(get, path = "/apps/{app}/dynos/{dyno}", tag = "dynos", responses((status = 200, body = Dyno)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    dynos_of(&cp, &a)
        .await?
        .into_iter()
        .find(|d| d.name == dyno || d.id == dyno)
        .map(|d| json(StatusCode::OK, d))
        .ok_or_else(|| ApiError::not_found("dyno", &dyno))
}

/// Restart every dyno
#[utoipa::path(delete, path = "/apps/{app}/dynos", tag = "dynos", responses((status = 202, body = Empty)))]
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
    Ok(json(StatusCode::ACCEPTED, Empty {}))
}

/// Restart one dyno (`web.1`) or every dyno of a process type (`web`).
#[utoipa::path(delete, path = "/apps/{app}/dynos/{dyno}", tag = "dynos", responses((status = 202, body = Empty)))]
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
    Ok(json(StatusCode::ACCEPTED, Empty {}))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RunDyno {
    pub command: String,
    #[serde(default)]
    pub attach: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub size: Option<String>,
}

/// Run a one-off dyno
///
/// `POST /apps/{app}/dynos`: a one-off dyno on the current release. Attached, its output is
/// served once at the returned `attach_url` (the rendezvous socket).
#[utoipa::path(post, path = "/apps/{app}/dynos", tag = "dynos", request_body = RunDyno, responses((status = 201, body = Dyno)))]
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
        Dyno {
            id: new_id(),
            name,
            process_type: "run".into(),
            command: body.command,
            attach_url,
            size: body.size.unwrap_or_else(|| "standard-1x".into()),
            state: "starting".into(),
            app: Named::new(a.id.clone(), a.key()),
            release: None,
            address: None,
            created_at: time(now),
            updated_at: time(now),
        },
    ))
}
