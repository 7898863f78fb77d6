//! The OpenAPI 3 document served at `/openapi.json`, generated from the code: each handler
//! carries its `#[utoipa::path]` (method, path, request and response bodies), each body its
//! `#[derive(ToSchema)]`, and [`crate::api::routes`] mounts them with `utoipa_axum::routes!`,
//! which documents what it mounts. [`finish`] then adds what every operation shares: the bearer
//! scheme, the path parameters, `Range`/`Next-Range` and `206` on lists (`GET`s whose `200` is
//! an array), the `Error` schema on every other status, and one operation id per operation.

use std::sync::Arc;

use axum::{Extension, Json};
use serde_json::{Map, Value, json};
use utoipa::{PartialSchema, ToSchema};

use crate::error::ErrorBody;

/// The document as served: the generated paths and schemas, [`finish`]ed.
pub fn document() -> Value {
    let (_, doc) = crate::api::routes(None).split_for_parts();
    finish(doc)
}

/// What every operation shares, added to the document `utoipa` generated.
pub fn finish(mut doc: utoipa::openapi::OpenApi) -> Value {
    let mut errors = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
    <ErrorBody as ToSchema>::schemas(&mut errors);
    doc.components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(errors);
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    doc["info"] = json!({
        "title": "Wharf platform API",
        "version": "3",
        "description": "Heroku Platform API v3 shapes (clients send `Accept: application/vnd.heroku+json; version=3`; \
            every answer is JSON unless an operation says otherwise); Akkeris spaces, sites, routes and filters. \
            Lists page with Range/Next-Range.",
    });
    doc["security"] = json!([{"bearer": []}]);
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            finish_operation(path, method, op);
        }
    }
    doc
}

fn finish_operation(path: &str, method: &str, op: &mut Value) {
    op["operationId"] = Value::String(format!(
        "{method}{}",
        path.replace(['/', '{', '}', '-', '~', '.'], "_")
    ));
    let mut params: Vec<Value> = op["parameters"].as_array().cloned().unwrap_or_default();
    for name in path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    {
        if !params
            .iter()
            .any(|p| p["name"] == name && p["in"] == "path")
        {
            params.push(json!({"name": name, "in": "path", "required": true,
                "schema": {"type": "string", "minLength": 1}}));
        }
    }
    let responses = op["responses"].as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    let list = method == "get"
        && responses
            .get("200")
            .is_some_and(|ok| ok["content"]["application/json"]["schema"]["type"] == "array");
    if list {
        let mut partial = responses["200"].clone();
        partial["description"] = json!("More remain: ask again with the Next-Range header's value");
        partial["headers"] = json!({"Next-Range": {"description": "The Range of the next page", "schema": {"type": "string"}}});
        responses.insert("206".into(), partial);
        params.push(json!({"name": "Range", "in": "header", "required": false,
            "description": "`<field> [\\]]<start>..[<end>][; max=N[, order=asc|desc]]`",
            "schema": {"type": "string"}}));
    }
    responses.entry("default").or_insert_with(|| {
        json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    });
    op["parameters"] = Value::Array(params);
}

/// The document itself.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "This OpenAPI 3 document", body = Value)))]
pub async fn serve(Extension(doc): Extension<Arc<Value>>) -> Json<Value> {
    Json(Value::clone(&doc))
}

/// Every `(method, path)` the document lists, upper-case method first.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flat_map(Map::keys) {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out
}
