//! What the router loads: hosts → apps or sites, site route tries, backends per app and side,
//! filters with their path scopes, certificates. Lookups here are pure and allocation-free.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::model::{AbortPolicy, DynoState, Filter, Rate, RouterSettings};
use crate::paths::PrefixTree;
use crate::validate::Validated;

#[derive(Debug, Clone, PartialEq)]
pub struct RouterTable {
    pub revision: u64,
    pub digest: String,
    pub domain: String,
    pub settings: RouterSettings,
    /// Lowercase host name → what serves it.
    pub hosts: HashMap<String, HostTarget>,
    pub apps: Vec<AppTarget>,
    pub sites: Vec<SiteTarget>,
    pub filters: Vec<Filter>,
    pub certificates: Vec<CertSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTarget {
    pub kind: HostKind,
    /// Served only on the internal listener.
    pub internal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    App(usize),
    Site(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppTarget {
    /// `{app}-{space}`.
    pub key: String,
    pub name: String,
    pub space: String,
    pub internal: bool,
    /// Running web dynos of the stable side (every release but the canary's).
    pub web: Vec<Backend>,
    /// Web dynos known but crashed (H10 when nothing is up).
    pub crashed: usize,
    pub canary: Option<CanaryTarget>,
    pub filters: Vec<FilterUse>,
    pub limits: AppRouterLimits,
}

/// An app's router limits (`[[limits]]`); the defaults mean none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppRouterLimits {
    /// Requests in flight at once (0: no limit).
    pub max_concurrent_requests: u32,
    pub rate: Option<Rate>,
    /// Largest request body (0: the router's `max_body_bytes`).
    pub max_body_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub process: String,
    pub release: u32,
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanaryTarget {
    pub stable_release: u32,
    pub release: u32,
    /// Percent of requests, 0–100.
    pub weight: u32,
    pub sticky: bool,
    pub abort: AbortPolicy,
    pub backends: Vec<Backend>,
}

/// A filter attached to an app, with the paths it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterUse {
    /// Index into [`RouterTable::filters`].
    pub filter: usize,
    pub includes: PrefixTree<()>,
    pub excludes: PrefixTree<()>,
}

impl FilterUse {
    /// Excludes win; with includes, only they are covered; without, everything is.
    pub fn covers(&self, path: &str) -> bool {
        !self.excludes.matches(path) && (self.includes.is_empty() || self.includes.matches(path))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SiteTarget {
    pub domain: String,
    pub internal: bool,
    pub routes: PrefixTree<SiteRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRoute {
    pub source_path: String,
    pub target_path: String,
    /// Index into [`RouterTable::apps`].
    pub app: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub name: String,
    pub names: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub default: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    /// Index into [`RouterTable::apps`].
    pub app: usize,
    /// For site routes: the route and how many bytes of the path its source prefix covered.
    pub route: Option<(&'a SiteRoute, usize)>,
}

/// Why a request has no destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// No such host (or an internal one asked on a public listener: the same answer).
    Host,
    /// A site host whose routes cover no prefix of this path.
    Route,
}

impl RouterTable {
    /// Route a request by normalised host and path. `internal_listener` selects which hosts
    /// exist: internal ones only there, public ones only elsewhere.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        internal_listener: bool,
    ) -> Result<Found<'_>, NotFound> {
        let target = self.hosts.get(host).ok_or(NotFound::Host)?;
        if target.internal != internal_listener {
            return Err(NotFound::Host);
        }
        match target.kind {
            HostKind::App(app) => Ok(Found { app, route: None }),
            HostKind::Site(site) => {
                let m = self.sites[site]
                    .routes
                    .longest_match(path)
                    .ok_or(NotFound::Route)?;
                Ok(Found {
                    app: m.value.app,
                    route: Some((m.value, m.matched_len)),
                })
            }
        }
    }

    pub(crate) fn build(v: &Validated, digest: &str) -> RouterTable {
        let internal_space =
            |space: &str| v.spaces.iter().any(|s| s.name == space && s.is_internal());
        let mut by_app: HashMap<&str, Vec<&crate::model::Endpoint>> = HashMap::new();
        for e in &v.endpoints {
            by_app.entry(e.app.as_str()).or_default().push(e);
        }
        let mut canaries: HashMap<&str, &crate::model::Canary> = HashMap::new();
        for c in &v.canaries {
            canaries.insert(c.app.as_str(), c);
        }
        let mut routes_by_site: HashMap<&str, Vec<&crate::model::Route>> = HashMap::new();
        for r in &v.routes {
            routes_by_site.entry(r.site.as_str()).or_default().push(r);
        }
        let mut app_index: HashMap<String, usize> = HashMap::new();
        let mut apps = Vec::with_capacity(v.apps.len());
        let mut hosts = HashMap::new();
        for (i, a) in v.apps.iter().enumerate() {
            let key = a.key();
            let internal = internal_space(&a.space);
            let canary = canaries.get(key.as_str()).copied();
            let mut web = Vec::new();
            let mut canary_backends = Vec::new();
            let mut crashed = 0;
            let endpoints = by_app
                .get(key.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            for e in endpoints.iter().filter(|e| is_web(&e.process)) {
                match e.state {
                    DynoState::Up => {
                        let b = Backend {
                            process: e.process.clone(),
                            release: e.release,
                            address: e.address,
                        };
                        match canary {
                            Some(c) if c.canary_release == e.release => canary_backends.push(b),
                            _ => web.push(b),
                        }
                    }
                    DynoState::Crashed => crashed += 1,
                    _ => {}
                }
            }
            web.sort();
            canary_backends.sort();
            hosts.insert(
                format!("{key}.{}", v.domain),
                HostTarget {
                    kind: HostKind::App(i),
                    internal,
                },
            );
            for d in &a.domains {
                hosts.insert(
                    d.clone(),
                    HostTarget {
                        kind: HostKind::App(i),
                        internal,
                    },
                );
            }
            apps.push(AppTarget {
                key: key.clone(),
                name: a.name.clone(),
                space: a.space.clone(),
                internal,
                web,
                crashed,
                canary: canary.map(|c| CanaryTarget {
                    stable_release: c.stable_release,
                    release: c.canary_release,
                    weight: c.weight.min(100),
                    sticky: c.sticky,
                    abort: c.abort.clone(),
                    backends: canary_backends,
                }),
                filters: Vec::new(),
                limits: v
                    .limits
                    .iter()
                    .find(|l| l.app == key)
                    .map(|l| AppRouterLimits {
                        max_concurrent_requests: l.max_concurrent_requests,
                        rate: Rate::new(l.requests_per_sec, l.burst),
                        max_body_bytes: l.max_body_bytes,
                    })
                    .unwrap_or_default(),
            });
            app_index.insert(key, i);
        }

        let filter_index: HashMap<&str, usize> = v
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name(), i))
            .collect();
        for a in &v.attachments {
            let (Some(&app), Some(&filter)) =
                (app_index.get(&a.app), filter_index.get(a.filter.as_str()))
            else {
                continue;
            };
            let tree = |list: &[String]| {
                let mut t = PrefixTree::new();
                for p in list {
                    t.insert(p, ());
                }
                t
            };
            apps[app].filters.push(FilterUse {
                filter,
                includes: tree(&a.includes),
                excludes: tree(&a.excludes),
            });
        }
        for a in &mut apps {
            a.filters.sort_by_key(|f| f.filter);
        }

        let mut sites = Vec::with_capacity(v.sites.len());
        for (i, s) in v.sites.iter().enumerate() {
            let mut routes = PrefixTree::new();
            for r in routes_by_site
                .get(s.domain.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(&app) = app_index.get(&r.app) {
                    routes.insert(
                        &r.source_path,
                        SiteRoute {
                            source_path: r.source_path.clone(),
                            target_path: r.target_path.clone(),
                            app,
                        },
                    );
                }
            }
            hosts.insert(
                s.domain.clone(),
                HostTarget {
                    kind: HostKind::Site(i),
                    internal: s.internal,
                },
            );
            sites.push(SiteTarget {
                domain: s.domain.clone(),
                internal: s.internal,
                routes,
            });
        }

        let certificates = v
            .certificates
            .iter()
            .map(|c| CertSpec {
                name: c.name.clone(),
                names: c.names.clone(),
                cert_pem: c.cert_pem.clone().unwrap_or_default(),
                key_pem: c.key_pem.clone().unwrap_or_default(),
                default: c.default,
            })
            .collect();

        RouterTable {
            revision: v.revision,
            digest: digest.to_owned(),
            domain: v.domain.clone(),
            settings: v.router.clone(),
            hosts,
            apps,
            sites,
            filters: v.filters.clone(),
            certificates,
        }
    }
}

fn is_web(process: &str) -> bool {
    process.split('.').next() == Some("web")
}
