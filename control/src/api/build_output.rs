//! `POST /apps/{app}/build-output`: a build's output lines, as the builder prints them, into the
//! app's log stream as `app[build]` lines (Wharf's addition; Heroku streams build output on a
//! separate URL only). `wharf deploy` runs the build step and sends its lines here in batches.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wharf_config::{LogLine, Source};

use super::apps::load;
use super::{Body, json};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::now_us;

/// Lines per request, and bytes per line (Logplex's frame limit).
pub const MAX_LINES: usize = 1000;
pub const MAX_LINE_BYTES: usize = 10_240;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildOutput {
    pub lines: Vec<String>,
}

/// How many lines were taken.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
}

/// Add build output lines to the app's log stream
#[utoipa::path(post, path = "/apps/{app}/build-output", tag = "builds", request_body = BuildOutput, responses((status = 202, body = Accepted)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<BuildOutput>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    if body.lines.len() > MAX_LINES {
        return Err(ApiError::Invalid {
            field: "lines".into(),
            message: format!("at most {MAX_LINES} lines per request"),
        });
    }
    if let Some(i) = body.lines.iter().position(|l| l.len() > MAX_LINE_BYTES) {
        return Err(ApiError::Invalid {
            field: format!("lines[{i}]"),
            message: format!("a line is at most {MAX_LINE_BYTES} bytes"),
        });
    }
    let logs = cp.log_source();
    let now = now_us();
    let count = body.lines.len();
    for line in body.lines {
        logs.publish(LogLine {
            app: a.key().into(),
            space: a.space_name.as_str().into(),
            source: Source::App,
            process: "build".into(),
            timestamp_us: now,
            line,
        });
    }
    Ok(json(StatusCode::ACCEPTED, Accepted { accepted: count }))
}
