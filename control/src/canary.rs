//! Canary releases. With canary enabled on an app (`/apps/{app}/canary-settings`), a release
//! with a new artifact does not replace the app at once: it is stored with status `canary`,
//! runs its own web dynos (the runtime sees them as the app `{app}-{space}--canary`; names
//! never hold `--`, so the key is free) and takes `weight` percent of the traffic through the
//! router's split. It ends one of three ways:
//!
//! - aborted: the router's [`RouterEvent::CanaryAborted`] (its z-test found the canary's 5xx
//!   rate worse), a status check on the release going `failure`/`error`, or `canary:abort` —
//!   the release is marked `aborted` with the reason and the per-side figures, and the canary
//!   dynos go;
//! - promoted: once `promote_after` has passed (the healthy period) and the canary side served
//!   at least `min_requests`, or `canary:promote` — the release becomes current, the runtime
//!   rolls the app to it, and the canary dynos go.
//!
//! The timer is `promote_after` in the store, checked by a ticker: it resumes after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{AnyConnection, FromRow};
use utoipa::ToSchema;
use wharf_config::{RouterEvent, SideFigures};

use crate::ControlPlane;
use crate::api::apps::load;
use crate::api::releases::ReleaseRef;
use crate::api::releases::append_release;
use crate::api::{Body, Named, json, time};
use crate::audit::{Actor, Change};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, ReleaseRow, current_release, find_app, new_id, now_us};

/// The runtime key of an app's canary dynos.
pub fn runtime_key(app_key: &str) -> String {
    format!("{app_key}--canary")
}

/// The app a runtime key belongs to (`api-prod--canary` → `api-prod`).
pub fn owner_key(runtime_key: &str) -> &str {
    runtime_key.strip_suffix("--canary").unwrap_or(runtime_key)
}

/// Where the control plane reads the router's per-side figures (`[stable, canary]`, and whether
/// the router aborted the canary). `wharf up` gives it the router's handle.
pub trait CanaryFigures: Send + Sync {
    fn figures(&self, app: &str) -> Option<([SideFigures; 2], bool)>;
}

#[derive(Debug, Clone, FromRow)]
pub struct SettingsRow {
    pub app_id: String,
    pub enabled: i64,
    pub weight: i64,
    pub quantity: i64,
    pub period_secs: i64,
    pub min_requests: i64,
    pub sticky: i64,
    pub updated_at: i64,
}

impl SettingsRow {
    fn defaults(app_id: &str) -> SettingsRow {
        SettingsRow {
            app_id: app_id.to_owned(),
            enabled: 0,
            weight: 10,
            quantity: 1,
            period_secs: 600,
            min_requests: 100,
            sticky: 0,
            updated_at: 0,
        }
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct CanaryRow {
    pub id: String,
    pub app_id: String,
    pub release_id: String,
    pub stable_version: i64,
    pub canary_version: i64,
    pub weight: i64,
    pub quantity: i64,
    pub min_requests: i64,
    pub sticky: i64,
    pub state: String,
    pub started_at: i64,
    pub promote_after: i64,
    pub finished_at: Option<i64>,
    pub reason: Option<String>,
    pub figures: Option<String>,
}

async fn settings_of(c: &mut AnyConnection, app_id: &str) -> ApiResult<SettingsRow> {
    let row: Option<SettingsRow> =
        sqlx::query_as("SELECT * FROM canary_settings WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(&mut *c)
            .await?;
    Ok(row.unwrap_or_else(|| SettingsRow::defaults(app_id)))
}

/// The app's running canary, if any.
pub async fn running_of(c: &mut AnyConnection, app_id: &str) -> ApiResult<Option<CanaryRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM canaries WHERE app_id = $1 AND state = 'running'")
            .bind(app_id)
            .fetch_optional(&mut *c)
            .await?,
    )
}

/// Every running canary (the snapshot and the desired state include them).
pub async fn running(c: &mut AnyConnection) -> ApiResult<Vec<CanaryRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM canaries WHERE state = 'running' ORDER BY app_id")
            .fetch_all(&mut *c)
            .await?,
    )
}

/// 409 while the app runs a canary: a release made now would be neither side.
pub async fn ensure_none_running(c: &mut AnyConnection, a: &AppRow) -> ApiResult<()> {
    if let Some(k) = running_of(c, &a.id).await? {
        return Err(ApiError::Conflict(format!(
            "A canary (v{}) is running on {}: promote or abort it first.",
            k.canary_version,
            a.key()
        )));
    }
    Ok(())
}

/// Release an artifact to an app: at once, or as a canary when the app has canary enabled and
/// already runs another artifact. Refused while a canary runs.
#[allow(clippy::too_many_arguments)]
pub async fn deploy(
    cp: &ControlPlane,
    c: &mut AnyConnection,
    a: &AppRow,
    artifact: Option<String>,
    build_id: Option<String>,
    config: &BTreeMap<String, String>,
    description: &str,
    email: &str,
) -> ApiResult<ReleaseRow> {
    ensure_none_running(c, a).await?;
    let settings = settings_of(c, &a.id).await?;
    let current = current_release(c, &a.id).await?;
    let stable = current
        .as_ref()
        .filter(|r| r.artifact.is_some() && r.artifact != artifact);
    let Some(stable) = stable.filter(|_| settings.enabled != 0 && artifact.is_some()) else {
        return append_release(c, &a.id, artifact, build_id, config, description, email).await;
    };
    let stable_version = stable.version;
    let mut r = append_release(
        c,
        &a.id,
        artifact,
        build_id,
        config,
        &format!("{description} (canary)"),
        email,
    )
    .await?;
    r.status = "canary".into();
    sqlx::query("UPDATE releases SET status = 'canary' WHERE id = $1")
        .bind(&r.id)
        .execute(&mut *c)
        .await?;
    let now = now_us();
    sqlx::query("INSERT INTO canaries (id, app_id, release_id, stable_version, canary_version, weight, quantity, min_requests, sticky, state, started_at, promote_after, finished_at, reason, figures) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running', $10, $11, NULL, NULL, NULL)")
        .bind(new_id())
        .bind(&a.id)
        .bind(&r.id)
        .bind(stable_version)
        .bind(r.version)
        .bind(settings.weight)
        .bind(settings.quantity)
        .bind(settings.min_requests)
        .bind(settings.sticky)
        .bind(now)
        .bind(now + settings.period_secs * 1_000_000)
        .execute(&mut *c)
        .await?;
    cp.metrics().canaries.with_label_values(&["started"]).inc();
    tracing::info!(app = %a.key(), canary = r.version, stable = stable_version,
        weight = settings.weight, "canary started");
    Ok(r)
}

fn figures_json(figures: Option<([SideFigures; 2], bool)>, z: Option<f64>) -> Value {
    match figures {
        Some(([stable, canary], _)) => json!({"stable": stable, "canary": canary, "z": z}),
        None => Value::Null,
    }
}

/// How a canary ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Promote,
    Abort,
}

/// End the app's running canary (no-op when `canary_version` is given and differs). Returns
/// the canary as ended, or `None` when none was running.
pub async fn finish(
    cp: &ControlPlane,
    a: &AppRow,
    canary_version: Option<i64>,
    end: End,
    reason: &str,
    figures: Value,
) -> ApiResult<Option<CanaryRow>> {
    let mut w = cp.begin().await?;
    let Some(mut k) = running_of(&mut w.tx, &a.id).await? else {
        return Ok(None);
    };
    if canary_version.is_some_and(|v| v != k.canary_version) {
        return Ok(None);
    }
    let now = now_us();
    let (state, release_status) = match end {
        End::Promote => ("promoted", "succeeded"),
        End::Abort => ("aborted", "aborted"),
    };
    let outcome = json!({"state": state, "reason": reason, "figures": figures});
    k.state = state.into();
    k.finished_at = Some(now);
    k.reason = Some(reason.to_owned());
    k.figures = (!figures.is_null()).then(|| figures.to_string());
    sqlx::query(
        "UPDATE canaries SET state = $1, finished_at = $2, reason = $3, figures = $4 WHERE id = $5",
    )
    .bind(&k.state)
    .bind(now)
    .bind(&k.reason)
    .bind(&k.figures)
    .bind(&k.id)
    .execute(&mut *w.tx)
    .await?;
    sqlx::query("UPDATE releases SET status = $1, outcome = $2, updated_at = $3 WHERE id = $4")
        .bind(release_status)
        .bind(outcome.to_string())
        .bind(now)
        .bind(&k.release_id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, true).await?;
    cp.metrics().canaries.with_label_values(&[state]).inc();
    tracing::info!(app = %a.key(), canary = k.canary_version, state, reason, "canary ended");
    Ok(Some(k))
}

/// End a canary on the control plane's own account, and audit it.
async fn finish_as_system(
    cp: &ControlPlane,
    a: &AppRow,
    version: Option<i64>,
    end: End,
    reason: &str,
    figures: Value,
) -> ApiResult<()> {
    if let Some(k) = finish(cp, a, version, end, reason, figures).await? {
        let action = match end {
            End::Promote => "canary promote",
            End::Abort => "canary abort",
        };
        crate::audit::record(
            cp,
            &Actor::system(),
            Change {
                action: action.into(),
                resource: format!("/apps/{}/canary", a.key()),
                app: Some(a.key()),
                space: Some(a.space_name.clone()),
                status: 200,
                before: Value::Null,
                after: serde_json::to_value(canary_json(&k)).unwrap_or_default(),
            },
        )
        .await?;
    }
    Ok(())
}

/// The router's abort event: abort that canary with the router's reason and figures.
pub async fn on_router_event(cp: &ControlPlane, e: RouterEvent) -> ApiResult<()> {
    match e {
        RouterEvent::CanaryAborted {
            app,
            canary_release,
            stable,
            canary,
            z,
            reason,
        } => {
            let mut c = cp.store().pool().acquire().await?;
            let a = find_app(&mut c, &app).await?;
            drop(c);
            let figures = figures_json(Some(([stable, canary], true)), Some(z));
            finish_as_system(
                cp,
                &a,
                Some(i64::from(canary_release)),
                End::Abort,
                &format!("router: {reason}"),
                figures,
            )
            .await
        }
    }
}

/// A status check on a canary release went `failure` or `error`: abort it.
pub async fn on_failed_check(
    cp: &ControlPlane,
    a: &AppRow,
    version: i64,
    context: &str,
    state: &str,
) -> ApiResult<()> {
    let figures = figures_json(cp.canary_figures(&a.key()), None);
    finish_as_system(
        cp,
        a,
        Some(version),
        End::Abort,
        &format!("status check {context} is {state}"),
        figures,
    )
    .await
}

/// One pass of the timer: promote each running canary whose period is over and that served
/// its minimum of requests; abort one the router reports aborted (its event may have been
/// missed across a restart).
pub async fn tick(cp: &ControlPlane) -> ApiResult<()> {
    let mut c = cp.store().pool().acquire().await?;
    let list = running(&mut c).await?;
    cp.metrics().canaries_running.set(list.len() as i64);
    let now = now_us();
    for k in list {
        let a = find_app(&mut c, &k.app_id).await?;
        let figures = cp.canary_figures(&a.key());
        if let Some(([_, _], true)) = figures {
            finish_as_system(
                cp,
                &a,
                Some(k.canary_version),
                End::Abort,
                "router: the canary's error rate is significantly worse than stable's",
                figures_json(figures, None),
            )
            .await?;
            continue;
        }
        if now < k.promote_after {
            continue;
        }
        let served = figures.map(|([_, canary], _)| canary.requests).unwrap_or(0);
        if (served as i64) < k.min_requests {
            continue;
        }
        let period = (k.promote_after - k.started_at) / 1_000_000;
        finish_as_system(
            cp,
            &a,
            Some(k.canary_version),
            End::Promote,
            &format!("healthy for {period}s with {served} requests"),
            figures_json(figures, None),
        )
        .await?;
    }
    Ok(())
}

/// Follow the router's events for as long as the control plane lives.
pub fn follow_router(cp: &ControlPlane, mut events: tokio::sync::broadcast::Receiver<RouterEvent>) {
    let weak = cp.downgrade();
    tokio::spawn(async move {
        loop {
            let e = match events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "router events lagged; the canary ticker re-checks"
                    );
                    continue;
                }
                Err(_) => break,
            };
            let Some(cp) = ControlPlane::upgrade(&weak) else {
                break;
            };
            if let Err(err) = on_router_event(&cp, e).await {
                tracing::warn!(error = %err, "could not act on a router event");
            }
        }
    });
}

/// A canary: a new release on its own dynos taking a share of the traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct Canary {
    pub id: String,
    pub release: ReleaseRef,
    pub stable_release: ReleaseRef,
    /// running, promoted or aborted.
    pub state: String,
    /// Percent of the traffic.
    pub weight: i64,
    pub quantity: i64,
    pub min_requests: i64,
    pub sticky: bool,
    pub started_at: String,
    pub promote_after: String,
    pub finished_at: Option<String>,
    pub reason: Option<String>,
    /// The figures (stable and canary requests, errors, latency) it ended on.
    pub figures: Option<Value>,
    /// The running canary's figures now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_figures: Option<Value>,
}

/// An app's canary settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct CanarySettings {
    pub app: Named,
    pub enabled: bool,
    pub weight: i64,
    pub quantity: i64,
    pub period_secs: i64,
    pub min_requests: i64,
    pub sticky: bool,
}

pub(crate) fn canary_json(k: &CanaryRow) -> Canary {
    Canary {
        id: k.id.clone(),
        release: ReleaseRef {
            id: Some(k.release_id.clone()),
            version: k.canary_version,
        },
        stable_release: ReleaseRef {
            id: None,
            version: k.stable_version,
        },
        state: k.state.clone(),
        weight: k.weight,
        quantity: k.quantity,
        min_requests: k.min_requests,
        sticky: k.sticky != 0,
        started_at: time(k.started_at),
        promote_after: time(k.promote_after),
        finished_at: k.finished_at.map(time),
        reason: k.reason.clone(),
        figures: k
            .figures
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok()),
        live_figures: None,
    }
}

fn settings_json(a: &AppRow, s: &SettingsRow) -> CanarySettings {
    CanarySettings {
        app: Named::new(a.id.clone(), a.key()),
        enabled: s.enabled != 0,
        weight: s.weight,
        quantity: s.quantity,
        period_secs: s.period_secs,
        min_requests: s.min_requests,
        sticky: s.sticky != 0,
    }
}

/// Canary settings of an app
#[utoipa::path(get, path = "/apps/{app}/canary-settings", tag = "canary", responses((status = 200, body = CanarySettings)))]
pub async fn get_settings(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let mut c = cp.store().pool().acquire().await?;
    let s = settings_of(&mut c, &a.id).await?;
    Ok(json(StatusCode::OK, settings_json(&a, &s)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub period_secs: Option<i64>,
    #[serde(default)]
    pub min_requests: Option<i64>,
    #[serde(default)]
    pub sticky: Option<bool>,
}

/// Enable canaries: new artifacts start as a canary with its own dynos and a traffic weight
#[utoipa::path(put, path = "/apps/{app}/canary-settings", tag = "canary", request_body = UpdateSettings, responses((status = 200, body = CanarySettings)))]
pub async fn put_settings(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<UpdateSettings>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let range = |field: &str, v: Option<i64>, lo: i64, hi: i64| -> ApiResult<Option<i64>> {
        match v {
            Some(n) if !(lo..=hi).contains(&n) => {
                Err(ApiError::invalid(field, format!("must be {lo}–{hi}")))
            }
            other => Ok(other),
        }
    };
    let weight = range("weight", body.weight, 1, 100)?;
    let quantity = range("quantity", body.quantity, 1, 10)?;
    let period = range("period_secs", body.period_secs, 0, 7 * 86_400)?;
    let min_requests = range("min_requests", body.min_requests, 0, 1_000_000_000)?;
    let mut c = cp.store().begin_side_write().await?;
    let existed: Option<SettingsRow> =
        sqlx::query_as("SELECT * FROM canary_settings WHERE app_id = $1")
            .bind(&a.id)
            .fetch_optional(&mut *c)
            .await?;
    let mut s = existed
        .clone()
        .unwrap_or_else(|| SettingsRow::defaults(&a.id));
    if let Some(e) = body.enabled {
        s.enabled = i64::from(e);
    }
    s.weight = weight.unwrap_or(s.weight);
    s.quantity = quantity.unwrap_or(s.quantity);
    s.period_secs = period.unwrap_or(s.period_secs);
    s.min_requests = min_requests.unwrap_or(s.min_requests);
    if let Some(st) = body.sticky {
        s.sticky = i64::from(st);
    }
    s.updated_at = now_us();
    if existed.is_some() {
        sqlx::query("UPDATE canary_settings SET enabled = $1, weight = $2, quantity = $3, period_secs = $4, min_requests = $5, sticky = $6, updated_at = $7 WHERE app_id = $8")
            .bind(s.enabled)
            .bind(s.weight)
            .bind(s.quantity)
            .bind(s.period_secs)
            .bind(s.min_requests)
            .bind(s.sticky)
            .bind(s.updated_at)
            .bind(&a.id)
            .execute(&mut *c)
            .await?;
    } else {
        sqlx::query("INSERT INTO canary_settings (app_id, enabled, weight, quantity, period_secs, min_requests, sticky, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&a.id)
            .bind(s.enabled)
            .bind(s.weight)
            .bind(s.quantity)
            .bind(s.period_secs)
            .bind(s.min_requests)
            .bind(s.sticky)
            .bind(s.updated_at)
            .execute(&mut *c)
            .await?;
    }
    c.commit().await?;
    Ok(json(StatusCode::OK, settings_json(&a, &s)))
}

/// `GET /apps/{app}/canary`: the running canary, else the last one, with live figures.
#[utoipa::path(get, path = "/apps/{app}/canary", tag = "canary", responses((status = 200, body = Canary)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let k: Option<CanaryRow> =
        sqlx::query_as("SELECT * FROM canaries WHERE app_id = $1 ORDER BY started_at DESC LIMIT 1")
            .bind(&a.id)
            .fetch_optional(cp.store().pool())
            .await?;
    let k = k.ok_or_else(|| ApiError::not_found("canary of app", &a.key()))?;
    let mut v = canary_json(&k);
    if k.state == "running" {
        v.live_figures = Some(figures_json(cp.canary_figures(&a.key()), None));
    }
    Ok(json(StatusCode::OK, v))
}

#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndCanary {
    #[serde(default)]
    pub reason: Option<String>,
}

async fn end_by_hand(
    cp: &ControlPlane,
    caller: &Caller,
    app: &str,
    end: End,
    reason: Option<String>,
) -> ApiResult<Response> {
    let a = load(cp, caller, app).await?;
    let figures = figures_json(cp.canary_figures(&a.key()), None);
    let verb = match end {
        End::Promote => "promoted",
        End::Abort => "aborted",
    };
    let reason = reason.unwrap_or_else(|| format!("{verb} by {}", caller.email));
    match finish(cp, &a, None, end, &reason, figures).await? {
        Some(k) => Ok(json(StatusCode::OK, canary_json(&k))),
        None => Err(ApiError::Conflict(format!(
            "No canary is running on {}.",
            a.key()
        ))),
    }
}

/// Promote the running canary now
#[utoipa::path(post, path = "/apps/{app}/canary/promote", tag = "canary", request_body = EndCanary, responses((status = 200, body = Canary)))]
pub async fn promote(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<EndCanary>,
) -> ApiResult<Response> {
    end_by_hand(&cp, &caller, &app, End::Promote, body.reason).await
}

/// Abort the running canary now
#[utoipa::path(post, path = "/apps/{app}/canary/abort", tag = "canary", request_body = EndCanary, responses((status = 200, body = Canary)))]
pub async fn abort(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<EndCanary>,
) -> ApiResult<Response> {
    end_by_hand(&cp, &caller, &app, End::Abort, body.reason).await
}

/// A figures source that never has any (no router in this process).
#[derive(Debug, Default)]
pub struct NoFigures;

impl CanaryFigures for NoFigures {
    fn figures(&self, _app: &str) -> Option<([SideFigures; 2], bool)> {
        None
    }
}

/// Convenience for tests and tooling: figures from a closure.
pub struct FnFigures<F>(pub F);

impl<F> std::fmt::Debug for FnFigures<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnFigures")
    }
}

impl<F: Fn(&str) -> Option<([SideFigures; 2], bool)> + Send + Sync> CanaryFigures for FnFigures<F> {
    fn figures(&self, app: &str) -> Option<([SideFigures; 2], bool)> {
        (self.0)(app)
    }
}

/// Shared handle type.
pub type FiguresSource = Arc<dyn CanaryFigures>;
