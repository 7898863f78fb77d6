//! The one place errors become responses: `{"id", "message"}` JSON with the right status.
//! Bad input is always a 4xx; only store and runtime failures are 5xx, with detail in the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wharf_config::Problems;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, bad Range header).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's scope does not cover the resource.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource exists, or the change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 422: a field is invalid.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// 422: the desired state this change would produce is invalid.
    #[error("{0}")]
    Problems(Problems),
    /// 503: the work stopped half-way and resumes later (a promotion after a restart).
    #[error("{0}")]
    Unavailable(String),
    /// 503: the store cannot be reached.
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// 500: something that should not happen.
    #[error("internal: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(what: &str, name: &str) -> Self {
        ApiError::NotFound(format!("Couldn't find that {what}: {name:?}."))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid { .. } | ApiError::Problems(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Store(e) if is_conflict(e) => StatusCode::CONFLICT,
            ApiError::Store(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn id(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Invalid { .. } | ApiError::Problems(_) => "invalid_params",
            ApiError::Store(e) if is_conflict(e) => "conflict",
            ApiError::Store(_) | ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

/// A unique-constraint violation that slipped past a handler's own check (a race).
fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The body of every 4xx/5xx answer (the `Error` schema of the OpenAPI document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A stable identifier: `not_found`, `invalid_params`, `conflict`, …
    pub id: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The offending field of an `invalid_params` answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Each problem of an invalid desired state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<ProblemBody>>,
}

/// One problem of an invalid desired state: where and what.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    pub path: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(id: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            id: id.to_owned(),
            message: message.into(),
            field: None,
            problems: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let id = self.id();
        let body = match &self {
            ApiError::Invalid { field, message } => ErrorBody {
                field: Some(field.clone()),
                ..ErrorBody::new(id, format!("{field}: {message}"))
            },
            ApiError::Problems(p) => ErrorBody {
                problems: Some(
                    p.iter()
                        .map(|p| ProblemBody {
                            path: p.path.clone(),
                            message: p.message.clone(),
                        })
                        .collect(),
                ),
                ..ErrorBody::new(
                    id,
                    p.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            },
            ApiError::Store(e) if is_conflict(e) => {
                ErrorBody::new(id, "The resource already exists.")
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store failed");
                ErrorBody::new(id, "The store is unavailable; try again.")
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ErrorBody::new(id, "Internal error.")
            }
            other => ErrorBody::new(id, other.to_string()),
        };
        (status, Json(body)).into_response()
    }
}
