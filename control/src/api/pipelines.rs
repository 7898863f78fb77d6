//! Pipelines (`/pipelines`, `/pipeline-couplings`, `/pipeline-promotions`): apps coupled to the
//! stages review → development → staging → canary → production (several apps, in several
//! spaces, may share a stage), the status checks a promotion requires, and promotions.
//!
//! A promotion copies the source release's artifact (never its config) to every app of the
//! target stage. It is refused with 409 naming every check that is not `success`. It is
//! recorded `pending` first; then one write transaction appends every target's release and
//! marks it `succeeded`, so either every target gets its release or none does (a failure
//! marks it `failed` with the reason). A promotion still `pending` when the control plane
//! starts — it stopped half-way — is run again by [`resume_pending`].

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{AnyConnection, FromRow};
use utoipa::ToSchema;

use super::releases::ReleaseRef;
use super::{Body, Named, check_name, json, paginate, time};
use crate::audit::{Actor, Change};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, ReleaseRow, StatusRow, current_release, find_app, new_id, now_us};
use crate::{ControlPlane, Fault};

/// The stages, in promotion order.
pub const STAGES: &[&str] = &["review", "development", "staging", "canary", "production"];

fn stage_index(stage: &str) -> ApiResult<usize> {
    STAGES.iter().position(|s| *s == stage).ok_or_else(|| {
        ApiError::invalid(
            "stage",
            format!("{stage:?} is not one of {}", STAGES.join(", ")),
        )
    })
}

#[derive(Debug, Clone, FromRow)]
pub struct PipelineRow {
    pub id: String,
    pub name: String,
    pub required_checks: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl PipelineRow {
    pub fn required_checks(&self) -> Vec<String> {
        serde_json::from_str(&self.required_checks).unwrap_or_default()
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct CouplingRow {
    pub id: String,
    pub pipeline_id: String,
    pub app_id: String,
    pub stage: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct PromotionRow {
    pub id: String,
    pub pipeline_id: String,
    pub source_app_id: String,
    pub source_release_id: String,
    pub source_version: i64,
    pub from_stage: String,
    pub to_stage: String,
    pub targets: String,
    pub state: String,
    pub results: String,
    pub error: Option<String>,
    pub user_email: String,
    pub token_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One target's outcome, kept in `promotions.results`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TargetResult {
    pub app: String,
    pub release: String,
    pub version: i64,
    /// `succeeded`, or `canary` when the target runs canaries.
    pub status: String,
}

/// A pipeline and the status checks a promotion requires.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    pub required_checks: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// An app coupled to a pipeline at a stage.
#[derive(Debug, Serialize, ToSchema)]
pub struct Coupling {
    pub id: String,
    /// review, development, staging, canary or production.
    pub stage: String,
    pub pipeline: Named,
    pub app: Named,
    pub space: CouplingSpace,
    pub created_at: String,
    pub updated_at: String,
}

/// The space of a coupled app.
#[derive(Debug, Serialize, ToSchema)]
pub struct CouplingSpace {
    pub name: String,
    pub compliance: Vec<String>,
}

/// A promotion of a release's artifact to the apps of a stage.
#[derive(Debug, Serialize, ToSchema)]
pub struct Promotion {
    pub id: String,
    pub pipeline: Named,
    pub source: PromotionSource,
    pub from_stage: String,
    pub to_stage: String,
    /// How many apps it targets.
    pub targets: usize,
    /// pending, succeeded or failed.
    pub state: String,
    pub results: Vec<TargetResult>,
    pub error: Option<String>,
    pub user: PromotionUser,
    pub created_at: String,
    pub updated_at: String,
}

/// The app and release a promotion copies from.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromotionSource {
    pub app: Named,
    pub release: ReleaseRef,
}

/// Who promoted.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromotionUser {
    pub email: String,
}

fn pipeline_json(p: &PipelineRow) -> Pipeline {
    Pipeline {
        id: p.id.clone(),
        name: p.name.clone(),
        required_checks: p.required_checks(),
        created_at: time(p.created_at),
        updated_at: time(p.updated_at),
    }
}

fn coupling_json(c: &CouplingRow, p: &PipelineRow, a: &AppRow) -> Coupling {
    Coupling {
        id: c.id.clone(),
        stage: c.stage.clone(),
        pipeline: Named::new(p.id.clone(), p.name.clone()),
        app: Named::new(a.id.clone(), a.key()),
        space: CouplingSpace {
            name: a.space_name.clone(),
            compliance: a.compliance(),
        },
        created_at: time(c.created_at),
        updated_at: time(c.updated_at),
    }
}

fn promotion_json(p: &PromotionRow, pipeline: &str, source_app: &str) -> Promotion {
    let targets: Vec<String> = serde_json::from_str(&p.targets).unwrap_or_default();
    Promotion {
        id: p.id.clone(),
        pipeline: Named::new(p.pipeline_id.clone(), pipeline),
        source: PromotionSource {
            app: Named::new(p.source_app_id.clone(), source_app),
            release: ReleaseRef {
                id: Some(p.source_release_id.clone()),
                version: p.source_version,
            },
        },
        from_stage: p.from_stage.clone(),
        to_stage: p.to_stage.clone(),
        targets: targets.len(),
        state: p.state.clone(),
        results: serde_json::from_str(&p.results).unwrap_or_default(),
        error: p.error.clone(),
        user: PromotionUser {
            email: p.user_email.clone(),
        },
        created_at: time(p.created_at),
        updated_at: time(p.updated_at),
    }
}

pub async fn find_pipeline(c: &mut AnyConnection, ident: &str) -> ApiResult<PipelineRow> {
    sqlx::query_as("SELECT * FROM pipelines WHERE id = $1 OR name = $1")
        .bind(ident)
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("pipeline", ident))
}

fn check_contexts(checks: &[String]) -> ApiResult<()> {
    for c in checks {
        let ok = (1..=64).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./+-_".contains(&b));
        if !ok {
            return Err(ApiError::invalid(
                "required_checks",
                format!("{c:?}: a check is 1–64 of [A-Za-z0-9./+_-]"),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePipeline {
    pub name: String,
    #[serde(default)]
    pub required_checks: Vec<String>,
}

/// Create a pipeline (admin) with the status checks a promotion requires
#[utoipa::path(post, path = "/pipelines", tag = "pipelines", request_body = CreatePipeline, responses((status = 201, body = Pipeline)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreatePipeline>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let name = body.name.to_ascii_lowercase();
    check_name("name", &name)?;
    check_contexts(&body.required_checks)?;
    let mut c = cp.store().begin_side_write().await?;
    if find_pipeline(&mut c, &name).await.is_ok() {
        return Err(ApiError::Conflict(format!(
            "The pipeline {name:?} already exists."
        )));
    }
    let now = now_us();
    let p = PipelineRow {
        id: new_id(),
        name,
        required_checks: serde_json::to_string(&body.required_checks)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO pipelines (id, name, required_checks, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.required_checks)
        .bind(now)
        .execute(&mut *c)
        .await?;
    c.commit().await?;
    Ok(json(StatusCode::CREATED, pipeline_json(&p)))
}

/// List pipelines
#[utoipa::path(get, path = "/pipelines", tag = "pipelines", responses((status = 200, body = [Pipeline])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rows: Vec<PipelineRow> = sqlx::query_as("SELECT * FROM pipelines")
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(pipeline_json).collect(),
        &["name", "id", "created_at"],
    )
}

/// Show a pipeline
#[utoipa::path(get, path = "/pipelines/{pipeline}", tag = "pipelines", responses((status = 200, body = Pipeline)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    Path(pipeline): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let p = find_pipeline(&mut c, &pipeline).await?;
    Ok(json(StatusCode::OK, pipeline_json(&p)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePipeline {
    #[serde(default)]
    pub required_checks: Option<Vec<String>>,
}

/// Change a pipeline's required checks (admin)
#[utoipa::path(patch, path = "/pipelines/{pipeline}", tag = "pipelines", request_body = UpdatePipeline, responses((status = 200, body = Pipeline)))]
pub async fn update(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(pipeline): Path<String>,
    Body(body): Body<UpdatePipeline>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut c = cp.store().begin_side_write().await?;
    let mut p = find_pipeline(&mut c, &pipeline).await?;
    if let Some(checks) = body.required_checks {
        check_contexts(&checks)?;
        p.required_checks =
            serde_json::to_string(&checks).map_err(|e| ApiError::Internal(e.to_string()))?;
        p.updated_at = now_us();
        sqlx::query("UPDATE pipelines SET required_checks = $1, updated_at = $2 WHERE id = $3")
            .bind(&p.required_checks)
            .bind(p.updated_at)
            .bind(&p.id)
            .execute(&mut *c)
            .await?;
    }
    c.commit().await?;
    Ok(json(StatusCode::OK, pipeline_json(&p)))
}

/// Delete a pipeline, its couplings and promotions (admin)
#[utoipa::path(delete, path = "/pipelines/{pipeline}", tag = "pipelines", responses((status = 200, body = Pipeline)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(pipeline): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut c = cp.store().begin_side_write().await?;
    let p = find_pipeline(&mut c, &pipeline).await?;
    for q in [
        "DELETE FROM promotions WHERE pipeline_id = $1",
        "DELETE FROM pipeline_couplings WHERE pipeline_id = $1",
        "DELETE FROM pipelines WHERE id = $1",
    ] {
        sqlx::query(q).bind(&p.id).execute(&mut *c).await?;
    }
    c.commit().await?;
    Ok(json(StatusCode::OK, pipeline_json(&p)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCoupling {
    pub pipeline: String,
    pub app: String,
    pub stage: String,
}

/// Add an app to a pipeline at a stage
#[utoipa::path(post, path = "/pipeline-couplings", tag = "pipelines", request_body = CreateCoupling, responses((status = 201, body = Coupling)))]
pub async fn couple(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateCoupling>,
) -> ApiResult<Response> {
    stage_index(&body.stage)?;
    let mut c = cp.store().begin_side_write().await?;
    let p = find_pipeline(&mut c, &body.pipeline).await?;
    let a = find_app(&mut c, &body.app).await?;
    caller.require_app(&a)?;
    let existing: Option<CouplingRow> =
        sqlx::query_as("SELECT * FROM pipeline_couplings WHERE app_id = $1")
            .bind(&a.id)
            .fetch_optional(&mut *c)
            .await?;
    if let Some(e) = existing {
        return Err(ApiError::Conflict(format!(
            "The app {} is already in a pipeline (stage {}).",
            a.key(),
            e.stage
        )));
    }
    let now = now_us();
    let row = CouplingRow {
        id: new_id(),
        pipeline_id: p.id.clone(),
        app_id: a.id.clone(),
        stage: body.stage,
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO pipeline_couplings (id, pipeline_id, app_id, stage, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(&row.id)
        .bind(&row.pipeline_id)
        .bind(&row.app_id)
        .bind(&row.stage)
        .bind(now)
        .execute(&mut *c)
        .await?;
    c.commit().await?;
    Ok(json(StatusCode::CREATED, coupling_json(&row, &p, &a)))
}

async fn couplings_of(c: &mut AnyConnection, pipeline_id: &str) -> ApiResult<Vec<CouplingRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM pipeline_couplings WHERE pipeline_id = $1")
            .bind(pipeline_id)
            .fetch_all(&mut *c)
            .await?,
    )
}

/// List a pipeline's apps and their stages
#[utoipa::path(get, path = "/pipelines/{pipeline}/pipeline-couplings", tag = "pipelines", responses((status = 200, body = [Coupling])))]
pub async fn list_couplings(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let p = find_pipeline(&mut c, &pipeline).await?;
    let mut items = Vec::new();
    for k in couplings_of(&mut c, &p.id).await? {
        let a = find_app(&mut c, &k.app_id).await?;
        items.push(coupling_json(&k, &p, &a));
    }
    paginate(&headers, items, &["stage", "id", "created_at"])
}

async fn find_coupling(c: &mut AnyConnection, ident: &str) -> ApiResult<CouplingRow> {
    sqlx::query_as("SELECT * FROM pipeline_couplings WHERE id = $1")
        .bind(ident)
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("pipeline coupling", ident))
}

/// Show a coupling
#[utoipa::path(get, path = "/pipeline-couplings/{coupling}", tag = "pipelines", responses((status = 200, body = Coupling)))]
pub async fn coupling_info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(coupling): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let k = find_coupling(&mut c, &coupling).await?;
    let a = find_app(&mut c, &k.app_id).await?;
    caller.require_app(&a)?;
    let p = find_pipeline(&mut c, &k.pipeline_id).await?;
    Ok(json(StatusCode::OK, coupling_json(&k, &p, &a)))
}

/// Remove an app from its pipeline
#[utoipa::path(delete, path = "/pipeline-couplings/{coupling}", tag = "pipelines", responses((status = 200, body = Coupling)))]
pub async fn uncouple(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(coupling): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().begin_side_write().await?;
    let k = find_coupling(&mut c, &coupling).await?;
    let a = find_app(&mut c, &k.app_id).await?;
    caller.require_app(&a)?;
    let p = find_pipeline(&mut c, &k.pipeline_id).await?;
    sqlx::query("DELETE FROM pipeline_couplings WHERE id = $1")
        .bind(&k.id)
        .execute(&mut *c)
        .await?;
    c.commit().await?;
    Ok(json(StatusCode::OK, coupling_json(&k, &p, &a)))
}

/// Every check blocking `release`: the pipeline's required checks that are not `success`
/// (`ci/tests is pending`, `lint is missing`), and when `socs`, any posted check not passing
/// or no check at all. Empty: the release may go on.
pub async fn blocking_checks(
    c: &mut AnyConnection,
    required: &[String],
    release: &ReleaseRow,
    socs: bool,
) -> ApiResult<Vec<String>> {
    let statuses: Vec<StatusRow> =
        sqlx::query_as("SELECT * FROM release_statuses WHERE release_id = $1 ORDER BY context")
            .bind(&release.id)
            .fetch_all(&mut *c)
            .await?;
    let by_context: BTreeMap<&str, &str> = statuses
        .iter()
        .map(|s| (s.context.as_str(), s.state.as_str()))
        .collect();
    let mut blocking = Vec::new();
    for r in required {
        match by_context.get(r.as_str()) {
            Some(&"success") => {}
            Some(state) => blocking.push(format!("{r} is {state}")),
            None => blocking.push(format!("{r} is missing")),
        }
    }
    if socs {
        for s in &statuses {
            if s.state != "success" && !required.contains(&s.context) {
                blocking.push(format!("{} is {}", s.context, s.state));
            }
        }
        if statuses.is_empty() && required.is_empty() {
            blocking.push("socs: at least one passing status check is required".into());
        }
    }
    Ok(blocking)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePromotion {
    pub pipeline: String,
    /// The source app (`{app}-{space}`).
    pub source: String,
    /// The release to promote (id, `vN` or N); the source's current release by default.
    #[serde(default)]
    pub release: Option<String>,
    /// The target stage; the next stage after the source's that has apps by default.
    #[serde(default)]
    pub to: Option<String>,
}

/// Promote a release's artifact to every app of the next stage: 409 naming the checks that block it; all targets or none
#[utoipa::path(post, path = "/pipeline-promotions", tag = "pipelines", request_body = CreatePromotion, responses((status = 201, body = Promotion)))]
pub async fn promote(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreatePromotion>,
) -> ApiResult<Response> {
    let mut c = cp.store().begin_side_write().await?;
    let p = find_pipeline(&mut c, &body.pipeline).await?;
    let src = find_app(&mut c, &body.source).await?;
    caller.require_app(&src)?;
    let couplings = couplings_of(&mut c, &p.id).await?;
    let from = couplings
        .iter()
        .find(|k| k.app_id == src.id)
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "The app {} is not in the pipeline {}.",
                src.key(),
                p.name
            ))
        })?
        .stage
        .clone();
    let from_i = stage_index(&from)?;
    let to = match &body.to {
        Some(t) => {
            if stage_index(t)? <= from_i {
                return Err(ApiError::invalid(
                    "to",
                    format!("{t} does not come after {from}"),
                ));
            }
            t.clone()
        }
        None => STAGES[from_i + 1..]
            .iter()
            .find(|s| couplings.iter().any(|k| k.stage == **s))
            .map(|s| (*s).to_owned())
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "No app of the pipeline {} is in a stage after {from}.",
                    p.name
                ))
            })?,
    };
    let mut targets = Vec::new();
    for k in couplings.iter().filter(|k| k.stage == to) {
        let a = find_app(&mut c, &k.app_id).await?;
        caller.require_app(&a)?;
        targets.push(a);
    }
    if targets.is_empty() {
        return Err(ApiError::Conflict(format!(
            "The stage {to} of the pipeline {} has no apps.",
            p.name
        )));
    }
    let release = match &body.release {
        Some(r) => crate::store::find_release(&mut c, &src.id, r).await?,
        None => current_release(&mut c, &src.id)
            .await?
            .ok_or_else(|| ApiError::Conflict(format!("{} has no release.", src.key())))?,
    };
    if release.artifact.is_none() {
        return Err(ApiError::Conflict(format!(
            "v{} of {} has no build to promote.",
            release.version,
            src.key()
        )));
    }
    let socs = src.is_socs() || targets.iter().any(AppRow::is_socs);
    let blocking = blocking_checks(&mut c, &p.required_checks(), &release, socs).await?;
    if !blocking.is_empty() {
        cp.metrics()
            .promotions
            .with_label_values(&["refused"])
            .inc();
        return Err(ApiError::Conflict(format!(
            "Promotion of v{} blocked by status checks: {}.",
            release.version,
            blocking.join(", ")
        )));
    }
    let now = now_us();
    let row = PromotionRow {
        id: new_id(),
        pipeline_id: p.id.clone(),
        source_app_id: src.id.clone(),
        source_release_id: release.id.clone(),
        source_version: release.version,
        from_stage: from,
        to_stage: to,
        targets: serde_json::to_string(&targets.iter().map(|a| &a.id).collect::<Vec<_>>())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        state: "pending".into(),
        results: "[]".into(),
        error: None,
        user_email: caller.email.clone(),
        token_id: Some(caller.token_id.clone()),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO promotions (id, pipeline_id, source_app_id, source_release_id, source_version, from_stage, to_stage, targets, state, results, error, user_email, token_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)")
        .bind(&row.id)
        .bind(&row.pipeline_id)
        .bind(&row.source_app_id)
        .bind(&row.source_release_id)
        .bind(row.source_version)
        .bind(&row.from_stage)
        .bind(&row.to_stage)
        .bind(&row.targets)
        .bind(&row.state)
        .bind(&row.results)
        .bind(&row.error)
        .bind(&row.user_email)
        .bind(&row.token_id)
        .bind(now)
        .execute(&mut *c)
        .await?;
    c.commit().await?;
    tracing::info!(promotion = %row.id, pipeline = %p.name, source = %src.key(),
        version = release.version, to = %row.to_stage, targets = targets.len(), "promotion recorded");
    let done = run(&cp, &row.id).await?;
    let status = if done.state == "succeeded" {
        StatusCode::CREATED
    } else {
        return Err(ApiError::Conflict(format!(
            "Promotion failed; no target changed: {}",
            done.error.unwrap_or_default()
        )));
    };
    Ok(json(status, promotion_json(&done, &p.name, &src.key())))
}

async fn find_promotion(c: &mut AnyConnection, id: &str) -> ApiResult<PromotionRow> {
    sqlx::query_as("SELECT * FROM promotions WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| ApiError::not_found("promotion", id))
}

/// Why running a promotion stopped without finishing it.
enum Stop {
    /// It failed: nothing changed; it is marked `failed` with this reason.
    Failed(ApiError),
    /// The process "died" half-way (an injected fault): it stays `pending`.
    Interrupted,
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Stop {
        Stop::Failed(e.into())
    }
}

/// Run a `pending` promotion to its end: every target's release in one write, or none.
/// Returns the promotion as stored afterwards (`succeeded` or `failed`).
pub async fn run(cp: &ControlPlane, id: &str) -> ApiResult<PromotionRow> {
    match attempt(cp, id).await {
        Ok(()) => cp
            .metrics()
            .promotions
            .with_label_values(&["succeeded"])
            .inc(),
        Err(Stop::Interrupted) => {
            return Err(ApiError::Unavailable(
                "The promotion was interrupted; it resumes when the control plane restarts.".into(),
            ));
        }
        Err(Stop::Failed(e)) => {
            let reason = match &e {
                ApiError::Store(_) | ApiError::Internal(_) => {
                    tracing::error!(promotion = %id, error = %e, "promotion failed");
                    "the store failed; try again".to_owned()
                }
                other => other.to_string(),
            };
            sqlx::query("UPDATE promotions SET state = 'failed', error = $1, updated_at = $2 WHERE id = $3 AND state = 'pending'")
                .bind(&reason)
                .bind(now_us())
                .bind(id)
                .execute(cp.store().pool())
                .await?;
            cp.metrics().promotions.with_label_values(&["failed"]).inc();
            tracing::warn!(promotion = %id, reason = %reason, "promotion failed; no target changed");
        }
    }
    let mut c = cp.store().pool().acquire().await?;
    find_promotion(&mut c, id).await
}

async fn attempt(cp: &ControlPlane, id: &str) -> Result<(), Stop> {
    let mut w = cp.begin().await?;
    let p = find_promotion(&mut w.tx, id).await?;
    if p.state != "pending" {
        return Ok(());
    }
    let src: ReleaseRow = sqlx::query_as("SELECT * FROM releases WHERE id = $1")
        .bind(&p.source_release_id)
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or_else(|| ApiError::Conflict("the source release no longer exists".into()))?;
    let source_app = find_app(&mut w.tx, &p.source_app_id)
        .await
        .map(|a| a.key())
        .unwrap_or_else(|_| p.source_app_id.clone());
    let artifact = src
        .artifact
        .clone()
        .ok_or_else(|| ApiError::Conflict("the source release has no build".into()))?;
    let targets: Vec<String> = serde_json::from_str(&p.targets)
        .map_err(|e| ApiError::Internal(format!("promotion {id} targets: {e}")))?;
    let mut results = Vec::new();
    for (i, app_id) in targets.iter().enumerate() {
        match cp.fault() {
            Some(Fault::PromotionFailAt(n)) if n == i => {
                return Err(Stop::Failed(ApiError::Conflict(format!(
                    "injected failure at target {i}"
                ))));
            }
            Some(Fault::PromotionCrashAt(n)) if n == i => return Err(Stop::Interrupted),
            _ => {}
        }
        let a = match find_app(&mut w.tx, app_id).await {
            Ok(a) => a,
            Err(ApiError::NotFound(_)) => {
                return Err(Stop::Failed(ApiError::Conflict(format!(
                    "the target app {app_id} was destroyed"
                ))));
            }
            Err(e) => return Err(e.into()),
        };
        let config = current_release(&mut w.tx, &a.id)
            .await?
            .map(|r| r.config())
            .unwrap_or_default();
        let desc = format!("Promote v{} of {source_app}", src.version);
        let r = crate::canary::deploy(
            cp,
            &mut w.tx,
            &a,
            Some(artifact.clone()),
            src.build_id.clone(),
            &config,
            &desc,
            &p.user_email,
        )
        .await
        .map_err(|e| match e {
            ApiError::Conflict(m) => ApiError::Conflict(format!("{}: {m}", a.key())),
            other => other,
        })?;
        results.push(TargetResult {
            app: a.key(),
            release: r.id.clone(),
            version: r.version,
            status: r.status.clone(),
        });
    }
    let results_text =
        serde_json::to_string(&results).map_err(|e| ApiError::Internal(e.to_string()))?;
    sqlx::query(
        "UPDATE promotions SET state = 'succeeded', results = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(&results_text)
    .bind(now_us())
    .bind(id)
    .execute(&mut *w.tx)
    .await?;
    cp.commit(w, true).await?;
    tracing::info!(promotion = %id, targets = results.len(), "promotion succeeded");
    Ok(())
}

/// Run every promotion left `pending` (the control plane stopped half-way through it).
pub async fn resume_pending(cp: &ControlPlane) -> ApiResult<usize> {
    let pending: Vec<PromotionRow> =
        sqlx::query_as("SELECT * FROM promotions WHERE state = 'pending' ORDER BY created_at")
            .fetch_all(cp.store().pool())
            .await?;
    for p in &pending {
        tracing::info!(promotion = %p.id, "resuming a promotion interrupted half-way");
        cp.metrics()
            .promotions
            .with_label_values(&["resumed"])
            .inc();
        let done = run(cp, &p.id).await?;
        let actor = Actor {
            email: "system".into(),
            token_id: None,
        };
        let change = Change {
            action: "resume promotion".into(),
            resource: format!("/pipeline-promotions/{}", p.id),
            status: 200,
            after: json!({"state": done.state, "error": done.error,
                "results": serde_json::from_str::<Value>(&done.results).unwrap_or(Value::Null)}),
            ..Change::default()
        };
        crate::audit::record(cp, &actor, change).await?;
    }
    Ok(pending.len())
}

/// Show a promotion (pending, succeeded or failed, with each target's release)
#[utoipa::path(get, path = "/pipeline-promotions/{promotion}", tag = "pipelines", responses((status = 200, body = Promotion)))]
pub async fn promotion_info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(promotion): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let p = find_promotion(&mut c, &promotion).await?;
    let pipeline = find_pipeline(&mut c, &p.pipeline_id).await?;
    let src = match find_app(&mut c, &p.source_app_id).await {
        Ok(a) => {
            caller.require_app(&a)?;
            a.key()
        }
        Err(_) => {
            caller.require_admin()?;
            p.source_app_id.clone()
        }
    };
    Ok(json(
        StatusCode::OK,
        promotion_json(&p, &pipeline.name, &src),
    ))
}

/// List a pipeline's promotions
#[utoipa::path(get, path = "/pipelines/{pipeline}/promotions", tag = "pipelines", responses((status = 200, body = [Promotion])))]
pub async fn list_promotions(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    let p = find_pipeline(&mut c, &pipeline).await?;
    let rows: Vec<PromotionRow> = sqlx::query_as("SELECT * FROM promotions WHERE pipeline_id = $1")
        .bind(&p.id)
        .fetch_all(&mut *c)
        .await?;
    let mut items = Vec::new();
    for r in &rows {
        let src = find_app(&mut c, &r.source_app_id)
            .await
            .map(|a| a.key())
            .unwrap_or_else(|_| r.source_app_id.clone());
        items.push(promotion_json(r, &p.name, &src));
    }
    paginate(&headers, items, &["created_at", "id"])
}
