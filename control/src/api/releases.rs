//! Releases (`/apps/{app}/releases`): an append-only ledger `v1, v2, …`. A rollback is a new
//! release copying an old one's artifact and config; a deploy is a new release of a build.
//! Release statuses (`…/statuses`) are checks any system posts on a release.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::apps::{Owner, load};
use super::{Body, Id, Named, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    AppRow, BuildRow, ReleaseRow, StatusRow, current_release, find_app, find_release, new_id,
    now_us,
};

/// A release: `vN` of an app's ledger, an artifact with its config.
#[derive(Debug, Serialize, ToSchema)]
pub struct Release {
    pub id: String,
    pub version: i64,
    pub description: String,
    /// `succeeded`, `pending` (held for checks), `canary`, `failed`, …
    pub status: String,
    /// Whether it is the one running.
    pub current: bool,
    pub eligible_for_rollback: bool,
    pub app: Named,
    pub user: Owner,
    /// The build it deploys.
    pub slug: Option<Id>,
    /// The artifact: `{"slug": dir}`, `{"image": ref}` or `{"command": cmd}`.
    pub artifact: Option<Value>,
    /// How a canary or a held release ended.
    pub outcome: Option<Value>,
    pub addon_plan_names: Vec<String>,
    pub output_stream_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A release named by version (and id where known).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub version: i64,
}

pub(crate) fn release_json(a: &AppRow, r: &ReleaseRow, current: bool) -> Release {
    let parse = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
    Release {
        id: r.id.clone(),
        version: r.version,
        description: r.description.clone(),
        status: r.status.clone(),
        current,
        eligible_for_rollback: true,
        app: Named::new(a.id.clone(), a.key()),
        user: Owner {
            id: r.user_email.clone(),
            email: r.user_email.clone(),
        },
        slug: r.build_id.as_ref().map(|b| Id { id: b.clone() }),
        artifact: parse(&r.artifact),
        outcome: parse(&r.outcome),
        addon_plan_names: Vec::new(),
        output_stream_url: None,
        created_at: time(r.created_at),
        updated_at: time(r.updated_at),
    }
}

/// Append the next release of `app_id`; returns it.
pub(crate) async fn append_release(
    c: &mut AnyConnection,
    app_id: &str,
    artifact: Option<String>,
    build_id: Option<String>,
    config: &BTreeMap<String, String>,
    description: &str,
    email: &str,
) -> ApiResult<ReleaseRow> {
    let version: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM releases WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut *c)
            .await?;
    let now = now_us();
    let r = ReleaseRow {
        id: new_id(),
        app_id: app_id.to_owned(),
        version: version + 1,
        description: description.to_owned(),
        artifact,
        build_id,
        config: serde_json::to_string(config).map_err(|e| ApiError::Internal(e.to_string()))?,
        status: "succeeded".into(),
        user_email: email.to_owned(),
        created_at: now,
        updated_at: now,
        outcome: None,
    };
    sqlx::query("INSERT INTO releases (id, app_id, version, description, artifact, build_id, config, status, user_email, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)")
        .bind(&r.id)
        .bind(&r.app_id)
        .bind(r.version)
        .bind(&r.description)
        .bind(&r.artifact)
        .bind(&r.build_id)
        .bind(&r.config)
        .bind(&r.status)
        .bind(&r.user_email)
        .bind(now)
        .execute(&mut *c)
        .await?;
    Ok(r)
}

/// List releases
#[utoipa::path(get, path = "/apps/{app}/releases", tag = "releases", responses((status = 200, body = [Release])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let rows: Vec<ReleaseRow> = sqlx::query_as("SELECT * FROM releases WHERE app_id = $1")
        .bind(&a.id)
        .fetch_all(cp.store().pool())
        .await?;
    let newest = rows
        .iter()
        .filter(|r| r.status == "succeeded")
        .map(|r| r.version)
        .max()
        .unwrap_or(0);
    let items = rows
        .iter()
        .map(|r| release_json(&a, r, r.version == newest))
        .collect::<Vec<_>>();
    paginate(&headers, items, &["version", "id", "created_at"])
}

/// Show a release (id, N or vN)
#[utoipa::path(get, path = "/apps/{app}/releases/{release}", tag = "releases", responses((status = 200, body = Release)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, release)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let mut c = cp.store().pool().acquire().await?;
    let r = find_release(&mut c, &a.id, &release).await?;
    let cur = current_release(&mut c, &a.id).await?;
    let is_current = cur.is_some_and(|x| x.id == r.id);
    Ok(json(StatusCode::OK, release_json(&a, &r, is_current)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRelease {
    /// Roll back to this release (id, `vN` or N).
    #[serde(default)]
    pub release: Option<String>,
    /// Deploy this build (id, or `latest`).
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Roll back (release) or deploy a build (slug)
#[utoipa::path(post, path = "/apps/{app}/releases", tag = "releases", request_body = CreateRelease, responses((status = 201, body = Release)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<CreateRelease>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let r = match (body.release, body.slug) {
        (Some(target), None) => {
            crate::canary::ensure_none_running(&mut w.tx, &a).await?;
            let old = find_release(&mut w.tx, &a.id, &target).await?;
            if old.artifact.is_none()
                && current_release(&mut w.tx, &a.id)
                    .await?
                    .and_then(|c| c.artifact)
                    .is_some()
            {
                return Err(ApiError::Conflict(format!(
                    "v{} has no build to roll back to.",
                    old.version
                )));
            }
            let desc = body
                .description
                .unwrap_or_else(|| format!("Rollback to v{}", old.version));
            append_release(
                &mut w.tx,
                &a.id,
                old.artifact.clone(),
                old.build_id.clone(),
                &old.config(),
                &desc,
                &caller.email,
            )
            .await?
        }
        (None, Some(slug)) => {
            let q = if slug == "latest" {
                "SELECT * FROM builds WHERE app_id = $1 AND status = 'succeeded' AND $2 = $2 ORDER BY created_at DESC LIMIT 1"
            } else {
                "SELECT * FROM builds WHERE app_id = $1 AND id = $2"
            };
            let b: BuildRow = sqlx::query_as(q)
                .bind(&a.id)
                .bind(&slug)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(|| ApiError::not_found("build", &slug))?;
            if b.status != "succeeded" {
                return Err(ApiError::Conflict(format!(
                    "The build {} did not succeed.",
                    b.id
                )));
            }
            let config = current_release(&mut w.tx, &a.id)
                .await?
                .map(|r| r.config())
                .unwrap_or_default();
            let desc = body
                .description
                .unwrap_or_else(|| format!("Deploy {}", &b.id[..8]));
            release_build(
                &cp,
                &mut w.tx,
                &a,
                Some(b.artifact.clone()),
                Some(b.id.clone()),
                &config,
                &desc,
                &caller.email,
            )
            .await?
        }
        _ => {
            return Err(ApiError::invalid(
                "release",
                "give exactly one of `release` (roll back) or `slug` (deploy a build)",
            ));
        }
    };
    cp.commit(w, true).await?;
    tracing::info!(app = %a.key(), version = r.version, status = %r.status, "released");
    let current = r.status == "succeeded";
    Ok(json(StatusCode::CREATED, release_json(&a, &r, current)))
}

/// Release a build's artifact: in a `socs` space it is held `pending` until its status checks
/// pass (the pipeline's required ones, else at least one, and none failing); elsewhere it is
/// deployed, as a canary when the app runs canaries.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn release_build(
    cp: &ControlPlane,
    c: &mut AnyConnection,
    a: &AppRow,
    artifact: Option<String>,
    build_id: Option<String>,
    config: &BTreeMap<String, String>,
    description: &str,
    email: &str,
) -> ApiResult<ReleaseRow> {
    if !a.is_socs() {
        return crate::canary::deploy(cp, c, a, artifact, build_id, config, description, email)
            .await;
    }
    crate::canary::ensure_none_running(c, a).await?;
    let mut r = append_release(c, &a.id, artifact, build_id, config, description, email).await?;
    r.status = "pending".into();
    sqlx::query("UPDATE releases SET status = 'pending' WHERE id = $1")
        .bind(&r.id)
        .execute(&mut *c)
        .await?;
    tracing::info!(app = %a.key(), version = r.version, "socs: release held until its checks pass");
    Ok(r)
}

/// The checks a held (`pending`) socs release waits for: its pipeline's required checks.
async fn required_checks_of(c: &mut AnyConnection, app_id: &str) -> ApiResult<Vec<String>> {
    let p: Option<String> = sqlx::query_scalar(
        "SELECT p.required_checks FROM pipelines p JOIN pipeline_couplings k \
         ON k.pipeline_id = p.id WHERE k.app_id = $1",
    )
    .bind(app_id)
    .fetch_optional(&mut *c)
    .await?;
    Ok(p.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// After a check changed on a held socs release: fail it when a check failed, make it
/// current when every check it waits for passed.
async fn settle_held(c: &mut AnyConnection, a: &AppRow, r: &ReleaseRow) -> ApiResult<&'static str> {
    let failed: Option<String> = sqlx::query_scalar(
        "SELECT context FROM release_statuses WHERE release_id = $1 \
         AND state IN ('failure', 'error') ORDER BY context LIMIT 1",
    )
    .bind(&r.id)
    .fetch_optional(&mut *c)
    .await?;
    let now = now_us();
    if let Some(ctx) = failed {
        let outcome =
            json!({"state": "failed", "reason": format!("status check {ctx} did not pass")});
        sqlx::query(
            "UPDATE releases SET status = 'failed', outcome = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(outcome.to_string())
        .bind(now)
        .bind(&r.id)
        .execute(&mut *c)
        .await?;
        return Ok("failed");
    }
    let required = required_checks_of(c, &a.id).await?;
    let blocking = super::pipelines::blocking_checks(c, &required, r, true).await?;
    if !blocking.is_empty() {
        return Ok("pending");
    }
    crate::canary::ensure_none_running(c, a).await?;
    let newer = current_release(c, &a.id)
        .await?
        .is_some_and(|cur| cur.version > r.version);
    if newer {
        // Something was released meanwhile: release the artifact again on top of it.
        let cur = current_release(c, &a.id)
            .await?
            .map(|x| x.config())
            .unwrap_or_default();
        append_release(
            c,
            &a.id,
            r.artifact.clone(),
            r.build_id.clone(),
            &cur,
            &format!("Deploy v{} (checks passed)", r.version),
            &r.user_email,
        )
        .await?;
        sqlx::query("UPDATE releases SET status = 'superseded', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&r.id)
            .execute(&mut *c)
            .await?;
    } else {
        sqlx::query("UPDATE releases SET status = 'succeeded', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&r.id)
            .execute(&mut *c)
            .await?;
    }
    Ok("succeeded")
}

/// A status check some system posted on a release.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseStatus {
    pub id: String,
    pub release: Id,
    pub context: String,
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    pub description: String,
    pub target_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn status_json(s: &StatusRow) -> ReleaseStatus {
    ReleaseStatus {
        id: s.id.clone(),
        release: Id {
            id: s.release_id.clone(),
        },
        context: s.context.clone(),
        state: s.state.clone(),
        description: s.description.clone(),
        target_url: s.target_url.clone(),
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
    }
}

/// List release statuses
#[utoipa::path(get, path = "/apps/{app}/releases/{release}/statuses", tag = "releases", responses((status = 200, body = [ReleaseStatus])))]
pub async fn list_statuses(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, release)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let mut c = cp.store().pool().acquire().await?;
    let r = find_release(&mut c, &a.id, &release).await?;
    let rows: Vec<StatusRow> =
        sqlx::query_as("SELECT * FROM release_statuses WHERE release_id = $1")
            .bind(&r.id)
            .fetch_all(&mut *c)
            .await?;
    paginate(
        &headers,
        rows.iter().map(status_json).collect(),
        &["context", "id", "created_at"],
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStatus {
    pub context: String,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image_url: Option<String>,
}

/// Post (or update, by context) a status check on a release.
#[utoipa::path(post, path = "/apps/{app}/releases/{release}/statuses", tag = "releases", request_body = CreateStatus, responses((status = 201, description = "A new check", body = ReleaseStatus), (status = 200, description = "The check of that context, updated", body = ReleaseStatus)))]
pub async fn create_status(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, release)): Path<(String, String)>,
    Body(body): Body<CreateStatus>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    if !["pending", "success", "failure", "error"].contains(&body.state.as_str()) {
        return Err(ApiError::invalid(
            "state",
            "one of pending, success, failure, error",
        ));
    }
    let ctx_ok = (1..=64).contains(&body.context.len())
        && body
            .context
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./+-_".contains(&b));
    if !ctx_ok {
        return Err(ApiError::invalid("context", "1–64 of [A-Za-z0-9./+_-]"));
    }
    if let Some(u) = &body.target_url
        && !(u.starts_with("https://") || u.starts_with("http://"))
    {
        return Err(ApiError::invalid("target_url", "must be an http(s) URL"));
    }
    let mut w = cp.begin().await?;
    let c: &mut AnyConnection = &mut w.tx;
    let r = find_release(c, &a.id, &release).await?;
    let now = now_us();
    let existing: Option<StatusRow> =
        sqlx::query_as("SELECT * FROM release_statuses WHERE release_id = $1 AND context = $2")
            .bind(&r.id)
            .bind(&body.context)
            .fetch_optional(&mut *c)
            .await?;
    let (status, code) = match existing {
        Some(mut s) => {
            s.state = body.state;
            s.description = body.description.unwrap_or(s.description);
            s.target_url = body.target_url.or(s.target_url);
            s.updated_at = now;
            sqlx::query("UPDATE release_statuses SET state = $1, description = $2, target_url = $3, updated_at = $4 WHERE id = $5")
                .bind(&s.state)
                .bind(&s.description)
                .bind(&s.target_url)
                .bind(now)
                .bind(&s.id)
                .execute(&mut *c)
                .await?;
            (s, StatusCode::OK)
        }
        None => {
            let s = StatusRow {
                id: new_id(),
                release_id: r.id.clone(),
                context: body.context,
                state: body.state,
                description: body.description.unwrap_or_default(),
                target_url: body.target_url,
                created_at: now,
                updated_at: now,
            };
            sqlx::query("INSERT INTO release_statuses (id, release_id, context, state, description, target_url, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
                .bind(&s.id)
                .bind(&s.release_id)
                .bind(&s.context)
                .bind(&s.state)
                .bind(&s.description)
                .bind(&s.target_url)
                .bind(now)
                .execute(&mut *c)
                .await?;
            (s, StatusCode::CREATED)
        }
    };
    let failed = status.state == "failure" || status.state == "error";
    if r.status == "pending" && a.is_socs() {
        let settled = settle_held(&mut w.tx, &a, &r).await?;
        tracing::info!(app = %a.key(), version = r.version, settled, "socs release checked");
    }
    cp.commit(w, true).await?;
    if r.status == "canary" && failed {
        crate::canary::on_failed_check(&cp, &a, r.version, &status.context, &status.state).await?;
    }
    Ok(json(code, status_json(&status)))
}
