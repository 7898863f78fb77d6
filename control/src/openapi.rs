//! The OpenAPI 3 document served at `/openapi.json`, built from [`OPERATIONS`]: one entry per
//! route mounted by [`crate::api::router`] (a test checks that every entry answers with
//! something other than "no such endpoint"). Errors are documented once, as the `Error`
//! schema every 4xx/5xx uses.

use axum::Json;
use serde_json::{Map, Value, json};

/// One API operation: method, path, summary, success status, request body fields (`name:type`,
/// `!` = required), whether it lists (Range/Next-Range, 206), and whether it needs a token.
#[derive(Debug)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub status: u16,
    pub body: &'static [&'static str],
    pub list: bool,
    pub auth: bool,
    pub content: &'static str,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    status: u16,
    body: &'static [&'static str],
    list: bool,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        status,
        body,
        list,
        auth: true,
        content: "application/json",
    }
}

/// Every documented operation.
pub const OPERATIONS: &[Operation] = &[
    op("get", "/account", "The token's account", 200, &[], false),
    op("get", "/tokens", "List tokens (admin)", 200, &[], true),
    op(
        "post",
        "/tokens",
        "Create a token (admin); the secret is returned once",
        201,
        &["description:string", "email:string", "scope:object"],
        false,
    ),
    op(
        "get",
        "/tokens/{token}",
        "Show a token (admin)",
        200,
        &[],
        false,
    ),
    op(
        "delete",
        "/tokens/{token}",
        "Revoke a token (admin)",
        200,
        &[],
        false,
    ),
    op("get", "/spaces", "List spaces", 200, &[], true),
    op(
        "post",
        "/spaces",
        "Create a space (admin)",
        201,
        &[
            "name:string!",
            "description:string",
            "compliance:array",
            "stack:string",
        ],
        false,
    ),
    op("get", "/spaces/{space}", "Show a space", 200, &[], false),
    op(
        "delete",
        "/spaces/{space}",
        "Delete an empty space (admin)",
        200,
        &[],
        false,
    ),
    op("get", "/apps", "List apps", 200, &[], true),
    op(
        "post",
        "/apps",
        "Create an app",
        201,
        &["name:string", "space:string", "description:string"],
        false,
    ),
    op(
        "get",
        "/users/{user}/apps",
        "List apps (Heroku clients)",
        200,
        &[],
        true,
    ),
    op("get", "/apps/{app}", "Show an app", 200, &[], false),
    op(
        "patch",
        "/apps/{app}",
        "Update an app",
        200,
        &["description:string", "name:string", "maintenance:boolean"],
        false,
    ),
    op("delete", "/apps/{app}", "Destroy an app", 200, &[], false),
    op(
        "get",
        "/apps/{app}/config-vars",
        "Config vars",
        200,
        &[],
        false,
    ),
    op(
        "patch",
        "/apps/{app}/config-vars",
        "Set (string) or delete (null) config vars; makes a release",
        200,
        &["*"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/releases",
        "List releases",
        200,
        &[],
        true,
    ),
    op(
        "post",
        "/apps/{app}/releases",
        "Roll back (release) or deploy a build (slug)",
        201,
        &["release:string", "slug:string", "description:string"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/releases/{release}",
        "Show a release (id, N or vN)",
        200,
        &[],
        false,
    ),
    op(
        "get",
        "/apps/{app}/releases/{release}/statuses",
        "List release statuses",
        200,
        &[],
        true,
    ),
    op(
        "post",
        "/apps/{app}/releases/{release}/statuses",
        "Post a status check",
        201,
        &[
            "context:string!",
            "state:string!",
            "description:string",
            "target_url:string",
            "name:string",
            "image_url:string",
        ],
        false,
    ),
    op(
        "get",
        "/apps/{app}/formation",
        "List process types",
        200,
        &[],
        true,
    ),
    op(
        "patch",
        "/apps/{app}/formation",
        "Batch update process types",
        200,
        &["updates:array!"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/formation/{ptype}",
        "Show a process type",
        200,
        &[],
        false,
    ),
    op(
        "patch",
        "/apps/{app}/formation/{ptype}",
        "Update (or create) a process type",
        200,
        &[
            "quantity:any",
            "size:string",
            "command:string",
            "port:integer",
            "healthcheck:string",
            "type:string",
        ],
        false,
    ),
    op(
        "delete",
        "/apps/{app}/formation/{ptype}",
        "Remove a process type",
        200,
        &[],
        false,
    ),
    op("get", "/apps/{app}/dynos", "List dynos", 200, &[], true),
    op(
        "delete",
        "/apps/{app}/dynos",
        "Restart every dyno",
        202,
        &[],
        false,
    ),
    op(
        "get",
        "/apps/{app}/dynos/{dyno}",
        "Show a dyno",
        200,
        &[],
        false,
    ),
    op(
        "delete",
        "/apps/{app}/dynos/{dyno}",
        "Restart a dyno or process type",
        202,
        &[],
        false,
    ),
    op("get", "/apps/{app}/builds", "List builds", 200, &[], true),
    op(
        "post",
        "/apps/{app}/builds",
        "Build from a directory, image or command; released at once",
        201,
        &["source_blob:object!"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/builds/{build}",
        "Show a build",
        200,
        &[],
        false,
    ),
    op(
        "post",
        "/apps/{app}/build-output",
        "Add build output lines to the app's log stream",
        202,
        &["lines:array!"],
        false,
    ),
    op("get", "/apps/{app}/domains", "List domains", 200, &[], true),
    op(
        "post",
        "/apps/{app}/domains",
        "Add a custom domain",
        201,
        &["hostname:string!"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/domains/{domain}",
        "Show a domain",
        200,
        &[],
        false,
    ),
    op(
        "delete",
        "/apps/{app}/domains/{domain}",
        "Remove a domain",
        200,
        &[],
        false,
    ),
    op(
        "get",
        "/apps/{app}/log-drains",
        "List log drains",
        200,
        &[],
        true,
    ),
    op(
        "post",
        "/apps/{app}/log-drains",
        "Add a log drain",
        201,
        &["url:string!"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/log-drains/{drain}",
        "Show a log drain",
        200,
        &[],
        false,
    ),
    op(
        "delete",
        "/apps/{app}/log-drains/{drain}",
        "Remove a log drain",
        200,
        &[],
        false,
    ),
    op(
        "post",
        "/apps/{app}/log-sessions",
        "Create a log session (a URL with its own credential)",
        201,
        &[
            "lines:integer",
            "tail:boolean",
            "dyno:string",
            "source:string",
        ],
        false,
    ),
    Operation {
        method: "get",
        path: "/log-sessions/{session}",
        summary: "Stream a log session (Server-Sent Events; credential in ?token=)",
        status: 200,
        body: &[],
        list: false,
        auth: false,
        content: "text/event-stream",
    },
    op(
        "get",
        "/apps/{app}/routes",
        "Routes to an app",
        200,
        &[],
        true,
    ),
    op(
        "get",
        "/apps/{app}/filters",
        "Filter attachments of an app",
        200,
        &[],
        true,
    ),
    op(
        "post",
        "/apps/{app}/filters",
        "Attach a filter",
        201,
        &["filter:any!", "options:object"],
        false,
    ),
    op(
        "get",
        "/apps/{app}/filters/{attachment}",
        "Show an attachment",
        200,
        &[],
        false,
    ),
    op(
        "put",
        "/apps/{app}/filters/{attachment}",
        "Update an attachment's includes/excludes",
        200,
        &["options:object"],
        false,
    ),
    op(
        "delete",
        "/apps/{app}/filters/{attachment}",
        "Detach a filter",
        200,
        &[],
        false,
    ),
    op("get", "/sites", "List sites", 200, &[], true),
    op(
        "post",
        "/sites",
        "Create a site (admin)",
        201,
        &[
            "domain:string!",
            "internal:boolean",
            "description:string",
            "region:string",
        ],
        false,
    ),
    op("get", "/sites/{site}", "Show a site", 200, &[], false),
    op(
        "patch",
        "/sites/{site}",
        "Update a site (admin)",
        200,
        &["description:string"],
        false,
    ),
    op(
        "delete",
        "/sites/{site}",
        "Delete a site and its routes (admin)",
        200,
        &[],
        false,
    ),
    op(
        "get",
        "/sites/{site}/routes",
        "Routes of a site",
        200,
        &[],
        true,
    ),
    op("get", "/routes", "List routes", 200, &[], true),
    op(
        "post",
        "/routes",
        "Create a route",
        201,
        &[
            "site:string!",
            "app:string!",
            "source_path:string!",
            "target_path:string",
        ],
        false,
    ),
    op("get", "/routes/{route}", "Show a route", 200, &[], false),
    op(
        "delete",
        "/routes/{route}",
        "Delete a route",
        200,
        &[],
        false,
    ),
    op("get", "/filters", "List filters", 200, &[], true),
    op(
        "post",
        "/filters",
        "Create a jwt or cors filter (admin)",
        201,
        &[
            "name:string!",
            "type:string!",
            "description:string",
            "options:object",
        ],
        false,
    ),
    op("get", "/filters/{filter}", "Show a filter", 200, &[], false),
    op(
        "put",
        "/filters/{filter}",
        "Update a filter (admin)",
        200,
        &["description:string", "options:object"],
        false,
    ),
    op(
        "delete",
        "/filters/{filter}",
        "Delete a filter, detaching it (admin)",
        200,
        &[],
        false,
    ),
    op(
        "get",
        "/certificates",
        "List certificates (admin)",
        200,
        &[],
        true,
    ),
    op(
        "post",
        "/certificates",
        "Add a certificate (admin)",
        201,
        &[
            "name:string!",
            "names:array",
            "certificate_chain:string!",
            "private_key:string!",
            "default:boolean",
        ],
        false,
    ),
    op(
        "get",
        "/certificates/{cert}",
        "Show a certificate (admin)",
        200,
        &[],
        false,
    ),
    op(
        "delete",
        "/certificates/{cert}",
        "Delete a certificate (admin)",
        200,
        &[],
        false,
    ),
    op("get", "/pipelines", "List pipelines", 200, &[], true),
    op(
        "post",
        "/pipelines",
        "Create a pipeline with the status checks its promotions require (admin)",
        201,
        &["name:string!", "required_checks:array"],
        false,
    ),
    op(
        "get",
        "/pipelines/{pipeline}",
        "Show a pipeline",
        200,
        &[],
        false,
    ),
    op(
        "patch",
        "/pipelines/{pipeline}",
        "Change a pipeline's required checks (admin)",
        200,
        &["required_checks:array"],
        false,
    ),
    op(
        "delete",
        "/pipelines/{pipeline}",
        "Delete a pipeline, its couplings and promotions (admin)",
        200,
        &[],
        false,
    ),
    op(
        "get",
        "/pipelines/{pipeline}/pipeline-couplings",
        "List a pipeline's apps by stage",
        200,
        &[],
        true,
    ),
    op(
        "get",
        "/pipelines/{pipeline}/promotions",
        "List a pipeline's promotions",
        200,
        &[],
        true,
    ),
    op(
        "post",
        "/pipeline-couplings",
        "Couple an app to a pipeline stage (review, development, staging, canary, production)",
        201,
        &["pipeline:string!", "app:string!", "stage:string!"],
        false,
    ),
    op(
        "get",
        "/pipeline-couplings/{coupling}",
        "Show a coupling",
        200,
        &[],
        false,
    ),
    op(
        "delete",
        "/pipeline-couplings/{coupling}",
        "Remove an app from its pipeline",
        200,
        &[],
        false,
    ),
    op(
        "post",
        "/pipeline-promotions",
        "Promote a release's artifact to every app of the next stage: 409 naming the checks that block it; all targets or none",
        201,
        &[
            "pipeline:string!",
            "source:string!",
            "release:string",
            "to:string",
        ],
        false,
    ),
    op(
        "get",
        "/pipeline-promotions/{promotion}",
        "Show a promotion (pending, succeeded or failed, with each target's release)",
        200,
        &[],
        false,
    ),
    op(
        "get",
        "/apps/{app}/canary-settings",
        "Canary settings of an app",
        200,
        &[],
        false,
    ),
    op(
        "put",
        "/apps/{app}/canary-settings",
        "Enable canaries: new artifacts start as a canary with its own dynos and a traffic weight",
        200,
        &[
            "enabled:boolean",
            "weight:integer",
            "quantity:integer",
            "period_secs:integer",
            "min_requests:integer",
            "sticky:boolean",
        ],
        false,
    ),
    op(
        "get",
        "/apps/{app}/canary",
        "The running (else the last) canary, with its figures",
        200,
        &[],
        false,
    ),
    op(
        "post",
        "/apps/{app}/canary/promote",
        "Promote the running canary now",
        200,
        &["reason:string"],
        false,
    ),
    op(
        "post",
        "/apps/{app}/canary/abort",
        "Abort the running canary now",
        200,
        &["reason:string"],
        false,
    ),
    op(
        "get",
        "/audit",
        "The audit trail (?app=&space=&action=&actor=); secrets redacted",
        200,
        &[],
        true,
    ),
    Operation {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics of the control plane",
        status: 200,
        body: &[],
        list: false,
        auth: false,
        content: "text/plain",
    },
    op(
        "get",
        "/v1/snapshot",
        "The current snapshot; long-polls with ?after=REVISION&wait=SECS (admin)",
        200,
        &[],
        false,
    ),
];

fn type_schema(t: &str) -> Value {
    match t {
        "any" => json!({}),
        "array" => json!({"type": "array"}),
        "object" => json!({"type": "object"}),
        other => json!({"type": other}),
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in OPERATIONS {
        let mut params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}))
            .collect();
        if o.list {
            params.push(json!({"name": "Range", "in": "header", "required": false, "schema": {"type": "string"}}));
        }
        if o.path == "/log-sessions/{session}" {
            params.push(json!({"name": "token", "in": "query", "required": true, "schema": {"type": "string"}}));
        }
        if o.path == "/audit" {
            for name in ["app", "space", "action", "actor"] {
                params.push(json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}));
            }
        }
        if o.path == "/v1/snapshot" {
            params.push(json!({"name": "after", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}}));
            params.push(json!({"name": "wait", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}}));
        }
        let success = if o.content == "application/json" {
            json!({"description": o.summary, "content": {"application/json": {"schema": if o.list { json!({"type": "array"}) } else { json!({}) }}}})
        } else {
            json!({"description": o.summary, "content": {o.content: {"schema": {"type": "string"}}}})
        };
        let mut responses = Map::new();
        responses.insert(o.status.to_string(), success.clone());
        if o.list {
            responses.insert("206".into(), json!({"description": "More remain: follow Next-Range", "content": {"application/json": {"schema": {"type": "array"}}}}));
        }
        if o.path == "/v1/snapshot" {
            responses.insert(
                "204".into(),
                json!({"description": "No newer snapshot within the wait"}),
            );
        }
        responses.insert("default".into(), json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        let mut operation = json!({
            "summary": o.summary,
            "operationId": format!("{}{}", o.method, o.path.replace(['/', '{', '}', '-', '~'], "_")),
            "parameters": params,
            "responses": responses,
        });
        if !o.auth {
            operation["security"] = json!([]);
        }
        if !o.body.is_empty() {
            let schema = if o.body == ["*"] {
                json!({"type": "object", "additionalProperties": {"type": ["string", "null"]}})
            } else {
                let mut props = Map::new();
                let mut required = Vec::new();
                for f in o.body {
                    let (name, t) = f.split_once(':').unwrap_or((f, "string"));
                    let (t, req) = match t.strip_suffix('!') {
                        Some(t) => (t, true),
                        None => (t, false),
                    };
                    props.insert(name.to_owned(), type_schema(t));
                    if req {
                        required.push(name);
                    }
                }
                json!({"type": "object", "properties": props, "required": required})
            };
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        paths
            .entry(o.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(o.method.to_owned(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Wharf platform API",
            "version": "3",
            "description": "Heroku Platform API v3 shapes; Akkeris spaces, sites, routes and filters. Lists page with Range/Next-Range.",
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["id", "message"],
                    "properties": {"id": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}
