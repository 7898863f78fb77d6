//! Builds (`/apps/{app}/builds`): a source is a directory (`file:///srv/app`, the local
//! runtime runs its Procfile), an image reference (`docker://registry/repo:tag`), or a command
//! (`command:python3 -m http.server`). Nothing is compiled here: a build records the artifact
//! and, succeeded, is released at once (Heroku's auto-release).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use wharf_config::Artifact;

use super::apps::{Owner, load};
use super::releases::ReleaseRef;
use super::{Body, Id, Named, find_one, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AppRow, BuildRow, current_release, find_app, new_id, now_us};

/// A build: the artifact a source names, released at once when it succeeds.
#[derive(Debug, Serialize, ToSchema)]
pub struct Build {
    pub id: String,
    pub app: Named,
    pub status: String,
    pub source_blob: SourceBlob,
    /// The artifact: `{"slug": dir}`, `{"image": ref}` or `{"command": cmd}`.
    pub artifact: Value,
    /// The release it made (in the answer that creates it).
    pub release: Option<ReleaseRef>,
    pub slug: Id,
    pub user: Owner,
    pub buildpacks: Option<Vec<String>>,
    pub output_stream_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn build_json(a: &AppRow, b: &BuildRow, release: Option<(String, i64)>) -> Build {
    Build {
        id: b.id.clone(),
        app: Named::new(a.id.clone(), a.key()),
        status: b.status.clone(),
        source_blob: SourceBlob {
            url: b.source_url.clone(),
            version: None,
            checksum: None,
        },
        artifact: serde_json::from_str(&b.artifact).unwrap_or(Value::Null),
        release: release.map(|(id, version)| ReleaseRef {
            id: Some(id),
            version,
        }),
        slug: Id { id: b.id.clone() },
        user: Owner {
            id: b.user_email.clone(),
            email: b.user_email.clone(),
        },
        buildpacks: None,
        output_stream_url: None,
        created_at: time(b.created_at),
        updated_at: time(b.updated_at),
    }
}

/// The artifact a source URL names.
pub fn artifact_of(url: &str) -> ApiResult<Artifact> {
    let bad = || {
        ApiError::invalid(
            "source_blob.url",
            "file:///absolute/dir, docker://image:tag or command:CMD",
        )
    };
    if let Some(img) = url.strip_prefix("docker://") {
        let last = img.rsplit('/').next().unwrap_or("");
        if img.is_empty()
            || !(last.contains(':') || img.contains('@'))
            || img.contains(char::is_whitespace)
        {
            return Err(ApiError::invalid(
                "source_blob.url",
                "an image reference needs a tag (repo:tag) or digest",
            ));
        }
        return Ok(Artifact::Image(img.to_owned()));
    }
    if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') || dir.contains('\0') {
            return Err(bad());
        }
        return Ok(Artifact::Slug(dir.to_owned()));
    }
    if let Some(cmd) = url.strip_prefix("command:") {
        if cmd.trim().is_empty() || cmd.contains('\0') {
            return Err(bad());
        }
        return Ok(Artifact::Command(cmd.to_owned()));
    }
    Err(bad())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SourceBlob {
    pub url: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub checksum: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateBuild {
    pub source_blob: SourceBlob,
}

/// Build from a source (file://, docker://, command:) and release it
#[utoipa::path(post, path = "/apps/{app}/builds", tag = "builds", request_body = CreateBuild, responses((status = 201, body = Build)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<CreateBuild>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    let artifact = artifact_of(&body.source_blob.url)?;
    let artifact_text =
        serde_json::to_string(&artifact).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let now = now_us();
    let b = BuildRow {
        id: new_id(),
        app_id: a.id.clone(),
        source_url: body.source_blob.url.clone(),
        artifact: artifact_text.clone(),
        status: "succeeded".into(),
        user_email: caller.email.clone(),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO builds (id, app_id, source_url, artifact, status, user_email, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
        .bind(&b.id)
        .bind(&b.app_id)
        .bind(&b.source_url)
        .bind(&b.artifact)
        .bind(&b.status)
        .bind(&b.user_email)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    let config = current_release(&mut w.tx, &a.id)
        .await?
        .map(|r| r.config())
        .unwrap_or_default();
    let r = super::releases::release_build(
        &cp,
        &mut w.tx,
        &a,
        Some(artifact_text),
        Some(b.id.clone()),
        &config,
        &format!("Deploy {}", &b.id[..8]),
        &caller.email,
    )
    .await?;
    cp.commit(w, true).await?;
    tracing::info!(app = %a.key(), version = r.version, "built and released");
    Ok(json(
        StatusCode::CREATED,
        build_json(&a, &b, Some((r.id, r.version))),
    ))
}

/// List builds
#[utoipa::path(get, path = "/apps/{app}/builds", tag = "builds", responses((status = 200, body = [Build])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let rows: Vec<BuildRow> = sqlx::query_as("SELECT * FROM builds WHERE app_id = $1")
        .bind(&a.id)
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(|b| build_json(&a, b, None)).collect(),
        &["created_at", "id"],
    )
}

/// Show a build
#[utoipa::path(get, path = "/apps/{app}/builds/{build}", tag = "builds", responses((status = 200, body = Build)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, build)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let b: BuildRow = find_one(
        &cp,
        "SELECT * FROM builds WHERE app_id = $1 AND id = $2",
        &[&a.id, &build],
        "build",
        &build,
    )
    .await?;
    Ok(json(StatusCode::OK, build_json(&a, &b, None)))
}
