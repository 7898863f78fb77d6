//! Validation: every problem of a snapshot, each with its path. Only a [`Validated`] snapshot
//! can be compiled, so a plane can only ever load what passed.

use std::collections::{BTreeMap, HashMap, HashSet};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::drain_url::{DrainKind, DrainUrl};
use crate::model::*;
use crate::names::{check_cert_name, check_dns_name, check_name, is_token};
use crate::paths::check_prefix;
use crate::problems::Problems;

/// A snapshot that passed [`validate`]. Read it through `Deref`; build one only by validating.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated(Snapshot);

impl std::ops::Deref for Validated {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl Validated {
    pub fn into_inner(self) -> Snapshot {
        self.0
    }
}

/// Check a whole snapshot; report every problem, not the first.
pub fn validate(snapshot: Snapshot) -> Result<Validated, Problems> {
    let mut p = Problems::default();
    Checker::new(&snapshot, &mut p).run();
    p.into_result(Validated(snapshot))
}

/// Check `next` as a change of `prev`: everything [`validate`] checks, and what may not change
/// once created (a space's compliance set).
pub fn validate_update(prev: &Snapshot, next: Snapshot) -> Result<Validated, Problems> {
    let mut p = Problems::default();
    Checker::new(&next, &mut p).run();
    let before: HashMap<&str, &Space> = prev.spaces.iter().map(|s| (s.name.as_str(), s)).collect();
    for (i, space) in next.spaces.iter().enumerate() {
        if let Some(old) = before.get(space.name.as_str())
            && old.compliance != space.compliance
        {
            p.push(
                format!("spaces[{i}].compliance"),
                format!(
                    "the compliance of space {:?} cannot change after creation (it is {:?})",
                    space.name,
                    old.compliance
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
    p.into_result(Validated(next))
}

struct Checker<'a> {
    s: &'a Snapshot,
    p: &'a mut Problems,
    spaces: HashMap<&'a str, &'a Space>,
    apps: HashMap<String, &'a App>,
    releases: HashSet<(&'a str, u32)>,
    sites: HashMap<&'a str, &'a Site>,
    filters: HashMap<&'a str, &'a Filter>,
    /// Every host served, to find collisions between app hosts, custom domains and sites.
    hosts: HashMap<String, String>,
}

impl<'a> Checker<'a> {
    fn new(s: &'a Snapshot, p: &'a mut Problems) -> Self {
        Checker {
            s,
            p,
            spaces: HashMap::new(),
            apps: HashMap::new(),
            releases: HashSet::new(),
            sites: HashMap::new(),
            filters: HashMap::new(),
            hosts: HashMap::new(),
        }
    }

    fn run(&mut self) {
        self.settings();
        self.spaces();
        self.apps();
        self.releases();
        self.app_releases();
        self.formation();
        self.endpoints();
        self.sites();
        self.routes();
        self.filters();
        self.attachments();
        self.canaries();
        self.certificates();
        self.drains();
        self.limits();
    }

    fn limits(&mut self) {
        let mut seen = HashSet::new();
        for (i, l) in self.s.limits.iter().enumerate() {
            let at = format!("limits[{i}]");
            self.app(format!("{at}.app"), &l.app);
            if !seen.insert(l.app.as_str()) {
                self.p.push(
                    format!("{at}.app"),
                    format!("app {:?} has limits already; give one entry per app", l.app),
                );
            }
            for (field, rate, burst) in [
                ("burst", l.requests_per_sec, l.burst),
                ("log_burst", l.log_lines_per_sec, l.log_burst),
            ] {
                if rate == 0 && burst > 0 {
                    self.p.push(
                        format!("{at}.{field}"),
                        "a burst needs a rate: set the matching per-second limit too",
                    );
                }
            }
        }
        let c = &self.s.router.limits;
        if c.requests_per_sec_per_ip == 0 && c.burst_per_ip > 0 {
            self.p.push(
                "router.limits.burst_per_ip",
                "a burst needs a rate: set requests_per_sec_per_ip too",
            );
        }
        if c.max_connections > 0 && c.max_connections_per_ip > c.max_connections {
            self.p.push(
                "router.limits.max_connections_per_ip",
                format!(
                    "{} is above max_connections ({})",
                    c.max_connections_per_ip, c.max_connections
                ),
            );
        }
    }

    fn app(&mut self, path: String, key: &str) -> Option<&'a App> {
        let found = self.apps.get(key).copied();
        if found.is_none() {
            self.p.push(path, format!("unknown app {key:?}"));
        }
        found
    }

    fn release(&mut self, path: String, app: &str, version: u32) {
        if !self.releases.contains(&(app, version)) {
            self.p
                .push(path, format!("app {app:?} has no release v{version}"));
        }
    }

    fn host(&mut self, path: String, host: &str, owner: String) {
        if let Some(other) = self.hosts.get(host) {
            self.p
                .push(path, format!("host {host:?} is already served by {other}"));
        } else {
            self.hosts.insert(host.to_owned(), owner);
        }
    }

    fn settings(&mut self) {
        if let Err(e) = check_dns_name(&self.s.domain) {
            self.p.push("domain", e);
        }
        let r = &self.s.router;
        for (name, v) in [
            ("connect_timeout_ms", r.connect_timeout_ms),
            ("first_byte_timeout_ms", r.first_byte_timeout_ms),
            ("idle_timeout_ms", r.idle_timeout_ms),
            ("client_header_timeout_ms", r.client_header_timeout_ms),
            ("client_body_timeout_ms", r.client_body_timeout_ms),
            ("client_h2_idle_timeout_ms", r.client_h2_idle_timeout_ms),
        ] {
            if v == 0 {
                self.p.push(format!("router.{name}"), "must be more than 0");
            }
        }
        let l = &self.s.logs;
        for (name, v) in [
            ("history_lines", l.history_lines),
            ("max_drains_per_app", l.max_drains_per_app),
            ("drain_buffer_lines", l.drain_buffer_lines),
        ] {
            if v == 0 {
                self.p.push(format!("logs.{name}"), "must be more than 0");
            }
        }
    }

    fn spaces(&mut self) {
        for (i, space) in self.s.spaces.iter().enumerate() {
            if let Err(e) = check_name(&space.name) {
                self.p.push(format!("spaces[{i}].name"), e);
            }
            if self.spaces.insert(&space.name, space).is_some() {
                self.p.push(
                    format!("spaces[{i}].name"),
                    format!("duplicate space {:?}", space.name),
                );
            }
        }
    }

    fn apps(&mut self) {
        for (i, app) in self.s.apps.iter().enumerate() {
            if let Err(e) = check_name(&app.name) {
                self.p.push(format!("apps[{i}].name"), e);
            }
            if !self.spaces.contains_key(app.space.as_str()) {
                self.p.push(
                    format!("apps[{i}].space"),
                    format!("unknown space {:?}", app.space),
                );
            }
            let key = app.key();
            if self.apps.insert(key.clone(), app).is_some() {
                self.p
                    .push(format!("apps[{i}].name"), format!("duplicate app {key:?}"));
                continue;
            }
            let host = format!("{key}.{}", self.s.domain);
            self.host(format!("apps[{i}]"), &host, format!("app {key:?}"));
            for (j, d) in app.domains.iter().enumerate() {
                let path = format!("apps[{i}].domains[{j}]");
                match check_dns_name(d) {
                    Ok(()) => self.host(path, d, format!("app {key:?}")),
                    Err(e) => self.p.push(path, e),
                }
            }
        }
    }

    fn releases(&mut self) {
        for (i, r) in self.s.releases.iter().enumerate() {
            self.app(format!("releases[{i}].app"), &r.app);
            if r.version == 0 {
                self.p
                    .push(format!("releases[{i}].version"), "versions start at 1");
            }
            if !self.releases.insert((&r.app, r.version)) {
                self.p.push(
                    format!("releases[{i}].version"),
                    format!("duplicate release v{} of app {:?}", r.version, r.app),
                );
            }
            let empty = match &r.artifact {
                Artifact::Image(s) | Artifact::Slug(s) | Artifact::Command(s) => {
                    s.trim().is_empty()
                }
            };
            if empty {
                self.p
                    .push(format!("releases[{i}].artifact"), "must not be empty");
            }
            for name in r.config_vars.keys() {
                if !is_env_name(name) {
                    self.p.push(
                        format!("releases[{i}].config_vars.{name}"),
                        "config var names are [A-Za-z_][A-Za-z0-9_]*",
                    );
                }
            }
        }
    }

    fn app_releases(&mut self) {
        for (i, app) in self.s.apps.iter().enumerate() {
            if let Some(v) = app.release {
                let key = app.key();
                if !self.releases.contains(&(key.as_str(), v)) {
                    self.p.push(
                        format!("apps[{i}].release"),
                        format!("app {key:?} has no release v{v}"),
                    );
                }
            }
        }
    }

    fn formation(&mut self) {
        let mut seen = HashSet::new();
        for (i, f) in self.s.formation.iter().enumerate() {
            self.app(format!("formation[{i}].app"), &f.app);
            if let Err(e) = check_name(&f.process_type) {
                self.p.push(format!("formation[{i}].type"), e);
            }
            if !seen.insert((&f.app, &f.process_type)) {
                self.p.push(
                    format!("formation[{i}].type"),
                    format!(
                        "duplicate process type {:?} for app {:?}",
                        f.process_type, f.app
                    ),
                );
            }
            if !DYNO_SIZES.iter().any(|(n, _)| *n == f.size) {
                self.p.push(
                    format!("formation[{i}].size"),
                    format!(
                        "unknown dyno size {:?} (one of {})",
                        f.size,
                        DYNO_SIZES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if f.port == Some(0) {
                self.p
                    .push(format!("formation[{i}].port"), "must be 1–65535");
            }
            if let Some(HealthCheck::Http { path }) = &f.health_check
                && !path.starts_with('/')
            {
                self.p.push(
                    format!("formation[{i}].health_check.path"),
                    format!("{path:?} must start with '/'"),
                );
            }
            if let Some(cron) = &f.schedule {
                if f.process_type == "web" {
                    self.p.push(
                        format!("formation[{i}].schedule"),
                        "web dynos cannot be scheduled",
                    );
                } else if let Err(e) = check_cron(cron) {
                    self.p.push(format!("formation[{i}].schedule"), e);
                }
            }
        }
    }

    fn endpoints(&mut self) {
        let mut seen = HashSet::new();
        for (i, e) in self.s.endpoints.iter().enumerate() {
            if self.app(format!("endpoints[{i}].app"), &e.app).is_some() {
                self.release(format!("endpoints[{i}].release"), &e.app, e.release);
            }
            if !is_dyno_name(&e.process) {
                self.p.push(
                    format!("endpoints[{i}].process"),
                    format!("{:?} is not a dyno name like \"web.1\"", e.process),
                );
            }
            if !seen.insert((&e.app, e.release, &e.process)) {
                self.p.push(
                    format!("endpoints[{i}].process"),
                    format!(
                        "duplicate dyno {} v{} of app {:?}",
                        e.process, e.release, e.app
                    ),
                );
            }
        }
    }

    fn sites(&mut self) {
        for (i, site) in self.s.sites.iter().enumerate() {
            let path = format!("sites[{i}].domain");
            match check_dns_name(&site.domain) {
                Ok(()) => self.host(path, &site.domain, format!("site {:?}", site.domain)),
                Err(e) => self.p.push(path, e),
            }
            self.sites.insert(&site.domain, site);
        }
    }

    fn routes(&mut self) {
        let mut seen = HashSet::new();
        for (i, r) in self.s.routes.iter().enumerate() {
            let site = self.sites.get(r.site.as_str()).copied();
            if site.is_none() {
                self.p.push(
                    format!("routes[{i}].site"),
                    format!("unknown site {:?}", r.site),
                );
            }
            let app = self.app(format!("routes[{i}].app"), &r.app);
            if let (Some(site), Some(app)) = (site, app)
                && !site.internal
                && self
                    .spaces
                    .get(app.space.as_str())
                    .is_some_and(|s| s.is_internal())
            {
                self.p.push(
                    format!("routes[{i}].app"),
                    format!(
                        "app {:?} is in internal space {:?}: a public site cannot route to it",
                        r.app, app.space
                    ),
                );
            }
            for (field, v) in [
                ("source_path", &r.source_path),
                ("target_path", &r.target_path),
            ] {
                if let Err(e) = check_prefix(v) {
                    self.p.push(format!("routes[{i}].{field}"), e);
                }
            }
            let normalized = format!("/{}", r.source_path.trim_matches('/'));
            if !seen.insert((&r.site, normalized)) {
                self.p.push(
                    format!("routes[{i}].source_path"),
                    format!("site {:?} already routes {:?}", r.site, r.source_path),
                );
            }
        }
    }

    fn filters(&mut self) {
        for (i, f) in self.s.filters.iter().enumerate() {
            let name = f.name();
            if let Err(e) = check_name(name) {
                self.p.push(format!("filters[{i}].name"), e);
            }
            if self.filters.insert(name, f).is_some() {
                self.p.push(
                    format!("filters[{i}].name"),
                    format!("duplicate filter {name:?}"),
                );
            }
            match f {
                Filter::Jwt(j) => self.jwt(i, j),
                Filter::Cors(c) => self.cors(i, c),
            }
        }
    }

    fn jwt(&mut self, i: usize, j: &JwtFilter) {
        match url::Url::parse(&j.jwks_uri) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && is_loopback(u.host_str().unwrap_or("")) => {}
            Ok(_) => self.p.push(
                format!("filters[{i}].jwks_uri"),
                "must be https:// (http:// only on a loopback address)",
            ),
            Err(e) => self
                .p
                .push(format!("filters[{i}].jwks_uri"), format!("not a URL: {e}")),
        }
        if j.issuer.trim().is_empty() {
            self.p
                .push(format!("filters[{i}].issuer"), "must not be empty");
        }
        if j.leeway_secs > 300 {
            self.p
                .push(format!("filters[{i}].leeway_secs"), "at most 300 seconds");
        }
        if j.jwks_ttl_secs == 0 {
            self.p
                .push(format!("filters[{i}].jwks_ttl_secs"), "must be more than 0");
        }
        if j.algorithms.is_empty() {
            self.p.push(
                format!("filters[{i}].algorithms"),
                "must name at least one algorithm",
            );
        }
        for (k, alg) in j.algorithms.iter().enumerate() {
            if !JWT_ALGORITHMS.contains(&alg.as_str()) {
                self.p.push(
                    format!("filters[{i}].algorithms[{k}]"),
                    format!(
                        "{alg:?} is not accepted (only {}; never none or HMAC)",
                        JWT_ALGORITHMS.join(", ")
                    ),
                );
            }
        }
    }

    fn cors(&mut self, i: usize, c: &CorsFilter) {
        if c.allow_origin.is_empty() {
            self.p.push(
                format!("filters[{i}].allow_origin"),
                "must list at least one origin",
            );
        }
        for (k, o) in c.allow_origin.iter().enumerate() {
            if o == "*" {
                if c.allow_credentials {
                    self.p.push(
                        format!("filters[{i}].allow_origin[{k}]"),
                        "\"*\" cannot be combined with allow_credentials = true",
                    );
                }
            } else if let Err(e) = check_origin(o) {
                self.p.push(format!("filters[{i}].allow_origin[{k}]"), e);
            }
        }
        for (field, list) in [
            ("allow_methods", &c.allow_methods),
            ("allow_headers", &c.allow_headers),
            ("expose_headers", &c.expose_headers),
        ] {
            for (k, v) in list.iter().enumerate() {
                if !(is_token(v) || (v == "*" && !c.allow_credentials)) {
                    self.p.push(
                        format!("filters[{i}].{field}[{k}]"),
                        format!("{v:?} is not an HTTP token"),
                    );
                }
            }
        }
    }

    fn attachments(&mut self) {
        let mut seen = HashSet::new();
        for (i, a) in self.s.attachments.iter().enumerate() {
            self.app(format!("attachments[{i}].app"), &a.app);
            if !self.filters.contains_key(a.filter.as_str()) {
                self.p.push(
                    format!("attachments[{i}].filter"),
                    format!("unknown filter {:?}", a.filter),
                );
            }
            if !seen.insert((&a.app, &a.filter)) {
                self.p.push(
                    format!("attachments[{i}].filter"),
                    format!("filter {:?} is already attached to {:?}", a.filter, a.app),
                );
            }
            for (field, list) in [("includes", &a.includes), ("excludes", &a.excludes)] {
                for (k, v) in list.iter().enumerate() {
                    if let Err(e) = check_prefix(v) {
                        self.p.push(format!("attachments[{i}].{field}[{k}]"), e);
                    }
                }
            }
        }
    }

    fn canaries(&mut self) {
        let mut seen = HashSet::new();
        for (i, c) in self.s.canaries.iter().enumerate() {
            if self.app(format!("canaries[{i}].app"), &c.app).is_some() {
                self.release(
                    format!("canaries[{i}].stable_release"),
                    &c.app,
                    c.stable_release,
                );
                self.release(
                    format!("canaries[{i}].canary_release"),
                    &c.app,
                    c.canary_release,
                );
            }
            if !seen.insert(&c.app) {
                self.p.push(
                    format!("canaries[{i}].app"),
                    format!("app {:?} already has a canary", c.app),
                );
            }
            if c.weight > 100 {
                self.p.push(
                    format!("canaries[{i}].weight"),
                    format!("{} is outside 0–100", c.weight),
                );
            }
            if c.stable_release == c.canary_release {
                self.p.push(
                    format!("canaries[{i}].canary_release"),
                    "must differ from stable_release",
                );
            }
            let a = &c.abort;
            if a.window_secs == 0 {
                self.p.push(
                    format!("canaries[{i}].abort.window_secs"),
                    "must be more than 0",
                );
            }
            if !(a.z_threshold.is_finite() && a.z_threshold > 0.0) {
                self.p.push(
                    format!("canaries[{i}].abort.z_threshold"),
                    "must be a positive number",
                );
            }
            if !(0.0..=1.0).contains(&a.min_rate_delta) {
                self.p.push(
                    format!("canaries[{i}].abort.min_rate_delta"),
                    "must be within 0–1",
                );
            }
        }
    }

    fn certificates(&mut self) {
        let mut names = HashSet::new();
        let mut defaults = 0;
        for (i, c) in self.s.certificates.iter().enumerate() {
            if !names.insert(&c.name) {
                self.p.push(
                    format!("certificates[{i}].name"),
                    format!("duplicate certificate {:?}", c.name),
                );
            }
            if c.default {
                defaults += 1;
                if defaults > 1 {
                    self.p.push(
                        format!("certificates[{i}].default"),
                        "only one certificate can be the default",
                    );
                }
            }
            if c.names.is_empty() && !c.default {
                self.p.push(
                    format!("certificates[{i}].names"),
                    "must list at least one name (or be the default)",
                );
            }
            for (k, n) in c.names.iter().enumerate() {
                if let Err(e) = check_cert_name(n) {
                    self.p.push(format!("certificates[{i}].names[{k}]"), e);
                }
            }
            if c.cert_file.is_some() || c.key_file.is_some() {
                self.p.push(
                    format!("certificates[{i}]"),
                    "cert_file/key_file were not loaded (the loader reads them)",
                );
                continue;
            }
            match &c.cert_pem {
                None => self.p.push(
                    format!("certificates[{i}].cert_pem"),
                    "missing (or give cert_file)",
                ),
                Some(pem) => {
                    let certs: Result<Vec<_>, _> =
                        CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
                    match certs {
                        Ok(v) if !v.is_empty() => {}
                        Ok(_) => self.p.push(
                            format!("certificates[{i}].cert_pem"),
                            "holds no PEM certificate",
                        ),
                        Err(e) => self.p.push(
                            format!("certificates[{i}].cert_pem"),
                            format!("not PEM: {e}"),
                        ),
                    }
                }
            }
            match &c.key_pem {
                None => self.p.push(
                    format!("certificates[{i}].key_pem"),
                    "missing (or give key_file)",
                ),
                Some(pem) => {
                    if let Err(e) = PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
                        // Never echo key material: only the kind of failure.
                        self.p.push(
                            format!("certificates[{i}].key_pem"),
                            format!("holds no usable PEM private key ({e})"),
                        );
                    }
                }
            }
        }
    }

    fn drains(&mut self) {
        let mut per_app: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen = HashSet::new();
        let max = self.s.logs.max_drains_per_app;
        for (i, d) in self.s.drains.iter().enumerate() {
            self.app(format!("drains[{i}].app"), &d.app);
            match DrainUrl::parse(&d.url) {
                Ok(u) if u.kind == DrainKind::Http && !self.s.logs.allow_http_drains => {
                    self.p.push(
                        format!("drains[{i}].url"),
                        "http:// drains are off (use https://, or set logs.allow_http_drains)",
                    );
                }
                Ok(_) => {}
                Err(e) => self.p.push(format!("drains[{i}].url"), e),
            }
            if !seen.insert((&d.app, &d.url)) {
                self.p.push(
                    format!("drains[{i}].url"),
                    format!("app {:?} already drains to this URL", d.app),
                );
            }
            let n = per_app.entry(&d.app).or_default();
            *n += 1;
            if *n == max + 1 {
                self.p.push(
                    format!("drains[{i}]"),
                    format!(
                        "app {:?} has more than {max} drains (logs.max_drains_per_app)",
                        d.app
                    ),
                );
            }
        }
    }
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// `type.N` with a valid process type and N ≥ 1.
pub fn is_dyno_name(s: &str) -> bool {
    match s.rsplit_once('.') {
        Some((t, n)) => {
            check_name(t).is_ok()
                && !n.is_empty()
                && !n.starts_with('0')
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A CORS origin: `scheme://host[:port]`, nothing more.
fn check_origin(o: &str) -> Result<(), String> {
    let u = url::Url::parse(o).map_err(|e| format!("{o:?} is not an origin: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("{o:?} is not an http(s) origin"));
    }
    if u.ascii_serialization_origin() != o {
        return Err(format!(
            "{o:?} must be exactly scheme://host[:port] (did you mean {:?}?)",
            u.ascii_serialization_origin()
        ));
    }
    Ok(())
}

trait OriginString {
    fn ascii_serialization_origin(&self) -> String;
}

impl OriginString for url::Url {
    fn ascii_serialization_origin(&self) -> String {
        self.origin().ascii_serialization()
    }
}

/// Five cron fields of numbers, ranges, lists, steps and `*`, each within its range.
pub fn check_cron(expr: &str) -> Result<(), String> {
    const RANGES: [(u32, u32, &str); 5] = [
        (0, 59, "minute"),
        (0, 23, "hour"),
        (1, 31, "day of month"),
        (1, 12, "month"),
        (0, 7, "day of week"),
    ];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{expr:?} must have 5 fields (minute hour day month weekday)"
        ));
    }
    for (field, (lo, hi, what)) in fields.iter().zip(RANGES) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(s) = step
                && !s.parse::<u32>().is_ok_and(|n| n > 0 && n <= hi)
            {
                return Err(format!("{expr:?}: bad step {s:?} in the {what} field"));
            }
            if range == "*" {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let ok = |v: &str| v.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n));
            if !(ok(a) && ok(b)) || a.parse::<u32>().ok() > b.parse::<u32>().ok() {
                return Err(format!(
                    "{expr:?}: {part:?} is outside {lo}–{hi} in the {what} field"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron() {
        assert!(check_cron("*/5 * * * *").is_ok());
        assert!(check_cron("0 3 1-15 1,6 0-7").is_ok());
        assert!(check_cron("60 * * * *").is_err());
        assert!(check_cron("* * *").is_err());
        assert!(check_cron("5-1 * * * *").is_err());
        assert!(check_cron("*/0 * * * *").is_err());
    }

    #[test]
    fn dyno_names() {
        assert!(is_dyno_name("web.1"));
        assert!(is_dyno_name("worker-x.12"));
        assert!(!is_dyno_name("web"));
        assert!(!is_dyno_name("web.0"));
        assert!(!is_dyno_name("Web.1"));
    }

    #[test]
    fn origins() {
        assert!(check_origin("https://a.example").is_ok());
        assert!(check_origin("http://127.0.0.1:8080").is_ok());
        assert!(check_origin("https://a.example/").is_err());
        assert!(check_origin("ftp://a.example").is_err());
    }
}
