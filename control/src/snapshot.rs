//! Store → [`Snapshot`] (and → [`DesiredState`]). Called inside the write transaction, so what
//! is validated and published is exactly what is committed.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::AnyConnection;
use wharf_config::{
    App, Artifact, Attachment, Canary, Certificate, Compliance, Drain, Endpoint, Filter, Formation,
    HealthCheck, Release, Route, Site, Snapshot, Space,
};
use wharf_runtime::{DesiredApp, DesiredState, DynoStatus};

use crate::error::{ApiError, ApiResult};
use crate::store::{
    APP_SELECT, ATTACHMENT_SELECT, AppRow, AttachmentRow, CertRow, DomainRow, DrainRow, FilterRow,
    FormationRow, ROUTE_SELECT, ReleaseRow, RouteRow, SiteRow, SpaceRow,
};
use crate::{Settings, canary, empty_snapshot};

/// The newest release of every app.
async fn current_releases(c: &mut AnyConnection) -> ApiResult<HashMap<String, ReleaseRow>> {
    let rows: Vec<ReleaseRow> = sqlx::query_as(
        "SELECT r.* FROM releases r WHERE r.version = \
         (SELECT MAX(version) FROM releases x WHERE x.app_id = r.app_id \
         AND x.status = 'succeeded')",
    )
    .fetch_all(&mut *c)
    .await?;
    Ok(rows.into_iter().map(|r| (r.app_id.clone(), r)).collect())
}

pub(crate) fn formation_of(key: &str, f: &FormationRow) -> Formation {
    Formation {
        app: key.to_owned(),
        process_type: f.process_type.clone(),
        quantity: f.quantity.max(0) as u32,
        size: f.size.clone(),
        command: f.command.clone(),
        port: f.port.and_then(|p| u16::try_from(p).ok()),
        health_check: f
            .health_check
            .as_deref()
            .and_then(|h| serde_json::from_str::<HealthCheck>(h).ok()),
        schedule: None,
    }
}

/// Build the snapshot of the store as `c` sees it.
pub async fn build(
    c: &mut AnyConnection,
    settings: &Settings,
    revision: u64,
    dynos: &[DynoStatus],
) -> ApiResult<Snapshot> {
    let mut s = empty_snapshot(settings);
    s.revision = revision;

    let spaces: Vec<SpaceRow> = sqlx::query_as("SELECT * FROM spaces ORDER BY name")
        .fetch_all(&mut *c)
        .await?;
    for sp in &spaces {
        let compliance: BTreeSet<Compliance> = serde_json::from_str(&sp.compliance)
            .map_err(|e| ApiError::Internal(format!("space {} compliance: {e}", sp.name)))?;
        s.spaces.push(Space {
            name: sp.name.clone(),
            compliance,
        });
    }

    let apps: Vec<AppRow> = sqlx::query_as(&format!("{APP_SELECT} ORDER BY s.name, a.name"))
        .fetch_all(&mut *c)
        .await?;
    let keys: HashMap<String, String> = apps.iter().map(|a| (a.id.clone(), a.key())).collect();
    let domains: Vec<DomainRow> = sqlx::query_as("SELECT * FROM domains ORDER BY hostname")
        .fetch_all(&mut *c)
        .await?;
    let current = current_releases(c).await?;

    // Releases: each app's current one (when it has an artifact), and any a dyno still runs.
    let running: HashSet<(String, u32)> = dynos
        .iter()
        .filter(|d| d.address.is_some())
        .map(|d| (canary::owner_key(&d.app).to_owned(), d.release))
        .collect();
    let canaries = canary::running(c).await?;
    let canary_releases: HashSet<String> = canaries.iter().map(|k| k.release_id.clone()).collect();
    let all: Vec<ReleaseRow> = sqlx::query_as(
        "SELECT * FROM releases WHERE artifact IS NOT NULL ORDER BY app_id, version",
    )
    .fetch_all(&mut *c)
    .await?;
    let mut included: HashSet<(String, u32)> = HashSet::new();
    for r in &all {
        let Some(key) = keys.get(&r.app_id) else {
            continue;
        };
        let version = r.version as u32;
        let is_current = current.get(&r.app_id).is_some_and(|cur| cur.id == r.id);
        if !(is_current
            || canary_releases.contains(&r.id)
            || running.contains(&(key.clone(), version)))
        {
            continue;
        }
        let Some(artifact) = r.artifact() else {
            continue;
        };
        included.insert((key.clone(), version));
        s.releases.push(Release {
            app: key.clone(),
            version,
            artifact,
            config_vars: r.config(),
        });
    }

    for a in &apps {
        let key = a.key();
        let release = current
            .get(&a.id)
            .map(|r| r.version as u32)
            .filter(|v| included.contains(&(key.clone(), *v)));
        s.apps.push(App {
            name: a.name.clone(),
            space: a.space_name.clone(),
            domains: domains
                .iter()
                .filter(|d| d.app_id == a.id)
                .map(|d| d.hostname.clone())
                .collect(),
            release,
            log_token: Some(a.log_token.clone()),
        });
    }

    let formation: Vec<FormationRow> =
        sqlx::query_as("SELECT * FROM formation ORDER BY app_id, type")
            .fetch_all(&mut *c)
            .await?;
    for f in &formation {
        if let Some(key) = keys.get(&f.app_id) {
            s.formation.push(formation_of(key, f));
        }
    }

    for k in &canaries {
        let Some(key) = keys.get(&k.app_id) else {
            continue;
        };
        let stable = s
            .apps
            .iter()
            .find(|a| a.key() == *key)
            .and_then(|a| a.release);
        let canary_release = k.canary_version as u32;
        if let Some(stable) = stable
            && included.contains(&(key.clone(), canary_release))
            && stable != canary_release
        {
            s.canaries.push(Canary {
                app: key.clone(),
                stable_release: stable,
                canary_release,
                weight: k.weight.clamp(0, 100) as u32,
                sticky: k.sticky != 0,
                abort: Default::default(),
            });
        }
    }

    for d in dynos {
        let Some(address) = d.address else { continue };
        let app = canary::owner_key(&d.app);
        if !included.contains(&(app.to_owned(), d.release))
            || !wharf_config::validate::is_dyno_name(&d.name)
        {
            continue;
        }
        s.endpoints.push(Endpoint {
            app: app.to_owned(),
            release: d.release,
            process: d.name.clone(),
            address,
            state: d.state,
        });
    }
    s.endpoints
        .sort_by(|a, b| (&a.app, a.release, &a.process).cmp(&(&b.app, b.release, &b.process)));
    s.endpoints
        .dedup_by(|a, b| a.app == b.app && a.release == b.release && a.process == b.process);

    let sites: Vec<SiteRow> = sqlx::query_as("SELECT * FROM sites ORDER BY domain")
        .fetch_all(&mut *c)
        .await?;
    s.sites = sites
        .iter()
        .map(|si| Site {
            domain: si.domain.clone(),
            internal: si.internal != 0,
        })
        .collect();

    let routes: Vec<RouteRow> = sqlx::query_as(&format!(
        "{ROUTE_SELECT} ORDER BY si.domain, r.source_path, r.id"
    ))
    .fetch_all(&mut *c)
    .await?;
    s.routes = routes
        .iter()
        .map(|r| Route {
            site: r.site_domain.clone(),
            source_path: r.source_path.clone(),
            app: format!("{}-{}", r.app_name, r.space_name),
            target_path: r.target_path.clone(),
        })
        .collect();

    let filters: Vec<FilterRow> = sqlx::query_as("SELECT * FROM filters ORDER BY name")
        .fetch_all(&mut *c)
        .await?;
    for f in &filters {
        s.filters.push(filter_of(f)?);
    }

    let attachments: Vec<AttachmentRow> =
        sqlx::query_as(&format!("{ATTACHMENT_SELECT} ORDER BY t.app_id, f.name"))
            .fetch_all(&mut *c)
            .await?;
    for t in &attachments {
        if let Some(key) = keys.get(&t.app_id) {
            s.attachments.push(Attachment {
                app: key.clone(),
                filter: t.filter_name.clone(),
                includes: serde_json::from_str(&t.includes).unwrap_or_default(),
                excludes: serde_json::from_str(&t.excludes).unwrap_or_default(),
            });
        }
    }

    let certs: Vec<CertRow> = sqlx::query_as("SELECT * FROM certificates ORDER BY name")
        .fetch_all(&mut *c)
        .await?;
    s.certificates = certs
        .iter()
        .map(|ct| Certificate {
            name: ct.name.clone(),
            names: serde_json::from_str(&ct.names).unwrap_or_default(),
            cert_pem: Some(ct.cert_pem.clone()),
            key_pem: Some(ct.key_pem.clone()),
            cert_file: None,
            key_file: None,
            default: ct.is_default != 0,
        })
        .collect();

    let drains: Vec<DrainRow> =
        sqlx::query_as("SELECT * FROM drains ORDER BY app_id, created_at, id")
            .fetch_all(&mut *c)
            .await?;
    for d in &drains {
        if let Some(key) = keys.get(&d.app_id) {
            s.drains.push(Drain {
                app: key.clone(),
                url: d.url.clone(),
                token: Some(d.token.clone()),
            });
        }
    }
    Ok(s)
}

/// A stored filter as the config crate models it (`options` plus `type` and `name`).
pub fn filter_of(f: &FilterRow) -> ApiResult<Filter> {
    let mut v: serde_json::Value = serde_json::from_str(&f.options)
        .map_err(|e| ApiError::Internal(format!("filter {} options: {e}", f.name)))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), f.filter_type.clone().into());
        o.insert("name".into(), f.name.clone().into());
    }
    serde_json::from_value(v).map_err(|e| ApiError::Internal(format!("filter {}: {e}", f.name)))
}

/// What should run: every app whose current release has an artifact, with its formation.
pub async fn desired(c: &mut AnyConnection) -> ApiResult<DesiredState> {
    let apps: Vec<AppRow> = sqlx::query_as(&format!("{APP_SELECT} ORDER BY s.name, a.name"))
        .fetch_all(&mut *c)
        .await?;
    let current = current_releases(c).await?;
    let formation: Vec<FormationRow> =
        sqlx::query_as("SELECT * FROM formation ORDER BY app_id, type")
            .fetch_all(&mut *c)
            .await?;
    let mut out = DesiredState::default();
    let canaries = canary::running(c).await?;
    for k in &canaries {
        let Some(a) = apps.iter().find(|a| a.id == k.app_id) else {
            continue;
        };
        let r: Option<ReleaseRow> = sqlx::query_as("SELECT * FROM releases WHERE id = $1")
            .bind(&k.release_id)
            .fetch_optional(&mut *c)
            .await?;
        let Some((r, artifact)) = r.and_then(|r| r.artifact().map(|x| (r, x))) else {
            continue;
        };
        let key = canary::runtime_key(&a.key());
        let web = formation
            .iter()
            .find(|f| f.app_id == a.id && f.process_type == "web")
            .map(|f| {
                let mut f = formation_of(&key, f);
                f.quantity = k.quantity.max(1) as u32;
                f
            })
            .unwrap_or_else(|| Formation {
                app: key.clone(),
                process_type: "web".into(),
                quantity: k.quantity.max(1) as u32,
                size: "standard-1x".into(),
                command: None,
                port: None,
                health_check: None,
                schedule: None,
            });
        out.apps.push(DesiredApp {
            key,
            name: a.name.clone(),
            space: a.space_name.clone(),
            release: r.version as u32,
            artifact,
            config_vars: r.config(),
            formation: vec![web],
        });
    }
    for a in &apps {
        let Some(r) = current.get(&a.id) else {
            continue;
        };
        let Some(artifact): Option<Artifact> = r.artifact() else {
            continue;
        };
        let key = a.key();
        out.apps.push(DesiredApp {
            key: key.clone(),
            name: a.name.clone(),
            space: a.space_name.clone(),
            release: r.version as u32,
            artifact,
            config_vars: r.config(),
            formation: formation
                .iter()
                .filter(|f| f.app_id == a.id)
                .map(|f| formation_of(&key, f))
                .collect(),
        });
    }
    Ok(out)
}
