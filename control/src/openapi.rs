//! The OpenAPI 3 document served at `/openapi.json`. Placeholder until generated.

use axum::Json;
use serde_json::{Value, json};

pub async fn serve() -> Json<Value> {
    Json(json!({"openapi": "3.0.3", "info": {"title": "Wharf", "version": "1"}, "paths": {}}))
}
