//! What the log shuttle loads: per app, its space and drains, plus the log settings.

use std::collections::BTreeMap;

use crate::drain_url::DrainUrl;
use crate::model::{LogSettings, Rate};
use crate::validate::Validated;

#[derive(Debug, Clone, PartialEq)]
pub struct ShuttlePlan {
    pub revision: u64,
    pub digest: String,
    pub settings: LogSettings,
    /// By app key `{app}-{space}`.
    pub apps: BTreeMap<String, AppLogs>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppLogs {
    pub name: String,
    pub space: String,
    /// Compliance `socs`: secret-looking values are redacted.
    pub socs: bool,
    pub log_token: Option<String>,
    pub drains: Vec<DrainTarget>,
    /// Lines per second accepted at ingest (`[[limits]]`); `None`: no limit.
    pub log_rate: Option<Rate>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DrainTarget {
    /// Stable across reloads while app and URL stay the same: reloads diff on it.
    pub id: String,
    pub app: String,
    pub url: DrainUrl,
    pub token: Option<String>,
}

impl ShuttlePlan {
    pub(crate) fn build(v: &Validated, digest: &str) -> ShuttlePlan {
        let mut apps: BTreeMap<String, AppLogs> = v
            .apps
            .iter()
            .map(|a| {
                let socs = v.spaces.iter().any(|s| {
                    s.name == a.space && s.compliance.contains(&crate::model::Compliance::Socs)
                });
                (
                    a.key(),
                    AppLogs {
                        name: a.name.clone(),
                        space: a.space.clone(),
                        socs,
                        log_token: a.log_token.clone(),
                        drains: Vec::new(),
                        log_rate: v
                            .limits
                            .iter()
                            .find(|l| l.app == a.key())
                            .and_then(|l| Rate::new(l.log_lines_per_sec, l.log_burst)),
                    },
                )
            })
            .collect();
        for d in &v.drains {
            let url = DrainUrl::parse(&d.url).expect("validated drain URL");
            if let Some(app) = apps.get_mut(&d.app) {
                app.drains.push(DrainTarget {
                    id: drain_id(&d.app, &d.url),
                    app: d.app.clone(),
                    url,
                    token: d.token.clone(),
                });
            }
        }
        for app in apps.values_mut() {
            app.drains.sort();
        }
        ShuttlePlan {
            revision: v.revision,
            digest: digest.to_owned(),
            settings: v.logs.clone(),
            apps,
        }
    }
}

/// `d.` and 16 hex digits of a hash of app and URL.
pub fn drain_id(app: &str, url: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::new()
        .chain_update(app.as_bytes())
        .chain_update([0u8])
        .chain_update(url.as_bytes())
        .finalize();
    format!("d.{}", hex::encode(&h[..8]))
}
