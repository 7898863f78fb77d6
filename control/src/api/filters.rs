//! Filters (`/filters`, admin writes) and their attachments to apps (`/apps/{app}/filters`).
//! Options use the router's names: jwt `jwks_uri`, `issuer`, `audiences`, `leeway_secs`,
//! `jwks_ttl_secs`, `algorithms`; cors `allow_origin`, `allow_methods`, `allow_headers`,
//! `expose_headers`, `max_age`, `allow_credentials`. Lists may be given as comma strings.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::apps::load;
use super::{Body, Named, check_name, delete_row, find_one, json, paginate, time};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    ATTACHMENT_SELECT, AppRow, AttachmentRow, FilterRow, find_app, find_filter, new_id, now_us,
};

const LIST_FIELDS: &[&str] = &[
    "audiences",
    "algorithms",
    "allow_origin",
    "allow_methods",
    "allow_headers",
    "expose_headers",
];

/// A filter the router runs before an app: `jwt` or `cors`, with its options.
#[derive(Debug, Serialize, ToSchema)]
pub struct Filter {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub filter_type: String,
    pub description: String,
    /// The options by the router's names (see the module's list).
    pub options: Value,
    pub created_at: String,
    pub updated_at: String,
}

fn filter_json(f: &FilterRow) -> Filter {
    Filter {
        id: f.id.clone(),
        name: f.name.clone(),
        filter_type: f.filter_type.clone(),
        description: f.description.clone(),
        options: serde_json::from_str(&f.options).unwrap_or(Value::Null),
        created_at: time(f.created_at),
        updated_at: time(f.updated_at),
    }
}

/// Normalise options (comma strings → lists) and check them against the config model.
fn options_of(
    ftype: &str,
    name: &str,
    options: Map<String, Value>,
) -> ApiResult<Map<String, Value>> {
    if ftype != "jwt" && ftype != "cors" {
        return Err(ApiError::invalid("type", "one of jwt, cors"));
    }
    let mut out = Map::new();
    for (k, v) in options {
        let v = match v {
            Value::String(s) if LIST_FIELDS.contains(&k.as_str()) => Value::Array(
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| Value::String(x.to_owned()))
                    .collect(),
            ),
            other => other,
        };
        out.insert(k, v);
    }
    let mut probe = out.clone();
    probe.insert("type".into(), ftype.into());
    probe.insert("name".into(), name.into());
    serde_json::from_value::<wharf_config::Filter>(Value::Object(probe))
        .map_err(|e| ApiError::invalid("options", e.to_string()))?;
    Ok(out)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateFilter {
    pub name: String,
    #[serde(rename = "type")]
    pub filter_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Map<String, Value>,
}

/// Create a filter (admin): jwt or cors
#[utoipa::path(post, path = "/filters", tag = "filters", request_body = CreateFilter, responses((status = 201, body = Filter)))]
pub async fn create(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Body(body): Body<CreateFilter>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    check_name("name", &body.name)?;
    let options = options_of(&body.filter_type, &body.name, body.options)?;
    let mut w = cp.begin().await?;
    if find_filter(&mut w.tx, &body.name).await.is_ok() {
        return Err(ApiError::Conflict(format!(
            "The filter {} already exists.",
            body.name
        )));
    }
    let now = now_us();
    let f = FilterRow {
        id: new_id(),
        name: body.name,
        filter_type: body.filter_type,
        description: body.description.unwrap_or_default(),
        options: Value::Object(options).to_string(),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO filters (id, name, type, description, options, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)")
        .bind(&f.id)
        .bind(&f.name)
        .bind(&f.filter_type)
        .bind(&f.description)
        .bind(&f.options)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, filter_json(&f)))
}

/// List filters
#[utoipa::path(get, path = "/filters", tag = "filters", responses((status = 200, body = [Filter])))]
pub async fn list(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rows: Vec<FilterRow> = sqlx::query_as("SELECT * FROM filters")
        .fetch_all(cp.store().pool())
        .await?;
    paginate(
        &headers,
        rows.iter().map(filter_json).collect(),
        &["name", "id", "created_at"],
    )
}

/// Show a filter
#[utoipa::path(get, path = "/filters/{filter}", tag = "filters", responses((status = 200, body = Filter)))]
pub async fn info(
    State(cp): State<ControlPlane>,
    _caller: Caller,
    Path(filter): Path<String>,
) -> ApiResult<Response> {
    let mut c = cp.store().pool().acquire().await?;
    Ok(json(
        StatusCode::OK,
        filter_json(&find_filter(&mut c, &filter).await?),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateFilter {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub options: Option<Map<String, Value>>,
}

/// Update a filter (admin)
#[utoipa::path(put, path = "/filters/{filter}", tag = "filters", request_body = UpdateFilter, responses((status = 200, body = Filter)))]
pub async fn update(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(filter): Path<String>,
    Body(body): Body<UpdateFilter>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut w = cp.begin().await?;
    let mut f = find_filter(&mut w.tx, &filter).await?;
    if let Some(o) = body.options {
        f.options = Value::Object(options_of(&f.filter_type, &f.name, o)?).to_string();
    }
    if let Some(d) = body.description {
        f.description = d;
    }
    f.updated_at = now_us();
    sqlx::query("UPDATE filters SET description = $1, options = $2, updated_at = $3 WHERE id = $4")
        .bind(&f.description)
        .bind(&f.options)
        .bind(f.updated_at)
        .bind(&f.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, filter_json(&f)))
}

/// Delete a filter; it is detached from every app in the same write.
#[utoipa::path(delete, path = "/filters/{filter}", tag = "filters", responses((status = 200, body = Filter)))]
pub async fn delete(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(filter): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut w = cp.begin().await?;
    let f = find_filter(&mut w.tx, &filter).await?;
    sqlx::query("DELETE FROM attachments WHERE filter_id = $1")
        .bind(&f.id)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("DELETE FROM filters WHERE id = $1")
        .bind(&f.id)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, filter_json(&f)))
}

/// A filter attached to an app, with the path prefixes it covers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attachment {
    pub id: String,
    pub app: Named,
    pub filter: Named,
    pub options: AttachOptions,
    pub created_at: String,
    pub updated_at: String,
}

fn attachment_json(a: &AppRow, t: &AttachmentRow) -> Attachment {
    Attachment {
        id: t.id.clone(),
        app: Named::new(a.id.clone(), a.key()),
        filter: Named::new(t.filter_id.clone(), t.filter_name.clone()),
        options: AttachOptions {
            includes: serde_json::from_str(&t.includes).unwrap_or_default(),
            excludes: serde_json::from_str(&t.excludes).unwrap_or_default(),
        },
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
    }
}

/// `{"id": …}` or `{"name": …}` or a bare string.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FilterRef {
    Name(String),
    Object {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        name: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachOptions {
    #[serde(default)]
    pub includes: Vec<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Attach {
    pub filter: FilterRef,
    #[serde(default)]
    pub options: AttachOptions,
}

fn check_prefixes(o: &AttachOptions) -> ApiResult<()> {
    for (field, list) in [
        ("options.includes", &o.includes),
        ("options.excludes", &o.excludes),
    ] {
        for p in list {
            wharf_config::paths::check_prefix(p).map_err(|e| ApiError::invalid(field, e))?;
        }
    }
    Ok(())
}

/// Attach a filter to an app
#[utoipa::path(post, path = "/apps/{app}/filters", tag = "filters", request_body = Attach, responses((status = 201, body = Attachment)))]
pub async fn attach(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    Body(body): Body<Attach>,
) -> ApiResult<Response> {
    load(&cp, &caller, &app).await?;
    check_prefixes(&body.options)?;
    let ident = match body.filter {
        FilterRef::Name(n) => n,
        FilterRef::Object { id, name } => id
            .or(name)
            .ok_or_else(|| ApiError::invalid("filter", "give filter.id or filter.name"))?,
    };
    let mut w = cp.begin().await?;
    let a = find_app(&mut w.tx, &app).await?;
    let f = find_filter(&mut w.tx, &ident).await?;
    let dup: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM attachments WHERE app_id = $1 AND filter_id = $2")
            .bind(&a.id)
            .bind(&f.id)
            .fetch_one(&mut *w.tx)
            .await?;
    if dup > 0 {
        return Err(ApiError::Conflict(format!(
            "The filter {} is already attached to {}.",
            f.name,
            a.key()
        )));
    }
    let now = now_us();
    let t = AttachmentRow {
        id: new_id(),
        app_id: a.id.clone(),
        filter_id: f.id.clone(),
        filter_name: f.name.clone(),
        includes: json!(body.options.includes).to_string(),
        excludes: json!(body.options.excludes).to_string(),
        created_at: now,
        updated_at: now,
    };
    sqlx::query("INSERT INTO attachments (id, app_id, filter_id, includes, excludes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)")
        .bind(&t.id)
        .bind(&t.app_id)
        .bind(&t.filter_id)
        .bind(&t.includes)
        .bind(&t.excludes)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::CREATED, attachment_json(&a, &t)))
}

/// List an app's filter attachments
#[utoipa::path(get, path = "/apps/{app}/filters", tag = "filters", responses((status = 200, body = [Attachment])))]
pub async fn list_attachments(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let rows: Vec<AttachmentRow> =
        sqlx::query_as(&format!("{ATTACHMENT_SELECT} WHERE t.app_id = $1"))
            .bind(&a.id)
            .fetch_all(cp.store().pool())
            .await?;
    paginate(
        &headers,
        rows.iter().map(|t| attachment_json(&a, t)).collect(),
        &["id", "created_at"],
    )
}

async fn find_attachment(cp: &ControlPlane, a: &AppRow, ident: &str) -> ApiResult<AttachmentRow> {
    find_one(
        cp,
        &format!("{ATTACHMENT_SELECT} WHERE t.app_id = $1 AND (t.id = $2 OR f.name = $2)"),
        &[&a.id, ident],
        "filter attachment",
        ident,
    )
    .await
}

/// Show a filter attachment (by id or filter name)
#[utoipa::path(get, path = "/apps/{app}/filters/{attachment}", tag = "filters", responses((status = 200, body = Attachment)))]
pub async fn attachment_info(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, attachment)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    Ok(json(
        StatusCode::OK,
        attachment_json(&a, &find_attachment(&cp, &a, &attachment).await?),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateAttachment {
    #[serde(default)]
    pub options: AttachOptions,
}

/// Change an attachment's path includes and excludes
#[utoipa::path(put, path = "/apps/{app}/filters/{attachment}", tag = "filters", request_body = UpdateAttachment, responses((status = 200, body = Attachment)))]
pub async fn update_attachment(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, attachment)): Path<(String, String)>,
    Body(body): Body<UpdateAttachment>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    check_prefixes(&body.options)?;
    let mut t = find_attachment(&cp, &a, &attachment).await?;
    t.includes = json!(body.options.includes).to_string();
    t.excludes = json!(body.options.excludes).to_string();
    t.updated_at = now_us();
    let mut w = cp.begin().await?;
    sqlx::query(
        "UPDATE attachments SET includes = $1, excludes = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(&t.includes)
    .bind(&t.excludes)
    .bind(t.updated_at)
    .bind(&t.id)
    .execute(&mut *w.tx)
    .await?;
    cp.commit(w, false).await?;
    Ok(json(StatusCode::OK, attachment_json(&a, &t)))
}

/// Detach a filter from an app
#[utoipa::path(delete, path = "/apps/{app}/filters/{attachment}", tag = "filters", responses((status = 200, body = Attachment)))]
pub async fn detach(
    State(cp): State<ControlPlane>,
    caller: Caller,
    Path((app, attachment)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = load(&cp, &caller, &app).await?;
    let t = find_attachment(&cp, &a, &attachment).await?;
    delete_row(&cp, "attachments", &t.id, false).await?;
    Ok(json(StatusCode::OK, attachment_json(&a, &t)))
}
