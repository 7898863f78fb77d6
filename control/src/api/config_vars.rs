//! Config vars (`/apps/{app}/config-vars`): a flat object; PATCH merges, `null` deletes, and
//! every change is a new release.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use super::apps::load;
use super::releases::append_release;
use super::{Body, json};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, current_release, find_app};

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Config vars as an answer: secret-looking values redacted for apps in `socs` spaces.
fn answer(
    cp: &ControlPlane,
    a: &AppRow,
    vars: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    if a.is_socs() {
        cp.secrets().vars(&vars)
    } else {
        vars
    }
}

/// Config vars
#[utoipa::path(get, path = "/apps/{app}/config-vars", tag = "config-vars", responses((status = 200, body = BTreeMap<String, String>)))]
pub async fn get_vars(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let mut c = cp.store().pool().acquire().await?;
    let vars = current_release(&mut c, &a.id)
        .await?
        .map(|r| r.config())
        .unwrap_or_default();
    Ok(json(StatusCode::OK, answer(&cp, &a, vars)))
}

/// Set (string) or delete (null) config vars; makes a release
#[utoipa::path(patch, path = "/apps/{app}/config-vars", tag = "config-vars", request_body = BTreeMap<String, Option<String>>, responses((status = 200, body = BTreeMap<String, String>)))]
pub async fn patch_vars(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<Map<String, Value>>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let mut changes: Vec<(String, Option<String>)> = Vec::new();
    for (k, v) in body {
        if !is_env_name(&k) {
            return Err(ApiError::invalid(
                k,
                "config var names are [A-Za-z_][A-Za-z0-9_]*",
            ));
        }
        let v = match v {
            Value::Null => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                return Err(ApiError::invalid(
                    k,
                    "a value is a string, or null to delete",
                ));
            }
        };
        changes.push((k, v));
    }
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let cur = current_release(&mut w.tx, &a.id).await?;
    let mut vars = cur.as_ref().map(|r| r.config()).unwrap_or_default();
    let before = vars.clone();
    let mut set = Vec::new();
    let mut removed = Vec::new();
    for (k, v) in changes {
        match v {
            Some(v) => {
                if vars.get(&k) != Some(&v) {
                    set.push(k.clone());
                }
                vars.insert(k, v);
            }
            None => {
                if vars.remove(&k).is_some() {
                    removed.push(k);
                }
            }
        }
    }
    if vars == before {
        return Ok(json(StatusCode::OK, answer(&cp, &a, vars)));
    }
    crate::canary::ensure_none_running(&mut w.tx, &a).await?;
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("Set {} config vars", set.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("Remove {} config vars", removed.join(", ")));
    }
    let artifact = cur.as_ref().and_then(|r| r.artifact.clone());
    let build = cur.as_ref().and_then(|r| r.build_id.clone());
    append_release(
        &mut w.tx,
        &a.id,
        artifact,
        build,
        &vars,
        &parts.join("; "),
        &caller.email,
    )
    .await?;
    cp.commit(w, true).await?;
    // Names only: values may be secrets.
    tracing::info!(app = %a.key(), set = ?set, removed = ?removed, "config vars changed");
    Ok(json(StatusCode::OK, answer(&cp, &a, vars)))
}
